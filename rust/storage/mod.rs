//! Storage of received instances: Part 10 file meta, path templates, temp files and rename.
//!
//! Per instance the C-STORE handler calls [`Storage::begin`] (a temp file holding the
//! preamble and file meta), [`PartialInstance::write`] for each dataset fragment (the part of
//! a large data set past its first 256 KiB is written by a background thread), then
//! [`PartialInstance::finish_writes`], renders the path with [`Storage::template`] and
//! [`PartialInstance::commit`]s; dropping the `PartialInstance` instead removes the temp
//! file. File I/O is blocking `std::fs` I/O.

mod background;
pub mod file_meta;
pub mod journal;
pub mod path_template;
pub mod permissions;
pub mod read_back;
mod sanitize;
mod temp;
pub mod writer;

pub use file_meta::{encode_file_meta, FileMeta, FileMetaError};
pub use path_template::{PathContext, PathTemplate, TemplateError, DEFAULT_PATH_TEMPLATE};
pub use writer::{
    CommitError, Committed, DuplicatePolicy, FsyncPolicy, PartialInstance, Storage, StorageOptions, TempFile,
    UnknownPolicy,
};
