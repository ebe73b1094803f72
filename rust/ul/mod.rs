//! DICOM upper layer (PS3.8): PDUs, their codec, association negotiation and the framed
//! connection that carries them.

pub mod association;
pub mod codec;
pub mod connection;
pub mod pdu;
