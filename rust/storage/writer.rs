//! Writing instances: each is streamed into a temp file under the storage root and moved to
//! its final path in one atomic step once complete, so a final path only ever holds a whole
//! file, and an aborted or failed instance leaves nothing behind.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, IoSlice, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

use super::background::BackgroundWriter;
use super::file_meta::{encode_file_meta, FileMeta};
use super::journal::Journal;
use super::path_template::PathTemplate;
use super::permissions::{self, Permissions};
use super::temp::{self, Owner, TempPath, TEMP_DIR_NAME};

/// Fragments are gathered up to this many bytes before a write, so small PDVs cost no
/// syscall each; a larger fragment goes out together with the buffer in one `writev`.
const BUFFER_CAPACITY: usize = 64 * 1024;

/// Data set bytes written by the association itself; past them, the rest of the data set
/// goes to a background writer (see `background`). Measured (bench/results, tmpfs): from
/// 256 KiB on, CT slices of 512 KiB lost a quarter of their throughput to the hand-offs,
/// while instances of 1 GiB went from 0.5-0.8 to 1.1-1.5 GB/s; at 1 MiB, CT slices stay on
/// the association's own thread.
const BACKGROUND_AFTER: u64 = 1 << 20;

/// When to fsync, i.e. what a success status promises about a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Never: the OS writes back when it likes. Fastest; a crash may lose recent instances.
    None,
    /// The file's data before it is placed: never a placed file with missing contents, but
    /// a crash may lose its directory entry (the instance is then simply not stored).
    File,
    /// The file, then the directories whose entries changed: a stored instance survives.
    FileAndDirectory,
}

/// What to do when the final path already holds a file (the same instance sent again, or
/// two instances the path template does not tell apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// Replace it (atomically: readers see the old or the new file, never a mix).
    Overwrite,
    /// Keep the existing file and discard ours; `commit` reports `duplicate: true`.
    KeepFirst,
    /// Keep the existing file; `commit` fails with [`CommitError::Duplicate`].
    Reject,
}

impl FsyncPolicy {
    const NAMES: &'static [(Self, &'static str)] =
        &[(Self::None, "none"), (Self::File, "file"), (Self::FileAndDirectory, "file-and-directory")];
}

impl DuplicatePolicy {
    const NAMES: &'static [(Self, &'static str)] =
        &[(Self::Overwrite, "overwrite"), (Self::KeepFirst, "keep-first"), (Self::Reject, "reject")];
}

/// A policy name that is not one of the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPolicy {
    what: &'static str,
    given: String,
    accepted: Vec<&'static str>,
}

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, given) = (self.what, &self.given);
        write!(f, "unknown {what} {given:?}; accepted: {}", self.accepted.join(", "))
    }
}

impl std::error::Error for UnknownPolicy {}

/// Implements `FromStr` and `Display` with the names in the type's `NAMES` table.
macro_rules! named_policy {
    ($policy:ty, $what:literal) => {
        impl FromStr for $policy {
            type Err = UnknownPolicy;

            fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
                Self::NAMES.iter().find(|(_, name)| *name == s).map(|(policy, _)| *policy).ok_or_else(|| {
                    UnknownPolicy {
                        what: $what,
                        given: s.to_string(),
                        accepted: Self::NAMES.iter().map(|(_, name)| *name).collect(),
                    }
                })
            }
        }

        impl fmt::Display for $policy {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let (_, name) = Self::NAMES.iter().find(|(p, _)| p == self).expect("all named");
                f.write_str(name)
            }
        }
    };
}

named_policy!(FsyncPolicy, "fsync policy");
named_policy!(DuplicatePolicy, "duplicate policy");

/// How a storage root is written to.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub template: PathTemplate,
    pub fsync: FsyncPolicy,
    pub duplicates: DuplicatePolicy,
    pub permissions: Permissions,
    /// The registry node id of this process, written in its journal (see `journal`).
    pub node: String,
}

/// The storage root: where instances are written, and how.
pub struct Storage {
    root: PathBuf,
    temp_dir: PathBuf,
    owner: Owner,
    template: PathTemplate,
    fsync: FsyncPolicy,
    duplicates: DuplicatePolicy,
    permissions: Permissions,
    journal: Arc<Journal>,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("root", &self.root).finish_non_exhaustive()
    }
}

impl Storage {
    /// Creates the root (if missing) and its temp directory (`<root>/.oxidip-tmp`), gives both
    /// the configured group, removes temp files left by processes of this host that no longer
    /// run (a crashed oxidip; another live one sharing the root keeps its in-flight files),
    /// checks that the root is writable, so that a bad root fails at startup rather than on
    /// the first instance, and opens this process's journal.
    pub fn open(root: &Path, options: StorageOptions) -> io::Result<Self> {
        let StorageOptions { template, fsync, duplicates, permissions, node } = options;
        let root = prepare_root(root, &permissions)?;
        let temp_dir = temp::temp_dir(&root);
        let owner = Owner::current();
        temp::sweep_stale(&temp_dir, &owner).map_err(|e| context(e, "cannot remove stale temp files in", &temp_dir))?;
        let journal = Journal::open(&root, fsync != FsyncPolicy::None, &node)
            .map_err(|e| context(e, "cannot open the journal in", &root))?;
        Ok(Self { root, temp_dir, owner, template, fsync, duplicates, permissions, journal: Arc::new(journal) })
    }

    /// This process's journal of stored instances.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The absolute storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether storing an instance waits for the device (an fsync policy other than none).
    pub fn syncs(&self) -> bool {
        self.fsync != FsyncPolicy::None
    }

    pub fn template(&self) -> &PathTemplate {
        &self.template
    }

    /// Creates a temp file ahead of the instance it will hold, so that creating it is not on
    /// that instance's way to its answer: an association makes the next one while it waits
    /// for its next request.
    pub fn reserve(&self) -> io::Result<TempFile> {
        let (file, temp) = match TempPath::create(&self.temp_dir, &self.owner, &self.permissions) {
            // The temp directory is gone: the storage root was removed (and made again) under
            // us. Made again, once; if the root itself is gone, the error says so.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                prepare_temp_dir(&self.root, &self.temp_dir, &self.permissions)?;
                TempPath::create(&self.temp_dir, &self.owner, &self.permissions)?
            }
            created => created?,
        };
        Ok(TempFile { file, temp })
    }

    /// Ok when an instance could be stored now (what `/healthz` reports as "storage"): does
    /// what every instance's first step does, creating a temp file (the temp directory made
    /// again if it went), and writes one byte to it, since a full file system may still have
    /// room for an empty file. The file is removed again.
    pub fn check_writable(&self) -> io::Result<()> {
        let dir = self.temp_dir.display();
        let mut probe =
            self.reserve().map_err(|e| io::Error::new(e.kind(), format!("cannot create a file in {dir}: {e}")))?;
        probe.file.write_all(&[0]).map_err(|e| io::Error::new(e.kind(), format!("cannot write to {dir}: {e}")))
    }

    /// Starts an instance in `reserved`, or else in a new temp file: its first bytes
    /// (preamble, `DICM`, file meta group) are buffered, to go out with the first dataset
    /// bytes. A `meta` value too long to encode is an `InvalidInput` error.
    pub fn begin(&self, meta: &FileMeta, reserved: Option<TempFile>) -> io::Result<PartialInstance> {
        let header = encode_file_meta(meta).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let TempFile { file, temp } = match reserved {
            Some(reserved) => reserved,
            None => self.reserve()?,
        };
        let mut buffer = Vec::with_capacity(BUFFER_CAPACITY.max(header.len()));
        buffer.extend_from_slice(&header);
        Ok(PartialInstance {
            file: Some(file),
            background: None,
            buffer,
            header_len: header.len() as u64,
            dataset_len: 0,
            temp,
        })
    }

    /// Moves the complete temp file to `final_path` per the duplicate policy; returns whether
    /// a file was already there, and the instance's journal entry. The entry is appended
    /// first (an intent): a kill at any moment after the rename finds the path journaled,
    /// and a kill before it leaves an entry that replay skips (no file at its path). A
    /// placement that fails cancels its entry, except when only the directory fsync after
    /// the rename failed: the file is in place, and replay will register it.
    fn place(&self, temp: TempPath, final_path: &Path) -> Result<(bool, u64), CommitError> {
        let seq = self.journal.append(final_path).map_err(CommitError::Journal)?;
        let (replaced, created_dirs) = match self.move_into_place(temp, final_path) {
            Ok(Some(placed)) => placed,
            Ok(None) => return Ok((true, seq)),
            Err(e) => {
                self.journal.cancel(seq);
                return Err(e);
            }
        };
        if self.fsync == FsyncPolicy::FileAndDirectory {
            sync_directories(final_path, &created_dirs)?;
        }
        Ok((replaced, seq))
    }

    /// Moves the temp file per the duplicate policy: Some((whether a file was replaced, the
    /// directories created)), or None when an existing file was kept (KeepFirst).
    fn move_into_place(&self, temp: TempPath, final_path: &Path) -> Result<Option<(bool, Vec<PathBuf>)>, CommitError> {
        match self.duplicates {
            DuplicatePolicy::Overwrite => Ok(Some(self.rename_over(temp, final_path)?)),
            DuplicatePolicy::KeepFirst | DuplicatePolicy::Reject => match self.link_if_absent(temp, final_path)? {
                Some(created_dirs) => Ok(Some((false, created_dirs))),
                None if self.duplicates == DuplicatePolicy::Reject => {
                    Err(CommitError::Duplicate(final_path.to_path_buf()))
                }
                None => Ok(None),
            },
        }
    }

    /// Renames the temp file to `final_path`, atomically replacing any file there. Returns
    /// whether a file was there and the directories created. renameat2's RENAME_NOREPLACE
    /// tells a new path from a taken one in the same step (no separate stat per instance,
    /// and exact when two commits race on one path); only when the path is taken does a
    /// plain rename(2) replace the file.
    fn rename_over(&self, temp: TempPath, final_path: &Path) -> io::Result<(bool, Vec<PathBuf>)> {
        let mut replaced = false;
        let created_dirs = self.with_parent_dirs(final_path, || match rename_noreplace(temp.path(), final_path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                replaced = true;
                fs::rename(temp.path(), final_path)
            }
            other => other,
        })?;
        temp.keep();
        Ok((replaced, created_dirs))
    }

    /// link(2) fails if the name exists, so the check and the placement are one atomic step:
    /// of two associations racing on one instance, exactly one places its file. Returns the
    /// directories created, or None if a file was there. The temp name is unlinked when
    /// `temp` drops, whatever happened.
    fn link_if_absent(&self, temp: TempPath, final_path: &Path) -> io::Result<Option<Vec<PathBuf>>> {
        match self.with_parent_dirs(final_path, || fs::hard_link(temp.path(), final_path)) {
            Ok(created_dirs) => Ok(Some(created_dirs)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs `place`; if it fails with NotFound (a parent directory is missing), creates the
    /// missing directories and runs it again. Returns the directories created. Trying first
    /// saves the directory checks for every instance after a series' first.
    fn with_parent_dirs(
        &self,
        final_path: &Path,
        mut place: impl FnMut() -> io::Result<()>,
    ) -> io::Result<Vec<PathBuf>> {
        match place() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut created = Vec::new();
                let parent = final_path.parent().expect("final paths are under the root");
                create_missing_dirs(&self.root, parent, &self.permissions, &mut created)?;
                place()?;
                Ok(created)
            }
            other => other.map(|()| Vec::new()),
        }
    }
}

/// Makes the temp directory (`dir_mode`, not the root above it: see
/// `permissions::create_dir_in_root`) if missing, and gives it and the root the configured
/// group: directories created below inherit it.
/// Makes `root` ready to store instances, or says in words why it cannot be (for a message
/// that names the variable first): creates it if missing (with the configured mode) and its
/// temp directory (`<root>/.oxidip-tmp`), gives both the configured group, and creates a
/// file there (removed again), so that a bad root fails at startup rather than on the first
/// instance; permission bits alone would not tell (root ignores them, read-only mounts,
/// /proc). Returns the absolute root.
pub fn prepare_root(root: &Path, permissions: &Permissions) -> io::Result<PathBuf> {
    let root = std::path::absolute(root)?;
    let reason = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what}: {e}"));
    if root.exists() && !root.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
    }
    permissions::create_dir_all_with_mode(&root, permissions.dir_mode).map_err(|e| reason(e, "cannot be created"))?;
    let temp_dir = temp::temp_dir(&root);
    let cannot_create = |e| reason(e, &format!("this user (uid {}) cannot create files in it", current_uid()));
    prepare_temp_dir(&root, &temp_dir, permissions).map_err(cannot_create)?;
    // A probe file, removed again as it drops.
    TempPath::create(&temp_dir, &Owner::current(), permissions).map_err(cannot_create)?;
    Ok(root)
}

/// The real user id of this process.
fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail (POSIX).
    unsafe { libc::getuid() }
}

fn prepare_temp_dir(root: &Path, temp_dir: &Path, permissions: &Permissions) -> io::Result<()> {
    permissions::create_dir_in_root(temp_dir, permissions.dir_mode)?;
    permissions.apply_group(root)?;
    permissions.apply_group(temp_dir)
}

/// Creates `dir` and its missing ancestors up to (not including) `root`, with the configured
/// mode, appending those it created to `created`, outermost first. Directories created
/// meanwhile by another thread are fine.
fn create_missing_dirs(
    root: &Path,
    dir: &Path,
    permissions: &Permissions,
    created: &mut Vec<PathBuf>,
) -> io::Result<()> {
    match permissions.create_dir(dir) {
        Ok(()) => created.push(dir.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir != root => {
            let parent = dir.parent().expect("dir is under root");
            create_missing_dirs(root, parent, permissions, created)?;
            match permissions.create_dir(dir) {
                Ok(()) => created.push(dir.to_path_buf()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// rename(2) that fails with `AlreadyExists` instead of replacing a file at `to`.
#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr =
        |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (from_c, to_c) = (cstr(from)?, cstr(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let result = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if result == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        // A filesystem without RENAME_NOREPLACE (some network filesystems): look, then rename.
        e if e.raw_os_error() == Some(libc::EINVAL) => rename_unless_present(from, to),
        e => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_unless_present(from, to)
}

/// The stat-then-rename fallback of `rename_noreplace` (two racing commits may both rename).
fn rename_unless_present(from: &Path, to: &Path) -> io::Result<()> {
    if to.symlink_metadata().is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

/// Makes the new directory entries durable: the file's, then each created directory's.
fn sync_directories(final_path: &Path, created_dirs: &[PathBuf]) -> io::Result<()> {
    let parent = final_path.parent().expect("final paths are under the root");
    let created_parents = created_dirs.iter().filter_map(|dir| dir.parent());
    for dir in std::iter::once(parent).chain(created_parents) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks that a relative path from the template (or the caller) stays inside the root and
/// out of the temp directory.
fn check_relative(relative: &Path) -> io::Result<()> {
    let mut components = relative.components().peekable();
    let enters_temp_dir = components.peek().is_some_and(|c| c.as_os_str() == TEMP_DIR_NAME);
    let all_normal = components.all(|c| matches!(c, Component::Normal(_)));
    if relative.as_os_str().is_empty() || !all_normal || enters_temp_dir {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{relative:?} is not a file path inside the storage root (outside {TEMP_DIR_NAME})"),
        ));
    }
    Ok(())
}

/// Adds what was being done, and where, to an I/O error (for startup messages).
fn context(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// An empty temp file (`Storage::reserve`), removed when dropped unused.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    temp: TempPath,
}

/// An instance being received: a temp file holding the header and the dataset bytes so far.
/// Dropped without [`PartialInstance::commit`] (association aborted, invalid dataset, write
/// error), it removes its temp file.
pub struct PartialInstance {
    /// The temp file; None while a background writer has it.
    file: Option<File>,
    /// Writes the data set past `BACKGROUND_AFTER`, from another thread.
    background: Option<BackgroundWriter>,
    /// Bytes not yet written to `file`; never more than `BUFFER_CAPACITY` once flushed.
    buffer: Vec<u8>,
    header_len: u64,
    dataset_len: u64,
    temp: TempPath,
}

impl PartialInstance {
    /// Appends dataset bytes, exactly as received. Past `BACKGROUND_AFTER` bytes they are
    /// queued for a background writer (waiting while its previous batch is being written),
    /// whose errors come with `finish_writes`. Must be awaited within a tokio runtime.
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.dataset_len += data.len() as u64;
        if self.background.is_none() && self.dataset_len > BACKGROUND_AFTER {
            let mut file = self.file.take().expect("the file is here until handed over");
            // What is buffered goes first; the buffer is not needed any more.
            file.write_all(&std::mem::take(&mut self.buffer))?;
            self.background = Some(BackgroundWriter::start(file));
        }
        match &mut self.background {
            Some(background) => {
                background.write(data).await;
                Ok(())
            }
            None => self.write_inline(&data),
        }
    }

    fn write_inline(&mut self, data: &[u8]) -> io::Result<()> {
        let file = self.file.as_mut().expect("no background writer: the file is here");
        if self.buffer.len() + data.len() <= BUFFER_CAPACITY {
            self.buffer.extend_from_slice(data);
        } else {
            write_all_pair(file, &self.buffer, data)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Waits for the background writer, if any, to have written everything; its first
    /// error otherwise. Call before `commit`.
    pub async fn finish_writes(&mut self) -> io::Result<()> {
        if let Some(background) = self.background.take() {
            self.file = Some(background.finish().await?);
        }
        Ok(())
    }

    /// Dataset bytes written so far (without the preamble and file meta).
    pub fn bytes_written(&self) -> u64 {
        self.dataset_len
    }

    /// Finishes the file (fsync per policy) and places it at `storage.root()/relative`,
    /// creating parent directories, per the duplicate policy:
    /// - Overwrite: atomic rename over any existing file;
    /// - KeepFirst: if a file is there, it stays, ours is discarded and `duplicate` is true;
    /// - Reject: if a file is there, ours is discarded and the error is `Duplicate`.
    ///
    /// With `FileAndDirectory`, the parent directory (and the parents of directories created)
    /// are fsynced after placement. `relative` must be a relative path of normal components;
    /// [`PathTemplate::render`] always gives one. On error the temp file is gone, and the final
    /// path holds our file only if it was the directory fsync after placement that failed.
    ///
    /// The file comes back still open: it is in place already, so the caller may answer
    /// first and close it (drop it) after.
    pub fn commit(mut self, storage: &Storage, relative: &Path) -> Result<(Committed, File), CommitError> {
        check_relative(relative)?;
        let Some(file) = self.file.as_mut() else {
            return Err(CommitError::Io(io::Error::other("committed before its writes were finished")));
        };
        file.write_all(&self.buffer)?;
        if storage.fsync != FsyncPolicy::None {
            // fdatasync: enough for a new file, whose size is the only metadata needed.
            file.sync_data()?;
        }
        let path = storage.root.join(relative);
        let (duplicate, journal_seq) = storage.place(self.temp, &path)?;
        let file = self.file.take().expect("checked above");
        Ok((Committed { path, size: self.header_len + self.dataset_len, duplicate, journal_seq }, file))
    }
}

/// Writes `first` then `second`, in one `writev` unless the kernel takes less.
fn write_all_pair(file: &mut File, mut first: &[u8], mut second: &[u8]) -> io::Result<()> {
    while !first.is_empty() {
        match file.write_vectored(&[IoSlice::new(first), IoSlice::new(second)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n < first.len() => first = &first[n..],
            Ok(n) => {
                second = &second[n - first.len()..];
                first = &[];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    file.write_all(second)
}

/// A stored (or, with KeepFirst, already present) instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Absolute final path.
    pub path: PathBuf,
    /// Size of our file in bytes: preamble, file meta and dataset.
    pub size: u64,
    /// A file was already at `path`: replaced under Overwrite, kept (and ours discarded) under
    /// KeepFirst, in which case `size` is that of the discarded file.
    pub duplicate: bool,
    /// Its entry in the storage's journal, to acknowledge once registered.
    pub journal_seq: u64,
}

/// Why an instance was not stored. The temp file is gone either way.
#[derive(Debug)]
pub enum CommitError {
    /// Writing, syncing or placing failed (full disk, permissions, I/O error, or an invalid
    /// relative path, as `InvalidInput`). The OS error is kept as is for status mapping.
    Io(io::Error),
    /// DuplicatePolicy::Reject, and this final path already holds a file.
    Duplicate(PathBuf),
    /// The journal entry could not be written (before any rename: nothing was placed).
    Journal(io::Error),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot store the instance: {e}"),
            Self::Journal(e) => write!(f, "cannot journal the instance: {e}"),
            Self::Duplicate(path) => {
                write!(f, "an instance is already stored at {} (duplicate policy: reject)", path.display())
            }
        }
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) | Self::Journal(e) => Some(e),
            Self::Duplicate(_) => None,
        }
    }
}

impl From<io::Error> for CommitError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::path_template::DEFAULT_PATH_TEMPLATE;
    use std::sync::{Arc, Barrier};

    const META: FileMeta<'static> = FileMeta {
        media_storage_sop_class_uid: "1.2.840.10008.5.1.4.1.1.7",
        media_storage_sop_instance_uid: "1.2.3.4",
        transfer_syntax_uid: "1.2.840.10008.1.2.1",
        source_ae_title: "SCU",
    };

    fn options(fsync: FsyncPolicy, duplicates: DuplicatePolicy) -> StorageOptions {
        let template = PathTemplate::parse(DEFAULT_PATH_TEMPLATE).unwrap();
        StorageOptions { template, fsync, duplicates, permissions: Permissions::default(), node: "test-node".into() }
    }

    fn open(root: &Path, fsync: FsyncPolicy, duplicates: DuplicatePolicy) -> Storage {
        Storage::open(root, options(fsync, duplicates)).unwrap()
    }

    /// The runtime writes are awaited on (shared by the tests, which may call it from
    /// several threads at once).
    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap())
    }

    fn write(partial: &mut PartialInstance, data: &[u8]) {
        runtime().block_on(partial.write(Bytes::copy_from_slice(data))).unwrap();
    }

    fn commit(mut partial: PartialInstance, storage: &Storage, relative: &str) -> Result<Committed, CommitError> {
        runtime().block_on(partial.finish_writes())?;
        partial.commit(storage, Path::new(relative)).map(|(committed, _file)| committed)
    }

    /// Stores `data` at `relative`, in fragments of `fragment` bytes.
    fn store(storage: &Storage, relative: &str, data: &[u8], fragment: usize) -> Result<Committed, CommitError> {
        let mut partial = storage.begin(&META, None).unwrap();
        for chunk in data.chunks(fragment) {
            write(&mut partial, chunk);
        }
        assert_eq!(partial.bytes_written(), data.len() as u64);
        commit(partial, storage, relative)
    }

    fn expected_file(data: &[u8]) -> Vec<u8> {
        let mut file = encode_file_meta(&META).unwrap();
        file.extend_from_slice(data);
        file
    }

    fn temp_files(storage: &Storage) -> Vec<PathBuf> {
        let entries = fs::read_dir(&storage.temp_dir).unwrap();
        entries.map(|e| e.unwrap().path()).collect()
    }

    /// Deterministic bytes that differ between `seed`s.
    fn payload(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn file_is_preamble_meta_and_data_exactly() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::File, DuplicatePolicy::Overwrite);
        let cases = [(0, 1), (1, 1), (1_000, 1), (100_000, 1), (300_000, 7_000), (3 << 20, 1 << 20)];
        for (i, (len, fragment)) in cases.into_iter().enumerate() {
            let data = payload(len, i as u8);
            let relative = format!("a/b/{i}.dcm");
            let committed = store(&storage, &relative, &data, fragment.max(1)).unwrap();
            let expected = expected_file(&data);
            assert_eq!(committed.path, root.path().join(&relative));
            assert_eq!(committed.size, expected.len() as u64);
            assert!(!committed.duplicate);
            assert!(fs::read(&committed.path).unwrap() == expected, "case {i}");
        }
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn fragments_of_mixed_sizes_cross_the_buffer() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        let data = payload(1 << 20, 3);
        let mut partial = storage.begin(&META, None).unwrap();
        let (mut at, mut step) = (0, 1);
        while at < data.len() {
            let end = (at + step).min(data.len());
            write(&mut partial, &data[at..end]);
            at = end;
            step = step * 3 % 100_003 + 1;
        }
        let committed = commit(partial, &storage, "x.dcm").unwrap();
        assert!(fs::read(committed.path).unwrap() == expected_file(&data));
    }

    #[test]
    fn rendered_template_path_is_committed_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::FileAndDirectory, DuplicatePolicy::Reject);
        let attributes = crate::dicom::attributes::Attributes {
            sop_instance_uid: Some("1.2.3.4".into()),
            patient_id: Some("../../etc".into()),
            ..Default::default()
        };
        let ctx = crate::storage::PathContext { attributes: &attributes, calling_aet: "..", called_aet: "OXIDIP" };
        let relative = storage.template().render(&ctx);
        let mut partial = storage.begin(&META, None).unwrap();
        write(&mut partial, b"dataset");
        let committed = commit(partial, &storage, relative.to_str().unwrap()).unwrap();
        assert!(committed.path.starts_with(storage.root()));
        let patient_dir = root.path().join("_/_._.._etc-PatientName-PatientBirthDate");
        assert!(committed.path.starts_with(&patient_dir), "{:?} not in {patient_dir:?}", committed.path);
        assert!(fs::read(&committed.path).unwrap().ends_with(b"dataset"));
    }

    #[test]
    fn a_reserved_temp_file_holds_the_next_instance_or_goes() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        let reserved = storage.reserve().unwrap();
        assert_eq!(temp_files(&storage).len(), 1);
        let mut partial = storage.begin(&META, Some(reserved)).unwrap();
        assert_eq!(temp_files(&storage).len(), 1, "no second temp file");
        write(&mut partial, b"dataset");
        let committed = commit(partial, &storage, "r/1.dcm").unwrap();
        assert!(fs::read(committed.path).unwrap() == expected_file(b"dataset"));
        assert!(temp_files(&storage).is_empty());
        drop(storage.reserve().unwrap());
        assert!(temp_files(&storage).is_empty(), "an unused reservation is removed");
    }

    #[test]
    fn drop_without_commit_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        let mut partial = storage.begin(&META, None).unwrap();
        write(&mut partial, &payload(200_000, 1));
        assert_eq!(temp_files(&storage).len(), 1);
        drop(partial);
        assert!(temp_files(&storage).is_empty());
        // Also with a background writer at work.
        let mut partial = storage.begin(&META, None).unwrap();
        for _ in 0..20 {
            write(&mut partial, &payload(100_000, 2));
        }
        drop(partial);
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn paths_outside_the_root_or_into_the_temp_dir_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        for bad in ["", "../x.dcm", "a/../../x.dcm", "/etc/x.dcm", ".oxidip-tmp/x.dcm"] {
            let err = store(&storage, bad, b"data", 4).unwrap_err();
            let CommitError::Io(e) = err else { panic!("{bad}: {err}") };
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(temp_files(&storage).is_empty());
        assert!(!root.path().parent().unwrap().join("x.dcm").exists());
    }

    #[test]
    fn overwrite_replaces_and_reports_the_duplicate() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::FileAndDirectory, DuplicatePolicy::Overwrite);
        assert!(!store(&storage, "s/1.dcm", b"first", 2).unwrap().duplicate);
        let second = store(&storage, "s/1.dcm", b"second", 2).unwrap();
        assert!(second.duplicate);
        assert!(fs::read(second.path).unwrap() == expected_file(b"second"));
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn keep_first_discards_ours_and_reports_the_duplicate() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::File, DuplicatePolicy::KeepFirst);
        assert!(!store(&storage, "s/1.dcm", b"first", 2).unwrap().duplicate);
        let second = store(&storage, "s/1.dcm", b"second", 2).unwrap();
        assert!(second.duplicate);
        assert!(fs::read(second.path).unwrap() == expected_file(b"first"));
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn reject_fails_and_keeps_the_first() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Reject);
        store(&storage, "s/1.dcm", b"first", 2).unwrap();
        let err = store(&storage, "s/1.dcm", b"second", 2).unwrap_err();
        let CommitError::Duplicate(path) = &err else { panic!("{err}") };
        assert_eq!(path, &root.path().join("s/1.dcm"));
        assert!(err.to_string().contains("already stored"));
        assert!(fs::read(path).unwrap() == expected_file(b"first"));
        assert!(temp_files(&storage).is_empty());
    }

    /// `threads` threads store different contents at one path at the same moment; returns
    /// the results and the contents they wrote.
    fn race(storage: &Storage, threads: u8) -> (Vec<Result<Committed, CommitError>>, Vec<Vec<u8>>) {
        let barrier = Arc::new(Barrier::new(threads.into()));
        let contents: Vec<Vec<u8>> = (0..threads).map(|i| payload(100_000, i)).collect();
        let results = std::thread::scope(|scope| {
            let handles: Vec<_> = contents
                .iter()
                .map(|data| {
                    let barrier = Arc::clone(&barrier);
                    scope.spawn(move || {
                        let mut partial = storage.begin(&META, None).unwrap();
                        write(&mut partial, data);
                        barrier.wait();
                        commit(partial, storage, "p/s/race.dcm")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        (results, contents)
    }

    fn assert_one_of(path: &Path, contents: &[Vec<u8>]) {
        let stored = fs::read(path).unwrap();
        assert!(contents.iter().any(|data| stored == expected_file(data)));
    }

    #[test]
    fn concurrent_commits_have_exactly_one_winner() {
        for policy in [DuplicatePolicy::KeepFirst, DuplicatePolicy::Reject, DuplicatePolicy::Overwrite] {
            let root = tempfile::tempdir().unwrap();
            let storage = open(root.path(), FsyncPolicy::None, policy);
            let (results, contents) = race(&storage, 8);
            let winners = results.iter().filter(|r| matches!(r, Ok(c) if !c.duplicate)).count();
            match policy {
                DuplicatePolicy::KeepFirst => {
                    assert_eq!(winners, 1);
                    assert!(results.iter().all(Result::is_ok));
                }
                DuplicatePolicy::Reject => {
                    assert_eq!(winners, 1);
                    let rejected = results.iter().filter(|r| matches!(r, Err(CommitError::Duplicate(_)))).count();
                    assert_eq!(rejected, 7);
                }
                // All placed theirs, one after the other; only the first found no file.
                DuplicatePolicy::Overwrite => {
                    assert_eq!(winners, 1);
                    assert!(results.iter().all(Result::is_ok));
                }
            }
            assert_one_of(&root.path().join("p/s/race.dcm"), &contents);
            assert!(temp_files(&storage).is_empty());
        }
    }

    #[test]
    fn open_sweeps_stale_temp_files_but_not_live_ones() {
        let root = tempfile::tempdir().unwrap();
        let temp_dir = temp::temp_dir(root.path());
        fs::create_dir_all(&temp_dir).unwrap();
        let me = Owner::current();
        let (pid, start_time, host) = (me.process.pid, me.process.start_time, &me.host);
        let live = temp_dir.join(format!("{pid}-{start_time}-999.{host}.tmp"));
        let stale = temp_dir.join(format!("5000000-12-0.{host}.tmp"));
        fs::write(&live, b"in flight").unwrap();
        fs::write(&stale, b"left by a crash").unwrap();
        open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        assert!(live.exists());
        assert!(!stale.exists());
    }

    fn journal_lines(root: &Path) -> Vec<String> {
        let dir = root.join(crate::storage::journal::JOURNAL_DIR_NAME);
        let mut lines = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap();
            lines.extend(text.lines().filter(|l| !l.starts_with('#')).map(str::to_string));
        }
        lines
    }

    #[test]
    fn each_placement_is_journaled_before_its_rename() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        let committed = store(&storage, "a/1.dcm", b"x", 1).unwrap();
        assert_eq!(journal_lines(root.path()), vec!["a/1.dcm"]);
        assert_eq!(storage.journal().backlog(), 1);
        storage.journal().acknowledge(&[committed.journal_seq], true);
        // A rename that fails (the parent is a file): the entry was written first, and is
        // cancelled, so nothing waits for its registration.
        fs::write(root.path().join("b"), b"not a directory").unwrap();
        let err = store(&storage, "b/2.dcm", b"x", 1).unwrap_err();
        assert!(matches!(err, CommitError::Io(_)), "{err}");
        assert_eq!(journal_lines(root.path()), vec!["a/1.dcm", "b/2.dcm"]);
        assert_eq!(storage.journal().backlog(), 0);
        // Duplicates refused under Reject are cancelled the same way.
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Reject);
        let first = store(&storage, "c/3.dcm", b"x", 1).unwrap();
        assert!(matches!(store(&storage, "c/3.dcm", b"y", 1), Err(CommitError::Duplicate(_))));
        assert_eq!(storage.journal().backlog(), 1);
        storage.journal().acknowledge(&[first.journal_seq], true);
        assert_eq!(storage.journal().backlog(), 0);
    }

    #[test]
    fn an_instance_that_cannot_be_journaled_is_not_placed() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        // The journal directory replaced by a file: no segment can be made.
        let journal_dir = root.path().join(crate::storage::journal::JOURNAL_DIR_NAME);
        fs::remove_dir_all(&journal_dir).unwrap();
        fs::write(&journal_dir, b"").unwrap();
        // As the server's journal watch would, within `WATCH_INTERVAL`.
        assert!(storage.journal().check().is_err());
        let err = store(&storage, "a/1.dcm", b"x", 1).unwrap_err();
        assert!(matches!(err, CommitError::Journal(_)), "{err}");
        assert!(!root.path().join("a/1.dcm").exists());
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn a_storage_root_removed_and_made_again_is_stored_into() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        let storage = open(&root, FsyncPolicy::FileAndDirectory, DuplicatePolicy::Overwrite);
        store(&storage, "a/1.dcm", b"before", 1).unwrap();
        fs::remove_dir_all(&root).unwrap();
        fs::create_dir(&root).unwrap();
        // As the server's journal watch would, within `WATCH_INTERVAL`.
        storage.journal().check().unwrap();
        let committed = store(&storage, "a/2.dcm", b"after", 1).unwrap();
        assert!(fs::read(&committed.path).unwrap() == expected_file(b"after"));
        assert_eq!(journal_lines(&root), vec!["a/1.dcm", "a/2.dcm"], "the outstanding entries, again");
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn a_storage_root_that_is_gone_fails_every_store_and_is_not_made_again() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        let storage = open(&root, FsyncPolicy::None, DuplicatePolicy::Overwrite);
        fs::remove_dir_all(&root).unwrap();
        let err = storage.reserve().unwrap_err();
        assert!(err.to_string().contains("is gone"), "{err}");
        assert!(!root.exists());
    }

    #[test]
    fn root_that_cannot_be_created_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = Storage::open(&file.join("root"), options(FsyncPolicy::None, DuplicatePolicy::Reject)).unwrap_err();
        assert!(err.to_string().contains("cannot be created"), "{err}");
    }

    #[test]
    fn read_only_root_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        // Earlier runs left the temp directory; only creating files there can fail now.
        let temp_dir = temp::temp_dir(root.path());
        fs::create_dir_all(&temp_dir).unwrap();
        fs::set_permissions(&temp_dir, fs::Permissions::from_mode(0o555)).unwrap();
        if fs::write(temp_dir.join("privileged"), b"").is_ok() {
            eprintln!("skipped: running with CAP_DAC_OVERRIDE (root), permissions are not enforced");
            return;
        }
        let err = Storage::open(root.path(), options(FsyncPolicy::None, DuplicatePolicy::Reject)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("cannot create files in it"), "{err}");
        fs::set_permissions(&temp_dir, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn policies_parse_from_their_names() {
        for (policy, name) in FsyncPolicy::NAMES {
            assert_eq!(name.parse::<FsyncPolicy>().unwrap(), *policy);
            assert_eq!(policy.to_string(), *name);
        }
        for (policy, name) in DuplicatePolicy::NAMES {
            assert_eq!(name.parse::<DuplicatePolicy>().unwrap(), *policy);
            assert_eq!(policy.to_string(), *name);
        }
        let err = "always".parse::<FsyncPolicy>().unwrap_err();
        assert_eq!(err.to_string(), "unknown fsync policy \"always\"; accepted: none, file, file-and-directory");
        let err = "keep".parse::<DuplicatePolicy>().unwrap_err();
        assert_eq!(err.to_string(), "unknown duplicate policy \"keep\"; accepted: overwrite, keep-first, reject");
    }

    #[test]
    fn oversized_file_meta_is_invalid_input() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Reject);
        let huge = "9".repeat(100_000);
        let meta = FileMeta { media_storage_sop_instance_uid: &huge, ..META };
        let err = storage.begin(&meta, None).err().expect("an oversized meta is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(temp_files(&storage).is_empty());
    }

    #[test]
    fn writable_root_passes_the_check_and_keeps_nothing() {
        let root = tempfile::tempdir().unwrap();
        let storage = open(root.path(), FsyncPolicy::None, DuplicatePolicy::Overwrite);
        storage.check_writable().unwrap();
        assert!(temp_files(&storage).is_empty());
        // The temp directory removed under a running receiver is made again.
        fs::remove_dir_all(&storage.temp_dir).unwrap();
        storage.check_writable().unwrap();
    }

    #[test]
    fn a_root_that_is_gone_fails_the_check_naming_the_directory() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        let storage = open(&root, FsyncPolicy::None, DuplicatePolicy::Overwrite);
        fs::remove_dir_all(&root).unwrap();
        let error = storage.check_writable().unwrap_err();
        assert!(error.to_string().contains(".oxidip-tmp"), "{error}");
    }
}
