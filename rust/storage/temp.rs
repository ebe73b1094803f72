//! Temporary files: named after the process that writes them, so that files left behind by a
//! crashed oxidip can be told apart from those of another oxidip still writing to the same root.
//!
//! A temp file is `<root>/.oxidip-tmp/<pid>-<start time>-<sequence>.<hostname>.tmp`:
//! - the start time (clock ticks after boot, `/proc/<pid>/stat` field 22) tells a live process
//!   from an earlier one that had the same pid; this matters in containers, where oxidip is
//!   pid 1 after every restart;
//! - the host name keeps processes of other hosts or containers (other pid namespaces, whose
//!   pids mean nothing here) out of the sweep: only our host's files are ever removed.
//!
//! Liveness is read from `/proc`. Without it (not Linux) nothing is swept, since no file can
//! be proven stale. The temp files of a process of another host are removed when its journal
//! is adopted (see `journal`): that proves it dead.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::permissions::Permissions;
use super::sanitize::push_sanitized;

/// Directory under the storage root holding the temp files; rendered paths may not enter it.
pub const TEMP_DIR_NAME: &str = ".oxidip-tmp";

const TEMP_SUFFIX: &str = ".tmp";

/// Makes temp names unique within this process, across all `Storage`s.
static NEXT_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A process, identified so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessId {
    /// This process. Its start time is 0 where `/proc` cannot tell it.
    fn current() -> Self {
        let pid = std::process::id();
        let start_time = start_time(pid).ok().flatten().unwrap_or(0);
        Self { pid, start_time }
    }

    /// Whether this process still runs. Anything but "no such process" or another start time
    /// counts as running: wrongly deleting a live process's file is worse than keeping a
    /// stale one.
    fn is_running(self) -> bool {
        match start_time(self.pid) {
            Ok(start_time) => start_time.is_none_or(|t| t == self.start_time),
            Err(e) => e.kind() != io::ErrorKind::NotFound,
        }
    }
}

/// Start time of `pid` from `/proc/<pid>/stat`; Ok(None) if the file cannot be parsed.
fn start_time(pid: u32) -> io::Result<Option<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 2, the command name, is in parentheses and may itself contain spaces and ')'.
    // Field 22 is the 20th after it.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest);
    Ok(after_name.and_then(|rest| rest.split_whitespace().nth(19)).and_then(|field| field.parse().ok()))
}

/// Whether `/proc` can tell which processes run (it can on Linux).
fn liveness_observable() -> bool {
    matches!(start_time(std::process::id()), Ok(Some(_)))
}

/// Who writes a temp file: a process on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub process: ProcessId,
    /// The host (or container) name, sanitised like a tag value: `[A-Za-z0-9._-]`.
    pub host: String,
}

impl Owner {
    /// This process on this host.
    pub fn current() -> Self {
        let raw = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut host = String::new();
        if !push_sanitized(&mut host, &raw) {
            host.push_str("localhost");
        }
        Self { process: ProcessId::current(), host }
    }

    /// `<pid>-<start time>-<sequence>.<host><suffix>`: a file this process owns.
    pub fn file_name(&self, sequence: u64, suffix: &str) -> String {
        let ProcessId { pid, start_time } = self.process;
        format!("{pid}-{start_time}-{sequence}.{}{suffix}", self.host)
    }

    fn temp_name(&self, sequence: u64) -> String {
        self.file_name(sequence, TEMP_SUFFIX)
    }

    /// Whether a file named by [`Owner::file_name`] with `suffix` belongs to a process of our
    /// host that no longer runs. False whenever that cannot be proven.
    pub fn is_orphan(&self, name: &str, suffix: &str) -> bool {
        liveness_observable()
            && parse_file_name(name, suffix).is_some_and(|(process, host)| host == self.host && !process.is_running())
    }

    /// The owner of a file named by [`Owner::file_name`] with `suffix`.
    pub fn of_file(name: &str, suffix: &str) -> Option<Owner> {
        parse_file_name(name, suffix).map(|(process, host)| Owner { process, host: host.to_string() })
    }
}

/// The process and host of a file named by [`Owner::file_name`]; None for any other name.
/// The host may contain dots, the numbers before it do not.
fn parse_file_name<'a>(name: &'a str, suffix: &str) -> Option<(ProcessId, &'a str)> {
    let (numbers, host) = name.strip_suffix(suffix)?.split_once('.')?;
    let mut fields = numbers.splitn(3, '-');
    let pid = fields.next()?.parse().ok()?;
    let start_time = fields.next()?.parse().ok()?;
    fields.next()?.parse::<u64>().ok()?;
    Some((ProcessId { pid, start_time }, host))
}

/// `<root>/.oxidip-tmp`.
pub fn temp_dir(root: &Path) -> PathBuf {
    root.join(TEMP_DIR_NAME)
}

/// Removes the temp files in `dir` of processes of our host that no longer run; returns how
/// many.
pub fn sweep_stale(dir: &Path, us: &Owner) -> io::Result<usize> {
    remove_temp_files(dir, |name| us.is_orphan(name, TEMP_SUFFIX))
}

/// Removes the temp files in `dir` of `owner`, a process known to be dead (whatever its
/// host); returns how many.
pub fn remove_files_of(dir: &Path, owner: &Owner) -> io::Result<usize> {
    remove_temp_files(dir, |name| Owner::of_file(name, TEMP_SUFFIX).as_ref() == Some(owner))
}

fn remove_temp_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(&doomed) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Another oxidip's sweep got there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// A temp file path, removed on drop unless [`TempPath::keep`] says it has been renamed.
#[derive(Debug)]
pub struct TempPath(Option<PathBuf>);

impl TempPath {
    /// Creates a new, empty temp file in `dir` for `owner`, with the mode of a stored file
    /// (it becomes one by a rename). `create_new` (O_EXCL) never opens an existing file or
    /// follows a symlink planted there.
    pub fn create(dir: &Path, owner: &Owner, permissions: &Permissions) -> io::Result<(File, Self)> {
        loop {
            let sequence = NEXT_SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(owner.temp_name(sequence));
            match permissions.new_file().open(&path) {
                Ok(file) => {
                    let temp = Self(Some(path));
                    permissions.fix_file(&file)?;
                    return Ok((file, temp));
                }
                // Only without /proc (start time 0), after pid reuse: try the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("set until dropped or kept")
    }

    /// The file has moved to its final path: nothing to remove.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            // Best effort: a failure here leaves a file for the next start's sweep.
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid above PID_MAX_LIMIT (2^22), which no process can have.
    const DEAD_PID: u32 = 5_000_000;

    fn me() -> Owner {
        assert!(liveness_observable(), "these tests need Linux's /proc");
        Owner::current()
    }

    fn owner(pid: u32, start_time: u64, host: &str) -> Owner {
        Owner { process: ProcessId { pid, start_time }, host: host.to_string() }
    }

    #[test]
    fn temp_names_round_trip() {
        let o = owner(42, 123, "node-1.example.org");
        assert_eq!(o.temp_name(7), "42-123-7.node-1.example.org.tmp");
        assert_eq!(
            parse_file_name("42-123-7.node-1.example.org.tmp", TEMP_SUFFIX),
            Some((o.process, "node-1.example.org"))
        );
        for other in ["42-123.h.tmp", "42-123-7.h", "42-123-7.tmp", "a-1-2.h.tmp", "1-2-3-4.h.tmp", "probe"] {
            assert_eq!(parse_file_name(other, TEMP_SUFFIX), None, "{other}");
        }
    }

    #[test]
    fn liveness_uses_pid_and_start_time() {
        let me = me().process;
        assert!(me.is_running());
        assert!(!ProcessId { start_time: me.start_time + 1, ..me }.is_running());
        assert!(!ProcessId { pid: DEAD_PID, start_time: 1 }.is_running());
    }

    #[test]
    fn sweep_removes_only_files_of_dead_processes_of_our_host() {
        let dir = tempfile::tempdir().unwrap();
        let us = me();
        let init_start = start_time(1).unwrap().unwrap();
        let files = [
            (us.temp_name(1), true),
            // Another live process sharing the root (pid 1 is always running).
            (owner(1, init_start, &us.host).temp_name(1), true),
            (owner(DEAD_PID, 9, &us.host).temp_name(1), false),
            // pid 1 before a container restart.
            (owner(1, init_start + 1, &us.host).temp_name(1), false),
            // Another host's: its pids are not ours to judge.
            (owner(DEAD_PID, 9, "elsewhere").temp_name(1), true),
            ("not-ours.txt".to_string(), true),
        ];
        for (name, _) in &files {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(sweep_stale(dir.path(), &us).unwrap(), 2);
        for (name, kept) in &files {
            assert_eq!(dir.path().join(name).exists(), *kept, "{name}");
        }
    }

    #[test]
    fn files_of_a_dead_owner_are_removed_whatever_its_host() {
        let dir = tempfile::tempdir().unwrap();
        let dead = owner(DEAD_PID, 9, "container-before-its-restart");
        let files = [
            (dead.temp_name(1), false),
            (dead.temp_name(2), false),
            (owner(DEAD_PID, 10, "container-before-its-restart").temp_name(1), true),
            (owner(DEAD_PID, 9, "another-container").temp_name(1), true),
            (me().temp_name(1), true),
        ];
        for (name, _) in &files {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_files_of(dir.path(), &dead).unwrap(), 2);
        for (name, kept) in &files {
            assert_eq!(dir.path().join(name).exists(), *kept, "{name}");
        }
    }

    #[test]
    fn temp_path_is_removed_on_drop_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (_file, temp) = TempPath::create(dir.path(), &me(), &Permissions::default()).unwrap();
        let path = temp.path().to_path_buf();
        assert!(path.exists());
        drop(temp);
        assert!(!path.exists());

        let (_file, temp) = TempPath::create(dir.path(), &me(), &Permissions::default()).unwrap();
        let path = temp.path().to_path_buf();
        temp.keep();
        assert!(path.exists());
    }

    #[test]
    fn host_name_is_safe_in_a_file_name() {
        let host = me().host;
        assert!(!host.is_empty());
        assert!(host.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    }
}
