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

    fn overlay(&self, n_lowers: usize) -> Overlay {
        let mut p = Params::default();
        p.lowerdirs = (0..n_lowers).map(|i| self.p(&format!("l{i}"))).collect();
        p.upperdir = Some(self.p("upper"));
        p.workdir = Some(self.p("work"));
        let layers = Layers::open(&p).expect("layers open");
        Overlay::new(
            layers,
            Config {
                fsync: false,
                redirect_dir: false,
            },
        )
        .unwrap()
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
    let fh = ovl.opendir(id).unwrap();
    let l = ovl.readdir(fh, 0).unwrap();
    ovl.releasedir(fh);
    l.iter()
        .skip(2)
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect()
}

fn ctx() -> Ctx {
    Ctx {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        umask: 0,
    }
}

#[test]
fn upper_hides_lower_and_lowers_stack_in_order() {
    let f = Fixture::new(2);
    f.write("l0/a", "l0");
    f.write("l1/a", "l1");
    f.write("l1/b", "only-l1");
    f.write("upper/c", "up");
    let ovl = f.overlay(2);
    let (a, _) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    let fh = ovl.open(&ctx(), a.id, libc::O_RDONLY).unwrap();
    assert_eq!(ovl.read(fh, 0, 100).unwrap(), b"l0");
    assert_eq!(names(&ovl, ROOT_ID), vec!["a", "b", "c"]);
}

#[test]
fn whiteout_hides_and_readdir_agrees_with_lookup() {
    let f = Fixture::new(2);
    f.write("l1/gone", "x");
    f.write("l1/kept", "x");
    whiteout(&f.p("l0/gone"));
    let ovl = f.overlay(2);
    assert_eq!(
        ovl.lookup(ROOT_ID, OsStr::new("gone")).unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(names(&ovl, ROOT_ID), vec!["kept"]);
    // After the listing is built, lookup answers from it.
    assert_eq!(
        ovl.lookup(ROOT_ID, OsStr::new("gone")).unwrap_err(),
        Errno::ENOENT
    );
}

#[test]
fn oci_markers_are_read_and_never_shown() {
    let f = Fixture::new(2);
    f.write("l1/d/old", "x");
    f.write("l1/d/keep", "x");
    f.write("l0/d/.wh.old", "");
    f.write("l1/o/hidden", "x");
    f.write("l0/o/.wh..wh..opq", "");
    f.write("l0/o/mine", "x");
    let ovl = f.overlay(2);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(names(&ovl, d.id), vec!["keep"]);
    assert_eq!(
        ovl.lookup(d.id, OsStr::new("old")).unwrap_err(),
        Errno::ENOENT
    );
    let (o, _) = ovl.lookup(ROOT_ID, OsStr::new("o")).unwrap();
    assert_eq!(names(&ovl, o.id), vec!["mine"]);
}

#[test]
fn unlink_of_lower_file_writes_only_a_whiteout() {
    let f = Fixture::new(1);
    f.write("l0/dir/big", "data");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("dir")).unwrap();
    ovl.unlink(d.id, OsStr::new("big")).unwrap();
    let md = std::fs::symlink_metadata(f.p("upper/dir/big")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), 0);
    assert_eq!(
        std::fs::read(f.p("l0/dir/big")).unwrap(),
        b"data",
        "lower untouched"
    );
    assert_eq!(
        ovl.lookup(d.id, OsStr::new("big")).unwrap_err(),
        Errno::ENOENT
    );
    assert!(names(&ovl, d.id).is_empty());
}

#[test]
fn copy_up_on_write_keeps_metadata_and_lower() {
    let f = Fixture::new(1);
    f.write("l0/f", "hello");
    std::fs::set_permissions(
        f.p("l0/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let ovl = f.overlay(1);
    let (n, before) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let fh = ovl.open(&ctx(), n.id, libc::O_WRONLY).unwrap();
    ovl.write(fh, 5, b" world").unwrap();
    ovl.release(fh);
    assert_eq!(std::fs::read(f.p("upper/f")).unwrap(), b"hello world");
    assert_eq!(std::fs::read(f.p("l0/f")).unwrap(), b"hello");
    let after = ovl.getattr(n.id, None).unwrap();
    assert_eq!(after.ino, before.ino, "st_ino stable across copy-up");
    assert_eq!(after.mode & 0o7777, 0o640);
}

#[test]
fn open_trunc_skips_the_data_copy() {
    let f = Fixture::new(1);
    f.write("l0/f", "old contents");
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let fh = ovl
        .open(&ctx(), n.id, libc::O_WRONLY | libc::O_TRUNC)
        .unwrap();
    ovl.release(fh);
    assert_eq!(std::fs::metadata(f.p("upper/f")).unwrap().len(), 0);
}

#[test]
fn rmdir_then_mkdir_gives_an_opaque_dir_and_mkdir_elsewhere_does_not() {
    let f = Fixture::new(1);
    f.write("l0/d/x", "x");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(
        ovl.rmdir(ROOT_ID, OsStr::new("d")).unwrap_err(),
        Errno::ENOTEMPTY
    );
    ovl.unlink(d.id, OsStr::new("x")).unwrap();
    ovl.rmdir(ROOT_ID, OsStr::new("d")).unwrap();
    let (d2, _) = ovl.mkdir(&ctx(), ROOT_ID, OsStr::new("d"), 0o755).unwrap();
    assert!(names(&ovl, d2.id).is_empty());
    let dir = std::fs::File::open(f.p("upper")).unwrap();
    let mut v = [0u8; 4];
    let n = crate::sys::xattr::get(
        dir.as_fd(),
        OsStr::new("d"),
        "trusted.overlay.opaque",
        &mut v,
    )
    .unwrap();
    assert_eq!(&v[..n], b"y");
    ovl.mkdir(&ctx(), ROOT_ID, OsStr::new("fresh"), 0o755)
        .unwrap();
    assert!(crate::sys::xattr::get(
        dir.as_fd(),
        OsStr::new("fresh"),
        "trusted.overlay.opaque",
        &mut v
    )
    .is_err());
}

#[test]
fn rename_of_merged_dir_is_exdev_and_of_upper_dir_works() {
    let f = Fixture::new(1);
    f.write("l0/merged/x", "x");
    let ovl = f.overlay(1);
    ovl.lookup(ROOT_ID, OsStr::new("merged")).unwrap();
    assert_eq!(
        ovl.rename(ROOT_ID, OsStr::new("merged"), ROOT_ID, OsStr::new("m2"), 0)
            .unwrap_err(),
        Errno::EXDEV
    );
    ovl.mkdir(&ctx(), ROOT_ID, OsStr::new("up"), 0o755).unwrap();
    ovl.rename(ROOT_ID, OsStr::new("up"), ROOT_ID, OsStr::new("up2"), 0)
        .unwrap();
    assert_eq!(names(&ovl, ROOT_ID), vec!["merged", "up2"]);
}

#[test]
fn rename_of_lower_file_leaves_whiteout_and_noreplace_exchange_work() {
    let f = Fixture::new(1);
    f.write("l0/a", "A");
    f.write("l0/b", "B");
    let ovl = f.overlay(1);
    assert_eq!(
        ovl.rename(
            ROOT_ID,
            OsStr::new("a"),
            ROOT_ID,
            OsStr::new("b"),
            fs::RENAME_NOREPLACE
        )
        .unwrap_err(),
        Errno::EEXIST
    );
    ovl.rename(
        ROOT_ID,
        OsStr::new("a"),
        ROOT_ID,
        OsStr::new("b"),
        fs::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(std::fs::read(f.p("upper/a")).unwrap(), b"B");
    ovl.rename(ROOT_ID, OsStr::new("a"), ROOT_ID, OsStr::new("c"), 0)
        .unwrap();
    assert!(std::fs::symlink_metadata(f.p("upper/a"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(names(&ovl, ROOT_ID), vec!["b", "c"]);
}

#[test]
fn names_of_255_bytes_work_and_256_are_refused() {
    let f = Fixture::new(1);
    let ovl = f.overlay(1);
    let long = "n".repeat(255);
    ovl.create(&ctx(), ROOT_ID, OsStr::new(&long), 0o644, libc::O_WRONLY)
        .unwrap();
    assert!(ovl.lookup(ROOT_ID, OsStr::new(&long)).is_ok());
    let too_long = "n".repeat(256);
    assert_eq!(
        ovl.lookup(ROOT_ID, OsStr::new(&too_long)).unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        ovl.create(
            &ctx(),
            ROOT_ID,
            OsStr::new(&too_long),
            0o644,
            libc::O_WRONLY
        )
        .unwrap_err(),
        Errno::ENAMETOOLONG
    );
}

#[test]
fn private_xattrs_are_hidden() {
    let f = Fixture::new(1);
    f.write("l0/f", "x");
    let dir = std::fs::File::open(f.p("l0")).unwrap();
    crate::sys::xattr::set(
        dir.as_fd(),
        OsStr::new("f"),
        "trusted.overlay.secret",
        b"1",
        0,
    )
    .unwrap();
    crate::sys::xattr::set(dir.as_fd(), OsStr::new("f"), "user.visible", b"2", 0).unwrap();
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let list = ovl.listxattr(n.id).unwrap();
    assert_eq!(list, b"user.visible\0");
    assert_eq!(
        ovl.getxattr(n.id, OsStr::new("trusted.overlay.secret"))
            .unwrap_err(),
        Errno::ENODATA
    );
    // A caller's own attribute under the private prefix is stored escaped.
    ovl.setxattr(n.id, OsStr::new("trusted.overlay.mine"), b"3", 0)
        .unwrap();
    assert_eq!(
        ovl.getxattr(n.id, OsStr::new("trusted.overlay.mine"))
            .unwrap(),
        b"3"
    );
    let up = std::fs::File::open(f.p("upper")).unwrap();
    let mut v = [0u8; 4];
    assert!(crate::sys::xattr::get(
        up.as_fd(),
        OsStr::new("f"),
        "trusted.overlay.overlay.mine",
        &mut v
    )
    .is_ok());
    let list = ovl.listxattr(n.id).unwrap();
    assert!(
        list.windows(20).any(|w| w == b"trusted.overlay.mine"),
        "{:?}",
        String::from_utf8_lossy(&list)
    );
}

#[test]
fn lower_hard_links_show_one_inode_but_stay_separate_objects() {
    let f = Fixture::new(1);
    f.write("l0/a", "x");
    std::fs::hard_link(f.p("l0/a"), f.p("l0/b")).unwrap();
    let ovl = f.overlay(1);
    let (a, aa) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    let (b, ba) = ovl.lookup(ROOT_ID, OsStr::new("b")).unwrap();
    assert_ne!(
        a.id, b.id,
        "kernel overlayfs (index=off) breaks lower links on copy-up"
    );
    assert_eq!(aa.ino, ba.ino);
    assert_eq!(aa.nlink, 2);
    let fh = ovl.open(&ctx(), a.id, libc::O_WRONLY).unwrap();
    ovl.write(fh, 1, b"y").unwrap();
    ovl.release(fh);
    assert_eq!(ovl.getattr(a.id, None).unwrap().nlink, 1);
    assert_eq!(ovl.getattr(b.id, None).unwrap().nlink, 2);
    assert_eq!(
        ovl.getattr(a.id, None).unwrap().ino,
        ba.ino,
        "st_ino kept across copy-up"
    );
}

#[test]
fn upper_hard_links_share_one_node() {
    let f = Fixture::new(1);
    f.write("l0/a", "x");
    let ovl = f.overlay(1);
    let (a, _) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    let (l, la) = ovl.link(&ctx(), a.id, ROOT_ID, OsStr::new("l")).unwrap();
    assert_eq!(a.id, l.id);
    assert_eq!(la.nlink, 2);
    ovl.forget(l.id, 2);
    let (l2, _) = ovl.lookup(ROOT_ID, OsStr::new("l")).unwrap();
    let (a2, _) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    assert_eq!(l2.id, a2.id);
}

#[test]
fn read_only_overlay_refuses_writes() {
    let f = Fixture::new(1);
    f.write("l0/f", "x");
    let mut p = Params::default();
    p.lowerdirs = vec![f.p("l0")];
    let ovl = Overlay::new(Layers::open(&p).unwrap(), Config::default()).unwrap();
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    assert_eq!(
        ovl.open(&ctx(), n.id, libc::O_RDWR).unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(
        ovl.unlink(ROOT_ID, OsStr::new("f")).unwrap_err(),
        Errno::EROFS
    );
    assert_eq!(
        ovl.mkdir(&ctx(), ROOT_ID, OsStr::new("d"), 0o755)
            .unwrap_err(),
        Errno::EROFS
    );
}

#[test]
fn forgotten_nodes_leave_the_table() {
    let f = Fixture::new(1);
    for i in 0..50 {
        f.write(&format!("l0/f{i}"), "x");
    }
    let ovl = f.overlay(1);
    let base = ovl.nodes.live_count();
    let ids: Vec<u64> = (0..50)
        .map(|i| {
            ovl.lookup(ROOT_ID, OsStr::new(&format!("f{i}")))
                .unwrap()
                .0
                .id
        })
        .collect();
    assert_eq!(ovl.nodes.live_count(), base + 50);
    for id in ids {
        ovl.forget(id, 1);
    }
    assert_eq!(ovl.nodes.live_count(), base);
}

#[test]
fn overlapping_layers_are_refused() {
    let f = Fixture::new(1);
    std::fs::create_dir_all(f.p("l0/inner")).unwrap();
    let mut p = Params::default();
    p.lowerdirs = vec![f.p("l0")];
    p.upperdir = Some(f.p("l0/inner"));
    p.workdir = Some(f.p("work"));
    let err = Layers::open(&p).err().expect("must fail");
    assert!(err.contains("inside lowerdir"), "{err}");
    p.upperdir = Some(f.p("upper"));
    p.workdir = Some(f.p("upper"));
    assert!(Layers::open(&p).is_err());
}

#[test]
fn chmod_by_a_non_member_cannot_set_setgid() {
    let f = Fixture::new(1);
    f.write("l0/f", "x");
    std::os::unix::fs::chown(f.p("l0/f"), Some(1000), Some(4242)).unwrap();
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let user = Ctx {
        uid: 1000,
        gid: 1000,
        pid: std::process::id(),
        umask: 0,
    };
    let set = super::SetAttr {
        mode: Some(0o2755),
        ..Default::default()
    };
    let a = ovl.setattr(&user, n.id, &set).unwrap();
    assert_eq!(
        a.mode & 0o7777,
        0o755,
        "set-group-ID dropped for a caller outside group 4242"
    );
    let a = ovl.setattr(&ctx(), n.id, &set).unwrap();
    assert_eq!(a.mode & 0o7777, 0o2755, "root may set it");
}
