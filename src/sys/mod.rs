//! Raw system-call wrappers: every `unsafe` block of the crate lives below this module.
//!
//! Everything here works relative to a directory file descriptor and never follows a
//! symlink in the last component, so callers cannot be tricked into leaving a layer.

pub mod caller_status;
pub mod fs;
pub mod heap;
pub mod process;
pub mod xattr;

use std::cell::Cell;
use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::thread::LocalKey;

/// Runs `f` on the first `len` bytes of the thread's buffer in `slot`, grown (zeroed) as
/// needed and kept for the next call: serving threads read and list into one buffer each
/// rather than a fresh zeroed one per request, whose memset showed in profiles. The buffer
/// is taken out while in use, so a nested call on the same slot just makes its own.
pub fn with_scratch<R>(
    slot: &'static LocalKey<Cell<Vec<u8>>>,
    len: usize,
    f: impl FnOnce(&mut [u8]) -> R,
) -> R {
    let mut buf = slot.take();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let r = f(&mut buf[..len]);
    slot.set(buf);
    r
}

/// An errno value; the currency of every fallible call in the core.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EDQUOT: Errno = Errno(libc::EDQUOT);
    pub const EMFILE: Errno = Errno(libc::EMFILE);
    pub const ENFILE: Errno = Errno(libc::ENFILE);

    /// The calling thread's current errno.
    pub fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

pub type SysResult<T> = Result<T, Errno>;

/// Turns a `-1`-means-error return into a `Result`.
pub(crate) fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

pub(crate) fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// A C string from an OS string; names with an interior NUL cannot exist on Linux.
pub fn cstr(s: &OsStr) -> SysResult<CName> {
    let b = s.as_bytes();
    if b.len() < SHORT_NAME {
        if b.contains(&0) {
            return Err(Errno::EINVAL);
        }
        let mut buf = [0u8; SHORT_NAME];
        buf[..b.len()].copy_from_slice(b);
        return Ok(CName::Short { buf, len: b.len() });
    }
    CString::new(b).map(CName::Long).map_err(|_| Errno::EINVAL)
}

/// Room for any file name (at most 255 bytes) and its NUL.
const SHORT_NAME: usize = 256;

/// A name or path as a C string: on the stack when it fits, as every file name does, so
/// the system calls made per name (a stat for each entry of a listing) allocate nothing.
// The big variant is the point: it lives on the stack for one system call.
#[allow(clippy::large_enum_variant)]
pub enum CName {
    Short { buf: [u8; SHORT_NAME], len: usize },
    Long(CString),
}

impl std::ops::Deref for CName {
    type Target = CStr;
    fn deref(&self) -> &CStr {
        match self {
            // SAFETY: `cstr` copied `len` bytes without a NUL into a zeroed buffer longer
            // than that, so `buf[len]` is the first NUL.
            CName::Short { buf, len } => unsafe {
                CStr::from_bytes_with_nul_unchecked(&buf[..=*len])
            },
            CName::Long(c) => c,
        }
    }
}

/// The empty path used with `AT_EMPTY_PATH`.
pub fn empty_path() -> &'static CStr {
    c""
}

/// Sets the process umask; returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

pub fn getuid() -> u32 {
    unsafe { libc::getuid() }
}

pub fn geteuid() -> u32 {
    unsafe { libc::geteuid() }
}

/// The effective uid and gid this process creates files with, read once (a daemon's
/// credentials do not change under it).
pub fn creator_ids() -> (u32, u32) {
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *IDS.get_or_init(|| unsafe { (libc::geteuid(), libc::getegid()) })
}

/// Whether this process is root of the initial user namespace, the only place where
/// `trusted.*` xattrs may be written and devices made. Root inside a user namespace (podman's
/// rootless pause namespace, `unshare -Ur`) is not: its uid map is not the identity of all ids.
/// Read once: a process's credentials and user namespace do not change under us.
pub fn is_host_root() -> bool {
    static HOST_ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HOST_ROOT.get_or_init(|| {
        geteuid() == 0
            && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
                let f: Vec<&str> = m.split_whitespace().collect();
                f == ["0", "0", "4294967295"]
            })
    })
}

/// Whether this process may open file handles (open_by_handle_at): CAP_DAC_READ_SEARCH
/// in the initial user namespace, which the kernel overlay asks of its mounter before it
/// records or follows one. Read once, as [`is_host_root`].
pub fn can_open_file_handles() -> bool {
    const CAP_DAC_READ_SEARCH: u32 = 2;
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        is_host_root()
            && std::fs::read_to_string("/proc/self/status").is_ok_and(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                    .is_some_and(|caps| caps & (1 << CAP_DAC_READ_SEARCH) != 0)
            })
    })
}

pub fn getgid() -> u32 {
    unsafe { libc::getgid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_names_keep_their_bytes_on_the_stack_and_beyond() {
        for len in [0, 1, 254, 255, 256, 4000] {
            let s = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let c = cstr(OsStr::new(&s)).unwrap();
            assert_eq!(c.to_bytes(), s.as_bytes(), "length {len}");
            assert_eq!(matches!(c, CName::Short { .. }), s.len() < SHORT_NAME);
        }
        for s in ["a\0b", "\0", &("x".repeat(300) + "\0")] {
            assert_eq!(cstr(OsStr::new(s)).err(), Some(Errno::EINVAL), "{s:?}");
        }
    }
}
