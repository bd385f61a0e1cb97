//! Copy-up: what a copy keeps (data, modes, owners, times, xattrs), when it happens, and
//! that a failed one leaves nothing behind.

use super::*;

fn copy_up_lowers() -> Vec<E<'static>> {
    vec![
        E::File("f", b"0123456789 lower contents"),
        E::Xattr("f", "user.foo", b"bar"),
        E::Xattr("f", "user.empty", b""),
        E::Owner("f", 1234, 5678),
        E::Mode("f", 0o2640),
        E::File("dir/sub/g", b"nested lower file"),
        E::Owner("dir/sub/g", 42, 43),
        E::Mode("dir/sub/g", 0o604),
        E::Xattr("dir/sub/g", "user.g", b"1"),
        E::Owner("dir", 11, 22),
        E::Mode("dir", 0o750),
        E::Xattr("dir", "user.dirattr", b"d"),
        E::Mode("dir/sub", 0o711),
        E::File("dir/sibling", b"s"),
    ]
}

/// Builds the copy-up layers, sets old mtimes, runs `op` on f and dir/sub/g on both mounts
/// and compares everything; `mtime_kept` says whether the op must keep the lower mtime.
fn copy_up_case(name: &str, mtime_kept: bool, op: impl Fn(&Path) -> io::Result<()>) {
    let lowers = copy_up_lowers();
    let t = twin_with(name, &[&lowers[..]], &[], |st| {
        for p in ["f", "dir/sub/g"] {
            set_times(&st.lowers[0].join(p), OLD_MTIME, OLD_MTIME).unwrap();
        }
    });
    for p in ["f", "dir/sub/g"] {
        t.both(&format!("{name} on {p}"), |r| outcome_unit(&op(&r.join(p))));
        t.both(&format!("contents of {p} after {name}"), |r| {
            read_str(&r.join(p))
        });
        t.both(&format!("stat of {p} after {name}"), |r| {
            stat_str(&r.join(p))
        });
        t.both(&format!("mtime kept after {name} of {p}?"), |r| {
            let m = mtime_of(&r.join(p)).unwrap();
            if mtime_kept {
                format!("{m:?}")
            } else {
                format!("changed: {}", m != OLD_MTIME)
            }
        });
        if mtime_kept {
            let m = mtime_of(&t.fm().join(p)).unwrap();
            assert_eq!(
                m, OLD_MTIME,
                "{name} of {p} must keep the lower file's mtime across copy-up"
            );
        }
    }
    for p in ["dir", "dir/sub"] {
        t.both(&format!("stat of parent {p} after copy-up"), |r| {
            stat_str(&r.join(p))
        });
    }
    // Something was copied up, with the right attributes.
    for p in ["f", "dir/sub/g"] {
        let up = t.f.upper.join(p);
        assert!(
            fs::symlink_metadata(&up)
                .map(|m| m.is_file())
                .unwrap_or(false),
            "{name}: {p} not copied up to {up:?}"
        );
    }
    t.finish(true);
}

#[test]
fn copy_up_on_write() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-write", false, |p| write_at(p, 3, b"XYZ"));
}

#[test]
fn copy_up_on_append() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-append", false, |p| {
        fs::OpenOptions::new()
            .append(true)
            .open(p)?
            .write_all(b"+tail")
    });
}

#[test]
fn copy_up_on_chmod() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-chmod", true, |p| {
        fs::set_permissions(p, fs::Permissions::from_mode(0o4751))
    });
}

#[test]
fn copy_up_on_chown() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-chown", true, |p| lchown(p, 4321, 8765));
}

#[test]
fn copy_up_on_utimes() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-utimes", true, |p| {
        // Setting the same old mtime explicitly; the atime changes.
        set_times(p, (7, 7), OLD_MTIME)
    });
    copy_up_case("sem-cu-utimes2", false, |p| {
        set_times(p, (7, 7), (2_000_000_000, 5))
    });
}

#[test]
fn copy_up_on_setxattr() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-setxattr", true, |p| {
        lsetxattr(p, "user.new", b"value")
    });
    copy_up_case("sem-cu-removexattr", true, |p| {
        lremovexattr(p, "user.foo").or_else(|_| lremovexattr(p, "user.g"))
    });
}

#[test]
fn copy_up_on_truncate() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-truncate", false, |p| {
        fs::OpenOptions::new().write(true).open(p)?.set_len(4)
    });
    copy_up_case("sem-cu-truncate-path", false, |p| {
        let c = cpath(p);
        cvt(unsafe { libc::truncate(c.as_ptr(), 100) }).map(|_| ())
    });
}

/// statx's birth time (with the basic attributes, as stat(1) asks), None where the
/// filesystem keeps none.
fn birth_time(p: &Path) -> Option<(i64, u32)> {
    let stx = statx_of(
        p,
        libc::AT_SYMLINK_NOFOLLOW,
        libc::STATX_BASIC_STATS | libc::STATX_BTIME,
    );
    (stx.stx_mask & libc::STATX_BTIME != 0).then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec))
}

/// With btime=1, as on the kernel overlay, statx shows the birth time of the copy it
/// reports on: the lower file's until a copy-up, then the upper copy's. Without it, none
/// (README, Differences), and Rust's metadata() (statx of every field) costs no request
/// after a listing.
#[test]
fn birth_time_is_that_of_the_copy_shown() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-btime");
    let st = Stack::new(&sc, 1);
    let kst = Stack::new_at(&sc.dir("k"), 0);
    let low = &st.lowers[0];
    fs::write(low.join("f"), b"f").unwrap();
    fs::write(low.join("g"), b"g").unwrap();
    fs::create_dir(low.join("d")).unwrap();
    assert!(
        birth_time(&low.join("f")).is_some(),
        "the scratch filesystem keeps no birth times"
    );
    // apart from the lower files' by more than the clock's granularity
    std::thread::sleep(std::time::Duration::from_millis(20));
    let lc = LowerCheck::new(&st.lowers);
    let kst = Stack {
        lowers: st.lowers.clone(),
        ..kst
    };
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(
        birth_time(&st.mnt.join("f")),
        None,
        "a birth time without btime=1"
    );
    g.unmount();
    let kg = mount_kernel(&kst);
    let g = mount_ovlfuse(&st, &["btime=1"]);
    for (who, root, upper) in [
        ("kernel", &kst.mnt, &kst.upper),
        ("ovlfuse", &st.mnt, &st.upper),
    ] {
        for name in ["f", "g", "d"] {
            assert_eq!(
                birth_time(&root.join(name)),
                birth_time(&low.join(name)),
                "{who}: {name} before any copy-up"
            );
        }
        ok(
            fs::set_permissions(root.join("g"), fs::Permissions::from_mode(0o600)),
            &format!("{who}: chmod"),
        );
        ok(
            fs::write(root.join("d/new"), b"n"),
            &format!("{who}: create in d"),
        );
        for name in ["g", "d", "d/new"] {
            let shown = birth_time(&root.join(name));
            assert_eq!(
                shown,
                birth_time(&upper.join(name)),
                "{who}: {name} after copy-up"
            );
            assert_ne!(shown, birth_time(&low.join("f")), "{who}: {name}");
        }
        assert_eq!(
            birth_time(&root.join("f")),
            birth_time(&low.join("f")),
            "{who}: f"
        );
        assert_eq!(birth_time(root), birth_time(upper), "{who}: the root");
    }
    g.unmount();
    kg.unmount();
    lc.verify();
}

#[test]
fn copy_up_of_sparse_file_keeps_holes() {
    if !fuse_available() {
        return;
    }
    const GIB: u64 = 1 << 30;
    let sc = Scratch::new("sem-cu-sparse");
    let st = Stack::new(&sc, 1);
    let kst = Stack::new_at(&sc.dir("k"), 0);
    let lf = st.lowers[0].join("sparse");
    {
        let f = fs::File::create(&lf).unwrap();
        f.set_len(GIB).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", GIB / 2).unwrap();
        f.write_all_at(b"tail", GIB - 4).unwrap();
    }
    let lower_blocks = fs::metadata(&lf).unwrap().blocks();
    assert!(
        lower_blocks < 2048,
        "the lower file is not sparse on this file system ({lower_blocks} blocks)"
    );
    let lc = LowerCheck::new(&st.lowers);
    let kst = Stack {
        lowers: st.lowers.clone(),
        ..kst
    };
    let kg = mount_kernel(&kst);
    let g = mount_ovlfuse(&st, &[]);
    for (who, root, upper) in [
        ("kernel", &kst.mnt, &kst.upper),
        ("ovlfuse", &st.mnt, &st.upper),
    ] {
        ok(
            fs::set_permissions(root.join("sparse"), fs::Permissions::from_mode(0o600)),
            &format!("{who}: chmod"),
        );
        let m = ok(
            fs::metadata(upper.join("sparse")),
            &format!("{who}: copied-up file in upper"),
        );
        assert_eq!(m.len(), GIB, "{who}: size after copy-up");
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert!(
            m.blocks() < 8192,
            "{who}: copy-up of a 1 GiB sparse file allocated {} KiB; holes must be kept",
            m.blocks() / 2
        );
        let f = ok(fs::File::open(root.join("sparse")), "open");
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf, GIB / 2).unwrap();
        assert_eq!(&buf, b"middle", "{who}: data in the middle");
        f.read_exact_at(&mut buf[..4], GIB - 4).unwrap();
        assert_eq!(&buf[..4], b"tail", "{who}: data at the end");
        f.read_exact_at(&mut buf, GIB / 4).unwrap();
        assert_eq!(buf, [0u8; 6], "{who}: a hole reads as zeros");
    }
    // Through the mount, the holes are where the lower file had them (the kernel overlay
    // copies 1 MiB chunks, so its first hole starts at 1 MiB: README, Differences). Not
    // with the writeback cache, where the kernel answers these lseeks itself.
    if data_path_opt().is_some() {
        g.unmount();
        kg.unmount();
        lc.verify();
        return;
    }
    use std::os::fd::AsRawFd;
    let seek =
        |f: &fs::File, off: u64, whence| unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    let f = ok(fs::File::open(st.mnt.join("sparse")), "open");
    let lower = fs::File::open(&lf).unwrap();
    let hole = seek(&lower, 0, libc::SEEK_HOLE);
    assert!(
        hole > 0 && hole < (1 << 20),
        "the lower's first hole at {hole}"
    );
    assert_eq!(
        seek(&f, 0, libc::SEEK_HOLE),
        hole,
        "first hole, through ovlfuse"
    );
    assert_eq!(
        seek(&f, hole as u64, libc::SEEK_DATA),
        seek(&lower, hole as u64, libc::SEEK_DATA),
        "next data after the first hole, through ovlfuse"
    );
    drop(f);
    g.unmount();
    kg.unmount();
    lc.verify();
}

#[test]
fn copy_up_of_fifo_keeps_fifo() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-cu-fifo",
        &[&[E::Fifo("p"), E::Owner("p", 5, 6), E::Fifo("q")]],
        &[],
    );
    t.both("chmod fifo", |r| {
        outcome_unit(&fs::set_permissions(
            r.join("p"),
            fs::Permissions::from_mode(0o600),
        ))
    });
    t.both("chown fifo", |r| outcome_unit(&lchown(&r.join("q"), 7, 8)));
    t.both("setxattr on fifo", |r| {
        outcome_unit(&lsetxattr(&r.join("q"), "user.x", b"1"))
    });
    t.both("stat fifo", |r| stat_str(&r.join("p")));
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(t.f.upper.join("p"))
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false),
        "upper p must be a fifo"
    );
    t.finish(true);
}

#[test]
fn unlink_of_lower_file_leaves_only_a_whiteout() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-unlink-wh",
        &[&[
            E::File("f", b"data"),
            E::File("d/g", b"g"),
            E::File("d/h", b"h"),
            E::Symlink("s", "f"),
        ]],
        &[E::File("u", b"upper only")],
    );
    t.both("unlink lower file", |r| {
        outcome_unit(&fs::remove_file(r.join("f")))
    });
    t.both("unlink nested lower file", |r| {
        outcome_unit(&fs::remove_file(r.join("d/g")))
    });
    t.both("unlink lower symlink", |r| {
        outcome_unit(&fs::remove_file(r.join("s")))
    });
    t.both("unlink upper-only file", |r| {
        outcome_unit(&fs::remove_file(r.join("u")))
    });
    t.both("lookup after unlink", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("f")))
    });
    t.both("readdir d", |r| names_or_err(&r.join("d")));
    t.both("unlink again", |r| {
        outcome_unit(&fs::remove_file(r.join("f")))
    });
    for p in ["f", "d/g", "s"] {
        assert!(
            is_whiteout(&t.f.upper.join(p)),
            "upper/{p} must be a char 0/0 whiteout: {}",
            stat_str(&t.f.upper.join(p))
        );
    }
    assert!(
        fs::symlink_metadata(t.f.upper.join("u")).is_err(),
        "upper-only file must be gone, not whited out"
    );
    assert!(
        fs::symlink_metadata(t.f.upper.join("d/h")).is_err(),
        "d/h must not be copied up"
    );
    t.finish(true);
}

#[test]
fn o_trunc_open_of_lower_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-otrunc",
        &[&[
            E::File("f", b"long lower contents"),
            E::Mode("f", 0o640),
            E::Owner("f", 3, 4),
        ]],
        &[],
    );
    t.both("open O_TRUNC and write", |r| {
        let res = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(r.join("f"))
            .and_then(|mut f| f.write_all(b"new"));
        (
            outcome_unit(&res),
            read_str(&r.join("f")),
            stat_str(&r.join("f")),
        )
    });
    t.both("open O_RDWR|O_TRUNC again", |r| {
        outcome_unit(&open_fd(&r.join("f"), libc::O_RDWR | libc::O_TRUNC, 0))
    });
    t.finish(true);
}

/// Copies of lower objects of every kind of mode and owner: those the daemon's new objects
/// already come out as are made with their mode and get no chown or chmod, the others get
/// both (set-ID and sticky bits, other owners). Either way each copy has its original's
/// mode, owner and times, as on the kernel overlay.
#[test]
fn copies_of_every_mode_and_owner_match_the_kernel() {
    if !fuse_available() {
        return;
    }
    let modes = [
        0o000, 0o444, 0o555, 0o600, 0o644, 0o700, 0o755, 0o777, 0o1777, 0o2755, 0o4755, 0o6711,
    ];
    let owners = [(0, 0), (0, 4242), (4242, 0), (4242, 4242)];
    let mut names = Vec::new();
    for m in modes {
        for (u, g) in owners {
            names.push((
                format!("d{m:o}-{u}-{g}"),
                format!("f{m:o}-{u}-{g}"),
                m,
                u,
                g,
            ));
        }
    }
    let mut lower = Vec::new();
    for (d, f, m, u, g) in &names {
        lower.push(E::File(f, b"data"));
        lower.push(E::Dir(d));
        // Owner first: chown(2) clears set-ID bits.
        lower.extend([E::Owner(f, *u, *g), E::Owner(d, *u, *g)]);
        lower.extend([E::Mode(f, *m), E::Mode(d, *m)]);
    }
    lower.push(E::File("t", b"truncated"));
    let t = twin("sem-copy-modes", &[&lower], &[]);
    // A new xattr copies each one up and changes neither its mode nor its times; O_TRUNC
    // copies a file without its data.
    t.both("copy-ups", |r| {
        let mut out: Vec<String> = names
            .iter()
            .flat_map(|(d, f, ..)| [d, f])
            .map(|n| outcome_unit(&lsetxattr(&r.join(n), "user.copied", b"y")))
            .collect();
        out.push(outcome_unit(&open_fd(
            &r.join("t"),
            libc::O_WRONLY | libc::O_TRUNC,
            0,
        )));
        out
    });
    t.compare_views("after the copy-ups");
    t.finish_with(true, |k, f| {
        for st in [k, f] {
            for (d, f, ..) in &names {
                for n in [d, f] {
                    assert_eq!(
                        mtime_of(&st.upper.join(n)).unwrap(),
                        mtime_of(&st.lowers[0].join(n)).unwrap(),
                        "{n} in {:?}: the copy keeps its mtime",
                        st.upper
                    );
                }
            }
        }
    });
}

#[test]
fn copy_up_keeps_xattrs_of_every_namespace() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-xattr-ns",
        &[&[E::File("f", b"f"), E::Dir("d"), E::File("d/g", b"g")]],
        &[],
        |st| {
            for p in ["f", "d"] {
                let p = st.lowers[0].join(p);
                lsetxattr(&p, "user.u", b"1").unwrap();
                lsetxattr(&p, "trusted.app", b"2").unwrap();
                lsetxattr(&p, "security.test", b"3").unwrap();
            }
        },
    );
    let names_of = |r: &Path, p: &str| -> Vec<String> {
        let mut v: Vec<String> = llistxattr(&r.join(p))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.starts_with("trusted.overlay."))
            .collect();
        v.sort();
        v.into_iter()
            .map(|n| {
                format!(
                    "{n}={}",
                    outcome(
                        &lgetxattr(&r.join(p), &n)
                            .map(|v| String::from_utf8_lossy(&v).into_owned())
                    )
                )
            })
            .collect()
    };
    t.both("xattrs before copy-up", |r| {
        (names_of(r, "f"), names_of(r, "d"))
    });
    t.both("copy up f (chmod) and d (create inside)", |r| {
        (
            outcome_unit(&fs::set_permissions(
                r.join("f"),
                fs::Permissions::from_mode(0o600),
            )),
            outcome_unit(&fs::write(r.join("d/new"), b"n")),
            names_of(r, "f"),
            names_of(r, "d"),
        )
    });
    t.finish(true);
}

/// A kernel overlay mounted with `metacopy=on` copies up only the metadata of a file whose
/// owner or mode changes: the copy (marked `overlay.metacopy`) holds no data, which stays
/// in the lower file. ovlfuse, like the kernel overlay with `metacopy=off`, does not follow
/// such copies, and must not serve the copy's empty blocks as the file's data. Both refuse
/// to open them and to change them with EPERM; the kernel refuses their lookup already, so
/// there `stat` fails too (README).
#[test]
fn metadata_only_copies_are_refused_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let stub = [0u8; 3000];
    let t = twin(
        "sem-metacopy",
        &[&[
            E::File("stub", &stub),
            E::Xattr("stub", "trusted.overlay.metacopy", b""),
            E::File("ustub", b"the data the upper stub stands for"),
            E::File("plain", b"plain"),
        ]],
        &[
            E::File("ustub", &stub),
            E::Xattr("ustub", "trusted.overlay.metacopy", b""),
        ],
    );
    t.both("opening and changing metadata-only copies", |r| {
        let open = |n: &str, flags: i32| outcome_unit(&open_fd(&r.join(n), flags, 0));
        (
            open("stub", libc::O_RDONLY),
            open("stub", libc::O_WRONLY),
            open("ustub", libc::O_RDONLY),
            outcome_unit(&fs::set_permissions(
                r.join("stub"),
                fs::Permissions::from_mode(0o600),
            )),
            read_str(&r.join("plain")),
        )
    });
    expect_errno(
        fs::symlink_metadata(t.km().join("stub")),
        libc::EPERM,
        "kernel lookup of a metadata-only copy",
    );
    assert!(fs::symlink_metadata(t.fm().join("stub")).is_ok_and(|m| m.len() == 3000));
    t.finish_apart(true, |_, _| {});
}

/// A process killed while its open of a big lower file for writing copies the file up is
/// gone at once, with no copy left in the upper layer, as on the kernel overlay (whose
/// copy loop stops on a fatal signal); the next write copies the file up whole. Before,
/// the killed process stayed in the kernel until the copy was done.
///
/// The upper is a tmpfs of its own, so that its use shows the copy under way: the kill
/// comes once 32 MiB of the 1 GiB are copied.
#[test]
fn a_writer_killed_during_copy_up_leaves_no_copy() {
    if !fuse_available() {
        return;
    }
    const SIZE: u64 = 1 << 30;
    let sc = Scratch::new("sem-killed-copy-up");
    let big = sc.path("big");
    {
        let mut f = fs::File::create(&big).unwrap();
        let chunk = vec![0x5au8; 8 << 20];
        for _ in 0..SIZE / chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
    }
    let mut outcomes = Vec::new();
    // With one serving thread (threaded=0) no thread is free to read the INTERRUPT: the
    // copy loop looks at the caller itself every 64 MiB.
    for side in ["kernel", "ovlfuse", "threaded=0"] {
        let mut st = Stack::new_at(&sc.dir(side), 1);
        fs::hard_link(&big, st.lowers[0].join("big")).unwrap();
        let upfs = sc.dir(&format!("{side}-upperfs"));
        let _t = mount_tmpfs_with(&upfs, "size=3g");
        st.move_upper_to(&upfs);
        let g = match side {
            "kernel" => mount_kernel(&st),
            "ovlfuse" => mount_ovlfuse(&st, &[]),
            opt => mount_ovlfuse(&st, &[opt]),
        };
        let used = || {
            let s = statvfs(&upfs).unwrap();
            (s.f_blocks - s.f_bfree) as u64 * s.f_frsize as u64
        };
        let before = used();
        let target = st.mnt.join("big");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf x >> \"$1\"")
            .arg("sh")
            .arg(&target)
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while used() < before + (32 << 20) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{side}: the copy-up never started"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{side}: the writer ended before its copy-up was seen under way"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // What is left once the writer is gone (and the copy it started given up).
        let left = st.upper.join("big").exists();
        let size = fs::metadata(&target).unwrap().len();
        // The next write copies the file up whole.
        let mut f = fs::OpenOptions::new().append(true).open(&target).unwrap();
        f.write_all(b"y").unwrap();
        drop(f);
        let after = fs::metadata(st.upper.join("big")).map(|m| m.len());
        let mut tail = [0u8; 2];
        fs::File::open(&target)
            .unwrap()
            .read_exact_at(&mut tail, SIZE - 1)
            .unwrap();
        outcomes.push((
            std::os::unix::process::ExitStatusExt::signal(&status),
            left,
            size,
            after.ok(),
            tail,
        ));
        g.unmount();
    }
    let want = (
        Some(libc::SIGKILL),
        false,
        SIZE,
        Some(SIZE + 1),
        [0x5a, b'y'],
    );
    assert_eq!(outcomes[0], want, "setup: the kernel overlay");
    assert_eq!(
        outcomes[1], want,
        "ovlfuse (left) vs what the kernel overlay did (right)"
    );
    assert_eq!(
        outcomes[2], want,
        "ovlfuse with threaded=0 (left) vs the kernel overlay (right)"
    );
}
