//! DIMSE (PS3.7): command sets, statuses, the messages of the services we speak, and the
//! message channel both roles send and receive them on.

pub mod channel;
pub mod command;
pub mod query_retrieve;
pub mod status;
