//! Permissions, set-id bits and capabilities, immutable and append-only objects, and
//! concurrent or odd file lifetimes.

use super::*;

#[test]
fn permission_checks_for_an_unprivileged_user() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    let t = twin(
        "sem-perms",
        &[&[
            E::File("secret", b"s"),
            E::Mode("secret", 0o600),
            E::File("public", b"p"),
            E::Mode("public", 0o644),
            E::File("mine", b"m"),
            E::Owner("mine", NOBODY, NOBODY),
            E::Mode("mine", 0o600),
            E::Dir("pub"),
            E::Mode("pub", 0o777),
            E::File("sticky/rootfile", b"r"),
            E::Mode("sticky/rootfile", 0o666),
            E::Mode("sticky", 0o1777),
            E::File("world", b"w"),
            E::Mode("world", 0o666),
            E::File("closed/x", b"x"),
            E::Mode("closed", 0o700),
            E::File("exec", b"#!/bin/sh\n"),
            E::Mode("exec", 0o755),
        ]],
        &[],
    );
    let ops = |r: &Path| -> Vec<Op> {
        let c = |n: &str| cpath(&r.join(n));
        vec![
            Op::Open(c("secret"), libc::O_RDONLY),
            Op::Open(c("public"), libc::O_RDONLY),
            Op::Open(c("public"), libc::O_WRONLY),
            Op::Mkdir(c("newdir")),
            Op::Open(c("pub/new"), libc::O_CREAT | libc::O_WRONLY),
            Op::Unlink(c("sticky/rootfile")),
            Op::Chmod(c("public"), 0o666),
            Op::Open(c("mine"), libc::O_RDWR),
            Op::Chmod(c("mine"), 0o640),
            Op::Open(c("world"), libc::O_WRONLY | libc::O_TRUNC),
            Op::Access(c("exec"), libc::X_OK),
            Op::Access(c("public"), libc::X_OK),
            Op::Access(c("public"), libc::W_OK),
            Op::Open(c("closed/x"), libc::O_RDONLY),
            Op::Rename(c("public"), c("pub/p")),
            Op::Mkdir(c("pub/d")),
            Op::UtimesNow(c("world")),
            Op::UtimesNow(c("public")),
            Op::Setxattr(c("public")),
            Op::Setxattr(c("mine")),
            Op::Unlink(c("pub/new")),
        ]
    };
    let labels = [
        "open secret 0600 RDONLY",
        "open public 0644 RDONLY",
        "open public 0644 WRONLY",
        "mkdir in root-owned 0755 dir",
        "create in 0777 dir",
        "unlink root's file in sticky dir",
        "chmod root's file",
        "open own 0600 file RDWR (copy-up)",
        "chmod own file",
        "open 0666 file O_TRUNC (copy-up)",
        "access X_OK on 0755",
        "access X_OK on 0644",
        "access W_OK on 0644",
        "open below a 0700 root dir",
        "rename out of root-owned dir",
        "mkdir in 0777 dir",
        "utimes(NULL) on 0666 file",
        "utimes(NULL) on 0644 root file",
        "setxattr user.x on root's 0644 file",
        "setxattr user.x on own file",
        "unlink own new file",
    ];
    let res = t.both_ret("operations as uid/gid 65534", |r| {
        let res = run_as(NOBODY, NOBODY, &ops(r));
        labels
            .iter()
            .zip(res)
            .map(|(l, r)| format!("{l}: {r}"))
            .collect::<Vec<_>>()
    });
    // Both agree; make sure they agree on the obvious answers too.
    let eacces = errno_name(libc::EACCES);
    let eperm = errno_name(libc::EPERM);
    for (i, want) in [
        (0, eacces.as_str()),
        (1, "ok"),
        (2, &eacces),
        (3, &eacces),
        (4, "ok"),
        (5, &eperm),
        (6, &eperm),
        (7, "ok"),
        (13, &eacces),
    ] {
        assert_eq!(
            res[i],
            format!("{}: {want}", labels[i]),
            "unprivileged user, both implementations"
        );
    }
    t.both("owner of files created by the unprivileged user", |r| {
        stat_str(&r.join("pub/d"))
    });
    t.finish(true);
}

#[test]
fn concurrent_copy_up_of_one_file_and_of_siblings() {
    if !fuse_available() {
        return;
    }
    let lower: Vec<E> = vec![
        E::File("f", &[b'l'; 8 * 4096]),
        E::File("d/f0", b"0"),
        E::File("d/f1", b"1"),
        E::File("d/f2", b"2"),
        E::File("d/f3", b"3"),
        E::File("d/f4", b"4"),
        E::File("d/f5", b"5"),
        E::File("d/f6", b"6"),
        E::File("d/f7", b"7"),
    ];
    let t = twin("sem-concurrent", &[&lower[..]], &[]);
    t.both("8 threads write one lower file", |r| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hs: Vec<_> = (0..8u8)
            .map(|i| {
                let p = r.join("f");
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let f = fs::OpenOptions::new().write(true).open(&p)?;
                    f.write_all_at(&[b'A' + i; 4096], i as u64 * 4096)
                })
            })
            .collect();
        let res: Vec<String> = hs
            .into_iter()
            .map(|h| outcome_unit(&h.join().unwrap()))
            .collect();
        let data = fs::read(r.join("f")).unwrap_or_default();
        let chunks: Vec<String> = data
            .chunks(4096)
            .map(|c| {
                if c.iter().all(|b| *b == c[0]) {
                    (c[0] as char).to_string()
                } else {
                    "mixed".into()
                }
            })
            .collect();
        (res, chunks)
    });
    t.both("8 threads copy up siblings in one lower dir", |r| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let p = r.join(format!("d/f{i}"));
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    lsetxattr(&p, "user.t", format!("{i}").as_bytes())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| outcome_unit(&h.join().unwrap()))
            .collect::<Vec<_>>()
    });
    t.finish(true);
}

#[test]
fn large_file_roundtrip_and_copy_up() {
    if !fuse_available() {
        return;
    }
    let mut x: u64 = 0x1234_5678;
    let big: Vec<u8> = (0..(6 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t = twin("sem-large", &[&[E::File("lowbig", &big)]], &[]);
    t.both("write 6 MiB through the mount and read it back", |r| {
        let w = fs::write(r.join("newbig"), &big);
        let back = fs::read(r.join("newbig")).map(|v| v == big);
        (outcome_unit(&w), outcome(&back))
    });
    t.both("append to a 6 MiB lower file", |r| {
        let a = fs::OpenOptions::new()
            .append(true)
            .open(r.join("lowbig"))
            .and_then(|mut f| f.write_all(b"END"));
        let back = fs::read(r.join("lowbig"))
            .map(|v| v.len() == big.len() + 3 && v[..big.len()] == big[..] && v.ends_with(b"END"));
        (outcome_unit(&a), outcome(&back))
    });
    t.finish(true);
}

/// Each xattr call and inode-flags ioctl through the descriptor of a removed file, one
/// result per step.
fn fd_attr_steps(fd: i32) -> Vec<String> {
    let name = |n: &str| std::ffi::CString::new(n).unwrap();
    let get = |n: &str| {
        let mut buf = [0u8; 64];
        let r = cvt(unsafe {
            libc::fgetxattr(fd, name(n).as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        });
        match r {
            Ok(len) => format!("{n}={:?}", String::from_utf8_lossy(&buf[..len as usize])),
            Err(e) => format!("{n}: {}", outcome_unit::<()>(&Err(e))),
        }
    };
    let list = || {
        let mut buf = [0u8; 256];
        match cvt(unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(len) => {
                let mut names: Vec<_> = buf[..len as usize]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                names.sort();
                format!("list {names:?}")
            }
            Err(e) => format!("list: {}", outcome_unit::<()>(&Err(e))),
        }
    };
    let set =
        cvt(unsafe { libc::fsetxattr(fd, name("user.fd").as_ptr(), b"1".as_ptr().cast(), 1, 0) });
    let mut out = vec![format!("set {}", outcome_unit(&set))];
    out.extend([get("user.fd"), get("user.low"), list()]);
    let rm = cvt(unsafe { libc::fremovexattr(fd, name("user.fd").as_ptr()) });
    out.extend([format!("remove {}", outcome_unit(&rm)), list()]);
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    const FS_NOATIME_FL: libc::c_long = 0x80;
    let get_flags = || {
        let mut v: libc::c_long = 0;
        cvt(unsafe { libc::ioctl(fd, FS_IOC_GETFLAGS as _, &mut v) }).map(|_| v)
    };
    let shown = |r: io::Result<libc::c_long>| match r {
        Ok(v) => format!("noatime {}", v & FS_NOATIME_FL != 0),
        Err(e) => format!("flags: {}", outcome_unit::<()>(&Err(e))),
    };
    let before = get_flags();
    let set = before
        .as_ref()
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0)))
        .and_then(|v| {
            let mut v = v | FS_NOATIME_FL;
            cvt(unsafe { libc::ioctl(fd, FS_IOC_SETFLAGS as _, &mut v) })
        });
    out.extend([
        shown(before),
        format!("set noatime {}", outcome_unit(&set)),
        shown(get_flags()),
    ]);
    out
}

/// Extended attributes and inode flags read and written through the descriptor of a
/// removed file or directory reach it, as on the kernel overlay, whether it was a lower
/// file copied up by its open, an upper file or directory, or a lower file or directory
/// never copied up (which a write cannot copy up any more: EEXIST, ENOTDIR). They once
/// reached whatever held the old name: a whiteout (EPERM, an empty list, ENXIO for the
/// ioctls) or nothing (ENOENT).
#[test]
fn xattrs_and_flags_through_a_descriptor_of_a_removed_file_match_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-fd-xattr-removed",
        &[&[
            E::File("ro", b"r"),
            E::Xattr("ro", "user.low", b"l"),
            E::File("rw", b"w"),
            E::Xattr("rw", "user.low", b"l"),
            E::Dir("dl"),
            E::Xattr("dl", "user.low", b"l"),
        ]],
        &[E::File("up", b"u"), E::Dir("du")],
    );
    let dir = libc::O_RDONLY | libc::O_DIRECTORY;
    for (name, flags) in [
        ("ro", libc::O_RDONLY),
        ("rw", libc::O_RDWR),
        ("up", libc::O_RDWR),
        ("dl", dir),
        ("du", dir),
    ] {
        t.both(
            &format!("xattrs through a descriptor of removed {name}"),
            |r| {
                let f = open_fd(&r.join(name), flags, 0).unwrap();
                let un = if flags == dir {
                    fs::remove_dir(r.join(name))
                } else {
                    fs::remove_file(r.join(name))
                };
                let mut steps = vec![format!("remove {}", outcome_unit(&un))];
                steps.extend(fd_attr_steps(f.as_raw_fd()));
                steps
            },
        );
    }
    t.finish(true);
}

#[test]
fn open_files_survive_unlink_and_rename() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-open-unlink",
        &[&[E::File("f", b"lower data"), E::File("g", b"gg")]],
        &[E::File("u", b"upper data")],
    );
    t.both("read a lower file after unlinking it", |r| {
        let mut f = fs::File::open(r.join("f")).unwrap();
        let un = fs::remove_file(r.join("f"));
        let mut s = String::new();
        let rd = f.read_to_string(&mut s);
        (
            outcome_unit(&un),
            outcome_unit(&rd),
            s,
            f.metadata().map(|m| m.len()).ok(),
        )
    });
    t.both("write+read an upper file after unlinking it", |r| {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("u"))
            .unwrap();
        let un = fs::remove_file(r.join("u"));
        let w = f.write_all(b"UPPER");
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        let rd = f.read_to_string(&mut s);
        (outcome_unit(&un), outcome_unit(&w), outcome_unit(&rd), s)
    });
    t.both("fd follows a file in a renamed upper dir", |r| {
        let mk = fs::create_dir(r.join("n")).and_then(|_| fs::write(r.join("n/f"), b"nf"));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("n/f"))
            .unwrap();
        let rn = fs::rename(r.join("n"), r.join("n2"));
        let w = f.write_all_at(b"NF", 0);
        drop(f);
        (
            outcome_unit(&mk),
            outcome_unit(&rn),
            outcome_unit(&w),
            read_str(&r.join("n2/f")),
            names_or_err(&r.join("n2")),
        )
    });
    t.both("fd follows a renamed file", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("g"))
            .unwrap();
        let rn = fs::rename(r.join("g"), r.join("g2"));
        let w = f.write_all_at(b"G", 0);
        drop(f);
        (outcome_unit(&rn), outcome_unit(&w), read_str(&r.join("g2")))
    });
    t.finish(true);
}

#[test]
fn directory_attribute_changes_copy_up_the_directory() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-dir-attrs",
        &[&[
            E::File("d/x", b"x"),
            E::File("e/y", b"y"),
            E::File("g/z", b"z"),
            E::Xattr("g", "user.g", b"1"),
        ]],
        &[],
        |st| set_times(&st.lowers[0].join("e"), OLD_MTIME, OLD_MTIME).unwrap(),
    );
    t.both("chmod lower dir", |r| {
        outcome_unit(&fs::set_permissions(
            r.join("d"),
            fs::Permissions::from_mode(0o711),
        ))
    });
    t.both("chown lower dir", |r| {
        outcome_unit(&lchown(&r.join("g"), 5, 6))
    });
    t.both("mtime of a lower dir after chown of another", |r| {
        outcome(&mtime_of(&r.join("e")))
    });
    t.both("utimes lower dir", |r| {
        outcome_unit(&set_times(&r.join("e"), (1, 0), (1_500_000_000, 0)))
    });
    t.both("stat", |r| ["d", "e", "g"].map(|n| stat_str(&r.join(n))));
    t.both("mtime after utimes", |r| outcome(&mtime_of(&r.join("e"))));
    t.both("contents still merged", |r| {
        ["d", "e", "g"].map(|n| names_or_err(&r.join(n)))
    });
    t.finish(true);
}

#[test]
fn o_tmpfile_matches_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-tmpfile", &[&[E::Dir("d"), E::File("d/x", b"x")]], &[]);
    t.both("O_TMPFILE in a merged dir", |r| {
        let f = open_fd(&r.join("d"), libc::O_TMPFILE | libc::O_RDWR, 0o600);
        match f {
            Err(e) => vec![format!(
                "open: {}",
                errno_name(e.raw_os_error().unwrap_or(0))
            )],
            Ok(f) => {
                let w = f.write_all_at(b"tmp", 0);
                let l = link_open_file(f.as_raw_fd(), &r.join("d/linked"));
                vec![
                    "open: ok".into(),
                    outcome_unit(&w),
                    outcome_unit(&l),
                    read_str(&r.join("d/linked")),
                ]
            }
        }
    });
    t.finish(true);
}

/// O_TMPFILE's other cases, against the kernel: a file opened with O_EXCL cannot be given
/// a name; the link count goes from 0 to 1 when one is given; a name over a lower file's
/// whiteout; the umask and the set-group-ID rules of a new file; a closed unnamed file
/// leaves nothing in the upper layer or the workdir; a file in a lower-only directory
/// copies that directory up (and only that).
#[test]
fn o_tmpfile_corner_cases_match_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-tmpfile-corners",
        &[&[
            E::Dir("d"),
            E::File("d/x", b"x"),
            E::Dir("d/sub"),
            E::File("gone", b"lower"),
            E::Dir("g"),
        ]],
        &[],
    );
    let link = |f: &fs::File, to: &Path| outcome_unit(&link_open_file(f.as_raw_fd(), to));
    let nlink = |f: &fs::File| {
        f.metadata()
            .map(|m| m.nlink())
            .map_err(|e| errno_name(e.raw_os_error().unwrap_or(0)))
    };
    t.both("O_EXCL: never named", |r| {
        let f = open_fd(
            &r.join("d"),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_EXCL,
            0o600,
        )
        .expect("O_TMPFILE|O_EXCL");
        (
            nlink(&f),
            link(&f, &r.join("d/excl")),
            stat_str(&r.join("d/excl")),
        )
    });
    t.both("named over a whiteout, link count 0 then 1", |r| {
        let _ = fs::remove_file(r.join("gone"));
        let f = open_fd(r, libc::O_TMPFILE | libc::O_WRONLY, 0o644).expect("O_TMPFILE");
        let before = nlink(&f);
        let w = outcome_unit(&f.write_all_at(b"new", 0));
        let l = link(&f, &r.join("gone"));
        let same = fs::symlink_metadata(r.join("gone")).map(|m| m.ino()).ok()
            == f.metadata().map(|m| m.ino()).ok();
        (
            before,
            w,
            l,
            nlink(&f),
            same,
            read_str(&r.join("gone")),
            stat_str(&r.join("gone")),
        )
    });
    t.both("umask and set-group-ID", |r| {
        let old = unsafe { libc::umask(0o027) };
        let f = open_fd(&r.join("d/sub"), libc::O_TMPFILE | libc::O_RDWR, 0o2777);
        unsafe { libc::umask(old) };
        let f = f.expect("O_TMPFILE");
        let mode = f.metadata().map(|m| m.mode()).ok();
        (
            mode,
            link(&f, &r.join("d/sub/m")),
            stat_str(&r.join("d/sub/m")),
        )
    });
    t.both("closed without a name", |r| {
        let f = open_fd(&r.join("g"), libc::O_TMPFILE | libc::O_RDWR, 0o600).expect("O_TMPFILE");
        let w = outcome_unit(&f.write_all_at(&[7u8; 100_000], 0));
        drop(f);
        (w, names_or_err(&r.join("g")))
    });
    t.compare_views("after the unnamed files");
    t.finish_with(true, |_, f| {
        // The closed unnamed file's space is freed, and nothing of it is left behind.
        let left: Vec<_> = fs::read_dir(f.upper.join("g")).unwrap().collect();
        assert!(left.is_empty(), "upper g holds {left:?}");
        // (The shared whiteout that removals link to stays, as on the kernel.)
        let work: Vec<_> = fs::read_dir(f.work.join("work"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            work.iter().all(|n| n == "#whiteout"),
            "the workdir holds {work:?}"
        );
    });
}

#[test]
fn setgid_directories_and_umask_for_new_files() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    let t = twin(
        "sem-setgid-umask",
        &[&[
            E::Dir("sg"),
            E::Owner("sg", 0, 4242),
            E::Mode("sg", 0o2777),
            E::Dir("plain"),
            E::Mode("plain", 0o777),
        ]],
        &[],
    );
    t.both("create as nobody with umask 027", |r| {
        let c = |n: &str| cpath(&r.join(n));
        run_as(
            NOBODY,
            NOBODY,
            &[
                Op::Umask(0o027),
                Op::Open(c("sg/f"), libc::O_CREAT | libc::O_WRONLY),
                Op::Mkdir(c("sg/d")),
                Op::Open(c("plain/f"), libc::O_CREAT | libc::O_WRONLY),
                Op::Mkdir(c("plain/d")),
            ],
        )
    });
    t.both("resulting owners and modes", |r| {
        ["sg/f", "sg/d", "plain/f", "plain/d"].map(|n| stat_str(&r.join(n)))
    });
    t.finish(true);
}

/// A chmod keeps set-group-ID only for a member of the file's group, and a supplementary
/// group counts (we read it from /proc: FUSE does not pass it).
#[test]
fn chmod_keeps_setgid_for_members_of_the_group_only() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    let t = twin(
        "sem-setgid-groups",
        &[&[
            E::File("member", b"m"),
            E::Owner("member", NOBODY, 4242),
            E::File("outsider", b"o"),
            E::Owner("outsider", NOBODY, 4242),
        ]],
        &[],
    );
    t.both("chmod 2755 as nobody, in group 4242 or not", |r| {
        let c = |n: &str| cpath(&r.join(n));
        let mut res = run_as_in(NOBODY, NOBODY, &[4242], &[Op::Chmod(c("member"), 0o2755)]);
        res.extend(run_as(NOBODY, NOBODY, &[Op::Chmod(c("outsider"), 0o2755)]));
        res
    });
    let modes = t.both_ret("resulting modes", |r| {
        ["member", "outsider"].map(|n| fs::metadata(r.join(n)).unwrap().mode() & 0o7777)
    });
    assert_eq!(
        modes,
        [0o2755, 0o755],
        "member keeps the bit, outsider loses it"
    );
    t.finish(true);
}

#[test]
fn inode_flags_ioctl_matches_kernel() {
    if !fuse_available() {
        return;
    }
    // lsattr/chattr go through FS_IOC_GETFLAGS/SETFLAGS; kernel overlayfs forwards them.
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x80086601;
    let t = twin(
        "sem-ioctl-flags",
        &[&[E::File("f", b"f"), E::Dir("d")]],
        &[E::File("u", b"u")],
    );
    t.both("FS_IOC_GETFLAGS", |r| {
        ["f", "d", "u"].map(|n| {
            let f = fs::File::open(r.join(n)).unwrap();
            let mut flags: libc::c_long = 0;
            let rr = cvt(unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) });
            format!(
                "{n}: {} {:#x}",
                outcome_unit(&rr),
                if rr.is_ok() { flags } else { 0 }
            )
        })
    });
    t.finish(true);
}

#[test]
fn setuid_bits_and_file_capabilities_follow_kernel_rules() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    // security.capability v2: magic|effective, permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    cap.extend(0x0200_0001u32.to_le_bytes());
    cap.extend((1u32 << 13).to_le_bytes());
    cap.extend(0u32.to_le_bytes());
    cap.extend(0u32.to_le_bytes());
    cap.extend(0u32.to_le_bytes());
    let c2 = cap.clone();
    let t = twin_with(
        "sem-privs",
        &[&[
            E::File("ping", b"\x7fELF fake ping"),
            E::Mode("ping", 0o755),
            E::File("ping2", b"\x7fELF fake ping 2"),
            E::Mode("ping2", 0o755),
            E::File("suid", b"suid"),
            E::Mode("suid", 0o4755),
            E::File("sgid", b"sgid"),
            E::Mode("sgid", 0o2755),
            E::File("opensuid", b"world writable suid"),
            E::Mode("opensuid", 0o4777),
            E::File("latersuid", b"made setuid while open"),
            E::Mode("latersuid", 0o777),
            E::File("capsuid", b"setuid with a capability"),
            E::Mode("capsuid", 0o6755),
            E::File("capsuid2", b"setuid with a capability, chowned"),
            E::Mode("capsuid2", 0o6755),
            E::File("suid2", b"setuid, chowned"),
            E::Mode("suid2", 0o4755),
        ]],
        &[],
        move |st| {
            for n in ["ping", "ping2", "capsuid", "capsuid2"] {
                lsetxattr(&st.lowers[0].join(n), "security.capability", &c2).unwrap();
            }
        },
    );
    t.both("file capability visible", |r| {
        outcome(&lgetxattr(&r.join("ping"), "security.capability"))
    });
    t.both("copy-up keeps the capability", |r| {
        (
            outcome_unit(&lsetxattr(&r.join("ping"), "user.x", b"1")),
            outcome(&lgetxattr(&r.join("ping"), "security.capability")),
        )
    });
    t.both("write drops the capability", |r| {
        (
            outcome_unit(&write_at(&r.join("ping2"), 0, b"X")),
            outcome(&lgetxattr(&r.join("ping2"), "security.capability")),
        )
    });
    // Both reach ovlfuse as the same requests: a REMOVEXATTR, then an empty SETATTR.
    t.both(
        "a write by root drops the capability and keeps set-ID bits",
        |r| {
            (
                outcome_unit(&write_at(&r.join("capsuid"), 0, b"X")),
                outcome(&lgetxattr(&r.join("capsuid"), "security.capability")),
                stat_str(&r.join("capsuid")),
            )
        },
    );
    t.both(
        "chown(-1, -1) by root drops the capability and set-ID bits",
        |r| {
            let f = std::fs::File::open(r.join("suid2")).unwrap();
            (
                outcome_unit(&lchown(&r.join("capsuid2"), u32::MAX, u32::MAX)),
                outcome(&lgetxattr(&r.join("capsuid2"), "security.capability")),
                stat_str(&r.join("capsuid2")),
                unsafe { libc::fchown(f.as_raw_fd(), u32::MAX, u32::MAX) },
                stat_str(&r.join("suid2")),
            )
        },
    );
    t.both("chown clears setuid/setgid", |r| {
        (
            outcome_unit(&lchown(&r.join("suid"), 1, 1)),
            outcome_unit(&lchown(&r.join("sgid"), 2, 2)),
            stat_str(&r.join("suid")),
            stat_str(&r.join("sgid")),
        )
    });
    t.both("an unprivileged write clears setuid", |r| {
        (
            run_as(
                NOBODY,
                NOBODY,
                &[Op::Open(
                    cpath(&r.join("opensuid")),
                    libc::O_WRONLY | libc::O_APPEND,
                )],
            ),
            {
                // run_as only opens; write as nobody too:
                let c = cpath(&r.join("opensuid"));
                let mut pipe = [0i32; 2];
                unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    unsafe {
                        become_or_exit(NOBODY, NOBODY, &[]);
                        let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                        let ok = fd >= 0
                            && libc::write(fd, b"+".as_ptr() as *const libc::c_void, 1) == 1;
                        libc::_exit(if ok { 0 } else { 1 });
                    }
                }
                let mut status = 0;
                unsafe {
                    libc::close(pipe[0]);
                    libc::close(pipe[1]);
                    libc::waitpid(pid, &mut status, 0);
                }
                (libc::WEXITSTATUS(status), stat_str(&r.join("opensuid")))
            },
        )
    });
    t.both(
        "a file made setuid while open for writing loses the bit on an unprivileged write",
        |r| {
            // Opened before the chmod, the file may be written through the upper file
            // directly (FUSE passthrough); the write must still clear the bit.
            let c = cpath(&r.join("latersuid"));
            let (mut opened, mut go) = ([0i32; 2], [0i32; 2]);
            unsafe {
                libc::pipe2(opened.as_mut_ptr(), libc::O_CLOEXEC);
                libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC);
            }
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe {
                    become_or_exit(NOBODY, NOBODY, &[]);
                    let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                    let mut b = [0u8; 1];
                    libc::write(opened[1], b.as_ptr() as *const libc::c_void, 1);
                    libc::read(go[0], b.as_mut_ptr() as *mut libc::c_void, 1);
                    let ok =
                        fd >= 0 && libc::write(fd, b"+".as_ptr() as *const libc::c_void, 1) == 1;
                    libc::_exit(if ok { 0 } else { 1 });
                }
            }
            let mut b = [0u8; 1];
            let mut status = 0;
            let chmod = unsafe {
                libc::read(opened[0], b.as_mut_ptr() as *mut libc::c_void, 1);
                let res = libc::chmod(c.as_ptr(), 0o4777);
                libc::write(go[1], b.as_ptr() as *const libc::c_void, 1);
                libc::waitpid(pid, &mut status, 0);
                for fd in opened.iter().chain(go.iter()) {
                    libc::close(*fd);
                }
                res
            };
            (
                chmod,
                libc::WEXITSTATUS(status),
                stat_str(&r.join("latersuid")),
            )
        },
    );
    t.finish(true);
}

/// Clears the append-only and immutable flags of the given lower paths when dropped, then
/// removes the scratch directories holding them, which their own cleanup could not.
struct Unprotect(std::cell::RefCell<Vec<PathBuf>>);

impl Drop for Unprotect {
    fn drop(&mut self) {
        for p in self.0.borrow().iter() {
            let _ = set_inode_flags(p, 0);
            let Ok(rel) = p.strip_prefix(TEST_ROOT) else {
                continue;
            };
            if let Some(top) = rel.components().next() {
                let top = Path::new(TEST_ROOT).join(top);
                if mounts_below(&top, true).is_empty() {
                    let _ = fs::remove_dir_all(&top);
                }
            }
        }
    }
}

/// Changes to objects of a lower layer that carry the immutable or append-only attribute
/// (set in the layer itself), for [`lower_immutable_and_append_only_objects_as_on_the_kernel`].
fn protected_lower_ops(m: &Path) -> Vec<String> {
    let p = |n: &str| m.join(n);
    let open = |n: &str, flags: i32| outcome_unit(&open_fd(&p(n), flags, 0o644));
    vec![
        open("ifile", libc::O_WRONLY),
        open("ifile", libc::O_RDONLY),
        open("afile", libc::O_WRONLY),
        open("afile", libc::O_WRONLY | libc::O_APPEND | libc::O_TRUNC),
        outcome_unit(
            &fs::OpenOptions::new()
                .write(true)
                .open(p("ifile"))
                .and_then(|f| f.set_len(0)),
        ),
        outcome_unit(&cvt(unsafe {
            libc::truncate(cpath(&p("afile")).as_ptr(), 0)
        })),
        outcome_unit(&fs::set_permissions(
            p("ifile"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&fs::set_permissions(
            p("afile"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&set_times(&p("afile"), (1, 0), (1, 0))),
        outcome_unit(&lsetxattr(&p("ifile"), "user.x", b"1")),
        outcome_unit(&lsetxattr(&p("afile"), "user.x", b"1")),
        outcome_unit(&lremovexattr(&p("afile"), "user.x")),
        outcome_unit(&fs::hard_link(p("ifile"), p("ilink"))),
        outcome_unit(&fs::hard_link(p("afile"), p("alink"))),
        outcome_unit(&fs::remove_file(p("ifile"))),
        outcome_unit(&fs::remove_file(p("afile"))),
        outcome_unit(&fs::rename(p("ifile"), p("i2"))),
        outcome_unit(&fs::rename(p("plain"), p("ifile"))),
        open("idir/new", libc::O_WRONLY | libc::O_CREAT),
        open("idir/f", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        outcome_unit(&fs::create_dir(p("idir/d"))),
        outcome_unit(&fs::remove_file(p("idir/f"))),
        outcome_unit(&fs::rename(p("plain"), p("idir/x"))),
        outcome_unit(&fs::remove_file(p("adir/f"))),
        outcome_unit(&fs::remove_dir(p("adir/sub"))),
        outcome_unit(&fs::rename(p("adir/f"), p("adir/g"))),
        // What they allow: appending (which copies the file up), new entries in an
        // append-only directory (which copies it up); after that, the copies refuse the
        // same changes.
        outcome_unit(
            &fs::OpenOptions::new()
                .append(true)
                .open(p("afile"))
                .and_then(|mut f| f.write_all(b"+")),
        ),
        open("adir/new", libc::O_WRONLY | libc::O_CREAT),
        open("afile", libc::O_WRONLY),
        outcome_unit(&fs::remove_file(p("adir/f"))),
        outcome_unit(&fs::remove_file(p("adir/new"))),
        read_str(&p("afile")),
        format!("{:?}", names_or_err(&p("adir"))),
    ]
}

#[test]
fn lower_immutable_and_append_only_objects_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    const SYNC: u32 = 0x08;
    const NOATIME: u32 = 0x80;
    // xfstests overlay/075 and 078: the attributes of lower objects hold through the
    // overlay, and a copy keeps them (the kernel in its protattr xattr).
    let protected = Unprotect(Default::default());
    let t = twin_with(
        "sem-lower-iflags",
        &[&[
            E::File("ifile", b"i"),
            E::File("afile", b"a"),
            E::File("plain", b"p"),
            E::File("idir/f", b"f"),
            E::File("adir/f", b"f"),
            E::Dir("adir/sub"),
            E::File("sfile", b"s"),
        ]],
        &[],
        |st| {
            set_inode_flags(&st.lowers[0].join("sfile"), SYNC | NOATIME).unwrap();
            for (n, f) in [
                ("ifile", IMMUTABLE),
                ("idir", IMMUTABLE),
                ("afile", APPEND),
                ("adir", APPEND),
            ] {
                let path = st.lowers[0].join(n);
                protected.0.borrow_mut().push(path.clone());
                set_inode_flags(&path, f).expect("chattr in a lower layer on ext4");
            }
        },
    );
    t.both("changes to protected lower objects", protected_lower_ops);
    let flags_of = |r: &Path| {
        ["ifile", "afile", "idir", "adir"]
            .map(|n| {
                open_fd(&r.join(n), libc::O_RDONLY | libc::O_NONBLOCK, 0).and_then(|f| {
                    let mut v: libc::c_long = 0;
                    cvt(unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut v) })
                        .map(|_| v & (IMMUTABLE | APPEND) as libc::c_long)
                })
            })
            .map(|r| outcome(&r))
    };
    t.both("lsattr through the mount", flags_of);
    t.both("a copy keeps sync and no-atime", |r| {
        let chmod = fs::set_permissions(r.join("sfile"), fs::Permissions::from_mode(0o600));
        let flags = open_fd(&r.join("sfile"), libc::O_RDONLY, 0).and_then(|f| {
            let mut v: libc::c_long = 0;
            cvt(unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut v) })
                .map(|_| v & (SYNC | NOATIME) as libc::c_long)
        });
        (outcome_unit(&chmod), outcome(&flags))
    });
    t.finish_with(true, |k, f| {
        // The copies keep them across a remount, in the same attribute.
        for (who, st) in [("kernel", k), ("ovlfuse", f)] {
            for n in ["afile", "adir"] {
                assert_eq!(
                    outcome(&lgetxattr(&st.upper.join(n), "trusted.overlay.protattr")),
                    "ok: [97]",
                    "{who}: the copy of {n} records append-only"
                );
            }
        }
        let kg = mount_kernel(k);
        let fg = mount_ovlfuse(f, &[]);
        let again = |r: &Path| {
            (
                outcome_unit(&open_fd(&r.join("afile"), libc::O_WRONLY, 0)),
                outcome_unit(&fs::remove_file(r.join("adir/f"))),
                outcome_unit(&open_fd(
                    &r.join("adir/new2"),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o644,
                )),
                flags_of(r),
            )
        };
        assert_eq!(
            again(&f.mnt),
            again(&k.mnt),
            "after a remount: ovlfuse (left), kernel (right)"
        );
        fg.unmount();
        kg.unmount();
    });
    drop(protected);
}

/// ftruncate through a descriptor opened before `chattr +i`: the VFS checks only
/// append-only there, so the kernel overlay extends the file. With the writeback cache the
/// kernel sends the truncate's times along with the size; ovlfuse refused those as a
/// change of times to an immutable file (EPERM; random seed 200067009).
#[test]
fn ftruncate_through_a_descriptor_opened_before_chattr_i_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const IMMUTABLE: u32 = 0x10;
    let mut shown = Vec::new();
    for (who, opts) in [
        ("kernel", None),
        ("ovlfuse", Some(&[][..])),
        ("ovlfuse passthrough=off", Some(&["passthrough=off"][..])),
    ] {
        let sc = Scratch::new("sem-ftruncate-after-chattr-i");
        let st = Stack::new(&sc, 1);
        build(&st.lowers[0], &[E::File("f", b"12345678")]);
        let lc = LowerCheck::new(&st.lowers);
        let g = match opts {
            None => mount_kernel(&st),
            Some(o) => mount_ovlfuse(&st, o),
        };
        let f = ok(
            fs::OpenOptions::new().append(true).open(st.mnt.join("f")),
            "open O_WRONLY|O_APPEND",
        );
        ok(set_inode_flags(&st.mnt.join("f"), IMMUTABLE), "chattr +i");
        let r = outcome_unit(&f.set_len(100));
        let size = ok(fs::metadata(st.mnt.join("f")), "stat").len();
        drop(f);
        ok(set_inode_flags(&st.mnt.join("f"), 0), "chattr -i");
        g.unmount();
        lc.verify();
        shown.push((who, r, size));
    }
    for (who, r, size) in &shown[1..] {
        assert_eq!(
            (r, size),
            (&shown[0].1, &shown[0].2),
            "{who}: ftruncate and size, against the kernel overlay's"
        );
    }
    assert_eq!(shown[0].2, 100, "the kernel overlay extends the file");
}

#[test]
fn append_only_and_immutable_files_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    let prep = |st: &Stack| {
        fs::write(st.lowers[0].join("log"), b"one\n").unwrap();
        fs::create_dir_all(st.lowers[0].join("frozen/sub")).unwrap();
        fs::write(st.lowers[0].join("frozen/sub/f"), b"x").unwrap();
        fs::write(st.lowers[0].join("frozen/g"), b"x").unwrap();
    };
    let results = kernel_then_ovlfuse("sem-iflags", "", prep, |m, _| {
        let mut r = Vec::new();
        r.push(outcome_unit(&set_inode_flags(&m.join("log"), APPEND)));
        r.push(outcome_unit(&open_fd(&m.join("log"), libc::O_WRONLY, 0)));
        r.push(outcome_unit(&open_fd(
            &m.join("log"),
            libc::O_RDWR | libc::O_TRUNC,
            0,
        )));
        let app = open_fd(&m.join("log"), libc::O_WRONLY | libc::O_APPEND, 0);
        r.push(outcome_unit(&app));
        if let Ok(mut a) = app {
            r.push(outcome_unit(&a.write_all(b"two\n")));
        }
        r.push(format!("{:?}", fs::read(m.join("log")).ok()));
        r.push(outcome_unit(&fs::remove_file(m.join("log"))));
        r.push(outcome_unit(&set_inode_flags(&m.join("frozen"), IMMUTABLE)));
        r.push(outcome_unit(&fs::remove_dir(m.join("frozen/sub"))));
        r.push(outcome_unit(&fs::remove_file(m.join("frozen/g"))));
        // (rmdir of a file there is EPERM on the kernel but ENOTDIR on any FUSE mount: the
        // VFS checks the type before the request reaches ovlfuse; see README.)
        r.push(outcome_unit(&fs::write(m.join("frozen/new"), b"")));
        // An append-only file takes a change of its times to now (touch), not to a given
        // time (with the writeback cache, the kernel sends the former as a given time).
        let log =
            std::ffi::CString::new(m.join("log").into_os_string().into_encoded_bytes()).unwrap();
        let given = [libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        }; 2];
        for times in [std::ptr::null(), given.as_ptr()] {
            let rc = unsafe { libc::utimensat(libc::AT_FDCWD, log.as_ptr(), times, 0) };
            r.push(outcome_unit(&if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }));
        }
        // Clear the flags so that everything can be removed again.
        r.push(outcome_unit(&set_inode_flags(&m.join("frozen"), 0)));
        r.push(outcome_unit(&set_inode_flags(&m.join("log"), 0)));
        r.push(outcome_unit(&fs::remove_file(m.join("log"))));
        r
    });
    assert_eq!(
        results[1], results[0],
        "ovlfuse (left) vs kernel overlayfs (right)"
    );
    // And what the kernel says is what the VFS promises.
    assert_eq!(results[0][1], "err: EPERM (1)", "{:?}", results[0]);
    assert_eq!(results[0][8], "err: EPERM (1)", "{:?}", results[0]);
}
