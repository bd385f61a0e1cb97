//! Process-level calls used to run as a daemon: fork, pipes, sessions, signals, unmount,
//! the mount's read-ahead window, a thread's scheduling class and CPUs, whether the FUSE
//! connection is still up, and whether we may give the kernel backing files.

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

/// Raises this process's soft limit on open files to its hard limit, as fuse-overlayfs
/// does: shells and service managers start programs with a soft limit of 1024, while every
/// file open through the mount, and every layer, holds fds of ours. Returns the soft limit
/// in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let Some(r) = nofile_limits() else {
        return 1024;
    };
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads a struct we own. It fails for a hard limit above
        // fs.nr_open (RLIM_INFINITY, say); the old soft limit then stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return r.rlim_max;
        }
    }
    r.rlim_cur
}

/// The soft limit on open files.
pub fn fd_limit() -> u64 {
    nofile_limits().map_or(1024, |r| r.rlim_cur)
}

fn nofile_limits() -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r)
}

/// Moves the calling thread to the idle scheduling class (SCHED_IDLE: it runs only on a
/// CPU nothing else wants) or back to the normal one.
pub fn set_sched_idle(idle: bool) -> SysResult<()> {
    let p = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: sets this thread's own policy from a valid sched_param.
    check(unsafe { libc::sched_setscheduler(0, policy, &p) }).map(|_| ())
}

/// A set of CPUs, for a thread's affinity.
pub type CpuSet = libc::cpu_set_t;

/// The set holding CPU `cpu` alone; `None` past what a set can hold.
pub fn one_cpu(cpu: usize) -> Option<CpuSet> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return None;
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it (checked above).
    let mut set: CpuSet = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Some(set)
}

/// The CPUs the calling thread may run on.
pub fn thread_cpus() -> SysResult<CpuSet> {
    // SAFETY: sched_getaffinity fills the set of the size given, for the calling thread.
    let mut set: CpuSet = unsafe { std::mem::zeroed() };
    check(unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) })?;
    Ok(set)
}

/// The CPUs the calling thread may run on, as a list (for tests).
#[cfg(test)]
pub fn thread_cpu_list() -> Vec<usize> {
    let set = thread_cpus().expect("sched_getaffinity");
    // SAFETY: CPU_ISSET reads within the set for indexes below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Lets the calling thread run only on the CPUs of `set`.
pub fn set_thread_cpus(set: &CpuSet) -> SysResult<()> {
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
    check(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) }).map(|_| ())
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments and no memory effects.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
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

/// Sends the argument-less ioctl `cmd` to the directory at `path` (opened read-only).
pub fn dir_ioctl(path: &Path, cmd: u32) -> SysResult<()> {
    use std::os::fd::AsRawFd;
    let dir =
        std::fs::File::open(path).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))?;
    check(unsafe { libc::ioctl(dir.as_raw_fd(), cmd as _) }).map(drop)
}

/// Whether the (writable) mount at `path` answers a change with EROFS, as a view without
/// an upper layer does: asks to replace an attribute nothing carries, which changes nothing
/// where changes are allowed (ENODATA there).
pub fn serves_read_only(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let name = c"user.ovlfuse.remount-probe";
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            std::ptr::null(),
            0,
            libc::XATTR_REPLACE,
        )
    };
    r < 0 && Errno::last() == Errno::EROFS
}

/// Raises the read-ahead window of the FUSE mount at `mnt` to at least `kib` KiB. The
/// window asked for at FUSE init is capped by the connection's default of 128 KiB, and
/// with it a sequential read of a lower file (served by the daemon) costs a round trip
/// per 128 KiB; at 1 MiB, a cold 1 GiB read measured 4.7 s -> 0.6 s. Root only (sysfs);
/// elsewhere the default stays.
pub fn raise_readahead(mnt: &Path, kib: u32) {
    let Some(dev) = mount_dev(mnt) else {
        log::debug!("read-ahead: {} not found in mountinfo", mnt.display());
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let now: u32 = std::fs::read_to_string(&knob)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if now < kib {
        if let Err(e) = std::fs::write(&knob, kib.to_string()) {
            log::debug!("read-ahead: cannot write {knob}: {e}");
        }
    }
}

/// The `major:minor` of the newest mount at `mnt`, from /proc/self/mountinfo.
fn mount_dev(mnt: &Path) -> Option<String> {
    let mnt = std::fs::canonicalize(mnt).ok()?;
    let want = escape_mountinfo(&mnt.to_string_lossy());
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&want.as_str())).then(|| f.get(2).map(|d| d.to_string()))?
    })
}

/// A path as mountinfo writes it: space, tab, newline and backslash in octal escapes.
fn escape_mountinfo(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Whether this process's FUSE connection has ended: its /dev/fuse fd polls POLLERR, as
/// libfuse checks before unmounting. `false` when no such fd is open.
pub fn fuse_connection_gone() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    for e in dir.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if target != Path::new("/dev/fuse") {
            continue;
        }
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        if unsafe { libc::poll(&mut p, 1, 0) } == 1 && p.revents & libc::POLLERR != 0 {
            return true;
        }
    }
    false
}

/// Whether the kernel would let us register backing files for FUSE passthrough: it asks
/// for CAP_SYS_ADMIN in the initial user namespace, which root inside a container's user
/// namespace (a rootless engine's mount program) does not have.
pub fn may_register_backing_files() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has_cap = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0);
    has_cap && in_initial_user_namespace()
}

/// The initial user namespace maps every id to itself, in one line.
fn in_initial_user_namespace() -> bool {
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}
