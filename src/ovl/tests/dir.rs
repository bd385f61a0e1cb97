//! Directory operations: unlink, rmdir and mkdir over lower directories, rename with and
//! without redirects, creates over whiteouts, and where whiteouts are needed.

use super::*;

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
