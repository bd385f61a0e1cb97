//! Rename within and across merged directories, redirects, and renames racing other
//! requests.

use super::*;

fn rename_lowers() -> Vec<E<'static>> {
    vec![
        E::File("a", b"lower a"),
        E::File("b", b"lower b"),
        E::File("d/x", b"d/x"),
        E::Dir("empty"),
        E::Symlink("s", "a"),
    ]
}

#[test]
fn rename_lower_file_to_new_name() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-rename-new", &[&rename_lowers()[..]], &[]);
    t.both("rename a -> a2", |r| {
        outcome_unit(&fs::rename(r.join("a"), r.join("a2")))
    });
    t.both("rename into merged subdir", |r| {
        outcome_unit(&fs::rename(r.join("b"), r.join("d/b")))
    });
    t.both("rename symlink", |r| {
        outcome_unit(&fs::rename(r.join("s"), r.join("d/s")))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            names_or_err(&r.join("d")),
            read_str(&r.join("a2")),
            read_str(&r.join("d/b")),
        )
    });
    assert!(
        is_whiteout(&t.f.upper.join("a")),
        "old name a must be whited out in upper"
    );
    t.finish(true);
}

#[test]
fn rename_over_existing() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-over",
        &[&rename_lowers()[..]],
        &[E::File("c", b"upper c")],
    );
    t.both("rename lower a over lower b", |r| {
        outcome_unit(&fs::rename(r.join("a"), r.join("b")))
    });
    t.both("rename upper c over whited-out a", |r| {
        outcome_unit(&fs::rename(r.join("c"), r.join("a")))
    });
    t.both("rename file over dir", |r| {
        outcome_unit(&fs::rename(r.join("a"), r.join("empty")))
    });
    t.both("rename file over itself", |r| {
        outcome_unit(&fs::rename(r.join("b"), r.join("b")))
    });
    t.both("rename missing", |r| {
        outcome_unit(&fs::rename(r.join("nope"), r.join("b")))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            read_str(&r.join("a")),
            read_str(&r.join("b")),
        )
    });
    t.finish(true);
}

#[test]
fn rename_noreplace() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-noreplace",
        &[&rename_lowers()[..]],
        &[E::File("c", b"upper c")],
    );
    t.both("NOREPLACE onto lower name", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("b"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("NOREPLACE onto upper name", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("c"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("unlink b", |r| outcome_unit(&fs::remove_file(r.join("b"))));
    t.both("NOREPLACE onto whited-out name", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("b"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("NOREPLACE onto new name", |r| {
        outcome_unit(&renameat2(
            &r.join("c"),
            &r.join("c2"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            read_str(&r.join("b")),
            read_str(&r.join("c2")),
        )
    });
    t.finish(true);
}

#[test]
fn rename_exchange() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-exchange",
        &[&rename_lowers()[..]],
        &[E::File("c", b"upper c")],
    );
    t.both("EXCHANGE lower a with upper c", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("c"),
            libc::RENAME_EXCHANGE,
        ))
    });
    t.both("after exchange", |r| {
        (read_str(&r.join("a")), read_str(&r.join("c")))
    });
    t.both("EXCHANGE two lower files", |r| {
        outcome_unit(&renameat2(
            &r.join("b"),
            &r.join("d/x"),
            libc::RENAME_EXCHANGE,
        ))
    });
    t.both("after exchange 2", |r| {
        (read_str(&r.join("b")), read_str(&r.join("d/x")))
    });
    t.both("EXCHANGE with missing", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("nope"),
            libc::RENAME_EXCHANGE,
        ))
    });
    t.finish(true);
}

#[test]
fn rename_of_upper_only_directory() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-updir",
        &[&rename_lowers()[..]],
        &[E::File("u/x", b"x"), E::File("u/sub/y", b"y")],
    );
    t.both("mkdir + populate new dir", |r| {
        (
            outcome_unit(&fs::create_dir(r.join("n"))),
            outcome_unit(&fs::write(r.join("n/f"), b"f")),
        )
    });
    t.both("rename new dir", |r| {
        outcome_unit(&fs::rename(r.join("n"), r.join("n2")))
    });
    t.both("rename upper-only dir into merged dir", |r| {
        outcome_unit(&fs::rename(r.join("u"), r.join("d/u")))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            names_or_err(&r.join("n2")),
            names_or_err(&r.join("d/u/sub")),
        )
    });
    t.finish(true);
}

#[test]
fn rename_of_merged_directory_exdev_or_correct() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-rename-merged-dir");
    let st = Stack::new(&sc, 2);
    build(&st.lowers[0], &[E::File("d/x", b"x")]);
    build(&st.lowers[1], &[E::File("d/y", b"y"), E::Dir("pure")]);
    build(&st.upper, &[E::File("d/z", b"z")]);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    for (from, to, kids) in [("d", "e", vec!["x", "y", "z"]), ("pure", "pure2", vec![])] {
        let r = fs::rename(m.join(from), m.join(to));
        match &r {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                assert_eq!(
                    names_or_err(&m.join(from)),
                    Ok(kids.iter().map(|s| s.to_string()).collect()),
                    "after EXDEV, {from} unchanged"
                );
                expect_errno(
                    fs::symlink_metadata(m.join(to)),
                    libc::ENOENT,
                    "EXDEV rename target",
                );
            }
            Ok(()) => {
                assert_eq!(
                    names_or_err(&m.join(to)),
                    Ok(kids.iter().map(|s| s.to_string()).collect()),
                    "after rename, {to} has all entries"
                );
                expect_errno(
                    fs::symlink_metadata(m.join(from)),
                    libc::ENOENT,
                    "renamed-away dir",
                );
                for k in &kids {
                    expect_errno(
                        fs::symlink_metadata(m.join(from).join(k)),
                        libc::ENOENT,
                        "child of the renamed-away dir",
                    );
                }
            }
            Err(e) => panic!(
                "rename of a merged dir {from} -> {to}: expected success or EXDEV, got {}",
                describe_err(e)
            ),
        }
    }
    let view = snapshot(m, XattrSel::User);
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    assert_same_snapshots(
        "view before and after remount",
        "before",
        &view,
        "after",
        &snapshot(m, XattrSel::User),
    );
    g.unmount();
    lc.verify();
}

#[test]
fn parallel_creates_renames_and_unlinks_in_one_directory() {
    if !fuse_available() {
        return;
    }
    let t = twin_with("sem-parallel-dir", &[&[E::Dir("d")]], &[], |st| {
        for i in 0..400 {
            fs::write(st.lowers[0].join(format!("d/l{i:03}")), format!("{i}")).unwrap();
        }
    });
    t.both("8 threads work on one merged directory", |r| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hs: Vec<_> = (0..8usize)
            .map(|t| {
                let d = r.join("d");
                let b = barrier.clone();
                std::thread::spawn(move || -> Vec<String> {
                    b.wait();
                    let mut errs = Vec::new();
                    for i in (t..400).step_by(8) {
                        let res = (|| -> io::Result<()> {
                            fs::write(d.join(format!("n{i:03}")), format!("new {i}"))?;
                            fs::rename(d.join(format!("l{i:03}")), d.join(format!("m{i:03}")))?;
                            if i % 3 == 0 {
                                fs::remove_file(d.join(format!("m{i:03}")))?;
                            }
                            if i % 5 == 0 {
                                fs::remove_file(d.join(format!("n{i:03}")))?;
                            }
                            Ok(())
                        })();
                        if let Err(e) = res {
                            errs.push(format!("{i}: {}", describe_err(&e)));
                        }
                    }
                    errs
                })
            })
            .collect();
        let errs: Vec<String> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (
            errs,
            names_or_err(&r.join("d")),
            readdir_check(&r.join("d"))
                .0
                .iter()
                .filter(|p| p.contains("more than once"))
                .count(),
        )
    });
    t.finish(true);
}

/// What a process does with a directory, and a file in it, that another process keeps
/// moving: stat, create, open and list attributes through a descriptor of the directory.
/// The kernel does not hold a moving directory's lock across these requests (xfstests
/// generic/707 creates files in one while `mv` moves it), so they must not depend on the
/// name the directory had when the request started. Returns the failures.
fn use_a_moving_directory(r: &Path) -> Vec<String> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let (a, b) = (r.join("a"), r.join("b"));
    let dir = ok(
        fs::File::open(a.join("d")),
        "open the directory that will move",
    );
    let dfd = dir.as_raw_fd();
    std::thread::scope(|s| {
        let mover = s.spawn(|| {
            let mut errs = Vec::new();
            // Within a parent and across parents: the kernel holds the directory's lock for
            // the second kind only.
            let steps = [
                (a.join("d"), a.join("e")),
                (a.join("e"), b.join("d")),
                (b.join("d"), b.join("e")),
                (b.join("e"), a.join("d")),
            ];
            for i in 0..4000 {
                let (from, to) = &steps[i % 4];
                if let Err(e) = fs::rename(from, to) {
                    errs.push(format!("rename {i}: {}", describe_err(&e)));
                    break;
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            errs
        });
        let mut errs = Vec::new();
        let mut i = 0u64;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && errs.len() < 10 {
            let name = cpath(Path::new(&format!("n{}", i % 64)));
            i += 1;
            // A create marks the directory's attributes stale; the stat after it asks.
            let fd = unsafe {
                libc::openat(
                    dfd,
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                errs.push(format!(
                    "create: {}",
                    describe_err(&io::Error::last_os_error())
                ));
                continue;
            }
            unsafe { libc::close(fd) };
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let empty = c"";
            if unsafe { libc::fstatat(dfd, empty.as_ptr(), &mut st, libc::AT_EMPTY_PATH) } != 0 {
                errs.push(format!(
                    "stat: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let f = c"f";
            let fd = unsafe { libc::openat(dfd, f.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                errs.push(format!(
                    "open f: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            } else {
                let mut buf = [0u8; 256];
                if unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) } < 0 {
                    errs.push(format!(
                        "listxattr f: {}",
                        describe_err(&io::Error::last_os_error())
                    ));
                }
                unsafe { libc::close(fd) };
            }
            if unsafe { libc::unlinkat(dfd, name.as_ptr(), 0) } != 0 {
                errs.push(format!(
                    "unlink: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let mode = if i % 2 == 0 { 0o755 } else { 0o775 };
            if unsafe { libc::fchmod(dfd, mode) } != 0 {
                errs.push(format!(
                    "chmod: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let (k, v) = (c"user.k", i.to_string());
            if unsafe { libc::fsetxattr(dfd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0) } != 0 {
                errs.push(format!(
                    "setxattr: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let mut buf = [0u8; 32];
            let n = unsafe { libc::fgetxattr(dfd, k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 || &buf[..n as usize] != v.as_bytes() {
                errs.push(format!(
                    "getxattr: {n} {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
        }
        errs.extend(mover.join().unwrap());
        // The loop ran a different number of times on each mount; end alike.
        let end = c"end";
        let set = unsafe {
            libc::fchmod(dfd, 0o750)
                | libc::fsetxattr(dfd, c"user.k".as_ptr(), end.as_ptr().cast(), 3, 0)
        };
        if set != 0 {
            errs.push(format!(
                "final chmod, setxattr: {}",
                describe_err(&io::Error::last_os_error())
            ));
        }
        errs
    })
}

#[test]
fn requests_about_a_directory_being_moved_do_not_fail() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-moving-dir",
        &[&[E::Dir("a/d"), E::File("a/d/f", b"f"), E::Dir("b")]],
        &[],
    );
    t.both("stat, create, open while the directory moves", |r| {
        // Upper copies first, so the race is with renames alone, as in generic/707.
        fs::write(r.join("a/d/f"), b"upper f").unwrap();
        use_a_moving_directory(r)
    });
    t.finish(true);
}
