//! The operations a case applies (`Op`), and how a seed picks a sequence of them.

use super::*;

#[derive(Clone, Debug)]
pub(crate) enum Op {
    CreateWrite {
        path: String,
        data: Vec<u8>,
        excl: bool,
        mode: u32,
    },
    Append {
        path: String,
        data: Vec<u8>,
    },
    OpenTrunc {
        path: String,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Pwrite {
        path: String,
        off: u64,
        data: Vec<u8>,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    Utimens {
        path: String,
        atime: (i64, i64),
        mtime: (i64, i64),
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
        flags: i32,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    GetXattr {
        path: String,
        name: String,
    },
    ListXattr {
        path: String,
    },
    Readlink {
        path: String,
    },
    Stat {
        path: String,
        follow: bool,
    },
    Readdir {
        path: String,
    },
    Read {
        path: String,
    },
    /// Open and keep a descriptor in slot 0..HELD_SLOTS (closing what was there).
    OpenHeld {
        slot: usize,
        path: String,
        mode: HeldMode,
    },
    /// pread the whole file through a held descriptor.
    ReadHeld {
        slot: usize,
    },
    /// write (at the descriptor's position / O_APPEND) through a held descriptor.
    WriteHeld {
        slot: usize,
        data: Vec<u8>,
    },
    FstatHeld {
        slot: usize,
    },
    FtruncateHeld {
        slot: usize,
        size: u64,
    },
    CloseHeld {
        slot: usize,
    },
    /// mknod of a character ('c') or block ('b') device or a socket ('s').
    Mknod {
        path: String,
        kind: char,
        rdev: (u32, u32),
    },
    /// open(dir, O_TMPFILE|O_RDWR) into a held slot.
    OpenTmpfile {
        slot: usize,
        dir: String,
    },
    /// linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH)
    LinkHeld {
        slot: usize,
        path: String,
    },
    /// lseek(fd, 0) + getdents64 through a held (directory) descriptor.
    ReaddirHeld {
        slot: usize,
    },
    FchmodHeld {
        slot: usize,
        mode: u32,
    },
    FchownHeld {
        slot: usize,
        uid: u32,
        gid: u32,
    },
    /// getxattr with a given buffer size (0 = size query).
    GetXattrSized {
        path: String,
        name: String,
        size: usize,
    },
    /// listxattr with a given buffer size (0 = size query).
    ListXattrSized {
        path: String,
        size: usize,
    },
    /// faccessat(path, mode, AT_EACCESS [| AT_SYMLINK_NOFOLLOW])
    Access {
        path: String,
        mode: i32,
        nofollow: bool,
    },
    /// utimensat(path, {UTIME_OMIT, mtime}, AT_SYMLINK_NOFOLLOW) + lstat
    LUtimens {
        path: String,
        mtime: (i64, i64),
    },
    /// fallocate(fd, mode, off, len) + fstat size and blocks-in-use hint
    FallocateHeld {
        slot: usize,
        mode: i32,
        off: u64,
        len: u64,
    },
    /// lseek(fd, off, SEEK_DATA or SEEK_HOLE), judged by `seek_verdict`
    SeekHeld {
        slot: usize,
        whence: i32,
        off: u64,
    },
    /// copy_file_range from one path (O_RDONLY) into another (O_WRONLY), then read the target
    CopyRange {
        from: String,
        to: String,
        off_in: u64,
        off_out: u64,
        len: u64,
    },
    /// fsetxattr through a held descriptor
    FsetxattrHeld {
        slot: usize,
        name: String,
        value: Vec<u8>,
    },
    /// fgetxattr through a held descriptor
    FgetxattrHeld {
        slot: usize,
        name: String,
    },
    /// futimens(fd, {UTIME_OMIT, mtime}) + fstat
    FutimensHeld {
        slot: usize,
        mtime: (i64, i64),
    },
    /// fsync or fdatasync through a held descriptor
    FsyncHeld {
        slot: usize,
        data_only: bool,
    },
    /// openat(fd, name, O_CREAT|O_WRONLY|O_TRUNC) + write, relative to a held directory
    CreateAtHeld {
        slot: usize,
        name: String,
        data: Vec<u8>,
    },
    /// mkdirat(fd, name) relative to a held directory
    MkdirAtHeld {
        slot: usize,
        name: String,
    },
    /// unlinkat(fd, name, 0 or AT_REMOVEDIR) relative to a held directory
    UnlinkAtHeld {
        slot: usize,
        name: String,
        dir: bool,
    },
    /// fstatat(fd, name, AT_SYMLINK_NOFOLLOW) relative to a held directory
    StatAtHeld {
        slot: usize,
        name: String,
    },
    /// renameat(fd, name, AT_FDCWD, to): out of a held directory
    RenameAtHeld {
        slot: usize,
        name: String,
        to: String,
    },
    /// mmap(MAP_SHARED) of a held descriptor's whole file, a write of `data` at `off`
    /// (both cut to the file's size: a store past its end would fault), msync, munmap
    MmapWriteHeld {
        slot: usize,
        off: u64,
        data: Vec<u8>,
    },
    /// An operation by the path `/proc/self/fd/N` of a held descriptor: it reaches the
    /// object the descriptor holds (which may have lost its name or, from an `O_PATH`
    /// open, have no open file for FUSE to name), by path, not through the open file.
    ProcFd {
        slot: usize,
        act: ProcAct,
    },
    /// chattr(1): FS_IOC_GETFLAGS, then FS_IOC_SETFLAGS with `set` added and `clear`
    /// taken away (inode flags, `CHATTR_FLAGS`), then the flags read back.
    Chattr {
        path: String,
        set: u32,
        clear: u32,
    },
    /// lsattr(1): FS_IOC_GETFLAGS (of the flags in `CHATTR_FLAGS`).
    Lsattr {
        path: String,
    },
    /// Drop the kernel's dentry and inode caches (both mounts at once); regression cases
    /// only, the random ones use OVLFUSE_DIFF_DROP_CACHES.
    DropCaches,
    /// Run `op` with fsuid/fsgid set to uid/gid (which drops the fs capabilities), so that
    /// permission checks apply.
    As {
        uid: u32,
        gid: u32,
        op: Box<Op>,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum HeldMode {
    ReadOnly,
    ReadWrite,
    Append,
    /// O_PATH: no open file on the filesystem, only a handle on the object
    Path,
    /// O_PATH|O_NOFOLLOW: a symlink itself, not what it points to
    PathNoFollow,
}

/// What `Op::ProcFd` does by a held descriptor's `/proc/self/fd/N` path.
#[derive(Clone, Debug)]
pub(crate) enum ProcAct {
    /// chmod(2)
    Chmod(u32),
    /// chown(2) (following the magic link, as the descriptor's own object is meant)
    Chown(u32, u32),
    /// truncate(2)
    Truncate(u64),
    /// utimensat(2), {UTIME_OMIT, mtime}, then stat
    Utimens((i64, i64)),
    /// setxattr(2)
    SetXattr(String, Vec<u8>),
    /// open(2) again with this mode (O_NONBLOCK), fstat, read what it may, close
    Reopen(HeldMode),
}

impl HeldMode {
    pub(crate) fn flags(self) -> libc::c_int {
        match self {
            HeldMode::ReadOnly => libc::O_RDONLY,
            HeldMode::ReadWrite => libc::O_RDWR,
            HeldMode::Append => libc::O_WRONLY | libc::O_APPEND,
            HeldMode::Path => libc::O_PATH,
            HeldMode::PathNoFollow => libc::O_PATH | libc::O_NOFOLLOW,
        }
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            HeldMode::ReadOnly => "O_RDONLY",
            HeldMode::ReadWrite => "O_RDWR",
            HeldMode::Append => "O_WRONLY|O_APPEND",
            HeldMode::Path => "O_PATH",
            HeldMode::PathNoFollow => "O_PATH|O_NOFOLLOW",
        }
    }
}

pub(crate) const HELD_SLOTS: usize = 3;

/// Owners a chown through a held descriptor (or its /proc/self/fd path) gives (-1: keep).
pub(crate) const HELD_OWNERS: &[(u32, u32)] = &[(1000, 1000), (0, 0), (4321, u32::MAX)];

/// Descriptors held open across steps, per mount (-1 = empty slot).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Held(pub(crate) [libc::c_int; HELD_SLOTS]);

impl Held {
    pub(crate) fn new() -> Held {
        Held([-1; HELD_SLOTS])
    }
    pub(crate) fn close_all(&mut self) {
        for fd in self.0.iter_mut() {
            if *fd >= 0 {
                unsafe { libc::close(*fd) };
                *fd = -1;
            }
        }
    }
}

pub(crate) const RENAME_NOREPLACE: u32 = 1;
pub(crate) const RENAME_EXCHANGE: u32 = 2;
pub(crate) const RENAME_WHITEOUT: u32 = 4;

pub(crate) fn show_data(d: &[u8]) -> String {
    if d.len() <= 24 {
        format!("b{:?}", String::from_utf8_lossy(d))
    } else {
        format!(
            "<{} bytes {:?}..>",
            d.len(),
            String::from_utf8_lossy(&d[..12])
        )
    }
}

pub(crate) fn falloc_mode(mode: i32) -> &'static str {
    match mode {
        0 => "0",
        libc::FALLOC_FL_KEEP_SIZE => "FALLOC_FL_KEEP_SIZE",
        3 => "FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE",
        libc::FALLOC_FL_ZERO_RANGE => "FALLOC_FL_ZERO_RANGE",
        _ => "?",
    }
}

pub(crate) fn rename_flags(flags: u32) -> &'static str {
    match flags {
        0 => "0",
        RENAME_NOREPLACE => "RENAME_NOREPLACE",
        RENAME_EXCHANGE => "RENAME_EXCHANGE",
        RENAME_WHITEOUT => "RENAME_WHITEOUT",
        3 => "RENAME_NOREPLACE|RENAME_EXCHANGE",
        _ => "?",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CreateWrite {
                path,
                data,
                excl,
                mode,
            } => write!(
                f,
                "open({:?}, O_CREAT|O_WRONLY|O_TRUNC{}, 0o{:o}) + write {}",
                path,
                if *excl { "|O_EXCL" } else { "" },
                mode,
                show_data(data)
            ),
            Op::Append { path, data } => write!(
                f,
                "open({:?}, O_WRONLY|O_APPEND) + write {}",
                path,
                show_data(data)
            ),
            Op::OpenTrunc { path } => write!(f, "open({:?}, O_WRONLY|O_TRUNC)", path),
            Op::Truncate { path, size } => write!(f, "truncate({:?}, {})", path, size),
            Op::Pwrite { path, off, data } => write!(
                f,
                "open({:?}, O_WRONLY) + pwrite(off={}, {})",
                path,
                off,
                show_data(data)
            ),
            Op::Unlink { path } => write!(f, "unlink({:?})", path),
            Op::Mkdir { path, mode } => write!(f, "mkdir({:?}, 0o{:o})", path, mode),
            Op::Rmdir { path } => write!(f, "rmdir({:?})", path),
            Op::Rename { from, to, flags } => write!(
                f,
                "renameat2({:?}, {:?}, {})",
                from,
                to,
                rename_flags(*flags)
            ),
            Op::Link { from, to } => write!(f, "link({:?}, {:?})", from, to),
            Op::Symlink { target, path } => write!(f, "symlink({:?}, {:?})", target, path),
            Op::Mkfifo { path, mode } => write!(f, "mknod({:?}, S_IFIFO|0o{:o})", path, mode),
            Op::Chmod { path, mode } => write!(f, "chmod({:?}, 0o{:o})", path, mode),
            Op::Chown {
                path,
                uid,
                gid,
                nofollow,
            } => write!(
                f,
                "fchownat({:?}, {}, {}, {})",
                path,
                *uid as i32,
                *gid as i32,
                if *nofollow {
                    "AT_SYMLINK_NOFOLLOW"
                } else {
                    "0"
                }
            ),
            Op::Utimens { path, atime, mtime } => {
                let a = if atime.1 < 0 {
                    "UTIME_OMIT".to_string()
                } else {
                    format!("{}.{:09}", atime.0, atime.1)
                };
                write!(
                    f,
                    "utimensat({:?}, atime={}, mtime={}.{:09}) + stat",
                    path, a, mtime.0, mtime.1
                )
            }
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => write!(
                f,
                "setxattr({:?}, {:?}, {}, {})",
                path,
                name,
                show_data(value),
                match *flags {
                    libc::XATTR_CREATE => "XATTR_CREATE",
                    libc::XATTR_REPLACE => "XATTR_REPLACE",
                    _ => "0",
                }
            ),
            Op::RemoveXattr { path, name } => write!(f, "removexattr({:?}, {:?})", path, name),
            Op::GetXattr { path, name } => write!(f, "getxattr({:?}, {:?})", path, name),
            Op::ListXattr { path } => write!(f, "listxattr({:?})", path),
            Op::Readlink { path } => write!(f, "readlink({:?})", path),
            Op::Stat { path, follow } => {
                write!(f, "{}({:?})", if *follow { "stat" } else { "lstat" }, path)
            }
            Op::Readdir { path } => write!(f, "readdir({:?})", path),
            Op::Read { path } => write!(f, "read({:?})", path),
            Op::OpenHeld { slot, path, mode } => {
                write!(f, "fd{} = open({:?}, {})", slot, path, mode.name())
            }
            Op::ReadHeld { slot } => write!(f, "pread(fd{}, all, off=0)", slot),
            Op::WriteHeld { slot, data } => write!(f, "write(fd{}, {})", slot, show_data(data)),
            Op::FstatHeld { slot } => write!(f, "fstat(fd{})", slot),
            Op::FtruncateHeld { slot, size } => write!(f, "ftruncate(fd{}, {})", slot, size),
            Op::CloseHeld { slot } => write!(f, "close(fd{})", slot),
            Op::As { uid, gid, op } => write!(f, "as {}:{}: {}", uid, gid, op),
            Op::Mknod { path, kind, rdev } => {
                write!(
                    f,
                    "mknod({:?}, S_IF{}|0o644, makedev({}, {}))",
                    path, kind, rdev.0, rdev.1
                )
            }
            Op::OpenTmpfile { slot, dir } => {
                write!(f, "fd{} = open({:?}, O_TMPFILE|O_RDWR, 0o600)", slot, dir)
            }
            Op::LinkHeld { slot, path } => {
                write!(f, "linkat(fd{}, \"\", {:?}, AT_EMPTY_PATH)", slot, path)
            }
            Op::ReaddirHeld { slot } => write!(f, "lseek(fd{}, 0) + getdents64", slot),
            Op::FchmodHeld { slot, mode } => write!(f, "fchmod(fd{}, 0o{:o})", slot, mode),
            Op::FchownHeld { slot, uid, gid } => {
                write!(f, "fchown(fd{}, {}, {})", slot, *uid as i32, *gid as i32)
            }
            Op::GetXattrSized { path, name, size } => {
                write!(f, "getxattr({:?}, {:?}, size={})", path, name, size)
            }
            Op::ListXattrSized { path, size } => write!(f, "listxattr({:?}, size={})", path, size),
            Op::Access {
                path,
                mode,
                nofollow,
            } => write!(
                f,
                "faccessat({:?}, {}, AT_EACCESS{})",
                path,
                match *mode {
                    libc::F_OK => "F_OK".to_string(),
                    m => format!(
                        "{}{}{}",
                        if m & libc::R_OK != 0 { "R" } else { "" },
                        if m & libc::W_OK != 0 { "W" } else { "" },
                        if m & libc::X_OK != 0 { "X" } else { "" }
                    ),
                },
                if *nofollow {
                    "|AT_SYMLINK_NOFOLLOW"
                } else {
                    ""
                }
            ),
            Op::LUtimens { path, mtime } => write!(
                f,
                "utimensat({:?}, atime=UTIME_OMIT, mtime={}.{:09}, AT_SYMLINK_NOFOLLOW) + lstat",
                path, mtime.0, mtime.1
            ),
            Op::FallocateHeld {
                slot,
                mode,
                off,
                len,
            } => write!(
                f,
                "fallocate(fd{}, {}, {}, {}) + fstat",
                slot,
                falloc_mode(*mode),
                off,
                len
            ),
            Op::SeekHeld { slot, whence, off } => write!(
                f,
                "lseek(fd{}, {}, {})",
                slot,
                off,
                if *whence == libc::SEEK_DATA {
                    "SEEK_DATA"
                } else {
                    "SEEK_HOLE"
                }
            ),
            Op::CopyRange {
                from,
                to,
                off_in,
                off_out,
                len,
            } => write!(
                f,
                "copy_file_range({:?} at {}, {:?} at {}, {}) + read target",
                from, off_in, to, off_out, len
            ),
            Op::FsetxattrHeld { slot, name, value } => {
                write!(f, "fsetxattr(fd{}, {:?}, {})", slot, name, show_data(value))
            }
            Op::FgetxattrHeld { slot, name } => write!(f, "fgetxattr(fd{}, {:?})", slot, name),
            Op::FutimensHeld { slot, mtime } => write!(
                f,
                "futimens(fd{}, atime=UTIME_OMIT, mtime={}.{:09}) + fstat",
                slot, mtime.0, mtime.1
            ),
            Op::Chattr { path, set, clear } => write!(
                f,
                "chattr({:?}, +{}, -{})",
                path,
                flag_names(*set),
                flag_names(*clear)
            ),
            Op::Lsattr { path } => write!(f, "lsattr({:?})", path),
            Op::ProcFd { slot, act } => {
                let at = format!("/proc/self/fd/<fd{}>", slot);
                match act {
                    ProcAct::Chmod(m) => write!(f, "chmod({}, 0o{:o})", at, m),
                    ProcAct::Chown(u, g) => write!(f, "chown({}, {}, {})", at, u, g),
                    ProcAct::Truncate(n) => write!(f, "truncate({}, {})", at, n),
                    ProcAct::Utimens(t) => write!(
                        f,
                        "utimensat({}, atime=UTIME_OMIT, mtime={}.{:09}) + stat",
                        at, t.0, t.1
                    ),
                    ProcAct::SetXattr(n, v) => {
                        write!(f, "setxattr({}, {:?}, {})", at, n, show_data(v))
                    }
                    ProcAct::Reopen(m) => write!(f, "open({}, {}) + fstat + read", at, m.name()),
                }
            }
            Op::FsyncHeld { slot, data_only } => write!(
                f,
                "{}(fd{})",
                if *data_only { "fdatasync" } else { "fsync" },
                slot
            ),
            Op::DropCaches => write!(f, "echo 2 > /proc/sys/vm/drop_caches"),
            Op::CreateAtHeld { slot, name, data } => write!(
                f,
                "openat(fd{}, {:?}, O_CREAT|O_WRONLY|O_TRUNC) + write {}",
                slot,
                name,
                show_data(data)
            ),
            Op::MkdirAtHeld { slot, name } => write!(f, "mkdirat(fd{}, {:?})", slot, name),
            Op::UnlinkAtHeld { slot, name, dir } => write!(
                f,
                "unlinkat(fd{}, {:?}, {})",
                slot,
                name,
                if *dir { "AT_REMOVEDIR" } else { "0" }
            ),
            Op::StatAtHeld { slot, name } => {
                write!(f, "fstatat(fd{}, {:?}, AT_SYMLINK_NOFOLLOW)", slot, name)
            }
            Op::RenameAtHeld { slot, name, to } => {
                write!(f, "renameat(fd{}, {:?}, AT_FDCWD, {:?})", slot, name, to)
            }
            Op::MmapWriteHeld { slot, off, data } => write!(
                f,
                "mmap(fd{}, MAP_SHARED) + store at {} {} + msync + munmap",
                slot,
                off,
                show_data(data)
            ),
        }
    }
}

impl Op {
    /// kind() of an operation run as an unprivileged user.
    pub(crate) fn kind_as(&self) -> &'static str {
        let k = self.kind();
        Box::leak(format!("as_user {}", k).into_boxed_str())
    }
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Op::CreateWrite { .. } => "create_write",
            Op::Append { .. } => "append",
            Op::OpenTrunc { .. } => "open_trunc",
            Op::Truncate { .. } => "truncate",
            Op::Pwrite { .. } => "pwrite",
            Op::Unlink { .. } => "unlink",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Mkfifo { .. } => "mkfifo",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimens { .. } => "utimens",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::GetXattr { .. } => "getxattr",
            Op::ListXattr { .. } => "listxattr",
            Op::Readlink { .. } => "readlink",
            Op::Stat { .. } => "stat",
            Op::Readdir { .. } => "readdir",
            Op::Read { .. } => "read",
            Op::OpenHeld { .. } => "open_held",
            Op::ReadHeld { .. } => "read_held",
            Op::WriteHeld { .. } => "write_held",
            Op::FstatHeld { .. } => "fstat_held",
            Op::FtruncateHeld { .. } => "ftruncate_held",
            Op::CloseHeld { .. } => "close_held",
            Op::As { op, .. } => op.kind_as(),
            Op::Mknod { .. } => "mknod",
            Op::OpenTmpfile { .. } => "open_tmpfile",
            Op::LinkHeld { .. } => "link_held",
            Op::ReaddirHeld { .. } => "readdir_held",
            Op::FchmodHeld { .. } => "fchmod_held",
            Op::FchownHeld { .. } => "fchown_held",
            Op::GetXattrSized { .. } => "getxattr_sized",
            Op::ListXattrSized { .. } => "listxattr_sized",
            Op::Access { .. } => "access",
            Op::LUtimens { .. } => "lutimens",
            Op::FallocateHeld { .. } => "fallocate_held",
            Op::SeekHeld { .. } => "seek_held",
            Op::CopyRange { .. } => "copy_range",
            Op::FsetxattrHeld { .. } => "fsetxattr_held",
            Op::FgetxattrHeld { .. } => "fgetxattr_held",
            Op::FutimensHeld { .. } => "futimens_held",
            Op::Chattr { .. } => "chattr",
            Op::Lsattr { .. } => "lsattr",
            Op::ProcFd { act, .. } => match act {
                ProcAct::Chmod(_) => "procfd_chmod",
                ProcAct::Chown(..) => "procfd_chown",
                ProcAct::Truncate(_) => "procfd_truncate",
                ProcAct::Utimens(_) => "procfd_utimens",
                ProcAct::SetXattr(..) => "procfd_setxattr",
                ProcAct::Reopen(_) => "procfd_reopen",
            },
            Op::FsyncHeld { .. } => "fsync_held",
            Op::MmapWriteHeld { .. } => "mmap_write_held",
            Op::DropCaches => "drop_caches",
            Op::CreateAtHeld { .. } => "create_at_held",
            Op::MkdirAtHeld { .. } => "mkdir_at_held",
            Op::UnlinkAtHeld { .. } => "unlink_at_held",
            Op::StatAtHeld { .. } => "stat_at_held",
            Op::RenameAtHeld { .. } => "rename_at_held",
        }
    }
}

/// Paths operations act on: the lower-layer pool plus a few names only operations create.
pub(crate) const OP_POOL: &[&str] = &[
    "a", "b", "c", "d1", "d2", "d3", "e", "f", "a/b", "a/x", "d1/x", "d1/y", "d1/s", "d2/x",
    "d2/y", "d2/s", "d3/x", "d3/y", "d1/s/z", "d1/s/w", "d2/s/z", "d1/n", "d3/s", "f/g",
    "d1/s/z/q",
];
pub(crate) const XATTR_NAMES: &[&str] = &[
    "user.k1",
    "user.k2",
    "user.dx",
    "user.new",
    "user.k1",
    "user.dx",
    "trusted.t1",
    // the kernel escapes these to trusted.overlay.overlay.* in the upper layer
    "trusted.overlay.x",
    "trusted.overlay.opaque",
];
/// XATTR_NAMES, with the overlay's own names in user.overlay.* in userxattr mode (as many,
/// so that a seed makes the same choices in both modes).
pub(crate) fn xattr_names() -> &'static [&'static str] {
    static USER: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    if !userxattr() {
        return XATTR_NAMES;
    }
    USER.get_or_init(|| {
        XATTR_NAMES
            .iter()
            .map(|n| match n.strip_prefix("trusted.overlay.") {
                Some(own) => &*Box::leak(format!("user.overlay.{own}").into_boxed_str()),
                None => *n,
            })
            .collect()
    })
}

thread_local! {
    /// Set on the thread of `random_sequences_userxattr`, whatever the environment says.
    pub(crate) static USERXATTR_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether cases are generated, built and mounted in userxattr mode (see the module doc):
/// OVLFUSE_DIFF_USERXATTR=1, or on the thread of `random_sequences_userxattr`.
pub(crate) fn userxattr() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    USERXATTR_HERE.with(|c| c.get())
        || *ENV.get_or_init(|| std::env::var("OVLFUSE_DIFF_USERXATTR").is_ok_and(|v| v != "0"))
}

/// The command that replays `seed` in the mode of this thread.
pub(crate) fn replay_command(seed: u64) -> String {
    let mode = if userxattr() {
        "OVLFUSE_DIFF_USERXATTR=1 "
    } else {
        ""
    };
    format!("{mode}OVLFUSE_SEED={seed} cargo test --test differential replay -- --nocapture")
}

/// The kernel overlay on `st`: redirects on, or in userxattr mode as rootless podman's
/// (redirects off, which the kernel makes its default with `userxattr`).
pub(crate) fn mount_kernel_side(st: &Stack) -> common::MountGuard {
    if userxattr() {
        common::mount_kernel_plain(st, "index=off,metacopy=off,userxattr")
    } else {
        common::mount_kernel(st)
    }
}

/// ovlfuse on `st`, with `userxattr` in userxattr mode.
pub(crate) fn mount_ovlfuse_side(st: &Stack) -> common::MountGuard {
    common::mount_ovlfuse(st, if userxattr() { &["userxattr"] } else { &[] })
}

/// Paths that probably exist: everything the layers create (whiteouts aside) and everything
/// earlier operations try to create.  Picking from these keeps most operations from failing
/// with ENOENT, while the fixed pool keeps names colliding.
pub(crate) struct PathGen {
    pub(crate) known: Vec<String>,
    pub(crate) dirs: Vec<String>,
    pub(crate) xattr_paths: Vec<String>,
    /// The directory each held slot was last opened on, where it was one.
    pub(crate) dir_slots: [Option<String>; HELD_SLOTS],
}

impl PathGen {
    pub(crate) fn new(layers: &[Vec<LE>]) -> PathGen {
        let mut known: Vec<String> = Vec::new();
        let mut dirs: Vec<String> = Vec::new();
        let mut xattr_paths: Vec<String> = Vec::new();
        for l in layers {
            for e in l {
                match e {
                    LE::Dir(p) => dirs.push(p.clone()),
                    LE::Xattr(p, _, _) => xattr_paths.push(p.clone()),
                    _ => {}
                }
                if let (Some(p), false) = (e.creates(), matches!(e, LE::Whiteout(_))) {
                    if !known.iter().any(|k| k == p) {
                        known.push(p.to_string());
                    }
                }
            }
        }
        PathGen {
            known,
            dirs,
            xattr_paths,
            dir_slots: Default::default(),
        }
    }
    /// A slot and a name for an operation relative to a held directory: mostly a slot
    /// holding a directory and a name the layers or earlier operations put in it.
    /// None while no slot holds a directory.
    pub(crate) fn pick_at(&self, rng: &mut Rng) -> Option<(usize, String)> {
        let held: Vec<(usize, &String)> = (0..HELD_SLOTS)
            .filter_map(|i| self.dir_slots[i].as_ref().map(|d| (i, d)))
            .collect();
        if held.is_empty() {
            return None;
        }
        if rng.pct(10) {
            return Some((rng.below(HELD_SLOTS as u64) as usize, pick_at_name(rng)));
        }
        let (slot, dir) = *rng.pick(&held);
        let children: Vec<&str> = self
            .known
            .iter()
            .filter_map(|k| match dir.as_str() {
                "." => Some(k.as_str()),
                d => k.strip_prefix(d)?.strip_prefix('/'),
            })
            .filter(|rest| !rest.contains('/'))
            .collect();
        let name = if !children.is_empty() && rng.pct(60) {
            rng.pick(&children).to_string()
        } else {
            pick_at_name(rng)
        };
        Some((slot, name))
    }
    /// A name that probably does not exist yet (for creating operations).
    pub(crate) fn pick_new(&self, rng: &mut Rng) -> String {
        let fresh: Vec<&str> = OP_POOL
            .iter()
            .copied()
            .filter(|p| !self.known.iter().any(|k| k == p))
            .collect();
        if !fresh.is_empty() && rng.pct(60) {
            rng.pick(&fresh).to_string()
        } else {
            self.pick(rng)
        }
    }
    pub(crate) fn pick_dir(&self, rng: &mut Rng) -> String {
        if !self.dirs.is_empty() && rng.pct(60) {
            rng.pick(&self.dirs).clone()
        } else {
            self.pick(rng)
        }
    }
    pub(crate) fn pick_xattr_path(&self, rng: &mut Rng) -> String {
        if !self.xattr_paths.is_empty() && rng.pct(50) {
            rng.pick(&self.xattr_paths).clone()
        } else {
            self.pick(rng)
        }
    }
    pub(crate) fn pick(&self, rng: &mut Rng) -> String {
        if rng.pct(2) {
            // the longest name ext4 takes, one longer, and the same below a directory
            let n = if rng.pct(50) { 255 } else { 256 };
            let name = "L".repeat(n);
            return if rng.pct(50) {
                name
            } else {
                format!("d1/{}", name)
            };
        }
        if !self.known.is_empty() && rng.pct(65) {
            rng.pick(&self.known).clone()
        } else {
            rng.pick(OP_POOL).to_string()
        }
    }
    pub(crate) fn add(&mut self, p: &str) {
        if !self.known.iter().any(|k| k == p) {
            self.known.push(p.to_string());
        }
    }
    /// Record what an operation may create.
    pub(crate) fn note(&mut self, op: &Op) {
        match op {
            Op::OpenHeld { slot, path, .. } => {
                let is_dir = path == "." || self.dirs.iter().any(|d| d == path);
                self.dir_slots[*slot] = is_dir.then(|| path.clone());
            }
            Op::OpenTmpfile { slot, .. } | Op::CloseHeld { slot } => self.dir_slots[*slot] = None,
            Op::As { op, .. } => self.note(op),
            Op::CreateWrite { path, .. } | Op::Symlink { path, .. } | Op::Mkfifo { path, .. } => {
                self.add(path)
            }
            Op::Mkdir { path, .. } => {
                self.add(path);
                self.dirs.push(path.clone());
            }
            Op::SetXattr { path, .. } => self.xattr_paths.push(path.clone()),
            Op::Rename { to, .. } | Op::Link { to, .. } | Op::RenameAtHeld { to, .. } => {
                self.add(to)
            }
            Op::Mknod { path, .. } | Op::LinkHeld { path, .. } => self.add(path),
            _ => {}
        }
    }
}

pub(crate) fn gen_op(rng: &mut Rng, pg: &PathGen) -> Op {
    // weights (sum is arbitrary)
    let w: &[u64] = &[
        8,  // 0 create_write
        5,  // 1 append
        3,  // 2 open_trunc
        4,  // 3 truncate
        4,  // 4 pwrite
        7,  // 5 unlink
        7,  // 6 mkdir
        6,  // 7 rmdir
        10, // 8 rename
        4,  // 9 link
        3,  // 10 symlink
        2,  // 11 mkfifo
        4,  // 12 chmod
        3,  // 13 chown
        3,  // 14 utimens
        4,  // 15 setxattr
        2,  // 16 removexattr
        2,  // 17 getxattr
        2,  // 18 listxattr
        2,  // 19 readlink
        5,  // 20 stat
        5,  // 21 readdir
        5,  // 22 read
        4,  // 23 open_held
        3,  // 24 read_held
        3,  // 25 write_held
        2,  // 26 fstat_held
        2,  // 27 ftruncate_held
        1,  // 28 close_held
        2,  // 29 mknod
        2,  // 30 open_tmpfile
        2,  // 31 link_held
        2,  // 32 readdir_held
        2,  // 33 fchmod_held
        1,  // 34 fchown_held
        2,  // 35 getxattr_sized
        1,  // 36 listxattr_sized
        3,  // 37 access
        2,  // 38 lutimens
        2,  // 39 fallocate_held
        1,  // 40 seek_held
        2,  // 41 copy_range
        1,  // 42 fsetxattr_held
        1,  // 43 fgetxattr_held
        1,  // 44 futimens_held
        1,  // 45 fsync_held
        2,  // 46 mmap_write_held
        2,  // 47 create_at_held
        1,  // 48 mkdir_at_held
        2,  // 49 unlink_at_held
        1,  // 50 stat_at_held
        2,  // 51 rename_at_held
        2,  // 52 open_held of a directory (for the *_at_held kinds)
        3,  // 53 procfd_*: by a held descriptor's /proc/self/fd path
        2,  // 54 chattr
        1,  // 55 lsattr
    ];
    let path = pg.pick(rng);
    let at = pg.pick_at(rng);
    let mut kind = rng.weighted(w);
    if (47..=51).contains(&kind) && at.is_none() {
        // no directory held yet: hold one, for the next such operation
        kind = 52;
    }
    let at = at.unwrap_or_default();
    match kind {
        0 => Op::CreateWrite {
            path: if rng.pct(40) { pg.pick_new(rng) } else { path },
            data: {
                let max = if rng.pct(15) { 5000 } else { 80 };
                rng.data(max)
            },
            excl: rng.pct(20),
            mode: *rng.pick(&[0o644u32, 0o600, 0o755, 0o4755, 0o666]),
        },
        1 => Op::Append {
            path,
            data: rng.data(60),
        },
        2 => Op::OpenTrunc { path },
        3 => Op::Truncate {
            path,
            size: *rng.pick(&[0u64, 1, 7, 33, 100, 4096, 10000]),
        },
        4 => Op::Pwrite {
            path,
            off: *rng.pick(&[0u64, 3, 17, 64, 4095, 8192, 70000, 1 << 20]),
            data: rng.data(40),
        },
        5 => Op::Unlink { path },
        6 => Op::Mkdir {
            path: pg.pick_new(rng),
            mode: *rng.pick(&[0o755u32, 0o700, 0o2775, 0o1777]),
        },
        7 => Op::Rmdir {
            path: pg.pick_dir(rng),
        },
        8 => {
            let from = if rng.pct(30) { pg.pick_dir(rng) } else { path };
            let to = if rng.pct(40) {
                pg.pick_new(rng)
            } else {
                pg.pick(rng)
            };
            let flags = match rng.weighted(&[70, 15, 15, 2, 1]) {
                0 => 0,
                1 => RENAME_NOREPLACE,
                2 => RENAME_EXCHANGE,
                3 => RENAME_WHITEOUT,
                _ => RENAME_NOREPLACE | RENAME_EXCHANGE,
            };
            Op::Rename { from, to, flags }
        }
        9 => Op::Link {
            from: path,
            to: pg.pick_new(rng),
        },
        10 => {
            let path = pg.pick_new(rng);
            let target = symlink_target(rng, &path);
            Op::Symlink { target, path }
        }
        11 => Op::Mkfifo {
            path: pg.pick_new(rng),
            mode: *rng.pick(&[0o644u32, 0o600]),
        },
        12 => Op::Chmod {
            // sometimes the mount root, so that unprivileged users may create at the top
            path: if rng.pct(5) { ".".into() } else { path },
            mode: *rng.pick(&[
                0o600u32, 0o644, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o000, 0o444,
            ]),
        },
        13 => {
            let (uid, gid) = *rng.pick(&[
                (1000u32, 1000u32),
                (0, 0),
                (1000, u32::MAX),
                (u32::MAX, 100),
                (4321, 4321),
            ]);
            Op::Chown {
                path,
                uid,
                gid,
                nofollow: rng.pct(40),
            }
        }
        14 => Op::Utimens {
            path,
            // nsec -1 stands for UTIME_OMIT
            atime: (
                1_000_000_000 + rng.below(1000) as i64,
                if rng.pct(25) {
                    -1
                } else {
                    rng.below(1_000_000_000) as i64
                },
            ),
            mtime: (
                1_200_000_000 + rng.below(1000) as i64,
                rng.below(1_000_000_000) as i64,
            ),
        },
        15 => Op::SetXattr {
            path,
            name: rng.pick(xattr_names()).to_string(),
            // now and then more than fits beside the inode (ext4 then takes a block)
            value: {
                let max = if rng.pct(10) { 3000 } else { 20 };
                rng.data(max)
            },
            flags: *rng.pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
        },
        16 => Op::RemoveXattr {
            path: pg.pick_xattr_path(rng),
            name: rng.pick(xattr_names()).to_string(),
        },
        17 => Op::GetXattr {
            path: pg.pick_xattr_path(rng),
            name: rng.pick(xattr_names()).to_string(),
        },
        18 => Op::ListXattr {
            path: pg.pick_xattr_path(rng),
        },
        19 => Op::Readlink { path },
        20 => Op::Stat {
            path: if rng.pct(10) { ".".into() } else { path },
            follow: rng.pct(30),
        },
        21 => Op::Readdir {
            path: if rng.pct(15) { ".".into() } else { path },
        },
        22 => Op::Read { path },
        23 => Op::OpenHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            path: if rng.pct(30) { pg.pick_dir(rng) } else { path },
            mode: *rng.pick(&[
                HeldMode::ReadOnly,
                HeldMode::ReadOnly,
                HeldMode::ReadWrite,
                HeldMode::Append,
                HeldMode::Path,
                HeldMode::PathNoFollow,
            ]),
        },
        24 => Op::ReadHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
        },
        25 => Op::WriteHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            data: rng.data(40),
        },
        26 => Op::FstatHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
        },
        27 => Op::FtruncateHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            size: *rng.pick(&[0u64, 5, 100, 5000]),
        },
        29 => Op::Mknod {
            path: pg.pick_new(rng),
            kind: *rng.pick(&['c', 'c', 'b', 's']),
            // (1,3) is /dev/null; major 240 is for local use (nothing registered: ENXIO on
            // open).  Never a real disk: operations may write through these nodes.
            rdev: *rng.pick(&[(1u32, 3u32), (240, 1), (0, 0), (240, 0)]),
        },
        30 => Op::OpenTmpfile {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            dir: pg.pick_dir(rng),
        },
        31 => Op::LinkHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            path: pg.pick_new(rng),
        },
        32 => Op::ReaddirHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
        },
        33 => Op::FchmodHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            mode: *rng.pick(&[0o600u32, 0o644, 0o755, 0o4755, 0o1777]),
        },
        34 => {
            let (uid, gid) = *rng.pick(HELD_OWNERS);
            Op::FchownHeld {
                slot: rng.below(HELD_SLOTS as u64) as usize,
                uid,
                gid,
            }
        }
        35 => Op::GetXattrSized {
            path: pg.pick_xattr_path(rng),
            name: rng.pick(xattr_names()).to_string(),
            size: *rng.pick(&[0usize, 1, 3]),
        },
        36 => Op::ListXattrSized {
            path: pg.pick_xattr_path(rng),
            size: *rng.pick(&[0usize, 1, 8]),
        },
        37 => Op::Access {
            path,
            mode: *rng.pick(&[
                libc::F_OK,
                libc::R_OK,
                libc::W_OK,
                libc::X_OK,
                libc::R_OK | libc::W_OK,
            ]),
            nofollow: rng.pct(20),
        },
        38 => Op::LUtimens {
            path,
            mtime: (
                1_300_000_000 + rng.below(1000) as i64,
                rng.below(1_000_000_000) as i64,
            ),
        },
        39 => Op::FallocateHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            mode: *rng.pick(&[
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
            ]),
            off: *rng.pick(&[0u64, 2, 4096, 9000]),
            len: *rng.pick(&[1u64, 10, 4096, 20000]),
        },
        40 => Op::SeekHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            whence: *rng.pick(&[libc::SEEK_DATA, libc::SEEK_HOLE]),
            off: *rng.pick(&[0u64, 1, 4096, 10000, 100000]),
        },
        41 => Op::CopyRange {
            from: path,
            to: pg.pick(rng),
            off_in: *rng.pick(&[0u64, 1, 10]),
            off_out: *rng.pick(&[0u64, 3, 5000]),
            len: *rng.pick(&[1u64, 20, 100000]),
        },
        42 => Op::FsetxattrHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            name: rng.pick(xattr_names()).to_string(),
            value: rng.data(20),
        },
        43 => Op::FgetxattrHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            name: rng.pick(xattr_names()).to_string(),
        },
        44 => Op::FutimensHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            mtime: (
                1_400_000_000 + rng.below(1000) as i64,
                rng.below(1_000_000_000) as i64,
            ),
        },
        45 => Op::FsyncHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            data_only: rng.pct(50),
        },
        46 => Op::MmapWriteHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            off: *rng.pick(&[0u64, 5, 4095, 4100]),
            data: rng.data(40),
        },
        47 => Op::CreateAtHeld {
            slot: at.0,
            name: at.1,
            data: rng.data(30),
        },
        48 => Op::MkdirAtHeld {
            slot: at.0,
            name: at.1,
        },
        49 => Op::UnlinkAtHeld {
            slot: at.0,
            name: at.1,
            dir: rng.pct(30),
        },
        50 => Op::StatAtHeld {
            slot: at.0,
            name: at.1,
        },
        51 => Op::RenameAtHeld {
            slot: at.0,
            name: at.1,
            to: pg.pick(rng),
        },
        52 => Op::OpenHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            path: if rng.pct(10) {
                ".".into()
            } else {
                pg.pick_dir(rng)
            },
            mode: HeldMode::ReadOnly,
        },
        53 => Op::ProcFd {
            slot: rng.below(HELD_SLOTS as u64) as usize,
            act: match rng.below(7) {
                0 => ProcAct::Chmod(*rng.pick(&[0o600u32, 0o644, 0o755, 0o4755])),
                1 => {
                    let (u, g) = *rng.pick(HELD_OWNERS);
                    ProcAct::Chown(u, g)
                }
                2 => ProcAct::Truncate(*rng.pick(&[0u64, 5, 100, 5000])),
                3 => ProcAct::Utimens((
                    1_500_000_000 + rng.below(1000) as i64,
                    rng.below(1_000_000_000) as i64,
                )),
                4 => ProcAct::SetXattr(rng.pick(xattr_names()).to_string(), rng.data(20)),
                _ => ProcAct::Reopen(*rng.pick(&[
                    HeldMode::ReadOnly,
                    HeldMode::ReadWrite,
                    HeldMode::Append,
                ])),
            },
        },
        54 => {
            // Mostly one flag at a time; the protection flags (append-only, immutable)
            // are taken away as often as they are given, so that objects do not stay
            // frozen for the rest of the sequence.
            let how = rng.below(10);
            let a = *rng.pick(CHATTR_FLAGS);
            let b = *rng.pick(CHATTR_FLAGS);
            let (set, clear) = match how {
                0..=3 => (a, 0),
                4..=7 => (0, a),
                8 => (a | b, 0),
                _ => (0, FS_APPEND_FL | FS_IMMUTABLE_FL),
            };
            Op::Chattr { path, set, clear }
        }
        55 => Op::Lsattr { path },
        _ => Op::CloseHeld {
            slot: rng.below(HELD_SLOTS as u64) as usize,
        },
    }
}

pub(crate) const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
pub(crate) const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
pub(crate) const FS_SYNC_FL: u32 = 0x8;
pub(crate) const FS_IMMUTABLE_FL: u32 = 0x10;
pub(crate) const FS_APPEND_FL: u32 = 0x20;
pub(crate) const FS_NODUMP_FL: u32 = 0x40;
pub(crate) const FS_NOATIME_FL: u32 = 0x80;
/// The inode flags the chattr operations give and take, and lsattr shows.
pub(crate) const CHATTR_FLAGS: &[u32] = &[
    FS_SYNC_FL,
    FS_IMMUTABLE_FL,
    FS_APPEND_FL,
    FS_NODUMP_FL,
    FS_NOATIME_FL,
];

/// `flags` as chattr's letters.
pub(crate) fn flag_names(flags: u32) -> String {
    [
        (FS_SYNC_FL, 'S'),
        (FS_IMMUTABLE_FL, 'i'),
        (FS_APPEND_FL, 'a'),
        (FS_NODUMP_FL, 'd'),
        (FS_NOATIME_FL, 'A'),
    ]
    .iter()
    .filter(|(f, _)| flags & f != 0)
    .map(|(_, c)| *c)
    .collect()
}

/// FS_IOC_GETFLAGS of `path`, opened as lsattr and chattr open it (never following a
/// final symlink), and the fd, for a SETFLAGS to follow.
pub(crate) unsafe fn get_inode_flags(path: &CString) -> Result<(std::os::fd::OwnedFd, u32), i32> {
    get_inode_flags_of(path, false)
}

/// [`get_inode_flags`], following a final symlink if `follow`.
pub(crate) unsafe fn get_inode_flags_of(
    path: &CString,
    follow: bool,
) -> Result<(std::os::fd::OwnedFd, u32), i32> {
    use std::os::fd::FromRawFd;
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let fd = libc::open(
        path.as_ptr(),
        libc::O_RDONLY | libc::O_NONBLOCK | nofollow | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return Err(errno());
    }
    let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
    let mut v: libc::c_long = 0;
    if libc::ioctl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        FS_IOC_GETFLAGS as _,
        &mut v,
    ) < 0
    {
        return Err(errno());
    }
    Ok((fd, v as u32))
}

/// What chattr and lsattr show of `flags`.
pub(crate) fn shown_flags(flags: u32) -> String {
    let mask = CHATTR_FLAGS.iter().fold(0, |a, f| a | f);
    format!("flags [{}]", flag_names(flags & mask))
}

/// A name relative to a held directory: the last part of a pool path (so names the layers
/// hold under the directory a slot may hold), a fresh one, or one below a subdirectory.
pub(crate) fn pick_at_name(rng: &mut Rng) -> String {
    if rng.pct(15) {
        return rng.pick(&["new1", "s/new2", "x/y"]).to_string();
    }
    let p = rng.pick(OP_POOL);
    p.rsplit('/').next().unwrap_or(p).to_string()
}

/// Operation kinds whose difference from the kernel ovlfuse documents as deliberate (README,
/// "Differences from kernel overlayfs"); left out unless OVLFUSE_DIFF_STRICT=1.
/// * listxattr_sized: exact sizes, where the kernel counts its hidden private xattrs
pub(crate) const DOCUMENTED_DIFFERENCES: &[&str] = &["listxattr_sized"];

pub(crate) fn gen_case(seed: u64) -> Case {
    // OVLFUSE_DIFF_MAX_OPS=n: sequences of n/2..n operations instead of 40..80
    gen_case_with(seed, env_u64("OVLFUSE_DIFF_MAX_OPS").unwrap_or(80), &[])
}

/// A case of `max_ops / 2 ..= max_ops` operations, none of the kinds in `never`.
pub(crate) fn gen_case_with(seed: u64, max_ops: u64, never: &[&str]) -> Case {
    let mut rng = Rng::new(seed);
    let n_lowers = rng.range(2, 3) as usize;
    let layers = gen_layers(&mut rng, n_lowers);
    let max_ops = max_ops.max(2);
    let n_ops = rng.range(max_ops / 2, max_ops);
    let mut pg = PathGen::new(&layers);
    let mut ops = Vec::new();
    if rng.pct(40) {
        // let unprivileged users create at the top of the mount
        ops.push(Op::Chmod {
            path: ".".into(),
            mode: 0o1777,
        });
    }
    // OVLFUSE_DIFF_SKIP_OPS=kind,kind: never generate these kinds (to look past a known
    // difference); the kinds are the names in reports, e.g. open_tmpfile, mknod.
    let mut skip: Vec<String> = std::env::var("OVLFUSE_DIFF_SKIP_OPS")
        .map(|v| {
            v.split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !std::env::var("OVLFUSE_DIFF_STRICT").is_ok_and(|v| v != "0") {
        skip.extend(DOCUMENTED_DIFFERENCES.iter().map(|k| k.to_string()));
    }
    skip.extend(never.iter().map(|k| k.to_string()));
    for _ in 0..n_ops {
        let mut op = gen_op(&mut rng, &pg);
        while skip.iter().any(|k| k == op.kind()) {
            op = gen_op(&mut rng, &pg);
        }
        if rng.pct(20) {
            let (uid, gid) = *rng.pick(&[
                (1000u32, 1000u32),
                (1000, 1000),
                (1000, 1000),
                (1234, 0),
                (4321, 4321),
                (1000, 100),
            ]);
            op = Op::As {
                uid,
                gid,
                op: Box::new(op),
            };
        }
        pg.note(&op);
        ops.push(op);
    }
    Case {
        name: format!("seed{}", seed),
        seed: Some(seed),
        layers,
        ops,
    }
}
