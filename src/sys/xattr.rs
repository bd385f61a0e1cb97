//! Extended attributes of `name` inside a directory fd, never following a final symlink.
//! An empty `name` means the object the fd itself refers to (an `O_PATH` fd of a file
//! whose last name is gone).
//!
//! Linux 6.13 added `*xattrat` calls that take a directory fd; older kernels get the same
//! effect through `/proc/self/fd/DIR/NAME` with the `l*` calls. The fd's own object is
//! reached through the magic link `/proc/self/fd/N` with the calls that follow it (it
//! leads to that object, and nothing beyond is followed): an `O_PATH` fd works there, and
//! not with `fgetxattr` or `AT_EMPTY_PATH`. `set` tries `fsetxattr` first, which takes a
//! file open for real (a copy being built) without that walk.

use super::{check, check_size, cstr, Errno, SysResult};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

static HAVE_XATTRAT: AtomicBool = AtomicBool::new(true);

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const SETXATTRAT: libc::c_long = 463;
    pub const GETXATTRAT: libc::c_long = 464;
    pub const LISTXATTRAT: libc::c_long = 465;
    pub const REMOVEXATTRAT: libc::c_long = 466;
}
#[cfg(not(target_arch = "x86_64"))]
mod nr {
    // The *xattrat numbers are shared by the generic syscall table (arm64, riscv, ...).
    pub const SETXATTRAT: libc::c_long = 463;
    pub const GETXATTRAT: libc::c_long = 464;
    pub const LISTXATTRAT: libc::c_long = 465;
    pub const REMOVEXATTRAT: libc::c_long = 466;
}

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<CString> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        use std::os::unix::ffi::OsStrExt;
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    CString::new(p).map_err(|_| Errno::EINVAL)
}

/// Whether the `*xattrat` calls can reach `name`: not the fd's own object, as they take
/// no `O_PATH` fd with `AT_EMPTY_PATH` (EBADF).
fn xattrat_for(name: &OsStr) -> bool {
    !name.is_empty() && HAVE_XATTRAT.load(Ordering::Relaxed)
}

fn use_at(ret: libc::c_long) -> Option<SysResult<usize>> {
    if ret >= 0 {
        return Some(Ok(ret as usize));
    }
    let e = Errno::last();
    if e == Errno::ENOSYS {
        HAVE_XATTRAT.store(false, Ordering::Relaxed);
        return None;
    }
    Some(Err(e))
}

/// Reads attribute `attr` of `name` in `dir`. With an empty `buf` returns the value's size.
pub fn get(dir: BorrowedFd<'_>, name: &OsStr, attr: &str, buf: &mut [u8]) -> SysResult<usize> {
    let a = CString::new(attr).map_err(|_| Errno::EINVAL)?;
    if xattrat_for(name) {
        let n = cstr(name)?;
        let mut args = XattrArgs {
            value: buf.as_mut_ptr() as u64,
            size: buf.len() as u32,
            flags: 0,
        };
        let ret = unsafe {
            libc::syscall(
                nr::GETXATTRAT,
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                a.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r;
        }
    }
    let p = proc_path(dir, name)?;
    let getxattr = if name.is_empty() {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    check_size(unsafe {
        getxattr(
            p.as_ptr(),
            a.as_ptr(),
            buf.as_mut_ptr() as *mut _,
            buf.len(),
        )
    })
}

/// Reads a whole attribute value, growing the buffer as needed.
pub fn get_vec(dir: BorrowedFd<'_>, name: &OsStr, attr: &str) -> SysResult<Vec<u8>> {
    let mut cap = 256usize;
    loop {
        let mut buf = vec![0u8; cap];
        match get(dir, name, attr, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e == Errno::ERANGE && cap < 1 << 20 => cap *= 8,
            Err(e) => return Err(e),
        }
    }
}

pub fn set(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attr: &str,
    value: &[u8],
    flags: i32,
) -> SysResult<()> {
    let a = CString::new(attr).map_err(|_| Errno::EINVAL)?;
    if xattrat_for(name) {
        let n = cstr(name)?;
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        let ret = unsafe {
            libc::syscall(
                nr::SETXATTRAT,
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                a.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r.map(drop);
        }
    }
    if name.is_empty() {
        // A file open for real (not O_PATH) takes it directly, without a walk through /proc.
        // SAFETY: NUL-terminated name and a value buffer of the length given.
        let ret = unsafe {
            libc::fsetxattr(
                dir.as_raw_fd(),
                a.as_ptr(),
                value.as_ptr() as *const _,
                value.len(),
                flags,
            )
        };
        match check(ret) {
            Err(Errno::EBADF) => {}
            other => return other.map(drop),
        }
    }
    let p = proc_path(dir, name)?;
    let setxattr = if name.is_empty() {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    check(unsafe {
        setxattr(
            p.as_ptr(),
            a.as_ptr(),
            value.as_ptr() as *const _,
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// Lists attribute names (NUL-separated, as the kernel returns them).
pub fn list(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Vec<u8>> {
    let mut cap = 1024usize;
    loop {
        let mut buf = vec![0u8; cap];
        let r = list_into(dir, name, &mut buf);
        match r {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e == Errno::ERANGE && cap < 1 << 20 => cap *= 8,
            Err(e) => return Err(e),
        }
    }
}

/// The attribute names of `name` in `dir` (NUL-terminated, one after another) read into
/// `buf`; ERANGE when they do not fit.
pub fn list_into(dir: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> SysResult<usize> {
    if xattrat_for(name) {
        let n = cstr(name)?;
        let ret = unsafe {
            libc::syscall(
                nr::LISTXATTRAT,
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r;
        }
    }
    let p = proc_path(dir, name)?;
    let listxattr = if name.is_empty() {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    check_size(unsafe { listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) })
}

pub fn remove(dir: BorrowedFd<'_>, name: &OsStr, attr: &str) -> SysResult<()> {
    let a = CString::new(attr).map_err(|_| Errno::EINVAL)?;
    if xattrat_for(name) {
        let n = cstr(name)?;
        let ret = unsafe {
            libc::syscall(
                nr::REMOVEXATTRAT,
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                a.as_ptr(),
            )
        };
        if let Some(r) = use_at(ret) {
            return r.map(drop);
        }
    }
    let p = proc_path(dir, name)?;
    let removexattr = if name.is_empty() {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    check(unsafe { removexattr(p.as_ptr(), a.as_ptr()) }).map(drop)
}

/// Splits a NUL-separated name list.
pub fn split_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|b| *b == 0).filter(|s| !s.is_empty())
}

/// The directory itself, named relative to its own fd: `.` resolves to it through the
/// `*xattrat` calls (no walk through /proc) and through `/proc/self/fd/N/.` alike.
const SELF: &str = ".";

/// Sets an attribute on the directory an (`O_PATH`) fd refers to.
pub fn set_on_dir(dir: BorrowedFd<'_>, attr: &str, value: &[u8]) -> SysResult<()> {
    set(dir, OsStr::new(SELF), attr, value, 0)
}

/// Reads an attribute of the directory an (`O_PATH`) fd refers to.
pub fn get_on_dir(dir: BorrowedFd<'_>, attr: &str) -> SysResult<Vec<u8>> {
    get_vec(dir, OsStr::new(SELF), attr)
}

/// Removes an attribute of the directory an (`O_PATH`) fd refers to.
pub fn remove_on_dir(dir: BorrowedFd<'_>, attr: &str) -> SysResult<()> {
    remove(dir, OsStr::new(SELF), attr)
}
