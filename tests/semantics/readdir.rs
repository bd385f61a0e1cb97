//! Merged directory listings: duplicates, whiteouts hidden, `.` and `..`, d_type, d_ino,
//! offsets, long names, interleaved streams.

use super::*;

#[test]
fn readdir_merges_names_once_with_right_types_and_inodes() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-readdir",
        &[
            &[
                E::File("x", b"file over dir"),
                E::File("dir1/y", b"y"),
                E::File("both", b"l0"),
                E::Symlink("sym0", "x"),
                E::Dir("x2"),
                E::File("dir1/both", b"l0"),
            ],
            &[
                E::Dir("x/inner"),
                E::File("x2", b"dir over file"),
                E::File("a", b"a"),
                E::File("both", b"l1"),
                E::File("dir1/x", b"x"),
                E::File("dir1/both", b"l1"),
                E::Symlink("sym", "a"),
                E::Fifo("fifo"),
                E::File("hid", b"h"),
                E::File("dir1/hid", b"h"),
                E::Hardlink("a", "a_link"),
            ],
        ],
        &[
            E::File("c", b"c"),
            E::Whiteout("hid"),
            E::Whiteout("dir1/hid"),
            E::File("dir1/z", b"z"),
            E::Dir("u"),
            E::File("both", b"up"),
        ],
    );
    for d in [".", "dir1", "x2", "u"] {
        let (kp, kl) = readdir_check(&t.km().join(d));
        let (fp, fl) = readdir_check(&t.fm().join(d));
        if !kp.is_empty() {
            // The kernel (samefs, xino=off) does not always report d_ino == st_ino for
            // merged subdirectories; ovlfuse promises it does.
            eprintln!("note: kernel readdir of {d}: {kp:?}");
        }
        assert!(
            fp.is_empty(),
            "ovlfuse readdir of {d} has problems:\n  {}",
            fp.join("\n  ")
        );
        assert_eq!(
            fl, kl,
            "readdir of {d}: ovlfuse (left) vs kernel (right) (name, d_type)"
        );
    }
    // Readdir after changes in the same directory stream's lifetime.
    t.both("unlink + create + readdir", |r| {
        let a = outcome_unit(&fs::remove_file(r.join("both")));
        let b = outcome_unit(&fs::write(r.join("fresh"), b"f"));
        (a, b, readdir_check(r))
    });
    t.finish(true);
}

#[test]
fn readdir_of_100k_entries_and_telldir_seekdir() {
    if !fuse_available() {
        return;
    }
    const N: usize = 100_000;
    let sc = Scratch::new("sem-readdir-100k");
    let st = Stack::new(&sc, 1);
    lower_dir_of_empty_files(&st, N);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let dir = st.mnt.join("big");
    let c = cpath(&dir);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(
        !d.is_null(),
        "opendir: {}",
        describe_err(&io::Error::last_os_error())
    );
    let all = telldir_all(d);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, _) in &all {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| format!("{n} x{c}"))
        .take(20)
        .collect();
    assert!(dups.is_empty(), "names returned more than once: {dups:?}");
    let missing: Vec<String> = (0..N)
        .map(|i| format!("entry-{i:06}"))
        .filter(|n| !counts.contains_key(n.as_str()))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "{} entries read; missing e.g. {missing:?}",
        all.len()
    );
    assert!(
        counts.contains_key(".") && counts.contains_key(".."),
        ". or .. missing"
    );
    assert_eq!(all.len(), N + 2, "entry count");
    // seekdir back to remembered positions, in scrambled order.
    let idx = [
        all.len() - 1,
        1,
        0,
        77_777,
        4095,
        2,
        50_000,
        99_999,
        1000,
        33_333,
        65_536,
    ];
    for &i in &idx {
        unsafe { libc::seekdir(d, all[i].1) };
        for j in i..(i + 5).min(all.len()) {
            let got = next_name(d);
            assert_eq!(
                got.as_deref(),
                Some(all[j].0.as_str()),
                "after seekdir to the position of entry #{i} ({:?}), read #{j}",
                all[i].0
            );
        }
        if i == all.len() - 1 {
            assert_eq!(next_name(d), None, "end of directory after the last entry");
        }
    }
    unsafe { libc::rewinddir(d) };
    assert_eq!(
        next_name(d).as_deref(),
        Some(all[0].0.as_str()),
        "first entry after rewinddir"
    );
    // A second, independent stream sees the same sequence.
    let d2 = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d2.is_null());
    let again: Vec<String> = telldir_all(d2).into_iter().map(|(n, _)| n).collect();
    let first: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        again == first,
        "a second full readdir returned a different sequence ({} vs {} names)",
        again.len(),
        first.len()
    );
    unsafe {
        libc::closedir(d);
        libc::closedir(d2);
    }
    g.unmount();
    lc.verify();
}

/// Reads one getdents64 batch of at most `buf_len` bytes: (name, d_off) pairs.
fn getdents_batch(fd: i32, buf_len: usize) -> io::Result<Vec<(String, i64)>> {
    let mut buf = vec![0u8; buf_len];
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < n as usize {
        // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
        let off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
        let name = &buf[at + 19..at + reclen];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        out.push((String::from_utf8_lossy(&name[..end]).into_owned(), off));
        at += reclen;
    }
    Ok(out)
}

#[test]
fn readdir_resumed_on_a_new_descriptor_lists_unchanged_entries_once_while_others_change() {
    if !fuse_available() {
        return;
    }
    // Readdir keeps no per-open state: an offset is a cookie that stays valid while the
    // directory changes, even on another descriptor (as NFS and telldir users need). The
    // guarantee is POSIX's: an entry present all along is listed exactly once; one added
    // or removed meanwhile may or may not be. `strictatime` keeps OPENDIR in use, the
    // default skips it; both must hold it.
    for opts in [&[][..], &["strictatime"][..]] {
        const N: usize = 3000;
        let sc = Scratch::new("sem-readdir-cookies");
        let st = Stack::new(&sc, 1);
        lower_dir_of_empty_files(&st, N);
        // Part of the directory is in the upper layer too, so the listing is merged.
        ok(fs::create_dir(st.upper.join("big")), "mkdir upper big");
        for i in 0..300 {
            ok(
                fs::File::create(st.upper.join(format!("big/up-{i:04}"))),
                "create an upper file",
            );
        }
        let lc = LowerCheck::new(&st.lowers);
        let g = mount_ovlfuse(&st, opts);
        let dir = st.mnt.join("big");
        let open = || ok(fs::File::open(&dir), "open big");
        let (mut listed, mut removed) = (Vec::<String>::new(), BTreeSet::<String>::new());
        let (mut f, mut round) = (open(), 0usize);
        loop {
            let batch = ok(getdents_batch(f.as_raw_fd(), 700), "getdents64");
            let Some(&(_, last_off)) = batch.last() else {
                break;
            };
            listed.extend(batch.into_iter().map(|(n, _)| n));
            // Between batches: add a name, remove a lower one from the far end (usually
            // not listed yet), remove an upper one listed early, remove a name added before.
            ok(fs::File::create(dir.join(format!("new-{round}"))), "create");
            for gone in [
                format!("entry-{:06}", N - 1 - round),
                format!("up-{:04}", round % 300),
            ] {
                if removed.insert(gone.clone()) {
                    ok(fs::remove_file(dir.join(&gone)), "unlink");
                }
            }
            if round % 3 == 2 {
                let gone = format!("new-{}", round / 3);
                removed.insert(gone.clone());
                ok(fs::remove_file(dir.join(&gone)), "unlink a new file");
            }
            // Go on through a fresh descriptor from the last offset seen.
            f = open();
            let at = unsafe { libc::lseek(f.as_raw_fd(), last_off, libc::SEEK_SET) };
            assert_eq!(at, last_off, "lseek to d_off {last_off} ({opts:?})");
            round += 1;
        }
        assert!(
            round > 20,
            "only {round} batches: the test needs many ({opts:?})"
        );
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &listed {
            *counts.entry(n.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
        assert!(
            twice.is_empty(),
            "listed more than once ({opts:?}): {twice:?}"
        );
        let stayed = (0..N)
            .map(|i| format!("entry-{i:06}"))
            .chain((0..300).map(|i| format!("up-{i:04}")))
            .chain([".".to_string(), "..".to_string()])
            .filter(|n| !removed.contains(n));
        let missing: Vec<String> = stayed
            .filter(|n| !counts.contains_key(n.as_str()))
            .collect();
        assert!(missing.is_empty(), "never listed ({opts:?}): {missing:?}");
        // A full listing afterwards agrees with what the directory now holds.
        let mut now: Vec<String> = ok(fs::read_dir(&dir), "read_dir")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        now.sort();
        let expect_len = N + 300 + round - removed.len();
        assert_eq!(
            now.len(),
            expect_len,
            "entries after the changes ({opts:?})"
        );
        assert!(
            now.iter().all(|n| !removed.contains(n)),
            "a removed name is listed"
        );
        drop(f);
        g.unmount();
        lc.verify();
    }
}

/// fsync and fdatasync of directories, with no OPENDIR behind the descriptor (the kernel
/// then sends FSYNCDIR without a handle): upper, merged, lower-only and root directories,
/// after a change in them, agree with the kernel overlay.
#[test]
fn fsync_of_directories_matches_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-fsyncdir",
        &[&[
            E::Dir("lower_only"),
            E::Dir("merged"),
            E::File("merged/a", b"a"),
        ]],
        &[
            E::Dir("upper_only"),
            E::Dir("merged"),
            E::File("merged/b", b"b"),
        ],
    );
    for d in ["upper_only", "merged", "lower_only", "."] {
        t.both(&format!("fsync and fdatasync of {d}"), |m| {
            let dir = m.join(d);
            let made = fs::write(dir.join(format!("new-in-{}", d.len())), b"x");
            let f = fs::File::open(&dir);
            let synced = f
                .as_ref()
                .map(|f| (outcome_unit(&f.sync_all()), outcome_unit(&f.sync_data())));
            (outcome_unit(&made), synced.map_err(|e| e.raw_os_error()))
        });
    }
    t.compare_views("after the fsyncs");
    t.finish(true);
}

#[test]
fn readdir_of_many_long_names() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-long-names",
        &[&[E::Dir("d")], &[E::Dir("d")]],
        &[E::Dir("d")],
        |st| {
            for i in 0..1500 {
                let base = format!("{i:04}-{}", "n".repeat(200 + i % 50));
                let layer = match i % 3 {
                    0 => &st.lowers[0],
                    1 => &st.lowers[1],
                    _ => &st.upper,
                };
                fs::write(layer.join("d").join(&base), b"").unwrap();
                if i % 5 == 0 {
                    fs::write(st.lowers[1].join("d").join(&base), b"dup").unwrap_or(());
                }
            }
        },
    );
    t.both("names", |r| {
        names_or_err(&r.join("d")).map(|v| (v.len(), v))
    });
    t.both("seekdir", |r| check_seekdir(&r.join("d")));
    t.finish(true);
}

fn read_some(d: *mut libc::DIR, n: usize, out: &mut Vec<String>) -> bool {
    for _ in 0..n {
        match next_name(d) {
            Some(x) => out.push(x),
            None => return false,
        }
    }
    true
}

#[test]
fn many_open_directory_streams_read_interleaved() {
    if !fuse_available() {
        return;
    }
    // More open merged directories, and more entries in open listings, than ovlfuse keeps
    // cached (8192 directories / 400k entries): every stream must still list its directory
    // exactly once, whatever was evicted while it was half-read.
    const DIRS: usize = 9000;
    const BIG: usize = 60_000;
    let sc = Scratch::new("sem-many-streams");
    let st = Stack::new(&sc, 2);
    for i in 0..DIRS {
        fs::create_dir(st.lowers[0].join(format!("d{i:04}"))).unwrap();
        fs::create_dir(st.lowers[1].join(format!("d{i:04}"))).unwrap();
        fs::write(st.lowers[0].join(format!("d{i:04}/a")), b"").unwrap();
        fs::write(st.lowers[1].join(format!("d{i:04}/b")), b"").unwrap();
    }
    for l in 0..2 {
        fs::create_dir(st.lowers[l].join("big")).unwrap();
        for i in 0..BIG {
            fs::write(st.lowers[l].join(format!("big/l{l}-{i:05}")), b"").unwrap();
        }
    }
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    // Part 1: 9000 merged directories open at once, read in two rounds.
    let mut streams = Vec::new();
    for i in 0..DIRS {
        let c = cpath(&st.mnt.join(format!("d{i:04}")));
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir d{i:04}: {}",
            describe_err(&io::Error::last_os_error())
        );
        let mut got = Vec::new();
        read_some(d, 2, &mut got);
        streams.push((d, got));
    }
    let mut bad = Vec::new();
    for (i, (d, got)) in streams.iter_mut().enumerate() {
        while read_some(*d, 1, got) {}
        got.sort();
        if *got != [".", "..", "a", "b"] {
            bad.push(format!("d{i:04}: {got:?}"));
        }
        unsafe { libc::closedir(*d) };
    }
    assert!(
        bad.is_empty(),
        "{} of {DIRS} interleaved listings wrong, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // Part 2: four streams over one 120k-entry merged directory, read in turns.
    let c = cpath(&st.mnt.join("big"));
    let mut big: Vec<(*mut libc::DIR, Vec<String>, bool)> = (0..4)
        .map(|_| {
            let d = unsafe { libc::opendir(c.as_ptr()) };
            assert!(!d.is_null());
            (d, Vec::new(), true)
        })
        .collect();
    while big.iter().any(|b| b.2) {
        for (k, b) in big.iter_mut().enumerate() {
            if b.2 {
                b.2 = read_some(b.0, 5000 + 777 * k, &mut b.1);
            }
        }
    }
    for (k, (d, names, _)) in big.iter_mut().enumerate() {
        unsafe { libc::closedir(*d) };
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "stream {k}: duplicates in the big listing");
        assert_eq!(n, 2 * BIG + 2, "stream {k}: entry count of the big listing");
    }
    g.unmount();
    lc.verify();
}

/// A directory listed, then moved to another parent, lists the new parent's number as
/// `..`: the kernel's FUSE client keeps its cached listing across the rename (nothing in
/// the directory changed), so ovlfuse must drop it. Random seed 200132055.
#[test]
fn dot_dot_of_a_directory_moved_elsewhere_is_its_new_parent() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-moved-dotdot",
        &[&[E::Dir("a"), E::Dir("c"), E::Dir("low/sub")]],
        &[],
    );
    t.both("moves after a listing", |r| {
        let dotdot = |dir: &str| {
            let listed = read_dir_raw(&r.join(dir))
                .unwrap()
                .into_iter()
                .find(|e| e.name == "..")
                .map(|e| e.ino);
            let parent = Path::new(dir).parent().unwrap();
            listed == Some(fs::metadata(r.join(parent)).unwrap().ino())
        };
        fs::create_dir(r.join("a/b")).unwrap();
        let before = (dotdot("a/b"), dotdot("low/sub"));
        fs::rename(r.join("a/b"), r.join("c/x")).unwrap();
        fs::rename(r.join("low/sub"), r.join("c/y")).unwrap();
        (before, dotdot("c/x"), dotdot("c/y"))
    });
    t.finish(true);
}
