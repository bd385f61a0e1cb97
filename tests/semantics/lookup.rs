//! Name resolution through the layers: whiteouts, opaque directories, lookup errors.

use super::*;

#[test]
fn lookup_precedence_upper_then_lower0_then_lower1() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-precedence",
        &[
            &[
                E::File("x", b"lower0"),
                E::File("y", b"lower0"),
                E::File("d/a", b"l0"),
                E::Symlink("s", "lower0"),
            ],
            &[
                E::File("x", b"lower1"),
                E::File("y", b"lower1"),
                E::File("z", b"lower1"),
                E::File("d/a", b"l1"),
                E::File("d/b", b"l1"),
                E::Symlink("s", "lower1"),
            ],
        ],
        &[
            E::File("x", b"upper"),
            E::File("d/c", b"up"),
            E::Mode("d", 0o700),
        ],
    );
    for root in [t.km(), t.fm()] {
        assert_eq!(read_str(&root.join("x")), "upper", "{root:?}: upper wins");
        assert_eq!(
            read_str(&root.join("y")),
            "lower0",
            "{root:?}: lower0 wins over lower1"
        );
        assert_eq!(read_str(&root.join("z")), "lower1");
        assert_eq!(read_str(&root.join("d/a")), "l0");
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["a".into(), "b".into(), "c".into()]),
            "{root:?}: merged d"
        );
        assert_eq!(
            fs::read_link(root.join("s")).ok(),
            Some(PathBuf::from("lower0"))
        );
        assert_eq!(
            fs::metadata(root.join("d")).map(|m| m.mode() & 0o7777).ok(),
            Some(0o700),
            "{root:?}: dir attrs come from upper"
        );
    }
    t.both("lookup of a missing name", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("nope")))
    });
    t.both("lookup through a file", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("x/sub")))
    });
    t.finish(true);
}

#[test]
fn whiteouts_hide_lower_entries() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-whiteout",
        &[
            &[
                E::Whiteout("gone1"),
                E::File("d/keep", b"k"),
                E::Whiteout("d/gone2"),
            ],
            &[
                E::File("gone0", b"x"),
                E::File("gone1", b"x"),
                E::File("d/gone2", b"x"),
                E::File("dir/inner", b"x"),
                E::File("kept", b"k"),
            ],
        ],
        &[E::Whiteout("gone0"), E::Whiteout("dir")],
    );
    for root in [t.km(), t.fm()] {
        for n in ["gone0", "gone1", "d/gone2", "dir", "dir/inner"] {
            let r = fs::symlink_metadata(root.join(n));
            assert!(
                matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOENT)),
                "{root:?}: {n} must be hidden by a whiteout (ENOENT), got {}",
                outcome(&r.map(|m| m.mode()))
            );
        }
        assert_eq!(
            names_or_err(root),
            Ok(vec!["d".into(), "kept".into()]),
            "{root:?}: root listing"
        );
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["keep".into()]),
            "{root:?}: d listing"
        );
    }
    t.both("create over an upper whiteout", |r| {
        outcome_unit(&fs::write(r.join("gone0"), b"new"))
    });
    t.both("mkdir over an upper whiteout of a dir", |r| {
        outcome_unit(&fs::create_dir(r.join("dir")))
    });
    t.both("list the new dir", |r| names_or_err(&r.join("dir")));
    t.finish(true);
}

#[test]
fn opaque_directories_hide_lower_contents() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-opaque",
        &[
            &[
                E::Opaque("o0"),
                E::File("o0/mine", b"m"),
                E::File("u/l0", b"x"),
            ],
            &[
                E::File("o0/hidden", b"h"),
                E::File("u/hidden", b"h"),
                E::File("u/deep/er", b"h"),
                E::File("plain/l1", b"p"),
            ],
        ],
        &[
            E::Opaque("u"),
            E::File("u/new", b"n"),
            E::File("plain/up", b"u"),
        ],
    );
    for root in [t.km(), t.fm()] {
        assert_eq!(
            names_or_err(&root.join("u")),
            Ok(vec!["new".into()]),
            "{root:?}: upper opaque dir"
        );
        assert_eq!(
            names_or_err(&root.join("o0")),
            Ok(vec!["mine".into()]),
            "{root:?}: lower0 opaque dir"
        );
        assert_eq!(
            names_or_err(&root.join("plain")),
            Ok(vec!["l1".into(), "up".into()]),
            "{root:?}: non-opaque dir merges"
        );
        expect_errno(
            fs::symlink_metadata(root.join("u/hidden")),
            libc::ENOENT,
            "lookup below an opaque dir",
        );
        expect_errno(
            fs::symlink_metadata(root.join("u/deep/er")),
            libc::ENOENT,
            "lookup below an opaque dir",
        );
    }
    t.finish(true);
}

#[test]
fn xattr_whiteouts_in_lower_match_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin_over_xattr_whiteouts("sem-xattr-whiteout");
    for root in [t.km(), t.fm()] {
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["g".into(), "mine".into()]),
            "{root:?}: d"
        );
        expect_errno(
            fs::symlink_metadata(root.join("d/f")),
            libc::ENOENT,
            "xattr whiteout",
        );
    }
    t.finish(true);
}

/// A documented difference (README): an empty file tagged `overlay.whiteout` in a directory
/// not marked `opaque=x` is no whiteout by overlayfs.rst, and ovlfuse shows it. The kernel
/// (6.18) lists it too, but its lookup answers ENOENT. Should a kernel agree with ovlfuse,
/// this test fails and the README entry goes.
#[test]
fn a_whiteout_xattr_outside_a_marked_directory_is_a_plain_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-xattr-whiteout-unmarked",
        &[
            &[E::File("d/a", b"a")],
            &[
                E::File("d/tagged", b""),
                E::Xattr("d/tagged", "trusted.overlay.whiteout", b"y"),
            ],
        ],
        &[],
    );
    for root in [t.km(), t.fm()] {
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["a".into(), "tagged".into()]),
            "{root:?}: d"
        );
    }
    assert!(fs::symlink_metadata(t.fm().join("d/tagged")).is_ok_and(|m| m.len() == 0));
    expect_errno(
        fs::symlink_metadata(t.km().join("d/tagged")),
        libc::ENOENT,
        "kernel lookup of a tagged file in an unmarked directory",
    );
    t.finish_apart(true, |_, _| {});
}

/// Kernel >= 6.7: a zero-size file with trusted.overlay.whiteout inside a directory with
/// trusted.overlay.opaque=x is a whiteout; the "x" directory itself is not opaque. Here
/// `d/f` in the upper lower layer hides the `d/f` below it.
fn twin_over_xattr_whiteouts(name: &str) -> Twin {
    twin(
        name,
        &[
            &[
                E::Dir("d"),
                E::Xattr("d", "trusted.overlay.opaque", b"x"),
                E::File("d/f", b""),
                E::Xattr("d/f", "trusted.overlay.whiteout", b"y"),
                E::File("d/mine", b"m"),
            ],
            &[E::File("d/f", b"hidden"), E::File("d/g", b"g")],
        ],
        &[],
    )
}

/// A directory emptied through the mount, whose lower part still holds an xattr whiteout,
/// lists empty and can be removed, and the kernel reads the upper that leaves. The kernel
/// overlay (6.18) lists it empty too but refuses the rmdir with ENOTEMPTY, where it removes
/// the same directory over a char 0/0 whiteout (README, "Differences").
#[test]
fn directory_emptied_over_xattr_whiteouts_can_be_removed() {
    if !fuse_available() {
        return;
    }
    let t = twin_over_xattr_whiteouts("sem-xattr-whiteout-rmdir");
    for name in ["d/g", "d/mine"] {
        t.both(&format!("unlink {name}"), |m| {
            fs::remove_file(m.join(name)).map_err(|e| e.raw_os_error())
        });
    }
    assert_eq!(
        t.both_ret("listing of the emptied d", |m| names_or_err(&m.join("d"))),
        Ok(vec![])
    );
    expect_errno(
        fs::remove_dir(t.km().join("d")),
        libc::ENOTEMPTY,
        "kernel rmdir of d (if the kernel now removes it, drop the README difference)",
    );
    fs::remove_dir(t.fm().join("d")).expect("ovlfuse rmdir of the emptied d");
    expect_errno(
        fs::symlink_metadata(t.fm().join("d")),
        libc::ENOENT,
        "d after rmdir",
    );
    assert!(
        is_whiteout(&t.f.upper.join("d")),
        "no whiteout for d in the upper"
    );
    t.finish_apart(false, |_, f| {
        let kg = mount_kernel(f);
        expect_errno(
            fs::symlink_metadata(f.mnt.join("d")),
            libc::ENOENT,
            "d through the kernel on ovlfuse's upper",
        );
        assert_eq!(names_or_err(&f.mnt), Ok(vec![]), "root through the kernel");
        kg.unmount();
    });
}

#[test]
fn oci_whiteouts_in_lower_are_honoured() {
    if !fuse_available() {
        return;
    }
    // The kernel does not read these; assert the expected view directly.
    let sc = Scratch::new("sem-oci-whiteouts");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File(".wh.f", b""),
            E::File("d/.wh..wh..opq", b""),
            E::File("d/new", b"n"),
            E::File("e/.wh.x", b""),
            E::File("e/mine", b"m"),
            E::File(".wh.gone_dir", b""),
        ],
    );
    build(
        &st.lowers[1],
        &[
            E::File("f", b"hidden"),
            E::File("g", b"g"),
            E::File("d/old", b"old"),
            E::File("d/sub/deep", b"deep"),
            E::File("e/x", b"x"),
            E::File("e/y", b"y"),
            E::File("gone_dir/z", b"z"),
        ],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    assert_eq!(
        names_or_err(m),
        Ok(vec!["d".into(), "e".into(), "g".into()]),
        "root: .wh.f hides f, .wh.gone_dir hides a dir, .wh.* names are not shown"
    );
    assert_eq!(
        names_or_err(&m.join("d")),
        Ok(vec!["new".into()]),
        "d has .wh..wh..opq: lower1's d/old and d/sub are hidden"
    );
    assert_eq!(
        names_or_err(&m.join("e")),
        Ok(vec!["mine".into(), "y".into()]),
        "e/.wh.x hides e/x"
    );
    expect_errno(
        fs::symlink_metadata(m.join("f")),
        libc::ENOENT,
        "f whited out by .wh.f",
    );
    expect_errno(
        fs::symlink_metadata(m.join(".wh.f")),
        libc::ENOENT,
        "the .wh.f marker itself",
    );
    expect_errno(
        fs::symlink_metadata(m.join("d/old")),
        libc::ENOENT,
        "d/old below an OCI-opaque dir",
    );
    expect_errno(
        fs::symlink_metadata(m.join("d/.wh..wh..opq")),
        libc::ENOENT,
        "the opaque marker itself",
    );
    expect_errno(
        fs::symlink_metadata(m.join("gone_dir/z")),
        libc::ENOENT,
        "gone_dir/z",
    );
    // Creating a name hidden by an OCI whiteout works and shows only the new entry.
    ok(
        fs::write(m.join("f"), b"fresh"),
        "create f over an OCI whiteout",
    );
    assert_eq!(read_str(&m.join("f")), "fresh");
    ok(
        fs::create_dir(m.join("gone_dir")),
        "mkdir over an OCI whiteout of a dir",
    );
    assert_eq!(
        names_or_err(&m.join("gone_dir")),
        Ok(vec![]),
        "a new dir over a whiteout must be empty"
    );
    g.unmount();
    lc.verify();
}

#[test]
fn user_overlay_opaque_in_lower_is_honoured() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-user-opaque");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::Dir("d"),
            E::Xattr("d", "user.overlay.opaque", b"y"),
            E::File("d/mine", b"m"),
        ],
    );
    build(
        &st.lowers[1],
        &[E::File("d/hidden", b"h"), E::File("other", b"o")],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(
        names_or_err(&st.mnt.join("d")),
        Ok(vec!["mine".into()]),
        "user.overlay.opaque=y hides the lower contents"
    );
    assert_eq!(names_or_err(&st.mnt), Ok(vec!["d".into(), "other".into()]));
    g.unmount();
    lc.verify();
}
