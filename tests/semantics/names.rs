//! Hard links, special files, symlinks and odd or over-long names.

use super::*;

fn ino_nlink(p: &Path) -> Result<(u64, u64), String> {
    fs::symlink_metadata(p)
        .map(|m| (m.ino(), m.nlink()))
        .map_err(|e| describe_err(&e))
}

#[test]
fn hard_link_of_lower_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-link",
        &[&[E::File("a", b"lower a"), E::File("d/b", b"b")]],
        &[],
    );
    t.both("link a -> a2", |r| {
        outcome_unit(&fs::hard_link(r.join("a"), r.join("a2")))
    });
    t.both("link into subdir", |r| {
        outcome_unit(&fs::hard_link(r.join("a"), r.join("d/a3")))
    });
    t.both("link over existing", |r| {
        outcome_unit(&fs::hard_link(r.join("a"), r.join("d/b")))
    });
    for root in [t.km(), t.fm()] {
        let (i1, n1) = ino_nlink(&root.join("a")).unwrap();
        let (i2, n2) = ino_nlink(&root.join("a2")).unwrap();
        let (i3, n3) = ino_nlink(&root.join("d/a3")).unwrap();
        assert!(
            i1 == i2 && i2 == i3,
            "{root:?}: st_ino differs across hard-linked names: {i1} {i2} {i3}"
        );
        assert!(
            n1 == 3 && n2 == 3 && n3 == 3,
            "{root:?}: st_nlink should be 3 on all names: {n1} {n2} {n3}"
        );
    }
    t.both("write through one name, read through the other", |r| {
        (
            outcome_unit(&write_at(&r.join("a2"), 0, b"LINKED")),
            read_str(&r.join("a")),
            read_str(&r.join("d/a3")),
        )
    });
    t.both("unlink one name", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("a"))),
            ino_nlink(&r.join("a2")).map(|x| x.1),
        )
    });
    t.finish(true);
}

#[test]
fn lower_hard_linked_pair_shows_nlink_2_and_one_inode() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-lower-links",
        &[&[
            E::File("a", b"pair"),
            E::Hardlink("a", "sub/b"),
            E::File("single", b"s"),
        ]],
        &[],
    );
    t.both("nlink of the pair", |r| {
        (
            ino_nlink(&r.join("a")).map(|x| x.1),
            ino_nlink(&r.join("sub/b")).map(|x| x.1),
        )
    });
    for root in [t.km(), t.fm()] {
        let (i1, _) = ino_nlink(&root.join("a")).unwrap();
        let (i2, _) = ino_nlink(&root.join("sub/b")).unwrap();
        assert_eq!(
            i1, i2,
            "{root:?}: a lower hard-linked pair must show one st_ino"
        );
    }
    // With index=off the kernel copies up only the name written to (the link is broken).
    t.both("write through one name of the pair", |r| {
        let w = fs::OpenOptions::new()
            .append(true)
            .open(r.join("a"))
            .and_then(|mut f| f.write_all(b"+more"));
        (
            outcome_unit(&w),
            read_str(&r.join("a")),
            read_str(&r.join("sub/b")),
            ino_nlink(&r.join("a")).map(|x| x.1),
            ino_nlink(&r.join("sub/b")).map(|x| x.1),
        )
    });
    t.finish(true);
}

#[test]
fn symlinks_and_readlink() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-symlink",
        &[&[
            E::Symlink("ls", "target/of/lower"),
            E::Symlink("abs", "/etc/hostname"),
            E::File("f", b"f"),
        ]],
        &[],
    );
    t.both("readlink lower symlink", |r| {
        outcome(&fs::read_link(r.join("ls")))
    });
    t.both("create symlink", |r| {
        outcome_unit(&std::os::unix::fs::symlink("f", r.join("new")))
    });
    t.both("create long symlink", |r| {
        outcome_unit(&std::os::unix::fs::symlink(
            "x".repeat(4000),
            r.join("long"),
        ))
    });
    t.both("readlink new", |r| {
        (
            outcome(&fs::read_link(r.join("new"))),
            read_str(&r.join("new")),
        )
    });
    t.both("readlink long", |r| {
        outcome(&fs::read_link(r.join("long")).map(|p| p.as_os_str().len()))
    });
    t.both("readlink of a file", |r| {
        outcome(&fs::read_link(r.join("f")))
    });
    t.both("lchown lower symlink (copy-up)", |r| {
        outcome_unit(&lchown(&r.join("ls"), 9, 9))
    });
    t.both("symlink over existing", |r| {
        outcome_unit(&std::os::unix::fs::symlink("f", r.join("ls")))
    });
    t.finish(true);
}

#[test]
fn mknod_fifo_char_block_socket() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-mknod", &[&[E::File("f", b"f")]], &[]);
    t.both("mkfifo", |r| outcome_unit(&mkfifo(&r.join("fifo"), 0o640)));
    t.both("mknod char 1:3", |r| {
        outcome_unit(&mknod(&r.join("chr"), libc::S_IFCHR | 0o600, makedev(1, 3)))
    });
    t.both("mknod block 7:0", |r| {
        outcome_unit(&mknod(&r.join("blk"), libc::S_IFBLK | 0o600, makedev(7, 0)))
    });
    t.both("mknod regular", |r| {
        outcome_unit(&mknod(&r.join("reg"), libc::S_IFREG | 0o644, 0))
    });
    t.both("bind a unix socket", |r| {
        outcome_unit(&std::os::unix::net::UnixListener::bind(r.join("sock")))
    });
    t.both("mknod over existing", |r| {
        outcome_unit(&mkfifo(&r.join("f"), 0o644))
    });
    t.both("stat all", |r| {
        ["fifo", "chr", "blk", "reg", "sock"].map(|n| stat_str(&r.join(n)))
    });
    t.both("rdev", |r| {
        ["chr", "blk"].map(|n| fs::symlink_metadata(r.join(n)).map(|m| m.rdev()).ok())
    });
    t.finish(true);
}

#[test]
fn names_of_255_bytes_work_and_256_is_enametoolong() {
    if !fuse_available() {
        return;
    }
    let n255 = "n".repeat(255);
    let l255 = "l".repeat(255);
    let d255 = "d".repeat(255);
    let n256 = "x".repeat(256);
    let inner = format!("{d255}/inner");
    let lower_entries = [E::File(&l255, b"lower long"), E::File(&inner, b"i")];
    let t = twin("sem-names", &[&lower_entries], &[]);
    t.both("create 255", |r| {
        outcome_unit(&fs::write(r.join(&n255), b"long"))
    });
    t.both("stat 255", |r| stat_str(&r.join(&n255)));
    t.both("readdir lists 255", names_or_err);
    t.both("rename 255 -> 255", |r| {
        outcome_unit(&fs::rename(r.join(&n255), r.join(n255.replace('n', "m"))))
    });
    t.both("unlink lower 255", |r| {
        outcome_unit(&fs::remove_file(r.join(&l255)))
    });
    t.both("write in 255 dir", |r| {
        outcome_unit(&fs::write(r.join(&d255).join(&n255), b"x"))
    });
    t.both("create 256", |r| {
        outcome_unit(&fs::write(r.join(&n256), b"x"))
    });
    t.both("stat 256", |r| {
        outcome_unit(&fs::symlink_metadata(r.join(&n256)))
    });
    t.both("mkdir 256", |r| {
        outcome_unit(&fs::create_dir(r.join(&n256)))
    });
    t.both("symlink 256", |r| {
        outcome_unit(&std::os::unix::fs::symlink("x", r.join(&n256)))
    });
    t.both("rename to 256", |r| {
        outcome_unit(&fs::rename(r.join(n255.replace('n', "m")), r.join(&n256)))
    });
    expect_errno(
        fs::write(t.fm().join(&n256), b"x"),
        libc::ENAMETOOLONG,
        "ovlfuse: create with a 256-byte name",
    );
    assert!(
        is_whiteout(&t.f.upper.join(&l255)),
        "whiteout of a 255-byte name must keep the name"
    );
    t.both("unlink 255", |r| {
        outcome_unit(&fs::remove_file(r.join(n255.replace('n', "m"))))
    });
    t.finish(true);
}

/// openat() relative to a directory fd.
fn openat(dir: &fs::File, name: &str, flags: i32, mode: u32) -> io::Result<fs::File> {
    let c = std::ffi::CString::new(name).unwrap();
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(unsafe { <fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) })
    }
}

const DEEP_LEVELS: usize = 24;

fn deep_name(i: usize) -> String {
    format!("{i:02}{}", "d".repeat(198))
}

#[test]
fn paths_longer_than_path_max() {
    if !fuse_available() {
        return;
    }
    // 24 levels of 200-byte names: the tree is ~4.8 KiB deep, beyond PATH_MAX, so it can
    // only be walked with *at() calls. Kernel overlayfs has no depth limit.
    let t = twin_with("sem-deep", &[&[E::Dir("top")]], &[], |st| {
        let mut d = fs::File::open(st.lowers[0].join("top")).unwrap();
        for i in 0..DEEP_LEVELS {
            let n = std::ffi::CString::new(deep_name(i)).unwrap();
            assert_eq!(
                unsafe { libc::mkdirat(d.as_raw_fd(), n.as_ptr(), 0o755) },
                0,
                "mkdirat level {i}"
            );
            d = openat(&d, &deep_name(i), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        }
        let mut f = openat(&d, "leaf", libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
        f.write_all(b"deep lower leaf").unwrap();
        openat(&d, "other", libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
    });
    t.both("walk, copy up, create and remove at the bottom", |r| {
        let mut d = fs::File::open(r.join("top")).unwrap();
        for i in 0..DEEP_LEVELS {
            d = match openat(&d, &deep_name(i), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(x) => x,
                Err(e) => return vec![format!("walk level {i}: {}", describe_err(&e))],
            };
        }
        let mut v = Vec::new();
        let leaf = openat(&d, "leaf", libc::O_RDWR, 0);
        v.push(format!("open leaf O_RDWR: {}", outcome_unit(&leaf)));
        if let Ok(mut leaf) = leaf {
            v.push(format!("write: {}", outcome_unit(&leaf.write_all(b"DEEP"))));
            let mut s = String::new();
            leaf.seek(SeekFrom::Start(0)).unwrap();
            let rd = leaf.read_to_string(&mut s);
            v.push(format!("read: {} {s:?}", outcome_unit(&rd)));
        }
        let n = std::ffi::CString::new("newdir").unwrap();
        v.push(format!(
            "mkdirat: {}",
            outcome_unit(&cvt(unsafe {
                libc::mkdirat(d.as_raw_fd(), n.as_ptr(), 0o755)
            }))
        ));
        let o = std::ffi::CString::new("other").unwrap();
        v.push(format!(
            "unlinkat other: {}",
            outcome_unit(&cvt(unsafe {
                libc::unlinkat(d.as_raw_fd(), o.as_ptr(), 0)
            }))
        ));
        // readdir of the bottom directory through /proc/self/fd (a short path).
        let pfd = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd()));
        v.push(format!("names: {:?}", names_or_err(&pfd)));
        v
    });
    t.finish(true);
}

/// Two names of one lower file show one inode: the lower file's st_ino and link count,
/// as on the kernel overlay, through a lookup and through a listing, on read-only and
/// read-write mounts. (Over io_uring, a swapped entry/attribute lifetime once showed
/// the daemon's internal node id as st_ino for one of the names.)
#[test]
fn hard_links_in_a_lower_layer_show_the_lower_inode_through_every_name() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-lower-links");
    let st = Stack::new(&sc, 1);
    let d = st.lowers[0].join("data");
    ok(fs::create_dir(&d), "mkdir");
    ok(fs::write(d.join("hard"), b"content"), "write");
    ok(fs::hard_link(d.join("hard"), d.join("moved")), "link");
    let want = ok(fs::metadata(d.join("hard")), "lower stat");
    for ro in [true, false] {
        // On a fresh mount each: names found by lookup, then by a listing (READDIRPLUS).
        // (Not by dropping the kernel's caches, which would disturb tests running beside
        // this one.)
        for pass in ["lookup", "listing"] {
            let g = if ro {
                mount_ovlfuse_ro(&st.lowers, &st.mnt, &[])
            } else {
                mount_ovlfuse(&st, &[])
            };
            let m = st.mnt.join("data");
            if pass == "listing" {
                let listed: Vec<_> = ok(fs::read_dir(&m), "readdir")
                    .map(|e| {
                        let e = e.unwrap();
                        (e.file_name(), e.ino())
                    })
                    .collect();
                assert_eq!(listed.len(), 2, "ro={ro}: entries of data");
                for (name, d_ino) in &listed {
                    assert_eq!(*d_ino, want.ino(), "ro={ro}: d_ino of data/{name:?}");
                }
            }
            for name in ["hard", "moved"] {
                let md = ok(fs::symlink_metadata(m.join(name)), "stat");
                assert_eq!(
                    (md.ino(), md.nlink()),
                    (want.ino(), want.nlink()),
                    "ro={ro}, {pass}: st_ino and st_nlink of data/{name}"
                );
            }
            drop(g);
        }
    }
}
