//! The client and the load generator against our own server over loopback.

use std::path::Path;

use super::load::{self, LoadOptions};
use super::template::{Image, Template, SECONDARY_CAPTURE};
use super::*;
use crate::dicom::transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN;
use crate::server::config::ServerConfig;
use crate::server::tests::config;
use crate::server::Server;

fn options(called: &str) -> ClientOptions {
    ClientOptions::new("LOADSCU", called, vec![(SECONDARY_CAPTURE.into(), vec![EXPLICIT_VR_LITTLE_ENDIAN.into()])])
}

fn start(config: ServerConfig) -> (Server, crate::events::EventStream) {
    Server::start(config.settings().unwrap()).unwrap()
}

fn stored_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.join("LOADSCU")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                dirs.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

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
            Err(ScuError::Rejected(rj)) => assert_eq!((rj.result, rj.source, rj.reason), (1, 1, 7)),
            Err(e) => panic!("expected a rejection, got {e}"),
            Ok(_) => panic!("expected a rejection, got an association"),
        }
        let mut client = Client::connect(("127.0.0.1", port), options("OXIDIP")).await.unwrap();
        let err = client.store("1.2.3.4", "1.2.3", &[]).await.unwrap_err();
        assert!(matches!(err, ScuError::NoContext(_)), "{err}");
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
        assert!(matches!(err, ScuError::Timeout), "{err}");
    });
}

#[test]
fn load_run_stores_every_instance() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(ServerConfig { event_queue_size: 1000, ..config(root.path()) });
    let report = load::run(LoadOptions {
        addr: format!("127.0.0.1:{}", server.port()),
        calling_aet: "LOADSCU".into(),
        called_aet: "OXIDIP".into(),
        associations: 3,
        instances: 20,
        size: 3000,
        image: Image::Sc,
        idle_associations: 1,
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        max_pdu_length: 16384,
        timeout: 10.0,
        deadline: 0.0,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    })
    .unwrap();
    assert_eq!((report.instances, report.failures), (20, 0), "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.idle_associations, 1);
    assert!(report.latency_p50_ms > 0.0 && report.latency_max_ms >= report.latency_p99_ms);
    let files = stored_files(root.path());
    assert_eq!(files.len(), 20);
    let series: std::collections::HashSet<_> = files.iter().map(|f| f.parent().unwrap().to_owned()).collect();
    assert_eq!(series.len(), 3, "one series per association");
}

#[test]
fn load_run_reports_rejection() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(config(root.path()));
    let report = load::run(LoadOptions {
        addr: format!("127.0.0.1:{}", server.port()),
        calling_aet: "LOADSCU".into(),
        called_aet: "WRONG".into(),
        associations: 2,
        instances: 5,
        size: 1000,
        image: Image::Sc,
        idle_associations: 0,
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        max_pdu_length: 0,
        timeout: 10.0,
        deadline: 0.0,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    })
    .unwrap();
    assert_eq!((report.instances, report.failures, report.errors.len()), (0, 5, 2), "{report:?}");
}

/// The load generator over TLS into the TLS listener, with mutual TLS: its client certificate
/// is required, checked against the CA and reported; a client without one, one from another
/// CA and a plain-text client on the TLS port store nothing.
#[test]
fn load_over_mutual_tls() {
    let pki = crate::transport::tls::test_pki::generate();
    let root = tempfile::tempdir().unwrap();
    let tls = crate::server::config::TlsListenerConfig {
        port: 0,
        cert: pki.server.0.to_string_lossy().into(),
        key: pki.server.1.to_string_lossy().into(),
        ca: Some(pki.ca.to_string_lossy().into()),
    };
    let (server, mut events) = start(ServerConfig { plain_listener: false, tls: Some(tls), ..config(root.path()) });
    assert_eq!(server.port(), 0, "no plain listener");
    let addr = format!("127.0.0.1:{}", server.ports().tls.unwrap());
    let path = |p: &std::path::Path| Some(p.to_string_lossy().into_owned());
    let load = |identity: Option<&(std::path::PathBuf, std::path::PathBuf)>, ca: bool| LoadOptions {
        addr: addr.clone(),
        calling_aet: "LOADSCU".into(),
        called_aet: "OXIDIP".into(),
        associations: 1,
        instances: 3,
        size: 300_000,
        image: Image::Sc,
        idle_associations: 0,
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        max_pdu_length: 16384,
        timeout: 10.0,
        deadline: 0.0,
        tls_ca: if ca { path(&pki.ca) } else { None },
        tls_cert: identity.and_then(|(cert, _)| path(cert)),
        tls_key: identity.and_then(|(_, key)| path(key)),
    };
    let report = load::run(load(Some(&pki.client), true)).unwrap();
    assert_eq!((report.instances, report.failures), (3, 0), "{report:?}");
    for (identity, ca) in [(None, true), (Some(&pki.stranger), true), (None, false)] {
        let report = load::run(load(identity, ca)).unwrap();
        assert_eq!((report.instances, report.errors.len()), (0, 1), "{report:?}");
    }
    assert_eq!(stored_files(root.path()).len(), 3);
    let mut closed: Vec<_> = crate::server::tests::events_until_closed(&server, &mut events, 4)
        .into_iter()
        .filter_map(|e| match e {
            crate::events::Event::AssociationClosed(closed) => Some(closed),
            _ => None,
        })
        .collect();
    closed.sort_by_key(|c| c.association_id);
    assert_eq!(closed[0].peer_certificate_subject, "CN=client, O=oxidip tests");
    assert!(closed.iter().all(|c| c.tls));
    for refused in &closed[1..] {
        assert_eq!(refused.outcome, "rejected", "{refused:?}");
        assert!(refused.detail.starts_with("TLS handshake failed"), "{refused:?}");
    }
}
