//! File I/O: reads, writes, truncation, mappings, attributes set through open descriptors,
//! executing from the mount.

use super::*;

#[test]
fn statfs_reports_the_upper_file_system() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-statfs");
    let st = Stack::new(&sc, 1);
    build(&st.lowers[0], &[E::File("f", b"f")]);
    let g = mount_ovlfuse(&st, &[]);
    let s = ok(statvfs(&st.mnt), "statvfs of the mount");
    let u = ok(statvfs(&st.upper), "statvfs of upper");
    assert!(
        s.f_bsize > 0 && s.f_frsize > 0,
        "statvfs block sizes are zero"
    );
    assert_eq!(s.f_namemax, 255, "f_namemax");
    assert_eq!(
        s.f_blocks as u128 * s.f_frsize as u128,
        u.f_blocks as u128 * u.f_frsize as u128,
        "total size must be the upper file system's"
    );
    let fsv = ok(statvfs(&st.mnt.join("f")), "statvfs of a file in the mount");
    assert_eq!(fsv.f_blocks, s.f_blocks);
    g.unmount();
    // Read-only view works too.
    let g = mount_ovlfuse_ro(&st.lowers, &st.mnt, &[]);
    let s = ok(statvfs(&st.mnt), "statvfs of a read-only view");
    assert!(s.f_bsize > 0);
    g.unmount();
}

/// `name_to_handle_at(2)` as on the kernel overlay without `nfs_export`: a plain call fails
/// with EOPNOTSUPP, so no one is handed a handle that `open_by_handle_at` could resolve only
/// while the kernel still caches the inode; a handle that only identifies the file
/// (`AT_HANDLE_FID`, what fanotify reports) is given, and cannot be opened.
#[test]
fn file_handles_identify_files_but_do_not_open_them_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-file-handles",
        &[&[E::Dir("d"), E::File("d/f", b"lower"), E::File("g", b"g")]],
        &[],
    );
    t.both("copy up g", |r| {
        outcome_unit(&fs::OpenOptions::new().append(true).open(r.join("g")))
    });
    t.both("create n", |r| {
        outcome_unit(&fs::write(r.join("n"), b"new"))
    });
    for name in ["", "d", "d/f", "g", "n"] {
        t.both(&format!("name_to_handle_at {name:?}"), |r| {
            outcome_unit(&name_to_handle(&r.join(name), 0))
        });
        t.both(
            &format!("AT_HANDLE_FID then open_by_handle_at {name:?}"),
            |r| {
                let fid = name_to_handle(&r.join(name), AT_HANDLE_FID);
                let opened = match &fid {
                    Ok(h) => outcome_unit(&open_by_handle(r, h)),
                    Err(_) => "no handle".to_string(),
                };
                (outcome_unit(&fid), opened)
            },
        );
    }
    t.finish(true);
}

/// `AT_HANDLE_FID` in <fcntl.h> (Linux 6.5).
const AT_HANDLE_FID: i32 = 0x200;

/// A `struct file_handle` (handle_bytes, handle_type, then up to MAX_HANDLE_SZ bytes) for
/// `p`, from `name_to_handle_at(2)` with `flags`.
fn name_to_handle(p: &Path, flags: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf is a struct file_handle with room for the 128 bytes it announces; the
    // path is a C string and mount_id a live local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

/// `open_by_handle_at(2)` of `handle` on the mount at `mnt`, read-only.
fn open_by_handle(mnt: &Path, handle: &[u8]) -> io::Result<fs::File> {
    let m = fs::File::open(mnt)?;
    // SAFETY: handle is a struct file_handle filled in by name_to_handle_at.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            handle.as_ptr(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us and owned by no one else.
    Ok(unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

#[test]
fn fallocate_matches_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-fallocate", &[&[E::File("f", &[b'a'; 20000])]], &[]);
    t.both("fallocate new file", |r| {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(r.join("new"))
            .unwrap();
        let a = cvt(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) });
        let b = cvt(unsafe {
            libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20)
        });
        let m = f.metadata().unwrap();
        (
            outcome_unit(&a),
            outcome_unit(&b),
            m.len(),
            m.blocks() >= 2048,
        )
    });
    t.both("punch hole in lower file", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("f"))
            .unwrap();
        let a = cvt(unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4096,
                8192,
            )
        });
        let mut buf = vec![0u8; 20000];
        f.read_exact_at(&mut buf, 0).unwrap();
        let zeros = buf.iter().filter(|b| **b == 0).count();
        (outcome_unit(&a), f.metadata().unwrap().len(), zeros)
    });
    t.both("extend lower file", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("f"))
            .unwrap();
        let a = cvt(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 65536) });
        (outcome_unit(&a), f.metadata().unwrap().len())
    });
    t.finish(true);
}

#[test]
fn seek_data_and_seek_hole() {
    if !fuse_available() {
        return;
    }
    const MIB: u64 = 1 << 20;
    // Not under the writeback cache, where the kernel answers these from its own size (no
    // holes; see README and `seek_data_finds_data_not_yet_written_back`).
    let opts = &["passthrough=auto"];
    let t = twin_with_opts(
        "sem-seek",
        &[&[E::File("placeholder", b"p")]],
        &[],
        opts,
        |st| {
            // A sparse lower file: data at 0 and 1 MiB, size 3 MiB.
            let f = fs::File::create(st.lowers[0].join("sparse")).unwrap();
            f.set_len(3 * MIB).unwrap();
            f.write_all_at(&[b'x'; 4096], 0).unwrap();
            f.write_all_at(&[b'y'; 4096], MIB).unwrap();
        },
    );
    let probe = |r: &Path, name: &str| -> Vec<String> {
        let f = match fs::File::open(r.join(name)) {
            Ok(f) => f,
            Err(e) => return vec![describe_err(&e)],
        };
        let mut v = Vec::new();
        for (off, wh) in [
            (0, libc::SEEK_DATA),
            (0, libc::SEEK_HOLE),
            (4096, libc::SEEK_DATA),
            (MIB as i64, libc::SEEK_HOLE),
            (MIB as i64 + 4096, libc::SEEK_DATA),
            (3 * MIB as i64, libc::SEEK_DATA),
            (3 * MIB as i64 + 1, libc::SEEK_HOLE),
        ] {
            v.push(format!(
                "{off} {}: {}",
                if wh == libc::SEEK_DATA {
                    "DATA"
                } else {
                    "HOLE"
                },
                outcome(&lseek(&f, off, wh))
            ));
        }
        v
    };
    t.both("SEEK_DATA/SEEK_HOLE on a lower sparse file", |r| {
        probe(r, "sparse")
    });
    t.both("write a sparse file through the mount", |r| {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(r.join("new"))
            .unwrap();
        f.write_all_at(&[b'x'; 4096], 0).unwrap();
        f.write_all_at(&[b'y'; 4096], MIB).unwrap();
        f.set_len(3 * MIB).unwrap();
        f.sync_all().unwrap();
        "ok"
    });
    t.both("SEEK_DATA/SEEK_HOLE on a new sparse file", |r| {
        probe(r, "new")
    });
    // Copy-up may allocate holes at a coarser granularity (the kernel copies 1 MiB chunks),
    // so after copy-up only check that SEEK_DATA/SEEK_HOLE stay consistent with the data.
    t.both("copy-up (chmod) then probe", |r| {
        let ch = outcome_unit(&fs::set_permissions(
            r.join("sparse"),
            fs::Permissions::from_mode(0o600),
        ));
        let f = fs::File::open(r.join("sparse")).unwrap();
        // Every offset holding data must be reported as data.
        let is_data = |off: i64| outcome(&lseek(&f, off, libc::SEEK_DATA).map(|d| d == off));
        let hole_after_data =
            outcome(&lseek(&f, MIB as i64, libc::SEEK_HOLE).map(|h| h >= MIB as i64 + 4096));
        let past = lseek(&f, 3 * MIB as i64, libc::SEEK_DATA);
        (
            ch,
            is_data(0),
            is_data(4095),
            is_data(MIB as i64),
            is_data(MIB as i64 + 4095),
            hole_after_data,
            outcome_unit(&past),
        )
    });
    t.finish(true);
}

#[test]
fn copy_file_range_between_files() {
    if !fuse_available() {
        return;
    }
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let t = twin(
        "sem-cfr",
        &[&[E::File("src", &data)]],
        &[E::File("up", b"upper data")],
    );
    let cfr = |from: &Path, to: &Path, off_in: i64, off_out: i64, len: usize| -> String {
        let src = match fs::File::open(from) {
            Ok(f) => f,
            Err(e) => return describe_err(&e),
        };
        let dst = match fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(to)
        {
            Ok(f) => f,
            Err(e) => return describe_err(&e),
        };
        let (mut oi, mut oo) = (off_in as libc::loff_t, off_out as libc::loff_t);
        let mut left = len;
        while left > 0 {
            let n = unsafe {
                libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, left, 0)
            };
            if n < 0 {
                return format!(
                    "copy_file_range: {}",
                    describe_err(&io::Error::last_os_error())
                );
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
        }
        format!("copied {}", len - left)
    };
    t.both("lower -> new", |r| {
        (
            cfr(&r.join("src"), &r.join("dst"), 0, 0, 100_000),
            read_str(&r.join("dst")).len(),
        )
    });
    t.both("contents equal", |r| {
        fs::read(r.join("dst")).ok() == fs::read(r.join("src")).ok()
    });
    t.both("middle of lower -> lower (copy-up dst)", |r| {
        cfr(&r.join("src"), &r.join("src2"), 5000, 100, 3000)
    });
    t.both("upper -> lower file", |r| {
        cfr(&r.join("up"), &r.join("src"), 0, 99_990, 10)
    });
    t.both("contents", |r| {
        (
            read_str(&r.join("src")).len(),
            fs::read(r.join("src")).map(|v| v[99_990..].to_vec()).ok(),
        )
    });
    t.finish(true);
}

#[test]
fn flock_and_fcntl_locks() {
    if !fuse_available() {
        return;
    }
    // Each step locks its own file: tests run in parallel threads, and a child another thread
    // forks holds copies of our descriptors until it execs or exits, which can keep a flock or
    // OFD lock of an already closed descriptor alive for a moment.
    let t = twin(
        "sem-locks",
        &[&[
            E::File("f", b"lock me"),
            E::File("f_ofd", b"lock me"),
            E::File("f_posix", b"lock me"),
        ]],
        &[
            E::File("u", b"upper"),
            E::File("u_ofd", b"upper"),
            E::File("u_posix", b"upper"),
        ],
    );
    for name in ["f", "u"] {
        let ofd_name = format!("{name}_ofd");
        let posix_name = format!("{name}_posix");
        t.both(&format!("flock on {name}"), |r| {
            let f1 = fs::File::open(r.join(name)).unwrap();
            let f2 = fs::File::open(r.join(name)).unwrap();
            let a = cvt(unsafe { libc::flock(f1.as_raw_fd(), libc::LOCK_EX) });
            let b = cvt(unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) });
            let c = cvt(unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) });
            let d = cvt(unsafe { libc::flock(f1.as_raw_fd(), libc::LOCK_UN) });
            let e = cvt(unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) });
            [a, b, c, d, e].map(|x| outcome_unit(&x))
        });
        t.both(&format!("OFD locks on {name}"), |r| {
            let f1 = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join(&ofd_name))
                .unwrap();
            let f2 = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join(&ofd_name))
                .unwrap();
            let lk = |ty: i32, start: i64, len: i64| libc::flock {
                l_type: ty as i16,
                l_whence: libc::SEEK_SET as i16,
                l_start: start,
                l_len: len,
                l_pid: 0,
            };
            let mut l1 = lk(libc::F_WRLCK, 0, 10);
            let a = cvt(unsafe { libc::fcntl(f1.as_raw_fd(), libc::F_OFD_SETLK, &mut l1) });
            let mut l2 = lk(libc::F_WRLCK, 5, 1);
            let b = cvt(unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_SETLK, &mut l2) });
            let mut l3 = lk(libc::F_RDLCK, 0, 100);
            let c = cvt(unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_GETLK, &mut l3) });
            let mut l4 = lk(libc::F_WRLCK, 10, 5);
            let d = cvt(unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_SETLK, &mut l4) });
            (
                [a, b, c, d].map(|x| outcome_unit(&x)),
                (l3.l_type as i32 == libc::F_WRLCK, l3.l_start, l3.l_len),
            )
        });
        t.both(
            &format!("POSIX locks on {name} seen from a child process"),
            |r| {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(r.join(&posix_name))
                    .unwrap();
                let mut l = libc::flock {
                    l_type: libc::F_WRLCK as i16,
                    l_whence: libc::SEEK_SET as i16,
                    l_start: 0,
                    l_len: 0,
                    l_pid: 0,
                };
                let a = cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &mut l) });
                let fd = f.as_raw_fd();
                let parent = std::process::id() as i32;
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // Child: only async-signal-safe calls.
                    let mut q = libc::flock {
                        l_type: libc::F_RDLCK as i16,
                        l_whence: libc::SEEK_SET as i16,
                        l_start: 0,
                        l_len: 1,
                        l_pid: 0,
                    };
                    let mut code = 0;
                    if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut q) } != 0 {
                        code |= 1;
                    } else if !(q.l_type as i32 == libc::F_WRLCK && q.l_pid == parent) {
                        code |= 2;
                    }
                    let mut w = libc::flock {
                        l_type: libc::F_WRLCK as i16,
                        l_whence: libc::SEEK_SET as i16,
                        l_start: 0,
                        l_len: 1,
                        l_pid: 0,
                    };
                    let rr = unsafe { libc::fcntl(fd, libc::F_SETLK, &mut w) };
                    if rr == 0 {
                        code |= 4;
                    }
                    unsafe { libc::_exit(code) };
                }
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -1
                };
                (outcome_unit(&a), code)
            },
        );
    }
    t.finish(true);
}

#[test]
fn o_append_writes_at_end() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-append",
        &[&[E::File("f", b"abc")]],
        &[E::File("u", b"123")],
    );
    for name in ["f", "u", "new"] {
        t.both(&format!("O_APPEND on {name}"), |r| {
            let f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(r.join(name))
                .unwrap();
            let a = (&f).write_all(b"def");
            let b = f.write_at(b"ghi", 0); // O_APPEND: pwrite appends on Linux
            (outcome_unit(&a), outcome(&b), read_str(&r.join(name)))
        });
    }
    t.both("O_APPEND read+write with seek", |r| {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(r.join("f"))
            .unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"X").unwrap();
        let pos = f.stream_position().unwrap();
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        (pos, s)
    });
    t.finish(true);
}

struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }
    fn buf(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn o_direct_write_and_read() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-odirect", &[&[E::File("f", &[b'l'; 8192])]], &[]);
    for name in ["new", "f"] {
        t.both(&format!("O_DIRECT on {name}"), |r| {
            let mut w = Aligned::new(8192);
            for (i, b) in w.buf().iter_mut().enumerate() {
                *b = b'A' + (i % 26) as u8;
            }
            let f = match open_fd(
                &r.join(name),
                libc::O_RDWR | libc::O_CREAT | libc::O_DIRECT,
                0o644,
            ) {
                Ok(f) => f,
                Err(e) => return format!("open O_DIRECT: {}", describe_err(&e)),
            };
            let n =
                unsafe { libc::pwrite(f.as_raw_fd(), w.ptr as *const libc::c_void, 4096, 4096) };
            if n != 4096 {
                return format!(
                    "pwrite O_DIRECT: {n} {}",
                    describe_err(&io::Error::last_os_error())
                );
            }
            let mut rb = Aligned::new(8192);
            let n = unsafe { libc::pread(f.as_raw_fd(), rb.ptr as *mut libc::c_void, 8192, 0) };
            if n < 0 {
                return format!(
                    "pread O_DIRECT: {}",
                    describe_err(&io::Error::last_os_error())
                );
            }
            let got = rb.buf()[..n as usize].to_vec();
            drop(f);
            let via_normal = fs::read(r.join(name)).unwrap_or_default();
            format!(
                "read {n}; direct read == normal read: {}; second half ok: {}; first half: {:?}",
                got == via_normal,
                via_normal.len() == 8192 && via_normal[4096..] == w.buf()[..4096],
                via_normal.first()
            )
        });
    }
    t.finish(true);
}

#[test]
fn mmap_shared_write_reaches_the_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-mmap",
        &[&[E::File("f", &[b'a'; 8192])]],
        &[E::File("u", &[b'u'; 4096])],
    );
    for name in ["f", "u"] {
        t.both(&format!("mmap MAP_SHARED write on {name}"), |r| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join(name))
                .unwrap();
            let len = f.metadata().unwrap().len() as usize;
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return format!("mmap: {}", describe_err(&io::Error::last_os_error()));
            }
            unsafe {
                std::ptr::copy_nonoverlapping(b"HELLO".as_ptr(), (p as *mut u8).add(100), 5);
            }
            let ms = cvt(unsafe { libc::msync(p, len, libc::MS_SYNC) });
            unsafe { libc::munmap(p, len) };
            drop(f);
            let v = fs::read(r.join(name)).unwrap_or_default();
            format!(
                "msync {}; new fd sees HELLO: {}",
                outcome_unit(&ms),
                v.get(100..105) == Some(b"HELLO")
            )
        });
    }
    t.finish_with(true, |k, f| {
        for (who, u) in [("ovlfuse", &f.upper), ("kernel", &k.upper)] {
            for name in ["f", "u"] {
                let v = fs::read(u.join(name))
                    .unwrap_or_else(|e| panic!("{who}: read upper/{name}: {}", describe_err(&e)));
                assert_eq!(
                    v.get(100..105),
                    Some(&b"HELLO"[..]),
                    "{who}: upper/{name} after unmount lacks the mmap write"
                );
            }
        }
    });
}

#[test]
fn read_only_fd_opened_before_copy_up() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-ro-fd",
        &[&[E::File("f", b"original lower data"), E::File("g", b"gggg")]],
        &[],
    );
    t.both("ro fd, then write through another fd", |r| {
        let ro = fs::File::open(r.join("f")).unwrap();
        let mut b = [0u8; 8];
        ro.read_exact_at(&mut b, 0).unwrap();
        let w = write_at(&r.join("f"), 0, b"CHANGED");
        let mut after = vec![0u8; 40];
        let n = ro.read_at(&mut after, 0).unwrap_or(0);
        after.truncate(n);
        (
            outcome_unit(&w),
            String::from_utf8_lossy(&after).into_owned(),
            ro.metadata().map(|m| m.len()).ok(),
        )
    });
    t.both("ro fd, then truncate by path", |r| {
        let ro = fs::File::open(r.join("g")).unwrap();
        let tr = fs::OpenOptions::new()
            .write(true)
            .open(r.join("g"))
            .and_then(|f| f.set_len(2));
        let mut after = vec![0u8; 40];
        let n = ro.read_at(&mut after, 0).unwrap_or(0);
        after.truncate(n);
        (
            outcome_unit(&tr),
            String::from_utf8_lossy(&after).into_owned(),
            ro.metadata().map(|m| m.len()).ok(),
        )
    });
    t.finish(true);
}

/// A mapping of a lower file (shared, or private and not written to), made through a
/// descriptor opened before a write elsewhere copies the file up. The kernel overlay maps the lower file itself and keeps
/// it mapped: the mapping goes on showing the lower data, while read(2) on the same
/// descriptor shows the copy's (overlayfs.rst, "Non-standard behavior"). Through FUSE a
/// file has one page cache whatever layer holds it, and the copy-up drops the pages of the
/// lower data: the mapping shows the copy's data, as read(2) does (README, "Differences").
#[test]
fn a_mapping_made_before_a_copy_up_shows_the_lower_data_on_the_kernel_and_the_copy_here() {
    if !fuse_available() {
        return;
    }
    const BIG: usize = 200_000;
    let t = twin(
        "sem-map-before-copy-up",
        &[&[
            E::File("small", b"AAAAAAAA"),
            E::File("big", &[b'B'; BIG]),
            E::File("private", b"PPPPPPPP"),
        ]],
        &[],
    );
    let run = |r: &Path| -> Vec<String> {
        let mut seen = Vec::new();
        for (name, kind) in [
            ("small", libc::MAP_SHARED),
            ("big", libc::MAP_SHARED),
            ("private", libc::MAP_PRIVATE),
        ] {
            let ro = ok(fs::File::open(r.join(name)), "open read-only");
            let len = ok(ro.metadata(), "fstat").len() as usize;
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    kind,
                    ro.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(
                map,
                libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            let mapped = || unsafe { std::slice::from_raw_parts(map as *const u8, 4) }.to_vec();
            let first = mapped();
            ok(
                write_at(&r.join(name), 0, b"ZZZZ"),
                "write through another descriptor",
            );
            let mut read = [0u8; 4];
            ok(ro.read_exact_at(&mut read, 0), "pread");
            let after = mapped();
            unsafe { libc::munmap(map, len) };
            seen.push(format!(
                "{name}: mapped {} then {}, read {}",
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(&after),
                String::from_utf8_lossy(&read),
            ));
        }
        seen
    };
    let kernel = run(t.km());
    let ours = run(t.fm());
    assert_eq!(
        kernel,
        [
            "small: mapped AAAA then AAAA, read ZZZZ",
            "big: mapped BBBB then BBBB, read ZZZZ",
            "private: mapped PPPP then PPPP, read ZZZZ"
        ],
        "the kernel overlay's mapping no longer shows the lower data: update the README"
    );
    assert_eq!(
        ours,
        [
            "small: mapped AAAA then ZZZZ, read ZZZZ",
            "big: mapped BBBB then ZZZZ, read ZZZZ",
            "private: mapped PPPP then ZZZZ, read ZZZZ"
        ],
        "ovlfuse: a mapping and read(2) through one descriptor disagree after a copy-up"
    );
    t.finish(true);
}

#[test]
fn attribute_changes_through_a_read_only_descriptor() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-fd-attrs",
        &[&[
            E::File("f", b"lower f"),
            E::File("g", b"lower g"),
            E::File("h", b"lower h"),
        ]],
        &[],
    );
    t.both(
        "fchmod/fchown/futimens/fsetxattr on an O_RDONLY fd of a lower file",
        |r| {
            let f = fs::File::open(r.join("f")).unwrap();
            let fd = f.as_raw_fd();
            let a = cvt(unsafe { libc::fchmod(fd, 0o604) });
            let b = cvt(unsafe { libc::fchown(fd, 21, 22) });
            let ts = [
                libc::timespec {
                    tv_sec: 11,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 1_111_111_111,
                    tv_nsec: 0,
                },
            ];
            let c = cvt(unsafe { libc::futimens(fd, ts.as_ptr()) });
            let name = c"user.viafd";
            let d = cvt(unsafe {
                libc::fsetxattr(
                    fd,
                    name.as_ptr(),
                    b"v".as_ptr() as *const libc::c_void,
                    1,
                    0,
                )
            });
            let mut buf = String::new();
            let rd = (&f).read_to_string(&mut buf);
            let fst = f
                .metadata()
                .map(|m| (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()))
                .ok();
            (
                [a, b, c, d].map(|x| outcome_unit(&x)),
                outcome_unit(&rd),
                buf,
                fst,
                stat_str(&r.join("f")),
                mtime_of(&r.join("f")).ok(),
                outcome(&lgetxattr(&r.join("f"), "user.viafd")),
            )
        },
    );
    t.both(
        "ftruncate on an O_RDWR fd, then read through an older O_RDONLY fd",
        |r| {
            let old = fs::File::open(r.join("g")).unwrap();
            let rw = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join("g"))
                .unwrap();
            let tr = rw.set_len(3);
            let mut b = Vec::new();
            let rd = (&old).read_to_end(&mut b);
            (
                outcome_unit(&tr),
                outcome_unit(&rd),
                String::from_utf8_lossy(&b).into_owned(),
                old.metadata().map(|m| m.len()).ok(),
            )
        },
    );
    t.both(
        "unlink then recreate the name while an fd holds the old file",
        |r| {
            let old = fs::File::open(r.join("h")).unwrap();
            let un = fs::remove_file(r.join("h"));
            let cr = fs::write(r.join("h"), b"new h");
            let mut b = String::new();
            let rd = (&old).read_to_string(&mut b);
            let same = old.metadata().ok().map(|m| m.ino())
                == fs::metadata(r.join("h")).ok().map(|m| m.ino());
            (
                outcome_unit(&un),
                outcome_unit(&cr),
                outcome_unit(&rd),
                b,
                read_str(&r.join("h")),
                same,
            )
        },
    );
    t.finish(true);
}

/// An empty set-group-ID upper file (read through the kernel's page cache, not
/// passthrough) whose next read moves its atime is opened for direct I/O, so that the read
/// reaches the daemon: a shared mapping of it still works, sees what is written to the file
/// afterwards, and the read moves the atime as on the kernel overlay.
#[test]
fn a_shared_mapping_of_an_empty_set_id_file_opened_read_only_sees_later_writes() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-empty-direct-mmap",
        &[&[E::File("l", b"lower")]],
        &[E::File("g", b""), E::Mode("g", 0o2755)],
    );
    let seen = t.both_ret("map, write, read", |r| {
        let g = r.join("g");
        let old = (1_000_000_000, 0);
        set_times(&g, old, (1_000_000_001, 0)).unwrap();
        let f = fs::File::open(&g).unwrap();
        // SAFETY: a fresh shared read-only mapping of an open file, touched only after the
        // file has grown over its first bytes, and unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return format!("mmap: {}", describe_err(&io::Error::last_os_error()));
        }
        let mut empty = Vec::new();
        let n = (&f).read_to_end(&mut empty).unwrap();
        let atime_moved = fs::metadata(&g).unwrap().atime() != old.0;
        fs::OpenOptions::new()
            .append(true)
            .open(&g)
            .unwrap()
            .write_all(b"hello")
            .unwrap();
        let mut seen = [0u8; 5];
        // SAFETY: the file now holds these 5 bytes, within the mapping.
        unsafe { std::ptr::copy_nonoverlapping(map as *const u8, seen.as_mut_ptr(), 5) };
        let mut read = Vec::new();
        (&f).read_to_end(&mut read).unwrap();
        unsafe { libc::munmap(map, 4096) };
        format!(
            "read {n} while empty, atime moved {atime_moved}; mapped {:?}, read {:?}",
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&read)
        )
    });
    assert_eq!(
        seen,
        "read 0 while empty, atime moved true; mapped \"hello\", read \"hello\""
    );
    t.finish(true);
}

#[test]
fn executing_binaries_from_the_mount() {
    if !fuse_available() {
        return;
    }
    let cat = fs::read("/bin/cat").expect("read /bin/cat");
    let t = twin_with(
        "sem-exec",
        &[&[
            E::File("script", b"#!/bin/sh\necho script-ran \"$1\"\n"),
            E::Mode("script", 0o755),
        ]],
        &[],
        move |st| {
            fs::write(st.lowers[0].join("cat"), &cat).unwrap();
            fs::set_permissions(st.lowers[0].join("cat"), fs::Permissions::from_mode(0o755))
                .unwrap();
        },
    );
    t.both("run a lower script and a lower binary", |r| {
        let s = std::process::Command::new(r.join("script"))
            .arg("x")
            .output();
        let c = std::process::Command::new(r.join("cat"))
            .arg(r.join("script"))
            .output();
        (
            s.as_ref()
                .map(|o| {
                    (
                        o.status.code(),
                        String::from_utf8_lossy(&o.stdout).into_owned(),
                    )
                })
                .map_err(describe_err),
            c.as_ref()
                .map(|o| (o.status.code(), o.stdout.len()))
                .map_err(describe_err),
        )
    });
    t.both("writing a running binary is ETXTBSY", |r| {
        let mut child = std::process::Command::new(r.join("cat"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // cat blocks on its stdin: the binary is being executed until we close it.
        let w = fs::OpenOptions::new().write(true).open(r.join("cat"));
        drop(child.stdin.take());
        let st = child.wait().map(|s| s.code());
        (outcome_unit(&w), outcome(&st))
    });
    t.both("copy up (chmod) then run", |r| {
        let ch = fs::set_permissions(r.join("script"), fs::Permissions::from_mode(0o700));
        let s = std::process::Command::new(r.join("script"))
            .arg("y")
            .output();
        (
            outcome_unit(&ch),
            s.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| describe_err(&e)),
        )
    });
    t.finish(true);
}

/// open(O_TRUNC) racing a truncate of the same file by another process: whichever comes
/// last, the size the mount shows is the upper file's. With the writeback cache and the
/// kernel's atomic O_TRUNC, the kernel set its own size to 0 after the truncate had
/// reached the upper file (README, Differences), in about one race in four.
#[test]
fn o_trunc_open_racing_a_truncate_leaves_one_size() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-otrunc-race");
    let st = Stack::new(&sc, 1);
    ok(
        fs::write(st.upper.join("f"), vec![b'u'; 1140]),
        "write upper f",
    );
    let g = mount_ovlfuse(&st, &[]);
    let (shown, on_disk) = (st.mnt.join("f"), st.upper.join("f"));
    let mut apart = Vec::new();
    for round in 0..200 {
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                ok(
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&shown)
                        .and_then(|f| f.set_len(10000)),
                    "ftruncate through another open file",
                );
            });
            barrier.wait();
            ok(
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&shown),
                "open O_TRUNC",
            );
        });
        let (a, b) = (
            ok(fs::metadata(&shown), "stat through the mount").len(),
            ok(fs::metadata(&on_disk), "stat the upper file").len(),
        );
        if a != b {
            apart.push(format!(
                "round {round}: the mount shows {a} bytes, the upper file has {b}"
            ));
        }
    }
    g.unmount();
    assert!(apart.is_empty(), "{}", apart.join("\n"));
}

#[test]
fn attributes_set_on_an_open_file_hold_for_its_descriptor_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    // xfstests generic/553: a descriptor opened before chattr +i may still write, but not
    // allocate; one opened before chattr +a may not truncate, punch or copy data in (which
    // needs O_APPEND's EBADF). For an upper file and for a lower one (copied up by the
    // chattr).
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    let t = twin(
        "sem-iflags-open",
        &[&[E::File("low", b"lower data"), E::File("src", b"source")]],
        &[E::File("up", b"upper data")],
    );
    t.both("through descriptors opened before the attribute", |r| {
        let mut out = Vec::new();
        for (name, flag) in [("up", IMMUTABLE), ("low", IMMUTABLE), ("up", APPEND)] {
            let p = r.join(name);
            let flags = if flag == APPEND {
                libc::O_WRONLY | libc::O_APPEND
            } else {
                libc::O_RDWR
            };
            let f = open_fd(&p, flags, 0).unwrap();
            let src = open_fd(&r.join("src"), libc::O_RDONLY, 0).unwrap();
            let fd = f.as_raw_fd();
            out.push(outcome_unit(&set_inode_flags(&p, flag)));
            out.push(outcome_unit(&f.write_at(b"X", 1)));
            // ftruncate, hole punching and copy_file_range through a descriptor of a file
            // made immutable are left to the append-only case: without passthrough, the
            // kernel's FUSE client keeps the flag it set through the mount and refuses them
            // itself (EPERM, EIO) before ovlfuse sees a request (README, "Differences").
            if flag == APPEND {
                out.push(outcome_unit(&cvt(unsafe { libc::ftruncate(fd, 4) })));
                let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                out.push(outcome_unit(&cvt(unsafe {
                    libc::fallocate(fd, punch, 0, 1)
                })));
                let (mut off_in, mut off_out): (libc::loff_t, libc::loff_t) = (0, 0);
                out.push(outcome_unit(&cvt(unsafe {
                    libc::copy_file_range(src.as_raw_fd(), &mut off_in, fd, &mut off_out, 3, 0)
                })));
            }
            out.push(outcome_unit(&cvt(unsafe {
                libc::fallocate(fd, 0, 0, 8192)
            })));
            out.push(outcome_unit(&set_inode_flags(&p, 0)));
            let data = read_str(&p);
            out.push(format!(
                "{} bytes: {:?}",
                data.len(),
                &data[..data.len().min(8)]
            ));
        }
        out
    });
    t.finish(true);
}
