//! The journal of acknowledged instances: what makes "an acknowledged instance is never lost"
//! hold across a crash when registration happens after the acknowledgement.
//!
//! Each stored instance's path is appended (one line, relative to the storage root) *before*
//! its C-STORE-RSP is sent, and given a sequence number that travels with its event. Python
//! acknowledges sequence numbers once their registration is committed. The journal is cut into
//! segments; a closed segment whose every entry was acknowledged is deleted. A process that
//! dies (even with kill -9) leaves its segments behind: the next start replays the segments of
//! dead processes of this host (named like temp files, see `temp`) and deletes them.
//!
//! Appends are plain `write`s: a killed process's writes are in the page cache and survive it.
//! With an fsync policy, each append is also synced, so power loss loses nothing acknowledged.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::temp::Owner;

/// Directory under the storage root holding the journals; rendered paths may not enter it.
pub const JOURNAL_DIR_NAME: &str = ".oxidip-journal";
const JOURNAL_SUFFIX: &str = ".journal";
/// Entries per segment: small enough that an acknowledged segment goes soon, large enough
/// that rotation is rare.
const SEGMENT_ENTRIES: u64 = 10_000;

pub struct Journal {
    root: PathBuf,
    dir: PathBuf,
    owner: Owner,
    sync: bool,
    state: Mutex<State>,
}

struct State {
    file: File,
    current: Segment,
    next_seq: u64,
    /// Appended, not yet acknowledged as registered.
    outstanding: BTreeSet<u64>,
    closed: VecDeque<Segment>,
    /// For `ack=registered`: associations waiting for their instance's registration.
    waiters: HashMap<u64, oneshot::Sender<bool>>,
}

/// One journal file and the sequence numbers it holds, `start..end`.
struct Segment {
    path: PathBuf,
    start: u64,
    end: u64,
}

impl Journal {
    /// Creates the journal directory and this process's first segment.
    pub fn open(root: &Path, sync: bool) -> io::Result<Self> {
        let dir = root.join(JOURNAL_DIR_NAME);
        fs::create_dir_all(&dir)?;
        let owner = Owner::current();
        let (file, current) = new_segment(&dir, &owner, 0)?;
        let state = State {
            file,
            current,
            next_seq: 0,
            outstanding: BTreeSet::new(),
            closed: VecDeque::new(),
            waiters: HashMap::new(),
        };
        Ok(Journal { root: root.to_path_buf(), dir, owner, sync, state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a stored instance (its final path); returns its sequence number.
    pub fn append(&self, path: &Path) -> io::Result<u64> {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        let mut line = relative.to_string_lossy().into_owned();
        line.push('\n');
        let mut state = self.lock();
        if state.next_seq - state.current.start >= SEGMENT_ENTRIES {
            let (file, segment) = new_segment(&self.dir, &self.owner, state.next_seq)?;
            state.file = file;
            let full = std::mem::replace(&mut state.current, segment);
            state.closed.push_back(full);
        }
        state.file.write_all(line.as_bytes())?;
        if self.sync {
            state.file.sync_data()?;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.current.end = state.next_seq;
        state.outstanding.insert(seq);
        Ok(seq)
    }

    /// Entries appended and not yet acknowledged as registered: what a crash now would leave
    /// to replay. Takes the journal's lock; for monitoring (a scrape), not the hot path.
    pub fn backlog(&self) -> usize {
        self.lock().outstanding.len()
    }

    /// Resolves with the registration result of `seq` (for `ack=registered`). Ask right after
    /// `append`, before the event can reach Python, so the answer cannot be missed.
    pub fn registration_of(&self, seq: u64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.lock().waiters.insert(seq, tx);
        rx
    }

    /// Python's word on these entries: registered (their journal entries may go), or not
    /// (kept, so that the next start registers them again).
    pub fn acknowledge(&self, seqs: &[u64], registered: bool) {
        let mut state = self.lock();
        for seq in seqs {
            if let Some(waiter) = state.waiters.remove(seq) {
                let _ = waiter.send(registered);
            }
            if registered {
                state.outstanding.remove(seq);
            }
        }
        while let Some(oldest) = state.closed.front() {
            if state.outstanding.range(oldest.start..oldest.end).next().is_some() {
                break;
            }
            // A segment we cannot delete is replayed at the next start: harmless.
            let _ = fs::remove_file(&oldest.path);
            state.closed.pop_front();
        }
    }
}

impl Drop for Journal {
    /// A clean stop with everything registered leaves no journal behind.
    fn drop(&mut self) {
        let state = self.lock();
        if state.outstanding.is_empty() {
            for segment in state.closed.iter().chain([&state.current]) {
                let _ = fs::remove_file(&segment.path);
            }
        }
    }
}

fn new_segment(dir: &Path, owner: &Owner, start: u64) -> io::Result<(File, Segment)> {
    let path = dir.join(owner.file_name(start, JOURNAL_SUFFIX));
    let file = OpenOptions::new().append(true).create_new(true).open(&path)?;
    Ok((file, Segment { path, start, end: start }))
}

/// Journal segments left by processes of this host that no longer run: to replay (register
/// every path they list) and then delete.
pub fn orphans(root: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = root.join(JOURNAL_DIR_NAME);
    let us = Owner::current();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(|name| us.is_orphan(name, JOURNAL_SUFFIX)) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    fn journal_files(root: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            fs::read_dir(root.join(JOURNAL_DIR_NAME)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    #[test]
    fn appends_relative_paths_and_numbers_them() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false).unwrap();
        assert_eq!(journal.append(&root.path().join("A/b.dcm")).unwrap(), 0);
        assert_eq!(journal.append(&root.path().join("A/c.dcm")).unwrap(), 1);
        let files = journal_files(root.path());
        assert_eq!(files.len(), 1);
        assert_eq!(lines(&files[0]), vec!["A/b.dcm", "A/c.dcm"]);
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_unacknowledged_kept() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false).unwrap();
        for i in 0..SEGMENT_ENTRIES + 5 {
            journal.append(&root.path().join(format!("{i}.dcm"))).unwrap();
        }
        assert_eq!(journal_files(root.path()).len(), 2);
        let first_segment: Vec<u64> = (0..SEGMENT_ENTRIES).collect();
        assert_eq!(journal.backlog(), SEGMENT_ENTRIES as usize + 5);
        journal.acknowledge(&first_segment[1..], true);
        assert_eq!(journal_files(root.path()).len(), 2, "entry 0 is not registered yet");
        journal.acknowledge(&[0], false);
        assert_eq!(journal_files(root.path()).len(), 2, "a failed registration keeps its entry");
        journal.acknowledge(&[0], true);
        assert_eq!(journal_files(root.path()).len(), 1);
        assert_eq!(journal.backlog(), 5);
        drop(journal);
        assert_eq!(journal_files(root.path()).len(), 1, "5 entries were never registered");
    }

    #[test]
    fn clean_stop_with_everything_registered_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), true).unwrap();
        let seq = journal.append(&root.path().join("x.dcm")).unwrap();
        journal.acknowledge(&[seq], true);
        drop(journal);
        assert!(journal_files(root.path()).is_empty());
    }

    #[test]
    fn waiters_hear_the_registration_result() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false).unwrap();
        let a = journal.append(&root.path().join("a.dcm")).unwrap();
        let b = journal.append(&root.path().join("b.dcm")).unwrap();
        let (mut wa, mut wb) = (journal.registration_of(a), journal.registration_of(b));
        journal.acknowledge(&[a], true);
        journal.acknowledge(&[b], false);
        assert_eq!(wa.try_recv(), Ok(true));
        assert_eq!(wb.try_recv(), Ok(false));
    }

    #[test]
    fn only_dead_processes_journals_are_orphans() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false).unwrap();
        journal.append(&root.path().join("a.dcm")).unwrap();
        let us = Owner::current();
        // Pid above PID_MAX_LIMIT: no such process.
        let dead = Owner { process: super::super::temp::ProcessId { pid: 5_000_000, start_time: 1 }, ..us.clone() };
        let other_host = Owner { host: "elsewhere".into(), ..dead.clone() };
        let dir = root.path().join(JOURNAL_DIR_NAME);
        fs::write(dir.join(dead.file_name(0, JOURNAL_SUFFIX)), "x.dcm\n").unwrap();
        fs::write(dir.join(other_host.file_name(0, JOURNAL_SUFFIX)), "y.dcm\n").unwrap();
        assert_eq!(orphans(root.path()).unwrap(), vec![dir.join(dead.file_name(0, JOURNAL_SUFFIX))]);
    }
}
