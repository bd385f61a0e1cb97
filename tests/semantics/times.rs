//! Timestamps: atime mount options, times moved by reads, listings and mapped writes.

use super::*;

/// Reads `p` through a fresh open and says whether its atime moved.
fn read_moves_atime(p: &Path) -> bool {
    let before = fs::symlink_metadata(p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let mut buf = Vec::new();
    fs::File::open(p).unwrap().read_to_end(&mut buf).unwrap();
    let after = fs::symlink_metadata(p).unwrap();
    (after.atime(), after.atime_nsec()) != (before.atime(), before.atime_nsec())
}

/// (mtime, ctime) of `p` in nanoseconds, asked of statx for those two only: a stat asking
/// for atime too would refresh attributes the kernel marked stale for its own reasons.
fn times_ns(p: &Path) -> (i128, i128) {
    let sx = statx_of(
        p,
        libc::AT_STATX_SYNC_AS_STAT,
        libc::STATX_MTIME | libc::STATX_CTIME,
    );
    let ns = |t: libc::statx_timestamp| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    (ns(sx.stx_mtime), ns(sx.stx_ctime))
}

/// A write through a shared mapping moves the file's mtime and ctime, seen by stat while
/// mapped and after, as on the kernel overlay: with FUSE passthrough the kernel writes
/// the mapped upper file by itself and no request tells us, so ovlfuse must not let the
/// kernel keep the old times (xfstests generic/080 and generic/215 found this).
#[test]
fn mapped_writes_move_mtime_and_ctime_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let page = vec![b'p'; 4096];
    let t = twin(
        "sem-mmap-times",
        &[&[E::File("low", &page)]],
        &[E::File("up", &page)],
    );
    for name in ["up", "low"] {
        t.both(&format!("times of {name} after a mapped write"), |m| {
            let f = m.join(name);
            let file = ok(
                fs::OpenOptions::new().read(true).write(true).open(&f),
                "open read-write",
            );
            // SAFETY: a fresh shared mapping of one page of a file at least that long,
            // written through and unmapped here, with no other reference to it.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED, "mmap {}", f.display());
                // Taken while open and mapped, so the kernel may hold on to these.
                let before = times_ns(&f);
                // Past the filesystem clock's granularity.
                std::thread::sleep(std::time::Duration::from_millis(50));
                *(p as *mut u8) = b'M';
                let during = times_ns(&f);
                assert_eq!(libc::munmap(p, 4096), 0);
                drop(file);
                let after = times_ns(&f);
                let moved = |t: (i128, i128)| (t.0 > before.0, t.1 > before.1);
                (moved(during), moved(after), fs::read(&f).ok().map(|d| d[0]))
            }
        });
    }
    t.finish(false);
}

#[test]
fn atime_mount_options_behave_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    // For each policy: a file whose atime is older than its mtime is read twice. relatime
    // moves atime on the first read only, strictatime on both, noatime on neither; a
    // read-only mount never. The file is a whole page, so the second read can be served
    // from the kernel's page cache unless ovlfuse asks it to drop it.
    let cases: [(&str, [bool; 2]); 4] = [
        ("relatime", [true, false]),
        ("strictatime", [true, true]),
        ("noatime", [false, false]),
        ("ro,strictatime", [false, false]),
    ];
    for (opt, want) in cases {
        let prep = |st: &Stack| {
            fs::write(st.lowers[0].join("low"), vec![b'l'; 4096]).unwrap();
            fs::write(st.upper.join("f"), vec![b'x'; 4096]).unwrap();
            // atime 1000 s, mtime 2000 s after the epoch: older than mtime.
            set_times(&st.upper.join("f"), (1000, 0), (2000, 0)).unwrap();
        };
        let got = kernel_then_ovlfuse("sem-atime", opt, prep, |m, kernel| {
            let f = m.join("f");
            let moved = [read_moves_atime(&f), read_moves_atime(&f)];
            // Lower files never move, whatever the policy.
            assert!(
                !read_moves_atime(&m.join("low")),
                "lower atime moved (kernel: {kernel}, {opt})"
            );
            moved
        });
        assert_eq!(got[0], want, "kernel overlayfs with {opt}");
        assert_eq!(got[1], want, "ovlfuse with {opt} (kernel: {:?})", got[0]);
    }
}

/// Lists directory `p` through a fresh open and says whether its atime moved, and whether
/// its ctime did.
fn listing_moves_times(p: &Path) -> (bool, bool) {
    let before = fs::symlink_metadata(p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let n = fs::read_dir(p).unwrap().count();
    assert!(n > 0, "{p:?} lists empty");
    let after = fs::symlink_metadata(p).unwrap();
    (
        (after.atime(), after.atime_nsec()) != (before.atime(), before.atime_nsec()),
        (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec()),
    )
}

#[test]
fn listing_moves_directory_atimes_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    // xfstests overlay/039. An upper directory and a merged one, their atimes older than
    // their mtimes, each listed twice: relatime moves the atime on the first listing only,
    // strictatime on both, noatime and nodiratime on neither, a read-only mount never; no
    // listing moves a ctime or a lower directory's atime.
    let cases: [(&str, [(bool, bool); 2]); 5] = [
        ("relatime", [(true, false), (false, false)]),
        ("strictatime", [(true, false), (true, false)]),
        ("noatime", [(false, false), (false, false)]),
        ("relatime,nodiratime", [(false, false), (false, false)]),
        ("ro,strictatime", [(false, false), (false, false)]),
    ];
    for (opt, want) in cases {
        let prep = |st: &Stack| {
            build(
                &st.lowers[0],
                &[E::File("m/a", b"a"), E::File("low/x", b"x")],
            );
            build(&st.upper, &[E::File("d/f", b"f"), E::File("m/b", b"b")]);
            for dir in ["d", "m"] {
                set_times(&st.upper.join(dir), (1000, 0), (2000, 0)).unwrap();
            }
        };
        let got = kernel_then_ovlfuse("sem-diratime", opt, prep, |m, kernel| {
            let low = listing_moves_times(&m.join("low"));
            assert_eq!(
                low,
                (false, false),
                "lower directory (kernel: {kernel}, {opt})"
            );
            ["d", "m"].map(|d| {
                let p = m.join(d);
                [listing_moves_times(&p), listing_moves_times(&p)]
            })
        });
        assert_eq!(got[0], [want; 2], "kernel overlayfs with {opt}");
        assert_eq!(
            got[1], [want; 2],
            "ovlfuse with {opt} (kernel: {:?})",
            got[0]
        );
    }
}

/// Times set through a descriptor of a directory removed while it was open stay set. The
/// kernel overlay empties a merged directory before its rmdir answers; ovlfuse removes the
/// whiteouts it held afterwards, on a thread of its own, and each of those removals moved
/// the directory's mtime: a futimens made meanwhile was overwritten by "now" (found by the
/// random differential test over io_uring, seed 200122934). With thousands of whiteouts
/// the futimens reliably lands before that thread is done.
#[test]
fn times_set_on_a_directory_removed_while_open_hold_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const N: usize = 4000;
    let t = twin_with("sem-removed-dir-times", &[&[E::Dir("d")]], &[], |st| {
        for i in 0..N {
            fs::write(st.lowers[0].join(format!("d/f{i:04}")), b"").unwrap();
        }
    });
    t.both(
        "futimens through a descriptor of a removed merged directory",
        |r| {
            let d = fs::File::open(r.join("d")).unwrap();
            for i in 0..N {
                fs::remove_file(r.join(format!("d/f{i:04}"))).unwrap();
            }
            let rm = fs::remove_dir(r.join("d"));
            let ts = [
                libc::timespec {
                    tv_sec: 1_000_000_123,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 1_111_111_111,
                    tv_nsec: 5,
                },
            ];
            let set = cvt(unsafe { libc::futimens(d.as_raw_fd(), ts.as_ptr()) });
            let times = d.metadata().map(|m| (m.atime(), m.mtime(), m.mtime_nsec()));
            (outcome_unit(&rm), outcome_unit(&set), outcome(&times))
        },
    );
    t.finish(true);
}
