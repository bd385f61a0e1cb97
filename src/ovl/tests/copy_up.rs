//! Copy-up: what a copy keeps, O_TRUNC without the data, and the work directory left clean.

use super::*;

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
            crate::ovl::namei::KERNEL_ORIGIN_XATTR
        } else {
            crate::ovl::namei::ORIGIN_XATTR
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
