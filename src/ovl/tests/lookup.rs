//! Lookup through the layers: precedence, whiteouts and OCI markers, hidden private
//! xattrs, name length, refused layer sets, read-only overlays, lookups from listings.

use super::*;

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
