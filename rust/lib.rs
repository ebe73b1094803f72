//! oxidip's network and storage hot path: the PS3.8 upper layer (`ul`), the PS3.7 DIMSE
//! message channel and messages (`dimse`), the C-STORE service provider (`service`) with
//! streaming writes to storage (`storage`), the server that accepts associations (`server`)
//! and the client that requests them (`client`; `loadgen` drives it for `oxidip bench`). No
//! Python runs per PDU: the Python package only configures the server and consumes batches of
//! events.

pub mod client;
pub mod clock;
pub mod dicom;
pub mod dimse;
pub mod events;
pub mod forward;
pub mod implementation;
pub mod loadgen;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;
pub mod ul;

#[cfg(feature = "python")]
mod python;
