//! Whether the storage root can take an instance now: what `/healthz` reports as "storage".
//!
//! The probe does what every instance's first step does, creating a file in the root's temp
//! directory (`.oxidip-tmp`, on the same file system as the final paths), and writes one byte
//! to it, since a full file system may still have room for an empty file. The file is named
//! like any temp file (`temp`), so a crash during the probe leaves nothing the next start's
//! sweep would not remove.

use std::io::{self, Write};
use std::path::Path;

use super::temp::{self, Owner, TempPath};

/// Ok when a new file can be created and written under `root`; the error says why not.
pub fn storage_writable(root: &Path) -> io::Result<()> {
    let dir = temp::temp_dir(root);
    let (mut file, _removed_on_drop) = TempPath::create(&dir, &Owner::current())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create a file in {}: {e}", dir.display())))?;
    file.write_all(&[0]).map_err(|e| io::Error::new(e.kind(), format!("cannot write to {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_root_passes_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(temp::temp_dir(root.path())).unwrap();
        storage_writable(root.path()).unwrap();
        assert_eq!(std::fs::read_dir(temp::temp_dir(root.path())).unwrap().count(), 0);
    }

    #[test]
    fn missing_root_fails_naming_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let gone = root.path().join("gone");
        let error = storage_writable(&gone).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains(".oxidip-tmp"), "{error}");
    }
}
