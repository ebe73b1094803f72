//! DIMSE (PS3.7): command sets and the statuses of the services we provide.

pub mod command;
pub mod status;
