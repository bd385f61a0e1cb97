//! Error codes, attribute freshness and node lifetime.

use super::*;

fn lsetxattr_flags(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (cp, cn) = (cpath(p), std::ffi::CString::new(name).unwrap());
    cvt(unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

#[test]
fn error_codes_match_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-errno",
        &[&[
            E::File("f", b"file"),
            E::File("d/x", b"x"),
            E::Dir("e"),
            E::Symlink("s", "f"),
            E::Fifo("p"),
            E::Xattr("f", "user.have", b"1"),
        ]],
        &[E::File("u/y", b"y"), E::Dir("v"), E::File("w/z", b"z")],
    );
    t.both("error matrix", |r| {
        let j = |p: &str| r.join(p);
        let mut v: Vec<(&str, String)> = Vec::new();
        v.push((
            "mkdir over lower file",
            outcome_unit(&fs::create_dir(j("f"))),
        ));
        v.push((
            "mkdir over lower dir",
            outcome_unit(&fs::create_dir(j("d"))),
        ));
        v.push(("rmdir a file", outcome_unit(&fs::remove_dir(j("f")))));
        v.push(("unlink a dir", outcome_unit(&fs::remove_file(j("d")))));
        v.push((
            "open dir O_WRONLY",
            outcome_unit(&open_fd(&j("d"), libc::O_WRONLY, 0)),
        ));
        v.push((
            "open file O_DIRECTORY",
            outcome_unit(&open_fd(&j("f"), libc::O_RDONLY | libc::O_DIRECTORY, 0)),
        ));
        v.push((
            "open missing",
            outcome_unit(&open_fd(&j("missing"), libc::O_RDONLY, 0)),
        ));
        v.push((
            "O_CREAT|O_EXCL on lower file",
            outcome_unit(&open_fd(
                &j("f"),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            )),
        ));
        v.push((
            "O_CREAT|O_EXCL on lower symlink",
            outcome_unit(&open_fd(
                &j("s"),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            )),
        ));
        v.push((
            "O_NOFOLLOW on symlink",
            outcome_unit(&open_fd(&j("s"), libc::O_RDONLY | libc::O_NOFOLLOW, 0)),
        ));
        v.push((
            "rename dir over file",
            outcome_unit(&fs::rename(j("v"), j("f"))),
        ));
        v.push((
            "rename file over non-empty dir",
            outcome_unit(&fs::rename(j("f"), j("u"))),
        ));
        v.push((
            "rename dir over non-empty dir",
            outcome_unit(&fs::rename(j("v"), j("w"))),
        ));
        v.push((
            "rename dir into itself",
            outcome_unit(&fs::rename(j("u"), j("u/sub"))),
        ));
        v.push((
            "rename below a file",
            outcome_unit(&fs::rename(j("e"), j("f/x"))),
        ));
        v.push(("link a dir", outcome_unit(&fs::hard_link(j("d"), j("d2")))));
        v.push((
            "link onto existing",
            outcome_unit(&fs::hard_link(j("f"), j("s"))),
        ));
        v.push((
            "symlink onto existing",
            outcome_unit(&std::os::unix::fs::symlink("x", j("d"))),
        ));
        v.push(("readlink of dir", outcome_unit(&fs::read_link(j("d")))));
        v.push((
            "lookup below a file",
            outcome_unit(&fs::symlink_metadata(j("f/x"))),
        ));
        v.push((
            "rmdir non-empty upper dir",
            outcome_unit(&fs::remove_dir(j("u"))),
        ));
        v.push((
            "unlink missing",
            outcome_unit(&fs::remove_file(j("missing"))),
        ));
        v.push((
            "getxattr missing",
            outcome_unit(&lgetxattr(&j("f"), "user.nope")),
        ));
        v.push((
            "setxattr XATTR_CREATE existing",
            outcome_unit(&lsetxattr_flags(
                &j("f"),
                "user.have",
                b"2",
                libc::XATTR_CREATE,
            )),
        ));
        v.push((
            "setxattr XATTR_REPLACE missing",
            outcome_unit(&lsetxattr_flags(
                &j("f"),
                "user.nope",
                b"2",
                libc::XATTR_REPLACE,
            )),
        ));
        v.push((
            "setxattr bad namespace",
            outcome_unit(&lsetxattr(&j("f"), "bogus.x", b"1")),
        ));
        v.push(("mknod over existing", outcome_unit(&mkfifo(&j("f"), 0o644))));
        v.push((
            "truncate a dir",
            outcome_unit(&{
                let c = cpath(&j("d"));
                cvt(unsafe { libc::truncate(c.as_ptr(), 0) })
            }),
        ));
        let fr = fs::File::open(j("f")).unwrap();
        v.push(("write to O_RDONLY fd", outcome_unit(&(&fr).write(b"x"))));
        v.push(("ftruncate O_RDONLY fd", outcome_unit(&fr.set_len(0))));
        let dfd = fs::File::open(j("d")).unwrap();
        v.push(("read a dir fd", outcome_unit(&(&dfd).read(&mut [0u8; 8]))));
        let pf = open_fd(&j("p"), libc::O_RDWR | libc::O_NONBLOCK, 0);
        v.push(("open fifo O_RDWR", outcome_unit(&pf)));
        if let Ok(pf) = &pf {
            v.push(("lseek on fifo", outcome_unit(&lseek(pf, 0, libc::SEEK_SET))));
            let mut w: &fs::File = pf;
            let wr = w.write_all(b"via fifo");
            let mut b = [0u8; 8];
            let rd = w
                .read_exact(&mut b)
                .map(|_| String::from_utf8_lossy(&b).into_owned());
            v.push((
                "fifo write+read",
                format!("{} {}", outcome_unit(&wr), outcome(&rd)),
            ));
        }
        v.push(("rmdir mount root", outcome_unit(&fs::remove_dir(r))));
        v.into_iter()
            .map(|(a, b)| format!("{a}: {b}"))
            .collect::<Vec<_>>()
    });
    // Not comparing uppers: the kernel marks a pure-upper dir opaque before a dir rename
    // into a merged parent even when the rename then fails (ENOTDIR/ENOTEMPTY), an invisible
    // side effect ovlfuse need not copy.
    t.finish(false);
}

#[test]
fn attributes_follow_writes_and_changes() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-attr-fresh",
        &[&[E::File("f", b"0123456789"), E::File("g", b"g")]],
        &[],
        |st| {
            set_times(&st.lowers[0].join("f"), OLD_MTIME, OLD_MTIME).unwrap();
        },
    );
    t.both(
        "size and mtime seen by path while the writer keeps the fd open",
        |r| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join("f"))
                .unwrap();
            f.write_all_at(&[b'x'; 100], 50).unwrap();
            let s1 = fs::metadata(r.join("f"))
                .map(|m| (m.len(), (m.mtime(), m.mtime_nsec()) != OLD_MTIME))
                .ok();
            f.set_len(20).unwrap();
            let s2 = fs::metadata(r.join("f")).map(|m| m.len()).ok();
            let fst = f.metadata().map(|m| m.len()).ok();
            (s1, s2, fst)
        },
    );
    t.both("ctime moves on chmod", |r| {
        let before = fs::metadata(r.join("g")).unwrap();
        let c0 = (before.ctime(), before.ctime_nsec());
        std::thread::sleep(std::time::Duration::from_millis(20)); // let the clock tick, not synchronization
        fs::set_permissions(r.join("g"), fs::Permissions::from_mode(0o600)).unwrap();
        let after = fs::metadata(r.join("g")).unwrap();
        (
            (after.ctime(), after.ctime_nsec()) > c0,
            after.mode() & 0o7777,
        )
    });
    t.both("utimensat UTIME_OMIT / UTIME_NOW", |r| {
        let c = cpath(&r.join("g"));
        let ts = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 1_234_567_890,
                tv_nsec: 5,
            },
        ];
        let a = cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) });
        let m = mtime_of(&r.join("g")).ok();
        let ts2 = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        let b = cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts2.as_ptr(), 0) });
        (
            outcome_unit(&a),
            m,
            outcome_unit(&b),
            mtime_of(&r.join("g")).ok(),
        )
    });
    t.both("dir mtime changes when an entry is created", |r| {
        let d0 = mtime_of(r).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20)); // let the clock tick
        fs::write(r.join("new"), b"n").unwrap();
        mtime_of(r).unwrap() > d0
    });
    t.finish(true);
}

fn drop_kernel_caches() {
    // 2 = dentries and inodes: the FUSE client forgets its nodes (FUSE_FORGET).
    fs::write("/proc/sys/vm/drop_caches", b"2")
        .expect("write /proc/sys/vm/drop_caches (needs root)");
}

/// Held by each test that drops the kernel's caches, and by each that needs them kept
/// from one step to the next. Dropping them makes every mount forget its nodes, so one
/// such test running beside another would skew what the other measures (the memory
/// test's RSS before its own drop; what a stat finds cached after a listing).
static CACHE_DROPPERS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[test]
fn forgotten_nodes_come_back_with_the_same_identity() {
    if !fuse_available() {
        return;
    }
    let _alone = CACHE_DROPPERS.lock();
    let sc = Scratch::new("sem-forget");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File("a", b"a"),
            E::File("d/b", b"b"),
            E::Hardlink("a", "d/a2"),
            E::Symlink("s", "a"),
        ],
    );
    build(
        &st.lowers[1],
        &[E::File("d/c", b"c"), E::File("low1", b"l")],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    ok(fs::write(m.join("new"), b"new"), "create");
    ok(write_at(&m.join("d/c"), 0, b"C"), "copy-up d/c");
    ok(fs::rename(m.join("low1"), m.join("d/low1")), "rename");
    let held = ok(fs::File::open(m.join("d/b")), "open d/b");
    ok(fs::remove_file(m.join("d/b")), "unlink an open file");
    let names = ["", "a", "d", "d/a2", "s", "d/c", "d/low1", "new"];
    let before: Vec<(u64, u64, String)> = names
        .iter()
        .map(|n| {
            let md = ok(fs::symlink_metadata(m.join(n)), n);
            (
                md.ino(),
                md.nlink(),
                if md.is_file() {
                    read_str(&m.join(n))
                } else {
                    String::new()
                },
            )
        })
        .collect();
    let view = snapshot(m, XattrSel::User);
    for round in 0..3 {
        drop_kernel_caches();
        let after: Vec<(u64, u64, String)> = names
            .iter()
            .map(|n| {
                let md = ok(
                    fs::symlink_metadata(m.join(n)),
                    &format!("round {round}: stat {n} after drop_caches"),
                );
                (
                    md.ino(),
                    md.nlink(),
                    if md.is_file() {
                        read_str(&m.join(n))
                    } else {
                        String::new()
                    },
                )
            })
            .collect();
        assert_eq!(after, before, "round {round}: (ino, nlink, contents) of {names:?} changed after the kernel forgot its nodes");
        assert_same_snapshots(
            &format!("round {round}: view after drop_caches"),
            "before",
            &view,
            "after",
            &snapshot(m, XattrSel::User),
        );
        let mut s = String::new();
        (&held).read_to_string(&mut s).ok();
        let _ = s;
        let mut b = [0u8; 1];
        ok(
            held.read_at(&mut b, 0),
            "read an unlinked open file after drop_caches",
        );
        assert_eq!(&b, b"b");
    }
    drop(held);
    g.unmount();
    lc.verify();
}

/// The daemon's open descriptors.
fn open_fds(pid: u32) -> usize {
    ok(
        fs::read_dir(format!("/proc/{pid}/fd")),
        "list the daemon's fds",
    )
    .count()
}

/// Over io_uring, FORGETs still come on /dev/fuse, where the daemon lets them pile up
/// for a moment before it takes them (issue 6: one wake-up per batch, not per FORGET).
/// They must still all be taken: each removed file's node holds a descriptor to it until
/// its FORGET, so the daemon's descriptors must fall back once the files are gone.
#[test]
fn removed_files_are_forgotten_while_requests_come_over_io_uring() {
    if !fuse_uring_available() {
        return;
    }
    const FILES: usize = 300;
    let sc = Scratch::new("sem-uring-forget");
    let st = Stack::new(&sc, 1);
    lower_dir_of_empty_files(&st, FILES);
    let g = mount_ovlfuse(&st, &["uring=on"]);
    let pid = g.pid().expect("the daemon's pid");
    let m = &st.mnt;
    // The daemon returns once the mount exists; the ring threads start while it answers
    // INIT, which the first request waits for, and name themselves once running.
    ok(fs::metadata(m), "stat the mount");
    let rings = || {
        ok(
            fs::read_dir(format!("/proc/{pid}/task")),
            "list the daemon's threads",
        )
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("ring"))
        .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rings() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        rings() > 0,
        "uring=on, yet the daemon has no io_uring threads 10 s after its first answer"
    );
    ok(fs::create_dir(m.join("new")), "mkdir new");
    ok(fs::read_dir(m.join("big")), "list big");
    let before = open_fds(pid);
    for i in 0..FILES {
        ok(fs::write(m.join(format!("new/{i}")), b"x"), "create");
    }
    for i in 0..FILES {
        ok(
            fs::remove_file(m.join(format!("new/{i}"))),
            "unlink an upper file",
        );
        ok(
            fs::remove_file(m.join(format!("big/entry-{i:06}"))),
            "unlink a lower file",
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // A few more may stay open: the directories' fds kept for later requests (`big` now
    // has an upper copy too).
    let slack = 8;
    let mut now = open_fds(pid);
    while now > before + slack && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        now = open_fds(pid);
    }
    assert!(
        now <= before + slack,
        "10 s after removing {} files the daemon still holds {now} fds ({before} before): \
         their FORGETs were not taken",
        2 * FILES
    );
    assert_eq!(ok(fs::read_dir(m.join("new")), "list new").count(), 0);
    assert_eq!(ok(fs::read_dir(m.join("big")), "list big").count(), 0);
    g.unmount();
}

/// The number on the `key:` line of /proc/PID/FILE (a trailing "kB" dropped).
fn proc_number(pid: u32, file: &str, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/{file}: {}", describe_err(&e)));
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/{file}"))
}

fn rss_kib(pid: u32) -> u64 {
    proc_number(pid, "status", "VmRSS")
}

/// Memory stays bounded across FORGETs (issue 6): each cycle looks up every file of a
/// 30k-entry lower directory (a node each), creates and removes 1000 files, then has the
/// kernel forget its inodes. The daemon must give the nodes' memory back each time, and
/// not creep up from cycle to cycle.
#[test]
fn daemon_memory_stays_bounded_over_forget_cycles() {
    if !fuse_available() {
        return;
    }
    const FILES: usize = 30_000;
    let _alone = CACHE_DROPPERS.lock();
    let sc = Scratch::new("sem-soak");
    let st = Stack::new(&sc, 1);
    lower_dir_of_empty_files(&st, FILES);
    let g = mount_ovlfuse(&st, &[]);
    let pid = g.pid().expect("the daemon's pid (for its RSS)");
    let m = &st.mnt;
    let (mut after_work, mut after_forget) = (Vec::new(), Vec::new());
    for cycle in 0..6 {
        let mut n = 0;
        for e in ok(fs::read_dir(m.join("big")), "readdir big") {
            ok(fs::symlink_metadata(ok(e, "dirent").path()), "stat a file");
            n += 1;
        }
        assert_eq!(n, FILES, "cycle {cycle}: entries of big");
        let t = m.join(format!("new{cycle}"));
        ok(fs::create_dir(&t), "mkdir");
        for i in 0..1000 {
            ok(fs::File::create(t.join(i.to_string())), "create");
        }
        ok(fs::remove_dir_all(&t), "rm -r");
        after_work.push(rss_kib(pid));
        drop_kernel_caches();
        // The kernel queues its FORGETs; give the daemon a moment to take them.
        std::thread::sleep(std::time::Duration::from_millis(700));
        after_forget.push(rss_kib(pid));
    }
    g.unmount();
    eprintln!("RSS KiB after work {after_work:?}, after forget {after_forget:?}");
    assert!(
        after_forget[0] + 2048 < after_work[0],
        "forgetting {FILES} nodes gave back less than 2 MiB: {} KiB after the work, \
         {} KiB after the forget",
        after_work[0],
        after_forget[0]
    );
    let worst = after_forget[1..].iter().max().copied().unwrap_or(0);
    assert!(
        worst <= after_forget[0] + 3072,
        "RSS after a forget crept up by more than 3 MiB over {} cycles: {after_forget:?}",
        after_forget.len()
    );
}

/// Bytes the process has read with read(2)-like calls (`rchar` in /proc/PID/io); FUSE
/// requests it takes from /dev/fuse count too, but they are small.
fn rchar(pid: u32) -> u64 {
    proc_number(pid, "io", "rchar")
}

/// On a read-only overlay nothing is ever copied up, so lower files are opened with FUSE
/// passthrough (issue 6: data rows): the kernel reads them itself, through read(2), pread
/// and mmap alike, and the daemon reads none of their bytes. Needs root and a kernel with
/// FUSE passthrough (6.9 or later), as this machine has.
#[test]
fn read_only_mount_reads_lower_files_in_the_kernel() {
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 4 << 20;
    let sc = Scratch::new("sem-ro-passthrough");
    let st = Stack::new(&sc, 2);
    let mut data = vec![0u8; SIZE];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    ok(
        fs::write(st.lowers[1].join("data"), &data),
        "write lower file",
    );
    // Passthrough as the daemon decides, whatever OVLFUSE_TEST_DATA asks of other mounts.
    let g = mount_ovlfuse_ro(&st.lowers, &st.mnt, &["passthrough=auto"]);
    let pid = g.pid().expect("the daemon's pid (for its read counter)");
    let before = rchar(pid);
    let f = st.mnt.join("data");
    assert!(
        ok(fs::read(&f), "read through the mount") == data,
        "read(2) content"
    );
    let h = ok(fs::File::open(&f), "open");
    let mut buf = vec![0u8; 4096];
    ok(h.read_exact_at(&mut buf, 3 << 20), "pread");
    assert_eq!(buf, data[3 << 20..(3 << 20) + 4096], "pread content");
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            h.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        map,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, SIZE) } == &data[..];
    unsafe { libc::munmap(map, SIZE) };
    assert!(mapped, "mmap content");
    drop(h);
    let daemon_read = rchar(pid) - before;
    g.unmount();
    assert!(
        daemon_read < 1 << 20,
        "the daemon read {daemon_read} bytes while a {SIZE}-byte lower file was read through \
         a read-only mount: its reads did not go through FUSE passthrough (is the kernel \
         older than 6.9, or built without CONFIG_FUSE_PASSTHROUGH?)"
    );
}

/// Write calls the process has made (`syscw` in /proc/PID/io): our pwrites to the layers,
/// and our replies where they go to /dev/fuse.
fn write_calls(pid: u32) -> u64 {
    proc_number(pid, "io", "syscw")
}

/// Without passthrough (a daemon that is not root in the initial user namespace, or
/// `passthrough=off`), the kernel caches writes (FUSE writeback cache): 2000 writes of
/// 4 KiB reach the daemon as a few large ones, and after fsync the upper file holds them.
/// With `writeback=0` each write is a request of its own, which shows the count measures
/// what it should.
#[test]
fn small_writes_reach_the_daemon_in_batches_without_passthrough() {
    if !fuse_available() {
        return;
    }
    const N: usize = 2000;
    let data: Vec<u8> = (0..N * 4096).map(|i| (i % 253) as u8).collect();
    let mut calls = Vec::new();
    for writeback in ["writeback=1", "writeback=0"] {
        let sc = Scratch::new(&format!("sem-{}", writeback.replace('=', "")));
        let st = Stack::new(&sc, 1);
        let g = mount_ovlfuse(&st, &["passthrough=off", writeback]);
        let pid = g.pid().expect("the daemon's pid (for its write counter)");
        let mut f = ok(fs::File::create(st.mnt.join("f")), "create f");
        let before = write_calls(pid);
        for chunk in data.chunks(4096) {
            ok(f.write_all(chunk), "write 4 KiB");
        }
        ok(f.sync_all(), "fsync");
        calls.push(write_calls(pid) - before);
        drop(f);
        assert!(
            ok(fs::read(st.upper.join("f")), "read the upper file") == data,
            "{writeback}: the upper file does not hold what was written"
        );
        g.unmount();
    }
    assert!(
        calls[0] < (N / 10) as u64,
        "with the writeback cache the daemon made {} write calls for {N} writes of 4 KiB",
        calls[0]
    );
    assert!(
        calls[1] >= N as u64,
        "with writeback=0 the daemon made only {} write calls for {N} writes",
        calls[1]
    );
}

/// A listing given with names only (`listattrs=off`; by default, that of a big directory
/// whose entries the layers' caches lack) shows what one with attributes shows: the same
/// names and types, and as each entry's d_ino the st_ino a stat of it then gives; over
/// /dev/fuse and over io_uring alike. Which one went out shows when a lower file changes
/// behind the mount's back after the listing: a stat then gives the attributes the listing
/// left in the kernel's cache, or what the lookup it needs finds.
#[test]
fn listings_with_names_only_show_what_listings_with_attributes_show() {
    if !fuse_available() {
        return;
    }
    // The stats after each listing must find what it left in the kernel's cache.
    let _kept = CACHE_DROPPERS.lock();
    const N: usize = 300;
    let mut shown = Vec::new();
    let mut runs = vec![
        (["uring=off", "listattrs=on"], false),
        (["uring=off", "listattrs=off"], true),
    ];
    if fuse_uring_available() {
        runs.push((["uring=on", "listattrs=on"], false));
        runs.push((["uring=on", "listattrs=off"], true));
    }
    for (opts, names_only) in runs {
        let what = opts.join(",");
        let sc = Scratch::new(&format!("sem-names-only-{}", shown.len()));
        let st = Stack::new(&sc, 1);
        let d = st.lowers[0].join("d");
        ok(fs::create_dir_all(d.join("sub")), "mkdir lower d/sub");
        ok(std::os::unix::fs::symlink("f1", d.join("link")), "symlink");
        for i in 0..N {
            ok(
                fs::write(d.join(format!("f{i}")), vec![b'x'; i]),
                "write a lower file",
            );
        }
        ok(
            fs::set_permissions(d.join("f7"), fs::Permissions::from_mode(0o640)),
            "chmod",
        );
        let g = mount_ovlfuse(&st, &opts);
        let md = st.mnt.join("d");
        // Copied up with a new name, so that the listing merges two layers.
        ok(fs::write(md.join("new"), b"upper"), "create d/new");
        let mut list = Vec::new();
        for e in ok(fs::read_dir(&md), "list d") {
            let e = ok(e, "read a listing line");
            let kind = ok(e.file_type(), "d_type");
            list.push((e.file_name().to_string_lossy().into_owned(), e.ino(), kind));
        }
        ok(
            fs::set_permissions(d.join("f7"), fs::Permissions::from_mode(0o600)),
            "chmod lower",
        );
        for (name, ino, kind) in &list {
            let m = ok(fs::symlink_metadata(md.join(name)), "lstat a listed name");
            assert_eq!(m.ino(), *ino, "{what}: d_ino of {name} is not its st_ino");
            assert_eq!(m.file_type(), *kind, "{what}: d_type of {name}");
            if let Some(i) = name.strip_prefix('f').and_then(|i| i.parse::<u64>().ok()) {
                assert_eq!(m.len(), i, "{what}: size of {name}");
            }
            if name == "f7" {
                let want = if names_only { 0o600 } else { 0o640 };
                assert_eq!(
                    m.mode() & 0o7777,
                    want,
                    "{what}: mode of f7 after its listing"
                );
            }
        }
        g.unmount();
        let mut names: Vec<_> = list
            .into_iter()
            .map(|(n, _, k)| (n, format!("{k:?}")))
            .collect();
        names.sort();
        assert_eq!(names.len(), N + 3, "{what}: names listed");
        shown.push(names);
    }
    for (i, names) in shown.iter().enumerate().skip(1) {
        assert_eq!(
            &shown[0], names,
            "names and types: listattrs=on and off, over /dev/fuse and io_uring (run {i})"
        );
    }
}

/// With the writeback cache the kernel keeps a file's times and moves them for a
/// truncate(2) by path only where the size changes. A truncate of a lower file to the size
/// it has must then leave its copy's mtime as the mount shows it, so that the next mount
/// shows the same (it used to show the time of the truncate there, and the old one
/// here). A truncate that changes the size moves the mtime on both.
#[test]
fn truncate_to_its_own_size_keeps_the_shown_mtime_with_the_writeback_cache() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-truncate-same-size-wb");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[
            E::File("same", b"0123456789"),
            E::File("other", b"0123456789"),
        ],
    );
    let old = (1_100_000_000, 0);
    for name in ["same", "other"] {
        ok(
            set_times(&st.lowers[0].join(name), old, old),
            "set lower times",
        );
    }
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    let truncate = |name: &str, size: i64| {
        let c = cpath(&st.mnt.join(name));
        ok(cvt(unsafe { libc::truncate(c.as_ptr(), size) }), "truncate");
    };
    truncate("same", 10);
    truncate("other", 4);
    let shown = ok(mtime_of(&st.mnt.join("same")), "mtime in the mount");
    assert_eq!(
        shown, old,
        "the mount shows the truncated file's mtime as it was"
    );
    let stored = ok(mtime_of(&st.upper.join("same")), "mtime of the upper copy");
    assert_eq!(
        stored, shown,
        "the upper copy keeps the mtime the mount shows"
    );
    let other = ok(
        mtime_of(&st.mnt.join("other")),
        "mtime of the shortened file",
    );
    assert!(
        other.0 > old.0,
        "shortening a file moves its mtime: {other:?}"
    );
    assert_eq!(
        ok(
            mtime_of(&st.upper.join("other")),
            "upper mtime of the shortened file"
        ),
        other
    );
    g.unmount();
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    assert_eq!(
        ok(mtime_of(&st.mnt.join("same")), "mtime after a remount"),
        shown,
        "the next mount shows what this one showed"
    );
    g.unmount();
}

/// SEEK_DATA and SEEK_HOLE never report a hole over data the kernel still caches: with
/// the writeback cache the upper file lacks it until write-back, so the kernel answers
/// these itself from the size it keeps (all data). Without that, a sparse-aware copy (`cp`)
/// of a file just written would skip its data.
#[test]
fn seek_data_finds_data_not_yet_written_back() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-seek-data-wb");
    let st = Stack::new(&sc, 1);
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    let f = ok(
        fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(st.mnt.join("sparse")),
        "create sparse",
    );
    ok(f.write_all_at(b"data", 1 << 20), "pwrite at 1 MiB");
    let seek = |off: i64, whence: i32| {
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let data = ok(
        seek(1 << 20, libc::SEEK_DATA),
        "SEEK_DATA at the written offset",
    );
    assert!(data <= 1 << 20, "SEEK_DATA from 1 MiB went to {data}");
    let hole = ok(
        seek(1 << 20, libc::SEEK_HOLE),
        "SEEK_HOLE at the written offset",
    );
    assert!(
        hole >= (1 << 20) + 4,
        "SEEK_HOLE from 1 MiB found a hole at {hole}"
    );
    drop(f);
    g.unmount();
}

/// With the writeback cache a write(2) succeeds once its data is in the page cache. When
/// the write-back then finds the upper filesystem full, the error is not lost: fsync
/// reports ENOSPC, and so does the next write(2) while the disk is full (the kernel overlay
/// fails the write that finds the disk full). Once there is room again, writes and fsync
/// succeed, even where a write-back failed once more after the last report. The upper
/// layer is a tmpfs with room enough for cached writes when the file is opened, filled
/// from outside the overlay while it is open.
#[test]
fn failed_write_back_to_a_full_upper_layer_is_reported() {
    if !fuse_available() {
        return;
    }
    const MIB: usize = 1 << 20;
    let sc = Scratch::new("sem-writeback-full");
    let layer_fs = sc.dir("fs");
    let _tmpfs = mount_tmpfs_with(&layer_fs, "size=1100m");
    let st = Stack {
        lowers: vec![sc.dir("lower")],
        upper: layer_fs.join("upper"),
        work: layer_fs.join("work"),
        mnt: sc.dir("mnt"),
    };
    fs::create_dir(&st.upper).unwrap();
    fs::create_dir(&st.work).unwrap();
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    let mut f = ok(fs::File::create(st.mnt.join("f")), "create f");
    ok(f.write_all(b"first"), "first write");
    ok(f.sync_all(), "first fsync");

    // Leave about 1 MiB free.
    let filler = ok(fs::File::create(layer_fs.join("filler")), "create filler");
    let free_bytes = || {
        let v = ok(statvfs(&layer_fs), "statvfs");
        v.f_bavail * v.f_frsize
    };
    let free = free_bytes();
    let r = unsafe { libc::fallocate(filler.as_raw_fd(), 0, 0, (free - MIB as u64) as i64) };
    assert_eq!(r, 0, "fallocate filler: {}", io::Error::last_os_error());

    let chunk = vec![5u8; MIB / 4];
    let mut write_err = None;
    for _ in 0..32 {
        if let Err(e) = f.write_all(&chunk) {
            write_err = Some(e);
            break;
        }
    }
    let sync = f.sync_all();
    match write_err {
        Some(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "failed write: {e}"),
        None => {
            let e = sync.expect_err("8 MiB written into 1 MiB of room, and fsync succeeded");
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fsync: {e}");
            let e = f
                .write_all(&chunk)
                .expect_err("a write after the failed write-back succeeded");
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "write after fsync: {e}"
            );
        }
    }

    // A write cached while the disk is still full (one may first report a write-back
    // that failed meanwhile), whose fsync fails again: the first write after room comes
    // back must not report that write-back a second time.
    let mut cached = f.write_all(&chunk);
    if cached.is_err() {
        cached = f.write_all(&chunk);
    }
    ok(cached, "a write cached while the disk is full");
    let e = f
        .sync_all()
        .expect_err("fsync of a write cached while the disk is full");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "fsync while full: {e}"
    );

    drop(filler);
    ok(fs::remove_file(layer_fs.join("filler")), "remove filler");
    // The space comes back when the last descriptor of the filler goes: a child that another
    // test thread forks holds a copy of this one until it execs, which under load can take
    // a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while free_bytes() < 512 * MIB as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the filler's space did not come back within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok(f.write_all(b"again"), "write once there is room");
    ok(f.sync_all(), "fsync once there is room");
    drop(f);
    g.unmount();
}

#[test]
fn readdir_while_another_thread_modifies_the_directory() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-readdir-race");
    let st = Stack::new(&sc, 1);
    fs::create_dir(st.lowers[0].join("d")).unwrap();
    for i in 0..500 {
        fs::write(st.lowers[0].join(format!("d/l{i:03}")), b"").unwrap();
    }
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let d = st.mnt.join("d");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let d = d.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let i = n % 500;
                fs::write(d.join(format!("u{i:03}")), b"u")
                    .map_err(|e| format!("create u{i:03}: {}", describe_err(&e)))?;
                if i % 2 == 0 {
                    fs::remove_file(d.join(format!("l{i:03}")))
                        .or_else(|e| {
                            if e.raw_os_error() == Some(libc::ENOENT) {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| format!("unlink l{i:03}: {}", describe_err(&e)))?;
                }
                fs::remove_file(d.join(format!("u{i:03}")))
                    .map_err(|e| format!("unlink u{i:03}: {}", describe_err(&e)))?;
                n += 1;
            }
            Ok(n)
        })
    };
    // Entries that exist throughout (odd l's) must be seen exactly once in every listing.
    let stable: Vec<String> = (0..500)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("l{i:03}"))
        .collect();
    for round in 0..40 {
        let ents = match read_dir_raw(&d) {
            Ok(e) => e,
            Err(e) => panic!(
                "round {round}: readdir failed during concurrent changes: {}",
                describe_err(&e)
            ),
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in &ents {
            *counts
                .entry(e.name.to_string_lossy().into_owned())
                .or_default() += 1;
        }
        let dups: Vec<_> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| n.clone())
            .collect();
        assert!(
            dups.is_empty(),
            "round {round}: names listed twice while the dir changed: {dups:?}"
        );
        let missing: Vec<&String> = stable
            .iter()
            .filter(|n| !counts.contains_key(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: entries that never changed are missing: {missing:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("writer thread: {e}"));
    assert!(n > 0);
    let listing = ok(names(&d), "final readdir");
    // Odd lower entries stay; even ones were removed unless the writer stopped before them.
    let want: Vec<String> = (0..500)
        .filter(|i| i % 2 == 1 || *i >= n)
        .map(|i| format!("l{i:03}"))
        .collect();
    assert_eq!(
        listing, want,
        "final listing: only the odd lower entries remain"
    );
    g.unmount();
    lc.verify();
}
