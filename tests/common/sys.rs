//! Small libc wrappers the tests call directly: xattrs, mknod, renameat2, times, raw
//! directory reads.

use super::*;

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_else(|_| panic!("NUL in path {p:?}"))
}

/// Gives the file open as `fd` the name `to`, through its /proc/self/fd link
/// (`linkat(AT_SYMLINK_FOLLOW)`, the way a file made with O_TMPFILE gets a name).
pub fn link_open_file(fd: std::os::fd::RawFd, to: &Path) -> io::Result<()> {
    let from = cstr(&format!("/proc/self/fd/{fd}"));
    let to = cpath(to);
    // SAFETY: both names are NUL-terminated and outlive the call.
    cvt(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub(crate) fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| panic!("NUL in {s:?}"))
}

pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (cp, cn) = (cpath(p), cstr(name));
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            0,
        )
    };
    cvt(r).map(|_| ())
}

pub fn lgetxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (cp, cn) = (cpath(p), cstr(name));
    loop {
        let size = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        let size = cvt(size)? as usize;
        let mut buf = vec![0u8; size.max(1)];
        let r = unsafe {
            libc::lgetxattr(
                cp.as_ptr(),
                cn.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        match cvt(r) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn llistxattr(p: &Path) -> io::Result<Vec<String>> {
    let cp = cpath(p);
    loop {
        let size = cvt(unsafe { libc::llistxattr(cp.as_ptr(), std::ptr::null_mut(), 0) })? as usize;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let r = unsafe {
            libc::llistxattr(
                cp.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        match cvt(r) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect());
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn lremovexattr(p: &Path, name: &str) -> io::Result<()> {
    let (cp, cn) = (cpath(p), cstr(name));
    cvt(unsafe { libc::lremovexattr(cp.as_ptr(), cn.as_ptr()) }).map(|_| ())
}

pub fn mknod(p: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let cp = cpath(p);
    cvt(unsafe { libc::mknod(cp.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) }).map(|_| ())
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor) as u64
}

pub fn mkfifo(p: &Path, mode: u32) -> io::Result<()> {
    let cp = cpath(p);
    cvt(unsafe { libc::mkfifo(cp.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

pub fn chmod_nofollow_dir(p: &Path, mode: u32) -> io::Result<()> {
    let cp = cpath(p);
    cvt(unsafe { libc::chmod(cp.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
}

/// renameat2(AT_FDCWD, from, AT_FDCWD, to, flags) through the raw system call.
pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// utimensat without following symlinks; times are (sec, nsec).
pub fn set_times(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let cp = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    cvt(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cp.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(|_| ())
}

/// (mtime sec, mtime nsec) of `p` without following symlinks.
pub fn mtime_of(p: &Path) -> io::Result<(i64, i64)> {
    let m = fs::symlink_metadata(p)?;
    Ok((m.mtime(), m.mtime_nsec()))
}

/// statvfs of `p`.
pub fn statvfs(p: &Path) -> io::Result<libc::statvfs> {
    let cp = cpath(p);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statvfs(cp.as_ptr(), &mut st) })?;
    Ok(st)
}

/// One entry as returned by readdir(3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawDirent {
    pub name: OsString,
    pub ino: u64,
    pub d_type: u8,
}

pub(crate) fn errno_location_clear() {
    unsafe { *libc::__errno_location() = 0 };
}

/// All entries of a directory through opendir/readdir (including "." and ".."), in order.
pub fn read_dir_raw(p: &Path) -> io::Result<Vec<RawDirent>> {
    let cp = cpath(p);
    let d = unsafe { libc::opendir(cp.as_ptr()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let res = loop {
        errno_location_clear();
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            let err = io::Error::last_os_error();
            if err.raw_os_error().unwrap_or(0) != 0 {
                break Err(err);
            }
            break Ok(());
        }
        let e = unsafe { &*e };
        let name = unsafe { CStr::from_ptr(e.d_name.as_ptr()) };
        out.push(RawDirent {
            name: OsStr::from_bytes(name.to_bytes()).to_os_string(),
            ino: e.d_ino as u64,
            d_type: e.d_type,
        });
    };
    unsafe { libc::closedir(d) };
    res.map(|_| out)
}

/// The d_type value readdir should report for this metadata.
pub fn dtype_of(m: &fs::Metadata) -> u8 {
    let t = m.file_type();
    if t.is_dir() {
        libc::DT_DIR
    } else if t.is_file() {
        libc::DT_REG
    } else if t.is_symlink() {
        libc::DT_LNK
    } else if t.is_fifo() {
        libc::DT_FIFO
    } else if t.is_char_device() {
        libc::DT_CHR
    } else if t.is_block_device() {
        libc::DT_BLK
    } else if t.is_socket() {
        libc::DT_SOCK
    } else {
        libc::DT_UNKNOWN
    }
}

/// Sorted names (without "." and "..") of a directory, via std::fs::read_dir.
pub fn names(p: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(p)? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

/// A file's contents as text, or its error as `<ERRNO ...>`.
pub fn read_str(p: &Path) -> String {
    match fs::read(p) {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(e) => format!("<{}>", describe_err(&e)),
    }
}

/// [`names`], with its error described.
pub fn names_or_err(p: &Path) -> Result<Vec<String>, String> {
    names(p).map_err(|e| describe_err(&e))
}

/// Writes `data` at `offset` of `p` (opened O_WRONLY, no O_TRUNC).
pub fn write_at(p: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(p)?;
    f.write_all_at(data, offset)
}
