//! Scratch directories below `TEST_ROOT`, removed when dropped.

use super::*;

/// A unique directory /tmp/ovlfuse-tests/<name>-<pid>-<counter>, removed on drop (after
/// lazily unmounting anything still mounted below it).
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        fs::create_dir_all(TEST_ROOT).unwrap_or_else(|e| panic!("mkdir {TEST_ROOT}: {e}"));
        let clean: String = name
            .chars()
            .map(|c| if c == '/' || c == '\0' { '_' } else { c })
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("{TEST_ROOT}/{clean}-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&root).is_ok() {
            cleanup_tree(&root);
        }
        fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {root:?}: {}", describe_err(&e)));
        Scratch { root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// mkdir -p `rel` below the root; returns its path.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {p:?}: {}", describe_err(&e)));
        p
    }
}

pub(crate) fn cleanup_tree(root: &Path) {
    // Unmount everything at or below root, deepest first; several rounds for stacked mounts.
    for _ in 0..20 {
        let mut ms = mounts_below(root, true);
        if ms.is_empty() {
            break;
        }
        ms.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in ms {
            let _ = lazy_umount(&m);
        }
    }
    let left = mounts_below(root, true);
    if !left.is_empty() {
        eprintln!("warning: not removing {root:?}: still mounted below it: {left:?}");
        return;
    }
    let _ = fs::remove_dir_all(root);
}

impl Drop for Scratch {
    fn drop(&mut self) {
        cleanup_tree(&self.root);
    }
}
