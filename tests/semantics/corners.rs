//! Corner cases: cross-layer hard links, big merged directories, odd names, ACLs, offsets.

use super::*;

#[test]
fn hard_links_across_lower_layers() {
    if !fuse_available() {
        return;
    }
    // Container layers are often deduplicated with hard links between layers.
    let t = twin_with(
        "sem-xlayer-links",
        &[
            &[E::Dir("d0")],
            &[
                E::File("b", b"shared inode"),
                E::File("x", b"same name, same inode"),
                E::Dir("d1"),
            ],
        ],
        &[],
        |st| {
            fs::hard_link(st.lowers[1].join("b"), st.lowers[0].join("a")).unwrap();
            fs::hard_link(st.lowers[1].join("x"), st.lowers[0].join("x")).unwrap();
            fs::hard_link(st.lowers[1].join("b"), st.lowers[0].join("d0/c")).unwrap();
        },
    );
    t.both("view", |r| {
        (
            names_or_err(r),
            read_str(&r.join("a")),
            read_str(&r.join("b")),
            read_str(&r.join("x")),
            stat_str(&r.join("a")),
        )
    });
    t.both("stat b, then write through a", |r| {
        let _ = fs::symlink_metadata(r.join("b"));
        let _ = fs::symlink_metadata(r.join("d0/c"));
        let w = fs::OpenOptions::new()
            .append(true)
            .open(r.join("a"))
            .and_then(|mut f| f.write_all(b"+a"));
        (
            outcome_unit(&w),
            read_str(&r.join("a")),
            read_str(&r.join("b")),
            read_str(&r.join("d0/c")),
        )
    });
    t.both("unlink b, the other names stay", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("b"))),
            read_str(&r.join("a")),
            read_str(&r.join("d0/c")),
            outcome_unit(&fs::symlink_metadata(r.join("b"))),
        )
    });
    t.both("chmod d0/c", |r| {
        (
            outcome_unit(&fs::set_permissions(
                r.join("d0/c"),
                fs::Permissions::from_mode(0o600),
            )),
            stat_str(&r.join("d0/c")),
            read_str(&r.join("a")),
        )
    });
    t.finish(true);
}

#[test]
fn readdir_of_large_merged_dir_with_whiteouts_and_seekdir() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-readdir-merged-big",
        &[&[E::Dir("big")], &[E::Dir("big")]],
        &[E::Dir("big")],
        |st| {
            for i in 0..6000 {
                fs::write(st.lowers[1].join(format!("big/a{i:05}")), b"").unwrap();
            }
            for i in 3000..6000 {
                fs::write(st.lowers[0].join(format!("big/a{i:05}")), b"l0").unwrap();
            }
            for i in 0..2000 {
                fs::write(st.lowers[0].join(format!("big/b{i:05}")), b"").unwrap();
            }
            for i in (0..6000).step_by(7) {
                mknod(&st.upper.join(format!("big/a{i:05}")), libc::S_IFCHR, 0).unwrap();
            }
            for i in 0..1000 {
                fs::write(st.upper.join(format!("big/c{i:05}")), b"").unwrap();
            }
        },
    );
    t.both("names of the merged dir", |r| {
        let (problems, list) = readdir_check(&r.join("big"));
        (
            list.len(),
            problems
                .iter()
                .filter(|p| p.contains("more than once") || p.contains("lstat"))
                .cloned()
                .collect::<Vec<_>>(),
            list,
        )
    });
    t.both("telldir/seekdir", |r| check_seekdir(&r.join("big")));
    t.both("rm -rf while iterating", |r| {
        (
            outcome_unit(&fs::remove_dir_all(r.join("big"))),
            outcome_unit(&fs::symlink_metadata(r.join("big"))),
        )
    });
    t.finish(true);
}

/// READDIRPLUS with its stats shared with helper threads (`statahead=on`, used by
/// default when the layers' caches are cold) gives the same listing and attributes as the
/// kernel, before and after changes to the directory.
#[test]
fn listing_with_stat_ahead_matches_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin_with_opts(
        "sem-statahead",
        &[&[E::Dir("d")], &[E::Dir("d")]],
        &[E::Dir("d")],
        &["statahead=on"],
        |st| {
            let (l0, l1, up) = (
                st.lowers[0].join("d"),
                st.lowers[1].join("d"),
                st.upper.join("d"),
            );
            for i in 0..300 {
                fs::write(l1.join(format!("f{i:03}")), vec![b'x'; i]).unwrap();
            }
            for i in (0..300).step_by(3) {
                fs::write(l0.join(format!("f{i:03}")), b"l0").unwrap();
                chmod_nofollow_dir(&l0.join(format!("f{i:03}")), 0o600 + (i as u32 % 8)).unwrap();
            }
            for i in 0..40 {
                std::os::unix::fs::symlink(format!("f{i:03}"), l0.join(format!("s{i:02}")))
                    .unwrap();
                fs::create_dir(l1.join(format!("dir{i:02}"))).unwrap();
                fs::write(l1.join(format!("dir{i:02}/in")), b"in").unwrap();
                mkfifo(&l1.join(format!("p{i:02}")), 0o640).unwrap();
            }
            for i in (0..300).step_by(11) {
                mknod(&up.join(format!("f{i:03}")), libc::S_IFCHR, 0).unwrap();
            }
            for i in 0..50 {
                fs::write(up.join(format!("u{i:02}")), b"upper").unwrap();
            }
        },
    );
    let pid =
        t.fg.as_ref()
            .and_then(|g| g.pid())
            .expect("ovlfuse daemon pid");
    let list = |r: &Path| {
        let (problems, list) = readdir_check(&r.join("d"));
        let stats: Vec<String> = list
            .iter()
            .map(|(n, _)| stat_str(&r.join("d").join(n)))
            .collect();
        (problems, list, stats)
    };
    let (_, first, _) = t.both_ret("listing and stats", list);
    assert_eq!(first.len(), 300 - 28 + 40 * 3 + 50, "entries listed");
    t.both("changes", |r| {
        let d = r.join("d");
        let mut out = Vec::new();
        for i in (1..300).step_by(5) {
            out.push(outcome_unit(&fs::remove_file(d.join(format!("f{i:03}")))));
        }
        for i in 0..30 {
            out.push(outcome_unit(&fs::write(d.join(format!("new{i:02}")), b"n")));
        }
        for i in 0..20 {
            out.push(outcome_unit(&fs::rename(
                d.join(format!("f{:03}", 2 + i * 5)),
                d.join(format!("moved{i:02}")),
            )));
        }
        out.push(outcome_unit(&fs::remove_dir_all(d.join("dir07"))));
        out
    });
    t.both("listing and stats after the changes", list);
    let helpers: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("daemon threads")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("ovl-statahead"))
        .collect();
    assert!(
        !helpers.is_empty(),
        "no stat-ahead threads in the daemon with statahead=on"
    );
    t.finish(true);
}

#[test]
fn recursive_removal_of_a_merged_tree() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rm-rf",
        &[
            &[
                E::File("tree/a/1", b"1"),
                E::File("tree/a/b/2", b"2"),
                E::Symlink("tree/l", "a"),
                E::Fifo("tree/a/p"),
            ],
            &[
                E::File("tree/a/3", b"3"),
                E::File("tree/c/d/e/4", b"4"),
                E::Opaque("tree/c/d"),
                E::File("tree/a/b/5", b"5"),
            ],
        ],
        &[
            E::File("tree/a/6", b"6"),
            E::Whiteout("tree/a/3"),
            E::Dir("tree/u/v"),
        ],
    );
    t.both("rm -rf tree", |r| {
        outcome_unit(&fs::remove_dir_all(r.join("tree")))
    });
    t.both("gone", |r| {
        (
            outcome_unit(&fs::symlink_metadata(r.join("tree"))),
            names_or_err(r),
        )
    });
    t.both("mkdir tree again is empty", |r| {
        (
            outcome_unit(&fs::create_dir(r.join("tree"))),
            names_or_err(&r.join("tree")),
        )
    });
    t.finish(true);
}

#[test]
fn odd_file_names() {
    if !fuse_available() {
        return;
    }
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let raw: Vec<&[u8]> = vec![
        b"sp ace",
        b"new\nline",
        b"tab\there",
        b"-dash",
        b"back\\slash",
        b"co:lon",
        b"com,ma",
        b"\xff\xfe-not-utf8",
        "ünïcödé".as_bytes(),
        b".hidden",
        b"...",
        b"wh.not-a-whiteout",
        b"*?[glob]",
        b"'quote\"",
    ];
    let t = twin_with("sem-odd-names", &[&[E::Dir("d")]], &[], |st| {
        for n in &raw {
            fs::write(st.lowers[0].join("d").join(OsStr::from_bytes(n)), n).unwrap();
        }
    });
    let list = |r: &Path, d: &str| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = read_dir_raw(&r.join(d))
            .map(|es| {
                es.into_iter()
                    .map(|e| e.name.as_bytes().to_vec())
                    .filter(|n| n != b"." && n != b"..")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    t.both("lower names listed", |r| list(r, "d"));
    t.both("create the same names in a new dir", |r| {
        let mk = fs::create_dir(r.join("n"));
        let res: Vec<String> = raw
            .iter()
            .map(|n| outcome_unit(&fs::write(r.join("n").join(OsStr::from_bytes(n)), n)))
            .collect();
        (outcome_unit(&mk), res, list(r, "n"))
    });
    t.both("read, rename and unlink lower odd names", |r| {
        raw.iter()
            .map(|n| {
                let p = r.join("d").join(OsStr::from_bytes(n));
                let content = fs::read(&p).map(|c| c == *n);
                let q = r
                    .join("d")
                    .join(OsStr::from_bytes(&[n, &b".renamed"[..]].concat()));
                let rn = fs::rename(&p, &q);
                let un = fs::remove_file(&q);
                format!(
                    "{} {} {}",
                    outcome(&content),
                    outcome_unit(&rn),
                    outcome_unit(&un)
                )
            })
            .collect::<Vec<_>>()
    });
    t.finish(true);
}

#[test]
fn dot_wh_names_cannot_be_created_through_the_mount() {
    if !fuse_available() {
        return;
    }
    // A documented difference from the kernel (README): ovlfuse reads `.wh.NAME` in layers as
    // OCI whiteouts, so it refuses to create such names (EPERM) instead of writing a file that
    // would read back as a whiteout. The kernel would create plain files.
    let sc = Scratch::new("sem-dot-wh");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[
            E::File("foo", b"lower foo"),
            E::Dir("d"),
            E::File("d/bar", b"bar"),
        ],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    expect_errno(
        fs::write(m.join(".wh.foo"), b"x"),
        libc::EPERM,
        "create .wh.foo",
    );
    expect_errno(
        fs::write(m.join("d/.wh..wh..opq"), b"x"),
        libc::EPERM,
        "create d/.wh..wh..opq",
    );
    expect_errno(
        fs::create_dir(m.join(".wh.dir")),
        libc::EPERM,
        "mkdir .wh.dir",
    );
    expect_errno(
        std::os::unix::fs::symlink("foo", m.join(".wh.sym")),
        libc::EPERM,
        "symlink .wh.sym",
    );
    expect_errno(
        fs::rename(m.join("foo"), m.join(".wh.foo2")),
        libc::EPERM,
        "rename to .wh.foo2",
    );
    expect_errno(
        fs::hard_link(m.join("foo"), m.join(".wh.foo3")),
        libc::EPERM,
        "link to .wh.foo3",
    );
    assert_eq!(read_str(&m.join("foo")), "lower foo");
    assert_eq!(names_or_err(m), Ok(vec!["d".into(), "foo".into()]));
    assert_eq!(names_or_err(&m.join("d")), Ok(vec!["bar".into()]));
    g.unmount();
    assert_eq!(
        names_or_err(&st.upper),
        Ok(vec![]),
        "nothing may have been written to upper"
    );
    lc.verify();
}

#[test]
fn paths_through_symlinked_directories() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-symlinked-dirs",
        &[&[
            E::File("real/f", b"real f"),
            E::Symlink("link", "real"),
            E::Symlink("loop1", "loop2"),
            E::Symlink("loop2", "loop1"),
            E::Symlink("dangling", "nowhere"),
        ]],
        &[],
    );
    t.both("read through a symlinked dir", |r| {
        read_str(&r.join("link/f"))
    });
    t.both("write through a symlinked dir", |r| {
        (
            outcome_unit(&write_at(&r.join("link/f"), 0, b"R")),
            read_str(&r.join("real/f")),
        )
    });
    t.both("create through a symlinked dir", |r| {
        (
            outcome_unit(&fs::write(r.join("link/new"), b"n")),
            names_or_err(&r.join("real")),
        )
    });
    t.both("symlink loop", |r| {
        outcome_unit(&fs::metadata(r.join("loop1")))
    });
    t.both("dangling", |r| {
        (
            outcome_unit(&fs::metadata(r.join("dangling"))),
            outcome_unit(&fs::write(r.join("dangling"), b"d")),
        )
    });
    t.both("view after creating through dangling symlink", |r| {
        (names_or_err(r), read_str(&r.join("nowhere")))
    });
    t.finish(true);
}

#[test]
fn offsets_beyond_4_gib() {
    if !fuse_available() {
        return;
    }
    const G5: u64 = 5 << 30;
    let t = twin("sem-5gib", &[&[E::File("low", b"lower")]], &[]);
    t.both("pwrite at 5 GiB in a new file", |r| {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(r.join("huge"))
            .unwrap();
        let w = f.write_all_at(b"FAR", G5);
        let mut b = [0u8; 3];
        let rd = f.read_exact_at(&mut b, G5);
        (
            outcome_unit(&w),
            outcome_unit(&rd),
            b,
            f.metadata().map(|m| m.len()).ok(),
        )
    });
    t.both("extend a lower file to 5 GiB and write at the end", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("low"))
            .unwrap();
        let e = f.set_len(G5);
        let w = f.write_all_at(b"END", G5 - 3);
        let mut b = [0u8; 5];
        let rd = f.read_exact_at(&mut b, 0);
        (
            outcome_unit(&e),
            outcome_unit(&w),
            outcome_unit(&rd),
            b,
            fs::metadata(r.join("low")).map(|m| m.len()).ok(),
        )
    });
    t.both("sizes", |r| ["huge", "low"].map(|n| stat_str(&r.join(n))));
    t.both("remove the big files", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("huge"))),
            outcome_unit(&fs::remove_file(r.join("low"))),
        )
    });
    t.finish(true);
}

#[test]
fn fsync_and_fdatasync_on_files_and_directories() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-fsync", &[&[E::File("f", b"f"), E::Dir("d")]], &[]);
    t.both("fsync", |r| {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(r.join("f"))
            .unwrap();
        let a = (&f).write_all(b"F").and_then(|_| f.sync_all());
        let b = f.sync_data();
        let ro = fs::File::open(r.join("f")).unwrap().sync_all();
        let d = fs::File::open(r.join("d")).and_then(|d| d.sync_all());
        let root = fs::File::open(r).and_then(|d| d.sync_all());
        [a, b, ro, d, root].map(|x| outcome_unit(&x))
    });
    t.finish(true);
}

#[test]
fn a_default_acl_on_the_workdir_reaches_no_copy() {
    if !fuse_available() {
        return;
    }
    // default: user::rwx group::r-x other::rwx. Copies are built in workdir/work; had they
    // inherited it, a copied-up directory would pass `other::rwx` on to what is made in it.
    let t = twin_with(
        "sem-workdir-acl",
        &[&[
            E::File("f", b"f"),
            E::Mode("f", 0o600),
            E::File("d/x", b"x"),
            E::Mode("d", 0o755),
        ]],
        &[],
        |st| {
            let dflt = acl(&[(1, 7, u32::MAX), (4, 5, u32::MAX), (0x20, 7, u32::MAX)]);
            lsetxattr(&st.work, "system.posix_acl_default", &dflt).unwrap();
        },
    );
    t.both("copy-ups and new objects", |r| {
        let made = [
            outcome_unit(&write_at(&r.join("f"), 1, b"+")),
            outcome_unit(&fs::create_dir(r.join("d/new"))),
            outcome_unit(&fs::write(r.join("d/newfile"), b"n")),
        ];
        let shown = ["f", "d", "d/new", "d/newfile"].map(|p| {
            let p = r.join(p);
            (
                stat_str(&p),
                outcome(&lgetxattr(&p, "system.posix_acl_access")),
                outcome(&lgetxattr(&p, "system.posix_acl_default")),
            )
        });
        (made, shown)
    });
    t.finish_with(true, |k, f| {
        for st in [k, f] {
            let w = st.work.join("work");
            assert_eq!(
                outcome(&lgetxattr(&w, "system.posix_acl_default")),
                "err: ENODATA (61)",
                "{w:?} keeps no default ACL"
            );
        }
        let mode = |st: &Stack| fs::metadata(st.work.join("work")).unwrap().mode() & 0o7777;
        assert_eq!(
            mode(f),
            mode(k),
            "mode of work/work: ovlfuse (left), kernel (right)"
        );
    });
}

#[test]
fn posix_acls_are_visible_copied_up_and_enforced() {
    if !fuse_available() {
        return;
    }
    const U: u32 = u32::MAX;
    const NOBODY: u32 = 65534;
    // user::rw- user:65534:r-- group::--- mask::r-- other::---
    let file_acl = acl(&[
        (1, 6, U),
        (2, 4, NOBODY),
        (4, 0, U),
        (0x10, 4, U),
        (0x20, 0, U),
    ]);
    // default: user::rwx user:65534:rwx group::r-x mask::rwx other::---
    let dir_default = acl(&[
        (1, 7, U),
        (2, 7, NOBODY),
        (4, 5, U),
        (0x10, 7, U),
        (0x20, 0, U),
    ]);
    let fa = file_acl.clone();
    let dd = dir_default.clone();
    let t = twin_with(
        "sem-acl",
        &[&[
            E::File("acl", b"acl protected"),
            E::Mode("acl", 0o640),
            E::Dir("dd"),
            E::Mode("dd", 0o770),
        ]],
        &[],
        move |st| {
            lsetxattr(&st.lowers[0].join("acl"), "system.posix_acl_access", &fa)
                .expect("ext4 without ACL support?");
            lsetxattr(&st.lowers[0].join("dd"), "system.posix_acl_default", &dd).unwrap();
            lsetxattr(
                &st.lowers[0].join("dd"),
                "system.posix_acl_access",
                &acl(&[
                    (1, 7, U),
                    (2, 7, NOBODY),
                    (4, 7, U),
                    (0x10, 7, U),
                    (0x20, 0, U),
                ]),
            )
            .unwrap();
        },
    );
    t.both("getxattr access ACL through the mount", |r| {
        outcome(&lgetxattr(&r.join("acl"), "system.posix_acl_access"))
    });
    t.both("getxattr default ACL of a dir", |r| {
        outcome(&lgetxattr(&r.join("dd"), "system.posix_acl_default"))
    });
    t.both("ACL grants the named user read access", |r| {
        run_as(
            NOBODY,
            NOBODY,
            &[
                Op::Open(cpath(&r.join("acl")), libc::O_RDONLY),
                Op::Open(cpath(&r.join("acl")), libc::O_WRONLY),
                Op::Open(cpath(&r.join("dd/new")), libc::O_CREAT | libc::O_WRONLY),
            ],
        )
    });
    t.both("new file inherits the default ACL", |r| {
        outcome(&lgetxattr(&r.join("dd/new"), "system.posix_acl_access"))
    });
    t.both("copy-up keeps the ACL", |r| {
        (
            outcome_unit(&lsetxattr(&r.join("acl"), "user.x", b"1")),
            outcome(&lgetxattr(&r.join("acl"), "system.posix_acl_access")),
        )
    });
    t.finish_with(true, |k, f| {
        for (who, st) in [("kernel", k), ("ovlfuse", f)] {
            assert_eq!(
                lgetxattr(&st.upper.join("acl"), "system.posix_acl_access")
                    .ok()
                    .as_deref(),
                Some(&file_acl[..]),
                "{who}: ACL of the copied-up file in upper"
            );
        }
    });
}
