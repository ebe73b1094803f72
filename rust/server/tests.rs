//! The server end to end over loopback, driven by our own codec: association, C-ECHO,
//! C-STORE, failures, and protocol errors.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::config::ServerConfig;
use super::Server;
use crate::dicom::element::{Syntax, Writer};
use crate::dicom::vr::Vr;
use crate::dimse::command::{self, field, CommandSet};
use crate::events::{Event, EventStream};
use crate::ul::connection::Connection;
use crate::ul::pdu::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

pub(crate) fn config(root: &Path) -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".into(),
        port: 0,
        plain_listener: true,
        tls: None,
        aet: "OXIDIP".into(),
        enforce_called_aet: true,
        allowed_calling_aets: vec![],
        max_pdu_length: 16384,
        strict: true,
        promiscuous: false,
        uncompressed_only: false,
        max_associations: 4,
        files_root: root.to_string_lossy().into_owned(),
        path_template: "{CallingAET}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm".into(),
        fsync: "none".into(),
        duplicates: "overwrite".into(),
        required_attributes: vec!["SOPInstanceUID".into(), "SeriesInstanceUID".into()],
        inflate_max_mib: 4096,
        inflate_max_ratio: 200,
        artim_timeout: 5.0,
        idle_timeout: 5.0,
        write_timeout: 5.0,
        event_queue_size: 100,
        ack: "stored".into(),
        file_mode: 0o640,
        dir_mode: 0o750,
        group: None,
        node: "test-node".into(),
    }
}

pub(crate) fn dataset(sop_instance_uid: &str) -> Vec<u8> {
    let mut ds = Writer::new(Syntax::ExplicitLittle);
    ds.text(0x0008_0016, Vr::UI, CT).unwrap();
    ds.text(0x0008_0018, Vr::UI, sop_instance_uid).unwrap();
    ds.text(0x0010_0020, Vr::LO, "PAT1").unwrap();
    ds.text(0x0020_000E, Vr::UI, "1.2.3.4").unwrap();
    ds.u16(0x0028_0010, Vr::US, 512);
    ds.into_bytes()
}

struct Scu {
    conn: Connection<TcpStream>,
}

impl Scu {
    async fn associate(port: u16, called: &str) -> (Scu, Pdu) {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut conn = Connection::new(stream, 16384, Duration::from_secs(5));
        let rq = AssociateRq {
            protocol_version: 1,
            called_ae_title: called.into(),
            calling_ae_title: "TESTSCU".into(),
            application_context: DICOM_APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextRq {
                    id: 1,
                    abstract_syntax: CT.into(),
                    transfer_syntaxes: vec![EXPLICIT_LE.into()],
                },
                PresentationContextRq {
                    id: 3,
                    abstract_syntax: "1.2.840.10008.1.1".into(),
                    transfer_syntaxes: vec!["1.2.840.10008.1.2".into()],
                },
            ],
            user_information: UserInformation { max_pdu_length: Some(16384), ..Default::default() },
        };
        conn.write_pdu(&Pdu::AssociateRq(rq)).await.unwrap();
        let answer = conn.read_pdu().await.unwrap().unwrap();
        (Scu { conn }, answer)
    }

    async fn pdv(&mut self, context_id: u8, is_command: bool, is_last: bool, data: &[u8]) {
        let pdv = Pdv { context_id, is_command, is_last, data: Bytes::copy_from_slice(data) };
        self.conn.write_pdu(&Pdu::PData(PData::new(&[pdv]))).await.unwrap();
    }

    async fn response(&mut self) -> CommandSet {
        match self.conn.read_pdu().await.unwrap().unwrap() {
            Pdu::PData(p_data) => CommandSet::decode(&p_data.iter().next().unwrap().data).unwrap(),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    /// Sends a C-STORE with the data set in fragments of `fragment` bytes.
    async fn store(&mut self, command_uid: &str, ds: &[u8], fragment: usize) -> CommandSet {
        let rq = command::c_store_rq(1, CT, command_uid);
        self.pdv(1, true, true, &rq.encode()).await;
        let chunks: Vec<&[u8]> = ds.chunks(fragment).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.pdv(1, false, i + 1 == chunks.len(), chunk).await;
        }
        self.response().await
    }
}

/// Events until `associations` associations have been reported closed.
pub(crate) fn events_until_closed(server: &Server, stream: &mut EventStream, associations: usize) -> Vec<Event> {
    let mut all = Vec::new();
    let closed = |all: &Vec<Event>| all.iter().filter(|e| matches!(e, Event::AssociationClosed(_))).count();
    while closed(&all) < associations {
        let batch = stream.next_batch(server.runtime().handle(), 100, Duration::from_secs(10), Duration::ZERO);
        let batch = batch.expect("event stream ended early");
        assert!(!batch.is_empty(), "timed out waiting for events");
        all.extend(batch);
    }
    all
}

fn temp_files(root: &Path) -> usize {
    std::fs::read_dir(root.join(".oxidip-tmp")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn echo_store_and_release() {
    let root = tempfile::tempdir().unwrap();
    let (server, mut events) = Server::start(config(root.path()).settings().unwrap()).unwrap();
    let port = server.port();
    let root_path = root.path().to_path_buf();
    let stored = server.runtime().block_on(async move {
        let (mut scu, answer) = Scu::associate(port, "OXIDIP").await;
        let Pdu::AssociateAc(ac) = answer else { panic!("rejected: {answer:?}") };
        assert_eq!(ac.user_information.max_pdu_length, Some(16384));
        scu.pdv(3, true, true, &command::c_echo_rq(9).encode()).await;
        let echo = scu.response().await;
        assert_eq!((echo.command_field(), echo.status()), (Some(field::C_ECHO_RSP), Some(0)));
        // Fragments of 7 bytes: boundaries fall inside tags, lengths and values.
        let ok = scu.store("1.2.3.4.5", &dataset("1.2.3.4.5"), 7).await;
        let mismatch = scu.store("9.9.9", &dataset("1.2.3.4.6"), 1000).await;
        scu.conn.write_pdu(&Pdu::ReleaseRq).await.unwrap();
        assert_eq!(scu.conn.read_pdu().await.unwrap(), Some(Pdu::ReleaseRp));
        // Removed before the A-RELEASE-RP, not at some point after it.
        assert_eq!(temp_files(&root_path), 0);
        (ok.status(), mismatch.status())
    });
    assert_eq!(stored, (Some(0x0000), Some(0xA900)));
    let path = root.path().join("TESTSCU/1.2.3.4/1.2.3.4.5.dcm");
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[128..132], b"DICM");
    assert!(file.ends_with(&dataset("1.2.3.4.5")), "data set stored byte for byte");
    assert_eq!(temp_files(root.path()), 0);
    let events = events_until_closed(&server, &mut events, 1);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::InstanceStored(_) => "stored",
            Event::InstanceFailed(_) => "failed",
            Event::AssociationClosed(c) => c.outcome,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec!["stored", "failed", "released"]);
}

#[test]
fn abort_mid_instance_leaves_no_file() {
    let root = tempfile::tempdir().unwrap();
    let (server, mut events) = Server::start(config(root.path()).settings().unwrap()).unwrap();
    let port = server.port();
    server.runtime().block_on(async move {
        let (mut scu, _) = Scu::associate(port, "OXIDIP").await;
        let rq = command::c_store_rq(1, CT, "1.2.3.4.5");
        scu.pdv(1, true, true, &rq.encode()).await;
        scu.pdv(1, false, false, &dataset("1.2.3.4.5")[..20]).await;
        scu.conn.write_pdu(&Pdu::Abort(Abort { source: 0, reason: 0 })).await.unwrap();
    });
    let events = events_until_closed(&server, &mut events, 1);
    assert!(matches!(&events[..], [Event::AssociationClosed(c)] if c.outcome == "aborted-by-peer"));
    assert!(!root.path().join("TESTSCU").exists());
    assert_eq!(temp_files(root.path()), 0);
}

#[test]
fn protocol_errors_get_an_abort_and_rejections_a_reason() {
    let root = tempfile::tempdir().unwrap();
    let (server, mut events) = Server::start(config(root.path()).settings().unwrap()).unwrap();
    let port = server.port();
    let (rejected, oversized) = server.runtime().block_on(async move {
        let (_, rejected) = Scu::associate(port, "SOMEONE").await;
        let (mut scu, _) = Scu::associate(port, "OXIDIP").await;
        // Strict mode: a P-DATA-TF over our 16384-byte limit is a protocol error.
        scu.pdv(1, true, true, &vec![0u8; 20000]).await;
        (rejected, scu.conn.read_pdu().await.unwrap())
    });
    assert_eq!(rejected, Pdu::AssociateRj(AssociateRj { result: 1, source: 1, reason: 7 }));
    assert_eq!(oversized, Some(Pdu::Abort(Abort { source: 2, reason: 6 })));
    let events = events_until_closed(&server, &mut events, 2);
    let outcomes: Vec<&str> = events
        .iter()
        .filter_map(|e| if let Event::AssociationClosed(c) = e { Some(c.outcome) } else { None })
        .collect();
    assert!(outcomes.contains(&"rejected") && outcomes.contains(&"aborted"), "{outcomes:?}");
}

#[test]
fn stop_ends_the_event_stream() {
    let root = tempfile::tempdir().unwrap();
    let (server, mut events) = Server::start(config(root.path()).settings().unwrap()).unwrap();
    server.stop(Duration::from_secs(1));
    assert!(events.next_batch(server.runtime().handle(), 10, Duration::from_secs(10), Duration::ZERO).is_none());
}

#[test]
fn stop_closes_connections_that_sent_no_request_at_once() {
    let root = tempfile::tempdir().unwrap();
    let config = ServerConfig { artim_timeout: 600.0, ..config(root.path()) };
    let (server, mut events) = Server::start(config.settings().unwrap()).unwrap();
    let port = server.port();
    let handle = server.runtime().handle().clone();
    let silent = handle.block_on(async move {
        let silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        // Accepted in order: once a later connection is an association, the silent one is
        // in its handler, waiting for an A-ASSOCIATE-RQ.
        let (mut scu, _) = Scu::associate(port, "OXIDIP").await;
        scu.conn.write_pdu(&Pdu::ReleaseRq).await.unwrap();
        assert_eq!(scu.conn.read_pdu().await.unwrap(), Some(Pdu::ReleaseRp));
        silent
    });
    server.stop(Duration::from_secs(600));
    let closed = events_until_closed(&server, &mut events, 2);
    let outcomes: Vec<(&str, &str)> = closed
        .iter()
        .filter_map(|e| if let Event::AssociationClosed(c) = e { Some((c.outcome, c.detail.as_str())) } else { None })
        .collect();
    assert_eq!(outcomes, [("released", ""), ("shutdown", "receiver stopping: closed before A-ASSOCIATE-RQ")]);
    assert!(events.next_batch(&handle, 10, Duration::from_secs(30), Duration::ZERO).is_none());
    drop(silent);
}

#[test]
fn ack_registered_answers_after_python_confirms() {
    let root = tempfile::tempdir().unwrap();
    let config = ServerConfig { ack: "registered".into(), ..config(root.path()) };
    let (server, mut events) = Server::start(config.settings().unwrap()).unwrap();
    let port = server.port();
    let handle = server.runtime().handle().clone();
    let scu = handle.spawn(async move {
        let (mut scu, _) = Scu::associate(port, "OXIDIP").await;
        let first = scu.store("1.2.3.4.5", &dataset("1.2.3.4.5"), 1000).await.status();
        let second = scu.store("1.2.3.4.6", &dataset("1.2.3.4.6"), 1000).await.status();
        (first, second)
    });
    for registered in [true, false] {
        let batch = events.next_batch(&handle, 10, Duration::from_secs(10), Duration::ZERO).unwrap();
        let [Event::InstanceStored(stored)] = &batch[..] else { panic!("expected one stored instance: {batch:?}") };
        // The sender is still waiting for its answer: it can only come after ours.
        assert!(!scu.is_finished());
        server.acknowledge(&[stored.journal_seq], registered);
    }
    let (first, second) = handle.block_on(scu).unwrap();
    assert_eq!((first, second), (Some(0x0000), Some(0xA700)));
}

#[test]
fn metrics_count_associations_instances_bytes_and_refusals() {
    let root = tempfile::tempdir().unwrap();
    let (server, mut events) = Server::start(config(root.path()).settings().unwrap()).unwrap();
    let port = server.port();
    let ds = dataset("1.2.3.4.5");
    let sent = ds.clone();
    server.runtime().block_on(async move {
        let (_, rejected) = Scu::associate(port, "SOMEONE").await;
        assert!(matches!(rejected, Pdu::AssociateRj(_)));
        let (mut scu, _) = Scu::associate(port, "OXIDIP").await;
        scu.store("1.2.3.4.5", &sent, 7).await;
        scu.store("9.9.9", &dataset("1.2.3.4.6"), 1000).await;
        scu.conn.write_pdu(&Pdu::ReleaseRq).await.unwrap();
        scu.conn.read_pdu().await.unwrap();
    });
    events_until_closed(&server, &mut events, 2);
    let metrics = server.metrics();
    assert!(metrics.listening);
    assert_eq!((metrics.associations_open, metrics.associations_total), (0, 2));
    assert_eq!((metrics.associations_closed["released"], metrics.associations_closed["rejected"]), (1, 1));
    assert_eq!(metrics.associations_refused["called-aet"], 1);
    assert_eq!(metrics.instances_stored, 1);
    assert_eq!(metrics.instances_failed.get("A900"), Some(&1));
    assert_eq!(metrics.bytes_received, (ds.len() + dataset("1.2.3.4.6").len()) as u64);
    assert_eq!(metrics.store_latency.counts.iter().sum::<u64>(), 2);
    // The stored instance is journaled, and nobody acknowledged it.
    assert_eq!(metrics.journal_backlog, 1);
    server.stop(Duration::ZERO);
    assert!(events.next_batch(server.runtime().handle(), 10, Duration::from_secs(10), Duration::ZERO).is_none());
    assert!(!server.metrics().listening);
}
