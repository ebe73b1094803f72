//! The Python extension `oxidip._core`: a thin typed layer over `server::Server`,
//! `forward::Forwarder` and `client::retrieval::Retrieval`. Python calls it a few times a second (start, stop, one call per
//! batch of events, of jobs or of outcomes); nothing here runs per PDU or per instance. Data crosses as msgpack, decoded on the Python side by msgspec structs
//! (`oxidip._boundary`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::client::query_retrieve;
use crate::client::retrieval::{self, End, Method, Request};
use crate::client::{Client, ClientError, ClientOptions};
use crate::dicom::attributes::{Attributes, EXTRACTED};
use crate::dicom::extract::Extractor;
use crate::dicom::inflate::InflateLimits;
use crate::dicom::transfer_syntax;
use crate::events::EventStream;
use crate::forward;
use crate::forward::job::{ForwardJob, ForwarderConfig};
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::loadgen as load;
use crate::server::config::ServerConfig;
use crate::server::Server;
use crate::storage::path_template::{PathContext, PathTemplate, DEFAULT_PATH_TEMPLATE};
use crate::storage::writer::prepare_root;
use crate::storage::{journal, read_back};
use crate::transport::tls;
use crate::ul::association::requestor::ProposedContext;
use crate::ul::codec;
use crate::ul::pdu::Pdu;
use std::path::Path;

/// Bytes reserved per event for a batch's encoding: an instance event with its attributes
/// and their names (msgpack maps) is about this long, so that a batch is encoded without
/// growing its buffer.
const ENCODED_EVENT_SIZE: usize = 1024;

#[pyclass(module = "oxidip._core")]
struct Receiver {
    config: ServerConfig,
    server: Mutex<Option<Server>>,
    events: Mutex<Option<EventStream>>,
    /// The event backlog counter, readable without waiting for `events`.
    queued: OnceLock<Arc<AtomicUsize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[pymethods]
impl Receiver {
    #[new]
    fn new(config: &[u8]) -> PyResult<Self> {
        let config: ServerConfig =
            rmp_serde::from_slice(config).map_err(|e| PyValueError::new_err(format!("invalid configuration: {e}")))?;
        config.settings().map_err(PyValueError::new_err)?;
        Ok(Receiver { config, server: Mutex::new(None), events: Mutex::new(None), queued: OnceLock::new() })
    }

    /// Makes the storage root ready (`storage::writer::prepare_root`: created with its mode
    /// and group, a file created in it), before anything else may create it with other bits;
    /// OSError whose message says why not, to follow the variable's name.
    fn prepare_storage(&self, py: Python<'_>) -> PyResult<()> {
        let settings = self.config.settings().map_err(PyValueError::new_err)?;
        py.allow_threads(|| prepare_root(&settings.files_root, &settings.permissions))
            .map(drop)
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// The bound ports: (plain, TLS), None for a listener not configured.
    fn start(&self, py: Python<'_>) -> PyResult<(Option<u16>, Option<u16>)> {
        let mut server = lock(&self.server);
        if server.is_some() {
            return Err(PyRuntimeError::new_err("receiver already started"));
        }
        let settings = self.config.settings().map_err(PyValueError::new_err)?;
        let (started, events) = py
            .allow_threads(|| Server::start(settings))
            .map_err(|e| PyOSError::new_err(format!("cannot start on {}: {e}", self.config.listeners())))?;
        let ports = started.ports();
        let _ = self.queued.set(events.queued_counter());
        *lock(&self.events) = Some(events);
        *server = Some(started);
        Ok((ports.plain, ports.tls))
    }

    fn next_batch<'py>(
        &self,
        py: Python<'py>,
        max_events: usize,
        timeout: f64,
        linger: f64,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let timeout = seconds(timeout, "timeout")?;
        let linger = seconds(linger, "linger")?;
        let handle = match lock(&self.server).as_ref() {
            Some(server) => server.runtime().handle().clone(),
            None => return Err(PyRuntimeError::new_err("receiver not started")),
        };
        // Encoded, and the events dropped, without the GIL too: at tens of thousands of
        // instances a second that is a fifth of the event thread's time, which the
        // registration thread would otherwise wait out for the GIL.
        let encoded = py.allow_threads(|| {
            let mut events = lock(&self.events);
            let batch = events.as_mut().and_then(|stream| stream.next_batch(&handle, max_events, timeout, linger))?;
            let mut bytes = Vec::with_capacity(batch.len() * ENCODED_EVENT_SIZE);
            Some(rmp_serde::encode::write_named(&mut bytes, &batch).map(|()| bytes))
        });
        match encoded {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(PyBytes::new(py, &bytes))),
            Some(Err(e)) => Err(PyRuntimeError::new_err(e.to_string())),
        }
    }

    /// Python's word on journal entries: registered (their entries may go; with
    /// `ack=registered` their senders get success) or not. Called from Python's registration
    /// thread while another thread may wait in `next_batch`: the server lock is taken and
    /// released without the GIL, so that no thread ever holds it while waiting for the GIL
    /// (the thread holding the GIL may be waiting for the lock).
    fn acknowledge(&self, py: Python<'_>, seqs: Vec<u64>, registered: bool) -> PyResult<()> {
        let started = py.allow_threads(|| match lock(&self.server).as_ref() {
            Some(server) => {
                server.acknowledge(&seqs, registered);
                true
            }
            None => false,
        });
        if started {
            Ok(())
        } else {
            Err(PyRuntimeError::new_err("receiver not started"))
        }
    }

    fn stop(&self, timeout: f64) -> PyResult<()> {
        let grace = seconds(timeout, "timeout")?;
        if let Some(server) = lock(&self.server).as_ref() {
            server.stop(grace);
        }
        Ok(())
    }

    /// msgpack of `oxidip._boundary.ReceiverMetrics`: every counter of `/metrics`, read
    /// without stopping the association tasks (atomics, see `server::metrics`).
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let snapshot = match lock(&self.server).as_ref() {
            Some(server) => server.metrics(),
            None => return Err(PyRuntimeError::new_err("receiver not started")),
        };
        let bytes = rmp_serde::to_vec_named(&snapshot).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// OSError saying why when the storage root cannot take a new file now.
    fn check_storage(&self, py: Python<'_>) -> PyResult<()> {
        // Not under the server's lock: a hung file system must not hold up `acknowledge`.
        let storage = match lock(&self.server).as_ref() {
            Some(server) => server.storage().clone(),
            None => return Err(PyRuntimeError::new_err("receiver not started")),
        };
        py.allow_threads(|| storage.check_writable()).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    #[getter]
    fn queued_events(&self) -> usize {
        self.queued.get().map_or(0, |q| q.load(Ordering::Relaxed))
    }

    /// Journal entries of this receiver not yet registered (0 before start).
    #[getter]
    fn journal_backlog(&self) -> usize {
        lock(&self.server).as_ref().map_or(0, Server::journal_backlog)
    }

    /// Starts a C-GET (PS3.4 C.4.3) from `host`:`port` of what `identifier` (encoded in
    /// `identifier_transfer_syntax`) names, as this receiver's AE title, on the receiver's
    /// runtime: the instances come back on the same association and go through the
    /// receiver's store path and events, like received ones (calling AE: the peer).
    #[allow(clippy::too_many_arguments)]
    fn get(
        &self,
        py: Python<'_>,
        host: &str,
        port: u16,
        called_aet: &str,
        model: &str,
        identifier: &[u8],
        identifier_transfer_syntax: &str,
        sop_classes: Vec<String>,
        transfer_syntaxes: Vec<String>,
        timeout: f64,
        idle_timeout: f64,
    ) -> PyResult<Retrieval> {
        let timeout = seconds(timeout, "timeout")?;
        let idle_timeout = seconds(idle_timeout, "idle_timeout")?;
        let (handle, context) = match lock(&self.server).as_ref() {
            Some(server) => (server.runtime().handle().clone(), server.context()),
            None => return Err(PyRuntimeError::new_err("receiver not started")),
        };
        let context = context.ok_or_else(|| PyRuntimeError::new_err("receiver stopped"))?;
        let sop_classes: Vec<&str> = sop_classes.iter().map(String::as_str).collect();
        let transfer_syntaxes: Vec<&str> = transfer_syntaxes.iter().map(String::as_str).collect();
        let contexts =
            query_retrieve::get_contexts(model, identifier_transfer_syntax, &sop_classes, &transfer_syntaxes)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        // As the receiver: its AE title, and the PDU limit it announces to senders.
        let acceptor = &context.settings.acceptor;
        let options = ClientOptions {
            timeout,
            max_pdu_length: acceptor.max_pdu_length,
            ..ClientOptions::new(&acceptor.ae_title, called_aet, contexts)
        };
        let method = Method::Get { service: context.store.clone(), association_id: context.next_association_id() };
        let request = Request { model: model.into(), identifier: identifier.into(), method, idle_timeout };
        let started = py.allow_threads(|| retrieval::Retrieval::start(&handle, host, port, options, request));
        Ok(Retrieval { inner: started.map_err(|e| PyOSError::new_err(e.to_string()))? })
    }
}

/// A pending response of a retrieve (`Retrieval.next_progress`).
#[pyclass(module = "oxidip._core", frozen, get_all)]
struct RetrieveProgress {
    status: u16,
    remaining: Option<u16>,
    completed: Option<u16>,
    failed: Option<u16>,
    warning: Option<u16>,
}

/// A C-MOVE or C-GET in progress (`client::retrieval::Retrieval`).
#[pyclass(module = "oxidip._core", frozen)]
struct Retrieval {
    inner: retrieval::Retrieval,
}

#[pymethods]
impl Retrieval {
    fn next_progress(&self, py: Python<'_>, timeout: f64) -> PyResult<Option<RetrieveProgress>> {
        let timeout = seconds(timeout, "timeout")?;
        Ok(py.allow_threads(|| self.inner.next_progress(timeout)).map(|pending| {
            let counts = pending.sub_operations;
            RetrieveProgress {
                status: pending.status,
                remaining: counts.remaining,
                completed: counts.completed,
                failed: counts.failed,
                warning: counts.warning,
            }
        }))
    }

    fn cancel(&self) {
        self.inner.cancel();
    }

    fn abort(&self) {
        self.inner.abort();
    }

    #[getter]
    fn result(&self) -> Option<RetrieveResult> {
        match self.inner.end()? {
            End::Outcome(outcome) => Some(RetrieveResult {
                status: outcome.status.code,
                comment: outcome.status.comment.unwrap_or_default(),
                completed: outcome.sub_operations.completed,
                failed: outcome.sub_operations.failed,
                warning: outcome.sub_operations.warning,
                identifier: outcome.identifier,
            }),
            End::Failed(_) => None,
        }
    }

    #[getter]
    fn error(&self) -> Option<String> {
        match self.inner.end()? {
            End::Failed(words) => Some(words),
            End::Outcome(_) => None,
        }
    }

    #[getter]
    fn instances_received(&self) -> u64 {
        self.inner.stored()
    }
}

/// The runtime C-MOVEs run on: theirs are waits on the peer, a few threads do.
fn move_runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("oxidip-move")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// Starts a C-MOVE (PS3.4 C.4.2) at `host`:`port` of what `identifier` (encoded in
/// `transfer_syntax`, the only one proposed) names, to the AE `move_destination`, on a
/// runtime of the module's. OSError when there is no association that can carry it.
#[pyfunction]
#[pyo3(name = "move")]
#[allow(clippy::too_many_arguments)]
fn move_to(
    py: Python<'_>,
    host: &str,
    port: u16,
    calling_aet: &str,
    called_aet: &str,
    model: &str,
    identifier: &[u8],
    transfer_syntax: &str,
    move_destination: &str,
    timeout: f64,
    idle_timeout: f64,
) -> PyResult<Retrieval> {
    let timeout = seconds(timeout, "timeout")?;
    let idle_timeout = seconds(idle_timeout, "idle_timeout")?;
    let runtime = move_runtime()?;
    let contexts = vec![ProposedContext::scu(model, &[transfer_syntax])];
    let options = ClientOptions { timeout, ..ClientOptions::new(calling_aet, called_aet, contexts) };
    let method = Method::Move { destination: move_destination.into() };
    let request = Request { model: model.into(), identifier: identifier.into(), method, idle_timeout };
    let started = py.allow_threads(|| retrieval::Retrieval::start(runtime.handle(), host, port, options, request));
    Ok(Retrieval { inner: started.map_err(|e| PyOSError::new_err(e.to_string()))? })
}

/// How a C-MOVE or C-GET ended (`Retrieval.result`).
#[pyclass(module = "oxidip._core", frozen, get_all)]
struct RetrieveResult {
    status: u16,
    comment: String,
    completed: Option<u16>,
    failed: Option<u16>,
    warning: Option<u16>,
    identifier: Option<Vec<u8>>,
}

/// What a C-FIND found (`find`).
#[pyclass(module = "oxidip._core", frozen, get_all)]
struct FindResult {
    status: u16,
    comment: String,
    matches: Vec<Vec<u8>>,
}

/// C-FIND (PS3.4 C.4.1) of `identifier` (encoded in `transfer_syntax`, the only one
/// proposed) on the information model `model` at `host`:`port`: every match's identifier, then
/// the final status. OSError when the association or the operation fails.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn find(
    py: Python<'_>,
    host: &str,
    port: u16,
    calling_aet: &str,
    called_aet: &str,
    model: &str,
    identifier: &[u8],
    transfer_syntax: &str,
    timeout: f64,
) -> PyResult<FindResult> {
    let timeout = seconds(timeout, "timeout")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let found = py.allow_threads(|| {
        runtime.block_on(async {
            let contexts = vec![ProposedContext::scu(model, &[transfer_syntax])];
            let options = ClientOptions { timeout, ..ClientOptions::new(calling_aet, called_aet, contexts) };
            let mut client = Client::connect((host, port), options).await?;
            let mut find = client.find(model, identifier).await?;
            let mut matches = Vec::new();
            while let Some(found) = find.next_match().await? {
                matches.push(found);
            }
            let status = find.status().cloned().expect("set once the matches end");
            client.release().await?;
            Ok::<_, ClientError>((status, matches))
        })
    });
    let (status, matches) = found.map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(FindResult { status: status.code, comment: status.comment.unwrap_or_default(), matches })
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0")))
}

/// Loads the TLS listener's PEM files as the receiver will; None when they are usable, else
/// (which file: "cert", "key" or "ca", why).
#[pyfunction]
#[pyo3(signature = (cert, key, ca=None))]
fn check_tls(py: Python<'_>, cert: &str, key: &str, ca: Option<&str>) -> Option<(&'static str, String)> {
    let files = tls::ServerFiles { cert: cert.into(), key: key.into(), ca: ca.map(Into::into) };
    py.allow_threads(|| tls::server_config(&files)).err().map(|e| (e.file.name(), e.message))
}

#[pyfunction]
fn check_path_template(template: &str) -> PyResult<()> {
    PathTemplate::parse(template).map(|_| ()).map_err(|e| PyValueError::new_err(e.to_string()))
}

// The receiver's hot-path steps, one call each, for the micro-benchmarks (`bench/micro/`)
// and for tests that hold them against pydicom.

/// Decodes every PDU of `stream` (a received byte stream) as the receiver does, with
/// `max_pdata_len` as our announced maximum, taking out each PDV of a P-DATA-TF as the
/// handler does; returns how many PDUs. ValueError on a codec error or a stream that ends
/// inside a PDU.
#[pyfunction]
fn decode_pdus(py: Python<'_>, stream: &[u8], max_pdata_len: u32) -> PyResult<usize> {
    let mut buf = bytes::BytesMut::from(stream);
    py.allow_threads(|| {
        let mut count = 0;
        while let Some(pdu) = codec::decode(&mut buf, max_pdata_len).map_err(|e| e.to_string())? {
            if let Pdu::PData(p_data) = &pdu {
                p_data.iter().for_each(|pdv| {
                    std::hint::black_box(pdv);
                });
            }
            std::hint::black_box(pdu);
            count += 1;
        }
        if buf.is_empty() {
            Ok(count)
        } else {
            Err(format!("stream ends inside a PDU ({} bytes left)", buf.len()))
        }
    })
    .map_err(PyValueError::new_err)
}

/// The attributes extracted from a data set, kept on the Rust side.
#[pyclass(module = "oxidip._core", frozen)]
struct ExtractedAttributes {
    attributes: Attributes,
}

#[pymethods]
impl ExtractedAttributes {
    /// msgpack of `oxidip._boundary.Attributes`.
    fn to_msgpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = rmp_serde::to_vec_named(&self.attributes).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        Ok(PyBytes::new(py, &bytes))
    }
}

/// Extracts the attributes of a data set (no file meta) encoded in `transfer_syntax`, fed in
/// one piece and walked whole, as the receiver does. ValueError when the transfer syntax is
/// unknown or the data set malformed.
#[pyfunction]
fn extract_attributes(py: Python<'_>, dataset: &[u8], transfer_syntax: &str) -> PyResult<ExtractedAttributes> {
    let syntax = transfer_syntax::lookup(transfer_syntax)
        .ok_or_else(|| PyValueError::new_err(format!("unknown transfer syntax {transfer_syntax}")))?;
    let attributes = py.allow_threads(|| {
        let mut extractor = Extractor::whole(syntax.encoding, InflateLimits::NONE);
        extractor.feed(dataset)?;
        extractor.finish()
    });
    attributes.map(|attributes| ExtractedAttributes { attributes }).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A parsed path template (`OXIDIP_PATH_TEMPLATE`).
#[pyclass(module = "oxidip._core", frozen, name = "PathTemplate")]
struct PyPathTemplate {
    template: PathTemplate,
}

#[pymethods]
impl PyPathTemplate {
    /// ValueError with the reason when the template is invalid.
    #[new]
    fn new(template: &str) -> PyResult<Self> {
        let template = PathTemplate::parse(template).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyPathTemplate { template })
    }

    /// The relative path of an instance with these attributes, sent by `calling_aet` to
    /// `called_aet`.
    fn render(&self, attributes: &ExtractedAttributes, calling_aet: &str, called_aet: &str) -> String {
        let context = PathContext { attributes: &attributes.attributes, calling_aet, called_aet };
        self.template.render(&context).to_string_lossy().into_owned()
    }
}

/// A journal segment of a dead oxidip process, locked by us until `finish` or `release`.
#[pyclass(module = "oxidip._core", frozen)]
struct OrphanJournal {
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    node: Option<String>,
    #[pyo3(get)]
    entries: Vec<String>,
    files_root: std::path::PathBuf,
    claim: Mutex<Option<journal::Orphan>>,
}

#[pymethods]
impl OrphanJournal {
    /// Its entries are registered: deletes it, and the temp files its process left.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let Some(orphan) = lock(&self.claim).take() else {
            return Err(PyRuntimeError::new_err("journal already finished or released"));
        };
        py.allow_threads(|| orphan.finish(&self.files_root)).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Leaves it for a later claim (by us or another process): lets go of its lock.
    fn release(&self) {
        lock(&self.claim).take();
    }
}

/// The journal segments under `files_root` whose process no longer runs, whatever its host,
/// each locked until finished or released.
#[pyfunction]
fn claim_orphan_journals(py: Python<'_>, files_root: &str) -> PyResult<Vec<OrphanJournal>> {
    let root = Path::new(files_root);
    let claimed = py.allow_threads(|| journal::claim_orphans(root)).map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(claimed
        .into_iter()
        .map(|mut orphan| OrphanJournal {
            path: orphan.path.to_string_lossy().into_owned(),
            node: orphan.node.clone(),
            entries: std::mem::take(&mut orphan.entries),
            files_root: root.to_path_buf(),
            claim: Mutex::new(Some(orphan)),
        })
        .collect())
}

/// A stored Part 10 file's meta and extracted attributes, as msgpack of
/// `oxidip._boundary.StoredFile`.
#[pyfunction]
fn read_instance<'py>(py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
    let stored = py.allow_threads(|| read_back::read_stored(Path::new(path)));
    msgpack(py, &stored.map_err(|e| PyValueError::new_err(format!("{path}: {e}")))?)
}

/// A stored Part 10 file's SOP Class, SOP Instance and Transfer Syntax UIDs and the byte
/// range of its data set, for sending it on, as msgpack of `oxidip._boundary.StoredDataSet`.
#[pyfunction]
fn read_stored_for_sending<'py>(py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
    let stored = py.allow_threads(|| read_back::read_stored_for_sending(Path::new(path)));
    let (data_set, _file) = stored.map_err(|e| PyValueError::new_err(format!("{path}: {e}")))?;
    msgpack(py, &data_set)
}

fn msgpack<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyBytes>> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &bytes))
}

/// The forwarding engine (`forward::Forwarder`): jobs in, outcomes out, both as msgpack
/// batches (`oxidip._boundary.ForwardJob`, `ForwardOutcome`).
#[pyclass(module = "oxidip._core", frozen, name = "Forwarder")]
struct PyForwarder {
    engine: forward::Forwarder,
}

#[pymethods]
impl PyForwarder {
    #[new]
    fn new(config: &[u8]) -> PyResult<Self> {
        let config: ForwarderConfig = rmp_serde::from_slice(config)
            .map_err(|e| PyValueError::new_err(format!("invalid forwarder configuration: {e}")))?;
        let engine = forward::Forwarder::new(&config).map_err(PyValueError::new_err)?;
        Ok(PyForwarder { engine })
    }

    fn submit(&self, py: Python<'_>, jobs: &[u8]) -> PyResult<()> {
        let jobs: Vec<ForwardJob> =
            rmp_serde::from_slice(jobs).map_err(|e| PyValueError::new_err(format!("invalid forward jobs: {e}")))?;
        py.allow_threads(|| self.engine.submit(jobs));
        Ok(())
    }

    fn next_outcomes<'py>(&self, py: Python<'py>, max_outcomes: usize, timeout: f64) -> PyResult<Bound<'py, PyBytes>> {
        let timeout = seconds(timeout, "timeout")?;
        let outcomes = py.allow_threads(|| self.engine.next_outcomes(max_outcomes, timeout));
        msgpack(py, &outcomes)
    }

    fn cancel(&self, job_ids: Vec<i64>) {
        self.engine.cancel(&job_ids);
    }

    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = seconds(timeout, "timeout")?;
        py.allow_threads(|| self.engine.stop(timeout));
        Ok(())
    }

    #[getter]
    fn running(&self) -> usize {
        self.engine.running()
    }
}

/// C-ECHO on a new association: the status; OSError saying why when there was no answer.
#[pyfunction]
fn echo(py: Python<'_>, host: &str, port: u16, calling_aet: &str, called_aet: &str, timeout: f64) -> PyResult<u16> {
    let timeout = seconds(timeout, "timeout")?;
    py.allow_threads(|| forward::echo(host, port, calling_aet, called_aet, timeout)).map_err(PyOSError::new_err)
}

/// Runs the load generator (`loadgen`): options and report as msgpack of
/// `oxidip._boundary.LoadOptions` / `LoadReport`. Blocks until done, without the GIL.
#[pyfunction]
fn send_load<'py>(py: Python<'py>, options: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let options: load::LoadOptions =
        rmp_serde::from_slice(options).map_err(|e| PyValueError::new_err(format!("invalid load options: {e}")))?;
    let report = py.allow_threads(|| load::run(options)).map_err(PyValueError::new_err)?;
    let bytes = rmp_serde::to_vec_named(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &bytes))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("IMPLEMENTATION_CLASS_UID", IMPLEMENTATION_CLASS_UID)?;
    m.add("IMPLEMENTATION_VERSION_NAME", IMPLEMENTATION_VERSION_NAME)?;
    m.add("EXTRACTED_KEYWORDS", EXTRACTED.iter().map(|(_, k)| *k).collect::<Vec<_>>())?;
    m.add("DEFAULT_PATH_TEMPLATE", DEFAULT_PATH_TEMPLATE)?;
    m.add_class::<Receiver>()?;
    m.add_class::<ExtractedAttributes>()?;
    m.add_class::<PyPathTemplate>()?;
    m.add_class::<OrphanJournal>()?;
    m.add_class::<FindResult>()?;
    m.add_class::<RetrieveResult>()?;
    m.add_class::<RetrieveProgress>()?;
    m.add_class::<Retrieval>()?;
    m.add_class::<PyForwarder>()?;
    m.add_function(wrap_pyfunction!(decode_pdus, m)?)?;
    m.add_function(wrap_pyfunction!(extract_attributes, m)?)?;
    m.add_function(wrap_pyfunction!(check_path_template, m)?)?;
    m.add_function(wrap_pyfunction!(claim_orphan_journals, m)?)?;
    m.add_function(wrap_pyfunction!(check_tls, m)?)?;
    m.add_function(wrap_pyfunction!(read_instance, m)?)?;
    m.add_function(wrap_pyfunction!(read_stored_for_sending, m)?)?;
    m.add_function(wrap_pyfunction!(send_load, m)?)?;
    m.add_function(wrap_pyfunction!(find, m)?)?;
    m.add_function(wrap_pyfunction!(move_to, m)?)?;
    m.add_function(wrap_pyfunction!(echo, m)?)?;
    Ok(())
}
