//! The engine against our own server (a job of several instances on one association, byte
//! for byte; a context it refuses; files missing or changed; a rejection; echo) and against
//! test-only peers built on the same negotiation and channel (statuses of every class,
//! A-ABORT in the middle of a job, a peer that never answers, for `cancel` and `stop`), and
//! a port where nothing listens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::job::{ForwardDestination, ForwardItem, ForwardJob, ForwarderConfig};
use super::outcome::{DeliveryResult, ForwardOutcome, ItemOutcome, JobEndKind, JobEnded};
use super::*;
use crate::client::tests::{accept_one, files_under, released, start};
use crate::dicom::transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN;
use crate::dimse::channel::{Channel, ChannelError, Collected};
use crate::dimse::command::{self, field};
use crate::dimse::status::Status;
use crate::events::Event;
use crate::loadgen::template::{Image, Template, SECONDARY_CAPTURE};
use crate::server::config::ServerConfig;
use crate::server::tests::config;
use crate::storage::file_meta::{encode_file_meta, FileMeta};
use crate::storage::read_back;
use crate::ul::association::Roles;
use crate::ul::pdu::Abort;

const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

/// A stored Part 10 file of a Secondary Capture instance (number `n`) whose data set is
/// about `size` bytes: its path, SOP Instance UID and data set.
pub(crate) fn stored_file(dir: &Path, n: u64, size: usize) -> (PathBuf, String, Vec<u8>) {
    stored_file_in(dir, n, size, EXPLICIT_VR_LITTLE_ENDIAN)
}

/// The same, its file meta saying `transfer_syntax` (the data set stays explicit VR little
/// endian, which is all reading it back looks at).
fn stored_file_in(dir: &Path, n: u64, size: usize, transfer_syntax: &str) -> (PathBuf, String, Vec<u8>) {
    let mut template = Template::new(Image::Sc, size, true);
    template.set_study(5);
    template.set_series(5, 1);
    template.set_instance(5, n, n);
    let data_set = template.segments().concat();
    let uid = template.sop_instance_uid().to_owned();
    let meta = FileMeta {
        media_storage_sop_class_uid: SECONDARY_CAPTURE,
        media_storage_sop_instance_uid: &uid,
        transfer_syntax_uid: transfer_syntax,
        source_ae_title: "MODALITY",
    };
    let mut bytes = encode_file_meta(&meta).unwrap();
    bytes.extend_from_slice(&data_set);
    let path = dir.join(format!("{n}.dcm"));
    std::fs::write(&path, bytes).unwrap();
    (path, uid, data_set)
}

fn item(item_id: i64, path: &Path, uid: &str, transfer_syntax: &str) -> ForwardItem {
    ForwardItem {
        item_id,
        path: path.to_string_lossy().into_owned(),
        sop_class_uid: SECONDARY_CAPTURE.into(),
        sop_instance_uid: uid.into(),
        transfer_syntax: transfer_syntax.into(),
    }
}

fn job(job_id: i64, port: u16, called_aet: &str, items: Vec<ForwardItem>) -> ForwardJob {
    let destination = ForwardDestination {
        name: "dest".into(),
        called_aet: called_aet.into(),
        host: "127.0.0.1".into(),
        port,
        calling_aet: "FORWARDER".into(),
    };
    ForwardJob { job_id, destination, items }
}

fn engine(timeout: f64, max_associations: usize) -> Forwarder {
    Forwarder::new(&ForwarderConfig { timeout, max_pdu_length: 16384, max_associations }).unwrap()
}

/// Every outcome until `jobs` jobs have ended (at most 10 s).
fn outcomes_until_ended(forwarder: &Forwarder, jobs: usize) -> Vec<ForwardOutcome> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut all = Vec::new();
    while all.iter().filter(|o| matches!(o, ForwardOutcome::Job(_))).count() < jobs {
        assert!(std::time::Instant::now() < deadline, "jobs did not end: {all:?}");
        all.extend(forwarder.next_outcomes(100, Duration::from_millis(200)));
    }
    all
}

fn items_of(outcomes: &[ForwardOutcome]) -> Vec<&ItemOutcome> {
    outcomes.iter().filter_map(|o| if let ForwardOutcome::Item(i) = o { Some(i) } else { None }).collect()
}

fn ended(outcomes: &[ForwardOutcome]) -> Vec<&JobEnded> {
    outcomes.iter().filter_map(|o| if let ForwardOutcome::Job(j) = o { Some(j) } else { None }).collect()
}

fn delivered(job_id: i64, item_id: i64) -> ItemOutcome {
    ItemOutcome { job_id, item_id, result: DeliveryResult::Delivered, status: Some(0), comment: String::new() }
}

fn failed(job_id: i64, item_id: i64, comment: String) -> ItemOutcome {
    ItemOutcome { job_id, item_id, result: DeliveryResult::Failed, status: None, comment }
}

// --- against our server --------------------------------------------------------------------

#[test]
fn a_job_goes_on_one_association_byte_for_byte_in_item_order() {
    let (files, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (server, mut events) = start(config(root.path()));
    // Small ones, and one of 3 MB: its first MiB read with the file's head, the rest streamed,
    // all cut to the 16 KiB peer's PDUs.
    let stored: Vec<_> = [2000, 30_000, 3_000_000, 10]
        .iter()
        .enumerate()
        .map(|(n, size)| stored_file(files.path(), n as u64 + 1, *size))
        .collect();
    let items = stored
        .iter()
        .enumerate()
        .map(|(n, (path, uid, _))| item(n as i64 + 1, path, uid, EXPLICIT_VR_LITTLE_ENDIAN))
        .collect();
    let forwarder = engine(5.0, 4);
    forwarder.submit(vec![job(7, server.port(), "OXIDIP", items)]);
    let outcomes = outcomes_until_ended(&forwarder, 1);
    let expected: Vec<ForwardOutcome> = (1..=4)
        .map(|n| ForwardOutcome::Item(delivered(7, n)))
        .chain([ForwardOutcome::Job(JobEnded { job_id: 7, end: JobEndKind::Ok, error: String::new() })])
        .collect();
    assert_eq!(outcomes, expected, "outcomes in item order, the job's end last");
    assert_eq!(forwarder.running(), 0);
    // Each data set arrives as stored, all on one association.
    let batch =
        events.next_batch(server.runtime().handle(), 100, Duration::from_secs(5), Duration::from_millis(200)).unwrap();
    let associations: std::collections::BTreeSet<u64> = batch
        .iter()
        .filter_map(|e| if let Event::InstanceStored(s) = e { Some(s.association_id) } else { None })
        .collect();
    assert_eq!(associations.len(), 1, "{batch:?}");
    let received = files_under(&root.path().join("FORWARDER"));
    assert_eq!(received.len(), 4);
    for (_, uid, data_set) in &stored {
        let file = received.iter().find(|f| f.ends_with(format!("{uid}.dcm"))).unwrap();
        assert!(std::fs::read(file).unwrap().ends_with(data_set), "{uid} byte for byte");
    }
}

#[test]
fn refused_contexts_missing_and_changed_files_fail_their_items_and_the_job_goes_on() {
    let (files, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Uncompressed only: a data set stored in JPEG Baseline cannot go, and is not re-encoded.
    let (server, _events) = start(ServerConfig { uncompressed_only: true, ..config(root.path()) });
    let (jpeg, jpeg_uid, _) = stored_file_in(files.path(), 1, 100, JPEG_BASELINE);
    let (good, good_uid, _) = stored_file(files.path(), 2, 100);
    let (other, _, _) = stored_file(files.path(), 3, 100);
    let missing = files.path().join("gone.dcm");
    let items = vec![
        item(1, &jpeg, &jpeg_uid, JPEG_BASELINE),
        item(2, &missing, "1.2.3.4", EXPLICIT_VR_LITTLE_ENDIAN),
        item(3, &other, "1.2.3.5", EXPLICIT_VR_LITTLE_ENDIAN),
        item(4, &good, &good_uid, EXPLICIT_VR_LITTLE_ENDIAN),
    ];
    let forwarder = engine(5.0, 4);
    forwarder.submit(vec![job(8, server.port(), "OXIDIP", items)]);
    let outcomes = outcomes_until_ended(&forwarder, 1);
    let other_uid = read_back::read_stored_for_sending(&other).unwrap().0.sop_instance_uid;
    assert_eq!(
        items_of(&outcomes),
        [
            &failed(8, 1, "destination accepted no presentation context for Secondary Capture Image Storage in JPEG Baseline (Process 1)".into()),
            &failed(8, 2, format!("file missing: {}", missing.display())),
            &failed(8, 3, format!("file changed: SOP Instance UID {other_uid} in file {}, the registry has 1.2.3.5", other.display())),
            &delivered(8, 4),
        ]
    );
    assert_eq!(ended(&outcomes), [&JobEnded { job_id: 8, end: JobEndKind::Ok, error: String::new() }]);
}

#[test]
fn a_rejection_for_good_is_permanent_and_nothing_listening_is_transient() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(config(root.path()));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let forwarder = engine(5.0, 4);
    forwarder.submit(vec![job(1, server.port(), "SOMEONE", vec![]), job(2, closed_port, "OXIDIP", vec![])]);
    let mut outcomes = outcomes_until_ended(&forwarder, 2);
    outcomes.sort_by_key(|o| if let ForwardOutcome::Job(j) = o { j.job_id } else { 0 });
    assert_eq!(
        outcomes,
        [
            ForwardOutcome::Job(JobEnded {
                job_id: 1,
                end: JobEndKind::Permanent,
                error: "association rejected (permanent): called AE title not recognized".into()
            }),
            ForwardOutcome::Job(JobEnded {
                job_id: 2,
                end: JobEndKind::Transient,
                error: format!("connection refused by 127.0.0.1:{closed_port}")
            }),
        ]
    );
}

#[test]
fn echo_answers_the_status_or_says_why_not() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(config(root.path()));
    let timeout = Duration::from_secs(5);
    assert_eq!(echo("127.0.0.1", server.port(), "FORWARDER", "OXIDIP", timeout), Ok(0));
    assert_eq!(
        echo("127.0.0.1", server.port(), "FORWARDER", "WHO", timeout),
        Err("association rejected (permanent): called AE title not recognized".into())
    );
}

// --- against test-only peers ---------------------------------------------------------------

/// What a test peer does with each C-STORE it receives.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16, Option<&'static str>),
    Abort,
    /// Never answers: waits for what the requestor does next.
    Silence,
}

/// A Storage SCP that answers the C-STOREs it receives as `answers` says, one each, then
/// waits for the release; tells `got` of each data set once received; returns the data sets
/// it received and how the association ended.
async fn storage_scp(
    listener: TcpListener,
    answers: Vec<Answer>,
    got: std::sync::mpsc::Sender<()>,
) -> (Vec<Vec<u8>>, Result<(), ChannelError>) {
    let mut channel: Channel<TcpStream> = accept_one(listener, "DEST", |_: &str| Some(Roles::SCP)).await;
    let mut received = Vec::new();
    for answer in answers {
        let (context_id, rq) = match channel.receive_command().await {
            Ok(rq) => rq,
            Err(e) => return (received, Err(e)),
        };
        assert_eq!(rq.command_field(), Some(field::C_STORE_RQ));
        let mut data = Collected::with_limit(1 << 24);
        if let Err(e) = channel.receive_data(context_id, &mut data).await {
            return (received, Err(e));
        }
        received.push(data.bytes);
        let _ = got.send(());
        let status = match answer {
            Answer::Status(code, comment) => Status { code, comment: comment.map(Into::into) },
            Answer::Abort => {
                channel.abort(Abort::BY_USER).await;
                return (received, Ok(()));
            }
            Answer::Silence => return (received, channel.receive_command().await.map(|_| ())),
        };
        let class = rq.affected_sop_class_uid().unwrap();
        let uid = rq.affected_sop_instance_uid();
        let rsp = command::response(field::C_STORE_RSP, rq.message_id().unwrap(), &class, uid.as_deref(), &status);
        channel.send(context_id, &rsp, None).await.unwrap();
    }
    released(&mut channel).await;
    (received, Ok(()))
}

/// Forwards `count` files to a `storage_scp` answering `answers`; the outcomes, and what
/// the peer received and saw.
fn forward_to_scp(
    count: u64,
    answers: Vec<Answer>,
    act: impl FnOnce(&Forwarder),
) -> (Vec<ForwardOutcome>, Vec<Vec<u8>>, Result<(), ChannelError>) {
    let files = tempfile::tempdir().unwrap();
    let items: Vec<_> = (1..=count)
        .map(|n| {
            let (path, uid, _) = stored_file(files.path(), n, 500);
            item(n as i64, &path, &uid, EXPLICIT_VR_LITTLE_ENDIAN)
        })
        .collect();
    let runtime = crate::client::tests::runtime();
    let (listener, port) = runtime.block_on(crate::client::tests::listener());
    let scp = runtime.spawn(storage_scp(listener, answers, std::sync::mpsc::channel().0));
    let forwarder = engine(5.0, 4);
    forwarder.submit(vec![job(3, port, "DEST", items)]);
    act(&forwarder);
    let outcomes = outcomes_until_ended(&forwarder, 1);
    let (received, seen) = runtime.block_on(scp).unwrap();
    (outcomes, received, seen)
}

#[test]
fn statuses_of_each_class_and_out_of_resources_stops_the_job() {
    use Answer::Status as S;
    let answers = vec![
        S(0x0000, None),
        S(0xB000, Some("coerced")),
        S(0x0122, None),
        S(0xC000, Some("no")),
        S(0xA700, Some("disk full")),
    ];
    let (outcomes, received, seen) = forward_to_scp(6, answers, |_| {});
    let outcome = |item_id, result, status, comment: &str| ItemOutcome {
        job_id: 3,
        item_id,
        result,
        status: Some(status),
        comment: comment.into(),
    };
    assert_eq!(
        items_of(&outcomes),
        [
            &delivered(3, 1),
            &outcome(2, DeliveryResult::Warning, 0xB000, "coerced"),
            &outcome(3, DeliveryResult::Failed, 0x0122, "Refused: SOP Class not supported"),
            &outcome(4, DeliveryResult::Failed, 0xC000, "no"),
        ],
        "item 5 (A700) has no outcome, item 6 was never sent"
    );
    let end = JobEnded {
        job_id: 3,
        end: JobEndKind::Transient,
        error: "C-STORE answered A700 (Refused: Out of Resources): disk full".into(),
    };
    assert_eq!(ended(&outcomes), [&end]);
    assert_eq!(received.len(), 5);
    assert!(seen.is_ok(), "released after the A700: {seen:?}");
}

#[test]
fn an_abort_in_the_middle_of_a_job_is_transient_and_says_where() {
    let (outcomes, received, _) = forward_to_scp(4, vec![Answer::Status(0, None), Answer::Abort], |_| {});
    assert_eq!(items_of(&outcomes), [&delivered(3, 1)]);
    let error = "association aborted by the peer after 1 of 4 instances (A-ABORT source 0, reason 0)";
    assert_eq!(ended(&outcomes), [&JobEnded { job_id: 3, end: JobEndKind::Transient, error: error.into() }]);
    assert_eq!(received.len(), 2);
}

#[test]
fn cancel_aborts_the_association_in_the_middle_of_an_item() {
    let (outcomes, _, seen) = forward_to_scp(3, vec![Answer::Status(0, None), Answer::Silence], |forwarder| {
        // Once the first is delivered the second is on the wire, its answer never coming.
        let first = forwarder.next_outcomes(1, Duration::from_secs(5));
        assert_eq!(first, [ForwardOutcome::Item(delivered(3, 1))]);
        forwarder.cancel(&[99, 3]);
    });
    assert_eq!(ended(&outcomes), [&JobEnded { job_id: 3, end: JobEndKind::Cancelled, error: "cancelled".into() }]);
    assert!(matches!(seen, Err(ChannelError::Aborted(Abort { source: 0, .. }))), "{seen:?}");
}

#[test]
fn stop_ends_every_job_waiting_ones_at_once_running_ones_aborted_past_the_timeout() {
    let files = tempfile::tempdir().unwrap();
    let (path, uid, _) = stored_file(files.path(), 1, 500);
    let runtime = crate::client::tests::runtime();
    let (listener, port) = runtime.block_on(crate::client::tests::listener());
    let (got, receiving) = std::sync::mpsc::channel();
    let scp = runtime.spawn(storage_scp(listener, vec![Answer::Silence], got));
    // One association at once: the second job waits for the first's.
    let forwarder = engine(5.0, 1);
    let one = || vec![item(1, &path, &uid, EXPLICIT_VR_LITTLE_ENDIAN)];
    forwarder.submit(vec![job(1, port, "DEST", one())]);
    // The first is being sent once the peer has its data set, its answer never coming.
    receiving.recv_timeout(Duration::from_secs(5)).unwrap();
    forwarder.submit(vec![job(2, port, "DEST", one())]);
    let started = std::time::Instant::now();
    forwarder.stop(Duration::from_millis(200));
    assert_eq!(forwarder.running(), 0, "every job ended when stop returns");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut outcomes = forwarder.next_outcomes(10, Duration::ZERO);
    outcomes.sort_by_key(|o| if let ForwardOutcome::Job(j) = o { j.job_id } else { 0 });
    let stopped = |job_id, error: &str| JobEnded { job_id, end: JobEndKind::Cancelled, error: error.into() };
    assert_eq!(
        ended(&outcomes),
        [
            &stopped(1, "stopped: the forwarder's stop timeout passed (association aborted)"),
            &stopped(2, "stopped: the forwarder is shutting down"),
        ]
    );
    // Submitted after stop: ends at once.
    forwarder.submit(vec![job(3, port, "DEST", one())]);
    let late = outcomes_until_ended(&forwarder, 1);
    assert_eq!(ended(&late)[0].error, "stopped: the forwarder is shutting down");
    let (_, seen) = runtime.block_on(scp).unwrap();
    assert!(matches!(seen, Err(ChannelError::Aborted(Abort { source: 0, .. }))), "{seen:?}");
}

/// The niceness in a `/proc` stat file (field 19, counted after the parenthesised command
/// name, field 2).
fn niceness(stat: &std::path::Path) -> i32 {
    let stat = std::fs::read_to_string(stat).unwrap();
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(16).unwrap().parse().unwrap()
}

#[test]
fn forwarding_threads_yield_to_the_rest_of_the_process() {
    let forwarder = engine(5.0, 1);
    // The test thread runs at the niceness the engine was made from.
    let base = niceness(Path::new("/proc/thread-self/stat"));
    let runtime = forwarder.runtime.as_ref().unwrap();
    let on_a_worker = runtime.block_on(runtime.spawn(async { niceness(Path::new("/proc/thread-self/stat")) }));
    let on_the_blocking_pool =
        runtime.block_on(async { tokio::task::spawn_blocking(|| niceness(Path::new("/proc/thread-self/stat"))).await });
    let lowered = (base + 10).min(19);
    assert_eq!((on_a_worker.unwrap(), on_the_blocking_pool.unwrap()), (lowered, lowered));
}
