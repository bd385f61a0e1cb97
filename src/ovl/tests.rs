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
    let mut buf = [0u8; 100];
    let n = ovl.read_into(fh, 0, &mut buf, None).unwrap();
    assert_eq!(&buf[..n], b"l0");
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
fn a_removed_lower_file_still_held_keeps_its_attributes() {
    // The kernel may still hold a node whose last name went (an open file, an O_PATH fd,
    // a cwd); it is reached through its lower name, which does not change.
    let f = Fixture::new(1);
    f.write("l0/dir/held", "12345");
    f.write("l0/dir/other", "x");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("dir")).unwrap();
    let (held, before) = ovl.lookup(d.id, OsStr::new("held")).unwrap();
    ovl.unlink(d.id, OsStr::new("held")).unwrap();
    let after = ovl
        .getattr(held.id, None)
        .expect("attributes of the removed file");
    assert_eq!(
        (after.ino, after.size, after.mode),
        (before.ino, 5, before.mode)
    );
    // Not the new file made since under that name.
    let (_, _, fh) = ovl
        .create(&ctx(), d.id, OsStr::new("held"), 0o600, libc::O_WRONLY)
        .unwrap();
    ovl.release(fh);
    assert_eq!(ovl.getattr(held.id, None).unwrap().size, 5);
}

#[test]
fn xattrs_of_a_removed_file_still_held_are_its_own() {
    // Copied up by an open for writing, then removed: the old name now holds a whiteout,
    // and the file's xattrs are reached through its kept fd, not through that name.
    let f = Fixture::new(1);
    f.write("l0/dir/held", "12345");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("dir")).unwrap();
    let (held, _) = ovl.lookup(d.id, OsStr::new("held")).unwrap();
    let fh = ovl.open(&ctx(), held.id, libc::O_RDWR).unwrap();
    ovl.unlink(d.id, OsStr::new("held")).unwrap();
    let name = OsStr::new("user.kept");
    ovl.setxattr(&ctx(), held.id, name, b"v", 0)
        .expect("setxattr of the removed file");
    assert_eq!(ovl.getxattr(held.id, name).unwrap(), b"v");
    assert_eq!(ovl.listxattr(held.id).unwrap(), b"user.kept\0");
    ovl.removexattr(held.id, name).unwrap();
    assert_eq!(ovl.listxattr(held.id).unwrap(), b"");
    ovl.release(fh);
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
    ovl.write(&ctx(), fh, 5, b" world", false).unwrap();
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
    // Without redirects: with them, every new directory in a merged parent is opaque.
    let ovl = f.overlay_with(
        1,
        Config {
            redirect_dir: false,
            ..Config::default()
        },
    );
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
fn what_removals_swap_into_the_workdir_is_gone_once_the_session_finishes() {
    let f = Fixture::new(1);
    for i in 0..300 {
        f.write(&format!("l0/d/f{i}"), "x");
        f.write(&format!("l0/t/f{i}"), "x");
    }
    f.write("l0/file", "lower");
    f.write("upper/file", "upper");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    let (t, _) = ovl.lookup(ROOT_ID, OsStr::new("t")).unwrap();
    for i in 0..300 {
        let name = format!("f{i}");
        ovl.unlink(d.id, OsStr::new(&name)).unwrap();
        ovl.unlink(t.id, OsStr::new(&name)).unwrap();
    }
    // rmdir of a merged directory whose upper copy holds 300 whiteouts, rename of an
    // empty directory onto another such one, unlink of an upper file over a lower one
    // (removed at once).
    ovl.rmdir(ROOT_ID, OsStr::new("d")).unwrap();
    ovl.mkdir(&ctx(), ROOT_ID, OsStr::new("e"), 0o755).unwrap();
    ovl.rename(ROOT_ID, OsStr::new("e"), ROOT_ID, OsStr::new("t"), 0)
        .unwrap();
    ovl.unlink(ROOT_ID, OsStr::new("file")).unwrap();
    // Out of the view at once, whatever the work directory still holds.
    assert_eq!(names(&ovl, ROOT_ID), ["t"]);
    let (t2, _) = ovl.lookup(ROOT_ID, OsStr::new("t")).unwrap();
    assert!(names(&ovl, t2.id).is_empty());
    let (d2, _) = ovl.mkdir(&ctx(), ROOT_ID, OsStr::new("d"), 0o755).unwrap();
    assert!(names(&ovl, d2.id).is_empty());
    ovl.finish_removals();
    let left = f.work_leftovers();
    assert!(left.is_empty(), "the work directory holds {left:?}");
    // After the session, a removal is carried out before it returns.
    ovl.rmdir(ROOT_ID, OsStr::new("t")).unwrap();
    let left = std::fs::read_dir(f.p("work/work")).unwrap().count();
    assert_eq!(left, 1, "only the shared whiteout is left");
}

#[test]
fn without_redirects_rename_of_merged_dir_is_exdev_and_of_upper_dir_works() {
    let f = Fixture::new(1);
    f.write("l0/merged/x", "x");
    let ovl = f.overlay_with(
        1,
        Config {
            redirect_dir: false,
            ..Config::default()
        },
    );
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
    ovl.setxattr(&ctx(), n.id, OsStr::new("trusted.overlay.mine"), b"3", 0)
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
fn lower_hard_links_show_one_inode_until_a_copy_up_parts_them() {
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
    // The directory's listing is built before the copy-up, and must follow it.
    assert_eq!(names(&ovl, ROOT_ID), ["a", "b"]);
    let fh = ovl.open(&ctx(), a.id, libc::O_WRONLY).unwrap();
    ovl.write(&ctx(), fh, 1, b"y", false).unwrap();
    ovl.release(fh);
    assert_eq!(ovl.getattr(a.id, None).unwrap().nlink, 1);
    assert_eq!(ovl.getattr(b.id, None).unwrap().nlink, 2);
    // The copy is another file than b now: it shows the upper file's number, as on the
    // kernel overlay, and b keeps the lower one.
    let upper_ino = std::fs::symlink_metadata(f.p("upper/a")).unwrap().ino();
    let after = ovl.getattr(a.id, None).unwrap().ino;
    assert_ne!(
        after, ba.ino,
        "the copy of a lower hard link keeps its number"
    );
    assert_eq!(after, upper_ino);
    assert_eq!(ovl.getattr(b.id, None).unwrap().ino, ba.ino);
    let listed: Vec<u64> = ovl
        .read_dir(ROOT_ID, 2)
        .unwrap()
        .filter(|(_, e)| &*e.name == OsStr::new("a"))
        .map(|(_, e)| e.ino)
        .collect();
    assert_eq!(listed, vec![after], "the listing shows the copy's number");
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
    std::fs::create_dir_all(f.p("upper/inner")).unwrap();
    std::fs::create_dir_all(f.p("l0/inner")).unwrap();
    let mut p = Params::default();
    p.lowerdirs = vec![f.p("upper/inner")];
    p.upperdir = Some(f.p("upper"));
    p.workdir = Some(f.p("work"));
    let err = Layers::open(&p).err().expect("a lower inside the upper");
    assert!(err.contains("inside upperdir"), "{err}");
    p.lowerdirs = vec![f.p("upper")];
    let err = Layers::open(&p).err().expect("the upper as a lower");
    assert!(err.contains("also the upperdir"), "{err}");
    p.lowerdirs = vec![f.p("l0")];
    p.workdir = Some(f.p("upper"));
    assert!(Layers::open(&p).is_err(), "the upper as the workdir");
    // An upper inside a lower is the kernel overlay's `lowerdir=/` case: allowed.
    p.upperdir = Some(f.p("l0/inner"));
    p.workdir = Some(f.p("work"));
    assert!(Layers::open(&p).is_ok(), "an upper inside a lower");
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

fn user(uid: u32, gid: u32) -> Ctx {
    Ctx {
        uid,
        gid,
        pid: std::process::id(),
        umask: 0,
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn writes_by_unprivileged_callers_clear_set_id_bits_as_the_vfs_does() {
    let f = Fixture::new(1);
    for name in ["plain", "grpexec", "member"] {
        f.write(&format!("l0/{name}"), "data");
        std::os::unix::fs::chown(f.p(&format!("l0/{name}")), Some(0), Some(4242)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    let set = |n: &str, m: u32| {
        std::fs::set_permissions(f.p(n), std::fs::Permissions::from_mode(m)).unwrap()
    };
    set("l0/plain", 0o6666);
    set("l0/grpexec", 0o2676);
    set("l0/member", 0o2666);
    let ovl = f.overlay(1);
    let write_as = |who: &Ctx, name: &str| {
        let (n, _) = ovl.lookup(ROOT_ID, OsStr::new(name)).unwrap();
        let fh = ovl.open(who, n.id, libc::O_WRONLY).unwrap();
        assert_eq!(ovl.write(who, fh, 0, b"x", false).unwrap(), 1);
        ovl.release(fh);
    };
    // Outside the file's group: set-user-ID and set-group-ID both go.
    write_as(&user(1000, 1000), "plain");
    assert_eq!(mode_of(&f.p("upper/plain")), 0o666);
    // Group-executable: set-group-ID goes whoever writes (unless privileged).
    write_as(&user(1000, 4242), "grpexec");
    assert_eq!(mode_of(&f.p("upper/grpexec")), 0o676);
    // A member of the group writing a non-group-executable file keeps it.
    write_as(&user(1000, 4242), "member");
    assert_eq!(mode_of(&f.p("upper/member")), 0o2666);
    // Root keeps everything.
    std::fs::set_permissions(f.p("upper/plain"), std::fs::Permissions::from_mode(0o6666)).unwrap();
    write_as(&ctx(), "plain");
    assert_eq!(mode_of(&f.p("upper/plain")), 0o6666);
    // So does truncation on open.
    std::fs::set_permissions(f.p("upper/plain"), std::fs::Permissions::from_mode(0o6666)).unwrap();
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("plain")).unwrap();
    let fh = ovl
        .open(&user(1000, 1000), n.id, libc::O_WRONLY | libc::O_TRUNC)
        .unwrap();
    ovl.release(fh);
    assert_eq!(mode_of(&f.p("upper/plain")), 0o666, "O_TRUNC");
    // fallocate and hole punching count as writes (xfstests generic/683, 684).
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("plain")).unwrap();
    for mode in [0, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE] {
        std::fs::set_permissions(f.p("upper/plain"), std::fs::Permissions::from_mode(0o6666))
            .unwrap();
        let who = user(1000, 1000);
        let fh = ovl.open(&who, n.id, libc::O_WRONLY).unwrap();
        ovl.fallocate(&who, fh, 0, 4096, mode).unwrap();
        ovl.release(fh);
        assert_eq!(
            mode_of(&f.p("upper/plain")),
            0o666,
            "fallocate mode {mode:#x}"
        );
    }
}

/// Runs `f`, then clears the immutable flag of `dir` whatever happened, so the fixture
/// can be removed.
fn with_immutable(dir: &Path, f: impl FnOnce()) {
    let set = |flags: u32| {
        let d = std::fs::File::open(dir).unwrap();
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&flags.to_ne_bytes());
        fs::attr_ioctl(d.as_fd(), fs::FS_IOC_SETFLAGS, &mut buf)
    };
    if set(fs::FS_IMMUTABLE_FL).is_err() {
        eprintln!("SKIPPED: the filesystem under /tmp has no immutable flag");
        return;
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    set(0).unwrap();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn removal_from_an_immutable_directory_is_eperm_before_enotempty() {
    let f = Fixture::new(1);
    f.write("upper/d/full/file", "x");
    f.write("upper/d/file", "x");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    with_immutable(&f.p("upper/d"), || {
        assert_eq!(ovl.rmdir(d.id, OsStr::new("full")), Err(Errno::EPERM));
        assert_eq!(ovl.rmdir(d.id, OsStr::new("file")), Err(Errno::EPERM));
        assert_eq!(ovl.unlink(d.id, OsStr::new("full")), Err(Errno::EPERM));
    });
    // Without the flag, the usual errors come back.
    assert_eq!(ovl.rmdir(d.id, OsStr::new("full")), Err(Errno::ENOTEMPTY));
    assert_eq!(ovl.unlink(d.id, OsStr::new("full")), Err(Errno::EISDIR));
}

/// A POSIX ACL xattr value: version 2, then (tag, perm, id) entries.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn mkdir_in_a_setgid_directory_keeps_what_the_default_acl_allows() {
    let f = Fixture::new(1);
    std::fs::create_dir_all(f.p("upper/d")).unwrap();
    std::os::unix::fs::chown(f.p("upper/d"), Some(100), Some(100)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.p("upper/d"), std::fs::Permissions::from_mode(0o2755)).unwrap();
    // user::rwx user:101:rwx group::r-x mask::rwx other::r-x
    let acl = acl_value(&[
        (0x01, 7, u32::MAX),
        (0x02, 7, 101),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ]);
    let d = std::fs::File::open(f.p("upper/d")).unwrap();
    if crate::sys::xattr::set_on_dir(d.as_fd(), "system.posix_acl_default", &acl).is_err() {
        eprintln!("SKIPPED: the filesystem under /tmp has no POSIX ACLs");
        return;
    }
    let ovl = f.overlay(1);
    let (dn, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    let (_, a) = ovl
        .mkdir(&user(100, 101), dn.id, OsStr::new("sub"), 0o777)
        .unwrap();
    assert_eq!(
        a.mode & 0o7777,
        0o2775,
        "other bits come from the default ACL"
    );
    assert_eq!(mode_of(&f.p("upper/d/sub")), 0o2775);
}

#[test]
fn setting_an_access_acl_outside_the_group_drops_setgid() {
    let f = Fixture::new(1);
    f.write("l0/f", "x");
    std::os::unix::fs::chown(f.p("l0/f"), Some(100), Some(100)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.p("l0/f"), std::fs::Permissions::from_mode(0o2755)).unwrap();
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    // u::rwx g::rwx o::rwx
    let acl = acl_value(&[
        (0x01, 7, u32::MAX),
        (0x04, 7, u32::MAX),
        (0x20, 7, u32::MAX),
    ]);
    let name = OsStr::new("system.posix_acl_access");
    // A member of group 100 keeps it...
    ovl.setxattr(&user(100, 100), n.id, name, &acl, 0).unwrap();
    assert_eq!(mode_of(&f.p("upper/f")), 0o2777);
    // ...the owner outside it does not.
    std::fs::set_permissions(f.p("upper/f"), std::fs::Permissions::from_mode(0o2755)).unwrap();
    ovl.setxattr(&user(100, 101), n.id, name, &acl, 0).unwrap();
    assert_eq!(mode_of(&f.p("upper/f")), 0o777);
}

#[test]
fn with_redirects_new_directories_in_merged_parents_are_opaque() {
    let f = Fixture::new(1);
    f.write("l0/m/x", "x");
    std::fs::create_dir_all(f.p("upper/u")).unwrap();
    let ovl = f.overlay(1);
    let (m, _) = ovl.lookup(ROOT_ID, OsStr::new("m")).unwrap();
    let (u, _) = ovl.lookup(ROOT_ID, OsStr::new("u")).unwrap();
    ovl.mkdir(&ctx(), m.id, OsStr::new("new"), 0o755).unwrap();
    ovl.mkdir(&ctx(), u.id, OsStr::new("new"), 0o755).unwrap();
    let opaque = |rel: &str| {
        let dir = std::fs::File::open(f.p(rel)).unwrap();
        let mut v = [0u8; 4];
        crate::sys::xattr::get(
            dir.as_fd(),
            OsStr::new("new"),
            "trusted.overlay.opaque",
            &mut v,
        )
        .is_ok_and(|n| &v[..n] == b"y")
    };
    assert!(opaque("upper/m"), "merged parent");
    assert!(!opaque("upper/u"), "upper-only parent");
}

#[test]
fn creating_after_misses_in_merged_dirs_does_not_deadlock() {
    // Misses build a directory's merged listing (after a few); creates probe for absence
    // with the directory lock held and must not build it there, or they wait on
    // themselves. The work runs on its own thread so that a hang fails the test.
    let f = Fixture::new(1);
    f.write("l0/d/x", "x");
    let ovl = Arc::new(f.overlay(1));
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let o = ovl.clone();
    let dir = d.id;
    std::thread::spawn(move || {
        for i in 0..10 {
            let name = format!("new{i}");
            // The kernel skips the lookup when it holds a negative entry.
            if i >= 5 {
                assert_eq!(o.lookup(dir, OsStr::new(&name)).unwrap_err(), Errno::ENOENT);
            }
            o.create(&ctx(), dir, OsStr::new(&name), 0o644, libc::O_WRONLY)
                .unwrap();
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .expect("creates in a merged directory hang (or failed)");
    assert_eq!(names(&ovl, d.id).len(), 11);
}

/// A listing dropped (to keep within the budget) and built again reads each layer from
/// its start again, through a second open of the directory cached by the first build,
/// whether the directory is in one layer or merged from several; whiteouts and OCI
/// markers stay hidden.
#[test]
fn a_listing_built_again_reads_every_layer_from_its_start() {
    let f = Fixture::new(2);
    for n in ["a", "b", "gone"] {
        f.write(&format!("l0/one/{n}"), "x");
    }
    f.write("l0/one/.wh.b", "");
    f.write("l0/both/a", "x");
    f.write("l1/both/b", "x");
    f.write("l1/both/c", "x");
    whiteout(&f.p("l0/both/c"));
    let ovl = f.overlay(2);
    for (dir, want) in [("one", ["a", "b", "gone"]), ("both", ["a", "b", "gone"])] {
        let (d, _) = ovl.lookup(ROOT_ID, OsStr::new(dir)).unwrap();
        let want: Vec<&str> = want
            .into_iter()
            .filter(|n| dir == "one" || *n != "gone")
            .collect();
        assert_eq!(names(&ovl, d.id), want, "{dir}: first build");
        d.set_merged(None);
        assert_eq!(names(&ovl, d.id), want, "{dir}: built again");
    }
}

#[test]
fn lookups_answered_from_a_listing_see_copy_ups_and_whiteouts() {
    // Once a directory is listed, lookups of lower files use the layer the listing
    // recorded. A file copied up (then forgotten by the kernel) must come back as its
    // upper copy, a removed one must stay removed, and an upper file must win.
    let f = Fixture::new(2);
    f.write("l1/d/a", "lower a");
    f.write("l1/d/b", "lower b");
    f.write("l0/d/c", "l0 c");
    f.write("l1/d/c", "l1 c, hidden");
    let ovl = f.overlay(2);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(names(&ovl, d.id), ["a", "b", "c"]);

    let (a, before) = ovl.lookup(d.id, OsStr::new("a")).unwrap();
    assert_eq!(before.size, 7);
    let fh = ovl.open(&ctx(), a.id, libc::O_WRONLY).unwrap();
    ovl.write(&ctx(), fh, 7, b" and more", false).unwrap();
    ovl.release(fh);
    ovl.forget(a.id, 1);
    assert_eq!(
        ovl.nodes.peek_child(d.id, OsStr::new("a")).map(|n| n.id),
        None
    );
    let (a, after) = ovl.lookup(d.id, OsStr::new("a")).unwrap();
    assert!(a.is_upper(), "the upper copy is the one found");
    assert_eq!(after.size, 16);
    assert_eq!(after.ino, before.ino);

    let (c, ca) = ovl.lookup(d.id, OsStr::new("c")).unwrap();
    assert_eq!(ca.size, 4, "the highest lower copy");
    assert_eq!(c.state().lowers.first().copied(), Some(1));

    ovl.unlink(d.id, OsStr::new("b")).unwrap();
    assert_eq!(
        ovl.lookup(d.id, OsStr::new("b")).unwrap_err(),
        Errno::ENOENT
    );
    // Created again, then removed again: the lower copy still needs hiding.
    let (_, _, fh) = ovl
        .create(&ctx(), d.id, OsStr::new("b"), 0o644, libc::O_WRONLY)
        .unwrap();
    ovl.release(fh);
    ovl.unlink(d.id, OsStr::new("b")).unwrap();
    assert_eq!(
        ovl.lookup(d.id, OsStr::new("b")).unwrap_err(),
        Errno::ENOENT
    );
    let wh = std::fs::symlink_metadata(f.p("upper/d/b")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(names(&ovl, d.id), ["a", "c"]);
}

#[test]
fn create_over_a_whiteout_in_an_opaque_directory_replaces_it() {
    // An opaque upper directory merges nothing, so creation there skips the merged-view
    // check; a whiteout left inside it must still be replaced, not refused. Creation
    // makes the object in place first and learns of the whiteout from its EEXIST: every
    // kind of object must then go over it, and a name held by anything else stay EEXIST.
    let f = Fixture::new(1);
    f.write("l0/d/x", "lower");
    std::fs::create_dir_all(f.p("upper/d")).unwrap();
    for n in ["x", "sub", "link", "fifo"] {
        whiteout(&f.p(&format!("upper/d/{n}")));
    }
    let d = std::fs::File::open(f.p("upper")).unwrap();
    crate::sys::xattr::set(
        d.as_fd(),
        OsStr::new("d"),
        "trusted.overlay.opaque",
        b"y",
        0,
    )
    .unwrap();
    let ovl = f.overlay(1);
    let (dn, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert!(!dn.has_lowers(), "opaque: no lower part");
    assert_eq!(
        ovl.lookup(dn.id, OsStr::new("x")).unwrap_err(),
        Errno::ENOENT
    );
    let (_, _, fh) = ovl
        .create(&ctx(), dn.id, OsStr::new("x"), 0o640, libc::O_WRONLY)
        .unwrap();
    ovl.write(&ctx(), fh, 0, b"new", false).unwrap();
    ovl.release(fh);
    assert_eq!(std::fs::read(f.p("upper/d/x")).unwrap(), b"new");
    assert_eq!(
        ovl.create(&ctx(), dn.id, OsStr::new("x"), 0o640, libc::O_WRONLY)
            .map(|_| ())
            .unwrap_err(),
        Errno::EEXIST
    );
    let (sub, _) = ovl.mkdir(&ctx(), dn.id, OsStr::new("sub"), 0o750).unwrap();
    let (link, _) = ovl
        .symlink(&ctx(), dn.id, OsStr::new("link"), OsStr::new("x"))
        .unwrap();
    let (fifo, _) = ovl
        .mknod(&ctx(), dn.id, OsStr::new("fifo"), libc::S_IFIFO | 0o600, 0)
        .unwrap();
    assert!(sub.is_dir() && link.kind == libc::S_IFLNK && fifo.kind == libc::S_IFIFO);
    let kind_of = |n: &str| std::fs::symlink_metadata(f.p(&format!("upper/d/{n}"))).unwrap();
    assert!(kind_of("sub").is_dir());
    assert_eq!(
        std::fs::read_link(f.p("upper/d/link")).unwrap(),
        Path::new("x")
    );
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &kind_of("fifo").file_type()
    ));
    for n in ["x", "sub", "link", "fifo"] {
        let taken = match n {
            "sub" => ovl.mkdir(&ctx(), dn.id, OsStr::new(n), 0o750).map(drop),
            _ => ovl
                .symlink(&ctx(), dn.id, OsStr::new(n), OsStr::new("x"))
                .map(drop),
        };
        assert_eq!(taken.unwrap_err(), Errno::EEXIST, "{n}");
    }
    assert_eq!(names(&ovl, dn.id), ["fifo", "link", "sub", "x"]);
    let left = f.work_leftovers();
    assert!(left.is_empty(), "the work directory holds {left:?}");
}

#[test]
fn removal_needs_a_whiteout_exactly_where_the_highest_lower_copy_is_real() {
    // The merged listing records, per name, whether its highest lower copy is a real
    // object (then removing the name must leave a whiteout) or a whiteout (then plain
    // removal is enough), for shown and hidden names alike, across three layers.
    let f = Fixture::new(2);
    for l in ["l0", "l1"] {
        f.write(&format!("{l}/d/x"), "x");
    }
    std::fs::create_dir_all(f.p("upper/d")).unwrap();
    whiteout(&f.p("upper/d/x")); // hidden by the upper; l0's copy is real
    whiteout(&f.p("l0/d/y"));
    f.write("l1/d/y", "y"); // hidden by l0's whiteout
    f.write("upper/d/z", "upper z");
    f.write("l1/d/z", "z"); // shown from the upper, real below
    f.write("l1/d/w", "w"); // only in the last layer
    f.write("upper/d/v", "v"); // only in the upper
    f.write("l0/d/.wh.m", ""); // an OCI marker hides l1's m
    f.write("l1/d/m", "m");
    let ovl = f.overlay(2);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    assert_eq!(names(&ovl, d.id), ["v", "w", "z"]);
    for name in ["x", "y", "m"] {
        let (_, _, fh) = ovl
            .create(&ctx(), d.id, OsStr::new(name), 0o644, libc::O_WRONLY)
            .unwrap();
        ovl.release(fh);
    }
    for name in ["x", "y", "m", "z", "w", "v"] {
        ovl.lookup(d.id, OsStr::new(name)).unwrap();
        ovl.unlink(d.id, OsStr::new(name)).unwrap();
        let left = std::fs::symlink_metadata(f.p(&format!("upper/d/{name}")));
        let whiteout_left = left.as_ref().is_ok_and(|m| m.file_type().is_char_device());
        let want = matches!(name, "x" | "z" | "w");
        assert_eq!(whiteout_left, want, "{name}: whiteout left in the upper");
        if !want {
            assert!(left.is_err(), "{name}: nothing left in the upper");
        }
    }
    assert!(names(&ovl, d.id).is_empty());
}

#[test]
fn write_cache_flags_allow_write_back_through_any_writable_file() {
    use super::file::write_cache_flags;
    let (f, cached) = write_cache_flags(libc::O_WRONLY | libc::O_APPEND, true);
    assert_eq!(f, libc::O_RDWR | libc::O_NOATIME);
    assert!(cached);
    let (f, cached) = write_cache_flags(libc::O_RDWR | libc::O_APPEND | libc::O_SYNC, true);
    assert_eq!(f, libc::O_RDWR | libc::O_SYNC);
    assert!(cached);
    // Short of space: direct I/O, but still no O_APPEND (another open may be cached).
    let (f, cached) = write_cache_flags(libc::O_WRONLY | libc::O_APPEND, false);
    assert_eq!(f, libc::O_WRONLY);
    assert!(!cached);
    // Fallbacks for files that refuse: no O_NOATIME, then direct, then as asked.
    let (rw, wo, ap, na) = (
        libc::O_RDWR,
        libc::O_WRONLY,
        libc::O_APPEND,
        libc::O_NOATIME,
    );
    assert_eq!(
        super::file::write_cache_opens(wo | ap, true),
        [(rw | na, true), (rw, true), (wo, false), (wo | ap, false)]
    );
    assert_eq!(super::file::write_cache_opens(rw, true), [(rw, true)]);
    assert_eq!(super::file::write_cache_opens(rw, false), [(rw, false)]);
}

#[test]
fn with_the_write_cache_an_append_open_writes_at_the_offsets_it_is_given() {
    let f = Fixture::new(1);
    f.write("l0/f", "0123456789");
    let ovl = f.overlay(1);
    ovl.set_write_cache();
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let fh = ovl
        .open(&ctx(), n.id, libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    let h = ovl.file_handle(fh).unwrap();
    let fl = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&*h.fd()), libc::F_GETFL) };
    assert_eq!(fl & libc::O_APPEND, 0, "real file opened with O_APPEND");
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR, "real file not readable");
    // A write-back of the page at offset 0 overwrites it, where O_APPEND would append.
    ovl.write(&ctx(), fh, 2, b"ab", true).unwrap();
    let mut buf = [0u8; 16];
    let n_read = ovl.read_into(fh, 0, &mut buf, None).unwrap();
    assert_eq!(&buf[..n_read], b"01ab456789");
    ovl.release(fh);
    assert_eq!(std::fs::read(f.p("upper/f")).unwrap(), b"01ab456789");
}

#[test]
fn replies_carry_names_only_as_configured_and_lookups_then_warm_the_listing() {
    use super::statahead::{ListAttrs, Mode, NAMES_ONLY_FROM};
    let f = Fixture::new(1);
    for i in 0..100 {
        f.write(&format!("l0/d/f{i}"), "data");
    }
    for listattrs in [ListAttrs::On, ListAttrs::Off, ListAttrs::Auto] {
        let ovl = f.overlay_with(
            1,
            Config {
                fsync: false,
                listattrs,
                // No helper threads: the statahead tests count those of this process.
                // The listing's state still says when they would have been handed it.
                statahead: Mode::Off,
                ..Config::default()
            },
        );
        let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
        let lines: Vec<_> = ovl.read_dir(d.id, 0).unwrap().collect();
        assert_eq!(lines.len(), 102, "{listattrs:?}: 100 names and the dots");
        let attrs = ovl.listed_lookups(d.id).unwrap().with_attributes(&lines, 0);
        // A directory this small keeps its attributes under `auto`, cold or not.
        const { assert!(100 < NAMES_ONLY_FROM) };
        assert_eq!(attrs, listattrs != ListAttrs::Off, "{listattrs:?}");
        let m = d.merged().expect("the listing read");
        for (_, l) in lines.iter().skip(2) {
            let (n, a) = ovl.lookup(d.id, &l.name).unwrap();
            assert_eq!((a.ino, a.mode & libc::S_IFMT), (l.ino, l.kind));
            assert_eq!(a.size, 4);
            ovl.forget(n.id, 1);
        }
        assert_eq!(
            m.warming(),
            listattrs == ListAttrs::Off,
            "{listattrs:?}: lookups after a names-only reply warm the rest of the listing"
        );
    }
}

/// A copy moved into an upper-only directory marks it impure; once the copy is gone, the
/// directory's next listing drops the mark, but not on a mount made `ro`.
#[test]
fn impure_mark_dropped_by_the_listing_after_the_last_copy_goes_unless_read_only() {
    for read_only in [false, true] {
        let f = Fixture::new(1);
        f.write("l0/f", "F");
        std::fs::create_dir_all(f.p("upper/pure")).unwrap();
        let ovl = f.overlay_with(
            1,
            Config {
                fsync: false,
                read_only,
                ..Config::default()
            },
        );
        let mark = format!("{}impure", ovl.layers.xattr_prefix);
        let marked = || {
            let d = std::fs::File::open(f.p("upper/pure")).unwrap();
            crate::sys::xattr::get_on_dir(d.as_fd(), &mark).is_ok()
        };
        let (pure, _) = ovl.lookup(ROOT_ID, OsStr::new("pure")).unwrap();
        let (file, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
        assert!(
            !marked(),
            "ro={read_only}: an upper-only directory starts pure"
        );
        ovl.rename(ROOT_ID, OsStr::new("f"), pure.id, OsStr::new("f"), 0)
            .unwrap();
        assert!(marked(), "ro={read_only}: a copy moved in marks it");
        // Its listing reports the copy under the lower inode number it keeps.
        let listed: Vec<u64> = ovl
            .read_dir(pure.id, 2)
            .unwrap()
            .map(|(_, e)| e.ino)
            .collect();
        assert_eq!(listed, vec![file.ino()], "ro={read_only}");
        ovl.unlink(pure.id, OsStr::new("f")).unwrap();
        assert_eq!(names(&ovl, pure.id), Vec::<String>::new());
        assert_eq!(marked(), read_only, "ro={read_only}: after the listing");
    }
}

/// A listing built while some of its names are live shows those objects with the number
/// the kernel has already seen, even when the layer now holds another inode there: found
/// by walking the mount's live names (a listing with more entries than those) and by
/// probing them name by name (a listing with fewer).
#[test]
fn listings_show_live_objects_under_the_number_already_shown() {
    let f = Fixture::new(1);
    for i in 0..40 {
        f.write(&format!("l0/big/f{i}"), "x");
    }
    f.write("l0/small/a", "x");
    let ovl = f.overlay(1);
    let lookup = |dir: u64, name: &str| ovl.lookup(dir, OsStr::new(name)).unwrap();
    let (big, _) = lookup(ROOT_ID, "big");
    let (small, _) = lookup(ROOT_ID, "small");
    let (_, f7) = lookup(big.id, "f7");
    let (_, f8) = lookup(big.id, "f8");
    let (_, a) = lookup(small.id, "a");
    // Each of these names now holds a new inode, made while the old one still existed.
    for rel in ["l0/big/f7", "l0/small/a"] {
        f.write(&format!("{rel}.new"), "y");
        std::fs::rename(f.p(&format!("{rel}.new")), f.p(rel)).unwrap();
    }
    let listed = |dir: u64, name: &str| {
        ovl.read_dir(dir, 2)
            .unwrap()
            .find(|(_, e)| &*e.name == OsStr::new(name))
            .map(|(_, e)| e.ino)
            .unwrap()
    };
    assert_eq!(listed(big.id, "f7"), f7.ino, "walked");
    assert_eq!(listed(big.id, "f8"), f8.ino, "unchanged");
    assert_eq!(listed(small.id, "a"), a.ino, "probed");
    let new_ino = std::fs::metadata(f.p("l0/small/a")).unwrap().ino();
    assert_ne!(new_ino, a.ino, "the layer's own number is another");
}

/// With the kernel's write cache, the disk writes of an upper file start as each 8 MiB of
/// it is written back, not at the fsync; a file that stays under 8 MiB is left to the
/// upper filesystem's own write-back.
///
/// A `sync` by another process while the test runs writes back what it expects to stay
/// dirty (seen once in a session whose test suites ran beside it): such a run is tried
/// again, up to three times in all.
#[test]
fn written_back_data_starts_its_disk_writes_chunk_by_chunk() {
    let f = Fixture::new(1);
    let upper = std::fs::File::open(f.p("upper")).unwrap();
    if fs::fstatfs(upper.as_fd()).unwrap().f_type == libc::TMPFS_MAGIC {
        eprintln!("SKIPPED: the upper layer is on tmpfs, which has no disk writes to start");
        return;
    }
    let ovl = f.overlay(1);
    ovl.set_write_cache();
    let mut failures = Vec::new();
    for attempt in 0..3 {
        let name = format!("big{attempt}");
        f.write(&format!("upper/{name}"), "");
        match chunked_write_back(&ovl, &name) {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("three runs failed: {failures:?}");
}

/// One run of `written_back_data_starts_its_disk_writes_chunk_by_chunk` on upper file
/// `name`: what differs from what it expects, if anything.
fn chunked_write_back(ovl: &Overlay, name: &str) -> Result<(), String> {
    let (node, _) = ovl.lookup(ROOT_ID, OsStr::new(name)).unwrap();
    let fh = ovl.open(&ctx(), node.id, libc::O_RDWR).unwrap();
    let fd = ovl.file_handle(fh).unwrap().fd();
    let dirty = |off: u64, len: u64| fs::dirty_pages(fd.as_fd(), off, len).unwrap();
    let (chunk, piece) = (super::copy_up::WRITEBACK_CHUNK as u64, 1u64 << 20);
    let data = vec![7u8; piece as usize];
    let check = |what: &str, got: u64, want: u64| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: {got} dirty pages, expected {want}"))
        }
    };
    // Write-backs come in pieces of up to 1 MiB: a chunk short of its last piece stays
    // dirty.
    let mut off = 0;
    while off + piece < chunk {
        ovl.write(&ctx(), fh, off, &data, true).unwrap();
        off += piece;
    }
    let res = check("under one chunk", dirty(0, chunk), (chunk - piece) / 4096)
        .and_then(|()| {
            // The piece that completes the first chunk, then one into the second.
            ovl.write(&ctx(), fh, off, &data, true).unwrap();
            check(
                "the completed chunk's disk writes started",
                dirty(0, chunk),
                0,
            )
        })
        .and_then(|()| {
            ovl.write(&ctx(), fh, chunk, &data, true).unwrap();
            check("the next chunk waits", dirty(chunk, chunk), piece / 4096)
        });
    ovl.release(fh);
    res
}

/// Soak, 2026-12-04: a hard-linked upper file, forgotten by the kernel, then opened and
/// unlinked under one name: a lookup of its other name must find the same node, which
/// the open file holds, not make a second one for the same file, whose attributes the
/// kernel would keep stale while writes went through the first (`stat` of the other name
/// showed the size from before the write).
#[test]
fn the_other_name_of_an_open_unlinked_file_finds_its_node() {
    let f = Fixture::new(1);
    f.write("l0/g", "lower-content\n");
    let ovl = f.overlay(1);
    let (g, _) = ovl.lookup(ROOT_ID, OsStr::new("g")).unwrap();
    ovl.link(&ctx(), g.id, ROOT_ID, OsStr::new("h")).unwrap();
    // The kernel forgets both names' node.
    ovl.forget(g.id, 2);
    let (h, _) = ovl.lookup(ROOT_ID, OsStr::new("h")).unwrap();
    let fh = ovl.open(&ctx(), h.id, libc::O_RDWR).unwrap();
    ovl.unlink(ROOT_ID, OsStr::new("h")).unwrap();
    let (g2, before) = ovl.lookup(ROOT_ID, OsStr::new("g")).unwrap();
    assert_eq!(g2.id, h.id, "the name left leads to the open file's node");
    ovl.write(&ctx(), fh, before.size, b"more", false).unwrap();
    assert_eq!(ovl.getattr(g2.id, None).unwrap().size, before.size + 4);
    ovl.release(fh);
    // A name of a file whose other, removed name nothing holds open gets a node as usual.
    ovl.forget(h.id, 2);
    let (g3, _) = ovl.lookup(ROOT_ID, OsStr::new("g")).unwrap();
    assert_eq!(ovl.getattr(g3.id, None).unwrap().size, before.size + 4);
}

/// A read told of waits takes what the page cache holds without waiting, says once that
/// it will wait before the rest comes from the disk, and reads what a plain read reads.
#[test]
fn a_read_that_must_wait_for_the_disk_says_so_once_and_reads_the_same() {
    const MIB: usize = 1 << 20;
    let f = Fixture::new(1);
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.p("l0/big"), &data).unwrap();
    let file = std::fs::File::open(f.p("l0/big")).unwrap();
    file.sync_all().unwrap();
    // Clean pages go: the first half stays cached, the second must come from the disk.
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: an advice on an open fd of ours; no memory is passed.
    let dropped = unsafe { libc::posix_fadvise(raw, 2 * MIB as i64, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(dropped, 0);
    // Whether this filesystem can tell (tmpfs never waits): probe the last page, where
    // any readahead the probe starts is past what the read below first waits for.
    let waits = fs::pread_cached(file.as_fd(), &mut [0u8; 4096], (4 * MIB - 4096) as u64)
        == Err(Errno::EAGAIN);
    if !waits {
        eprintln!(
            "NOTE: /tmp's filesystem serves every read from memory; only the bytes are checked"
        );
    }
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("big")).unwrap();
    let fh = ovl.open(&ctx(), n.id, libc::O_RDONLY).unwrap();
    let mut buf = vec![0u8; 4 * MIB + 4096];
    for (round, expect_calls) in [(1, usize::from(waits)), (2, 0)] {
        let mut calls = 0;
        let mut said = || calls += 1;
        let got = ovl.read_into(fh, 0, &mut buf, Some(&mut said)).unwrap();
        assert_eq!(got, data.len(), "round {round}");
        assert!(buf[..got] == data[..], "round {round}: bytes differ");
        assert_eq!(calls, expect_calls, "round {round}: calls before waiting");
    }
    let mut calls = 0;
    let mut said = || calls += 1;
    assert_eq!(
        ovl.read_into(fh, 4 * MIB as u64, &mut buf, Some(&mut said)),
        Ok(0)
    );
    assert_eq!(calls, 0, "a read at the end waits for nothing");
    ovl.release(fh);
}

#[test]
fn a_leftover_deeper_than_the_levels_kept_open_is_cleared_from_the_work_dir() {
    let f = Fixture::new(1);
    // 300 levels (past the 64 kept open at once), each with a whiteout beside the next.
    let mut dir = f.p("work/work/#ovlfuse.left");
    std::fs::create_dir_all(&dir).unwrap();
    let top = std::fs::File::open(&dir).unwrap();
    let mut at = top;
    for _ in 0..300 {
        fs::mknodat(at.as_fd(), OsStr::new("wh"), libc::S_IFCHR, 0).unwrap();
        fs::mkdirat(at.as_fd(), OsStr::new("x"), 0o755).unwrap();
        dir.push("x");
        at = std::fs::File::open(&dir).unwrap();
    }
    drop(at);
    let _ovl = f.overlay(1);
    // Only the shared whiteout that the set-up makes stays.
    let left = f.work_leftovers();
    assert!(left.is_empty(), "left in the work directory: {left:?}");
}

/// Both ways of building a file's copy (an O_TMPFILE file linked into place, or a named
/// file renamed there, where the work directory makes no O_TMPFILE files) give the same
/// copy, and leave nothing in the work directory.
#[test]
fn a_copy_built_unnamed_or_named_keeps_data_owner_mode_times_and_xattrs() {
    use std::os::unix::fs::PermissionsExt;
    for unnamed in [true, false] {
        let f = Fixture::new(1);
        f.write("l0/d/f", "lower data");
        let lf = f.p("l0/d/f");
        std::fs::set_permissions(&lf, std::fs::Permissions::from_mode(0o2640)).unwrap();
        std::os::unix::fs::lchown(&lf, Some(1234), Some(5678)).unwrap();
        let lfd = fs::open_path(&std::ffi::CString::new(lf.to_str().unwrap()).unwrap(), 0).unwrap();
        crate::sys::xattr::set(lfd.as_fd(), OsStr::new(""), "user.kept", b"v1", 0).unwrap();
        let old = libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        };
        fs::utimens_fd(lfd.as_fd(), Some(old), Some(old)).unwrap();
        let ovl = f.overlay(1);
        if !unnamed {
            ovl.layers.work_lacks_tmpfiles(Errno::EOPNOTSUPP);
        }
        let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
        let (n, _) = ovl.lookup(d.id, OsStr::new("f")).unwrap();
        let fh = ovl.open(&ctx(), n.id, libc::O_RDWR).unwrap();
        ovl.release(fh);

        let up = std::fs::symlink_metadata(f.p("upper/d/f")).unwrap();
        assert_eq!(std::fs::read(f.p("upper/d/f")).unwrap(), b"lower data");
        assert_eq!(up.mode() & 0o7777, 0o2640, "unnamed: {unnamed}");
        assert_eq!((up.uid(), up.gid()), (1234, 5678), "unnamed: {unnamed}");
        assert_eq!((up.mtime(), up.mtime_nsec()), (old.tv_sec, old.tv_nsec));
        assert_eq!((up.atime(), up.atime_nsec()), (old.tv_sec, old.tv_nsec));
        assert_eq!(up.nlink(), 1, "unnamed: {unnamed}");
        let ufd = fs::open_path(
            &std::ffi::CString::new(f.p("upper/d/f").to_str().unwrap()).unwrap(),
            0,
        )
        .unwrap();
        let get = |attr: &str| crate::sys::xattr::get_vec(ufd.as_fd(), OsStr::new(""), attr);
        assert_eq!(get("user.kept").unwrap(), b"v1", "unnamed: {unnamed}");
        // The kernel's record where the daemon may open file handles, else our own.
        let kind = if crate::sys::can_open_file_handles() {
            super::namei::KERNEL_ORIGIN_XATTR
        } else {
            super::namei::ORIGIN_XATTR
        };
        let origin = format!("{}{kind}", ovl.layers.xattr_prefix);
        assert!(
            get(&origin).is_ok_and(|v| !v.is_empty()),
            "the copy records its origin"
        );
        // (Beside the whiteout kept there for linking.)
        let left: Vec<_> = std::fs::read_dir(f.p("work/work"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with("#ovlfuse"))
            .collect();
        assert!(
            left.is_empty(),
            "unnamed: {unnamed}: work dir holds {left:?}"
        );
    }
}
