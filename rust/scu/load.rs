//! A load generator: K associations sending N Secondary Capture instances generated in memory.
//!
//! The data set is built once per association from a template; each instance only rewrites
//! the fixed-length digits of its SOP Instance UID in place, so generating an instance costs a
//! few bytes written and the sender is never bound by reading or building files.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Client, ClientOptions, ScuError};
use crate::dicom::transfer_syntax::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};

/// Secondary Capture Image Storage (PS3.4 annex B.5).
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// Digits after "2.25.": 39, the most a UUID-derived UID has (PS3.5 §B.2); our numbers start
/// with 1 so they stay below 2^128 and carry no leading zero.
const UID_DIGITS: usize = 39;
/// Digits of the per-instance (or per-series) counter at the end of a UID.
const COUNTER_DIGITS: usize = 17;

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
    /// Approximate size of each data set in bytes.
    pub size: usize,
    /// Explicit or implicit VR little endian.
    pub transfer_syntax: String,
    /// Our maximum PDU length (51H); 0 = unlimited.
    pub max_pdu_length: u32,
    /// Seconds to wait for the peer at each step.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
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
    /// Association-level errors (rejection, abort, timeout...), one line each.
    pub errors: Vec<String>,
    /// Data set bytes of the instances answered (any status).
    pub bytes: u64,
    /// Wall time from the first connect to the last release.
    pub seconds: f64,
    /// C-STORE round trip (command sent to response read), milliseconds.
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

/// A data set template and where its UIDs' variable digits are.
pub struct Template {
    pub bytes: Vec<u8>,
    /// Offset of the 39 digits of the SOP Instance UID, Series UID and Study UID.
    sop_at: usize,
    series_at: usize,
    study_at: usize,
}

/// The 39 digits of a UID: "1", the run number (20 digits), a kind digit (1 study, 2 series,
/// 3 instance), the counter (17 digits).
fn uid_digits(run: u128, kind: u8, counter: u64) -> [u8; UID_DIGITS] {
    let text = format!("1{:020}{}{:0width$}", run % 10u128.pow(20), kind, counter, width = COUNTER_DIGITS);
    let mut out = [0u8; UID_DIGITS];
    out.copy_from_slice(text.as_bytes());
    out
}

pub fn uid(run: u128, kind: u8, counter: u64) -> String {
    format!("2.25.{}", std::str::from_utf8(&uid_digits(run, kind, counter)).unwrap_or_default())
}

impl Template {
    /// A Secondary Capture data set of about `size` bytes in explicit (or implicit) VR little
    /// endian: 8-bit monochrome pixel data sized to fill what the other elements leave.
    pub fn new(size: usize, explicit: bool) -> Template {
        let mut ds = Vec::with_capacity(size + 512);
        let placeholder = uid(0, 0, 0);
        let put = |ds: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]| -> usize {
            ds.extend_from_slice(&group.to_le_bytes());
            ds.extend_from_slice(&elem.to_le_bytes());
            if explicit {
                ds.extend_from_slice(vr);
                ds.extend_from_slice(&(value.len() as u16).to_le_bytes());
            } else {
                ds.extend_from_slice(&(value.len() as u32).to_le_bytes());
            }
            let at = ds.len();
            ds.extend_from_slice(value);
            at
        };
        let text = |s: &str, pad: u8| {
            let mut v = s.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(pad);
            }
            v
        };
        let ui = |s: &str| text(s, 0);
        put(&mut ds, 0x0008, 0x0016, b"UI", &ui(SECONDARY_CAPTURE));
        let sop_at = put(&mut ds, 0x0008, 0x0018, b"UI", &ui(&placeholder)) + 5;
        put(&mut ds, 0x0008, 0x0060, b"CS", &text("OT", b' '));
        put(&mut ds, 0x0008, 0x0064, b"CS", &text("WSD", b' '));
        put(&mut ds, 0x0010, 0x0010, b"PN", &text("OXIDIP^BENCH", b' '));
        put(&mut ds, 0x0010, 0x0020, b"LO", &text("OXIDIP-BENCH", b' '));
        let study_at = put(&mut ds, 0x0020, 0x000D, b"UI", &ui(&placeholder)) + 5;
        let series_at = put(&mut ds, 0x0020, 0x000E, b"UI", &ui(&placeholder)) + 5;
        put(&mut ds, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
        put(&mut ds, 0x0028, 0x0004, b"CS", &text("MONOCHROME2", b' '));
        // Pixel data fills the rest: header 8 (implicit) or 12 (explicit OB) bytes.
        let pixel_header = if explicit { 12 } else { 8 };
        // Six US elements to come (Rows, Columns, bit depths, representation): 10 bytes each.
        let remaining_elements = 6 * 10;
        let pixels = size.saturating_sub(ds.len() + remaining_elements + pixel_header).max(2);
        // One row when it fits (the size is then met to the byte, give or take padding);
        // otherwise at least 256 columns, as many as keep Rows within 16 bits.
        let columns = if pixels <= 65534 { pixels } else { pixels.div_ceil(65535).clamp(256, 65534) };
        let columns = (columns & !1).max(2);
        let rows = (pixels / columns).clamp(1, 65535);
        let pixel_len = rows * columns;
        put(&mut ds, 0x0028, 0x0010, b"US", &(rows as u16).to_le_bytes());
        put(&mut ds, 0x0028, 0x0011, b"US", &(columns as u16).to_le_bytes());
        put(&mut ds, 0x0028, 0x0100, b"US", &8u16.to_le_bytes());
        put(&mut ds, 0x0028, 0x0101, b"US", &8u16.to_le_bytes());
        put(&mut ds, 0x0028, 0x0102, b"US", &7u16.to_le_bytes());
        put(&mut ds, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
        ds.extend_from_slice(&0x7FE0u16.to_le_bytes());
        ds.extend_from_slice(&0x0010u16.to_le_bytes());
        if explicit {
            ds.extend_from_slice(b"OB\0\0");
        }
        ds.extend_from_slice(&(pixel_len as u32).to_le_bytes());
        ds.extend((0..pixel_len).map(|i| (i % 251) as u8));
        Template { bytes: ds, sop_at, series_at, study_at }
    }

    fn patch(&mut self, at: usize, digits: &[u8; UID_DIGITS]) {
        self.bytes[at..at + UID_DIGITS].copy_from_slice(digits);
    }

    pub fn set_study(&mut self, run: u128) {
        self.patch(self.study_at, &uid_digits(run, 1, 0));
    }

    pub fn set_series(&mut self, run: u128, series: u64) {
        self.patch(self.series_at, &uid_digits(run, 2, series));
    }

    /// Rewrites the digits of the SOP Instance UID in place.
    pub fn set_instance(&mut self, run: u128, instance: u64) {
        self.patch(self.sop_at, &uid_digits(run, 3, instance));
    }

    /// The SOP Instance UID currently in the data set.
    pub fn sop_instance_uid(&self) -> &str {
        // "2.25." plus the digits; always ASCII.
        std::str::from_utf8(&self.bytes[self.sop_at - 5..self.sop_at + UID_DIGITS]).unwrap_or_default()
    }
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

fn is_success_or_warning(status: u16) -> bool {
    status == 0x0000 || status == 0x0001 || status & 0xF000 == 0xB000
}

async fn association(options: LoadOptions, run: u128, series: u64, first: u64, count: u64) -> TaskResult {
    let mut result = TaskResult { latencies_us: Vec::with_capacity(count as usize), ..Default::default() };
    let explicit = options.transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN;
    let mut template = Template::new(options.size, explicit);
    template.set_study(run);
    template.set_series(run, series);
    let client_options = ClientOptions {
        calling_aet: options.calling_aet.clone(),
        called_aet: options.called_aet.clone(),
        contexts: vec![(SECONDARY_CAPTURE.into(), vec![options.transfer_syntax.clone()])],
        max_pdu_length: options.max_pdu_length,
        timeout: Duration::from_secs_f64(options.timeout.max(0.001)),
    };
    let mut client = match Client::connect(options.addr.as_str(), client_options).await {
        Ok(c) => c,
        Err(e) => {
            result.not_sent = count;
            result.error = Some(e.to_string());
            return result;
        }
    };
    if client.context_for(SECONDARY_CAPTURE).is_none() {
        result.not_sent = count;
        result.error = Some(format!(
            "{}: Secondary Capture with {} not accepted",
            ScuError::NoContext(SECONDARY_CAPTURE.into()),
            options.transfer_syntax
        ));
        client.abort().await;
        return result;
    }
    for i in 0..count {
        template.set_instance(run, first + i);
        let start = Instant::now();
        let uid = template.sop_instance_uid().to_owned();
        match client.store(SECONDARY_CAPTURE, &uid, &template.bytes).await {
            Ok(status) => {
                result.latencies_us.push(start.elapsed().as_micros() as u64);
                result.bytes += template.bytes.len() as u64;
                if is_success_or_warning(status) {
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
        result.error = Some(format!("release: {e}"));
    }
    result
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
    let threads = options.associations.min(std::thread::available_parallelism().map_or(4, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("oxidip-load")
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let k = options.associations as u64;
    let started = Instant::now();
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        let mut first = 0;
        for task in 0..k {
            let count = options.instances / k + u64::from(task < options.instances % k);
            tasks.push(tokio::spawn(association(options.clone(), run_id, task, first, count)));
            first += count;
        }
        let mut results = Vec::new();
        for task in tasks {
            results
                .push(task.await.unwrap_or_else(|e| TaskResult { error: Some(e.to_string()), ..Default::default() }));
        }
        results
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut report = LoadReport { seconds, ..Default::default() };
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
