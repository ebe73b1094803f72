//! What Python asks the engine to forward: serde mirrors of `oxidip._boundary`'s
//! `ForwarderConfig`, `ForwardDestination`, `ForwardItem` and `ForwardJob` (the field names are
//! the wire format), and the presentation contexts a job proposes.

use std::time::Duration;

use serde::Deserialize;

use crate::ul::association::requestor::ProposedContext;

/// The engine's settings (`_core.Forwarder(config)`).
#[derive(Debug, Clone, Deserialize)]
pub struct ForwarderConfig {
    /// Seconds: bound on connecting, on each wait for the peer, on each write.
    pub timeout: f64,
    /// What we announce as our maximum PDU length (0 = unlimited); we send at most the
    /// peer's.
    pub max_pdu_length: u32,
    /// Associations open at once, all destinations together (a guard: the limits per
    /// destination are Python's, which submits no more jobs than they allow).
    pub max_associations: usize,
}

impl ForwarderConfig {
    /// The timeout as a duration; why the configuration is unusable otherwise.
    pub fn checked_timeout(&self) -> Result<Duration, String> {
        if self.max_associations == 0 {
            return Err("max_associations must be at least 1".into());
        }
        match Duration::try_from_secs_f64(self.timeout) {
            Ok(timeout) if !timeout.is_zero() => Ok(timeout),
            _ => Err(format!("timeout must be a number of seconds > 0, not {}", self.timeout)),
        }
    }
}

/// Where a job goes.
#[derive(Debug, Clone, Deserialize)]
pub struct ForwardDestination {
    /// The destination's name in the routes file, for messages.
    pub name: String,
    pub called_aet: String,
    pub host: String,
    pub port: u16,
    pub calling_aet: String,
}

impl ForwardDestination {
    /// `host:port`, as messages name the peer.
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }
}

/// `host:port` (`[host]:port` for an IPv6 address).
pub fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One stored instance to send (msgspec `array_like`: a msgpack array, which serde's derived
/// `Deserialize` takes as well as a map).
#[derive(Debug, Clone, Deserialize)]
pub struct ForwardItem {
    pub item_id: i64,
    /// Absolute path of the stored Part 10 file.
    pub path: String,
    /// As the registry knows them: what the association proposes, and what the file must
    /// still hold.
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
}

/// Items to send, in order, on one association to one destination.
#[derive(Debug, Clone, Deserialize)]
pub struct ForwardJob {
    pub job_id: i64,
    pub destination: ForwardDestination,
    pub items: Vec<ForwardItem>,
}

impl ForwardJob {
    /// One presentation context per distinct (SOP class, stored transfer syntax) pair of the
    /// items, in the order they first appear, each offering that transfer syntax alone: the
    /// data sets go as they were stored, never re-encoded, so a destination that does not
    /// take a syntax refuses that context and only the items stored in it fail.
    pub fn contexts(&self) -> Vec<ProposedContext> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in &self.items {
            let pair = (item.sop_class_uid.as_str(), item.transfer_syntax.as_str());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        pairs.into_iter().map(|(sop_class, syntax)| ProposedContext::scu(sop_class, &[syntax])).collect()
    }
}
