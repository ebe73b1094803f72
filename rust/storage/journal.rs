//! The journal of acknowledged instances: what makes "an acknowledged instance is never lost"
//! hold across a crash when registration happens after the acknowledgement.
//!
//! Each instance's final path is appended (one line, relative to the storage root) *before*
//! its file is renamed into place (an intent: replay registers the path if a file is there
//! and skips it if not), so no kill can leave a file at a final path that is neither
//! journaled nor registered. Its sequence number travels with its event; Python acknowledges
//! sequence numbers once their registration is committed, and a placement that fails cancels
//! its entry. The journal is cut into segments; a closed segment whose every entry was
//! acknowledged is deleted.
//!
//! Each segment starts with a header line naming the registry node of the process (so that
//! whoever replays it can end that node's association activity) and is held under an
//! exclusive `flock(2)` for as long as the process runs (and the segment exists). A process
//! that dies, even by kill -9, loses its locks: any oxidip on the same storage root, whatever
//! its host name, then claims the segments (`claim_orphans`, `LOCK_NB`: two adopters never
//! replay one segment at once), registers what they list and deletes them. Segments without
//! a header were written by an oxidip from before the locks: those are judged by the old
//! rule (a process of this host that no longer runs).
//!
//! Appends are plain `write`s: a killed process's writes are in the page cache and survive it.
//! With an fsync policy, each append is also synced, so power loss loses nothing acknowledged.
//! A segment found unlinked (the storage root or the journal directory removed under a
//! running receiver) is replaced, and the outstanding entries are written again into the new
//! one. `watch` looks every `WATCH_INTERVAL` (one fstat, off every instance's path: checking
//! at each append cost the 16-association receiver ~1.5 us of CPU an instance, the append's
//! lock held longer), so entries appended meanwhile into the deleted file are written again
//! too, being outstanding; and a segment deleted while no instance arrives is replaced all the
//! same, where a check at append time would leave the entries in a deleted file until the
//! next instance.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use super::permissions::{self, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};
use super::temp::{self, Owner};

/// Directory under the storage root holding the journals; rendered paths may not enter it.
pub const JOURNAL_DIR_NAME: &str = ".oxidip-journal";
const JOURNAL_SUFFIX: &str = ".journal";
/// Entries per segment: small enough that an acknowledged segment goes soon, large enough
/// that rotation is rare.
const SEGMENT_ENTRIES: u64 = 10_000;
/// The first line of a segment, followed by the node id. (Segments of oxidip versions before
/// it start with a path, which no template renders to this.)
const HEADER_PREFIX: &str = "#oxidip-journal v1 node=";
/// How often `watch` checks that the current segment is still linked.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Makes segment names unique within this process, across all journals.
static NEXT_SEGMENT: AtomicU64 = AtomicU64::new(0);

/// Segments this process holds: never claimed by it (where `flock` is emulated with POSIX
/// locks, e.g. NFS, a second lock by the same process would succeed, and closing that file
/// would drop the first).
static LIVE_SEGMENTS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn live_segments() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    LIVE_SEGMENTS.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Journal {
    root: PathBuf,
    dir: PathBuf,
    owner: Owner,
    /// The registry node id of this process, written in every segment's header.
    node: String,
    sync: bool,
    state: Mutex<State>,
}

struct State {
    current: Segment,
    /// The current segment may end with a partial line (an append failed): the next append
    /// starts a new one.
    broken: bool,
    /// The current segment was found unlinked and could not be replaced yet (the storage root
    /// is gone, say): every append tries again, and fails until it can.
    lost: bool,
    next_seq: u64,
    /// Appended, not yet acknowledged: sequence number -> its line (relative path and
    /// newline), kept to write them again should their segment be deleted under us.
    outstanding: BTreeMap<u64, Box<str>>,
    closed: VecDeque<Segment>,
    /// For `ack=registered`: associations waiting for their instance's registration.
    waiters: HashMap<u64, oneshot::Sender<bool>>,
}

/// One journal file, locked, and the sequence numbers it holds, `start..end`.
struct Segment {
    file: File,
    path: PathBuf,
    start: u64,
    end: u64,
}

impl Segment {
    /// Creates a segment of `owner` holding `start..`, locks it before anything is in it (a
    /// claimer that opened it in between finds it empty, takes nothing and lets go), and
    /// writes its header.
    fn create(dir: &Path, owner: &Owner, node: &str, start: u64) -> io::Result<Self> {
        let path = dir.join(owner.file_name(NEXT_SEGMENT.fetch_add(1, Ordering::Relaxed), JOURNAL_SUFFIX));
        let file = permissions::new_file_options(PRIVATE_FILE_MODE).append(true).open(&path)?;
        permissions::fix_file_mode(&file, PRIVATE_FILE_MODE)?;
        lock(&file, libc::LOCK_EX).map_err(|e| {
            let doing = format!("cannot lock {} (flock: the filesystem must support it)", path.display());
            io::Error::new(e.kind(), format!("{doing}: {e}"))
        })?;
        live_segments().insert(path.clone());
        let mut segment = Segment { file, path, start, end: start };
        segment.file.write_all(format!("{HEADER_PREFIX}{node}\n").as_bytes())?;
        Ok(segment)
    }

    /// Whether the file is gone from the directory (we would be writing into nothing).
    fn is_unlinked(&self) -> io::Result<bool> {
        Ok(self.file.metadata()?.nlink() == 0)
    }
}

impl Drop for Segment {
    /// Its lock goes with the file, right after: a segment left on disk (entries not
    /// registered) is then for others to claim.
    fn drop(&mut self) {
        live_segments().remove(&self.path);
    }
}

impl Journal {
    /// Creates the journal directory and this process's first segment; `node` is the
    /// registry node id of this process (one line of printable text).
    pub fn open(root: &Path, sync: bool, node: &str) -> io::Result<Self> {
        if node.chars().any(char::is_control) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node id {node:?} has control characters"),
            ));
        }
        let dir = root.join(JOURNAL_DIR_NAME);
        create_journal_dir(&dir)?;
        let owner = Owner::current();
        let current = Segment::create(&dir, &owner, node, 0)?;
        let state = State {
            current,
            broken: false,
            lost: false,
            next_seq: 0,
            outstanding: BTreeMap::new(),
            closed: VecDeque::new(),
            waiters: HashMap::new(),
        };
        Ok(Journal { root: root.to_path_buf(), dir, owner, node: node.to_string(), sync, state: Mutex::new(state) })
    }

    fn new_segment(&self, start: u64) -> io::Result<Segment> {
        Segment::create(&self.dir, &self.owner, &self.node, start)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the intent to place an instance at `path` (its final path); returns its
    /// sequence number. Call before the rename; `cancel` it if the placement fails.
    pub fn append(&self, path: &Path) -> io::Result<u64> {
        let relative = path.strip_prefix(&self.root).unwrap_or(path).to_string_lossy();
        // One allocation, written and kept: exact capacity, so the box takes it as it is.
        let mut line = String::with_capacity(relative.len() + 1);
        line.push_str(&relative);
        line.push('\n');
        let line = line.into_boxed_str();
        let mut state = self.lock();
        self.make_room(&mut state)?;
        let written = state.current.file.write_all(line.as_bytes());
        if let Err(e) = written.and_then(|()| if self.sync { state.current.file.sync_data() } else { Ok(()) }) {
            state.broken = true;
            return Err(e);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.current.end = state.next_seq;
        state.outstanding.insert(seq, line);
        Ok(seq)
    }

    /// Makes the current segment one that may take the next entry.
    fn make_room(&self, state: &mut State) -> io::Result<()> {
        if state.lost {
            return self.replace_lost_segments(state);
        }
        if state.broken || state.next_seq - state.current.start >= SEGMENT_ENTRIES {
            let next = self.new_segment(state.next_seq)?;
            let full = std::mem::replace(&mut state.current, next);
            state.closed.push_back(full);
            state.broken = false;
        }
        Ok(())
    }

    /// Our current segment was deleted: writes every outstanding entry into a new one (in a
    /// journal directory made again if need be, but never a storage root made again: a root
    /// that is gone, an unmounted volume say, fails every store instead), then deletes the
    /// older segments still on disk, whose entries the new one holds.
    fn replace_lost_segments(&self, state: &mut State) -> io::Result<()> {
        create_journal_dir(&self.dir)?;
        let start = state.outstanding.keys().next().copied().unwrap_or(state.next_seq);
        let mut segment = self.new_segment(start)?;
        let mut lines = String::new();
        for line in state.outstanding.values() {
            lines.push_str(line);
        }
        segment.file.write_all(lines.as_bytes())?;
        if self.sync {
            segment.file.sync_data()?;
        }
        segment.end = state.next_seq;
        let lost = std::mem::replace(&mut state.current, segment);
        for old in state.closed.drain(..).chain(std::iter::once(lost)) {
            if !old.is_unlinked().unwrap_or(true) {
                let _ = fs::remove_file(&old.path);
            }
        }
        state.broken = false;
        state.lost = false;
        Ok(())
    }

    /// Replaces the current segment if it was deleted (see `replace_lost_segments`); an error
    /// when it cannot be yet, after which appends fail until it can.
    pub fn check(&self) -> io::Result<()> {
        let mut state = self.lock();
        if !state.lost && !state.current.is_unlinked()? {
            return Ok(());
        }
        state.lost = true;
        self.replace_lost_segments(&mut state)
    }

    /// The placement announced by `append` did not happen: the entry is not outstanding any
    /// more (replayed anyway, it registers whatever file is at its path, or nothing).
    pub fn cancel(&self, seq: u64) {
        self.acknowledge(&[seq], true);
    }

    /// Resolves with the registration result of `seq` (for `ack=registered`). Ask right after
    /// `append`, before the event can reach Python, so the answer cannot be missed.
    pub fn registration_of(&self, seq: u64) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        self.lock().waiters.insert(seq, tx);
        rx
    }

    /// Python's word on these entries: registered (their journal entries may go), or not
    /// (kept, so that they are registered again: by the next start or by another process).
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
            // A segment we cannot delete is replayed later: harmless.
            let _ = fs::remove_file(&oldest.path);
            state.closed.pop_front();
        }
    }

    /// Entries appended and not yet registered: the journal backlog.
    pub fn backlog(&self) -> usize {
        self.lock().outstanding.len()
    }
}

/// Checks `journal`'s current segment every `WATCH_INTERVAL` (`Journal::check`) for as long as
/// it lives; a failure is tried again at the next tick (appends meanwhile fail: A700).
pub async fn watch(journal: Weak<Journal>) {
    let mut ticks = tokio::time::interval(WATCH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(journal) = journal.upgrade() else { return };
        let _ = journal.check();
    }
}

impl Drop for Journal {
    /// A clean stop with everything registered leaves no journal behind; otherwise the
    /// segments stay, unlocked, for whoever runs next on the root to register.
    fn drop(&mut self) {
        let state = self.lock();
        if state.outstanding.is_empty() {
            for segment in state.closed.iter().chain([&state.current]) {
                let _ = fs::remove_file(&segment.path);
            }
        }
    }
}

/// Creates the journal directory (owner only) if missing, not the root above it.
fn create_journal_dir(dir: &Path) -> io::Result<()> {
    permissions::create_dir_in_root(dir, PRIVATE_DIR_MODE)
}

/// flock(2) `operation` on `file`; Ok(false) when `LOCK_NB` was given and another holds it.
fn lock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: a valid open file descriptor for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::Interrupted => continue,
            e if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            e => return Err(e),
        }
    }
}

/// A dead process's segment, locked by us until `finish` or drop.
#[derive(Debug)]
pub struct Orphan {
    pub path: PathBuf,
    /// The registry node id of the process that wrote it; None for an older segment.
    pub node: Option<String>,
    /// Final paths, relative to the storage root, as written: one per instance it announced.
    pub entries: Vec<String>,
    /// The process that wrote it, when its name says (for its temp files).
    owner: Option<Owner>,
    /// Held, locked: no other adopter can claim the segment meanwhile.
    _file: File,
}

impl Orphan {
    /// Its entries are registered: deletes the segment (still locked) and the temp files its
    /// process left, then lets go.
    pub fn finish(self, root: &Path) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Only a locked segment proves its process dead (older ones: the sweep at start
        // handles this host's); and never our own process's (an earlier receiver in it).
        if let Some(owner) = self.owner.as_ref().filter(|o| self.node.is_some() && **o != Owner::current()) {
            match temp::remove_files_of(&temp::temp_dir(root), owner) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The journal segments under `root` whose process no longer runs (their lock is free),
/// whatever its host, each locked by us until its `Orphan` is finished or dropped. Segments
/// other processes are claiming or still writing are left alone.
pub fn claim_orphans(root: &Path) -> io::Result<Vec<Orphan>> {
    let dir = root.join(JOURNAL_DIR_NAME);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(JOURNAL_SUFFIX)) {
            names.push(name);
        }
    }
    names.sort();
    let mut claimed = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if live_segments().contains(&path) {
            continue;
        }
        if let Some(orphan) = claim(path, name.to_str().expect("checked above"))? {
            claimed.push(orphan);
        }
    }
    Ok(claimed)
}

/// Locks and reads one segment; None if its process runs (or another adopter was first).
fn claim(path: PathBuf, name: &str) -> io::Result<Option<Orphan>> {
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !lock(&file, libc::LOCK_EX | libc::LOCK_NB)? {
        return Ok(None);
    }
    // Replayed and deleted by another adopter between our open and our lock.
    if file.metadata()?.nlink() == 0 {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines().filter(|line| !line.is_empty()).peekable();
    let node = lines.peek().and_then(|first| first.strip_prefix(HEADER_PREFIX)).map(str::to_string);
    if node.is_some() {
        lines.next();
    } else if !text.is_empty() && !Owner::current().is_orphan(name, JOURNAL_SUFFIX) {
        // Written by an oxidip from before the locks, which may still run.
        return Ok(None);
    }
    let entries = lines.map(str::to_string).collect();
    Ok(Some(Orphan { owner: Owner::of_file(name, JOURNAL_SUFFIX), node, entries, path, _file: file }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::temp::ProcessId;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    fn journal_files(root: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            fs::read_dir(root.join(JOURNAL_DIR_NAME)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    fn header(node: &str) -> String {
        format!("{HEADER_PREFIX}{node}")
    }

    /// A segment as a process of another host (or an earlier container) left it.
    fn foreign_segment(root: &Path, host: &str, content: &str) -> PathBuf {
        let dead = Owner { process: ProcessId { pid: 5_000_000, start_time: 1 }, host: host.into() };
        let path = root.join(JOURNAL_DIR_NAME).join(dead.file_name(0, JOURNAL_SUFFIX));
        fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn appends_a_header_then_relative_paths_and_numbers_them() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false, "node-1").unwrap();
        assert_eq!(journal.append(&root.path().join("A/b.dcm")).unwrap(), 0);
        assert_eq!(journal.append(&root.path().join("A/c.dcm")).unwrap(), 1);
        let files = journal_files(root.path());
        assert_eq!(files.len(), 1);
        assert_eq!(lines(&files[0]), vec![header("node-1"), "A/b.dcm".into(), "A/c.dcm".into()]);
        assert_eq!(journal.backlog(), 2);
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_unacknowledged_kept() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false, "n").unwrap();
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
        journal.cancel(0);
        assert_eq!(journal_files(root.path()).len(), 1);
        assert_eq!(journal.backlog(), 5);
        drop(journal);
        assert_eq!(journal_files(root.path()).len(), 1, "5 entries were never registered");
    }

    #[test]
    fn clean_stop_with_everything_registered_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), true, "n").unwrap();
        let seq = journal.append(&root.path().join("x.dcm")).unwrap();
        journal.acknowledge(&[seq], true);
        drop(journal);
        assert!(journal_files(root.path()).is_empty());
    }

    #[test]
    fn waiters_hear_the_registration_result() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false, "n").unwrap();
        let a = journal.append(&root.path().join("a.dcm")).unwrap();
        let b = journal.append(&root.path().join("b.dcm")).unwrap();
        let (mut wa, mut wb) = (journal.registration_of(a), journal.registration_of(b));
        journal.acknowledge(&[a], true);
        journal.acknowledge(&[b], false);
        assert_eq!(wa.try_recv(), Ok(true));
        assert_eq!(wb.try_recv(), Ok(false));
    }

    #[test]
    fn a_deleted_journal_is_replaced_with_its_outstanding_entries() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false, "n").unwrap();
        for name in ["a.dcm", "b.dcm", "c.dcm"] {
            journal.append(&root.path().join(name)).unwrap();
        }
        journal.acknowledge(&[1], true);
        fs::remove_dir_all(root.path().join(JOURNAL_DIR_NAME)).unwrap();
        // Appended before the watch looks: into the deleted file, but outstanding.
        assert_eq!(journal.append(&root.path().join("d.dcm")).unwrap(), 3);
        journal.check().unwrap();
        let files = journal_files(root.path());
        assert_eq!(files.len(), 1);
        assert_eq!(lines(&files[0]), vec![header("n"), "a.dcm".into(), "c.dcm".into(), "d.dcm".into()]);
        journal.append(&root.path().join("e.dcm")).unwrap();
        assert_eq!(lines(&files[0]).last().map(String::as_str), Some("e.dcm"), "appends go to the new segment");
        journal.acknowledge(&[0, 2, 3, 4], true);
        drop(journal);
        assert!(journal_files(root.path()).is_empty());
    }

    /// Polls `done` every few milliseconds for up to 5 s.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        true
    }

    #[tokio::test]
    async fn the_watch_replaces_a_deleted_segment_without_an_append() {
        let root = tempfile::tempdir().unwrap();
        let journal = std::sync::Arc::new(Journal::open(root.path(), false, "n").unwrap());
        journal.append(&root.path().join("a.dcm")).unwrap();
        let watching = tokio::spawn(watch(std::sync::Arc::downgrade(&journal)));
        let dir = root.path().join(JOURNAL_DIR_NAME);
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            eventually(|| dir.is_dir() && journal_files(root.path()).len() == 1).await,
            "made again by the watch alone"
        );
        assert_eq!(lines(&journal_files(root.path())[0]), vec![header("n"), "a.dcm".into()]);
        drop(journal);
        assert!(eventually(|| watching.is_finished()).await, "the watch ends with its journal");
    }

    #[test]
    fn without_its_storage_root_the_journal_fails_loudly() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        fs::create_dir(&root).unwrap();
        let journal = Journal::open(&root, false, "n").unwrap();
        fs::remove_dir_all(&root).unwrap();
        let err = journal.check().unwrap_err();
        assert!(err.to_string().contains("storage root") && err.to_string().contains("is gone"), "{err}");
        let err = journal.append(&root.join("a.dcm")).unwrap_err();
        assert!(err.to_string().contains("storage root") && err.to_string().contains("is gone"), "{err}");
        assert!(!root.exists(), "the root is not made again");
    }

    #[test]
    fn a_failed_append_sends_the_next_ones_to_a_new_segment() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false, "n").unwrap();
        journal.append(&root.path().join("a.dcm")).unwrap();
        // As after a short write: what follows must not be glued to a partial line.
        journal.lock().broken = true;
        journal.append(&root.path().join("b.dcm")).unwrap();
        let files = journal_files(root.path());
        assert_eq!(files.len(), 2);
        let all: Vec<Vec<String>> = files.iter().map(|f| lines(f)).collect();
        assert!(all.contains(&vec![header("n"), "a.dcm".into()]), "{all:?}");
        assert!(all.contains(&vec![header("n"), "b.dcm".into()]), "{all:?}");
    }

    #[test]
    fn live_segments_are_locked_and_dead_ones_claimed_whatever_their_host() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(root.path(), false, "live-node").unwrap();
        journal.append(&root.path().join("live.dcm")).unwrap();
        let ours = journal_files(root.path());
        let dead = foreign_segment(root.path(), "container-gone", &format!("{}\nx.dcm\ny.dcm\n", header("dead-node")));
        // Held by a live process (as the other process's lock would be): left alone.
        let busy = foreign_segment(root.path(), "container-alive", &format!("{}\nz.dcm\n", header("busy-node")));
        let holder = File::open(&busy).unwrap();
        assert!(lock(&holder, libc::LOCK_EX | libc::LOCK_NB).unwrap());

        let claimed = claim_orphans(root.path()).unwrap();
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!(claimed[0].path, dead);
        assert_eq!(claimed[0].node.as_deref(), Some("dead-node"));
        assert_eq!(claimed[0].entries, vec!["x.dcm", "y.dcm"]);
        // While claimed, nobody else gets it.
        assert!(claim_orphans(root.path()).unwrap().is_empty());
        // Dropped unfinished: claimable again.
        drop(claimed);
        let claimed = claim_orphans(root.path()).unwrap();
        assert_eq!(claimed.len(), 1);
        for orphan in claimed {
            orphan.finish(root.path()).unwrap();
        }
        assert!(!dead.exists());
        drop(holder);
        let claimed = claim_orphans(root.path()).unwrap();
        assert_eq!(claimed.iter().map(|o| o.node.as_deref()).collect::<Vec<_>>(), vec![Some("busy-node")]);
        assert!(ours.iter().all(|p| p.exists()), "our own segment is never claimed");
    }

    #[test]
    fn a_segment_of_another_process_is_claimed_once_it_has_died() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(JOURNAL_DIR_NAME)).unwrap();
        // A child process holds the lock, as a live oxidip does: flock(1), holding it while
        // its command (closed out of the lock by -o) waits for its stdin to close.
        let path = foreign_segment(root.path(), "elsewhere", &format!("{}\na.dcm\n", header("other")));
        let mut child = std::process::Command::new("flock")
            .arg("-o")
            .arg(&path)
            .arg("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("flock(1) from util-linux");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Wait until the child holds it (our own probe must not keep it).
        loop {
            let probe = File::open(&path).unwrap();
            if !lock(&probe, libc::LOCK_EX | libc::LOCK_NB).unwrap() {
                break;
            }
            drop(probe);
            assert!(std::time::Instant::now() < deadline, "the child never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(claim_orphans(root.path()).unwrap().is_empty(), "its process runs");
        child.kill().unwrap();
        child.wait().unwrap();
        drop(child.stdin.take()); // cat ends too

        // The lock goes with the last descriptor of flock(1)'s open file: `cat` may still
        // hold a copy for an instant (between its fork and -o's close), so wait for it.
        let claimed = loop {
            let claimed = claim_orphans(root.path()).unwrap();
            if !claimed.is_empty() {
                break claimed;
            }
            assert!(std::time::Instant::now() < deadline, "the segment was never claimable");
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].entries, vec!["a.dcm"]);
    }

    #[test]
    fn older_segments_without_a_header_follow_the_host_rule() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(JOURNAL_DIR_NAME)).unwrap();
        let us = Owner::current();
        let ours_dead = foreign_segment(root.path(), &us.host, "x.dcm\n");
        let other_host = foreign_segment(root.path(), "elsewhere", "y.dcm\n");
        let claimed = claim_orphans(root.path()).unwrap();
        assert_eq!(claimed.iter().map(|o| o.path.clone()).collect::<Vec<_>>(), vec![ours_dead]);
        assert_eq!(claimed[0].node, None);
        assert_eq!(claimed[0].entries, vec!["x.dcm"]);
        assert!(other_host.exists());
    }

    #[test]
    fn finishing_an_orphan_removes_its_process_temp_files() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(JOURNAL_DIR_NAME)).unwrap();
        let temp_dir = temp::temp_dir(root.path());
        fs::create_dir(&temp_dir).unwrap();
        let dead = Owner { process: ProcessId { pid: 5_000_000, start_time: 1 }, host: "gone".into() };
        let left = temp_dir.join(dead.file_name(3, ".tmp"));
        fs::write(&left, b"half an instance").unwrap();
        foreign_segment(root.path(), "gone", &format!("{}\n", header("n")));
        let mut claimed = claim_orphans(root.path()).unwrap();
        assert_eq!(claimed.len(), 1);
        claimed.pop().unwrap().finish(root.path()).unwrap();
        assert!(!left.exists());
    }
}
