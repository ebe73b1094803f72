//! Who may read what oxidip writes: the modes of stored files and of the directories above
//! them, and the group they belong to (`OXIDIP_FILE_MODE`, `OXIDIP_DIR_MODE`, `OXIDIP_GROUP`).
//! Patient data is private by default: files 0640, directories 0750, owner plus one group
//! (the backend that reads the files).
//!
//! The group is given once, to the storage root and the temp directory, with the setgid bit:
//! every directory created below inherits both, and every file created there the group
//! (Linux `mkdir(2)`/`open(2)` semantics), so no instance pays a `chown`. A file moved into
//! place by `rename(2)` keeps the group it was created with, that of the temp directory.
//!
//! The configured modes are exact. The kernel applies the process umask to every mode given
//! to `open`/`mkdir`; only when that umask removes bits the configuration asks for (say 0077
//! with files 0640) is each new file or directory chmod-ed back, one more syscall each.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

/// Files 0640 and directories 0750: the owner, and the group of the backend reading them.
pub const DEFAULT_FILE_MODE: u32 = 0o640;
pub const DEFAULT_DIR_MODE: u32 = 0o750;
/// oxidip's own bookkeeping (journals, registry): the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// How stored files and their directories are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    /// Permission bits of stored files (and of their temp files): at least owner read+write.
    pub file_mode: u32,
    /// Permission bits of the directories created for them: at least owner rwx.
    pub dir_mode: u32,
    /// The group (gid) files and directories get through the setgid bit; None: the
    /// process's group.
    pub group: Option<u32>,
}

impl Default for Permissions {
    fn default() -> Self {
        Self { file_mode: DEFAULT_FILE_MODE, dir_mode: DEFAULT_DIR_MODE, group: None }
    }
}

impl Permissions {
    /// Checks the modes: permission bits only, and the owner keeps what oxidip needs (read
    /// and write on files, rwx on directories).
    pub fn check(&self) -> Result<(), String> {
        if self.file_mode & !0o777 != 0 || self.file_mode & 0o600 != 0o600 {
            return Err(format!(
                "file_mode: {:04o} is not a mode from 0600 to 0777 with owner read and write",
                self.file_mode
            ));
        }
        if self.dir_mode & !0o777 != 0 || self.dir_mode & 0o700 != 0o700 {
            return Err(format!("dir_mode: {:04o} is not a mode from 0700 to 0777 with owner rwx", self.dir_mode));
        }
        Ok(())
    }

    /// Options creating a new stored file (or its temp file): write, never an existing one.
    pub fn new_file(&self) -> OpenOptions {
        new_file_options(self.file_mode)
    }

    /// Gives a file just created with [`Permissions::new_file`] its exact mode, where the
    /// umask took bits away (a syscall only then).
    pub fn fix_file(&self, file: &File) -> io::Result<()> {
        fix_file_mode(file, self.file_mode)
    }

    /// Creates one directory with `dir_mode` (its group and setgid bit come from its parent).
    pub fn create_dir(&self, dir: &Path) -> io::Result<()> {
        create_dir_with_mode(dir, self.dir_mode)
    }

    /// Gives `dir` (ours: the root or the temp directory) the configured group and the setgid
    /// bit, so that what is created below inherits the group. Nothing without a group.
    pub fn apply_group(&self, dir: &Path) -> io::Result<()> {
        let Some(gid) = self.group else { return Ok(()) };
        std::os::unix::fs::chown(dir, None, Some(gid))?;
        let mode = fs::metadata(dir)?.permissions().mode();
        if mode & libc::S_ISGID == 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode((mode & 0o7777) | libc::S_ISGID))?;
        }
        Ok(())
    }
}

/// Options creating a new file with `mode` (before the umask), for writing.
pub fn new_file_options(mode: u32) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(mode);
    options
}

/// chmod-s a new file back to `mode` if the umask took bits from it.
pub fn fix_file_mode(file: &File, mode: u32) -> io::Result<()> {
    if umask_strips(mode) {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates `dir` (its parent must exist) with exactly `mode`.
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().mode(mode).create(dir)?;
    if umask_strips(mode) {
        // Keep what mkdir gave on top (the setgid bit inherited from the parent).
        let current = fs::metadata(dir)?.permissions().mode() & 0o7000;
        fs::set_permissions(dir, fs::Permissions::from_mode(current | mode))?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents with `mode`; `dir`, if it was missing, gets
/// exactly `mode`.
pub fn create_dir_all_with_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        DirBuilder::new().recursive(true).mode(mode).create(parent)?;
    }
    match create_dir_with_mode(dir, mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Creates `dir`, a directory of oxidip's directly under the storage root, with `mode` if it
/// is missing, but never the root itself: a root that is gone (an unmounted volume, say) is
/// an error naming it, not a new empty directory filling the disk below the mount point.
pub fn create_dir_in_root(dir: &Path, mode: u32) -> io::Result<()> {
    match create_dir_with_mode(dir, mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        // ENOENT with the root still there (a file system such as /proc) is left as it is.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.parent().is_some_and(Path::is_dir) => {
            let root = dir.parent().unwrap_or(dir);
            Err(io::Error::new(e.kind(), format!("the storage root {} is gone", root.display())))
        }
        other => other,
    }
}

/// Whether the process umask removes any bit of `mode`.
fn umask_strips(mode: u32) -> bool {
    umask().is_none_or(|mask| mode & mask != 0)
}

/// The process umask, read once from `/proc/self/status` (Linux 4.7+; `umask(2)` itself
/// cannot read it without changing it, which would race with other threads creating files).
/// None where it cannot be read: every new file and directory is then chmod-ed.
fn umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|line| line.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_umask_is_readable_here() {
        assert!(umask().is_some(), "/proc/self/status has no Umask line");
    }

    #[test]
    fn files_and_directories_get_exactly_their_modes() {
        let root = tempfile::tempdir().unwrap();
        for (file_mode, dir_mode) in [(0o640, 0o750), (0o600, 0o700), (0o666, 0o777)] {
            let perms = Permissions { file_mode, dir_mode, group: None };
            perms.check().unwrap();
            let dir = root.path().join(format!("d{dir_mode:o}"));
            perms.create_dir(&dir).unwrap();
            assert_eq!(mode(&dir), dir_mode);
            let path = dir.join("f");
            let file = perms.new_file().open(&path).unwrap();
            perms.fix_file(&file).unwrap();
            assert_eq!(mode(&path), file_mode);
        }
    }

    #[test]
    fn a_group_is_inherited_through_the_setgid_bit() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let gid = fs::metadata(root.path()).unwrap().gid();
        let perms = Permissions { group: Some(gid), ..Permissions::default() };
        perms.apply_group(root.path()).unwrap();
        assert_ne!(fs::metadata(root.path()).unwrap().permissions().mode() & libc::S_ISGID, 0);
        let dir = root.path().join("series");
        perms.create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750 | libc::S_ISGID, "mkdir under a setgid directory keeps the bit");
        assert_eq!(fs::metadata(&dir).unwrap().gid(), gid);
    }

    #[test]
    fn modes_that_lock_out_the_owner_are_refused() {
        for (file_mode, dir_mode) in [(0o440, 0o750), (0o640, 0o550), (0o4640, 0o750), (0o640, 0o1750)] {
            let perms = Permissions { file_mode, dir_mode, group: None };
            assert!(perms.check().is_err(), "{file_mode:o} {dir_mode:o}");
        }
    }
}
