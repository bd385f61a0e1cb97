//! Executing an operation on a mount: the system calls, and the result (`R`) compared
//! between the two sides.

use super::*;

/// Result of one operation: Ok(value description) or Err(errno).
pub(crate) type R = Result<String, i32>;

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(crate) fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETXTBSY => "ETXTBSY",
        libc::E2BIG => "E2BIG",
        _ => return format!("errno {}", e),
    };
    n.to_string()
}

pub(crate) fn show_r(r: &R) -> String {
    match r {
        Ok(v) => format!("Ok({})", v),
        Err(e) => format!("Err({})", errno_name(*e)),
    }
}

/// Coarse shape of a result, used to decide whether a shrunk case still shows "the same" bug.
pub(crate) fn shape(r: &R) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => errno_name(*e),
    }
}

pub(crate) fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

pub(crate) fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

pub(crate) fn chk(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

pub(crate) const OPEN_BASE: libc::c_int = libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;

pub(crate) struct Fd(pub(crate) libc::c_int);
impl Drop for Fd {
    fn drop(&mut self) {
        unsafe {
            libc::close(self.0);
        }
    }
}

pub(crate) fn open(p: &CString, flags: libc::c_int, mode: u32) -> Result<Fd, i32> {
    let fd = unsafe { libc::open(p.as_ptr(), flags | OPEN_BASE, mode as libc::c_uint) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(Fd(fd))
    }
}

pub(crate) fn write_all(fd: &Fd, data: &[u8], off: Option<u64>) -> Result<usize, i32> {
    let mut done = 0usize;
    while done < data.len() {
        let rest = &data[done..];
        let n = unsafe {
            match off {
                Some(o) => libc::pwrite(
                    fd.0,
                    rest.as_ptr() as *const _,
                    rest.len(),
                    (o + done as u64) as libc::off_t,
                ),
                None => libc::write(fd.0, rest.as_ptr() as *const _, rest.len()),
            }
        };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

pub(crate) fn close_checked(fd: Fd) -> Result<(), i32> {
    let raw = fd.0;
    std::mem::forget(fd);
    chk(unsafe { libc::close(raw) })
}

pub(crate) fn hash(d: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in d {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(crate) fn kind_of(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

pub(crate) fn do_stat(p: &CString, follow: bool) -> Result<libc::stat, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        if follow {
            libc::stat(p.as_ptr(), &mut st)
        } else {
            libc::lstat(p.as_ptr(), &mut st)
        }
    };
    chk(r)?;
    Ok(st)
}

thread_local! {

    /// OVLFUSE_DIFF_NO_ATIME=1: leave atimes out of stat results (to look past an atime
    /// difference).
    static NO_ATIME: bool = std::env::var("OVLFUSE_DIFF_NO_ATIME").is_ok_and(|v| v != "0");
}

/// Every time this test sets explicitly is before this; the clock is well past it.
pub(crate) const FIXED_TIME_LIMIT: i64 = 1_500_000_000;

pub(crate) fn show_time(sec: i64, nsec: i64) -> String {
    if sec < FIXED_TIME_LIMIT {
        format!("{}.{:09}", sec, nsec)
    } else {
        "recent".into()
    }
}

/// Give every non-directory of a freshly built layer fixed times derived from its path, so
/// that both copies of a layer carry the same times and copy-up's preservation of them can
/// be compared.
pub(crate) fn fix_times(layer: &Path) {
    fn walk(root: &Path, rel: &Path) {
        let full = root.join(rel);
        let Ok(md) = std::fs::symlink_metadata(&full) else {
            return;
        };
        if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&full)
                .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            names.sort();
            for n in names {
                walk(root, &rel.join(n));
            }
            return;
        }
        let k = (hash(rel.as_os_str().as_bytes()) % 100_000) as i64;
        let ts = [
            libc::timespec {
                tv_sec: 1_000_000_000 + k,
                tv_nsec: 250_000_000,
            },
            libc::timespec {
                tv_sec: 1_100_000_000 + k,
                tv_nsec: 500_000_000,
            },
        ];
        let c = CString::new(full.as_os_str().as_bytes()).unwrap();
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(
            r,
            0,
            "utimensat {:?}: {}",
            full,
            std::io::Error::last_os_error()
        );
    }
    walk(layer, Path::new(""));
}

pub(crate) fn describe_stat(st: &libc::stat) -> String {
    let k = kind_of(st.st_mode);
    let mut s = format!(
        "{} mode=0o{:o} uid={} gid={} nlink={}",
        k,
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_nlink
    );
    s += &format!(" size={}", st.st_size);

    if k != 'd' {
        // Times of non-directories: exact when they are one of the fixed times the layers
        // or utimensat ops set, else just "recent" (set by the clock during the run).
        if !NO_ATIME.with(|v| *v) {
            s += &format!(" atime={}", show_time(st.st_atime, st.st_atime_nsec));
        }
        s += &format!(" mtime={}", show_time(st.st_mtime, st.st_mtime_nsec));
    }
    if k == 'c' || k == 'b' {
        s += &format!(" rdev={:x}", st.st_rdev);
    }
    s
}

pub(crate) fn dtype_name(t: u8) -> char {
    match t {
        libc::DT_REG => 'f',
        libc::DT_DIR => 'd',
        libc::DT_LNK => 'l',
        libc::DT_FIFO => 'p',
        libc::DT_CHR => 'c',
        libc::DT_BLK => 'b',
        libc::DT_SOCK => 's',
        libc::DT_UNKNOWN => '?',
        _ => '#',
    }
}

pub(crate) fn fstat_fd(fd: libc::c_int) -> Result<libc::stat, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    chk(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// utimensat/futimens times that leave atime alone and set mtime.
pub(crate) fn atime_omitted(mtime: (i64, i64)) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ]
}

pub(crate) fn held_fd(held: &Held, slot: usize) -> Result<libc::c_int, i32> {
    match held.0[slot] {
        fd if fd >= 0 => Ok(fd),
        _ => Err(libc::EBADF),
    }
}

/// Read a descriptor to EOF (from `off` with pread, or from its position with read).
pub(crate) fn read_all(fd: libc::c_int, off: Option<u64>) -> R {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = unsafe {
            match off {
                Some(o) => libc::pread(
                    fd,
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                    (o + out.len() as u64) as libc::off_t,
                ),
                None => libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()),
            }
        };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > (1 << 20) {
            // a device that never ends
            return Ok(format!("more than 1 MiB, hash {:016x}", hash(&out)));
        }
    }
    if out.len() <= 48 {
        Ok(format!(
            "{} bytes {:?}",
            out.len(),
            String::from_utf8_lossy(&out)
        ))
    } else {
        Ok(format!(
            "{} bytes hash {:016x} head {:?}",
            out.len(),
            hash(&out),
            String::from_utf8_lossy(&out[..24])
        ))
    }
}

/// Whether an lseek(SEEK_DATA / SEEK_HOLE) answer keeps the rules every filesystem keeps,
/// rather than the answer itself: where the holes of a copied-up file lie differs by design
/// (ovlfuse keeps each hole, the kernel overlay only those covering whole 1 MiB chunks; see
/// README, Differences), and a filesystem may always call a hole data.
pub(crate) fn seek_verdict(whence: i32, off: u64, size: u64, got: Result<u64, i32>) -> R {
    let data = whence == libc::SEEK_DATA;
    match got {
        Err(libc::ENXIO) if off >= size => Ok("ENXIO at or past the end".into()),
        // no data from `off` on: allowed, as the rest may be one hole
        Err(libc::ENXIO) if data => Ok("ok".into()),
        Err(e) => Err(e),
        Ok(r) if off >= size => Ok(format!("{} past the end (size {})", r, size)),
        Ok(r) if r < off => Ok(format!("{} before the offset", r)),
        Ok(r) if data && r >= size => Ok(format!("data at {} past the end (size {})", r, size)),
        Ok(r) if r > size => Ok(format!("hole at {} past the end (size {})", r, size)),
        Ok(_) => Ok("ok".into()),
    }
}

pub(crate) fn exec(op: &Op, root: &Path, held: &mut Held) -> R {
    let p = |rel: &str| cpath(root, rel);
    unsafe {
        match op {
            Op::CreateWrite {
                path,
                data,
                excl,
                mode,
            } => {
                let flags = libc::O_CREAT
                    | libc::O_WRONLY
                    | libc::O_TRUNC
                    | if *excl { libc::O_EXCL } else { 0 };
                let fd = open(&p(path), flags, *mode)?;
                let n = write_all(&fd, data, None)?;
                close_checked(fd)?;
                Ok(format!("wrote {}", n))
            }
            Op::Append { path, data } => {
                let fd = open(&p(path), libc::O_WRONLY | libc::O_APPEND, 0)?;
                let n = write_all(&fd, data, None)?;
                close_checked(fd)?;
                Ok(format!("wrote {}", n))
            }
            Op::OpenTrunc { path } => {
                let fd = open(&p(path), libc::O_WRONLY | libc::O_TRUNC, 0)?;
                close_checked(fd)?;
                Ok("ok".into())
            }
            Op::Truncate { path, size } => {
                chk(libc::truncate(p(path).as_ptr(), *size as libc::off_t))?;
                Ok("ok".into())
            }
            Op::Pwrite { path, off, data } => {
                let fd = open(&p(path), libc::O_WRONLY, 0)?;
                let n = write_all(&fd, data, Some(*off))?;
                close_checked(fd)?;
                Ok(format!("wrote {}", n))
            }
            Op::Unlink { path } => {
                chk(libc::unlink(p(path).as_ptr()))?;
                Ok("ok".into())
            }
            Op::Mkdir { path, mode } => {
                chk(libc::mkdir(p(path).as_ptr(), *mode))?;
                Ok("ok".into())
            }
            Op::Rmdir { path } => {
                chk(libc::rmdir(p(path).as_ptr()))?;
                Ok("ok".into())
            }
            Op::Rename { from, to, flags } => {
                let (a, b) = (p(from), p(to));
                let r = libc::syscall(
                    libc::SYS_renameat2,
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    *flags as libc::c_uint,
                );
                if r < 0 {
                    return Err(errno());
                }
                Ok("ok".into())
            }
            Op::Link { from, to } => {
                chk(libc::link(p(from).as_ptr(), p(to).as_ptr()))?;
                Ok("ok".into())
            }
            Op::Symlink { target, path } => {
                chk(libc::symlink(cstr(target).as_ptr(), p(path).as_ptr()))?;
                Ok("ok".into())
            }
            Op::Mkfifo { path, mode } => {
                chk(libc::mknod(p(path).as_ptr(), libc::S_IFIFO | *mode, 0))?;
                Ok("ok".into())
            }
            Op::Chmod { path, mode } => {
                chk(libc::chmod(p(path).as_ptr(), *mode))?;
                Ok("ok".into())
            }
            Op::Chown {
                path,
                uid,
                gid,
                nofollow,
            } => {
                let fl = if *nofollow {
                    libc::AT_SYMLINK_NOFOLLOW
                } else {
                    0
                };
                chk(libc::fchownat(
                    libc::AT_FDCWD,
                    p(path).as_ptr(),
                    *uid,
                    *gid,
                    fl,
                ))?;
                Ok("ok".into())
            }
            Op::Utimens { path, atime, mtime } => {
                let ts = [
                    libc::timespec {
                        tv_sec: atime.0 as libc::time_t,
                        tv_nsec: if atime.1 < 0 {
                            libc::UTIME_OMIT
                        } else {
                            atime.1 as _
                        },
                    },
                    libc::timespec {
                        tv_sec: mtime.0 as libc::time_t,
                        tv_nsec: mtime.1 as _,
                    },
                ];
                let c = p(path);
                chk(libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0))?;
                let st = do_stat(&c, true)?;
                if atime.1 < 0 {
                    // atime was left alone: it is whatever earlier reads made it
                    Ok(format!("mtime={}.{:09}", st.st_mtime, st.st_mtime_nsec))
                } else {
                    Ok(format!(
                        "atime={}.{:09} mtime={}.{:09}",
                        st.st_atime, st.st_atime_nsec, st.st_mtime, st.st_mtime_nsec
                    ))
                }
            }
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => {
                chk(libc::setxattr(
                    p(path).as_ptr(),
                    cstr(name).as_ptr(),
                    value.as_ptr() as *const _,
                    value.len(),
                    *flags,
                ))?;
                Ok("ok".into())
            }
            Op::RemoveXattr { path, name } => {
                chk(libc::removexattr(p(path).as_ptr(), cstr(name).as_ptr()))?;
                Ok("ok".into())
            }
            Op::GetXattr { path, name } => {
                let mut buf = vec![0u8; 4096];
                let n = libc::getxattr(
                    p(path).as_ptr(),
                    cstr(name).as_ptr(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                );
                if n < 0 {
                    return Err(errno());
                }
                buf.truncate(n as usize);
                Ok(format!("{:?}", String::from_utf8_lossy(&buf)))
            }
            Op::ListXattr { path } => {
                let mut buf = vec![0u8; 65536];
                let n = libc::listxattr(p(path).as_ptr(), buf.as_mut_ptr() as *mut _, buf.len());
                if n < 0 {
                    return Err(errno());
                }
                buf.truncate(n as usize);
                let mut names: Vec<String> = buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                names.sort();
                Ok(format!("{:?}", names))
            }
            Op::Readlink { path } => {
                let mut buf = vec![0u8; 4096];
                let n = libc::readlink(p(path).as_ptr(), buf.as_mut_ptr() as *mut _, buf.len());
                if n < 0 {
                    return Err(errno());
                }
                buf.truncate(n as usize);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            Op::Stat { path, follow } => Ok(describe_stat(&do_stat(&p(path), *follow)?)),
            Op::Readdir { path } => {
                let c = p(path);
                let d = libc::opendir(c.as_ptr());
                if d.is_null() {
                    return Err(errno());
                }
                let mut names = Vec::new();
                loop {
                    *libc::__errno_location() = 0;
                    let ent = libc::readdir(d);
                    if ent.is_null() {
                        let e = errno();
                        libc::closedir(d);
                        if e != 0 {
                            return Err(e);
                        }
                        break;
                    }
                    let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr())
                        .to_string_lossy()
                        .into_owned();
                    names.push(format!("{}:{}", name, dtype_name((*ent).d_type)));
                }
                names.sort();
                Ok(names.join(" "))
            }
            Op::Read { path } => {
                let fd = open(&p(path), libc::O_RDONLY, 0)?;
                read_all(fd.0, None)
            }
            Op::OpenHeld { slot, path, mode } => {
                let fd = open(&p(path), mode.flags(), 0)?;
                let old = held.0[*slot];
                if old >= 0 {
                    libc::close(old);
                }
                held.0[*slot] = fd.0;
                std::mem::forget(fd);
                Ok("ok".into())
            }
            Op::ReadHeld { slot } => read_all(held_fd(held, *slot)?, Some(0)),
            Op::WriteHeld { slot, data } => {
                let fd = Fd(held_fd(held, *slot)?);
                let r = write_all(&fd, data, None);
                std::mem::forget(fd);
                Ok(format!("wrote {}", r?))
            }
            Op::FstatHeld { slot } => {
                let st = fstat_fd(held_fd(held, *slot)?)?;
                Ok(describe_stat(&st))
            }
            Op::FtruncateHeld { slot, size } => {
                chk(libc::ftruncate(held_fd(held, *slot)?, *size as libc::off_t))?;
                Ok("ok".into())
            }
            Op::CloseHeld { slot } => {
                let fd = held_fd(held, *slot)?;
                held.0[*slot] = -1;
                chk(libc::close(fd))?;
                Ok("ok".into())
            }
            Op::Mknod { path, kind, rdev } => {
                let t = match kind {
                    'c' => libc::S_IFCHR,
                    'b' => libc::S_IFBLK,
                    _ => libc::S_IFSOCK,
                };
                chk(libc::mknod(
                    p(path).as_ptr(),
                    t | 0o644,
                    libc::makedev(rdev.0, rdev.1),
                ))?;
                Ok("ok".into())
            }
            Op::OpenTmpfile { slot, dir } => {
                let fd = open(&p(dir), libc::O_TMPFILE | libc::O_RDWR, 0o600)?;
                let old = held.0[*slot];
                if old >= 0 {
                    libc::close(old);
                }
                held.0[*slot] = fd.0;
                std::mem::forget(fd);
                Ok("ok".into())
            }
            Op::LinkHeld { slot, path } => {
                let fd = held_fd(held, *slot)?;
                chk(libc::linkat(
                    fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    p(path).as_ptr(),
                    libc::AT_EMPTY_PATH,
                ))?;
                Ok("ok".into())
            }
            Op::ReaddirHeld { slot } => {
                let fd = held_fd(held, *slot)?;
                if libc::lseek(fd, 0, libc::SEEK_SET) < 0 {
                    return Err(errno());
                }
                let mut names = Vec::new();
                let mut buf = vec![0u8; 32768];
                loop {
                    let n = libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len());
                    if n < 0 {
                        return Err(errno());
                    }
                    if n == 0 {
                        break;
                    }
                    let mut off = 0usize;
                    while off < n as usize {
                        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                        let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                        let dtype = buf[off + 18];
                        let name_bytes = &buf[off + 19..off + reclen];
                        let end = name_bytes
                            .iter()
                            .position(|b| *b == 0)
                            .unwrap_or(name_bytes.len());
                        names.push(format!(
                            "{}:{}",
                            String::from_utf8_lossy(&name_bytes[..end]),
                            dtype_name(dtype)
                        ));
                        off += reclen;
                    }
                }
                names.sort();
                Ok(names.join(" "))
            }
            Op::FchmodHeld { slot, mode } => {
                chk(libc::fchmod(held_fd(held, *slot)?, *mode))?;
                Ok("ok".into())
            }
            Op::FchownHeld { slot, uid, gid } => {
                chk(libc::fchown(held_fd(held, *slot)?, *uid, *gid))?;
                Ok("ok".into())
            }
            Op::GetXattrSized { path, name, size } => {
                let mut buf = vec![0u8; (*size).max(1)];
                let n = libc::getxattr(
                    p(path).as_ptr(),
                    cstr(name).as_ptr(),
                    buf.as_mut_ptr() as *mut _,
                    *size,
                );
                if n < 0 {
                    return Err(errno());
                }
                if *size == 0 {
                    Ok(format!("size {}", n))
                } else {
                    buf.truncate(n as usize);
                    Ok(format!("{:?}", String::from_utf8_lossy(&buf)))
                }
            }
            Op::ListXattrSized { path, size } => {
                let mut buf = vec![0u8; (*size).max(1)];
                let n = libc::listxattr(p(path).as_ptr(), buf.as_mut_ptr() as *mut _, *size);
                if n < 0 {
                    return Err(errno());
                }
                Ok(format!("size {}", n))
            }
            Op::Access {
                path,
                mode,
                nofollow,
            } => {
                let fl = libc::AT_EACCESS
                    | if *nofollow {
                        libc::AT_SYMLINK_NOFOLLOW
                    } else {
                        0
                    };
                chk(libc::faccessat(libc::AT_FDCWD, p(path).as_ptr(), *mode, fl))?;
                Ok("ok".into())
            }
            Op::Chattr { path, set, clear } => {
                let c = p(path);
                let (fd, now) = get_inode_flags(&c)?;
                let mut v = ((now & !clear) | set) as libc::c_long;
                chk(libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    FS_IOC_SETFLAGS as _,
                    &mut v,
                ))?;
                drop(fd);
                let (_, after) = get_inode_flags(&c)?;
                Ok(shown_flags(after))
            }
            Op::Lsattr { path } => {
                let (_, flags) = get_inode_flags(&p(path))?;
                Ok(shown_flags(flags))
            }
            Op::LUtimens { path, mtime } => {
                let ts = atime_omitted(*mtime);
                let c = p(path);
                chk(libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ))?;
                let st = do_stat(&c, false)?;
                Ok(format!("mtime={}.{:09}", st.st_mtime, st.st_mtime_nsec))
            }
            Op::FallocateHeld {
                slot,
                mode,
                off,
                len,
            } => {
                let fd = held_fd(held, *slot)?;
                chk(libc::fallocate(
                    fd,
                    *mode,
                    *off as libc::off_t,
                    *len as libc::off_t,
                ))?;
                let st = fstat_fd(fd)?;
                Ok(format!("size={}", st.st_size))
            }
            Op::SeekHeld { slot, whence, off } => {
                let fd = held_fd(held, *slot)?;
                let st = fstat_fd(fd)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    // FUSE answers a directory's lseek in the kernel (README, Differences)
                    return Ok("directory, not compared".into());
                }
                // Put the position back: it shows where holes were found, which differs
                // by design (see seek_verdict), and later writes go there.
                let pos = libc::lseek(fd, 0, libc::SEEK_CUR);
                let r = libc::lseek(fd, *off as libc::off_t, *whence);
                let got = if r < 0 { Err(errno()) } else { Ok(r as u64) };
                if pos >= 0 {
                    libc::lseek(fd, pos, libc::SEEK_SET);
                }
                seek_verdict(*whence, *off, st.st_size as u64, got)
            }
            Op::CopyRange {
                from,
                to,
                off_in,
                off_out,
                len,
            } => {
                let src = open(&p(from), libc::O_RDONLY, 0)?;
                let dst = open(&p(to), libc::O_WRONLY, 0)?;
                let mut oi = *off_in as libc::off64_t;
                let mut oo = *off_out as libc::off64_t;
                let n = libc::copy_file_range(src.0, &mut oi, dst.0, &mut oo, *len as usize, 0);
                if n < 0 {
                    return Err(errno());
                }
                drop(dst);
                let back = open(&p(to), libc::O_RDONLY, 0)?;
                Ok(format!("copied {}; {}", n, show_r(&read_all(back.0, None))))
            }
            Op::FsetxattrHeld { slot, name, value } => {
                chk(libc::fsetxattr(
                    held_fd(held, *slot)?,
                    cstr(name).as_ptr(),
                    value.as_ptr() as *const _,
                    value.len(),
                    0,
                ))?;
                Ok("ok".into())
            }
            Op::FgetxattrHeld { slot, name } => {
                let mut buf = vec![0u8; 256];
                let n = libc::fgetxattr(
                    held_fd(held, *slot)?,
                    cstr(name).as_ptr(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                );
                if n < 0 {
                    return Err(errno());
                }
                buf.truncate(n as usize);
                Ok(format!("{:?}", String::from_utf8_lossy(&buf)))
            }
            Op::FutimensHeld { slot, mtime } => {
                let fd = held_fd(held, *slot)?;
                let ts = atime_omitted(*mtime);
                chk(libc::futimens(fd, ts.as_ptr()))?;
                let st = fstat_fd(fd)?;
                Ok(format!("mtime={}.{:09}", st.st_mtime, st.st_mtime_nsec))
            }
            Op::ProcFd { slot, act } => {
                let at = cstr(&format!("/proc/self/fd/{}", held_fd(held, *slot)?));
                match act {
                    ProcAct::Chmod(m) => chk(libc::chmod(at.as_ptr(), *m))?,
                    ProcAct::Chown(u, g) => chk(libc::chown(at.as_ptr(), *u, *g))?,
                    ProcAct::Truncate(n) => chk(libc::truncate(at.as_ptr(), *n as libc::off_t))?,
                    ProcAct::Utimens(t) => {
                        let ts = atime_omitted(*t);
                        chk(libc::utimensat(libc::AT_FDCWD, at.as_ptr(), ts.as_ptr(), 0))?;
                        let st = do_stat(&at, true)?;
                        return Ok(format!("mtime={}.{:09}", st.st_mtime, st.st_mtime_nsec));
                    }
                    ProcAct::SetXattr(n, v) => chk(libc::setxattr(
                        at.as_ptr(),
                        cstr(n).as_ptr(),
                        v.as_ptr() as *const _,
                        v.len(),
                        0,
                    ))?,
                    ProcAct::Reopen(m) => {
                        let fd = libc::open(at.as_ptr(), m.flags() | OPEN_BASE);
                        if fd < 0 {
                            return Err(errno());
                        }
                        let fd = Fd(fd);
                        let st = fstat_fd(fd.0)?;
                        let mut line = describe_stat(&st);
                        if st.st_mode & libc::S_IFMT == libc::S_IFREG
                            && !matches!(m, HeldMode::Append)
                        {
                            line += &format!(" data={}", read_all(fd.0, Some(0))?);
                        }
                        return Ok(line);
                    }
                }
                Ok("ok".into())
            }
            Op::FsyncHeld { slot, data_only } => {
                let fd = held_fd(held, *slot)?;
                chk(if *data_only {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                })?;
                Ok("ok".into())
            }
            Op::DropCaches => {
                drop_caches();
                Ok("ok".into())
            }
            Op::CreateAtHeld { slot, name, data } => {
                let dir = held_fd(held, *slot)?;
                let fd = libc::openat(
                    dir,
                    cstr(name).as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | OPEN_BASE,
                    0o644,
                );
                if fd < 0 {
                    return Err(errno());
                }
                let fd = Fd(fd);
                Ok(format!("wrote {}", write_all(&fd, data, None)?))
            }
            Op::MkdirAtHeld { slot, name } => {
                chk(libc::mkdirat(
                    held_fd(held, *slot)?,
                    cstr(name).as_ptr(),
                    0o755,
                ))?;
                Ok("ok".into())
            }
            Op::UnlinkAtHeld { slot, name, dir } => {
                let flags = if *dir { libc::AT_REMOVEDIR } else { 0 };
                chk(libc::unlinkat(
                    held_fd(held, *slot)?,
                    cstr(name).as_ptr(),
                    flags,
                ))?;
                Ok("ok".into())
            }
            Op::StatAtHeld { slot, name } => {
                let mut st: libc::stat = std::mem::zeroed();
                chk(libc::fstatat(
                    held_fd(held, *slot)?,
                    cstr(name).as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                ))?;
                Ok(describe_stat(&st))
            }
            Op::RenameAtHeld { slot, name, to } => {
                chk(libc::renameat(
                    held_fd(held, *slot)?,
                    cstr(name).as_ptr(),
                    libc::AT_FDCWD,
                    p(to).as_ptr(),
                ))?;
                Ok("ok".into())
            }
            Op::MmapWriteHeld { slot, off, data } => {
                let fd = held_fd(held, *slot)?;
                let st = fstat_fd(fd)?;
                let size = st.st_size as usize;
                if st.st_mode & libc::S_IFMT != libc::S_IFREG || size == 0 {
                    // mmap of a directory, device or empty file: compare the error only
                    let m = libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fd,
                        0,
                    );
                    if m == libc::MAP_FAILED {
                        return Err(errno());
                    }
                    libc::munmap(m, 4096);
                    return Ok(format!("mapped, size {}", size));
                }
                let m = libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                if m == libc::MAP_FAILED {
                    return Err(errno());
                }
                let at = (*off as usize).min(size - 1);
                let n = data.len().min(size - at);
                std::ptr::copy_nonoverlapping(data.as_ptr(), (m as *mut u8).add(at), n);
                let synced = chk(libc::msync(m, size, libc::MS_SYNC));
                libc::munmap(m, size);
                synced?;
                Ok(format!("stored {} at {}", n, at))
            }
            Op::As { uid, gid, op } => {
                // fs ids are per thread; the gid first, while still privileged.
                libc::setfsgid(*gid);
                libc::setfsuid(*uid);
                let r = exec(op, root, held);
                libc::setfsuid(0);
                libc::setfsgid(0);
                r
            }
        }
    }
}

/// Run `f` on a helper thread.  Err(None) if it does not finish in time (the thread is
/// leaked), Err(Some(message)) if it panicked.
pub(crate) fn with_timeout<T: Send + 'static>(
    t: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Option<String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(panic_msg);
        let _ = tx.send(r);
    });
    match rx.recv_timeout(t) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(Some(msg)),
        Err(_) => Err(None),
    }
}
