//! Our client against our server over loopback (echo, store), and against test-only
//! acceptors built on the same negotiation and channel: a C-FIND provider answering pending
//! responses with identifiers, a C-MOVE provider, a C-GET provider that sends its
//! sub-operations as C-STOREs the client stores through the receiver's store path, and a
//! peer that never answers.

use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::query_retrieve::{get_contexts, Pending, RetrieveOutcome};
use super::retrieval::{End, Method, Request, Retrieval};
use super::*;
use crate::dicom::element::{Syntax, Writer};
use crate::dicom::transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN;
use crate::dicom::vr::Vr;
use crate::dimse::channel::Collected;
use crate::dimse::command::field;
use crate::dimse::query_retrieve::{
    c_find_rsp, retrieve_rsp, SubOperations, STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE,
};
use crate::dimse::status::{self, Status};
use crate::events::Event;
use crate::loadgen::template::{Image, Template, SECONDARY_CAPTURE};
use crate::server::config::ServerConfig;
use crate::server::tests::{config, dataset};
use crate::server::Server;
use crate::service::store::{StoreProvider, StoreService, Uncounted};
use crate::storage::writer::Storage;
use crate::ul::association::acceptor::{self, AcceptorPolicy, SupportedSyntaxes};
use crate::ul::association::Roles;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

fn options(called: &str) -> ClientOptions {
    ClientOptions::new("LOADSCU", called, vec![ProposedContext::scu(SECONDARY_CAPTURE, &[EXPLICIT_VR_LITTLE_ENDIAN])])
}

pub(crate) fn start(config: ServerConfig) -> (Server, crate::events::EventStream) {
    Server::start(config.settings().unwrap()).unwrap()
}

/// The files stored under `root/LOADSCU`.
pub(crate) fn stored_files(root: &Path) -> Vec<std::path::PathBuf> {
    files_under(&root.join("LOADSCU"))
}

pub(crate) fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    files
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A Study Root identifier (PS3.4 C.6.2): what a query or retrieve names.
fn identifier(level: &str, series_uid: &str) -> Vec<u8> {
    let mut id = Writer::new(Syntax::ExplicitLittle);
    id.text(0x0008_0052, Vr::CS, level).unwrap();
    id.text(0x0020_000E, Vr::UI, series_uid).unwrap();
    id.into_bytes()
}

/// A retrieve's identifier naming the instances it failed: Failed SOP Instance UID List
/// (0008,0058), PS3.4 C.4.3.1.3.1.
fn failed_sop_instances(uids: &str) -> Vec<u8> {
    let mut list = Writer::new(Syntax::ExplicitLittle);
    list.text(0x0008_0058, Vr::UI, uids).unwrap();
    list.into_bytes()
}

/// The store path of a receiver whose files go under `root`, and its events.
fn store_service(root: &Path) -> (Arc<StoreService>, crate::events::EventStream) {
    let settings = config(root).settings().unwrap();
    let storage = Arc::new(Storage::open(root, settings.storage_options()).unwrap());
    let (sink, events) = crate::events::channel(100);
    let service = Arc::new(StoreService {
        storage,
        required: settings.required.clone(),
        inflate: settings.inflate,
        ack_registered: false,
        events: sink,
        metrics: Arc::new(Uncounted),
    });
    (service, events)
}

// --- test-only acceptors -------------------------------------------------------------------

/// A test peer's acceptor policy: its AE title, anyone calling.
fn policy(ae_title: &str) -> AcceptorPolicy {
    AcceptorPolicy {
        ae_title: ae_title.into(),
        enforce_called_ae_title: true,
        allowed_calling_ae_titles: vec![],
        uncompressed_only: false,
        max_pdu_length: 16384,
        implementation_class_uid: "1.2.3.4".into(),
        implementation_version_name: "TESTSCP".into(),
    }
}

/// Accepts one association on `listener` as `ae_title`, negotiated with `supported`.
pub(crate) async fn accept_one(
    listener: TcpListener,
    ae_title: &str,
    supported: impl SupportedSyntaxes,
) -> Channel<TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut channel = Channel::new(Connection::new(tcp, 16384, Duration::from_secs(10)));
    let Some(Pdu::AssociateRq(rq)) = channel.connection().read_pdu().await.unwrap() else {
        panic!("expected an A-ASSOCIATE-RQ");
    };
    let (association, ac) = acceptor::negotiate(&rq, &policy(ae_title), &supported).unwrap();
    channel.connection().write_pdu(&Pdu::AssociateAc(ac)).await.unwrap();
    channel.connection().set_max_pdata_len(16384);
    channel.established(association, Some(Duration::from_secs(10)));
    channel
}

/// Our client, associated with the test acceptor on `port` as OXIDIP, proposing `contexts`.
async fn connect(port: u16, called: &str, contexts: Vec<ProposedContext>) -> Client {
    Client::connect(("127.0.0.1", port), ClientOptions::new("OXIDIP", called, contexts)).await.unwrap()
}

pub(crate) async fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// The next request, which must be `expected`, and its identifier.
async fn request(channel: &mut Channel<TcpStream>, expected: u16) -> (u8, CommandSet, Vec<u8>) {
    let (context_id, rq) = channel.receive_command().await.unwrap();
    assert_eq!(rq.command_field(), Some(expected));
    let mut identifier = Collected::with_limit(1 << 20);
    channel.receive_data(context_id, &mut identifier).await.unwrap();
    (context_id, rq, identifier.bytes)
}

/// Waits for the requestor's A-RELEASE-RQ and answers it.
pub(crate) async fn released(channel: &mut Channel<TcpStream>) {
    match channel.receive_command().await {
        Err(ChannelError::ReleaseRequested) => channel.answer_release().await.unwrap(),
        other => panic!("expected a release, got {other:?}"),
    }
}

fn pending() -> Status {
    Status { code: status::PENDING, comment: None }
}

/// A C-FIND SCP: answers one query with a pending response per match, then success; returns
/// the identifier it was asked.
async fn find_scp(listener: TcpListener, matches: Vec<Vec<u8>>) -> Vec<u8> {
    let mut channel = accept_one(listener, "FINDSCP", |a: &str| (a == STUDY_ROOT_FIND).then_some(Roles::SCP)).await;
    let (context_id, rq, asked) = request(&mut channel, field::C_FIND_RQ).await;
    let id = rq.message_id().unwrap();
    for identifier in &matches {
        let rsp = c_find_rsp(id, STUDY_ROOT_FIND, &pending(), true);
        channel.send(context_id, &rsp, Some(&[identifier])).await.unwrap();
    }
    let done = c_find_rsp(id, STUDY_ROOT_FIND, &Status::success(), false);
    channel.send(context_id, &done, None).await.unwrap();
    released(&mut channel).await;
    asked
}

/// A C-FIND SCP that sends one match, then waits for the C-CANCEL and ends with Cancel.
async fn cancelled_find_scp(listener: TcpListener, first: Vec<u8>) {
    let mut channel = accept_one(listener, "FINDSCP", |a: &str| (a == STUDY_ROOT_FIND).then_some(Roles::SCP)).await;
    let (context_id, rq, _) = request(&mut channel, field::C_FIND_RQ).await;
    let id = rq.message_id().unwrap();
    channel.send(context_id, &c_find_rsp(id, STUDY_ROOT_FIND, &pending(), true), Some(&[&first])).await.unwrap();
    let (_, cancel) = channel.receive_command().await.unwrap();
    assert_eq!(cancel.command_field(), Some(field::C_CANCEL_RQ));
    assert_eq!(cancel.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO), Some(id));
    let cancelled = Status { code: status::CANCEL, comment: None };
    channel.send(context_id, &c_find_rsp(id, STUDY_ROOT_FIND, &cancelled, false), None).await.unwrap();
    released(&mut channel).await;
}

/// A C-GET SCP (PS3.4 C.4.3): the retrieve model as SCP, storage as SCU. Sends each of
/// `instances` (SOP instance UID of the command, data set) as a C-STORE sub-operation on
/// this association, a pending C-GET-RSP after each, and a final response whose identifier
/// lists the failed ones. Returns the C-STORE-RSP statuses it got.
async fn get_scp(listener: TcpListener, instances: Vec<(String, Vec<u8>)>) -> Vec<u16> {
    let supported = |a: &str| match a {
        STUDY_ROOT_GET => Some(Roles::SCP),
        CT => Some(Roles::SCU),
        _ => None,
    };
    let mut channel = accept_one(listener, "PACS", supported).await;
    let (context_id, rq, _) = request(&mut channel, field::C_GET_RQ).await;
    let id = rq.message_id().unwrap();
    let storage = channel.association().contexts().find(|c| c.abstract_syntax == CT).unwrap();
    assert_eq!(storage.roles, Roles::SCU, "the requestor is SCP of storage");
    let storage = storage.id;
    let (mut statuses, mut failed_uids) = (Vec::new(), Vec::new());
    for (n, (uid, data)) in instances.iter().enumerate() {
        let store_id = 100 + n as u16;
        channel.send(storage, &command::c_store_rq(store_id, CT, uid), Some(&[data])).await.unwrap();
        let (answered_on, rsp) = channel.receive_command().await.unwrap();
        assert_eq!((answered_on, rsp.command_field()), (storage, Some(field::C_STORE_RSP)));
        assert_eq!(rsp.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO), Some(store_id));
        let code = rsp.status().unwrap();
        if code != status::SUCCESS {
            failed_uids.push(uid.clone());
        }
        statuses.push(code);
        let counts = SubOperations {
            remaining: Some((instances.len() - n - 1) as u16),
            completed: Some((statuses.len() - failed_uids.len()) as u16),
            failed: Some(failed_uids.len() as u16),
            warning: Some(0),
        };
        channel
            .send(context_id, &retrieve_rsp(field::C_GET_RSP, id, STUDY_ROOT_GET, &pending(), &counts, false), None)
            .await
            .unwrap();
    }
    let counts = SubOperations {
        remaining: None,
        completed: Some((statuses.len() - failed_uids.len()) as u16),
        failed: Some(failed_uids.len() as u16),
        warning: Some(0),
    };
    let failed_list = failed_sop_instances(&failed_uids.join("\\"));
    let done = Status::failure(status::SUB_OPERATIONS_WITH_FAILURES, "sub-operations failed");
    let rsp = retrieve_rsp(field::C_GET_RSP, id, STUDY_ROOT_GET, &done, &counts, true);
    channel.send(context_id, &rsp, Some(&[&failed_list])).await.unwrap();
    released(&mut channel).await;
    statuses
}

// --- against our server --------------------------------------------------------------------

#[test]
fn echo_store_and_release() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(config(root.path()));
    let port = server.port();
    let mut template = Template::new(Image::Sc, 4000, true);
    template.set_study(7);
    template.set_series(7, 1);
    template.set_instance(7, 42, 1);
    let dataset = template.segments().concat();
    let uid = template.sop_instance_uid().to_owned();
    let (echo, stored, peer_max) = server.runtime().block_on(async {
        let mut client = Client::connect(("127.0.0.1", port), options("OXIDIP")).await.unwrap();
        assert_eq!(client.context_for(SECONDARY_CAPTURE).unwrap().transfer_syntax.uid, EXPLICIT_VR_LITTLE_ENDIAN);
        let echo = client.echo().await.unwrap();
        let stored = client.store(SECONDARY_CAPTURE, &uid, &[&dataset]).await.unwrap();
        let mismatch = client.store(SECONDARY_CAPTURE, "1.2.3", &[&dataset]).await.unwrap();
        assert_eq!(mismatch, 0xA900);
        let peer_max = client.peer_max_pdu();
        client.release().await.unwrap();
        (echo, stored, peer_max)
    });
    assert_eq!((echo, stored, peer_max), (0, 0, 16384));
    let files = stored_files(root.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with(format!("{uid}.dcm")), "{files:?}");
    assert!(std::fs::read(&files[0]).unwrap().ends_with(&dataset));
}

#[test]
fn data_is_fragmented_to_the_peer_maximum() {
    let root = tempfile::tempdir().unwrap();
    // Strict: the server aborts on any P-DATA-TF over its 1024-byte maximum.
    let (server, _events) = start(ServerConfig { max_pdu_length: 1024, ..config(root.path()) });
    let port = server.port();
    let mut template = Template::new(Image::Sc, 50_000, true);
    template.set_instance(1, 1, 1);
    let dataset = template.segments().concat();
    let uid = template.sop_instance_uid().to_owned();
    let (status, peer_max) = server.runtime().block_on(async {
        let mut client = Client::connect(("127.0.0.1", port), options("OXIDIP")).await.unwrap();
        let status = client.store(SECONDARY_CAPTURE, &uid, &[&dataset]).await.unwrap();
        let peer_max = client.peer_max_pdu();
        client.release().await.unwrap();
        (status, peer_max)
    });
    assert_eq!((status, peer_max), (0, 1024));
    let files = stored_files(root.path());
    assert!(std::fs::read(&files[0]).unwrap().ends_with(&dataset));
}

#[test]
fn rejection_and_missing_context_are_errors() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(config(root.path()));
    let port = server.port();
    server.runtime().block_on(async {
        match Client::connect(("127.0.0.1", port), options("SOMEONE")).await {
            Err(ClientError::Rejected(rj)) => assert_eq!((rj.result, rj.source, rj.reason), (1, 1, 7)),
            Err(e) => panic!("expected a rejection, got {e}"),
            Ok(_) => panic!("expected a rejection, got an association"),
        }
        let mut client = Client::connect(("127.0.0.1", port), options("OXIDIP")).await.unwrap();
        let err = client.store("1.2.3.4", "1.2.3", &[]).await.unwrap_err();
        assert!(matches!(err, ClientError::NoContext(_)), "{err}");
        client.abort().await;
    });
}

#[test]
fn timeout_when_the_peer_never_answers() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Accepts the connection and then says nothing.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let opts = ClientOptions { timeout: Duration::from_millis(200), ..options("OXIDIP") };
        let err = Client::connect(("127.0.0.1", port), opts).await.err().unwrap();
        assert!(matches!(err, ClientError::Timeout), "{err}");
    });
}

#[test]
fn store_from_a_reader_streams_the_data_set_in_chunks() {
    let root = tempfile::tempdir().unwrap();
    // Fragments of at most 1 KiB: the chunks of the reader are cut again to fit.
    let (server, _events) = start(ServerConfig { max_pdu_length: 1024, ..config(root.path()) });
    let port = server.port();
    let mut template = Template::new(Image::Sc, 100_000, true);
    template.set_instance(2, 2, 1);
    let dataset = template.segments().concat();
    let uid = template.sop_instance_uid().to_owned();
    let (status, short) = server.runtime().block_on(async {
        let mut client = Client::connect(("127.0.0.1", port), options("OXIDIP")).await.unwrap();
        let mut reader = std::io::Cursor::new(&dataset);
        let ts = EXPLICIT_VR_LITTLE_ENDIAN;
        let status = client.store_from_reader(SECONDARY_CAPTURE, ts, &uid, &mut reader, dataset.len() as u64).await;
        // Only on the context of the data set's transfer syntax.
        let other = client.store_from_reader(SECONDARY_CAPTURE, IMPLICIT_VR_LITTLE_ENDIAN, &uid, &mut reader, 0).await;
        assert!(matches!(other, Err(ClientError::NoContext(_))), "{other:?}");
        client.release().await.unwrap();
        // A reader with fewer bytes than announced: the message cannot be completed.
        let mut client = Client::connect(("127.0.0.1", port), options("OXIDIP")).await.unwrap();
        let mut short = std::io::Cursor::new(&dataset[..10]);
        let short = client.store_from_reader(SECONDARY_CAPTURE, ts, &uid, &mut short, dataset.len() as u64).await;
        (status.unwrap(), short)
    });
    assert_eq!(status, Status::success());
    assert!(matches!(short, Err(ClientError::Io(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof), "{short:?}");
    let files = stored_files(root.path());
    assert_eq!(files.len(), 1);
    assert!(std::fs::read(&files[0]).unwrap().ends_with(&dataset));
}

// --- against test-only providers -----------------------------------------------------------

#[test]
fn find_yields_each_match_then_the_final_status() {
    let runtime = runtime();
    let query = identifier("SERIES", "1.2.3.4");
    let matches: Vec<Vec<u8>> = (1..=3).map(|n| identifier("SERIES", &format!("1.2.3.{n}"))).collect();
    let (asked, found, status) = runtime.block_on(async {
        let (listener, port) = listener().await;
        let provider = tokio::spawn(find_scp(listener, matches.clone()));
        let contexts = vec![ProposedContext::scu(STUDY_ROOT_FIND, &[EXPLICIT_VR_LITTLE_ENDIAN])];
        let mut client =
            Client::connect(("127.0.0.1", port), ClientOptions::new("OXIDIP", "FINDSCP", contexts)).await.unwrap();
        let mut find = client.find(STUDY_ROOT_FIND, &query).await.unwrap();
        let mut found = Vec::new();
        while let Some(identifier) = find.next_match().await.unwrap() {
            found.push(identifier);
        }
        let status = find.status().cloned();
        assert_eq!(find.next_match().await.unwrap(), None, "over is over");
        client.release().await.unwrap();
        (provider.await.unwrap(), found, status)
    });
    assert_eq!(asked, query, "the identifier arrives as sent");
    assert_eq!(found, matches);
    assert_eq!(status, Some(Status::success()));
}

#[test]
fn find_cancelled_ends_with_cancel() {
    let runtime = runtime();
    let first = identifier("SERIES", "1.2.3.1");
    let (found, status) = runtime.block_on(async {
        let (listener, port) = listener().await;
        let provider = tokio::spawn(cancelled_find_scp(listener, first.clone()));
        let contexts = vec![ProposedContext::scu(STUDY_ROOT_FIND, &[EXPLICIT_VR_LITTLE_ENDIAN])];
        let mut client =
            Client::connect(("127.0.0.1", port), ClientOptions::new("OXIDIP", "FINDSCP", contexts)).await.unwrap();
        let mut find = client.find(STUDY_ROOT_FIND, &identifier("SERIES", "*")).await.unwrap();
        let found = find.next_match().await.unwrap();
        find.cancel().await.unwrap();
        assert_eq!(find.next_match().await.unwrap(), None);
        let status = find.status().map(|s| s.code);
        client.release().await.unwrap();
        provider.await.unwrap();
        (found, status)
    });
    assert_eq!(found, Some(first));
    assert_eq!(status, Some(status::CANCEL));
}

#[test]
fn move_reports_pending_counts_and_the_final_outcome() {
    let runtime = runtime();
    let outcome = runtime.block_on(async {
        let (listener, port) = listener().await;
        let provider = tokio::spawn(async move {
            let mut channel =
                accept_one(listener, "PACS", |a: &str| (a == STUDY_ROOT_MOVE).then_some(Roles::SCP)).await;
            let (context_id, rq, _) = request(&mut channel, field::C_MOVE_RQ).await;
            assert_eq!(rq.get_text(element::MOVE_DESTINATION).as_deref(), Some("ELSEWHERE"));
            let id = rq.message_id().unwrap();
            let counts = SubOperations { remaining: Some(1), completed: Some(1), failed: Some(0), warning: Some(0) };
            channel
                .send(
                    context_id,
                    &retrieve_rsp(field::C_MOVE_RSP, id, STUDY_ROOT_MOVE, &pending(), &counts, false),
                    None,
                )
                .await
                .unwrap();
            let last = SubOperations { remaining: None, completed: Some(2), ..counts };
            let rsp = retrieve_rsp(field::C_MOVE_RSP, id, STUDY_ROOT_MOVE, &Status::success(), &last, false);
            channel.send(context_id, &rsp, None).await.unwrap();
            released(&mut channel).await;
        });
        let contexts = vec![ProposedContext::scu(STUDY_ROOT_MOVE, &[EXPLICIT_VR_LITTLE_ENDIAN])];
        let mut client = connect(port, "PACS", contexts).await;
        let mut moving = client.move_to(STUDY_ROOT_MOVE, "ELSEWHERE", &identifier("SERIES", "1.2")).await.unwrap();
        let first = moving.next_pending().await.unwrap();
        assert_eq!(first.map(|p| (p.status, p.sub_operations.remaining)), Some((status::PENDING, Some(1))));
        let outcome = moving.finish().await.unwrap();
        client.release().await.unwrap();
        provider.await.unwrap();
        outcome
    });
    let counts = SubOperations { remaining: None, completed: Some(2), failed: Some(0), warning: Some(0) };
    assert_eq!(outcome, RetrieveOutcome { status: Status::success(), sub_operations: counts, identifier: None });
}

/// The C-GET shape: our requestor receives C-STOREs on the association it requested, as SCP
/// of storage (role selection, PS3.7 D.3.3.4), and stores them with the receiver's store
/// path: files in place under the path template, journal, answers, events.
#[test]
fn get_stores_the_sub_operations_through_the_store_path() {
    let root = tempfile::tempdir().unwrap();
    let (service, mut events) = store_service(root.path());
    let instances = vec![
        ("1.2.826.1".to_string(), dataset("1.2.826.1")),
        ("1.2.826.2".to_string(), dataset("1.2.826.2")),
        // The data set names another instance than the command: A900, listed as failed.
        ("1.2.826.3".to_string(), dataset("1.2.826.99")),
    ];
    let runtime = runtime();
    let (answered, pendings, outcome, counts) = runtime.block_on(async {
        let (listener, port) = listener().await;
        let provider = tokio::spawn(get_scp(listener, instances.clone()));
        let contexts =
            get_contexts(STUDY_ROOT_GET, EXPLICIT_VR_LITTLE_ENDIAN, &[CT], &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
        let mut client =
            Client::connect(("127.0.0.1", port), ClientOptions::new("OXIDIP", "PACS", contexts)).await.unwrap();
        assert_eq!(client.association().contexts().find(|c| c.abstract_syntax == CT).unwrap().roles, Roles::SCP);
        let mut store = StoreProvider::new(service, client.store_origin(7));
        let mut get = client.get(STUDY_ROOT_GET, &identifier("SERIES", "1.2.3.4"), &mut store).await.unwrap();
        let mut pendings = Vec::new();
        while let Some(counts) = get.next_pending().await.unwrap() {
            pendings.push(counts.sub_operations.remaining);
        }
        let outcome = get.outcome().cloned().unwrap();
        let counts = store.counts();
        client.release().await.unwrap();
        (provider.await.unwrap(), pendings, outcome, counts)
    });
    assert_eq!(answered, [0x0000, 0x0000, status::DATASET_DOES_NOT_MATCH]);
    assert_eq!(pendings, [Some(2), Some(1), Some(0)]);
    assert_eq!(outcome.status.code, status::SUB_OPERATIONS_WITH_FAILURES);
    assert_eq!((outcome.sub_operations.completed, outcome.sub_operations.failed), (Some(2), Some(1)));
    assert_eq!(outcome.identifier, Some(failed_sop_instances("1.2.826.3")));
    assert_eq!((counts.stored, counts.failed), (2, 1));
    // In place under the template, {CallingAET} being the peer that sent them.
    let files = files_under(&root.path().join("PACS"));
    assert_eq!(files.len(), 2, "{files:?}");
    for (file, (uid, data)) in files.iter().zip(&instances) {
        assert!(file.ends_with(format!("1.2.3.4/{uid}.dcm")), "{file:?}");
        assert!(std::fs::read(file).unwrap().ends_with(data), "stored byte for byte");
    }
    let batch = events.next_batch(runtime.handle(), 10, Duration::from_secs(5), Duration::ZERO).unwrap();
    let reported: Vec<(u64, &str, &str)> = batch
        .iter()
        .map(|e| match e {
            Event::InstanceStored(stored) => {
                (stored.association_id, stored.calling_aet.as_str(), stored.called_aet.as_str())
            }
            Event::InstanceFailed(failed) => (failed.association_id, failed.calling_aet.as_str(), "failed"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(reported, [(7, "PACS", "OXIDIP"), (7, "PACS", "OXIDIP"), (7, "PACS", "failed")]);
    assert_eq!(std::fs::read_dir(root.path().join(".oxidip-tmp")).unwrap().count(), 0, "no temp file left");
}

#[test]
fn a_response_that_never_comes_times_out_and_aborts() {
    let runtime = runtime();
    let (error, peer_saw) = runtime.block_on(async {
        let (listener, port) = listener().await;
        let provider = tokio::spawn(async move {
            let mut channel = accept_one(listener, "SILENT", |_: &str| Some(Roles::SCP)).await;
            let (_, echo) = channel.receive_command().await.unwrap();
            assert_eq!(echo.command_field(), Some(field::C_ECHO_RQ));
            // Never answered: what comes next is the requestor giving up.
            channel.receive_command().await.err().unwrap()
        });
        let options = ClientOptions { timeout: Duration::from_millis(300), ..options("SILENT") };
        let mut client = Client::connect(("127.0.0.1", port), options).await.unwrap();
        let error = client.echo().await.unwrap_err();
        (error, provider.await.unwrap())
    });
    assert!(matches!(error, ClientError::Timeout), "{error}");
    assert!(matches!(peer_saw, ChannelError::Aborted(Abort { source: 0, .. })), "{peer_saw:?}");
}

// --- retrievals in progress (`retrieval`) ----------------------------------------------------

/// The pending counts a stub provider sends: `remaining` left, `completed` done.
fn counts(remaining: Option<u16>, completed: u16) -> SubOperations {
    SubOperations { remaining, completed: Some(completed), failed: Some(0), warning: Some(0) }
}

/// A C-MOVE request to a stub provider on `port`, run by a `Retrieval` on `runtime`.
fn start_move(runtime: &tokio::runtime::Runtime, port: u16, idle_timeout: Duration) -> Retrieval {
    let contexts = vec![ProposedContext::scu(STUDY_ROOT_MOVE, &[EXPLICIT_VR_LITTLE_ENDIAN])];
    let options = ClientOptions::new("OXIDIP", "PACS", contexts);
    let request = Request {
        model: STUDY_ROOT_MOVE.into(),
        identifier: identifier("SERIES", "1.2"),
        method: Method::Move { destination: "ELSEWHERE".into() },
        idle_timeout,
    };
    Retrieval::start(runtime.handle(), "127.0.0.1", port, options, request).unwrap()
}

/// A C-MOVE provider: one pending response, then silence until the requestor speaks.
async fn move_scp_once_pending(listener: TcpListener) -> (Channel<TcpStream>, u8, u16) {
    let mut channel = accept_one(listener, "PACS", |a: &str| (a == STUDY_ROOT_MOVE).then_some(Roles::SCP)).await;
    let (context_id, rq, _) = request(&mut channel, field::C_MOVE_RQ).await;
    let id = rq.message_id().unwrap();
    let rsp = retrieve_rsp(field::C_MOVE_RSP, id, STUDY_ROOT_MOVE, &pending(), &counts(Some(3), 1), false);
    channel.send(context_id, &rsp, None).await.unwrap();
    (channel, context_id, id)
}

/// The next pending response, which must come within a few seconds.
fn progress(retrieval: &Retrieval) -> Pending {
    retrieval.next_progress(Duration::from_secs(5)).expect("a pending response")
}

/// Waits for the end of `retrieval` (a few seconds at most).
fn ended(retrieval: &Retrieval) -> End {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = retrieval.end() {
            return end;
        }
        assert!(std::time::Instant::now() < deadline, "the retrieve has not ended");
        retrieval.next_progress(Duration::from_millis(100));
    }
}

/// PS3.7 §9.3.2.3: the C-CANCEL-RQ goes out while the peer is silent, naming the operation
/// (Message ID Being Responded To); the responses already on their way are still read, one
/// by one, then the final Cancel (FE00).
#[test]
fn retrieval_cancel_goes_out_at_once_and_the_responses_keep_being_read() {
    let runtime = runtime();
    let (listener, port) = runtime.block_on(listener());
    let provider = runtime.spawn(async move {
        let (mut channel, context_id, id) = move_scp_once_pending(listener).await;
        let (cancel_on, cancel) = channel.receive_command().await.unwrap();
        assert_eq!((cancel_on, cancel.command_field()), (context_id, Some(field::C_CANCEL_RQ)));
        let responded_to = cancel.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO);
        // One already on its way, then the end of the sub-operation under way: Cancel.
        let rsp = retrieve_rsp(field::C_MOVE_RSP, id, STUDY_ROOT_MOVE, &pending(), &counts(Some(2), 2), false);
        channel.send(context_id, &rsp, None).await.unwrap();
        let cancelled = Status { code: status::CANCEL, comment: None };
        let rsp = retrieve_rsp(field::C_MOVE_RSP, id, STUDY_ROOT_MOVE, &cancelled, &counts(Some(2), 2), false);
        channel.send(context_id, &rsp, None).await.unwrap();
        released(&mut channel).await;
        (id, responded_to)
    });
    let retrieval = start_move(&runtime, port, Duration::from_secs(10));
    let first = progress(&retrieval);
    assert_eq!((first.status, first.sub_operations), (status::PENDING, counts(Some(3), 1)));
    assert_eq!(retrieval.next_progress(Duration::from_millis(50)), None, "the peer is silent");
    retrieval.cancel();
    assert_eq!(progress(&retrieval).sub_operations, counts(Some(2), 2));
    let End::Outcome(outcome) = ended(&retrieval) else { panic!("no final response") };
    assert_eq!((outcome.status.code, outcome.sub_operations), (status::CANCEL, counts(Some(2), 2)));
    let (id, responded_to) = runtime.block_on(provider).unwrap();
    assert_eq!(responded_to, Some(id));
    assert_eq!((retrieval.next_progress(Duration::ZERO), retrieval.stored()), (None, 0));
}

/// A peer silent longer than the idle timeout is aborted, and the end says why.
#[test]
fn retrieval_of_a_silent_peer_ends_at_the_idle_timeout() {
    let runtime = runtime();
    let (listener, port) = runtime.block_on(listener());
    let provider = runtime.spawn(async move {
        let (mut channel, _, _) = move_scp_once_pending(listener).await;
        channel.receive_command().await.err().unwrap()
    });
    let retrieval = start_move(&runtime, port, Duration::from_millis(300));
    assert_eq!(progress(&retrieval).sub_operations, counts(Some(3), 1));
    let End::Failed(words) = ended(&retrieval) else { panic!("a silent peer cannot end well") };
    assert!(words.contains("sent nothing for 0.3 s (idle timeout)"), "{words}");
    assert_eq!(retrieval.next_progress(Duration::MAX), None, "ended: no wait, however long allowed");
    let peer_saw = runtime.block_on(provider).unwrap();
    assert!(matches!(peer_saw, ChannelError::Aborted(Abort { source: 0, .. })), "{peer_saw:?}");
}

/// A peer that ignores the C-CANCEL: the user's A-ABORT ends it at once.
#[test]
fn retrieval_aborted_while_the_peer_ignores_the_cancel() {
    let runtime = runtime();
    let (listener, port) = runtime.block_on(listener());
    let (cancel_seen, cancel_came) = std::sync::mpsc::channel();
    let provider = runtime.spawn(async move {
        let (mut channel, _, _) = move_scp_once_pending(listener).await;
        let (_, cancel) = channel.receive_command().await.unwrap();
        assert_eq!(cancel.command_field(), Some(field::C_CANCEL_RQ));
        cancel_seen.send(()).unwrap();
        channel.receive_command().await.err().unwrap()
    });
    let retrieval = start_move(&runtime, port, Duration::from_secs(10));
    progress(&retrieval);
    retrieval.cancel();
    cancel_came.recv_timeout(Duration::from_secs(5)).expect("the C-CANCEL-RQ went out");
    retrieval.abort();
    let End::Failed(words) = ended(&retrieval) else { panic!("aborted: no final response") };
    assert!(words.contains("aborted at our request"), "{words}");
    let peer_saw = runtime.block_on(provider).unwrap();
    assert!(matches!(peer_saw, ChannelError::Aborted(Abort { source: 0, .. })), "{peer_saw:?}");
}

/// C-GET through `Retrieval`: pending responses as the instances are stored, counted.
#[test]
fn retrieval_by_get_counts_the_instances_stored() {
    let root = tempfile::tempdir().unwrap();
    let (service, _events) = store_service(root.path());
    let instances: Vec<_> = ["1.2.826.1", "1.2.826.2"].iter().map(|uid| (uid.to_string(), dataset(uid))).collect();
    let runtime = runtime();
    let (listener, port) = runtime.block_on(listener());
    let provider = runtime.spawn(get_scp(listener, instances));
    let contexts =
        get_contexts(STUDY_ROOT_GET, EXPLICIT_VR_LITTLE_ENDIAN, &[CT], &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
    let request = Request {
        model: STUDY_ROOT_GET.into(),
        identifier: identifier("SERIES", "1.2.3.4"),
        method: Method::Get { service, association_id: 9 },
        idle_timeout: Duration::from_secs(10),
    };
    let options = ClientOptions::new("OXIDIP", "PACS", contexts);
    let retrieval = Retrieval::start(runtime.handle(), "127.0.0.1", port, options, request).unwrap();
    let remaining: Vec<_> = [progress(&retrieval), progress(&retrieval)].map(|p| p.sub_operations.remaining).into();
    assert_eq!(remaining, [Some(1), Some(0)]);
    let End::Outcome(outcome) = ended(&retrieval) else { panic!("no final response") };
    assert_eq!(outcome.sub_operations.completed, Some(2));
    assert_eq!(retrieval.stored(), 2);
    assert_eq!(runtime.block_on(provider).unwrap(), [status::SUCCESS, status::SUCCESS]);
    assert_eq!(files_under(&root.path().join("PACS")).len(), 2);
}

/// A C-GET whose storage contexts were all refused in the SCP role could bring nothing
/// back: an error in words at once, the association released, no request sent.
#[test]
fn retrieval_by_get_without_a_storage_context_is_refused_in_words() {
    let root = tempfile::tempdir().unwrap();
    let (service, _events) = store_service(root.path());
    let runtime = runtime();
    let (listener, port) = runtime.block_on(listener());
    let provider = runtime.spawn(async move {
        let mut channel = accept_one(listener, "PACS", |a: &str| (a == STUDY_ROOT_GET).then_some(Roles::SCP)).await;
        released(&mut channel).await;
    });
    let contexts =
        get_contexts(STUDY_ROOT_GET, EXPLICIT_VR_LITTLE_ENDIAN, &[CT], &[EXPLICIT_VR_LITTLE_ENDIAN]).unwrap();
    let request = Request {
        model: STUDY_ROOT_GET.into(),
        identifier: identifier("SERIES", "1.2.3.4"),
        method: Method::Get { service, association_id: 9 },
        idle_timeout: Duration::from_secs(10),
    };
    let options = ClientOptions::new("OXIDIP", "PACS", contexts);
    let Err(error) = Retrieval::start(runtime.handle(), "127.0.0.1", port, options, request) else {
        panic!("a C-GET that can bring nothing back must not start");
    };
    let words = error.to_string();
    assert!(words.contains("accepted none of the 1 storage SOP classes proposed with us as SCP"), "{words}");
    runtime.block_on(provider).unwrap();
}

/// Nobody watches a retrieval dropped before its end: the peer is asked to stop.
#[test]
fn retrieval_dropped_before_its_end_is_cancelled() {
    let runtime = runtime();
    let (listener, port) = runtime.block_on(listener());
    let provider = runtime.spawn(async move {
        let (mut channel, context_id, id) = move_scp_once_pending(listener).await;
        let (_, cancel) = channel.receive_command().await.unwrap();
        let cancelled = Status { code: status::CANCEL, comment: None };
        let rsp = retrieve_rsp(field::C_MOVE_RSP, id, STUDY_ROOT_MOVE, &cancelled, &counts(Some(3), 1), false);
        channel.send(context_id, &rsp, None).await.unwrap();
        released(&mut channel).await;
        cancel.command_field()
    });
    let retrieval = start_move(&runtime, port, Duration::from_secs(10));
    progress(&retrieval);
    drop(retrieval);
    assert_eq!(runtime.block_on(provider).unwrap(), Some(field::C_CANCEL_RQ));
}
