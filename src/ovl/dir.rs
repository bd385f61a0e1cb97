//! Directory operations: create, mknod, mkdir, symlink, link, unlink, rmdir, rename.
//!
//! Every change lands in the upper layer. A name removed while a lower layer still holds it
//! is replaced by a whiteout, atomically: the whiteout is made in the work directory and
//! exchanged with the upper entry (`RENAME_EXCHANGE`), or left by the rename itself
//! (`RENAME_WHITEOUT`). A directory made where a whiteout hid a name is opaque, as is a
//! directory moved into a merged directory, so that lower content never leaks into it.
//! A directory with lower parts moves only with `redirect_dir=on`: its upper copy then
//! carries a redirect to its old place, written as the kernel writes one; without it the
//! rename fails with EXDEV, as on kernel overlayfs, and `mv` copies. Each change patches the
//! merged listings it touches.

use super::copy_up::{copy_xattrs, temp_name};
use super::inode::{Attr, Change, Target};
use super::layers::{remove_tree, UPPER};
use super::listing::{Entry, Name};
use super::node::{redirects_from, Lowers};
use super::node::{Node, NodeInit, NodeState, ROOT_ID};
use super::ownership::OverrideStat;
use super::{check_new_name, whiteout, Ctx, Errno, Overlay, SysResult};
use crate::sys::fs;
use parking_lot::MutexGuard;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// What to create.
#[derive(Clone, Copy, Debug)]
pub enum NewObject<'a> {
    /// A regular file, opened with these flags (create).
    File {
        mode: u32,
        flags: i32,
    },
    Dir {
        mode: u32,
    },
    /// mknod: fifo, socket, device, or regular file.
    Special {
        mode: u32,
        rdev: u64,
    },
    Symlink {
        target: &'a OsStr,
    },
}

impl NewObject<'_> {
    fn kind(&self) -> u32 {
        match self {
            NewObject::File { .. } => libc::S_IFREG,
            NewObject::Dir { .. } => libc::S_IFDIR,
            NewObject::Special { mode, .. } => fs::ifmt(*mode),
            NewObject::Symlink { .. } => libc::S_IFLNK,
        }
    }

    fn perm(&self) -> u32 {
        match self {
            NewObject::File { mode, .. }
            | NewObject::Dir { mode }
            | NewObject::Special { mode, .. } => mode & 0o7777,
            NewObject::Symlink { .. } => 0o777,
        }
    }

    fn rdev(&self) -> u64 {
        match self {
            NewObject::Special { rdev, .. } => *rdev,
            _ => 0,
        }
    }

    /// Makes the object `name` in `dir`; a file comes back open.
    fn make(&self, dir: BorrowedFd<'_>, name: &OsStr, perm: u32) -> SysResult<Option<OwnedFd>> {
        match *self {
            NewObject::File { flags, .. } => {
                let f = super::file::real_open_flags(flags) | libc::O_CREAT | libc::O_EXCL;
                Ok(Some(fs::openat(dir, name, f, perm)?))
            }
            NewObject::Dir { .. } => fs::mkdirat(dir, name, perm).map(|()| None),
            NewObject::Special { mode, rdev } => {
                fs::mknodat(dir, name, fs::ifmt(mode) | perm, rdev).map(|()| None)
            }
            NewObject::Symlink { target } => fs::symlinkat(target, dir, name).map(|()| None),
        }
    }
}

/// Locks the directories of a rename: ancestor first, else by id, so that the order agrees
/// with the parent-then-child order every other operation uses.
fn lock_pair<'a>(
    ovl: &Overlay,
    a: &'a Node,
    b: &'a Node,
) -> (MutexGuard<'a, ()>, Option<MutexGuard<'a, ()>>) {
    if a.id == b.id {
        return (a.dir_lock.lock(), None);
    }
    let a_first = if ovl.is_ancestor(a.id, b) {
        true
    } else if ovl.is_ancestor(b.id, a) {
        false
    } else {
        a.id < b.id
    };
    if a_first {
        let g = a.dir_lock.lock();
        (g, Some(b.dir_lock.lock()))
    } else {
        let g = b.dir_lock.lock();
        (g, Some(a.dir_lock.lock()))
    }
}

impl Overlay {
    /// Whether node `anc` is `node` or one of its ancestors.
    pub fn is_ancestor(&self, anc: u64, node: &Node) -> bool {
        let mut id = node.id;
        let mut depth = 0;
        loop {
            if id == anc {
                return true;
            }
            if id == ROOT_ID || depth > super::node::MAX_DEPTH {
                return false;
            }
            id = match self.node(id) {
                Ok(n) => n.parent(),
                Err(_) => return false,
            };
            depth += 1;
        }
    }

    fn check_create_name(&self, name: &OsStr) -> SysResult<()> {
        check_new_name(name)?;
        if whiteout::is_marker_name(name) {
            // Such a name would read back as a whiteout marker.
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// EEXIST unless `name` is absent from the merged directory `parent`.
    fn require_absent(&self, parent: &Node, name: &OsStr) -> SysResult<()> {
        match self.find_child(parent, name)? {
            Some(_) => Err(Errno::EEXIST),
            None => Ok(()),
        }
    }

    /// Creates a new object named `name` in `parent`, owned by the caller.
    pub fn create_object(
        &self,
        ctx: &Ctx,
        parent_id: u64,
        name: &OsStr,
        what: NewObject<'_>,
    ) -> SysResult<(Arc<Node>, Attr, Option<OwnedFd>)> {
        self.require_upper()?;
        self.check_create_name(name)?;
        let parent = self.node(parent_id)?;
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.check_protection_to_create(&parent, name)?;
        self.copy_up(&parent, true)?;
        let _g = parent.dir_lock.lock();
        // In a directory with no lower part, the upper entry (checked next) is all there is.
        if parent.has_lowers() {
            self.require_absent(&parent, name)?;
        }
        let upfd = self.nodes.dir_fd(&parent, UPPER)?;
        let upfd = upfd.as_fd();
        // The name is nearly always free: the object is made in place straight away, and
        // only an EEXIST asks what holds the name. A whiteout sends it the long way
        // (`make_new`); anything else is the caller's EEXIST.
        let file = match self.make_new(ctx, &parent, upfd, name, what, false) {
            Err(Errno::EEXIST) if whiteout::is_whiteout_at(upfd, name)? => {
                self.make_new(ctx, &parent, upfd, name, what, true)?
            }
            other => other?,
        };
        let kind = what.kind();
        let st = match &file {
            Some(f) => fs::fstat(f.as_fd())?,
            None => fs::fstatat(upfd, name)?,
        };
        let init = self.new_upper_node(kind, &st);
        let ino = init.ino;
        let node = self.nodes.insert(parent.id, Name::from(name), init);
        if let Some(m) = parent.merged() {
            m.insert(name, Entry::upper(kind, ino));
        }
        let attr = self.attr_of(&node, &st);
        Ok((node, attr, file))
    }

    /// Makes the new object `what` as `name` in `parent` (upper copy `upfd`), owned as
    /// the caller `ctx` makes it, over the whiteout `name` holds if `upper_whiteout`;
    /// returns the open fd of a regular file. EEXIST where the name is taken (by a
    /// whiteout too, unless `upper_whiteout`).
    fn make_new(
        &self,
        ctx: &Ctx,
        parent: &Node,
        upfd: BorrowedFd<'_>,
        name: &OsStr,
        what: NewObject<'_>,
        upper_whiteout: bool,
    ) -> SysResult<Option<OwnedFd>> {
        let kind = what.kind();
        // Only a whiteout in the upper layer makes a new directory opaque: one in a lower
        // layer already stops the merge below it (this is what the kernel does).
        // With redirects on, the kernel also marks every directory made in a merged parent
        // opaque (layers may then not change offline, so nothing below could show up).
        let oci_marker = (kind == libc::S_IFDIR
            || self.layers.whiteout_format == whiteout::Format::Oci)
            && self.oci_hidden(upfd, name);
        let hides_marker = upper_whiteout || (kind == libc::S_IFDIR && oci_marker);
        let opaque = kind == libc::S_IFDIR
            && (hides_marker || (self.cfg.redirect_dir && parent.has_lowers()));

        let own = &self.cfg.own;
        let real_pst = fs::fstat(upfd)?;
        let (uid, gid, perm) = self.new_object_ids(ctx, parent, upfd, &real_pst, &what);
        // The upper filesystem gives a new object our ids (the group as above); a caller
        // with the same ids needs no chown, which would cost an inode update in the upper
        // filesystem's journal per create.
        // Over a marker the object is made in the workdir (below), in a stand-in for the
        // parent where that carries a default ACL; their set-group-ID bit and group are
        // what mkdir(2) and open(2) go by there.
        let (our_uid, our_gid) = crate::sys::creator_ids();
        let stand_in = if hides_marker {
            self.stand_in_parent(upfd, &real_pst)?
        } else {
            None
        };
        let made_in = match (&stand_in, hides_marker) {
            (Some((_, fd)), _) => fs::fstat(fd.as_fd())?,
            (None, true) => fs::fstat(self.layers.work()?)?,
            (None, false) => real_pst,
        };
        let needs_chown = uid != our_uid || gid != new_object_gid(&made_in, our_gid);
        let kept = self.upper_override().is_some();
        // Where owners live in an xattr, special files are stored as plain files with their
        // type in the xattr too: only plain files and directories take `user.` xattrs, and
        // an unprivileged daemon may not make devices.
        let stored = match what {
            NewObject::Special { .. } if kept && kind != libc::S_IFREG => NewObject::Special {
                mode: libc::S_IFREG,
                rdev: 0,
            },
            w => w,
        };

        // `fd`: the new object's own, for a regular file (spares a lookup by name).
        let finish =
            |dir: BorrowedFd<'_>, n: &OsStr, fd: Option<BorrowedFd<'_>>| -> SysResult<()> {
                if kept {
                    let o = OverrideStat {
                        uid,
                        gid,
                        mode: kind | (perm & 0o7777),
                        rdev: Some(what.rdev()),
                    };
                    if !self.write_override(dir, n, &o, kind)? {
                        kept_by_chown(dir, n, uid, gid)?;
                    }
                } else if needs_chown {
                    let chown = match fd {
                        Some(fd) => fs::fchown(fd, uid, gid),
                        None => fs::fchownat(dir, n, Some(uid), Some(gid)),
                    };
                    match chown {
                        Err(e) if own.squashed() => log::debug!("new file keeps its owner: {e:?}"),
                        other => other?,
                    }
                    // chown clears a file's set-user/group-ID bits; put them back. The
                    // permission bits stay as the upper filesystem made them: a default ACL
                    // may have narrowed them. (A directory keeps what mkdir(2) gave it.)
                    if kind != libc::S_IFLNK && kind != libc::S_IFDIR && perm & 0o7000 != 0 {
                        let now = fs::fstatat(dir, n)?.st_mode & 0o777;
                        fs::fchmodat(dir, n, now | (perm & 0o7000))?;
                    }
                }
                // mkdir(2) takes set-group-ID from the directory it makes in, not from its
                // mode: made in the workdir, a directory of a set-group-ID parent needs it
                // added.
                let inherit_setgid = !kept
                    && kind == libc::S_IFDIR
                    && perm & libc::S_ISGID != 0
                    && made_in.st_mode & libc::S_ISGID == 0;
                if inherit_setgid {
                    let now = fs::fstatat(dir, n)?.st_mode & 0o7777;
                    fs::fchmodat(dir, n, now | libc::S_ISGID)?;
                }
                if opaque {
                    let marked = whiteout::set_opaque(
                        dir,
                        n,
                        self.layers.xattr_prefix,
                        self.layers.upper_xattrs,
                    );
                    match marked {
                        // Over a whiteout the mark is what hides the lower directory; in a
                        // merged parent it only spares lookups below (the kernel, too, lets
                        // that one fail).
                        Err(e) if !hides_marker => {
                            log::debug!("new directory {n:?} not marked opaque: {e:?}")
                        }
                        other => other?,
                    }
                }
                Ok(())
            };

        // Over a marker the new object is built in the workdir and swapped in atomically;
        // elsewhere it is made in place (the opaque mark of a plain new directory is only
        // an optimisation, as in the kernel).
        let file = if hides_marker {
            let work = self.layers.work()?;
            let at = stand_in.as_ref().map_or(work, |(_, fd)| fd.as_fd());
            let tmp = temp_name();
            let res = stored
                .make(at, &tmp, self.real_perm(perm, kind))
                .and_then(|f| {
                    finish(at, &tmp, f.as_ref().map(|f| f.as_fd()))?;
                    if upper_whiteout {
                        fs::renameat2(at, &tmp, upfd, name, fs::RENAME_EXCHANGE)?;
                    } else {
                        fs::renameat2(at, &tmp, upfd, name, fs::RENAME_NOREPLACE)?;
                    }
                    Ok(f)
                });
            // After an exchange the whiteout sits at `tmp`; after a failure, the new object.
            let _ = remove_tree(at, &tmp);
            if let Some((n, _)) = &stand_in {
                let _ = fs::unlinkat(work, n, true);
            }
            res?
        } else {
            let f = stored.make(upfd, name, self.real_perm(perm, kind))?;
            if let Err(e) = finish(upfd, name, f.as_ref().map(|f| f.as_fd())) {
                let _ = fs::unlinkat(upfd, name, kind == libc::S_IFDIR);
                return Err(e);
            }
            f
        };

        if self.layers.whiteout_format == whiteout::Format::Oci && oci_marker {
            // The new object (opaque, if a directory) hides what the marker hid.
            let _ = fs::unlinkat(upfd, &whiteout::oci_marker_for(name), false);
        }
        Ok(file)
    }

    /// open(O_TMPFILE) in directory `parent_id`: a file with no name, made in the upper copy
    /// of the directory (copied up first) as the kernel overlay makes it, which linkat(2)
    /// may name later (`link`). Returns its node (with no name, reached through the fd it
    /// keeps), attributes and the open fd (`flags`: the open's access mode and flags).
    pub fn create_unnamed(
        &self,
        ctx: &Ctx,
        parent_id: u64,
        mode: u32,
        flags: i32,
    ) -> SysResult<(Arc<Node>, Attr, OwnedFd)> {
        self.require_upper()?;
        let parent = self.node(parent_id)?;
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.check_protection(&parent, Change::CreateIn)?;
        self.copy_up(&parent, true)?;
        let upfd = self.nodes.dir_fd(&parent, UPPER)?;
        let upfd = upfd.as_fd();
        let real_pst = fs::fstat(upfd)?;
        let what = NewObject::File { mode, flags };
        let (uid, gid, perm) = self.new_object_ids(ctx, &parent, upfd, &real_pst, &what);
        // Never O_EXCL: the kernel keeps that promise on its own inode, and ours must stay
        // linkable for `link`.
        let open = super::file::real_open_flags(flags) & !(libc::O_EXCL | libc::O_CREAT);
        let fd = fs::openat(
            upfd,
            OsStr::new("."),
            open | libc::O_TMPFILE,
            self.real_perm(perm, libc::S_IFREG),
        )?;
        let (our_uid, our_gid) = crate::sys::creator_ids();
        if self.upper_override().is_some() {
            // Through the fd itself (an empty name): the file has no other way in.
            let o = OverrideStat {
                uid,
                gid,
                mode: libc::S_IFREG | (perm & 0o7777),
                rdev: Some(0),
            };
            self.write_override(fd.as_fd(), OsStr::new(""), &o, libc::S_IFREG)?;
        } else if uid != our_uid || gid != new_object_gid(&real_pst, our_gid) {
            match fs::fchown(fd.as_fd(), uid, gid) {
                Err(e) if self.cfg.own.squashed() => log::debug!("new file keeps its owner: {e:?}"),
                other => other?,
            }
            // chown clears set-user/group-ID bits; put them back.
            if perm & 0o7000 != 0 {
                let now = fs::fstat(fd.as_fd())?.st_mode & 0o777;
                fs::chmod_fd(fd.as_fd(), now | (perm & 0o7000))?;
            }
        }
        let st = fs::fstat(fd.as_fd())?;
        let init = self.new_upper_node(libc::S_IFREG, &st);
        let path_fd = fs::reopen(fd.as_fd(), libc::O_PATH | libc::O_CLOEXEC)?;
        let node = self
            .nodes
            .insert_unnamed(parent.id, init, Arc::new(path_fd));
        let attr = self.attr_of(&node, &st);
        Ok((node, attr, fd))
    }

    /// What a node needs of an object just made in the upper layer, whose stat is `st`.
    fn new_upper_node(&self, kind: u32, st: &fs::Stat) -> NodeInit {
        NodeInit {
            kind,
            ino: self.layers.ino.map(st.st_dev, st.st_ino),
            state: NodeState {
                upper: true,
                lowers: Lowers::None,
                // Nothing new carries a protattr, nor the metadata-only mark.
                prot: super::inode::PROT_KNOWN,
                whole: true,
                ..Default::default()
            },
            upper_key: (kind != libc::S_IFDIR).then_some((st.st_dev, st.st_ino)),
            seen: None,
        }
    }

    /// The owner, group (disk ids) and permission bits of a new object `what` made by
    /// `ctx` in `parent` (upper copy `upfd`, whose stat is `real_pst`): the caller; the
    /// directory's group if it is set-group-ID; the mode asked for less the umask where no
    /// default ACL applies, as the upper filesystem would decide for a process creating
    /// the object itself.
    fn new_object_ids(
        &self,
        ctx: &Ctx,
        parent: &Node,
        upfd: BorrowedFd<'_>,
        real_pst: &fs::Stat,
        what: &NewObject<'_>,
    ) -> (u32, u32, u32) {
        let own = &self.cfg.own;
        let kind = what.kind();
        let pst = self.effective_stat(parent, real_pst);
        let uid = own.disk_uid(ctx.uid);
        let gid = new_object_gid(&pst, own.disk_gid(ctx.gid));
        let mut perm = what.perm();
        if kind != libc::S_IFLNK
            && (self.cfg.noacl
                || crate::sys::xattr::get_on_dir(upfd, "system.posix_acl_default").is_err())
        {
            perm &= !ctx.umask;
        }
        if kind == libc::S_IFDIR && pst.st_mode & libc::S_ISGID != 0 {
            perm |= libc::S_ISGID;
        } else if perm & libc::S_ISGID != 0 && !ctx.in_group_or_root(own.shown_gid(gid)) {
            // A file may not be made set-group-ID for a group its creator is not in.
            perm &= !libc::S_ISGID;
        }
        (uid, gid, perm)
    }

    pub fn mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> SysResult<(Arc<Node>, Attr)> {
        let (n, a, _) = self.create_object(ctx, parent, name, NewObject::Dir { mode })?;
        Ok((n, a))
    }

    pub fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
    ) -> SysResult<(Arc<Node>, Attr)> {
        let what = match fs::ifmt(mode) {
            libc::S_IFDIR => return Err(Errno::EINVAL),
            // That is a whiteout: the kernel refuses to make one through the overlay.
            libc::S_IFCHR if rdev == 0 => return Err(Errno::EPERM),
            libc::S_IFREG | 0 => NewObject::Special {
                mode: libc::S_IFREG | (mode & 0o7777),
                rdev: 0,
            },
            _ => NewObject::Special { mode, rdev },
        };
        let (n, a, _) = self.create_object(ctx, parent, name, what)?;
        Ok((n, a))
    }

    pub fn symlink(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> SysResult<(Arc<Node>, Attr)> {
        let (n, a, _) = self.create_object(ctx, parent, name, NewObject::Symlink { target })?;
        Ok((n, a))
    }

    /// Makes a new name for an existing object (hard link); copies it up first.
    pub fn link(
        &self,
        _ctx: &Ctx,
        id: u64,
        parent_id: u64,
        name: &OsStr,
    ) -> SysResult<(Arc<Node>, Attr)> {
        self.require_upper()?;
        self.check_create_name(name)?;
        let node = self.node(id)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        // A file with no name: made by O_TMPFILE (`create_unnamed`), which linkat(2) may
        // name, or removed while open, which may not be named again (ENOENT, as on the
        // kernel overlay). The VFS asks us for the latter when its link count was above
        // one (a lower hard link); an upper one the upper filesystem refuses itself.
        let unnamed = if node.unlinked.load(std::sync::atomic::Ordering::Relaxed) {
            if !node.is_upper() {
                return Err(Errno::ENOENT);
            }
            Some(node.detached().ok_or(Errno::ENOENT)?)
        } else {
            None
        };
        let parent = self.node(parent_id)?;
        self.check_protection(&node, Change::Link)?;
        self.check_protection_to_create(&parent, name)?;
        self.copy_up(&node, true)?;
        self.copy_up(&parent, true)?;
        let _g = parent.dir_lock.lock();
        self.require_absent(&parent, name)?;
        // The upper file to link: by its fd, or by its name in its upper directory.
        let source = match unnamed {
            Some(fd) => Target::Fd(fd),
            None => self.upper_by_name(&node)?,
        };
        let link_to = |dir: BorrowedFd<'_>, to: &OsStr| match &source {
            Target::Fd(fd) => fs::link_fd(fd.as_fd(), dir, to),
            Target::Name(opfd, oname) => fs::linkat(opfd.as_fd(), oname, dir, to),
        };
        let nfd = self.nodes.dir_fd(&parent, UPPER)?;
        let nfd = nfd.as_fd();
        let upper_whiteout = match fs::fstatat(nfd, name) {
            Ok(st) if whiteout::is_whiteout_stat(&st) => true,
            Ok(_) => return Err(Errno::EEXIST),
            Err(Errno::ENOENT) => false,
            Err(e) => return Err(e),
        };
        if upper_whiteout {
            let work = self.layers.work()?;
            let tmp = temp_name();
            let res = link_to(work, &tmp)
                .and_then(|()| fs::renameat2(work, &tmp, nfd, name, fs::RENAME_EXCHANGE));
            let _ = fs::unlinkat(work, &tmp, false);
            res?;
        } else {
            link_to(nfd, name)?;
        }
        let st = fs::fstatat(nfd, name)?;
        self.nodes.add_link(&node, parent.id, name);
        if node.ino() != self.layers.ino.map(st.st_dev, st.st_ino) {
            self.mark_impure(&parent);
        }
        if let Some(m) = parent.merged() {
            m.insert(name, Entry::upper(node.kind, node.ino()));
        }
        Ok((node.clone(), self.attr_of(&node, &st)))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> SysResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent_id: u64, name: &OsStr, want_dir: bool) -> SysResult<()> {
        self.require_upper()?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if whiteout::is_marker_name(name) {
            return Err(Errno::ENOENT);
        }
        let parent = self.node(parent_id)?;
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        // Refuse before anything is copied up, as the kernel does.
        {
            let (child, made) = self.child_node(&parent, name)?.ok_or(Errno::ENOENT)?;
            let res = self
                .check_protection(&parent, Change::RemoveFrom)
                .and_then(|()| self.check_protection(&child, Change::Remove))
                .and_then(|()| self.check_removable(&child, want_dir));
            self.release_temp(&child, made);
            res?;
        }
        self.copy_up(&parent, true)?;
        let _g = parent.dir_lock.lock();
        let (child, made) = self.child_node(&parent, name)?.ok_or(Errno::ENOENT)?;
        let res = self.remove_locked(&parent, name, &child, want_dir);
        self.release_temp(&child, made);
        res
    }

    /// Where a directory's lower parts are, per layer, before it moves.
    fn lower_paths(&self, dir: &Node) -> SysResult<Vec<(super::LayerId, OsString)>> {
        let lowers = dir.state().lowers;
        lowers
            .iter()
            .map(|&l| Ok((l, self.nodes.layer_path(dir, l)?)))
            .collect()
    }

    /// Records on the directory `name` in the upper copy of its old parent `from` (moving to
    /// `to`) where its lower parts are, as the kernel's `ovl_set_redirect` does: a redirect
    /// it already carries stays when it is absolute or the directory keeps its parent;
    /// otherwise the old name, within the same parent, or else the path of its old place
    /// in the merged tree, each ancestor named by the redirect its upper copy carries where
    /// it has one, up to the root or to the first absolute one. Lookup walks that path down
    /// the lower layers, whose own redirects and opaque directories on the way then apply.
    /// (A path read off the highest lower layer instead, as before, named a place another
    /// lower layer hides: the kernel found nothing there, and neither did we after a
    /// remount.)
    fn write_redirect(
        &self,
        from: &Node,
        to: &Node,
        fromfd: BorrowedFd<'_>,
        name: &OsStr,
    ) -> SysResult<()> {
        use std::os::unix::ffi::OsStrExt;
        let same_dir = from.id == to.id;
        let v = match self.upper_redirect(fromfd, name) {
            Some(r) if same_dir || r.first() == Some(&b'/') => return Ok(()),
            _ if same_dir => name.as_bytes().to_vec(),
            own => {
                // Components from the directory up, each an ancestor's name or redirect.
                let mut parts: Vec<Vec<u8>> = Vec::new();
                let mut next = own.unwrap_or_else(|| name.as_bytes().to_vec());
                let mut at = self.node(from.id)?;
                loop {
                    let absolute = next.first() == Some(&b'/');
                    parts.push(next);
                    if absolute || at.id == ROOT_ID {
                        break;
                    }
                    let (pfd, pname) = self.parent_fd(&at, UPPER)?;
                    next = self
                        .upper_redirect(pfd.as_fd(), &pname)
                        .unwrap_or_else(|| pname.as_bytes().to_vec());
                    at = self.node(at.parent())?;
                }
                let mut v = Vec::new();
                for p in parts.iter().rev() {
                    if p.first() != Some(&b'/') {
                        v.push(b'/');
                    }
                    v.extend_from_slice(p);
                }
                v
            }
        };
        let prefix = self.layers.xattr_prefix;
        crate::sys::xattr::set(fromfd, name, &format!("{prefix}redirect"), &v, 0).map_err(|e| {
            // As the kernel's ovl_set_redirect: a redirect the upper filesystem will not
            // hold (a path longer than its room for an xattr value: ENOSPC on ext4, E2BIG
            // elsewhere) fails the rename with EXDEV, so that mv copies instead of giving
            // up with a misleading "no space left".
            log::warn!(
                "cannot record where moved directory {name:?} came from ({} bytes): {e:?}; \
                 the rename fails with EXDEV",
                v.len()
            );
            Errno::EXDEV
        })
    }

    /// The redirect recorded on the upper directory `name` in `dir`, as written; none on
    /// an opaque one (the kernel's lookup reads no redirect there, so keeps none in memory).
    fn upper_redirect(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let xa = whiteout::OverlayXattrs::of(dir, name);
        if xa.opaque_dir(dir, name) {
            return None;
        }
        Some(match self.redirect_of(dir, name, xa).ok()?? {
            super::namei::Redirect::Abs(p) => [b"/", p.as_bytes()].concat(),
            super::namei::Redirect::Rel(n) => n.as_bytes().to_vec(),
        })
    }

    /// [`Overlay::check_protection`] of a new entry `name` in `parent`, after the VFS's own
    /// first check: a name already there is EEXIST.
    fn check_protection_to_create(&self, parent: &Arc<Node>, name: &OsStr) -> SysResult<()> {
        let res = self.check_protection(parent, Change::CreateIn);
        if res.is_err() && self.find_child(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        res
    }

    fn check_removable(&self, child: &Arc<Node>, want_dir: bool) -> SysResult<()> {
        let res = self.check_removable_kind(child, want_dir);
        // The VFS refuses to remove an immutable or append-only object, or anything from
        // an append-only or immutable directory, before it looks at the type or contents.
        // On success the upper filesystem enforces the flags itself, so only a refusal
        // needs a look at them.
        if res.is_err() {
            let parent = self.node(child.parent());
            if self.is_immutable_or_append(child)
                || parent.is_ok_and(|p| self.is_immutable_or_append(&p))
            {
                return Err(Errno::EPERM);
            }
        }
        res
    }

    fn check_removable_kind(&self, child: &Arc<Node>, want_dir: bool) -> SysResult<()> {
        if want_dir && !child.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if !want_dir && child.is_dir() {
            return Err(Errno::EISDIR);
        }
        if child.is_dir() && !self.merged_dir(child)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        Ok(())
    }

    fn remove_locked(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        child: &Arc<Node>,
        want_dir: bool,
    ) -> SysResult<()> {
        self.check_removable(child, want_dir)?;
        let cst = child.state();
        let needs_whiteout =
            (!cst.lowers.is_empty() && !cst.upper) || self.lower_positive(parent, name)?;
        let upfd = self.nodes.dir_fd(parent, UPPER)?;
        let upfd = upfd.as_fd();
        let top = cst.top().ok_or(Errno::ESTALE)?;
        self.keep_detached(child, top);
        let may_turn_pure = cst.upper && self.may_turn_pure(parent, upfd, name);
        let renaming = self.nodes.renaming([Some(child), None]);
        let mut replaced = None;
        if cst.upper {
            if needs_whiteout {
                replaced = Some(self.replace_with_whiteout(upfd, name)?);
            } else {
                match fs::unlinkat(upfd, name, child.is_dir()) {
                    // An upper directory that still holds stale whiteouts of nothing.
                    Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) if child.is_dir() => {
                        remove_tree(upfd, name)?
                    }
                    other => other?,
                }
            }
        } else {
            self.new_whiteout(upfd, name)?;
        }
        self.nodes.unlink_name(child, parent.id, name);
        drop(renaming);
        self.lost_a_name(child);
        if child.is_dir() {
            self.nodes.drop_dirfds(child);
            child.set_merged(None);
        }
        if let Some(m) = parent.merged() {
            m.remove(name);
        }
        if may_turn_pure {
            parent.set_merged(None);
        }
        if let Some(tmp) = replaced {
            // Out of the view already. A directory (of whiteouts) goes after the reply (see
            // `reaper`); a file at once, as its removal shows: in the link count of its
            // other names, and in the space it frees.
            let work = self.layers.work()?;
            if child.is_dir() {
                self.reaper.remove(work, tmp);
            } else {
                super::reaper::clear(work, &tmp);
            }
        }
        Ok(())
    }

    /// A directory in the workdir standing in for the upper directory `dir` (stat `st`)
    /// while an object is built to replace a whiteout in it: it carries `dir`'s default
    /// ACL, group and set-group-ID bit, so that the upper filesystem gives the new object
    /// the mode and ACLs it would get in `dir` itself, as the kernel overlay gives them.
    /// `None` where `dir` has no default ACL (the workdir serves).
    fn stand_in_parent(
        &self,
        dir: BorrowedFd<'_>,
        st: &fs::Stat,
    ) -> SysResult<Option<(OsString, OwnedFd)>> {
        if self.cfg.noacl {
            return Ok(None);
        }
        let Ok(acl) = crate::sys::xattr::get_on_dir(dir, "system.posix_acl_default") else {
            return Ok(None);
        };
        let work = self.layers.work()?;
        let name = temp_name();
        fs::mkdirat(work, &name, 0o700)?;
        let made = fs::openat(work, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0).and_then(|fd| {
            if st.st_mode & libc::S_ISGID != 0 {
                // Best effort: a daemon outside the group cannot; then the new object's
                // group is set by the chown that follows its making.
                if fs::fchown(fd.as_fd(), u32::MAX, st.st_gid).is_ok() {
                    fs::chmod_fd(fd.as_fd(), 0o2700)?;
                }
            }
            crate::sys::xattr::set_on_dir(fd.as_fd(), "system.posix_acl_default", &acl)?;
            Ok(fd)
        });
        match made {
            Ok(fd) => Ok(Some((name, fd))),
            Err(e) => {
                let _ = fs::unlinkat(work, &name, true);
                Err(e)
            }
        }
    }

    /// After a regular file lost a name: with the writeback cache, the kernel keeps its
    /// attributes through the unlink, its own link count dropped by one, where ours may
    /// differ (a lower file keeps the lower link count, as on the kernel overlay); so they
    /// are marked stale, as the kernel itself does without that cache.
    fn lost_a_name(&self, node: &Node) {
        if node.kind == libc::S_IFREG && self.writes_cached() {
            self.notify_attr_changed(node.id);
        }
    }

    /// Before an object loses a name, keeps an `O_PATH` fd to it: attribute calls must
    /// keep working while the kernel still holds it (open files and directories, and
    /// special files, which FUSE opens without telling us).
    fn keep_detached(&self, node: &Node, layer: super::LayerId) {
        if let Ok((pfd, n)) = self.parent_fd(node, layer) {
            if layer != UPPER {
                node.set_detached_lower(pfd, n);
            } else if let Ok(fd) = fs::openat(pfd.as_fd(), &n, libc::O_PATH, 0) {
                node.set_detached(Arc::new(fd));
            }
        }
    }

    /// Creates a whiteout `name` in the upper directory `dir` where nothing is: a link of
    /// the shared 0/0 device (linkat never replaces, so this is atomic), or an OCI marker
    /// where the upper filesystem refuses devices.
    fn new_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        let work = self.layers.work()?;
        match self.layers.whiteout_format {
            whiteout::Format::Device => whiteout::link_whiteout(work, dir, name),
            whiteout::Format::Oci => whiteout::make_oci_marker(dir, name),
            whiteout::Format::Xattr => {
                let tmp = temp_name();
                whiteout::make_xattr_whiteout(work, &tmp, self.layers.xattr_prefix)?;
                let res = whiteout::mark_xwhiteouts(dir, self.layers.xattr_prefix)
                    .and_then(|()| fs::renameat2(work, &tmp, dir, name, fs::RENAME_NOREPLACE));
                if res.is_err() {
                    let _ = fs::unlinkat(work, &tmp, false);
                }
                res
            }
        }
    }

    /// An empty opaque directory in the work directory with the mode, owner, times and
    /// xattrs of the upper directory `name` in `dir`, to be exchanged with it, as the
    /// kernel's `ovl_clear_empty` makes one: until the rename that follows the exchange,
    /// and after a crash between the two, the view shows that directory as it was.
    fn stand_in_for(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<OsString> {
        let work = self.layers.work()?;
        let st = fs::fstatat(dir, name)?;
        let tmp = temp_name();
        fs::mkdirat(work, &tmp, 0o700)?;
        let prefix = self.layers.xattr_prefix;
        let dress = || {
            copy_xattrs(dir, name, work, &tmp, prefix)?;
            whiteout::set_opaque(work, &tmp, prefix, self.layers.upper_xattrs)?;
            // A daemon that may not give it the owner (a plain user's; root of a user
            // namespace, for an id outside its map: EINVAL) leaves its own: the stand-in
            // shows only until the rename.
            match fs::fchownat(work, &tmp, Some(st.st_uid), Some(st.st_gid)) {
                Ok(()) | Err(Errno::EPERM) | Err(Errno::EINVAL) => {}
                Err(e) => return Err(e),
            }
            fs::fchmodat(work, &tmp, st.st_mode & 0o7777)?;
            let (at, mt) = fs::stat_times(&st);
            fs::utimensat(work, &tmp, Some(at), Some(mt))
        };
        if let Err(e) = dress() {
            let _ = fs::unlinkat(work, &tmp, true);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Moves the upper entry `oname` of `odir` to the free name `nname` of `ndir` and leaves
    /// a whiteout at `oname`, as RENAME_WHITEOUT does, where the upper filesystem lacks it:
    /// a whiteout is put at the new name (where it hides nothing) and exchanged with the
    /// entry. OCI markers need no exchange: the marker at the old name goes first, and the
    /// upper entry shadows it until the rename. Returns false, having changed nothing,
    /// where the filesystem cannot exchange either.
    fn rename_leaving_whiteout(
        &self,
        odir: BorrowedFd<'_>,
        oname: &OsStr,
        ndir: BorrowedFd<'_>,
        nname: &OsStr,
    ) -> SysResult<bool> {
        if self.layers.whiteout_format == whiteout::Format::Oci {
            whiteout::make_oci_marker(odir, oname)?;
            let res = fs::renameat2(odir, oname, ndir, nname, 0);
            if res.is_err() {
                let _ = fs::unlinkat(odir, &whiteout::oci_marker_for(oname), false);
            }
            return res.map(|()| true);
        }
        if self.layers.whiteout_format == whiteout::Format::Xattr {
            // The whiteout ends up in the old directory, which must say it holds such.
            whiteout::mark_xwhiteouts(odir, self.layers.xattr_prefix)?;
        }
        self.new_whiteout(ndir, nname)?;
        match fs::renameat2(odir, oname, ndir, nname, fs::RENAME_EXCHANGE) {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = fs::unlinkat(ndir, nname, false);
                match e {
                    Errno::EINVAL | Errno::EOPNOTSUPP => Ok(false),
                    e => Err(e),
                }
            }
        }
    }

    /// Atomically replaces the upper entry `name` in `dir` by a whiteout. Returns the name
    /// the old entry (a directory holding only whiteouts, maybe many) now has in the work
    /// directory, for the caller to dispose of once the rename is over.
    fn replace_with_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<OsString> {
        let work = self.layers.work()?;
        let tmp = temp_name();
        match self.layers.whiteout_format {
            whiteout::Format::Device => whiteout::link_whiteout(work, work, &tmp)?,
            whiteout::Format::Xattr => {
                whiteout::make_xattr_whiteout(work, &tmp, self.layers.xattr_prefix)?;
                whiteout::mark_xwhiteouts(dir, self.layers.xattr_prefix)?;
            }
            whiteout::Format::Oci => {
                // The marker first: until the entry moves away it still shadows the lower
                // one, so nothing below shows through at any moment.
                whiteout::make_oci_marker(dir, name)?;
                fs::renameat2(dir, name, work, &tmp, 0)?;
                return Ok(tmp);
            }
        }
        if let Err(e) = fs::renameat2(work, &tmp, dir, name, fs::RENAME_EXCHANGE) {
            let _ = fs::unlinkat(work, &tmp, false);
            return Err(e);
        }
        Ok(tmp)
    }

    /// rename(2) and renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE.
    pub fn rename(
        &self,
        op_id: u64,
        oname: &OsStr,
        np_id: u64,
        nname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        self.require_upper()?;
        let exchange = flags & fs::RENAME_EXCHANGE != 0;
        let noreplace = flags & fs::RENAME_NOREPLACE != 0;
        // RENAME_WHITEOUT: the kernel overlay refuses it (EINVAL), but only once the VFS's
        // own checks of the names have passed (`rename_locked`).
        let whiteout = flags & fs::RENAME_WHITEOUT != 0;
        let known = fs::RENAME_EXCHANGE | fs::RENAME_NOREPLACE | fs::RENAME_WHITEOUT;
        if flags & !known != 0 || (exchange && (noreplace || whiteout)) {
            return Err(Errno::EINVAL);
        }
        if oname.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        self.check_create_name(nname)?;
        if whiteout::is_marker_name(oname) {
            return Err(Errno::ENOENT);
        }
        let op = self.node(op_id)?;
        let np = self.node(np_id)?;
        if !op.is_dir() || !np.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if self.find_child(&op, oname)?.is_none() {
            return Err(Errno::ENOENT);
        }
        let _guards = lock_pair(self, &op, &np);
        let (src, src_made) = self.child_node(&op, oname)?.ok_or(Errno::ENOENT)?;
        let dst = match self.child_node(&np, nname) {
            Ok(d) => d,
            Err(e) => {
                self.release_temp(&src, src_made);
                return Err(e);
            }
        };
        let res = self.rename_locked(
            &op,
            oname,
            &np,
            nname,
            &src,
            dst.as_ref().map(|d| &d.0),
            exchange,
            noreplace,
            whiteout,
        );
        self.release_temp(&src, src_made);
        if let Some((d, made)) = dst {
            self.release_temp(&d, made);
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_locked(
        &self,
        op: &Arc<Node>,
        oname: &OsStr,
        np: &Arc<Node>,
        nname: &OsStr,
        src: &Arc<Node>,
        dst: Option<&Arc<Node>>,
        exchange: bool,
        noreplace: bool,
        whiteout: bool,
    ) -> SysResult<()> {
        if noreplace && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if let Some(d) = dst {
            if d.id == src.id {
                return Ok(());
            }
            if d.id == op.id || d.id == np.id {
                return Err(Errno::ENOTEMPTY);
            }
        }
        if src.is_dir() && self.is_ancestor(src.id, np) {
            return Err(Errno::EINVAL);
        }
        if exchange {
            if let Some(d) = dst {
                if d.is_dir() && self.is_ancestor(d.id, op) {
                    return Err(Errno::EINVAL);
                }
            }
        }
        // Then the VFS's checks of the immutable and append-only attributes (may_delete of
        // each name that goes, may_create of one that comes), before it looks at types.
        self.check_protection(op, Change::RemoveFrom)?;
        self.check_protection(src, Change::Remove)?;
        match dst {
            Some(d) => {
                self.check_protection(np, Change::RemoveFrom)?;
                self.check_protection(d, Change::Remove)?;
            }
            None => self.check_protection(np, Change::CreateIn)?,
        }
        // Type mismatches are refused by the VFS before a filesystem sees the rename.
        if !exchange {
            if let Some(d) = dst {
                if src.is_dir() && !d.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if !src.is_dir() && d.is_dir() {
                    return Err(Errno::EISDIR);
                }
            }
        }
        if whiteout {
            return Err(Errno::EINVAL);
        }
        // Without redirects, a directory with lower parts cannot move: the kernel says EXDEV
        // before it looks at the target. With redirect_dir=on it moves (not in an exchange)
        // and records where its lower parts are.
        let src_redirect = src.is_dir() && src.has_lowers();
        let dst_redirect = exchange && dst.is_some_and(|d| d.is_dir() && d.has_lowers());
        if (src_redirect || dst_redirect) && !self.cfg.redirect_dir {
            return Err(Errno::EXDEV);
        }
        // A target with lower parts is checked for emptiness first; an upper-only target is
        // left to the upper filesystem's rename, after the source was made opaque — the
        // kernel's order, which leaves that opaque mark even when the rename fails.
        let mut target_not_empty = false;
        if !exchange {
            if let Some(d) = dst {
                if d.is_dir() && !self.merged_dir(d)?.is_empty() {
                    if d.has_lowers() {
                        return Err(Errno::ENOTEMPTY);
                    }
                    target_not_empty = true;
                }
            }
        }
        // Only now that the rename can go ahead does anything get copied up.
        self.copy_up(op, true)?;
        self.copy_up(np, true)?;
        self.copy_up(src, true)?;
        if exchange {
            if let Some(d) = dst {
                self.copy_up(d, true)?;
            }
        }
        let ofd = self.nodes.dir_fd(op, UPPER)?;
        let nfd = self.nodes.dir_fd(np, UPPER)?;
        let (ofd, nfd) = (ofd.as_fd(), nfd.as_fd());
        let (prefix, xattrs) = (self.layers.xattr_prefix, self.layers.upper_xattrs);
        let np_merged = np.has_lowers();
        let op_merged = op.has_lowers();

        if exchange {
            let d = dst.ok_or(Errno::ENOENT)?;
            // A directory with lower parts records where they are; one without must not
            // merge, in its new place, with a lower directory of its new name.
            let prepare = |n: &Node,
                           redirect: bool,
                           (from, to): (&Node, &Node),
                           fd: BorrowedFd<'_>,
                           name: &OsStr,
                           into_merged: bool| {
                if redirect {
                    self.write_redirect(from, to, fd, name)?;
                    return self.lower_paths(n);
                }
                if n.is_dir() && into_merged && !whiteout::is_opaque_dir(fd, name) {
                    whiteout::set_opaque(fd, name, prefix, xattrs)?;
                }
                Ok(Vec::new())
            };
            let src_paths = prepare(src, src_redirect, (op, np), ofd, oname, np_merged)?;
            let dst_paths = prepare(d, dst_redirect, (np, op), nfd, nname, op_merged)?;
            let _renaming = self.nodes.renaming([Some(src), Some(d)]);
            fs::renameat2(ofd, oname, nfd, nname, fs::RENAME_EXCHANGE)?;
            self.nodes.move_node(src, op.id, oname, np.id, nname);
            self.nodes.move_node(d, np.id, nname, op.id, oname);
            if src_redirect {
                src.state.write().redirects = redirects_from(src_paths);
            }
            if dst_redirect {
                d.state.write().redirects = redirects_from(dst_paths);
            }
            if let Some(m) = op.merged() {
                m.insert(oname, Entry::upper(d.kind, d.ino()));
            }
            if let Some(m) = np.merged() {
                m.insert(nname, Entry::upper(src.kind, src.ino()));
            }
            if op.id != np.id {
                self.mark_impure_if_holds_copy(np, nfd, nname);
                self.mark_impure_if_holds_copy(op, ofd, oname);
                self.moved_to_another_parent(src);
                self.moved_to_another_parent(d);
            }
            return Ok(());
        }

        let old_needs_whiteout = self.lower_positive(op, oname)?;
        let moved_redirects = if src_redirect {
            self.lower_paths(src)?
        } else {
            Vec::new()
        };
        if src_redirect {
            self.write_redirect(op, np, ofd, oname)?;
        } else if src.is_dir() && np_merged && !whiteout::is_opaque_dir(ofd, oname) {
            whiteout::set_opaque(ofd, oname, prefix, xattrs)?;
        }
        if target_not_empty {
            // The kernel marks the new parent impure before the rename that fails, when
            // what moves is a copy from another layer; the mark stays.
            if op.id != np.id {
                self.mark_impure_if_holds_copy(np, ofd, oname);
            }
            return Err(Errno::ENOTEMPTY);
        }
        let op_may_turn_pure = op.id != np.id && self.may_turn_pure(op, ofd, oname);
        let _renaming = self.nodes.renaming([Some(src), dst.map(|d| &**d)]);
        if let Some(d) = dst {
            // Before the swap below: descriptors of the target keep the directory they
            // were opened on (as on the kernel), not the empty stand-in that replaces it.
            if let Some(top) = d.state().top() {
                self.keep_detached(d, top);
            }
            if d.is_dir() && d.is_upper() {
                // The target is empty in the merged view but its upper copy may still hold
                // whiteouts; swap in an empty opaque directory first, atomically.
                if fs::dir_has_entries(nfd, nname)? {
                    let work = self.layers.work()?;
                    let tmp = self.stand_in_for(nfd, nname)?;
                    let res = fs::renameat2(work, &tmp, nfd, nname, fs::RENAME_EXCHANGE);
                    // The old directory of whiteouts, or after a failure the new one.
                    self.reaper.remove(work, tmp);
                    res?;
                }
            }
        }
        // NOREPLACE was checked on the merged view above; the upper may still hold a
        // whiteout at the new name, which the rename replaces.
        let _ = noreplace;
        let rflags = 0;
        let mut whiteout_after = false;
        let target_is_whiteout = dst.is_none()
            && fs::fstatat(nfd, nname)
                .map(|st| whiteout::is_whiteout_stat(&st))
                .unwrap_or(false);
        if target_is_whiteout && (src.is_dir() || old_needs_whiteout) {
            // A directory cannot replace a char device, and a whiteout the old name needs
            // is the one already at the new name, as on the kernel (a new one made in
            // place would take the group of a set-group-ID directory): exchange them, and
            // keep the whiteout at the old name only if that name needs one.
            fs::renameat2(ofd, oname, nfd, nname, fs::RENAME_EXCHANGE)?;
            if !old_needs_whiteout {
                fs::unlinkat(ofd, oname, false)?;
            }
        } else if old_needs_whiteout {
            match fs::renameat2(ofd, oname, nfd, nname, rflags | fs::RENAME_WHITEOUT) {
                Ok(()) => {}
                Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) | Err(Errno::EPERM) => {
                    // An upper filesystem without RENAME_WHITEOUT (an overlay): to a free
                    // name, still one step that a crash cannot split. Over a target the
                    // view shows (or without exchanges either), two steps: for a moment,
                    // or after a crash then, the lower object shows at the old name too.
                    if dst.is_some() || !self.rename_leaving_whiteout(ofd, oname, nfd, nname)? {
                        fs::renameat2(ofd, oname, nfd, nname, rflags)?;
                        whiteout_after = true;
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            fs::renameat2(ofd, oname, nfd, nname, rflags)?;
        }
        if whiteout_after {
            if let Err(e) = self.new_whiteout(ofd, oname) {
                log::error!("rename: could not leave a whiteout at {:?}: {e:?}", oname);
            }
        }
        if let Some(d) = dst {
            self.nodes.unlink_name(d, np.id, nname);
            self.lost_a_name(d);
            if d.is_dir() {
                self.nodes.drop_dirfds(d);
                d.set_merged(None);
            }
        }
        self.nodes.move_node(src, op.id, oname, np.id, nname);
        if !moved_redirects.is_empty() {
            let mut st = src.state.write();
            st.redirects = redirects_from(moved_redirects);
        }
        if !src.is_dir() {
            src.state.write().lowers.clear();
        }
        if op.id != np.id {
            self.mark_impure_if_holds_copy(np, nfd, nname);
            self.moved_to_another_parent(src);
        }
        if let Some(m) = op.merged() {
            m.remove(oname);
        }
        if op_may_turn_pure {
            op.set_merged(None);
        }
        if let Some(m) = np.merged() {
            m.insert(nname, Entry::upper(src.kind, src.ino()));
        }
        Ok(())
    }

    /// A directory moved to another parent lists another `..` now; the kernel's cached
    /// listing of it (kept across the rename, which changes nothing in it) still has the
    /// old one, whose number is not the new parent's.
    fn moved_to_another_parent(&self, node: &Node) {
        if node.is_dir() && node.state.read().listed {
            self.notify_data_changed(node.id);
        }
    }
}

/// The group a new object in directory `dir` gets: the directory's if it is set-group-ID,
/// else its creator's.
fn new_object_gid(dir: &fs::Stat, creator_gid: u32) -> u32 {
    if dir.st_mode & libc::S_ISGID != 0 {
        dir.st_gid
    } else {
        creator_gid
    }
}

/// Gives a new entry its owner where no override xattr can (best effort: an unprivileged
/// daemon keeps it).
fn kept_by_chown(dir: BorrowedFd<'_>, n: &OsStr, uid: u32, gid: u32) -> SysResult<()> {
    match fs::fchownat(dir, n, Some(uid), Some(gid)) {
        Err(Errno::EPERM) | Err(Errno::EINVAL) => Ok(()),
        other => other,
    }
}
