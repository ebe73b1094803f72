//! DICOM data (PS3.5, PS3.6): transfer syntaxes, SOP classes, the VR table, data elements as
//! bytes, and reading the attributes we need from a dataset while it streams past.

pub mod attributes;
pub mod charset;
pub mod element;
pub mod extract;
pub mod inflate;
pub mod sop_class;
pub mod transfer_syntax;
pub mod uid;
pub mod vr;
