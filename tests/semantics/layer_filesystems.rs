//! Layers on other file systems: uppers that lack xattrs or sit on another file system,
//! read-only lowers, colliding inode numbers, a full upper.

use super::*;

fn cross_fs_ops(r: &Path) -> Vec<String> {
    vec![
        outcome_unit(&write_at(&r.join("f"), 2, b"XY")),
        outcome_unit(&fs::set_permissions(
            r.join("g"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&lsetxattr(&r.join("d/h"), "user.k", b"v")),
        outcome_unit(&fs::remove_file(r.join("d/i"))),
        outcome_unit(&fs::write(r.join("d/new"), b"new")),
        outcome_unit(&fs::hard_link(r.join("f"), r.join("flink"))),
        outcome_unit(&fs::rename(r.join("g"), r.join("d/g"))),
        read_str(&r.join("f")),
    ]
}

/// A kernel stack ("k") and an ovlfuse stack ("f"), each with one lower layer built from
/// `lowers` and its upper and work directories on a filesystem of their own, mounted by
/// `mount` at `<who>/<fs>`.
fn stacks_with_upper_on(
    sc: &Scratch,
    lowers: &[E],
    fs_name: &str,
    mount: fn(&Path) -> MountGuard,
) -> (Vec<Stack>, Vec<MountGuard>) {
    let mut stacks = Vec::new();
    let mut guards = Vec::new();
    for who in ["k", "f"] {
        let l = sc.dir(who).join("lower0");
        fs::create_dir(&l).unwrap();
        build(&l, lowers);
        let t = sc.dir(&format!("{who}/{fs_name}"));
        guards.push(mount(&t));
        let st = Stack {
            lowers: vec![l],
            upper: t.join("upper"),
            work: t.join("work"),
            mnt: sc.dir(&format!("{who}/mnt")),
        };
        fs::create_dir(&st.upper).unwrap();
        fs::create_dir(&st.work).unwrap();
        stacks.push(st);
    }
    (stacks, guards)
}

#[test]
fn upper_on_a_different_file_system_than_the_lowers() {
    if !fuse_available() {
        return;
    }
    // Lower on ext4 (/tmp), upper and work on a tmpfs: copy-up crosses file systems.
    let sc = Scratch::new("sem-cross-fs");
    let lowers: Vec<E> = vec![
        E::File("f", b"lower f"),
        E::File("g", b"g"),
        E::File("d/h", b"h"),
        E::File("d/i", b"i"),
        E::Xattr("f", "user.a", b"1"),
    ];
    let (stacks, guards) = stacks_with_upper_on(&sc, &lowers, "tmpfs", mount_tmpfs);
    let lc = LowerCheck::new(&[stacks[0].lowers[0].clone(), stacks[1].lowers[0].clone()]);
    let kg = mount_kernel(&stacks[0]);
    let fg = mount_ovlfuse(&stacks[1], &[]);
    let ino_f = fs::symlink_metadata(stacks[1].mnt.join("f")).unwrap().ino();
    let kr = cross_fs_ops(&stacks[0].mnt);
    let fr = cross_fs_ops(&stacks[1].mnt);
    assert_eq!(
        fr, kr,
        "operations with the upper on another file system: ovlfuse (left) vs kernel (right)"
    );
    assert_eq!(
        fs::symlink_metadata(stacks[1].mnt.join("f")).unwrap().ino(),
        ino_f,
        "ovlfuse: st_ino changed across a cross-fs copy-up"
    );
    assert_same_snapshots(
        "merged views, upper on tmpfs",
        "kernel",
        &snapshot(&stacks[0].mnt, XattrSel::User),
        "ovlfuse",
        &snapshot(&stacks[1].mnt, XattrSel::User),
    );
    fg.unmount();
    kg.unmount();
    assert_same_snapshots(
        "upper directories on tmpfs",
        "kernel",
        &normalized_upper(&stacks[0].upper),
        "ovlfuse",
        &normalized_upper(&stacks[1].upper),
    );
    lc.verify();
    drop(guards);
}

/// A lower file on tmpfs whose xattr names take 73 KiB: more than listxattr(2) returns
/// (upper on tmpfs too).
/// The kernel overlay copies it up (its listing is in-kernel); ovlfuse cannot list the
/// names, so the copy-up fails with E2BIG and nothing changes (README, "Differences").
/// Checked against the kernel so that a change on either side shows.
#[test]
fn a_lower_file_with_more_xattr_names_than_listxattr_returns_is_not_copied_up() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-xattr-names");
    let mut guards = Vec::new();
    let mut results = Vec::new();
    for side in ["kernel", "ovlfuse"] {
        // The upper on tmpfs as well: ext4 holds a few KiB of xattrs, and the kernel's
        // copy-up to it fails with ENOSPC.
        let mut st = Stack::new_at(&sc.dir(side), 1);
        guards.push(mount_tmpfs(&st.lowers[0]));
        let upfs = sc.dir(&format!("{side}-upperfs"));
        guards.push(mount_tmpfs(&upfs));
        st.move_upper_to(&upfs);
        fs::write(st.lowers[0].join("f"), b"f").unwrap();
        for i in 0..300 {
            let name = format!("user.{i:03}{}", "n".repeat(240));
            lsetxattr(&st.lowers[0].join("f"), &name, b"1").unwrap();
        }
        let g = match side {
            "kernel" => mount_kernel(&st),
            _ => mount_ovlfuse(&st, &[]),
        };
        let chmod = fs::set_permissions(st.mnt.join("f"), fs::Permissions::from_mode(0o600));
        let mode = fs::symlink_metadata(st.mnt.join("f")).unwrap().mode() & 0o777;
        results.push((
            chmod.map_err(|e| e.raw_os_error()),
            mode,
            st.upper.join("f").exists(),
        ));
        g.unmount();
    }
    assert_eq!(
        results[0],
        (Ok(()), 0o600, true),
        "setup: the kernel overlay should copy the file up"
    );
    assert_eq!(
        results[1],
        (Err(Some(libc::E2BIG)), 0o644, false),
        "ovlfuse: E2BIG, the mode unchanged, no copy in the upper"
    );
    drop(guards);
}

/// Whiteouts, an opaque directory, a merged-directory rename and attributes in the
/// overlay's own xattr namespace, for [`userxattr_as_root_writes_what_a_userxattr_kernel_writes`].
fn userxattr_ops(r: &Path) -> Vec<String> {
    vec![
        outcome_unit(&fs::remove_file(r.join("d/x"))),
        outcome_unit(&fs::remove_dir_all(r.join("tree"))),
        outcome_unit(&fs::create_dir(r.join("tree"))),
        outcome_unit(&fs::write(r.join("tree/n"), b"n")),
        outcome_unit(&fs::rename(r.join("moved"), r.join("moved2"))),
        outcome_unit(&lsetxattr(&r.join("f"), "user.overlay.mine", b"1")),
        outcome(&lgetxattr(&r.join("f"), "user.overlay.mine")),
        outcome_unit(&lsetxattr(&r.join("f"), "trusted.overlay.t", b"2")),
        // In the upper filesystem's order, which the two uppers need not share.
        outcome(&llistxattr(&r.join("f")).map(|mut v| {
            v.sort();
            v
        })),
        format!("{:?}", names_or_err(r)),
    ]
}

/// An upper's overlay xattrs, less those that only say where a copy came from (each
/// overlay writes its own form) and the kernel's mount uuid.
fn upper_without_origins(upper: &Path) -> BTreeMap<PathBuf, Node> {
    upper_snapshot(upper, |k| !k.contains(".origin") && !k.ends_with(".uuid"))
}

#[test]
fn userxattr_as_root_writes_what_a_userxattr_kernel_writes() {
    if !fuse_available() {
        return;
    }
    // As root, `userxattr` makes the kernel write user.overlay.* (so that a rootless mount
    // can take the upper over) and turns its redirects off; ovlfuse must write the same.
    let sc = Scratch::new("sem-userxattr");
    let lower: &[E] = &[
        E::File("f", b"f"),
        E::File("d/x", b"x"),
        E::File("tree/a", b"a"),
        E::File("moved/c", b"c"),
    ];
    let k = Stack::new_at(&sc.dir("k"), 1);
    let f = Stack::new_at(&sc.dir("f"), 1);
    build(&k.lowers[0], lower);
    build(&f.lowers[0], lower);
    let lc = LowerCheck::new(&[k.lowers[0].clone(), f.lowers[0].clone()]);
    let kg = mount_kernel_plain(&k, "userxattr");
    let fg = mount_ovlfuse(&f, &["userxattr"]);
    assert_eq!(
        userxattr_ops(&f.mnt),
        userxattr_ops(&k.mnt),
        "with userxattr: ovlfuse (left) vs kernel (right)"
    );
    let kview = snapshot(&k.mnt, XattrSel::User);
    assert_same_snapshots(
        "merged views with userxattr",
        "kernel",
        &kview,
        "ovlfuse",
        &snapshot(&f.mnt, XattrSel::User),
    );
    fg.unmount();
    kg.unmount();
    let fu = upper_without_origins(&f.upper);
    assert_same_snapshots(
        "uppers written with userxattr",
        "kernel",
        &upper_without_origins(&k.upper),
        "ovlfuse",
        &fu,
    );
    assert_eq!(
        fu.get(Path::new("tree"))
            .map(|n| n.xattrs.contains_key("user.overlay.opaque")),
        Some(true),
        "the directory made over a removed one is opaque by user.overlay.opaque: {}",
        show_snapshot(&fu)
    );

    // The kernel with userxattr mounts ovlfuse's upper and shows what it showed of its own.
    let swapped = Stack {
        lowers: f.lowers.clone(),
        upper: f.upper.clone(),
        work: f.work.clone(),
        mnt: sc.dir("swap-mnt"),
    };
    let kg = mount_kernel_plain(&swapped, "userxattr");
    assert_same_snapshots(
        "the kernel (userxattr) on ovlfuse's upper",
        "kernel on its own upper",
        &kview,
        "kernel on ovlfuse's",
        &snapshot(&swapped.mnt, XattrSel::User),
    );
    kg.unmount();
    lc.verify();
}

/// Operations that need no overlay xattr in the upper layer: the kernel overlay does them
/// on an upper that takes none.
fn no_xattr_upper_ops(r: &Path) -> Vec<String> {
    vec![
        outcome_unit(&fs::create_dir(r.join("newdir"))),
        outcome_unit(&fs::create_dir(r.join("d/sub"))),
        outcome_unit(&write_at(&r.join("f"), 7, b"+more")),
        outcome_unit(&fs::set_permissions(
            r.join("g"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&fs::remove_file(r.join("d/h"))),
        outcome_unit(&fs::remove_dir(r.join("empty"))),
        outcome_unit(&fs::hard_link(r.join("g"), r.join("glink"))),
        outcome_unit(&std::os::unix::fs::symlink("f", r.join("sl"))),
        outcome_unit(&fs::write(r.join("d/new"), b"new")),
        // Root reads another user's file: the kernel's permission check asks for its ACL,
        // which the upper filesystem cannot hold.
        outcome_unit(&std::os::unix::fs::chown(r.join("d/new"), Some(1), Some(1))),
        outcome_unit(&fs::set_permissions(
            r.join("d/new"),
            fs::Permissions::from_mode(0o640),
        )),
        outcome(&fs::read(r.join("d/new"))),
        outcome(&lgetxattr(&r.join("d/new"), "system.posix_acl_access")),
        read_str(&r.join("f")),
        format!("{:?}", names_or_err(r)),
        format!("{:?}", names_or_err(&r.join("d"))),
    ]
}

#[test]
fn upper_that_takes_no_xattrs_works_and_falls_back_where_the_kernel_cannot() {
    if !fuse_available() {
        return;
    }
    // Upper and work on a ramfs, which takes no xattrs at all (neither do NFSv3 and some
    // FUSE filesystems): no opaque mark, no redirect.
    let sc = Scratch::new("sem-no-xattr-upper");
    let lowers: Vec<E> = vec![
        E::File("f", b"lower f"),
        E::File("g", b"g"),
        E::File("d/h", b"h"),
        E::Dir("empty"),
        E::File("tree/a", b"a"),
        E::File("tree/sub/b", b"b"),
        E::File("moved/c", b"c"),
    ];
    let (stacks, guards) = stacks_with_upper_on(&sc, &lowers, "ramfs", mount_ramfs);
    let (k, f) = (&stacks[0], &stacks[1]);
    let lc = LowerCheck::new(&[k.lowers[0].clone(), f.lowers[0].clone()]);
    let kg = mount_kernel(k);
    let fg = mount_ovlfuse(f, &[]);
    assert_eq!(
        no_xattr_upper_ops(&f.mnt),
        no_xattr_upper_ops(&k.mnt),
        "operations on an upper without xattrs: ovlfuse (left) vs kernel (right)"
    );
    assert_same_snapshots(
        "merged views, upper on ramfs",
        "kernel",
        &snapshot(&k.mnt, XattrSel::User),
        "ovlfuse",
        &snapshot(&f.mnt, XattrSel::User),
    );

    // Where the kernel needs an xattr it fails (rm -rf of a lower tree: EIO, having removed
    // part of it; a rename of a lower directory: EIO). ovlfuse removes the tree, marks a
    // directory made in its place opaque with the OCI marker, and refuses the rename with
    // EXDEV (redirect_dir falls back to off), so that mv copies.
    let m = &f.mnt;
    fs::remove_dir_all(m.join("tree")).expect("rm -rf of a lower tree");
    fs::create_dir(m.join("tree")).expect("mkdir where a lower directory was removed");
    fs::write(m.join("tree/new"), b"n").unwrap();
    assert_eq!(names_or_err(&m.join("tree")), Ok(vec!["new".to_string()]));
    fs::remove_dir(m.join("empty")).expect_err("removed above");
    fs::create_dir(m.join("empty")).expect("mkdir over a removed empty lower directory");
    expect_errno(
        fs::rename(m.join("moved"), m.join("moved2")),
        libc::EXDEV,
        "rename of a lower directory without redirects",
    );
    fg.unmount();
    kg.unmount();
    assert!(
        f.upper.join("tree/.wh..wh..opq").exists(),
        "the directory made over a removed one carries the OCI opaque marker"
    );
    // A new daemon reads the marker: the removed lower entries stay hidden.
    let fg = mount_ovlfuse(f, &[]);
    assert_eq!(
        names_or_err(&f.mnt.join("tree")),
        Ok(vec!["new".to_string()])
    );
    assert_eq!(names_or_err(&f.mnt.join("empty")), Ok(vec![]));
    assert_eq!(read_str(&f.mnt.join("moved/c")), "c");
    fg.unmount();
    lc.verify();
    drop(guards);
}

/// A lower layer on a filesystem that holds no xattrs, so no ACLs (ramfs; vfat and NFSv3
/// alike): root reads another user's file in it, as on the kernel overlay. The kernel's
/// permission check asks for the file's ACL, and "not supported" from the layer must
/// come back as "none", not as an error.
#[test]
fn a_lower_layer_without_acls_lets_root_read_other_users_files_as_the_kernel_does() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-no-acl-lower");
    let mut guards = Vec::new();
    let mut stacks = Vec::new();
    for who in ["k", "f"] {
        let l = sc.dir(&format!("{who}/ramfs"));
        guards.push(mount_ramfs(&l));
        build(&l, &[E::File("d/f", b"secret"), E::File("g", b"g")]);
        for p in [l.join("d/f"), l.join("g")] {
            std::os::unix::fs::chown(&p, Some(1), Some(1)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        }
        let st = Stack {
            lowers: vec![l],
            upper: sc.dir(&format!("{who}/upper")),
            work: sc.dir(&format!("{who}/work")),
            mnt: sc.dir(&format!("{who}/mnt")),
        };
        stacks.push(st);
    }
    let (k, f) = (&stacks[0], &stacks[1]);
    let lc = LowerCheck::new(&[k.lowers[0].clone(), f.lowers[0].clone()]);
    let ops = |r: &Path| {
        vec![
            outcome(&fs::read(r.join("d/f"))),
            outcome(&lgetxattr(&r.join("d/f"), "system.posix_acl_access")),
            // A copy-up keeps the owner; the copy on the upper filesystem may hold ACLs.
            outcome_unit(&fs::OpenOptions::new().append(true).open(r.join("g"))),
            outcome(&fs::read(r.join("g"))),
        ]
    };
    let kg = mount_kernel(k);
    let fg = mount_ovlfuse(f, &[]);
    assert_eq!(
        ops(&f.mnt),
        ops(&k.mnt),
        "root and another user's files in a lower layer without ACLs: ovlfuse (left) vs \
         kernel (right)"
    );
    fg.unmount();
    kg.unmount();
    // The same through a read-only view (no upper layer), where ovlfuse hands reads to
    // the kernel.
    let fg = mount_ovlfuse_ro(&f.lowers, &f.mnt, &[]);
    assert_eq!(
        outcome(&fs::read(f.mnt.join("d/f"))),
        "ok: [115, 101, 99, 114, 101, 116]"
    );
    fg.unmount();
    lc.verify();
    drop(guards);
}

#[test]
fn read_only_lower_file_system_is_fine() {
    if !fuse_available() {
        return;
    }
    // A lower layer on a read-only mount (ro bind mount of itself): nothing may need to
    // write there, copy-up included.
    let sc = Scratch::new("sem-ro-lower");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File("f", b"ro lower"),
            E::File("d/g", b"g"),
            E::Fifo("p"),
            E::Symlink("s", "f"),
        ],
    );
    build(&st.lowers[1], &[E::File("d/h", b"h")]);
    let mut binds = Vec::new();
    for l in &st.lowers {
        let o = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(l)
            .arg(l)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bind mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        binds.push(MountGuard::adopt_kernel(l));
        let o = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(l)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "remount ro: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    expect_errno(
        fs::write(st.lowers[0].join("probe"), b"x"),
        libc::EROFS,
        "the lower is really read-only",
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    assert_eq!(read_str(&m.join("f")), "ro lower");
    ok(
        write_at(&m.join("f"), 0, b"RW"),
        "copy-up from a read-only lower",
    );
    ok(
        fs::set_permissions(m.join("p"), fs::Permissions::from_mode(0o600)),
        "copy-up of a fifo",
    );
    ok(lchown(&m.join("s"), 3, 3), "copy-up of a symlink");
    ok(
        fs::remove_file(m.join("d/h")),
        "whiteout over the second lower",
    );
    ok(fs::write(m.join("d/new"), b"n"), "create in a merged dir");
    assert_eq!(read_str(&m.join("f")), "RW lower");
    assert_eq!(
        names_or_err(&m.join("d")),
        Ok(vec!["g".into(), "new".into()])
    );
    g.unmount();
    lc.verify();
    drop(binds);
}

#[test]
fn lowers_on_different_file_systems_with_colliding_inode_numbers() {
    if !fuse_available() {
        return;
    }
    // Two fresh tmpfs instances hand out the same inode numbers (2, 3, ...). One FUSE mount
    // has a single st_dev, so ovlfuse must keep the objects apart (and their st_ino distinct),
    // where the kernel uses a different st_dev per layer.
    let sc = Scratch::new("sem-ino-collide");
    let mut guards = Vec::new();
    let mut stacks = Vec::new();
    for who in ["k", "f"] {
        let l0 = sc.dir(&format!("{who}/lower0"));
        let l1 = sc.dir(&format!("{who}/lower1"));
        guards.push(mount_tmpfs(&l0));
        guards.push(mount_tmpfs(&l1));
        // Same creation order in both: a/b get one number, d/e the next, d/x and e/y the next.
        fs::write(l0.join("a"), b"file a in lower0").unwrap();
        fs::write(l1.join("b"), b"file b in lower1").unwrap();
        fs::create_dir(l0.join("d")).unwrap();
        fs::create_dir(l1.join("e")).unwrap();
        fs::write(l0.join("d/x"), b"x in lower0").unwrap();
        fs::write(l1.join("e/y"), b"y in lower1").unwrap();
        let st = Stack {
            lowers: vec![l0, l1],
            upper: sc.dir(&format!("{who}/upper")),
            work: sc.dir(&format!("{who}/work")),
            mnt: sc.dir(&format!("{who}/mnt")),
        };
        stacks.push(st);
    }
    let (k, f) = (&stacks[0], &stacks[1]);
    assert_eq!(
        fs::metadata(f.lowers[0].join("a")).unwrap().ino(),
        fs::metadata(f.lowers[1].join("b")).unwrap().ino(),
        "setup: tmpfs did not produce colliding inode numbers"
    );
    let lc = LowerCheck::new(&[k.lowers.clone(), f.lowers.clone()].concat());
    let kg = mount_kernel(k);
    let fg = mount_ovlfuse(f, &[]);
    let view = |r: &Path| -> Vec<String> {
        ["a", "b", "d/x", "e/y"]
            .iter()
            .map(|n| format!("{n}: {}", read_str(&r.join(n))))
            .chain(
                ["d", "e"]
                    .iter()
                    .map(|n| format!("{n}: {:?}", names_or_err(&r.join(n)))),
            )
            .collect()
    };
    let kv = view(&k.mnt);
    let fv = view(&f.mnt);
    assert_eq!(
        fv, kv,
        "contents with colliding lower inode numbers: ovlfuse (left) vs kernel (right)"
    );
    let inos: Vec<(String, u64)> = ["a", "b", "d", "e", "d/x", "e/y"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                fs::symlink_metadata(f.mnt.join(n)).unwrap().ino(),
            )
        })
        .collect();
    let mut u: Vec<u64> = inos.iter().map(|x| x.1).collect();
    u.sort();
    u.dedup();
    assert_eq!(
        u.len(),
        inos.len(),
        "ovlfuse shows one st_ino for different files: {inos:?}"
    );
    // Copy-up and writes must reach the right object.
    for r in [&k.mnt, &f.mnt] {
        write_at(&r.join("b"), 0, b"FILE").unwrap();
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(
        view(&f.mnt),
        view(&k.mnt),
        "after copy-up: ovlfuse (left) vs kernel (right)"
    );
    let (fr, kr) = (readdir_check(&f.mnt), readdir_check(&k.mnt));
    assert!(fr.0.is_empty(), "ovlfuse readdir problems: {:?}", fr.0);
    assert_eq!(fr.1, kr.1);
    fg.unmount();
    kg.unmount();
    lc.verify();
    drop(guards);
}

/// A lower layer that holds the upper and work directories (as `lowerdir=/` does with an
/// upper anywhere): the kernel overlay mounts it, shows the rest of that layer, and fails
/// a lookup that reaches the upper, work or `work/work` directory through it (ELOOP: its
/// trap inodes), also on a redirect's path. ovlfuse used to refuse such a mount ("upperdir
/// is inside lowerdir").
#[test]
fn a_lower_layer_holding_the_upper_is_mounted_and_its_traps_refused_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-lower-holds-upper");
    let mut seen = Vec::new();
    for side in ["kernel", "ovlfuse"] {
        let base = sc.dir(side);
        let mut st = Stack::new_at(&base, 1);
        build(&base, &[E::File("keep", b"k"), E::File("gone", b"g")]);
        build(&st.upper, &[E::Dir("sub"), E::Dir("moved")]);
        ok(
            lsetxattr(
                &st.upper.join("moved"),
                "trusted.overlay.redirect",
                b"/upper/sub",
            ),
            "redirect into the upper through the lower",
        );
        st.lowers = vec![base.clone()];
        let g = if side == "kernel" {
            mount_kernel(&st)
        } else {
            mount_ovlfuse(&st, &[])
        };
        let m = &st.mnt;
        let mut view = vec![format!("root lists {}", outcome(&names(m)))];
        for n in [
            "keep",
            "lower0",
            "mnt",
            "upper",
            "work",
            "work/work",
            "moved",
        ] {
            view.push(format!(
                "{n}: {}",
                outcome(&fs::symlink_metadata(m.join(n)).map(|md| md.is_dir()))
            ));
        }
        view.push(format!(
            "rm gone: {}",
            outcome(&fs::remove_file(m.join("gone")))
        ));
        view.push(format!(
            "write: {}",
            outcome(&fs::write(m.join("new"), b"n"))
        ));
        view.push(format!("root lists {}", outcome(&names(m))));
        g.unmount();
        view.push(format!("upper holds {}", outcome(&names(&st.upper))));
        seen.push(view);
    }
    assert_eq!(seen[0], seen[1], "kernel, then ovlfuse");
}

/// A full upper layer (a 16 MiB tmpfs, filled up, under a 12 MiB lower file), on ovlfuse
/// and on the kernel overlay: the same calls fail with the same errors (ENOSPC), and
/// nothing is lost. A write that runs out of space keeps what it wrote; a failed copy-up
/// leaves the file readable whole from its lower layer and no half copy in the upper or
/// work directory; once space is freed the copy-up succeeds.
#[test]
fn full_upper_layer_fails_like_the_kernel_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    const MIB: usize = 1 << 20;
    let sc = Scratch::new("sem-full-upper");
    let lower = sc.dir("lower");
    let big: Vec<u8> = (0..12 * MIB).map(|i| (i % 251) as u8).collect();
    fs::write(lower.join("big"), &big).unwrap();
    fs::write(lower.join("small"), b"small").unwrap();
    let lc = LowerCheck::new(std::slice::from_ref(&lower));
    let mut outcomes: Vec<Vec<String>> = Vec::new();
    for who in ["kernel", "ovlfuse"] {
        let layer_fs = sc.dir(&format!("{who}-fs"));
        let _tmpfs = mount_tmpfs_with(&layer_fs, "size=16m");
        let st = Stack {
            lowers: vec![lower.clone()],
            upper: layer_fs.join("upper"),
            work: layer_fs.join("work"),
            mnt: sc.dir(&format!("{who}-mnt")),
        };
        fs::create_dir(&st.upper).unwrap();
        fs::create_dir(&st.work).unwrap();
        let g = if who == "kernel" {
            mount_kernel(&st)
        } else {
            mount_ovlfuse(&st, &[])
        };
        let m = &st.mnt;
        let mut seen = Vec::new();

        // A new file written until the space runs out keeps what was written.
        let mut f = ok(
            fs::File::create(m.join("fill")),
            &format!("{who}: create fill"),
        );
        let chunk = vec![7u8; MIB / 4];
        let mut written = 0usize;
        let err = loop {
            match f.write(&chunk) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(
                written < 32 * MIB,
                "{who}: wrote {written} bytes into 16 MiB"
            );
        };
        seen.push(format!("write until full: {}", describe_err(&err)));
        drop(f);
        let kept = ok(fs::read(m.join("fill")), &format!("{who}: read fill"));
        assert_eq!(
            kept.len(),
            written,
            "{who}: size of the file that filled the layer"
        );
        assert!(
            kept.iter().all(|&b| b == 7),
            "{who}: contents of the full file"
        );

        // Copy-ups with no space for the data.
        let append = fs::OpenOptions::new().append(true).open(m.join("big"));
        seen.push(format!("open big for append: {}", outcome_unit(&append)));
        drop(append);
        assert_eq!(
            ok(fs::read(m.join("big")), &format!("{who}: read big")),
            big,
            "{who}: big must still read whole after the failed copy-up"
        );
        assert!(
            !st.upper.join("big").exists(),
            "{who}: a half copy of big is in the upper layer"
        );
        // The kernel keeps its own `work` and `index` directories there; no file data.
        let mut stray = Vec::new();
        walk_files(&st.work, &mut stray);
        assert!(
            stray.is_empty(),
            "{who}: left in the work directory: {stray:?}"
        );
        let more = fs::OpenOptions::new().append(true).open(m.join("small"));
        let more = more.and_then(|mut f| f.write_all(b"er"));
        seen.push(format!("append to small: {}", outcome_unit(&more)));
        let small = ok(fs::read(m.join("small")), &format!("{who}: read small"));
        assert!(
            small == b"small" || small == b"smaller",
            "{who}: small reads {small:?}"
        );

        // Space back: the copy-up goes through and keeps the lower data. Over FUSE the
        // blocks are freed when the kernel's asynchronous RELEASE of `fill` arrives (see
        // the README): wait for them, within a bound generous enough for a loaded CI
        // machine (it takes milliseconds).
        ok(fs::remove_file(m.join("fill")), &format!("{who}: rm fill"));
        let t0 = std::time::Instant::now();
        while ok(statvfs(&layer_fs), "statvfs").f_bfree == 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "{who}: the deleted file's space did not come back within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut a = ok(
            fs::OpenOptions::new().append(true).open(m.join("big")),
            &format!("{who}: append once space is free"),
        );
        ok(a.write_all(b"end"), &format!("{who}: append"));
        drop(a);
        let now = fs::read(m.join("big")).unwrap();
        assert_eq!(now.len(), big.len() + 3, "{who}: size after the copy-up");
        assert!(
            now[..big.len()] == big[..] && &now[big.len()..] == b"end",
            "{who}: contents after the copy-up"
        );
        g.unmount();
        outcomes.push(seen);
    }
    assert_eq!(
        outcomes[1], outcomes[0],
        "ovlfuse (left) and the kernel overlay (right) disagree on a full upper layer"
    );
    lc.verify();
}
