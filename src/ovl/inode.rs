//! Attributes: getattr/setattr, readlink, statfs, access, the inode-flag ioctls, and the
//! immutable and append-only attributes that no filesystem enforces for us
//! (`check_protection`, kept in `overlay.protattr` on copies as the kernel keeps them).
//!
//! Attributes are the real ones of the copy that is seen (upper, else the highest lower),
//! with `st_ino` replaced by the node's stable number and a merged directory's link count
//! reported as 1, as kernel overlayfs does. Any change of metadata copies the object up
//! first.

use super::layers::UPPER;
use super::node::{Node, ROOT_ID};
use super::{Ctx, Errno, Overlay, SysResult};
use crate::sys::fs::{self, Stat};
use crate::sys::xattr;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// Attributes of a merged object as shown through the mount.
#[derive(Clone, Copy, Debug, Default)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl Attr {
    pub fn from_stat(st: &Stat, ino: u64) -> Attr {
        Attr {
            ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: Time {
                sec: st.st_atime,
                nsec: st.st_atime_nsec as u32,
            },
            mtime: Time {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec as u32,
            },
            ctime: Time {
                sec: st.st_ctime,
                nsec: st.st_ctime_nsec as u32,
            },
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        }
    }
}

/// A time to set: the current time, or a given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Time),
}

impl TimeSet {
    fn timespec(self) -> libc::timespec {
        match self {
            TimeSet::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            TimeSet::At(t) => libc::timespec {
                tv_sec: t.sec,
                tv_nsec: t.nsec as i64,
            },
        }
    }
}

/// Where an upper copy keeps its lower original's immutable and append-only attributes
/// (after the private prefix), as the kernel does.
pub const PROTATTR_XATTR: &str = "protattr";

/// `NodeState::prot` bits.
pub const PROT_KNOWN: u8 = 1;
const PROT_IMMUTABLE: u8 = 2;
const PROT_APPEND: u8 = 4;

/// `NodeState::prot` for known attributes `flags` (FS_IMMUTABLE_FL, FS_APPEND_FL).
pub fn prot_known(flags: u32) -> u8 {
    let mut v = PROT_KNOWN;
    if flags & fs::FS_IMMUTABLE_FL != 0 {
        v |= PROT_IMMUTABLE;
    }
    if flags & fs::FS_APPEND_FL != 0 {
        v |= PROT_APPEND;
    }
    v
}

/// `NodeState::prot` for a lower object of type `kind` whose stat came with statx's
/// protection `hint` (`fs::fstatat_with_protection`): known to be none where the hint says
/// none or the type cannot carry them, else unknown (`Overlay::protection` then reads them
/// as `lower_protection` says).
pub fn prot_of_lower(kind: u32, hint: u32) -> u8 {
    if hint == 0 || (kind != libc::S_IFREG && kind != libc::S_IFDIR) {
        prot_known(0)
    } else {
        0
    }
}

fn prot_flags(v: u8) -> u32 {
    let mut f = 0;
    if v & PROT_IMMUTABLE != 0 {
        f |= fs::FS_IMMUTABLE_FL;
    }
    if v & PROT_APPEND != 0 {
        f |= fs::FS_APPEND_FL;
    }
    f
}

/// A change that the immutable or append-only attribute may forbid
/// ([`Overlay::check_protection`]).
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// Opening for writing (`append`: with O_APPEND) or truncating.
    Open { append: bool, trunc: bool },
    /// A change of size by name (truncate).
    Truncate,
    /// A change of size through an open file (ftruncate): only append-only forbids it.
    TruncateOpen,
    /// Data written into it by copy_file_range (only immutable forbids it).
    CopyInto,
    /// fallocate (`keep_size`: a mode that only allocates, allowed on append-only).
    Allocate { keep_size: bool },
    /// A change of mode, owner, or times to given values.
    Meta,
    /// Times set to now.
    Touch,
    /// An extended attribute set or removed.
    Xattr,
    /// A new name for it.
    Link,
    /// Its removal, or its move to another name.
    Remove,
    /// A new entry in it (a directory).
    CreateIn,
    /// An entry removed from it, or moved out (a directory).
    RemoveFrom,
}

/// The changes of one setattr call; `None` fields stay as they are.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// The change time the kernel sends along (with the writeback cache, the time of the
    /// change it made itself).
    pub ctime: Option<Time>,
    pub fh: Option<u64>,
}

impl SetAttr {
    /// Whether every time set is "now" or the change time sent along: how the kernel's
    /// FUSE client with the writeback cache sends a change of times to the current time.
    fn now_in_disguise(&self) -> bool {
        let Some(c) = self.ctime else {
            return false;
        };
        let is_c = |t: Option<TimeSet>| match t {
            None | Some(TimeSet::Now) => true,
            Some(TimeSet::At(t)) => t.sec == c.sec && t.nsec == c.nsec,
        };
        is_c(self.atime) && is_c(self.mtime)
    }
}

/// How a change reaches the upper copy of a node: by name in a directory, or by its own fd.
pub(super) enum Target {
    Name(Arc<std::os::fd::OwnedFd>, super::listing::Name),
    Fd(Arc<std::os::fd::OwnedFd>),
}

/// Filesystem statistics (of the upper layer, or of the highest lower when read-only).
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl Overlay {
    /// The upper copy of non-directory `node` by its name in its upper directory, or by
    /// the fd kept for it where the kernel no longer knows that directory (see
    /// `Node::revive`: an O_TMPFILE file named after its open).
    pub(super) fn upper_by_name(&self, node: &Node) -> SysResult<Target> {
        match self.parent_fd(node, UPPER) {
            Ok((pfd, name)) => Ok(Target::Name(pfd, name)),
            Err(Errno::ESTALE) => Ok(Target::Fd(node.detached().ok_or(Errno::ESTALE)?)),
            Err(e) => Err(e),
        }
    }

    /// The real stat of the copy of `node` that is seen.
    pub fn stat_node(&self, node: &Node) -> SysResult<Stat> {
        self.at_shown_copy(node, fs::fstatat)
    }

    /// Runs `f` on the copy of `node` whose attributes are shown, given as (directory, name)
    /// or, for the root and for an object with no name left, as (its own fd, "").
    fn at_shown_copy<T>(
        &self,
        node: &Node,
        f: impl Fn(BorrowedFd<'_>, &OsStr) -> SysResult<T>,
    ) -> SysResult<T> {
        let own = |fd: BorrowedFd<'_>| f(fd, OsStr::new(""));
        if node.unlinked.load(Ordering::Relaxed) {
            // No name leads to it any more (the old one may now be a whiteout). A removed
            // directory may still be on its way out of the work directory.
            if node.is_dir() {
                self.reaper.flush();
            }
            return match node.detached() {
                Some(fd) => own(fd.as_fd()),
                None => Err(Errno::ENOENT),
            };
        }
        let st = node.state();
        let top = st.top().ok_or(Errno::ESTALE)?;
        if node.id == ROOT_ID {
            return own(self.nodes.dir_fd(node, top)?.as_fd());
        }
        let res = self.at_name(node, top, |dir, name| {
            if node.unlinked.load(Ordering::Relaxed) {
                // Removed while we looked (see `stable_node`): the fallback below answers.
                return Err(Errno::ESTALE);
            }
            f(dir, name)
        });
        match res {
            Err(e) if e == Errno::ENOENT || e == Errno::ESTALE => match node.detached() {
                Some(fd) => own(fd.as_fd()),
                None => Err(e),
            },
            other => other,
        }
    }

    /// The birth time of the copy `getattr` reports on, where its filesystem keeps one (as
    /// the kernel overlay's statx shows that copy's).
    pub fn birth_time(&self, id: u64, fh: Option<u64>) -> SysResult<Option<Time>> {
        let node = self.node(id)?;
        let birth = if let Some(h) = fh.and_then(|fh| self.file_handle(fh)) {
            fs::birth_time(self.read_fd(&h)?.as_fd(), OsStr::new(""))?
        } else {
            self.at_shown_copy(&node, fs::birth_time)?
        };
        Ok(birth.map(|(sec, nsec)| Time { sec, nsec }))
    }

    pub fn attr_of(&self, node: &Node, st: &Stat) -> Attr {
        let st = self.effective_stat(node, st);
        let mut a = Attr::from_stat(&st, node.ino());
        (a.uid, a.gid) = self.shown_ids(node, a.uid, a.gid);
        if node.is_dir() {
            let s = node.state.read();
            // A merged directory's real link count would be wrong for the union; the kernel
            // reports 1, which find and friends take as "unknown".
            let merged = (s.upper && !s.lowers.is_empty()) || s.lowers.len() > 1;
            if merged || self.cfg.static_nlink {
                a.nlink = 1;
            }
        }
        a
    }

    pub fn getattr_node(&self, node: &Node) -> SysResult<Attr> {
        let st = self.stat_node(node)?;
        Ok(self.attr_of(node, &st))
    }

    /// getattr; with an open file handle the attributes come from its fd, so an unlinked
    /// open file still answers.
    pub fn getattr(&self, id: u64, fh: Option<u64>) -> SysResult<Attr> {
        let node = self.node(id)?;
        if fh.is_some() && self.writes_cached() {
            // With the writeback cache, the kernel asks this (with a handle, unlike
            // stat(2)) before it caches a write; a failed write-back fails that write
            // (or an lseek to the end, or a read past the size the kernel knows, if one
            // comes first: each asks the same way).
            if let Some((_, e)) = self.write_back_errors.remove(&id) {
                // Unless a full upper filesystem has room again by now: a write there
                // succeeds on the kernel overlay (the lost write-back is still reported
                // by fsync and close). A write-back that failed after an earlier report
                // (pages an fsync flushed) made this one fail when room came back.
                if e != Errno::ENOSPC || !self.upper_has_room_again() {
                    return Err(e);
                }
            }
        }
        if let Some(h) = fh.and_then(|fh| self.file_handle(fh)) {
            // Through read_fd: a handle opened before a copy-up must report the upper copy.
            if let Ok(st) = self.read_fd(&h).and_then(|fd| fs::fstat(fd.as_fd())) {
                return Ok(self.attr_of(&node, &st));
            }
        }
        self.getattr_node(&node)
    }

    pub fn setattr(&self, ctx: &Ctx, id: u64, set: &SetAttr) -> SysResult<Attr> {
        self.require_upper()?;
        let node = self.node(id)?;
        if set.size.is_some() && node.is_dir() {
            return Err(Errno::EISDIR);
        }
        if self.writes_cached()
            && set.ctime.is_some()
            && set.atime.is_none()
            && (set.mode, set.uid, set.gid, set.size) == (None, None, None, None)
            && node.unlinked.load(Ordering::Relaxed)
            && !node.is_upper()
        {
            // With the writeback cache the kernel moves the ctime of a file it unlinks
            // itself, and sends the times when the last open file of it closes: for a lower
            // file there is no copy to keep them on (the lower layer is never written, and
            // a copy-up would land on the name it no longer has). Such a flush sends the
            // mtime the file has; a futimens that changes it goes on to fail as a copy-up.
            let attr = self.getattr_node(&node)?;
            if set.mtime.is_none() || set.mtime == Some(TimeSet::At(attr.mtime)) {
                return Ok(attr);
            }
        }
        // (Times to now come as given times with the writeback cache: see now_in_disguise.)
        let given_times = (matches!(set.atime, Some(TimeSet::At(_)))
            || matches!(set.mtime, Some(TimeSet::At(_))))
            && !set.now_in_disguise();
        // ftruncate reaches us with its file: the VFS checks only append-only there.
        let truncate = if set.fh.is_some() {
            Change::TruncateOpen
        } else {
            Change::Truncate
        };
        for (wanted, change) in [
            (set.size.is_some(), truncate),
            (
                set.mode.is_some() || set.uid.is_some() || set.gid.is_some() || given_times,
                Change::Meta,
            ),
            // Times that come with a size are the truncate's own (with the writeback cache
            // the kernel sends them along): the truncate's check covers them.
            (
                set.size.is_none() && (set.atime.is_some() || set.mtime.is_some()),
                Change::Touch,
            ),
        ] {
            if wanted {
                self.check_protection(&node, change)?;
            }
        }
        let skip_data = set.size == Some(0);
        self.copy_up(&node, !skip_data)?;

        let handle = set
            .fh
            .and_then(|fh| self.file_handle(fh))
            .filter(|h| h.is_upper());
        // The upper copy is reached by name, or — for the root, and for an object whose
        // last name is gone — through an `O_PATH` fd of its own. Nothing here opens the
        // object for I/O (a fifo would block).
        let unlinked = node.unlinked.load(Ordering::Relaxed);
        let target = if node.id == ROOT_ID {
            Target::Fd(self.nodes.dir_fd(&node, UPPER)?)
        } else if unlinked {
            if node.is_dir() {
                // A removed directory may still be on its way out of the work directory,
                // and the removal of what it holds moves its times: that comes first, as
                // on the kernel overlay, whose rmdir empties it before it answers.
                self.reaper.flush();
            }
            Target::Fd(node.detached().ok_or(Errno::ENOENT)?)
        } else if let (Some(h), None) = (&handle, self.upper_override()) {
            // fchown, fchmod and futimens through the caller's own open file: no lookup of
            // its name (owners kept in an xattr are written by name, below).
            Target::Fd(h.fd())
        } else if node.is_dir() {
            // "." in its own fd: the kernel does not hold a directory's lock while another
            // process renames it within its parent, so its name may change under us.
            Target::Name(
                self.nodes.dir_fd(&node, UPPER)?,
                std::ffi::OsStr::new(".").into(),
            )
        } else {
            self.upper_by_name(&node)?
        };

        // The kernel's FUSE client sends chown(-1, -1) as a setattr with nothing in it; a
        // no-op chown moves ctime just as the kernel overlay would (and clears set-ID bits,
        // even for root). So does its privilege check before a write that found
        // security.capability, which does nothing more here: see
        // `is_privileged_write_check`.
        let touch_ctime_only = set.mode.is_none()
            && set.size.is_none()
            && set.atime.is_none()
            && set.mtime.is_none()
            && set.uid.is_none()
            && set.gid.is_none();
        let chown = set.uid.is_some()
            || set.gid.is_some()
            || (touch_ctime_only && !self.is_privileged_write_check(ctx, &node)?);
        let own = &self.cfg.own;
        let (uid, gid) = (
            set.uid.map(|u| own.disk_uid(u)),
            set.gid.map(|g| own.disk_gid(g)),
        );
        let mut mode = set.mode;
        if let Some(m) = &mut mode {
            if node.kind == libc::S_IFLNK {
                return Err(Errno::EOPNOTSUPP);
            }
            // chmod by someone outside the file's group cannot set set-group-ID (the VFS
            // strips it in the filesystem's setattr; we chmod as root, so strip it here).
            if *m & libc::S_ISGID != 0
                && ctx.uid != 0
                && !ctx.in_group_or_root(self.getattr_node(&node)?.gid)
            {
                *m &= !libc::S_ISGID;
            }
        }
        let kept = match (&target, self.upper_override()) {
            (Target::Name(pfd, name), Some(_)) if chown || mode.is_some() => {
                self.set_override_owner_mode(&node, pfd.as_fd(), name, uid, gid, mode)?
            }
            _ => false,
        };
        if chown && !kept {
            let res = match &target {
                Target::Name(pfd, name) => fs::fchownat(pfd.as_fd(), name, uid, gid),
                Target::Fd(fd) => {
                    fs::fchown(fd.as_fd(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
                }
            };
            match res {
                // A squashed mount shows one owner whatever is stored: chown never fails.
                Err(e) if own.squashed() => log::debug!("chown not stored: {e:?}"),
                other => other?,
            }
        }
        if let (Some(mode), false) = (mode, kept) {
            match &target {
                Target::Name(pfd, name) => fs::fchmodat(pfd.as_fd(), name, mode & 0o7777)?,
                Target::Fd(fd) => fs::chmod_fd(fd.as_fd(), mode & 0o7777)?,
            }
        }
        if let Some(size) = set.size {
            let fd = match (&handle, &target) {
                (Some(h), _) => h.fd(),
                (None, Target::Name(pfd, name)) => {
                    Arc::new(fs::openat(pfd.as_fd(), name, libc::O_WRONLY, 0)?)
                }
                (None, Target::Fd(fd)) => Arc::new(fs::reopen(fd.as_fd(), libc::O_WRONLY)?),
            };
            // With the writeback cache the kernel keeps a file's times itself, and moves
            // them for a truncate(2) only where the size changes (then it sends them along):
            // truncating the copy to the size it has would move its times where the mount
            // shows none moving, until the next mount shows them moved.
            let keeps_times = self.writes_cached() && set.mtime.is_none() && set.fh.is_none();
            if !(keeps_times && fs::fstat(fd.as_fd())?.st_size as u64 == size) {
                fs::ftruncate(fd.as_fd(), size)?;
            }
            self.kill_suid_sgid(ctx, &node, &fd);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let utimens = |a: Option<TimeSet>, m: Option<TimeSet>| {
                let (a, m) = (a.map(TimeSet::timespec), m.map(TimeSet::timespec));
                match &target {
                    Target::Name(pfd, name) => fs::utimensat(pfd.as_fd(), name, a, m),
                    Target::Fd(fd) => fs::utimens_fd(fd.as_fd(), a, m),
                }
            };
            let _times = self
                .writes_cached()
                .then(|| super::file::times_lock(node.id));
            match utimens(set.atime, set.mtime) {
                // With the writeback cache the kernel sends "now" (utime(NULL), touch) as
                // the time itself, equal to the change time it sends along; an append-only
                // file accepts only the former.
                Err(Errno::EPERM) if self.writes_cached() && set.now_in_disguise() => {
                    let now = |t: Option<TimeSet>| t.map(|_| TimeSet::Now);
                    utimens(now(set.atime), now(set.mtime))?
                }
                other => other?,
            }
        }
        match &handle {
            Some(h) => Ok(self.attr_of(&node, &fs::fstat(h.fd().as_fd())?)),
            None => self.getattr_node(&node),
        }
    }

    /// Whether an empty SETATTR is the kernel's privilege check before a write by root
    /// rather than a chown(-1, -1). The check removes security.capability (a REMOVEXATTR
    /// before this request) and, for a caller without CAP_FSETID, asks to clear set-ID
    /// bits. chown(-1, -1) always asks for the latter. For a root caller on a file with
    /// set-ID bits the two differ (a write keeps them, as on the kernel overlay) and the
    /// request does not say which it is, so the calling thread's system call decides;
    /// one that cannot be read counts as a write, the far commoner of the two.
    fn is_privileged_write_check(&self, ctx: &Ctx, node: &Node) -> SysResult<bool> {
        if ctx.uid != 0 || node.kind != libc::S_IFREG {
            return Ok(false);
        }
        if self.getattr_node(node)?.mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(false);
        }
        Ok(crate::sys::caller_status::in_chown(ctx.pid) != Some(true))
    }

    /// chown/chmod of an upper entry whose owner and mode live in the override xattr.
    /// `false` when this entry cannot carry the xattr (a symlink under `user.`), so the
    /// caller changes the inode instead.
    fn set_override_owner_mode(
        &self,
        node: &Node,
        dir: std::os::fd::BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> SysResult<bool> {
        let st = self.effective_stat(node, &fs::fstatat(dir, name)?);
        let mut o = super::ownership::OverrideStat {
            uid: uid.unwrap_or(st.st_uid),
            gid: gid.unwrap_or(st.st_gid),
            mode: st.st_mode,
            rdev: Some(st.st_rdev),
        };
        if (uid.is_some() || gid.is_some()) && fs::ifmt(st.st_mode) != libc::S_IFDIR {
            // chown clears set-user-ID, and set-group-ID on a group-executable file.
            o.mode &= !libc::S_ISUID;
            if o.mode & libc::S_IXGRP != 0 {
                o.mode &= !libc::S_ISGID;
            }
        }
        if let Some(m) = mode {
            o.mode = (o.mode & libc::S_IFMT) | (m & 0o7777);
        }
        self.write_override(dir, name, &o, node.kind)
    }

    pub fn readlink(&self, id: u64) -> SysResult<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let node = self.node(id)?;
        if node.kind != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let top = node.state().top().ok_or(Errno::ESTALE)?;
        let target = self.at_name(&node, top, fs::readlinkat)?;
        Ok(target.into_vec())
    }

    pub fn statfs(&self) -> SysResult<StatFs> {
        let fd = match &self.layers.upper {
            Some(u) => u.fd(),
            None => self.layers.lowers[0].fd(),
        };
        let v = fs::fstatvfs(fd)?;
        Ok(StatFs {
            blocks: v.f_blocks,
            bfree: v.f_bfree,
            bavail: v.f_bavail,
            files: v.f_files,
            ffree: v.f_ffree,
            bsize: v.f_bsize as u32,
            namelen: 255,
            frsize: v.f_frsize as u32,
        })
    }

    /// access(2): permission bits are checked by the kernel (default_permissions); what is
    /// left is the read-only case.
    pub fn access(&self, id: u64, mask: i32) -> SysResult<()> {
        let node = self.node(id)?;
        self.stat_node(&node)?;
        if mask & libc::W_OK != 0 && self.layers.upper.is_none() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    pub fn forget(&self, id: u64, n: u64) {
        if self.writes_cached() {
            self.write_back_errors.remove(&id);
        }
        for loc in self.nodes.forget(id, n) {
            self.renumber_listed(&loc);
        }
    }

    /// The copy at `loc` was forgotten, and with it the lower object's number it showed:
    /// a lookup now finds its upper copy's, and so must the listing of its directory, ours
    /// and the kernel's cached one (on the kernel overlay, a listing looks each such entry
    /// up).
    fn renumber_listed(&self, loc: &super::node::Loc) {
        let Ok(parent) = self.node(loc.parent) else {
            return;
        };
        let Some(m) = parent.merged() else {
            return;
        };
        let Ok(st) = self
            .nodes
            .dir_fd(&parent, UPPER)
            .and_then(|fd| fs::fstatat(fd.as_fd(), &loc.name))
        else {
            return;
        };
        m.copied_up(&loc.name, self.layers.ino.map(st.st_dev, st.st_ino));
        if parent.state.read().listed {
            self.notify_data_changed(parent.id);
        }
    }
}

impl Overlay {
    /// The inode-attribute ioctls (`lsattr`/`chattr`, FS_IOC_FSGETXATTR): forwarded to the
    /// copy that is seen; setting copies up first. Returns the bytes to hand back.
    pub fn attr_ioctl(
        &self,
        id: u64,
        cmd: u32,
        input: &[u8],
        out_size: usize,
    ) -> SysResult<Vec<u8>> {
        let (set, size) = match cmd {
            fs::FS_IOC_GETFLAGS => (false, 4),
            fs::FS_IOC_SETFLAGS => (true, 4),
            fs::FS_IOC_FSGETXATTR => (false, 28),
            fs::FS_IOC_FSSETXATTR => (true, 28),
            _ => return Err(Errno(libc::ENOTTY)),
        };
        let node = self.node(id)?;
        if node.kind != libc::S_IFREG && node.kind != libc::S_IFDIR {
            return Err(Errno(libc::ENOTTY));
        }
        if set {
            self.require_upper()?;
            self.copy_up(&node, true)?;
        }
        let fd = self.open_for_ioctl(&node)?;
        // The kernel's FS_IOC_*FLAGS take an int whatever the command's encoded size says.
        let mut buf = vec![0u8; size.max(8)];
        let n = input.len().min(size);
        buf[..n].copy_from_slice(&input[..n]);
        // Immutable and append-only go to an upper object's protattr, never on itself, as
        // with the kernel (see `protection`): a directory carrying them could take no copy
        // of a child. Both commands carry the flags in their first word.
        let (imm, app) = if cmd == fs::FS_IOC_GETFLAGS || cmd == fs::FS_IOC_SETFLAGS {
            (fs::FS_IMMUTABLE_FL, fs::FS_APPEND_FL)
        } else {
            (fs::FS_XFLAG_IMMUTABLE, fs::FS_XFLAG_APPEND)
        };
        let copy = node.is_upper() && !node.unlinked.load(Ordering::Relaxed);
        let kept = if copy { self.protection(&node) } else { 0 };
        let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        let wanted = word(&buf);
        if set && copy {
            buf[..4].copy_from_slice(&(wanted & !(imm | app)).to_ne_bytes());
        }
        fs::attr_ioctl(fd.as_fd(), cmd, &mut buf)?;
        if set {
            if copy {
                let mut prot = 0;
                if wanted & imm != 0 {
                    prot |= fs::FS_IMMUTABLE_FL;
                }
                if wanted & app != 0 {
                    prot |= fs::FS_APPEND_FL;
                }
                self.at_name(&node, UPPER, |dir, name| self.set_protattr(dir, name, prot))?;
                node.state.write().prot = prot_known(prot);
            }
            self.notify_attr_changed(node.id);
            return Ok(Vec::new());
        }
        if copy {
            let mut w = word(&buf);
            if kept & fs::FS_IMMUTABLE_FL != 0 {
                w |= imm;
            }
            if kept & fs::FS_APPEND_FL != 0 {
                w |= app;
            }
            buf[..4].copy_from_slice(&w.to_ne_bytes());
        }
        buf.truncate(size.min(out_size.max(size)));
        Ok(buf)
    }

    /// The copy that is seen, opened just far enough for an inode-attribute ioctl.
    fn open_for_ioctl(&self, node: &Node) -> SysResult<OwnedFd> {
        let top = node.state().top().ok_or(Errno::ESTALE)?;
        let flags =
            libc::O_RDONLY | libc::O_NONBLOCK | if node.is_dir() { libc::O_DIRECTORY } else { 0 };
        if node.id == ROOT_ID {
            fs::reopen(self.nodes.dir_fd(node, top)?.as_fd(), flags)
        } else if node.unlinked.load(Ordering::Relaxed) {
            // Its old name may hold a whiteout now (which opens as a device: ENXIO).
            fs::reopen(node.detached().ok_or(Errno::ENOENT)?.as_fd(), flags)
        } else {
            self.at_name(node, top, |dir, name| fs::openat(dir, name, flags, 0))
        }
    }

    /// Refuses (EPERM) a `change` to `node` that the VFS would refuse for its immutable or
    /// append-only attribute, where no filesystem would refuse it for us. The kernel's FUSE
    /// client does not know these attributes, and an upper filesystem checks only its own:
    /// while `node` has no upper copy they are its lower copy's (a change would reach a
    /// fresh copy, which carries none); a copy made from a lower object keeps them in
    /// `<prefix>protattr`, as the kernel's copies do. Checked as the VFS does, before
    /// anything else about the change.
    pub fn check_protection(&self, node: &Node, change: Change) -> SysResult<()> {
        let flags = self.protection(node);
        if flags == 0 {
            return Ok(());
        }
        let immutable = flags & fs::FS_IMMUTABLE_FL != 0;
        let append = flags & fs::FS_APPEND_FL != 0;
        let refused = match change {
            Change::Open { append: a, trunc } => immutable || (append && (!a || trunc)),
            Change::Touch | Change::CreateIn | Change::CopyInto => immutable,
            Change::TruncateOpen => append,
            Change::Allocate { keep_size } => immutable || (append && !keep_size),
            Change::Truncate
            | Change::Meta
            | Change::Xattr
            | Change::Link
            | Change::Remove
            | Change::RemoveFrom => immutable || append,
        };
        if refused {
            Err(Errno::EPERM)
        } else {
            Ok(())
        }
    }

    /// The immutable and append-only attributes of `node` that no filesystem enforces
    /// for us: its lower copy's while it has no upper one; then those its upper copy keeps
    /// in `<prefix>protattr` ("a", "i" or "ai", the kernel's format). Layers do not change
    /// under the mount, so they are read once per node and then kept on it.
    pub(super) fn protection(&self, node: &Node) -> u32 {
        // Every change asks, so the known answer is read without a copy of the state.
        let (known, upper, top) = {
            let st = node.state.read();
            (st.prot, st.upper, st.top())
        };
        if known & PROT_KNOWN != 0 {
            return prot_flags(known);
        }
        if node.id == ROOT_ID || node.unlinked.load(Ordering::Relaxed) {
            return 0;
        }
        // Best effort: where they cannot be read, a change meets its own error.
        let flags = if upper {
            let attr = format!("{}{PROTATTR_XATTR}", self.layers.xattr_prefix);
            let mut buf = [0u8; 8];
            match self.at_name(node, UPPER, |dir, name| {
                xattr::get(dir, name, &attr, &mut buf)
            }) {
                Ok(n) => buf[..n].iter().fold(0, |f, c| match c {
                    b'a' => f | fs::FS_APPEND_FL,
                    b'i' => f | fs::FS_IMMUTABLE_FL,
                    _ => f,
                }),
                Err(_) => 0,
            }
        } else if let Some(top) = top {
            self.lower_protection(node, top)
        } else {
            0
        };
        let mut now = node.state.write();
        // Unless a copy-up changed where they are read from meanwhile.
        if now.upper == upper {
            now.prot = prot_known(flags);
        }
        flags
    }

    /// The immutable and append-only flags of `node`'s copy in lower `layer`. statx says
    /// without an open whether there may be any (nearly always not), but it is only a hint:
    /// erofs reports every file immutable, while its inodes carry no such flag and the
    /// kernel overlay enforces none. So a hint is checked against the inode's own flags
    /// (`fs::inode_flags_at`; only on files and directories: on anything else the ioctl it
    /// may fall back to would reach a device driver, and the flags cannot be set there).
    fn lower_protection(&self, node: &Node, layer: super::LayerId) -> u32 {
        let hint = self.at_name(node, layer, fs::protection_flags).unwrap_or(0);
        if hint == 0 || (node.kind != libc::S_IFREG && node.kind != libc::S_IFDIR) {
            return 0;
        }
        self.at_name(node, layer, |d, name| {
            fs::inode_flags_at(d, name, node.is_dir())
        })
        .map_or(0, |f| f & (fs::FS_IMMUTABLE_FL | fs::FS_APPEND_FL))
    }

    /// Records `prot` (immutable and append-only bits) in the `<prefix>protattr` of `name`
    /// in `dir`, or removes it when there are none.
    pub(super) fn set_protattr(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        prot: u32,
    ) -> SysResult<()> {
        let attr = format!("{}{PROTATTR_XATTR}", self.layers.xattr_prefix);
        let mut v = Vec::new();
        if prot & fs::FS_APPEND_FL != 0 {
            v.push(b'a');
        }
        if prot & fs::FS_IMMUTABLE_FL != 0 {
            v.push(b'i');
        }
        if v.is_empty() {
            return match xattr::remove(dir, name, &attr) {
                Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => Ok(()),
                other => other,
            };
        }
        xattr::set(dir, name, &attr, &v, 0)
    }

    /// Whether `node` carries the immutable or append-only attribute. The kernel's FUSE
    /// client does not know these flags, so the checks the VFS makes on them before a
    /// removal (EPERM, ahead of ENOTEMPTY or EISDIR) are ours to make.
    pub fn is_immutable_or_append(&self, node: &Node) -> bool {
        if node.kind != libc::S_IFREG && node.kind != libc::S_IFDIR {
            return false;
        }
        self.open_for_ioctl(node)
            .and_then(|fd| fs::get_inode_flags(fd.as_fd()))
            .is_ok_and(|f| f & (fs::FS_IMMUTABLE_FL | fs::FS_APPEND_FL) != 0)
    }
}
