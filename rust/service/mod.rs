//! DIMSE service providers that any association can run, whichever side requested it: the
//! C-STORE SCP (the server's associations, and a C-GET requestor's own).

pub mod store;
