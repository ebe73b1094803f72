//! oxidip's network and storage hot path: the PS3.8 upper layer, the PS3.7 DIMSE services it
//! answers (C-ECHO, C-STORE) and streaming writes to storage. No Python runs per PDU: the
//! Python package only configures the server and consumes batches of events.

pub mod client;
pub mod clock;
pub mod dicom;
pub mod dimse;
pub mod events;
pub mod implementation;
pub mod loadgen;
pub mod server;
pub mod service;
pub mod storage;
pub mod transport;
pub mod ul;

#[cfg(feature = "python")]
mod python;
