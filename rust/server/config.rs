//! The server's configuration as the Python layer sends it (msgpack of
//! `oxidip._boundary.CoreConfig`), and its checked, ready-to-use form.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::dicom::attributes::{Tag, EXTRACTED};
use crate::dicom::inflate::InflateLimits;
use crate::dicom::sop_class;
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::storage::path_template::PathTemplate;
use crate::storage::permissions::Permissions;
use crate::storage::writer::{DuplicatePolicy, FsyncPolicy, StorageOptions};
use crate::transport::tls::{self, ServerFiles, TlsFileError};
use crate::ul::association::acceptor::{AcceptorPolicy, SupportedSyntaxes};
use crate::ul::association::Roles;

/// Receive limit when the configured maximum is 0 ("no limit", PS3.8 §D.1) or when, outside
/// strict mode, a peer sends more than it was told: beyond this a P-DATA-TF is refused with an
/// A-ABORT, because buffering it would make memory per association unbounded.
pub const HARD_PDATA_LIMIT: u32 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    pub host: String,
    /// The plain TCP listener's port, unless `plain_listener` is false.
    pub port: u16,
    pub plain_listener: bool,
    /// A TLS listener beside the plain one (PS3.15 annex B).
    pub tls: Option<TlsListenerConfig>,
    pub aet: String,
    pub enforce_called_aet: bool,
    pub allowed_calling_aets: Vec<String>,
    pub max_pdu_length: u32,
    pub strict: bool,
    pub promiscuous: bool,
    pub uncompressed_only: bool,
    pub max_associations: usize,
    pub files_root: String,
    pub path_template: String,
    pub fsync: String,
    pub duplicates: String,
    pub required_attributes: Vec<String>,
    /// Bounds on a deflated data set (PS3.5 §A.5): inflated MiB at most, and inflated bytes
    /// per deflated byte at most.
    pub inflate_max_mib: u64,
    pub inflate_max_ratio: u64,
    pub artim_timeout: f64,
    pub idle_timeout: f64,
    /// Seconds one write may wait for the peer to read (OXIDIP_WRITE_TIMEOUT).
    pub write_timeout: f64,
    pub event_queue_size: usize,
    /// "stored": answer success once the file is in place (registration follows);
    /// "registered": also wait for Python to confirm its registration.
    pub ack: String,
    /// Permission bits of stored files and of the directories created for them.
    pub file_mode: u32,
    pub dir_mode: u32,
    /// The gid stored files and directories get (setgid directories); None: ours.
    pub group: Option<u32>,
    /// The registry node id of this process, written in its journal so that whoever replays
    /// it after a crash can end the node's association activity.
    pub node: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TlsListenerConfig {
    pub port: u16,
    /// PEM: our certificate chain, leaf first.
    pub cert: String,
    /// PEM: its private key.
    pub key: String,
    /// PEM: CA certificates a client certificate must chain to; None: none asked for.
    pub ca: Option<String>,
}

impl TlsListenerConfig {
    /// Loads and checks the files: the error says which file and why.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
        let files = ServerFiles {
            cert: PathBuf::from(&self.cert),
            key: PathBuf::from(&self.key),
            ca: self.ca.as_ref().map(PathBuf::from),
        };
        tls::server_config(&files)
    }
}

/// The TLS listener, ready.
#[derive(Debug)]
pub struct TlsListener {
    pub bind: String,
    pub config: Arc<rustls::ServerConfig>,
}

/// What the server serves, as it tells the acceptor: Verification (C-ECHO) and the Storage
/// SOP Classes (C-STORE) as SCP; promiscuous, any abstract syntax as SCP (its C-STOREs are
/// stored like any other, PS3.4 B.4.1 leaves unknown SOP classes to the SCP).
#[derive(Debug, Clone, Copy)]
pub struct ServedSyntaxes {
    pub promiscuous: bool,
}

impl SupportedSyntaxes for ServedSyntaxes {
    fn roles(&self, abstract_syntax: &str) -> Option<Roles> {
        let served = abstract_syntax == sop_class::VERIFICATION
            || sop_class::is_storage(abstract_syntax)
            || (self.promiscuous && !abstract_syntax.is_empty());
        served.then_some(Roles::SCP)
    }
}

/// Everything the server needs, checked.
#[derive(Debug)]
pub struct Settings {
    /// Where the plain TCP listener binds; None: no plain listener.
    pub bind: Option<String>,
    pub tls: Option<TlsListener>,
    pub acceptor: AcceptorPolicy,
    pub served: ServedSyntaxes,
    pub files_root: PathBuf,
    pub template: PathTemplate,
    pub fsync: FsyncPolicy,
    pub duplicates: DuplicatePolicy,
    pub permissions: Permissions,
    pub node: String,
    /// (tag, keyword) of the attributes an instance must have to be stored.
    pub required: Vec<(Tag, &'static str)>,
    pub inflate: InflateLimits,
    pub artim_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// Bound on every write to a peer; past it the connection is closed.
    pub write_timeout: Duration,
    /// The largest P-DATA-TF accepted from a peer (see HARD_PDATA_LIMIT).
    pub receive_limit: u32,
    pub max_associations: usize,
    pub event_queue_size: usize,
    /// Answer success only once Python has registered the instance (`ack = "registered"`).
    pub ack_registered: bool,
}

impl Settings {
    /// How stored instances are placed.
    pub fn storage_options(&self) -> StorageOptions {
        StorageOptions {
            template: self.template.clone(),
            fsync: self.fsync,
            duplicates: self.duplicates,
            permissions: self.permissions,
            node: self.node.clone(),
        }
    }
}

impl ServerConfig {
    /// Where it listens, for messages: "host:port" and/or "host:port (TLS)".
    pub fn listeners(&self) -> String {
        let plain = self.plain_listener.then(|| format!("{}:{}", self.host, self.port));
        let tls = self.tls.as_ref().map(|tls| format!("{}:{} (TLS)", self.host, tls.port));
        plain.into_iter().chain(tls).collect::<Vec<_>>().join(" and ")
    }

    /// Checks every value; the error names the field and what it accepts.
    pub fn settings(&self) -> Result<Settings, String> {
        let template = PathTemplate::parse(&self.path_template).map_err(|e| format!("path_template: {e}"))?;
        let fsync = self.fsync.parse::<FsyncPolicy>().map_err(|e| format!("fsync: {e}"))?;
        let duplicates = self.duplicates.parse::<DuplicatePolicy>().map_err(|e| format!("duplicates: {e}"))?;
        let required = self
            .required_attributes
            .iter()
            .map(|k| {
                EXTRACTED
                    .iter()
                    .find(|(_, keyword)| keyword == k)
                    .copied()
                    .ok_or_else(|| format!("required_attributes: {k:?} is not an extracted attribute"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let permissions = Permissions { file_mode: self.file_mode, dir_mode: self.dir_mode, group: self.group };
        permissions.check()?;
        if self.node.chars().any(char::is_control) {
            return Err(format!("node: {:?} has control characters", self.node));
        }
        if self.max_associations == 0 || self.event_queue_size == 0 {
            return Err("max_associations and event_queue_size must be at least 1".into());
        }
        if self.inflate_max_mib == 0 || self.inflate_max_ratio == 0 {
            return Err("inflate_max_mib and inflate_max_ratio must be at least 1".into());
        }
        let inflate =
            InflateLimits { max_size: self.inflate_max_mib.saturating_mul(1 << 20), max_ratio: self.inflate_max_ratio };
        let seconds = |name: &str, s: f64| {
            Duration::try_from_secs_f64(s).map_err(|_| format!("{name}: expected seconds >= 0, got {s}"))
        };
        let ack_registered = match self.ack.as_str() {
            "stored" => false,
            "registered" => true,
            other => return Err(format!("ack: expected \"stored\" or \"registered\", got {other:?}")),
        };
        let artim_timeout = seconds("artim_timeout", self.artim_timeout)?;
        let idle_timeout = seconds("idle_timeout", self.idle_timeout)?;
        let write_timeout = seconds("write_timeout", self.write_timeout)?;
        if write_timeout.is_zero() {
            return Err("write_timeout: expected seconds > 0, got 0".into());
        }
        let receive_limit = match (self.max_pdu_length, self.strict) {
            (0, _) => HARD_PDATA_LIMIT,
            (n, true) => n,
            (n, false) => n.max(HARD_PDATA_LIMIT),
        };
        if !self.plain_listener && self.tls.is_none() {
            return Err("plain_listener: false, but no TLS listener is configured either".into());
        }
        let tls = match &self.tls {
            None => None,
            Some(tls) => Some(TlsListener {
                bind: format!("{}:{}", self.host, tls.port),
                config: tls.load().map_err(|e| format!("tls {e}"))?,
            }),
        };
        Ok(Settings {
            bind: self.plain_listener.then(|| format!("{}:{}", self.host, self.port)),
            tls,
            acceptor: AcceptorPolicy {
                ae_title: self.aet.clone(),
                enforce_called_ae_title: self.enforce_called_aet,
                allowed_calling_ae_titles: self.allowed_calling_aets.clone(),
                uncompressed_only: self.uncompressed_only,
                max_pdu_length: self.max_pdu_length,
                implementation_class_uid: IMPLEMENTATION_CLASS_UID.to_string(),
                implementation_version_name: IMPLEMENTATION_VERSION_NAME.to_string(),
            },
            served: ServedSyntaxes { promiscuous: self.promiscuous },
            files_root: PathBuf::from(&self.files_root),
            template,
            fsync,
            duplicates,
            permissions,
            node: self.node.clone(),
            required,
            inflate,
            artim_timeout,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            write_timeout,
            receive_limit,
            max_associations: self.max_associations,
            event_queue_size: self.event_queue_size,
            ack_registered,
        })
    }
}
