//! Shared helpers for the real-mount integration tests.
//!
//! Everything here uses only std and libc; the only external programs run are `mount`,
//! `umount`, `fusermount3` (and the `ovlfuse` binary under test).
//!
//! Each test builds its layers below a unique [`Scratch`] directory, mounts with
//! [`mount_ovlfuse`] / [`mount_kernel`] (the returned [`MountGuard`] unmounts on drop, even
//! when an assertion fails), and guards its lower layers with a [`LowerCheck`].

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where every scratch directory lives.
pub const TEST_ROOT: &str = "/tmp/ovlfuse-tests";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// The binary and the environment
// ---------------------------------------------------------------------------------------

/// The `ovlfuse` binary cargo built for these tests.
pub fn ovlfuse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ovlfuse"))
}

/// False only when /dev/fuse is missing; then says so loudly on stderr.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!();
    eprintln!("************************************************************");
    eprintln!("*** SKIPPED: no /dev/fuse on this machine                ***");
    eprintln!("************************************************************");
    eprintln!();
    false
}

// ---------------------------------------------------------------------------------------
// errno helpers
// ---------------------------------------------------------------------------------------

/// "ENOENT (2)" for 2, and so on.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN/EWOULDBLOCK",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::EDOM => "EDOM",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP/ENOTSUP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::EBADMSG => "EBADMSG",
        libc::EUCLEAN => "EUCLEAN",
        _ => "E?",
    };
    format!("{n} ({e})")
}

/// An io::Error with its errno spelled out.
pub fn describe_err(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{} [{}]", errno_name(n), e),
        None => e.to_string(),
    }
}

/// A comparable, printable outcome of an operation: "ok: VALUE" or "err: ENOENT (2)".
pub fn outcome<T: fmt::Debug>(r: &io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("err: {}", errno_name(n)),
            None => format!("err: {e}"),
        },
    }
}

/// Like [`outcome`] but ignores the success value ("ok" / "err: ENOENT (2)").
pub fn outcome_unit<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("err: {}", errno_name(n)),
            None => format!("err: {e}"),
        },
    }
}

/// Asserts that `r` failed with errno `want`.
#[track_caller]
pub fn expect_errno<T: fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected {}, but it succeeded ({v:?})",
            errno_name(want)
        ),
        Err(e) if e.raw_os_error() == Some(want) => {}
        Err(e) => panic!(
            "{what}: expected {}, got {}",
            errno_name(want),
            describe_err(&e)
        ),
    }
}

/// Unwraps `r`, panicking with the errno name and `what`.
#[track_caller]
pub fn ok<T>(r: io::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: failed with {}", describe_err(&e)),
    }
}

/// Turns a libc return value (-1 = error) into an io::Result.
pub fn cvt<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

// ---------------------------------------------------------------------------------------
// Small libc wrappers
// ---------------------------------------------------------------------------------------

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

fn cstr(s: &str) -> CString {
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

fn errno_location_clear() {
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

// ---------------------------------------------------------------------------------------
// /proc/self/mountinfo
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct MountEntry {
    pub id: u64,
    /// The superblock's device, `major:minor`: one per FUSE connection, shared by every
    /// copy of the mount (bind mounts, other mount namespaces).
    pub dev: String,
    pub mount_point: PathBuf,
    pub opts: String,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..(i + 4).min(b.len())];
            if oct.len() == 3 && oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// The current mount table of this process's namespace.
pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    parse_mountinfo(&text)
}

/// The entries of a `/proc/PID/mountinfo` text.
fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < sep + 3 {
            continue;
        }
        v.push(MountEntry {
            id: fields[0].parse().unwrap_or(0),
            dev: fields[2].to_string(),
            mount_point: PathBuf::from(unescape_mountinfo(fields[4])),
            opts: fields[5].to_string(),
            fstype: fields[sep + 1].to_string(),
            source: unescape_mountinfo(fields[sep + 2])
                .to_string_lossy()
                .into_owned(),
            super_opts: fields
                .get(sep + 3)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        });
    }
    v
}

/// Makes `p` absolute lexically (no stat: a dead FUSE mount point must not be touched).
pub fn absolute(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().expect("current_dir")
    };
    let mut out = base;
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// The topmost mount whose mount point is exactly `p`.
pub fn mount_at(p: &Path) -> Option<MountEntry> {
    let p = absolute(p);
    mounts().into_iter().rfind(|m| m.mount_point == p)
}

/// Whether a FUSE file system is the topmost mount at `p`.
pub fn is_fuse_mounted(p: &Path) -> bool {
    mount_at(p)
        .map(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
        .unwrap_or(false)
}

/// Whether anything is mounted at `p`.
pub fn is_mounted(p: &Path) -> bool {
    mount_at(p).is_some()
}

/// Bounded polling for a FUSE mount to show up at `p`.
pub fn wait_for_fuse_mount(p: &Path, timeout: Duration) -> bool {
    wait_until(timeout, || is_fuse_mounted(p))
}

/// Mount points strictly below `root` (or equal to it when `inclusive`).
pub fn mounts_below(root: &Path, inclusive: bool) -> Vec<PathBuf> {
    let root = absolute(root);
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| mp.starts_with(&root) && (inclusive || mp != &root))
        .collect();
    v.dedup();
    v
}

fn lazy_umount(p: &Path) -> io::Result<()> {
    let cp = cpath(p);
    cvt(unsafe { libc::umount2(cp.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            // "pid (comm) S ..." — comm may contain spaces and parens.
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

/// Processes (pid, command), one per mount namespace other than ours, whose namespace
/// holds a FUSE mount of the superblock `dev` (`major:minor`, see `MountEntry::dev`).
pub fn namespaces_holding(dev: &str) -> Vec<(u32, String)> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if Some(&ns) == ours.as_ref() || !seen.insert(ns) {
            continue;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        let holds = parse_mountinfo(&text)
            .iter()
            .any(|m| m.dev == dev && m.fstype.starts_with("fuse"));
        if holds {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bounded wait for `pid` to be gone (or a zombie). True when it is.
pub fn wait_pid_exit(pid: u32, timeout: Duration) -> bool {
    wait_until(timeout, || !pid_alive(pid))
}

/// Each thread of process `pid`: name, scheduler state, where it waits (wchan) and, where
/// we may read it, its kernel stack; so that a daemon that will not exit says why.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task: the process is gone)\n");
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .map(|l| l["State:".len()..].trim().to_string())
            .unwrap_or_default();
        out += &format!(
            "  {} {} [{}] wchan {}\n",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan").trim()
        );
        for l in read("stack").lines() {
            out += &format!("      {l}\n");
        }
    }
    out
}

/// Environment variable naming the directory a test launched ovlfuse from.
pub const LAUNCH_CWD_ENV: &str = "OVLFUSE_TEST_LAUNCH_CWD";

/// The pid of the ovlfuse daemon serving `mnt`: a process running the test binary whose
/// command line names the mount point (absolute, or relative to its launch directory: the
/// one [`run_ovlfuse_in`] recorded in its environment, else its current directory).
pub fn find_daemon_pid(mnt: &Path) -> Option<u32> {
    let mnt = absolute(mnt);
    let bin = fs::canonicalize(ovlfuse_bin()).unwrap_or_else(|_| ovlfuse_bin());
    let me = std::process::id();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let exe_s = exe.to_string_lossy();
        let exe = PathBuf::from(exe_s.strip_suffix(" (deleted)").unwrap_or(&exe_s));
        if exe != bin {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        // Where relative arguments were resolved: the launch directory recorded by
        // run_ovlfuse_in (a daemon moves to "/"), else the process's current directory.
        let launch_cwd: Option<PathBuf> = fs::read(format!("/proc/{pid}/environ"))
            .ok()
            .and_then(|env| {
                env.split(|b| *b == 0).find_map(|kv| {
                    kv.strip_prefix(LAUNCH_CWD_ENV.as_bytes())
                        .and_then(|r| r.strip_prefix(b"="))
                        .map(|v| PathBuf::from(OsStr::from_bytes(v)))
                })
            })
            .or_else(|| fs::read_link(format!("/proc/{pid}/cwd")).ok());
        let hit = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty() && !a.starts_with(b"-"))
            .any(|a| {
                let ap = Path::new(OsStr::from_bytes(a));
                if ap.is_absolute() {
                    absolute(ap) == mnt
                } else {
                    match &launch_cwd {
                        Some(cwd) => absolute(&cwd.join(ap)) == mnt,
                        None => false,
                    }
                }
            });
        if hit && pid_alive(pid) {
            found.push(pid);
        }
    }
    found.sort();
    found.pop()
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured in files (so a daemon
/// that keeps them open cannot block us), killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let _ = fs::create_dir_all(TEST_ROOT);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let base = format!("{TEST_ROOT}/.out-{}-{n}", std::process::id());
    let (out_p, err_p) = (
        PathBuf::from(format!("{base}.stdout")),
        PathBuf::from(format!("{base}.stderr")),
    );
    let out_f = fs::File::create(&out_p).expect("create stdout capture file");
    let err_f = fs::File::create(&err_p).expect("create stderr capture file");
    cmd.stdin(Stdio::null()).stdout(out_f).stderr(err_f);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = fs::read(&out_p).unwrap_or_default();
    let mut stderr = fs::read(&err_p).unwrap_or_default();
    let _ = fs::remove_file(&out_p);
    let _ = fs::remove_file(&err_p);
    if killed {
        stderr.extend_from_slice(
            format!("\n[test harness: killed {cmd:?} after {timeout:?} without exiting]\n")
                .as_bytes(),
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs the ovlfuse binary with `args` (60 s limit). If it mounted something, the caller's
/// Scratch still cleans it up.
pub fn run_ovlfuse(args: &[&str]) -> Output {
    let mut cmd = Command::new(ovlfuse_bin());
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// Like [`run_ovlfuse`] but in `cwd` (for relative layer paths).
pub fn run_ovlfuse_in(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(ovlfuse_bin());
    // Recorded so that find_daemon_pid can resolve the daemon's relative arguments.
    cmd.args(args)
        .current_dir(cwd)
        .env(LAUNCH_CWD_ENV, absolute(cwd));
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// Bounded wait for a spawned child; None if it is still running after `timeout`.
pub fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Human-readable summary of a finished command.
pub fn show_output(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_tool(prog: &str, args: &[&OsStr]) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(30))
}

/// Runs an unmount command (`umount ...` or `fusermount3 -u ...`), retrying for up to 5 s
/// while it fails with "busy".
///
/// Why: tests run in parallel threads of one process, and every process another thread
/// spawns (or forks) starts with a copy of the whole fd table until its exec closes the
/// O_CLOEXEC descriptors. A descriptor this test just closed can thus briefly pin the mount
/// and make the unmount fail with EBUSY. A mount that stays busy still fails after 5 s.
pub fn run_unmount(prog: &str, args: &[&OsStr]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = run_tool(prog, args);
        let busy = String::from_utf8_lossy(&o.stderr)
            .to_lowercase()
            .contains("busy");
        if o.status.success() || !busy || Instant::now() >= deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------------------

/// A unique directory /tmp/ovlfuse-tests/<name>-<pid>-<counter>, removed on drop (after
/// lazily unmounting anything still mounted below it).
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        fs::create_dir_all(TEST_ROOT).unwrap_or_else(|e| panic!("mkdir {TEST_ROOT}: {e}"));
        let clean: String = name
            .chars()
            .map(|c| if c == '/' || c == '\0' { '_' } else { c })
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = PathBuf::from(format!("{TEST_ROOT}/{clean}-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&root).is_ok() {
            cleanup_tree(&root);
        }
        fs::create_dir(&root).unwrap_or_else(|e| panic!("mkdir {root:?}: {}", describe_err(&e)));
        Scratch { root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// mkdir -p `rel` below the root; returns its path.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {p:?}: {}", describe_err(&e)));
        p
    }
}

fn cleanup_tree(root: &Path) {
    // Unmount everything at or below root, deepest first; several rounds for stacked mounts.
    for _ in 0..20 {
        let mut ms = mounts_below(root, true);
        if ms.is_empty() {
            break;
        }
        ms.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in ms {
            let _ = lazy_umount(&m);
        }
    }
    let left = mounts_below(root, true);
    if !left.is_empty() {
        eprintln!("warning: not removing {root:?}: still mounted below it: {left:?}");
        return;
    }
    let _ = fs::remove_dir_all(root);
}

impl Drop for Scratch {
    fn drop(&mut self) {
        cleanup_tree(&self.root);
    }
}

// ---------------------------------------------------------------------------------------
// Building layers
// ---------------------------------------------------------------------------------------

/// One thing to create in a layer directory (paths relative to it).
#[derive(Debug, Clone, Copy)]
pub enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    /// (path, target)
    Symlink(&'a str, &'a str),
    Fifo(&'a str),
    /// A char device 0/0, the kernel's whiteout.
    Whiteout(&'a str),
    /// A directory with trusted.overlay.opaque=y.
    Opaque(&'a str),
    /// (path, name, value)
    Xattr(&'a str, &'a str, &'a [u8]),
    Mode(&'a str, u32),
    Owner(&'a str, u32, u32),
    /// (existing, new)
    Hardlink(&'a str, &'a str),
}

fn mkparents(p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("build: mkdir -p {parent:?}: {}", describe_err(&e)));
    }
}

/// Creates `entries` below `dir`, in order; parents are created as needed.
pub fn build(dir: &Path, entries: &[E]) {
    for e in entries {
        let ctx = |err: io::Error| -> ! { panic!("build {dir:?}: {e:?}: {}", describe_err(&err)) };
        match *e {
            E::File(p, data) => {
                let p = dir.join(p);
                mkparents(&p);
                fs::write(&p, data).unwrap_or_else(|x| ctx(x));
            }
            E::Dir(p) => fs::create_dir_all(dir.join(p)).unwrap_or_else(|x| ctx(x)),
            E::Symlink(p, target) => {
                let p = dir.join(p);
                mkparents(&p);
                std::os::unix::fs::symlink(target, &p).unwrap_or_else(|x| ctx(x));
            }
            E::Fifo(p) => {
                let p = dir.join(p);
                mkparents(&p);
                mkfifo(&p, 0o644).unwrap_or_else(|x| ctx(x));
            }
            E::Whiteout(p) => {
                let p = dir.join(p);
                mkparents(&p);
                mknod(&p, libc::S_IFCHR, 0).unwrap_or_else(|x| ctx(x));
            }
            E::Opaque(p) => {
                let p = dir.join(p);
                fs::create_dir_all(&p).unwrap_or_else(|x| ctx(x));
                lsetxattr(&p, "trusted.overlay.opaque", b"y").unwrap_or_else(|x| ctx(x));
            }
            E::Xattr(p, name, value) => {
                lsetxattr(&dir.join(p), name, value).unwrap_or_else(|x| ctx(x))
            }
            E::Mode(p, mode) => chmod_nofollow_dir(&dir.join(p), mode).unwrap_or_else(|x| ctx(x)),
            E::Owner(p, uid, gid) => lchown(&dir.join(p), uid, gid).unwrap_or_else(|x| ctx(x)),
            E::Hardlink(existing, new) => {
                let n = dir.join(new);
                mkparents(&n);
                fs::hard_link(dir.join(existing), &n).unwrap_or_else(|x| ctx(x));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stacks and mounts
// ---------------------------------------------------------------------------------------

/// Escapes `\`, `:` and `,` in a layer path for an option value.
pub fn escape_layer(p: &Path) -> String {
    let s = p
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 layer path {p:?}"));
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The directories of one overlay: lower0 (highest) .. lowerN-1, upper, work, mnt.
#[derive(Debug, Clone)]
pub struct Stack {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    pub fn new(s: &Scratch, n_lowers: usize) -> Stack {
        Stack::new_at(&s.root, n_lowers)
    }

    /// Same as [`Stack::new`] but below any directory.
    pub fn new_at(dir: &Path, n_lowers: usize) -> Stack {
        let mk = |name: &str| {
            let p = dir.join(name);
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {}", describe_err(&e)));
            p
        };
        Stack {
            lowers: (0..n_lowers).map(|i| mk(&format!("lower{i}"))).collect(),
            upper: mk("upper"),
            work: mk("work"),
            mnt: mk("mnt"),
        }
    }

    /// Puts the upper and work directories in `fs_root` (the root of another filesystem,
    /// say a tmpfs the test mounted), made there.
    pub fn move_upper_to(&mut self, fs_root: &Path) {
        self.upper = fs_root.join("upper");
        self.work = fs_root.join("work");
        for d in [&self.upper, &self.work] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {d:?}: {}", describe_err(&e)));
        }
    }

    /// "lowerdir=a:b" with each path escaped.
    pub fn lowerdir_opt(&self) -> String {
        lowerdir_opt_of(&self.lowers)
    }

    /// "lowerdir=..,upperdir=..,workdir=.."
    pub fn full_opts(&self) -> String {
        format!(
            "{},upperdir={},workdir={}",
            self.lowerdir_opt(),
            escape_layer(&self.upper),
            escape_layer(&self.work)
        )
    }
}

pub fn lowerdir_opt_of(lowers: &[PathBuf]) -> String {
    let v: Vec<String> = lowers.iter().map(|l| escape_layer(l)).collect();
    format!("lowerdir={}", v.join(":"))
}

/// A live mount; unmounted on drop (never panics there).
pub struct MountGuard {
    mnt: PathBuf,
    pid: Option<u32>,
    kernel: bool,
    active: bool,
}

impl MountGuard {
    /// Takes charge of a FUSE mount already at `mnt` (made by the test itself).
    pub fn adopt_fuse(mnt: &Path) -> MountGuard {
        let mnt = absolute(mnt);
        let pid = find_daemon_pid(&mnt);
        MountGuard {
            mnt,
            pid,
            kernel: false,
            active: true,
        }
    }

    /// Takes charge of a FUSE mount whose daemon pid is known.
    pub fn adopt_fuse_pid(mnt: &Path, pid: Option<u32>) -> MountGuard {
        MountGuard {
            mnt: absolute(mnt),
            pid,
            kernel: false,
            active: true,
        }
    }

    /// Takes charge of a non-FUSE mount (kernel overlay, tmpfs) at `mnt`.
    pub fn adopt_kernel(mnt: &Path) -> MountGuard {
        MountGuard {
            mnt: absolute(mnt),
            pid: None,
            kernel: true,
            active: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The test unmounted by itself: do nothing on drop.
    pub fn forget(mut self) {
        self.active = false;
    }

    /// Unmounts now and asserts that it worked, that the mount is gone and that the
    /// daemon (if known) exited within 10 s.
    pub fn unmount(mut self) {
        self.active = false;
        let dev = (!self.kernel)
            .then(|| mount_at(&self.mnt).map(|m| m.dev))
            .flatten();
        let o = if self.kernel {
            run_unmount("umount", &[self.mnt.as_os_str()])
        } else {
            run_unmount("fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()])
        };
        assert!(
            o.status.success(),
            "unmounting {:?} failed:\n{}",
            self.mnt,
            show_output(&o)
        );
        assert!(
            !is_mounted(&self.mnt) || !self.still_ours(),
            "{:?} is still mounted after unmount",
            self.mnt
        );
        if let Some(pid) = self.pid {
            if wait_pid_exit(pid, Duration::from_secs(10)) {
                return;
            }
            // A process that made a mount namespace while the mount was up (`unshare -m`,
            // a container) holds a copy of it there, and the daemon rightly serves that
            // copy until it goes.
            let held = dev.as_deref().map(namespaces_holding).unwrap_or_default();
            if !held.is_empty() {
                eprintln!(
                    "NOTE: the ovlfuse daemon (pid {pid}) for {:?} outlives its unmount: \
                     another mount namespace holds a copy of the mount (pid, command: \
                     {held:?}); waiting up to 60 s for it to go",
                    self.mnt
                );
                let dev = dev.unwrap_or_default();
                if !wait_until(Duration::from_secs(60), || {
                    namespaces_holding(&dev).is_empty()
                }) {
                    eprintln!(
                        "NOT CHECKED: whether the daemon (pid {pid}) exits after the unmount \
                         of {:?}: a mount namespace of another process still holds the mount \
                         ({:?})",
                        self.mnt,
                        namespaces_holding(&dev)
                    );
                    return;
                }
            }
            assert!(
                wait_pid_exit(pid, Duration::from_secs(10)),
                "the ovlfuse daemon (pid {pid}) for {:?} did not exit within 10 s of the unmount \
                 (no other mount namespace holds a copy of the mount); its threads now:\n{}",
                self.mnt,
                thread_states(pid)
            );
        }
    }

    fn still_ours(&self) -> bool {
        match mount_at(&self.mnt) {
            None => false,
            Some(m) => {
                if self.kernel {
                    !m.fstype.starts_with("fuse")
                } else {
                    m.fstype == "fuse" || m.fstype.starts_with("fuse.")
                }
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if self.still_ours() {
            let o = if self.kernel {
                run_unmount("umount", &[self.mnt.as_os_str()])
            } else {
                run_unmount("fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()])
            };
            if !o.status.success() && self.still_ours() {
                let _ = run_tool("umount", &[OsStr::new("-l"), self.mnt.as_os_str()]);
            }
        }
        if let Some(pid) = self.pid {
            if !wait_pid_exit(pid, Duration::from_secs(10)) {
                eprintln!(
                    "warning: ovlfuse daemon pid {pid} for {:?} still running 10 s after unmount",
                    self.mnt
                );
            }
        }
    }
}

/// Runs the binary in daemon mode with `args`, checks it exited 0 and that a FUSE mount is
/// live at `mnt`, and returns a guard for it.
pub fn mount_ovlfuse_args(args: &[&str], mnt: &Path) -> MountGuard {
    let mut args = args.to_vec();
    if !args.iter().any(|a| a.contains("uring=")) {
        args.extend(["-o", transport_opt()]);
    }
    if let Some(o) = data_path_opt() {
        if !args.iter().any(|a| a.contains("passthrough=")) {
            args.extend(["-o", o]);
        }
    }
    if let Some(o) = listattrs_opt() {
        if !args.iter().any(|a| a.contains("listattrs=")) {
            args.extend(["-o", o]);
        }
    }
    let args = &args[..];
    let o = run_ovlfuse(args);
    let mnt = absolute(mnt);
    if !o.status.success() {
        panic!("ovlfuse {args:?} failed:\n{}", show_output(&o));
    }
    if !is_fuse_mounted(&mnt) {
        // The contract says exit 0 only once the mount is live; the cli tests check that
        // strictly. Here, be lenient for a moment so that semantic tests stay about semantics.
        if wait_for_fuse_mount(&mnt, Duration::from_secs(10)) {
            eprintln!("warning: ovlfuse exited 0 before {mnt:?} was mounted (appeared later)");
        } else {
            panic!(
                "ovlfuse {args:?} exited 0 but no FUSE mount appeared at {mnt:?}:\n{}",
                show_output(&o)
            );
        }
    }
    let pid = find_daemon_pid(&mnt);
    if pid.is_none() {
        eprintln!("warning: could not find the ovlfuse daemon process for {mnt:?}");
    }
    MountGuard {
        mnt,
        pid,
        kernel: false,
        active: true,
    }
}

/// The FUSE transport the harness's mounts use: /dev/fuse unless
/// `OVLFUSE_TEST_TRANSPORT=uring`, which runs them over io_uring and first lets the kernel
/// offer it (`enable_uring`, left on afterwards: it only lets daemons ask for io_uring).
pub fn transport_opt() -> &'static str {
    static OPT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    OPT.get_or_init(
        || match std::env::var("OVLFUSE_TEST_TRANSPORT").as_deref() {
            Ok("uring") if !Path::new(FUSE_URING_PARAM).exists() => {
                eprintln!(
                    "NOT TESTED OVER IO_URING: this kernel has no FUSE over io_uring \
                 ({FUSE_URING_PARAM} is missing); these mounts use /dev/fuse"
                );
                "uring=off"
            }
            Ok("uring") => {
                if let Err(e) = enable_fuse_uring() {
                    panic!("OVLFUSE_TEST_TRANSPORT=uring, but {e}");
                }
                "uring=on"
            }
            Ok("dev") | Err(_) => "uring=off",
            Ok(other) => panic!("OVLFUSE_TEST_TRANSPORT={other}: want uring or dev"),
        },
    )
}

/// How file data travels in the harness's mounts: as the daemon decides (passthrough as
/// root) unless `OVLFUSE_TEST_DATA=writeback`, which turns passthrough off so that the
/// kernel's writeback cache carries the writes, as for an unprivileged daemon.
pub fn data_path_opt() -> Option<&'static str> {
    static OPT: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *OPT.get_or_init(|| match std::env::var("OVLFUSE_TEST_DATA").as_deref() {
        Ok("writeback") => Some("passthrough=off"),
        Ok("default") | Err(_) => None,
        Ok(other) => panic!("OVLFUSE_TEST_DATA={other}: want writeback or default"),
    })
}

/// What listings carry in the harness's mounts: as the daemon decides (attributes, except
/// for big cold directories) unless `OVLFUSE_TEST_LISTATTRS=off`, which makes every
/// READDIRPLUS reply give names only, so that each stat after a listing is a lookup.
pub fn listattrs_opt() -> Option<&'static str> {
    static OPT: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *OPT.get_or_init(
        || match std::env::var("OVLFUSE_TEST_LISTATTRS").as_deref() {
            Ok("off") => Some("listattrs=off"),
            Ok("default") | Err(_) => None,
            Ok(other) => panic!("OVLFUSE_TEST_LISTATTRS={other}: want off or default"),
        },
    )
}

/// How the start of a foreground daemon (`ovlfuse -f`) ended.
#[derive(Debug)]
pub enum Started {
    Mounted,
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Waits up to 10 s for `child`, an `ovlfuse -f` mounting at `mnt`, to mount or exit.
pub fn wait_for_foreground_mount(child: &mut std::process::Child, mnt: &Path) -> Started {
    for _ in 0..500 {
        if is_fuse_mounted(mnt) {
            return Started::Mounted;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Started::Exited(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Started::TimedOut
}

/// Whether a test of FUSE over io_uring can run: /dev/fuse is there (else the loud skip of
/// `fuse_available`) and the kernel has FUSE over io_uring (else a loud skip), which is
/// then turned on. A failure to turn it on fails the test.
pub fn fuse_uring_available() -> bool {
    if !fuse_available() {
        return false;
    }
    if !Path::new(FUSE_URING_PARAM).exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring ({FUSE_URING_PARAM})");
        return false;
    }
    if let Err(e) = enable_fuse_uring() {
        panic!("{e}");
    }
    true
}

/// The kernel's switch for FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux 6.14+).
pub const FUSE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Lets the kernel offer FUSE over io_uring to daemons.
pub fn enable_fuse_uring() -> Result<(), String> {
    fs::write(FUSE_URING_PARAM, "Y").map_err(|e| {
        format!("cannot turn on {FUSE_URING_PARAM}: {e} (kernel without CONFIG_FUSE_IO_URING?)")
    })
}

/// The transport option for a test that checks something over both transports:
/// `uring=on` once the kernel offers FUSE over io_uring, else `uring=off` with a note that
/// `what` was not tested over io_uring.
pub fn uring_opt_or_note(what: &str) -> &'static str {
    match enable_fuse_uring() {
        Ok(()) => "uring=on",
        Err(e) => {
            eprintln!("NOTE: {what} not tested over io_uring: {e}");
            "uring=off"
        }
    }
}

/// ovlfuse -o lowerdir=..,upperdir=..,workdir=..[,extra] MNT
pub fn mount_ovlfuse(stack: &Stack, extra_opts: &[&str]) -> MountGuard {
    let mut opts = vec![stack.full_opts()];
    opts.extend(extra_opts.iter().map(|s| s.to_string()));
    let opts = opts.join(",");
    let mnt = stack.mnt.to_str().expect("utf-8 mnt").to_string();
    mount_ovlfuse_args(&["-o", &opts, &mnt], &stack.mnt)
}

/// ovlfuse -o lowerdir=..[,extra] MNT (no upper: read-only view)
pub fn mount_ovlfuse_ro(lowers: &[PathBuf], mnt: &Path, extra_opts: &[&str]) -> MountGuard {
    let mut opts = vec![lowerdir_opt_of(lowers)];
    opts.extend(extra_opts.iter().map(|s| s.to_string()));
    let opts = opts.join(",");
    let m = mnt.to_str().expect("utf-8 mnt").to_string();
    mount_ovlfuse_args(&["-o", &opts, &m], mnt)
}

fn mount_kernel_opts(opts: &str, mnt: &Path) -> MountGuard {
    let o = run_tool(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new("overlay"),
            OsStr::new("overlay"),
            OsStr::new("-o"),
            OsStr::new(opts),
            mnt.as_os_str(),
        ],
    );
    if !o.status.success() {
        panic!(
            "kernel overlay mount -o {opts} {mnt:?} failed:\n{}",
            show_output(&o)
        );
    }
    let g = MountGuard::adopt_kernel(mnt);
    match mount_at(mnt) {
        Some(m) if m.fstype == "overlay" => {}
        other => panic!("mount -t overlay succeeded but {mnt:?} shows {other:?}"),
    }
    g
}

/// mount -t overlay overlay -o lowerdir=..,upperdir=..,workdir=.. MNT (redirect_dir on, as
/// ovlfuse's default; index and metacopy off).
pub fn mount_kernel(stack: &Stack) -> MountGuard {
    let opts = format!(
        "{},index=off,redirect_dir=on,metacopy=off",
        stack.full_opts()
    );
    mount_kernel_opts(&opts, &stack.mnt)
}

/// Like [`mount_kernel`], with more mount options (e.g. `noatime`) after the layers.
pub fn mount_kernel_with(stack: &Stack, extra: &str) -> MountGuard {
    let opts = format!(
        "{},index=off,redirect_dir=on,metacopy=off,{extra}",
        stack.full_opts()
    );
    mount_kernel_opts(&opts, &stack.mnt)
}

/// Kernel overlay with the layers of `stack` and exactly the options `extra` (no
/// redirects: rootless kernel overlayfs, `userxattr`, refuses them).
pub fn mount_kernel_plain(stack: &Stack, extra: &str) -> MountGuard {
    mount_kernel_opts(&format!("{},{extra}", stack.full_opts()), &stack.mnt)
}

/// Kernel overlay with only lower layers (the kernel needs at least two).
pub fn mount_kernel_ro(lowers: &[PathBuf], mnt: &Path) -> MountGuard {
    mount_kernel_opts(&lowerdir_opt_of(lowers), mnt)
}

/// A tmpfs at `mnt` (for "other file system" and "mount inside a layer" cases).
pub fn mount_tmpfs(mnt: &Path) -> MountGuard {
    mount_tmpfs_with(mnt, "defaults")
}

/// A tmpfs with mount options `opts` ("size=8m", say).
pub fn mount_tmpfs_with(mnt: &Path, opts: &str) -> MountGuard {
    mount_memory_fs("tmpfs", mnt, opts)
}

/// A ramfs: a filesystem that takes no xattrs of any kind.
pub fn mount_ramfs(mnt: &Path) -> MountGuard {
    mount_memory_fs("ramfs", mnt, "defaults")
}

fn mount_memory_fs(fstype: &str, mnt: &Path, opts: &str) -> MountGuard {
    let o = run_tool(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new(fstype),
            OsStr::new("-o"),
            OsStr::new(opts),
            OsStr::new(fstype),
            mnt.as_os_str(),
        ],
    );
    assert!(
        o.status.success(),
        "mount {fstype} at {mnt:?} failed:\n{}",
        show_output(&o)
    );
    MountGuard::adopt_kernel(mnt)
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

/// What a path looks like, independent of times and inode numbers.
#[derive(Debug, PartialEq, Clone)]
pub struct Node {
    /// f d l p c b s, or '!' when the entry could not be examined (the error is in target)
    pub kind: char,
    /// permission bits including suid/sgid/sticky
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// regular files only
    pub size: u64,
    /// regular files only: a hash of the contents (holes and written zeros hash alike)
    pub data_hash: u64,
    pub target: Option<PathBuf>,
    pub rdev: u64,
    /// non-directories only (directories 0)
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Node {
    fn error(msg: String) -> Node {
        Node {
            kind: '!',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            data_hash: 0,
            target: Some(PathBuf::from(msg)),
            rdev: 0,
            nlink: 0,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn brief(&self) -> String {
        let mut s = format!("{} {:04o} {}:{}", self.kind, self.mode, self.uid, self.gid);
        match self.kind {
            'f' => {
                s += &format!(
                    " size={} hash={:016x} nlink={}",
                    self.size, self.data_hash, self.nlink
                )
            }
            'l' => s += &format!(" -> {:?}", self.target.as_deref().unwrap_or(Path::new(""))),
            'c' | 'b' => {
                s += &format!(
                    " rdev={}:{}",
                    libc::major(self.rdev as _),
                    libc::minor(self.rdev as _)
                )
            }
            '!' => {
                s += &format!(
                    " {}",
                    self.target.as_deref().unwrap_or(Path::new("")).display()
                )
            }
            _ => {}
        }
        if self.kind != 'd' && self.kind != 'f' && self.kind != '!' {
            s += &format!(" nlink={}", self.nlink);
        }
        if !self.xattrs.is_empty() {
            let xs: Vec<String> = self
                .xattrs
                .iter()
                .map(|(k, v)| format!("{k}={}", show_bytes(v)))
                .collect();
            s += &format!(" xattrs[{}]", xs.join(", "));
        }
        s
    }
}

pub fn show_bytes(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!(
            "0x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSel {
    None,
    User,
    All,
}

const FNV_OFFSET: u64 = 0xcbf29ce484222325;
const FNV_PRIME: u64 = 0x100000001b3;

fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

const CHUNK: u64 = 4096;

/// Hash of a file's contents in which holes and explicit zeros are the same thing: every
/// non-zero 4 KiB chunk contributes (chunk index, bytes). Uses SEEK_DATA to skip holes.
pub fn hash_file(p: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut h = FNV_OFFSET;
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    while pos < size {
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let start = if d < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => break,
                _ => pos,
            }
        } else {
            d as u64
        };
        let hole = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let mut off = start / CHUNK * CHUNK;
        let end = end.div_ceil(CHUNK) * CHUNK;
        if end <= off {
            pos = off + CHUNK;
            continue;
        }
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let mut got = 0;
            while got < want {
                let n = f.read_at(&mut buf[got..want], off + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            for (i, chunk) in buf[..got].chunks(CHUNK as usize).enumerate() {
                if chunk.iter().any(|b| *b != 0) {
                    let idx = off / CHUNK + i as u64;
                    h = fnv(h, &idx.to_le_bytes());
                    h = fnv(h, chunk);
                }
            }
            if got < want {
                off = end;
                break;
            }
            off += got as u64;
        }
        pos = off.max(pos + 1);
    }
    Ok(h)
}

use std::os::unix::fs::OpenOptionsExt;

fn node_of(full: &Path, md: &fs::Metadata, sel: XattrSel) -> Node {
    let t = md.file_type();
    let kind = if t.is_file() {
        'f'
    } else if t.is_dir() {
        'd'
    } else if t.is_symlink() {
        'l'
    } else if t.is_fifo() {
        'p'
    } else if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else if t.is_socket() {
        's'
    } else {
        '?'
    };
    let mut n = Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: 0,
        data_hash: 0,
        target: None,
        rdev: 0,
        nlink: if kind == 'd' { 0 } else { md.nlink() },
        xattrs: BTreeMap::new(),
    };
    match kind {
        'f' => {
            n.size = md.len();
            n.data_hash = match hash_file(full) {
                Ok(h) => h,
                Err(e) => {
                    n.target = Some(PathBuf::from(format!("<read error: {}>", describe_err(&e))));
                    0
                }
            }
        }
        'l' => {
            n.target = Some(match fs::read_link(full) {
                Ok(t) => t,
                Err(e) => PathBuf::from(format!("<readlink error: {}>", describe_err(&e))),
            })
        }
        'c' | 'b' => n.rdev = md.rdev(),
        _ => {}
    }
    if sel != XattrSel::None {
        match llistxattr(full) {
            Ok(names) => {
                for name in names {
                    if sel == XattrSel::User && !name.starts_with("user.") {
                        continue;
                    }
                    let v = match lgetxattr(full, &name) {
                        Ok(v) => v,
                        Err(e) => format!("<getxattr error: {}>", describe_err(&e)).into_bytes(),
                    };
                    n.xattrs.insert(name, v);
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) => {}
            Err(e) => {
                n.xattrs
                    .insert("<listxattr error>".into(), describe_err(&e).into_bytes());
            }
        }
    }
    n
}

/// Everything below `root` (root itself is the empty path), keyed by relative path. Does
/// not follow symlinks and does not descend into mounts below root.
pub fn snapshot(root: &Path, xattrs: XattrSel) -> BTreeMap<PathBuf, Node> {
    let root = absolute(root);
    let skip: BTreeSet<PathBuf> = mounts_below(&root, false).into_iter().collect();
    let mut out = BTreeMap::new();
    walk(&root, PathBuf::new(), &skip, xattrs, &mut out);
    out
}

fn walk(
    root: &Path,
    rel: PathBuf,
    skip: &BTreeSet<PathBuf>,
    sel: XattrSel,
    out: &mut BTreeMap<PathBuf, Node>,
) {
    let full = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(&rel)
    };
    let md = match fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) => {
            out.insert(
                rel,
                Node::error(format!("<lstat error: {}>", describe_err(&e))),
            );
            return;
        }
    };
    let node = node_of(&full, &md, sel);
    let is_dir = node.kind == 'd';
    out.insert(rel.clone(), node);
    if !is_dir || skip.contains(&full) {
        return;
    }
    let rd = match fs::read_dir(&full) {
        Ok(rd) => rd,
        Err(e) => {
            out.insert(rel.join("<readdir error>"), Node::error(describe_err(&e)));
            return;
        }
    };
    let mut names = Vec::new();
    for ent in rd {
        match ent {
            Ok(ent) => names.push(ent.file_name()),
            Err(e) => {
                out.insert(rel.join("<readdir error>"), Node::error(describe_err(&e)));
                break;
            }
        }
    }
    names.sort();
    for (i, n) in names.iter().enumerate() {
        if i > 0 && names[i - 1] == *n {
            out.insert(
                rel.join(format!("<duplicate readdir entry {:?}>", n)),
                Node::error("readdir returned the name more than once".into()),
            );
            continue;
        }
        walk(root, rel.join(n), skip, sel, out);
    }
}

fn show_rel(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_string()
    } else {
        p.display().to_string()
    }
}

/// A snapshot of an upper directory, keeping the xattrs whose names `keep` accepts, with
/// every whiteout (char 0/0) shown alike: the kernel shares one whiteout inode (more than
/// one link, mode 0), ovlfuse makes one per name.
pub fn upper_snapshot(upper: &Path, keep: impl Fn(&str) -> bool) -> BTreeMap<PathBuf, Node> {
    let mut s = snapshot(upper, XattrSel::All);
    for n in s.values_mut() {
        n.xattrs.retain(|k, _| keep(k));
        if n.kind == 'c' && n.rdev == 0 {
            n.mode = 0;
            n.nlink = 1;
            n.uid = 0;
            n.gid = 0;
        }
    }
    s
}

/// Human-readable differences between two snapshots (empty when equal).
pub fn diff_snapshots(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("- {}: only in first: {}", show_rel(k), x.brief())),
            (None, Some(y)) => {
                out.push(format!("+ {}: only in second: {}", show_rel(k), y.brief()))
            }
            (Some(x), Some(y)) if x != y => {
                let mut d = Vec::new();
                if x.kind != y.kind {
                    d.push(format!("kind {} vs {}", x.kind, y.kind));
                }
                if x.mode != y.mode {
                    d.push(format!("mode {:04o} vs {:04o}", x.mode, y.mode));
                }
                if (x.uid, x.gid) != (y.uid, y.gid) {
                    d.push(format!("owner {}:{} vs {}:{}", x.uid, x.gid, y.uid, y.gid));
                }
                if x.size != y.size {
                    d.push(format!("size {} vs {}", x.size, y.size));
                }
                if x.data_hash != y.data_hash {
                    d.push(format!(
                        "contents differ (hash {:016x} vs {:016x})",
                        x.data_hash, y.data_hash
                    ));
                }
                if x.target != y.target {
                    d.push(format!("target/error {:?} vs {:?}", x.target, y.target));
                }
                if x.rdev != y.rdev {
                    d.push(format!("rdev {:#x} vs {:#x}", x.rdev, y.rdev));
                }
                if x.nlink != y.nlink {
                    d.push(format!("nlink {} vs {}", x.nlink, y.nlink));
                }
                if x.xattrs != y.xattrs {
                    let names: BTreeSet<&String> = x.xattrs.keys().chain(y.xattrs.keys()).collect();
                    for n in names {
                        let (vx, vy) = (x.xattrs.get(n), y.xattrs.get(n));
                        if vx != vy {
                            d.push(format!(
                                "xattr {n}: {} vs {}",
                                vx.map(|v| show_bytes(v))
                                    .unwrap_or_else(|| "<absent>".into()),
                                vy.map(|v| show_bytes(v))
                                    .unwrap_or_else(|| "<absent>".into())
                            ));
                        }
                    }
                }
                out.push(format!("~ {}: {}", show_rel(k), d.join("; ")));
            }
            _ => {}
        }
    }
    out
}

/// Panics with a readable diff when the two snapshots differ.
#[track_caller]
pub fn assert_same_snapshots(
    what: &str,
    a_label: &str,
    a: &BTreeMap<PathBuf, Node>,
    b_label: &str,
    b: &BTreeMap<PathBuf, Node>,
) {
    let d = diff_snapshots(a, b);
    if !d.is_empty() {
        let shown: Vec<&String> = d.iter().take(60).collect();
        panic!(
            "{what}: {a_label} (first) and {b_label} (second) differ in {} place(s):\n  {}{}",
            d.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if d.len() > 60 {
                format!("\n  ... and {} more", d.len() - 60)
            } else {
                String::new()
            }
        );
    }
}

/// A compact listing of a snapshot, for failure messages.
pub fn show_snapshot(s: &BTreeMap<PathBuf, Node>) -> String {
    s.iter()
        .map(|(k, v)| format!("  {}: {}", show_rel(k), v.brief()))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Lower layers must never change
// ---------------------------------------------------------------------------------------

/// Snapshots (all xattrs; times are not part of a snapshot) of lower layers, to verify
/// later that nothing in them changed.
pub struct LowerCheck {
    layers: Vec<(PathBuf, BTreeMap<PathBuf, Node>)>,
    verified: std::cell::Cell<bool>,
}

impl LowerCheck {
    pub fn new(lowers: &[PathBuf]) -> LowerCheck {
        LowerCheck {
            layers: lowers
                .iter()
                .map(|l| (l.clone(), snapshot(l, XattrSel::All)))
                .collect(),
            verified: std::cell::Cell::new(false),
        }
    }

    fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (dir, before) in &self.layers {
            let now = snapshot(dir, XattrSel::All);
            let d = diff_snapshots(before, &now);
            if !d.is_empty() {
                out.push(format!(
                    "lower layer {dir:?} was modified ({} differences; first = before):",
                    d.len()
                ));
                out.extend(d.into_iter().take(40).map(|s| format!("    {s}")));
            }
        }
        out
    }

    /// Panics listing every difference from the state at creation.
    #[track_caller]
    pub fn verify(&self) {
        let d = self.differences();
        self.verified.set(true);
        if !d.is_empty() {
            panic!("{}", d.join("\n"));
        }
    }
}

impl Drop for LowerCheck {
    fn drop(&mut self) {
        if self.verified.get() {
            return;
        }
        self.verified.set(true);
        let d = self.differences();
        if !d.is_empty() {
            if std::thread::panicking() {
                eprintln!("(while panicking) {}", d.join("\n"));
            } else {
                panic!("{}", d.join("\n"));
            }
        }
    }
}

/// What /proc says of one thread of a daemon.
#[derive(Debug)]
pub struct DaemonThread {
    pub tid: u32,
    /// 0 normal, 5 idle-class (SCHED_IDLE).
    pub policy: u32,
    pub voluntary_switches: u64,
    /// The CPUs it may run on.
    pub cpus: Vec<usize>,
}

/// The threads of daemon `pid` whose names start with `prefix`.
pub fn daemon_threads(pid: u32, prefix: &str) -> Vec<DaemonThread> {
    let mut out = Vec::new();
    for t in ok(fs::read_dir(format!("/proc/{pid}/task")), "daemon threads") {
        let dir = ok(t, "task").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let tid = dir
            .file_name()
            .and_then(|n| n.to_str()?.parse().ok())
            .unwrap_or(0);
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse().ok())
            .unwrap_or(u32::MAX);
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push(DaemonThread {
            tid,
            policy,
            voluntary_switches: field("voluntary_ctxt_switches:").parse().unwrap_or(0),
            cpus: cpu_list(&field("Cpus_allowed_list:")),
        });
    }
    out
}

/// "0-2,5" -> [0, 1, 2, 5]
pub fn cpu_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

/// (thread id, scheduling policy, voluntary context switches) of each io_uring
/// thread (`ringQ.T`) of daemon `pid`; policy 0 is normal, 5 idle-class (SCHED_IDLE): a
/// ring thread sleeps once per request it waits for.
pub fn ring_threads(pid: u32) -> Vec<(u32, u32, u64)> {
    daemon_threads(pid, "ring")
        .into_iter()
        .map(|t| (t.tid, t.policy, t.voluntary_switches))
        .collect()
}

/// The scheduling policy of each io_uring thread of daemon `pid` (see `ring_threads`).
pub fn ring_thread_policies(pid: u32) -> Vec<u32> {
    ring_threads(pid).into_iter().map(|(_, p, _)| p).collect()
}
