//! A load generator, for `oxidip bench` only: K associations of our client sending N
//! instances generated in memory (see `template`), optionally while M more associations are
//! held open and idle.
//!
//! The data set is built once per association; each instance only rewrites a few digits in
//! place and its pixel data is shared, so the sender is never bound by reading or building
//! files, and a 1 GB instance costs it no memory.

pub mod template;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

use crate::client::{Client, ClientError, ClientOptions, ClientTls};
use crate::dicom::transfer_syntax::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use crate::dimse::status::StatusClass;
use crate::transport::tls;
use crate::ul::association::requestor::ProposedContext;
use template::{Image, Template};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadOptions {
    /// "host:port".
    pub addr: String,
    pub calling_aet: String,
    pub called_aet: String,
    /// K: concurrent associations (each one series).
    pub associations: usize,
    /// N: instances in all, spread evenly over the associations.
    pub instances: u64,
    /// Approximate size of each data set in bytes (see `Image` for what it means).
    pub size: usize,
    /// What the instances are.
    #[serde(default)]
    pub image: Image,
    /// Associations opened before the load starts and held, idle, until it ends.
    #[serde(default)]
    pub idle_associations: usize,
    /// Explicit or implicit VR little endian.
    pub transfer_syntax: String,
    /// Our maximum PDU length (51H); 0 = unlimited.
    pub max_pdu_length: u32,
    /// Seconds to wait for the peer at each step.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Seconds after the start of the load when no more instances are sent (each association
    /// finishes the one in flight and releases); 0 = none.
    #[serde(default)]
    pub deadline: f64,
    /// DICOM over TLS: the PEM CA file the server's certificate must chain to; None: plain TCP.
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// With `tls_ca`: our client certificate chain and key (PEM), for mutual TLS.
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
}

impl LoadOptions {
    /// The TLS side of the options, loaded once for every association.
    fn client_tls(&self) -> Result<Option<ClientTls>, String> {
        let Some(ca) = &self.tls_ca else {
            if self.tls_cert.is_some() || self.tls_key.is_some() {
                return Err("a TLS client certificate needs the TLS CA (tls_ca)".into());
            }
            return Ok(None);
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((Path::new(cert), Path::new(key))),
            (None, None) => None,
            _ => return Err("tls_cert and tls_key go together".into()),
        };
        let config = tls::client_config(Path::new(ca), identity).map_err(|e| format!("TLS {e}"))?;
        // "host:port" or "[v6]:port": the host is what the certificate must name.
        let host = self.addr.rsplit_once(':').map_or(self.addr.as_str(), |(host, _)| host);
        let server_name = host.trim_start_matches('[').trim_end_matches(']').to_string();
        Ok(Some(ClientTls { connector: TlsConnector::from(config), server_name }))
    }
}

fn default_timeout() -> f64 {
    30.0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// Instances answered with success (0000) or a warning (0001, Bxxx).
    pub instances: u64,
    /// Instances not stored: answered with a failure status, or never answered.
    pub failures: u64,
    /// Failure statuses and how many instances got each.
    pub statuses: BTreeMap<u16, u64>,
    /// Association-level errors (rejection, abort, timeout...), one line each; those of
    /// idle associations say so.
    pub errors: Vec<String>,
    /// Idle associations established and held through the load.
    pub idle_associations: u64,
    /// Data set bytes of the instances answered (any status).
    pub bytes: u64,
    /// Wall time from the first connect to the last release of the loaded associations
    /// (idle ones are opened before and released after).
    pub seconds: f64,
    /// C-STORE round trip (command sent to response read), milliseconds.
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

/// What one association did.
#[derive(Default)]
struct TaskResult {
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    not_sent: u64,
    bytes: u64,
    latencies_us: Vec<u64>,
    error: Option<String>,
}

fn client_options(options: &LoadOptions, tls: &Option<ClientTls>) -> ClientOptions {
    ClientOptions {
        calling_aet: options.calling_aet.clone(),
        called_aet: options.called_aet.clone(),
        contexts: vec![ProposedContext::scu(options.image.sop_class(), &[&options.transfer_syntax])],
        max_pdu_length: options.max_pdu_length,
        timeout: Duration::from_secs_f64(options.timeout.max(0.001)),
        tls: tls.clone(),
    }
}

async fn association(
    options: LoadOptions,
    tls: Option<ClientTls>,
    deadline: Option<Instant>,
    run: u128,
    series: u64,
    first: u64,
    count: u64,
) -> TaskResult {
    let mut result = TaskResult { latencies_us: Vec::with_capacity(count as usize), ..Default::default() };
    let explicit = options.transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN;
    let mut template = Template::new(options.image, options.size, explicit);
    template.set_study(run);
    template.set_series(run, series);
    let sop_class = options.image.sop_class();
    let mut client = match Client::connect(options.addr.as_str(), client_options(&options, &tls)).await {
        Ok(c) => c,
        Err(e) => {
            result.not_sent = count;
            result.error = Some(e.to_string());
            return result;
        }
    };
    if client.context_for(sop_class).is_none() {
        result.not_sent = count;
        result.error = Some(format!("{} with {}", ClientError::NoContext(sop_class.into()), options.transfer_syntax));
        client.abort().await;
        return result;
    }
    for i in 0..count {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            result.not_sent = count - i;
            result.error =
                Some(format!("deadline of {} s reached: {} instances not sent", options.deadline, count - i));
            break;
        }
        template.set_instance(run, first + i, i + 1);
        let start = Instant::now();
        let uid = template.sop_instance_uid().to_owned();
        match client.store(sop_class, &uid, &template.segments()).await {
            Ok(status) => {
                result.latencies_us.push(start.elapsed().as_micros() as u64);
                result.bytes += template.dataset_len() as u64;
                if StatusClass::of(status).performed() {
                    result.ok += 1;
                } else {
                    *result.statuses.entry(status).or_default() += 1;
                }
            }
            Err(e) => {
                result.not_sent = count - i;
                result.error = Some(e.to_string());
                return result;
            }
        }
    }
    if let Err(e) = client.release().await {
        let earlier = result.error.take().map(|earlier| format!("{earlier}; ")).unwrap_or_default();
        result.error = Some(format!("{earlier}release: {e}"));
    }
    result
}

/// Connections being opened at once for idle associations: as a site's associations come,
/// a few at a time, not in one burst (Python's socketserver, pynetdicom's, listens with a
/// backlog of 5 and resets the rest of a burst).
const IDLE_OPENING: usize = 4;

/// Opens `n` associations, `IDLE_OPENING` at a time; returns those established and the
/// errors of the others.
async fn open_idle(options: &LoadOptions, tls: &Option<ClientTls>, n: usize) -> (Vec<Client>, Vec<String>) {
    let opening = std::sync::Arc::new(tokio::sync::Semaphore::new(IDLE_OPENING));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (opening, addr, client) = (opening.clone(), options.addr.clone(), client_options(options, tls));
            tokio::spawn(async move {
                let _permit = opening.acquire_owned().await;
                Client::connect(addr, client).await
            })
        })
        .collect();
    let (mut clients, mut errors) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await {
            Ok(Ok(client)) => clients.push(client),
            Ok(Err(e)) => errors.push(format!("idle association: {e}")),
            Err(e) => errors.push(format!("idle association: {e}")),
        }
    }
    (clients, errors)
}

/// Releases the idle associations; a peer that dropped one meanwhile is an error.
async fn release_idle(clients: Vec<Client>) -> Vec<String> {
    let tasks: Vec<_> = clients.into_iter().map(|c| tokio::spawn(c.release())).collect();
    let mut errors = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("idle association release: {e}")),
            Err(e) => errors.push(format!("idle association release: {e}")),
        }
    }
    errors
}

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

/// Runs the load on a runtime of its own and returns when every association has ended.
pub fn run(options: LoadOptions) -> Result<LoadReport, String> {
    if options.associations == 0 {
        return Err("associations must be at least 1".into());
    }
    if options.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN && options.transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN {
        return Err(format!(
            "transfer syntax {} not supported by the generator (explicit or implicit VR little endian)",
            options.transfer_syntax
        ));
    }
    let tls = options.client_tls()?;
    let threads = options.associations.min(std::thread::available_parallelism().map_or(4, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("oxidip-load")
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let k = options.associations as u64;
    let mut report = LoadReport::default();
    let (results, seconds) = runtime.block_on(async {
        let (idle, errors) = open_idle(&options, &tls, options.idle_associations).await;
        report.idle_associations = idle.len() as u64;
        report.errors.extend(errors);
        let started = Instant::now();
        let deadline = (options.deadline > 0.0).then(|| started + Duration::from_secs_f64(options.deadline));
        let mut tasks = Vec::new();
        let mut first = 0;
        for task in 0..k {
            let count = options.instances / k + u64::from(task < options.instances % k);
            tasks.push(tokio::spawn(association(options.clone(), tls.clone(), deadline, run_id, task, first, count)));
            first += count;
        }
        let mut results = Vec::new();
        for task in tasks {
            results
                .push(task.await.unwrap_or_else(|e| TaskResult { error: Some(e.to_string()), ..Default::default() }));
        }
        let seconds = started.elapsed().as_secs_f64();
        report.errors.extend(release_idle(idle).await);
        (results, seconds)
    });
    report.seconds = seconds;
    let mut latencies = Vec::with_capacity(options.instances as usize);
    for r in results {
        report.instances += r.ok;
        report.failures += r.not_sent + r.statuses.values().sum::<u64>();
        for (status, n) in r.statuses {
            *report.statuses.entry(status).or_default() += n;
        }
        report.bytes += r.bytes;
        latencies.extend(r.latencies_us);
        report.errors.extend(r.error);
    }
    latencies.sort_unstable();
    report.latency_p50_ms = percentile(&latencies, 50.0);
    report.latency_p90_ms = percentile(&latencies, 90.0);
    report.latency_p99_ms = percentile(&latencies, 99.0);
    report.latency_max_ms = latencies.last().map_or(0.0, |&us| us as f64 / 1000.0);
    Ok(report)
}

#[cfg(test)]
mod tests;
