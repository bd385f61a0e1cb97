//! Inode numbers, and exchanging upper layers with the kernel overlay (origins,
//! redirects, uuids).

use super::*;

#[test]
fn st_ino_stable_across_copy_up_and_remount() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-ino");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File("f", b"f"),
            E::File("d/g", b"g"),
            E::Symlink("s", "f"),
        ],
    );
    build(
        &st.lowers[1],
        &[E::File("d/h", b"h"), E::File("low1", b"l")],
    );
    build(&st.upper, &[E::File("u", b"u")]);
    let lc = LowerCheck::new(&st.lowers);
    let names = ["", "f", "d", "d/g", "d/h", "s", "low1", "u"];
    let inos = |m: &Path| -> Vec<(String, u64)> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    ok(fs::symlink_metadata(m.join(n)), &format!("stat {n}")).ino(),
                )
            })
            .collect()
    };
    let g = mount_ovlfuse(&st, &[]);
    let before = inos(&st.mnt);
    // Copy up everything.
    ok(
        fs::set_permissions(st.mnt.join("f"), fs::Permissions::from_mode(0o600)),
        "chmod f",
    );
    ok(write_at(&st.mnt.join("d/g"), 0, b"G"), "write d/g");
    ok(
        lsetxattr(&st.mnt.join("d/h"), "user.x", b"1"),
        "setxattr d/h",
    );
    ok(lchown(&st.mnt.join("s"), 1, 1), "lchown s");
    ok(
        fs::OpenOptions::new()
            .append(true)
            .open(st.mnt.join("low1"))
            .and_then(|mut f| f.write_all(b"+")),
        "append low1",
    );
    ok(fs::write(st.mnt.join("new"), b"n"), "create new");
    let new_ino = fs::symlink_metadata(st.mnt.join("new")).unwrap().ino();
    let after = inos(&st.mnt);
    assert_eq!(after, before, "st_ino changed across copy-up (name, ino)");
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    let remounted = inos(&st.mnt);
    assert_eq!(remounted, before, "st_ino changed across unmount/remount");
    assert_eq!(
        fs::symlink_metadata(st.mnt.join("new")).unwrap().ino(),
        new_ino,
        "st_ino of a new file changed across remount"
    );
    // Distinct files have distinct inode numbers.
    let mut uniq: Vec<u64> = remounted.iter().map(|x| x.1).collect();
    uniq.push(new_ino);
    let n = uniq.len();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        n,
        "distinct files share an st_ino: {remounted:?} new={new_ino}"
    );
    g.unmount();
    lc.verify();
}

fn cross_lowers() -> Vec<E<'static>> {
    vec![
        E::File("del", b"deleted"),
        E::File("deldir/a", b"a"),
        E::File("deldir/b", b"b"),
        E::File("redo/old", b"old"),
        E::File("perm", b"p"),
        E::File("own", b"o"),
        E::File("x", b"x"),
        E::File("xr", b"xr"),
        E::Xattr("xr", "user.old", b"1"),
        E::File("tr", b"truncate me"),
        E::File("ap", b"append"),
        E::File("mv", b"moved"),
        E::File("sub/a", b"sub a"),
        E::File("sub/keep", b"k"),
        E::Fifo("fifo"),
        E::Symlink("lnk", "x"),
        E::Dir("emptydir"),
    ]
}

fn cross_ops(r: &Path) {
    let long = "q".repeat(255);
    ok(fs::write(r.join("new"), b"new file"), "create");
    ok(fs::create_dir(r.join("nd")), "mkdir");
    ok(fs::write(r.join("nd/x"), b"nested"), "create nested");
    ok(fs::remove_file(r.join("del")), "unlink lower");
    ok(fs::remove_file(r.join("deldir/a")), "unlink deldir/a");
    ok(fs::remove_file(r.join("deldir/b")), "unlink deldir/b");
    ok(fs::remove_dir(r.join("deldir")), "rmdir deldir");
    ok(fs::remove_file(r.join("redo/old")), "unlink redo/old");
    ok(fs::remove_dir(r.join("redo")), "rmdir redo");
    ok(fs::create_dir(r.join("redo")), "mkdir redo");
    ok(
        fs::write(r.join("redo/fresh"), b"fresh"),
        "create redo/fresh",
    );
    ok(
        fs::set_permissions(r.join("perm"), fs::Permissions::from_mode(0o600)),
        "chmod",
    );
    ok(lchown(&r.join("own"), 77, 88), "chown");
    ok(lsetxattr(&r.join("x"), "user.added", b"v"), "setxattr");
    ok(lremovexattr(&r.join("xr"), "user.old"), "removexattr");
    ok(std::os::unix::fs::symlink("new", r.join("sl")), "symlink");
    ok(
        fs::OpenOptions::new()
            .write(true)
            .open(r.join("tr"))
            .and_then(|f| f.set_len(1)),
        "truncate",
    );
    ok(
        fs::OpenOptions::new()
            .append(true)
            .open(r.join("ap"))
            .and_then(|mut f| f.write_all(b"+more")),
        "append",
    );
    ok(fs::rename(r.join("mv"), r.join("mv2")), "rename");
    ok(fs::hard_link(r.join("new"), r.join("newlink")), "link");
    ok(mkfifo(&r.join("ff"), 0o600), "mkfifo");
    ok(fs::remove_file(r.join("sub/a")), "unlink sub/a");
    ok(fs::write(r.join("sub/a"), b"recreated"), "recreate sub/a");
    ok(
        mknod(&r.join("cdev"), libc::S_IFCHR | 0o600, makedev(1, 7)),
        "mknod",
    );
    ok(fs::write(r.join(&long), b"long name"), "create 255");
    ok(fs::remove_file(r.join("fifo")), "unlink lower fifo");
    ok(fs::remove_file(r.join("lnk")), "unlink lower symlink");
    ok(fs::remove_dir(r.join("emptydir")), "rmdir empty lower dir");
    ok(fs::create_dir(r.join("emptydir")), "mkdir emptydir again");
    ok(
        fs::hard_link(r.join("perm"), r.join("sub/permlink")),
        "link a copied-up lower file",
    );
    ok(
        fs::hard_link(r.join("own"), r.join("ownlink")),
        "link a lower file",
    );
}

/// One implementation writes, then both read the resulting upper directory.
fn cross_check(name: &str, writer_is_ovlfuse: bool) {
    let sc = Scratch::new(name);
    let st = Stack::new(&sc, 2);
    build(&st.lowers[0], &cross_lowers());
    build(
        &st.lowers[1],
        &[
            E::File("sub/low1", b"l1"),
            E::File("redo/older", b"older"),
            E::File("deldir/c", b"c"),
        ],
    );
    let lc = LowerCheck::new(&st.lowers);
    // Remove deldir/c first too, so that rmdir deldir can succeed.
    let writer_view = {
        let g = if writer_is_ovlfuse {
            mount_ovlfuse(&st, &[])
        } else {
            mount_kernel(&st)
        };
        ok(fs::remove_file(st.mnt.join("deldir/c")), "unlink deldir/c");
        ok(
            fs::remove_file(st.mnt.join("redo/older")),
            "unlink redo/older",
        );
        cross_ops(&st.mnt);
        let v = snapshot(&st.mnt, XattrSel::User);
        g.unmount();
        v
    };
    let (writer, reader) = if writer_is_ovlfuse {
        ("ovlfuse", "kernel")
    } else {
        ("kernel", "ovlfuse")
    };
    // The other implementation, fresh workdir and mount point, same lowers and upper.
    let other = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work2"),
        mnt: sc.dir("mnt2"),
    };
    let g = if writer_is_ovlfuse {
        mount_kernel(&other)
    } else {
        mount_ovlfuse(&other, &[])
    };
    let reader_view = snapshot(&other.mnt, XattrSel::User);
    g.unmount();
    assert_same_snapshots(
        &format!("{writer} wrote the upper, {reader} reads it"),
        &format!("{writer} (writer)"),
        &writer_view,
        &format!("{reader} (reader)"),
        &reader_view,
    );
    // And the writer itself sees the same after a remount.
    let same = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work3"),
        mnt: sc.dir("mnt3"),
    };
    let g = if writer_is_ovlfuse {
        mount_ovlfuse(&same, &[])
    } else {
        mount_kernel(&same)
    };
    let again = snapshot(&same.mnt, XattrSel::User);
    g.unmount();
    assert_same_snapshots(
        &format!("{writer} remounted"),
        "before",
        &writer_view,
        "after remount",
        &again,
    );
    lc.verify();
}

#[test]
fn kernel_reads_what_ovlfuse_wrote() {
    if !fuse_available() {
        return;
    }
    cross_check("sem-cross-fuse-writes", true);
}

#[test]
fn ovlfuse_reads_what_kernel_wrote() {
    if !fuse_available() {
        return;
    }
    cross_check("sem-cross-kernel-writes", false);
}

#[test]
fn same_operations_give_same_views_and_uppers() {
    if !fuse_available() {
        return;
    }
    let lowers = cross_lowers();
    let t = twin(
        "sem-ops-compare",
        &[
            &lowers[..],
            &[
                E::File("sub/low1", b"l1"),
                E::File("redo/older", b"older"),
                E::File("deldir/c", b"c"),
            ],
        ],
        &[],
    );
    t.both("prepare", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("deldir/c"))),
            outcome_unit(&fs::remove_file(r.join("redo/older"))),
        )
    });
    cross_ops(t.km());
    cross_ops(t.fm());
    t.compare_views("after the same operations");
    t.finish(true);
}

#[test]
fn redirects_written_by_a_kernel_with_redirect_dir_on_are_followed() {
    if !fuse_available() {
        return;
    }
    // With redirect_always_follow=Y (this kernel's default) overlayfs follows
    // trusted.overlay.redirect even when mounted redirect_dir=off; layers written by a
    // redirect_dir=on mount (a renamed merged dir) must read the same through ovlfuse.
    let follow = fs::read_to_string("/sys/module/overlay/parameters/redirect_always_follow")
        .unwrap_or_default();
    let sc = Scratch::new("sem-redirect");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[
            E::File("d/x", b"x"),
            E::File("d/sub/y", b"y"),
            E::File("keep", b"k"),
        ],
    );
    build(&st.upper, &[E::File("d/z", b"z")]);
    let lc = LowerCheck::new(&st.lowers);
    // Kernel with redirect_dir=on renames the merged dir.
    let o = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "{},redirect_dir=on,index=off,metacopy=off",
            st.full_opts()
        ))
        .arg(&st.mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount redirect_dir=on: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let g = MountGuard::adopt_kernel(&st.mnt);
    ok(
        fs::rename(st.mnt.join("d"), st.mnt.join("e")),
        "kernel rename of a merged dir with redirect_dir=on",
    );
    let written = snapshot(&st.mnt, XattrSel::User);
    g.unmount();
    assert!(
        lgetxattr(&st.upper.join("e"), "trusted.overlay.redirect").is_ok(),
        "the kernel wrote no redirect; test setup is wrong"
    );
    // The kernel in this test's configuration (redirect_dir=off) reads it back...
    let k2 = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work2"),
        mnt: sc.dir("mnt2"),
    };
    let kg = mount_kernel(&k2);
    let kernel_view = snapshot(&k2.mnt, XattrSel::User);
    kg.unmount();
    if follow.trim() == "Y" {
        assert_same_snapshots(
            "kernel redirect_dir=off view of the redirect_dir=on upper",
            "as written",
            &written,
            "kernel re-read",
            &kernel_view,
        );
    }
    // ...and so must ovlfuse.
    let f2 = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work3"),
        mnt: sc.dir("mnt3"),
    };
    let fg = mount_ovlfuse(&f2, &[]);
    let fuse_view = snapshot(&f2.mnt, XattrSel::User);
    fg.unmount();
    assert_same_snapshots(
        "view of an upper with a kernel redirect",
        "kernel",
        &kernel_view,
        "ovlfuse",
        &fuse_view,
    );
    lc.verify();
}

/// A file the kernel overlay copied up keeps, under ovlfuse, the inode number the kernel
/// shows for it: the lower file's, which ovlfuse reads from the kernel's origin record (a
/// file handle of the lower file), in a stat and in a listing. A lower file with hard
/// links gets no such record from the kernel, and both show the copy's own number.
#[test]
fn a_file_the_kernel_copied_up_keeps_its_inode_number_under_ovlfuse() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-kernel-origin",
        &[&[
            E::File("d/g", b"g"),
            E::File("f", b"f"),
            E::Hardlink("f", "hl"),
            E::File("plain", b"p"),
        ]],
        &[],
    );
    t.both("copy-ups", |r| {
        ["d/g", "f"].map(|n| {
            outcome_unit(&fs::set_permissions(
                r.join(n),
                fs::Permissions::from_mode(0o600),
            ))
        })
    });
    t.finish_with(true, |k, _| {
        let inos = |m: &Path| {
            let stat = ["d/g", "f", "hl", "plain", "d"]
                .map(|n| fs::symlink_metadata(m.join(n)).map(|md| md.ino()).unwrap());
            let mut listed: Vec<(String, u64)> = fs::read_dir(m.join("d"))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name().to_string_lossy().into_owned(), e.ino())
                })
                .collect();
            listed.sort();
            (stat, listed)
        };
        // The kernel's upper, seen by the kernel and then by ovlfuse.
        let kg = mount_kernel(k);
        let want = inos(&k.mnt);
        kg.unmount();
        let fg = mount_ovlfuse(k, &[]);
        let got = inos(&k.mnt);
        fg.unmount();
        assert_eq!(
            got, want,
            "ovlfuse (left) and the kernel (right) on the kernel's upper"
        );
        let lower_g = fs::symlink_metadata(k.lowers[0].join("d/g")).unwrap().ino();
        assert_eq!(
            want.0[0], lower_g,
            "the kernel shows the lower number of d/g"
        );
    });
}

/// The kernel overlay's first mount of a new upper stores an instance uuid on the upper's
/// root (`overlay.uuid`, 16 random bytes); with `uuid=auto` (the default) an upper whose
/// root is already marked impure gets none, `uuid=on` writes one anyway, `uuid=null` and
/// `uuid=off` never do, and one that is there is kept. ovlfuse writes and keeps it in the
/// same cases, under the same prefix, so the kernel finds the same upper whichever of the
/// two mounted it first.
#[test]
fn the_upper_gets_the_kernels_instance_uuid_in_the_same_cases() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-instance-uuid");
    let kept = [7u8; 16];
    // What is on the upper root before the mount: an overlay xattr and its value.
    type Mark<'a> = Option<(&'a str, &'a [u8])>;
    // (case, mount option, userxattr, mark)
    let cases: [(&str, &str, bool, Mark); 7] = [
        ("new upper", "", false, None),
        ("impure root", "", false, Some(("impure", b"y"))),
        (
            "impure root, uuid=on",
            "uuid=on",
            false,
            Some(("impure", b"y")),
        ),
        ("uuid=null", "uuid=null", false, None),
        ("uuid=off", "uuid=off", false, None),
        ("uuid kept", "", false, Some(("uuid", &kept))),
        ("new upper, userxattr", "", true, None),
    ];
    for (case, opt, userxattr, before) in cases {
        let prefix = if userxattr {
            "user.overlay."
        } else {
            "trusted.overlay."
        };
        let mut seen = Vec::new();
        for side in ["kernel", "ovlfuse"] {
            let st = Stack::new_at(&sc.dir(&format!("{case}-{side}")), 1);
            if let Some((name, value)) = before {
                ok(
                    lsetxattr(&st.upper, &format!("{prefix}{name}"), value),
                    "mark the upper root",
                );
            }
            let mut opts: Vec<&str> = Vec::new();
            opts.extend((!opt.is_empty()).then_some(opt));
            opts.extend(userxattr.then_some("userxattr"));
            let g = if side == "kernel" {
                let extra = opts.join(",");
                if userxattr {
                    mount_kernel_plain(&st, &extra)
                } else if extra.is_empty() {
                    mount_kernel(&st)
                } else {
                    mount_kernel_with(&st, &extra)
                }
            } else {
                mount_ovlfuse(&st, &opts)
            };
            g.unmount();
            let other = if userxattr { "trusted" } else { "user" };
            assert!(
                lgetxattr(&st.upper, &format!("{other}.overlay.uuid")).is_err(),
                "{case}: {side} stored a uuid under the other prefix"
            );
            seen.push(match lgetxattr(&st.upper, &format!("{prefix}uuid")) {
                Err(e) => format!("none ({})", describe_err(&e)),
                Ok(v) if v == kept => "the one there before".to_string(),
                Ok(v) if v.len() == 16 && v[6] >> 4 == 4 && v[8] >> 6 == 2 => {
                    "a new random one".to_string()
                }
                Ok(v) => format!("an odd one: {v:02x?}"),
            });
        }
        assert_eq!(seen[0], seen[1], "{case}: kernel, then ovlfuse");
    }
}

/// The other way round: ovlfuse writes the kernel's origin record on what it copies up
/// (byte for byte as the kernel's copy-up does, lower filesystem uuid included), so a
/// kernel overlay mounting ovlfuse's upper shows the lower object's inode number for such
/// copies, in `stat` (and in listings, where all layers share a filesystem), as for its
/// own. A lower object with hard links gets no record on either. Once with the lower on the
/// scratch filesystem and once on a tmpfs, whose uuid the records carry.
#[test]
fn what_ovlfuse_copied_up_keeps_its_inode_number_under_the_kernel() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-origin-for-kernel");
    let names = ["d/g", "f", "h1", "h2", "sl", "fifo", "dd", "d"];
    let copied = ["d/g", "f", "h1", "sl", "fifo", "dd"];
    for on_tmpfs in [false, true] {
        let base = sc.dir(if on_tmpfs { "tmpfs" } else { "scratch" });
        let k = Stack::new_at(&base.join("k"), 1);
        let mut f = Stack::new_at(&base.join("f"), 1);
        let _t = on_tmpfs.then(|| mount_tmpfs(&k.lowers[0]));
        f.lowers = k.lowers.clone();
        build(
            &k.lowers[0],
            &[
                E::File("d/g", b"g"),
                E::File("f", b"f"),
                E::File("h1", b"h"),
                E::Hardlink("h1", "h2"),
                E::Symlink("sl", "f"),
                E::Fifo("fifo"),
                E::Dir("dd"),
            ],
        );
        let copy_up = |m: &Path| {
            for n in copied {
                ok(lchown(&m.join(n), 0, 0), &format!("lchown {n}"));
            }
        };
        let kg = mount_kernel(&k);
        copy_up(&k.mnt);
        kg.unmount();
        let fg = mount_ovlfuse(&f, &[]);
        copy_up(&f.mnt);
        fg.unmount();
        let record =
            |upper: &Path, n: &str| outcome(&lgetxattr(&upper.join(n), "trusted.overlay.origin"));
        for n in copied {
            assert_eq!(
                record(&f.upper, n),
                record(&k.upper, n),
                "origin record of {n} (lower on tmpfs: {on_tmpfs}): ovlfuse's (left), the kernel's (right)"
            );
        }
        assert!(
            record(&k.upper, "h1").contains("ENODATA"),
            "setup: the kernel records no origin for a file with hard links"
        );
        let inos = |st: &Stack| {
            let g = mount_kernel(st);
            let stat: Vec<(&str, u64)> = names
                .iter()
                .filter(|&&n| n != "h1")
                .map(|&n| (n, fs::symlink_metadata(st.mnt.join(n)).unwrap().ino()))
                .collect();
            // With layers on two filesystems (and no xino), the kernel lists every upper
            // entry with the upper inode's number, whatever its stat shows.
            let mut listed: Vec<(String, u64)> = Vec::new();
            for dir in ["", "d"].into_iter().filter(|_| !on_tmpfs) {
                for e in fs::read_dir(st.mnt.join(dir)).unwrap() {
                    let e = e.unwrap();
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n != "h1" {
                        listed.push((format!("{dir}/{n}"), e.ino()));
                    }
                }
            }
            listed.sort();
            g.unmount();
            (stat, listed)
        };
        let theirs = inos(&k);
        let lower_g = fs::symlink_metadata(k.lowers[0].join("d/g")).unwrap().ino();
        assert_eq!(
            theirs.0[0],
            ("d/g", lower_g),
            "setup: the kernel shows the lower number of its copy of d/g"
        );
        assert_eq!(
            inos(&f),
            theirs,
            "the kernel on ovlfuse's upper (left) and on its own (right), lower on tmpfs: {on_tmpfs}"
        );
    }
}

/// Names that show one inode number, each group sorted.
type NameGroups = Vec<Vec<String>>;

/// Names grouped by the inode number they show, in `stat` and in a listing of `root`, with
/// each name's link count: which names one would take for links of one file.
fn inode_groups(root: &Path) -> (NameGroups, NameGroups, Vec<(String, u64)>) {
    let group = |pairs: Vec<(String, u64)>| {
        let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (n, ino) in pairs {
            by.entry(ino).or_default().push(n);
        }
        let mut g: Vec<Vec<String>> = by.into_values().collect();
        g.iter_mut().for_each(|v| v.sort());
        g.sort();
        g
    };
    let names = names(root).unwrap();
    let stat: Vec<(String, fs::Metadata)> = names
        .iter()
        .map(|n| (n.clone(), fs::symlink_metadata(root.join(n)).unwrap()))
        .collect();
    let listed = fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.ino())
        })
        .collect();
    (
        group(stat.iter().map(|(n, m)| (n.clone(), m.ino())).collect()),
        group(listed),
        stat.iter().map(|(n, m)| (n.clone(), m.nlink())).collect(),
    )
}

/// A copy-up breaks a lower hard link: the copy is another file than the link's other
/// names, so it must not show their inode number, or tar, rsync -H and du would take two
/// files with different data for one. The kernel overlay (index=off) gives the copy its
/// own number, in the mount that copied it and after a remount; so must ovlfuse.
#[test]
fn a_copied_up_lower_hard_link_is_another_inode_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-broken-link",
        &[&[
            E::File("h1", b"h"),
            E::Hardlink("h1", "h2"),
            E::File("k1", b"k"),
            E::Hardlink("k1", "k2"),
            E::Hardlink("k1", "k3"),
            E::File("plain", b"p"),
        ]],
        &[],
    );
    t.both("before any copy-up", inode_groups);
    t.both("copy-ups of one name of each", |r| {
        let chmod = fs::set_permissions(r.join("h1"), fs::Permissions::from_mode(0o600));
        let write = fs::OpenOptions::new()
            .append(true)
            .open(r.join("k2"))
            .and_then(|mut f| f.write_all(b"more"));
        (outcome_unit(&chmod), outcome_unit(&write), inode_groups(r))
    });
    t.both("a link to the copy", |r| {
        (
            outcome_unit(&fs::hard_link(r.join("k2"), r.join("k4"))),
            inode_groups(r),
        )
    });
    t.finish_with(true, |k, f| {
        let kg = mount_kernel(k);
        let want = inode_groups(&k.mnt);
        kg.unmount();
        let fg = mount_ovlfuse(f, &[]);
        let got = inode_groups(&f.mnt);
        fg.unmount();
        assert_eq!(
            got, want,
            "after a remount: ovlfuse (left), the kernel (right)"
        );
    });
}
