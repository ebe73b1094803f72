//! The load generator against our own server over loopback, plain and over mutual TLS.

use super::template::Image;
use super::*;
use crate::client::tests::{start, stored_files};
use crate::dicom::transfer_syntax::EXPLICIT_VR_LITTLE_ENDIAN;
use crate::server::config::ServerConfig;
use crate::server::tests::config;

/// A small load into `addr` from LOADSCU, plain TCP.
fn load(addr: String) -> LoadOptions {
    LoadOptions {
        addr,
        calling_aet: "LOADSCU".into(),
        called_aet: "OXIDIP".into(),
        associations: 1,
        instances: 1,
        size: 1000,
        image: Image::Sc,
        idle_associations: 0,
        transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.into(),
        max_pdu_length: 16384,
        timeout: 10.0,
        deadline: 0.0,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    }
}

#[test]
fn load_run_stores_every_instance() {
    let root = tempfile::tempdir().unwrap();
    let (server, _events) = start(ServerConfig { event_queue_size: 1000, ..config(root.path()) });
    let report = run(LoadOptions {
        associations: 3,
        instances: 20,
        size: 3000,
        idle_associations: 1,
        ..load(format!("127.0.0.1:{}", server.port()))
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
    let report = run(LoadOptions {
        called_aet: "WRONG".into(),
        associations: 2,
        instances: 5,
        max_pdu_length: 0,
        ..load(format!("127.0.0.1:{}", server.port()))
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
    let tls_load = |identity: Option<&(std::path::PathBuf, std::path::PathBuf)>, ca: bool| LoadOptions {
        instances: 3,
        size: 300_000,
        tls_ca: if ca { path(&pki.ca) } else { None },
        tls_cert: identity.and_then(|(cert, _)| path(cert)),
        tls_key: identity.and_then(|(_, key)| path(key)),
        ..load(addr.clone())
    };
    let report = run(tls_load(Some(&pki.client), true)).unwrap();
    assert_eq!((report.instances, report.failures), (3, 0), "{report:?}");
    for (identity, ca) in [(None, true), (Some(&pki.stranger), true), (None, false)] {
        let report = run(tls_load(identity, ca)).unwrap();
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
