//! Disk use of a data directory (issue 12 item 5): the bytes it occupies on disk,
//! `st_blocks × 512` summed over every file and directory below it — what `du -B1`
//! shows, so sparse and preallocated files count as what they really take, not their
//! length.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes `path` and everything below it take on disk. Symbolic links are counted as
/// themselves, never followed; a file that vanishes while it is walked (natterd
/// deleting a table after a compaction) is skipped.
///
/// # Errors
/// The I/O error of `path` itself, if it cannot be read.
pub(crate) fn usage(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    let mut total = meta.blocks().saturating_mul(512);
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            let Ok(entry) = entry else { continue };
            match usage(&entry.path()) {
                Ok(bytes) => total = total.saturating_add(bytes),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_blocks_not_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let empty = usage(dir.path()).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/data"), vec![7u8; 100_000]).unwrap();
        // A sparse file: 10 MB long, nothing written, so (almost) no blocks.
        fs::File::create(dir.path().join("sparse"))
            .unwrap()
            .set_len(10_000_000)
            .unwrap();
        let used = usage(dir.path()).unwrap();
        assert!(used >= empty + 100_000, "{used}");
        assert!(
            used < empty + 1_000_000,
            "the sparse file's length is not counted: {used}"
        );
        assert!(usage(&dir.path().join("missing")).is_err());
    }
}
