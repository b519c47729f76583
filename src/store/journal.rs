//! Whether the store sits on ext4 made without a journal, so the mount can say so at start.
//!
//! On such a filesystem the kernel skips the inodes freed in the last seconds to minutes each
//! time it makes a file (ext4's `recently_deleted` check, which a journal makes unnecessary). A
//! cold build makes a file per entry it fetches, often right after a trim or an `rm -rf` removed
//! thousands, and is then up to twice as slow (`docs/operations.md`, "The store's filesystem").
//! Nothing fails, so without a word at start the only sign is a slow build.
//!
//! Linux tells it in sysfs: each mounted ext4 filesystem has `/sys/fs/ext4/<device>/journal_task`,
//! which holds the journal thread's id, or `<none>` when there is no journal. The device's name
//! comes from the store's device number through `/sys/dev/block/<major>:<minor>`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The name of the block device (`vda`, `loop0`) holding `path` if it is ext4 without a
/// journal; `None` if it has one, is not ext4, or sysfs does not say (not Linux, no sysfs).
pub fn unjournaled_ext4_device(path: &Path) -> Option<String> {
    let dev = fs::metadata(path).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let device = fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let name = device.file_name()?.to_str()?.to_string();
    let journal_task = fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")).ok()?;
    journal_missing(&journal_task).then_some(name)
}

/// Whether the contents of an ext4 `journal_task` file say there is no journal.
fn journal_missing(journal_task: &str) -> bool {
    journal_task.trim() == "<none>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_task_none_means_no_journal() {
        assert!(journal_missing("<none>\n"));
        assert!(!journal_missing("14292\n"));
        assert!(!journal_missing(""));
    }

    #[test]
    fn a_directory_on_a_filesystem_sysfs_does_not_name_is_not_flagged() {
        // /proc is not on a block device: no answer, so no warning.
        assert_eq!(unjournaled_ext4_device(Path::new("/proc")), None);
    }
}
