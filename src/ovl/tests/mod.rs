//! Unit tests of the overlay core, driven directly (no FUSE mount): layers are plain
//! directories under /tmp and every call goes to `Overlay` itself.

use super::node::ROOT_ID;
use super::params::Params;
use super::{Config, Ctx, Errno, Layers, Overlay};
use crate::sys::fs;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod copy_up;
mod dir;
mod file;
mod lookup;
mod nodes;
mod permissions;
mod readdir;

static N: AtomicUsize = AtomicUsize::new(0);

struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new(n_lowers: usize) -> Fixture {
        let root = PathBuf::from(format!(
            "/tmp/ovlfuse-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["upper", "work"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for i in 0..n_lowers {
            std::fs::create_dir_all(root.join(format!("l{i}"))).unwrap();
        }
        Fixture { root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, data: &str) {
        let p = self.p(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// What the work directory holds besides the shared whiteout.
    fn work_leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.p("work/work"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "#whiteout")
            .collect()
    }

    fn overlay(&self, n_lowers: usize) -> Overlay {
        self.overlay_with(
            n_lowers,
            Config {
                fsync: false,
                ..Config::default()
            },
        )
    }

    fn overlay_with(&self, n_lowers: usize, cfg: Config) -> Overlay {
        let mut p = Params::default();
        p.lowerdirs = (0..n_lowers).map(|i| self.p(&format!("l{i}"))).collect();
        p.upperdir = Some(self.p("upper"));
        p.workdir = Some(self.p("work"));
        let layers = Layers::open(&p).expect("layers open");
        Overlay::new(layers, cfg).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn whiteout(p: &Path) {
    let dir = std::fs::File::open(p.parent().unwrap()).unwrap();
    fs::mknodat(dir.as_fd(), p.file_name().unwrap(), libc::S_IFCHR, 0).unwrap();
}

fn names(ovl: &Overlay, id: u64) -> Vec<String> {
    // Listing order is a hash order; the tests compare the names.
    let mut v: Vec<String> = ovl
        .read_dir(id, 2)
        .unwrap()
        .map(|(_, e)| e.name.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        umask: 0,
    }
}
