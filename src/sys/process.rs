//! Process-level calls used to run as a daemon: fork, pipes, sessions, signals, unmount.

use super::{check, Errno, SysResult};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

pub enum Forked {
    Parent,
    Child,
}

/// fork(2). Only called while the process has a single thread.
pub fn fork() -> SysResult<Forked> {
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        _ => Ok(Forked::Parent),
    }
}

pub fn pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn setsid() {
    unsafe {
        libc::setsid();
    }
}

/// Points stdin, stdout and stderr at /dev/null (a daemon must not hold its caller's tty
/// or pipes open: container engines wait for them to close).
pub fn stdio_to_null() {
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

fn term_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the termination signals in this thread and every thread started after it, so
/// that one thread can wait for them with `wait_term_signal`.
pub fn block_term_signals() {
    let set = term_signals();
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGTERM, SIGINT or SIGHUP; returns the signal number.
pub fn wait_term_signal() -> i32 {
    let set = term_signals();
    let mut sig = 0;
    unsafe {
        libc::sigwait(&set, &mut sig);
    }
    sig
}

/// Detaches the mount at `path` (lazy unmount).
pub fn umount_detach(path: &Path) -> SysResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// Changes the flags of the mount at `path` (`mount -o remount`): read-only or not, and
/// the given MS_* flags.
pub fn remount(path: &Path, flags: libc::c_ulong) -> SysResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}
