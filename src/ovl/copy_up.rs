//! Copy-up: giving an object that lives only in a lower layer a copy in the upper layer,
//! before its first change.
//!
//! Parents go first (a directory copies without its children). The copy is built in
//! `workdir/work` — data (reflink, else `copy_file_range` around holes, else read/write),
//! xattrs minus overlay-private ones, owner, mode, times — and put into place in one step.
//! A regular file is built as an unnamed O_TMPFILE file and linked into place, as the
//! kernel's copy-up does where the upper filesystem allows: no directory entry is made and
//! removed in the work directory (a chmod of a lower file: 64 instead of 77 us here), and a
//! crash leaves nothing behind. Anything else, and files where the work directory makes no
//! O_TMPFILE files, is built under a temporary name and renamed into place with one
//! `renameat2`. A crash before that rename leaves the old view (the leftover is removed at
//! the next mount); after it, the new one. Callers that are about to throw the data away
//! (truncate to 0, open with O_TRUNC) skip copying it.

use super::layers::{remove_tree, LayerId, UPPER};
use super::namei::{
    origin_record, IMPURE_XATTR, KERNEL_ORIGIN_XATTR, METACOPY_XATTR, ORIGIN_XATTR,
};
use super::node::{Node, MAX_DEPTH, ROOT_ID};
use super::ownership::OverrideStat;
use super::whiteout;
use super::{Errno, Overlay, SysResult};
use crate::sys::fs::{self, Stat};
use crate::sys::xattr;
use log::{debug, warn};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name for something being built in the work directory; unique within this process and
/// across processes (the pid), so two mounts sharing nothing still never collide.
pub fn temp_name() -> OsString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!("#ovlfuse.{}.{n}", std::process::id()))
}

impl Overlay {
    /// Makes sure `node` has an upper copy; `with_data` false copies a file empty.
    ///
    /// The ancestors that lack one are copied first, from the highest down. A loop, not
    /// recursion: a lower tree may be deeper than a serving thread's stack allows (one
    /// frame per level overflowed it at about 4000 levels, and took the daemon down).
    pub fn copy_up(&self, node: &Arc<Node>, with_data: bool) -> SysResult<()> {
        if node.is_upper() {
            return Ok(());
        }
        self.require_upper()?;
        let mut missing = Vec::new();
        let mut cur = node.clone();
        while !cur.is_upper() && cur.id != ROOT_ID {
            if missing.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let parent = self.node(cur.parent())?;
            missing.push(std::mem::replace(&mut cur, parent));
        }
        let Some((first, ancestors)) = missing.split_first() else {
            return Ok(());
        };
        // A removed directory cannot take a copy of anything: its name is a whiteout now,
        // or nothing. The kernel reports ENOENT (a file kept open after its directory was
        // removed, then changed through that descriptor); going on, the whiteout said
        // ENOTDIR. (`cur` is the ancestor that has an upper copy already.)
        if std::iter::once(&cur)
            .chain(ancestors)
            .any(|d| d.unlinked.load(Ordering::Relaxed))
        {
            return Err(Errno::ENOENT);
        }
        for dir in ancestors.iter().rev() {
            self.copy_up_one(dir, true)?;
        }
        self.copy_up_one(first, with_data)
    }

    /// Copies up `node`, whose parent has an upper copy already.
    fn copy_up_one(&self, node: &Arc<Node>, with_data: bool) -> SysResult<()> {
        let parent = self.node(node.parent())?;
        let _guard = node.copy_lock.lock();
        if node.is_upper() {
            return Ok(());
        }
        let lower = node.state().lowers.first().copied().ok_or(Errno::ESTALE)?;
        let (lpfd, name) = self.parent_fd(node, lower)?;
        let upfd = self.nodes.dir_fd(&parent, UPPER)?;
        let lst = fs::fstatat(lpfd.as_fd(), &name)?;
        let work = self.layers.work()?;
        debug!("copy-up {:?} from layer {lower} (data: {with_data})", name);
        // Where the upper layer keeps owners in an xattr, the copy keeps the lower's
        // effective owner and mode there (its own override, else its inode's).
        // A lower layer that keeps owners in an xattr gives the copy that owner and mode.
        let lower_kept = self.read_override(node, lower);
        let mut eff = lst;
        if self.layers.get(lower).idmapped {
            // The idmapped mount shows shown ids; the upper stores disk ids.
            eff.st_uid = self.cfg.own.disk_uid(lst.st_uid);
            eff.st_gid = self.cfg.own.disk_gid(lst.st_gid);
        }
        if let Some(o) = &lower_kept {
            eff.st_uid = o.uid;
            eff.st_gid = o.gid;
            eff.st_mode = fs::ifmt(lst.st_mode) | (o.mode & 0o7777);
        }
        let kept = self.upper_override().map(|_| {
            lower_kept.unwrap_or(OverrideStat {
                uid: eff.st_uid,
                gid: eff.st_gid,
                mode: eff.st_mode,
                rdev: Some(lst.st_rdev),
            })
        });
        // The parent is marked before the copy lands, as on the kernel, so a crash after the
        // rename leaves no copy in an unmarked directory (whose listing would then show the
        // copy's own inode number). A directory's copy-up marks it too; a failed copy-up
        // leaves the mark.
        self.mark_impure(&parent);
        let kind = fs::ifmt(lst.st_mode);
        let made = self.made_as(&eff);
        let attempt = || {
            let draft = self.start_copy(work, kind, lst.st_rdev, lpfd.as_fd(), &name, made)?;
            let res = self
                .build_copy(&draft, (lower, lpfd.as_fd(), &name), &eff, with_data, made)
                .and_then(|built| {
                    // A symlink refusing it keeps its inode's owner.
                    if let Some(o) = &kept {
                        let (dir, n) = draft.at();
                        self.write_override(dir, n, o, kind)?;
                    }
                    draft.put_in_place(upfd.as_fd(), &name)?;
                    Ok(built)
                });
            match res {
                Ok(built) => Ok((draft, built)),
                Err(e) => {
                    draft.discard();
                    Err(e)
                }
            }
        };
        let (placed, (prot, recorded)) = match self.nodes.with_fds(attempt) {
            Ok(done) => done,
            Err(e) => {
                warn!("copy-up of {:?} failed: {e:?}", name);
                // Something (a whiteout, once the object was removed while open) holds the name:
                // the kernel links a regular file's copy there (EEXIST). Anything else it renames
                // over the name, which fails as rename(2) does: a directory over a non-directory
                // with ENOTDIR, over a directory with entries with ENOTEMPTY; a non-directory
                // over a directory with EISDIR. Where that rename would succeed, we refuse with
                // EEXIST or ENOTDIR (README).
                if e == Errno::EEXIST && node.kind != libc::S_IFREG {
                    let holder_is_dir =
                        fs::fstatat(upfd.as_fd(), &name).is_ok_and(|st| fs::is_dir(&st));
                    return Err(match (node.is_dir(), holder_is_dir) {
                        (true, true) if fs::dir_has_entries(upfd.as_fd(), &name) == Ok(true) => {
                            Errno::ENOTEMPTY
                        }
                        (true, _) => Errno::ENOTDIR,
                        (false, true) => Errno::EISDIR,
                        (false, false) => e,
                    });
                }
                return Err(e);
            }
        };
        // Directories keep no upper key (see `NodeInit::upper_key`): no stat for them.
        let mut renumbered = false;
        if !node.is_dir() {
            if let Ok(st) = placed.stat(upfd.as_fd(), &name) {
                node.set_upper_key(Some((st.st_dev, st.st_ino)));
                // See `record_origin`: a lower hard link's copy keeps no origin.
                if lst.st_nlink > 1 {
                    node.set_ino(self.layers.ino.map(st.st_dev, st.st_ino));
                    renumbered = true;
                }
            }
            if !recorded && !renumbered {
                // It shows the lower object's number while the kernel holds it, as on the
                // kernel overlay; once forgotten, its upper copy's (see `forget`).
                node.set_number_in_memory();
            }
        }
        {
            let mut st = node.state.write();
            st.upper = true;
            // Its protection attributes are now those the copy's protattr records.
            st.prot = super::inode::prot_known(prot);
            // A metadata-only copy fails above (`copy_xattrs`): the copy holds the data.
            st.whole = true;
        }
        if let Some(m) = parent.merged() {
            m.copied_up(&name, node.ino());
        }
        if renumbered && parent.state.read().listed {
            // The kernel's cached listing of the parent holds the old number.
            self.notify_data_changed(parent.id);
        }
        // The kernel's cached attributes came from the lower copy: a directory that becomes
        // merged reports nlink 1 from now on, a lower hard link's copy has nlink 1.
        self.notify_attr_changed(node.id);
        if node.kind == libc::S_IFREG && super::file::has_open_files(node) {
            // Files open since before the copy-up read pages cached from the lower copy
            // (handed over at their open, for a small file), which never reach us; the
            // kernel overlay's reads through them go to the copy from now on, and move its
            // atime. Drop those pages, once a hand-over under way has landed.
            drop(node.dir_lock.lock());
            self.notify_data_changed(node.id);
        }
        Ok(())
    }

    /// How much of the owner and mode of a copy with metadata `st` the making of it gives:
    /// the owner where the daemon's new objects come out with it ([`Made`]); the mode too
    /// where, moreover, they take modes unchanged, the mode has no set-ID or sticky bit (a
    /// chown clears set-ID bits: those stay with the chmod after it), and the owner may
    /// still write the copy's data and xattrs (a daemon without root's powers needs the
    /// owner's bits for that).
    ///
    /// [`Made`]: super::layers::Made
    fn made_as(&self, st: &Stat) -> MadeAs {
        let kind = fs::ifmt(st.st_mode);
        let Some(made) = self.layers.made else {
            return MadeAs::default();
        };
        if (made.uid, made.gid) != (st.st_uid, st.st_gid) {
            return MadeAs::default();
        }
        let perm = self.real_perm(st.st_mode & 0o7777, kind);
        let owner_bits = if kind == libc::S_IFDIR { 0o700 } else { 0o600 };
        let mode = (made.exact_mode
            && kind != libc::S_IFLNK
            && perm & 0o7000 == 0
            && (perm & owner_bits == owner_bits || crate::sys::is_host_root()))
        .then_some(perm);
        MadeAs { owner: true, mode }
    }

    /// Makes the object the copy of a lower `kind` object is built on: for a regular file,
    /// an unnamed one (O_TMPFILE) while the work directory's filesystem makes them, as the
    /// kernel's copy-up does; else the object under a temporary name in the work directory
    /// (made only then: the unnamed file needs none). It gets the mode `made` says it can
    /// have from the start, else one only the daemon may use.
    fn start_copy<'a>(
        &self,
        work: BorrowedFd<'a>,
        kind: u32,
        rdev: u64,
        lpfd: BorrowedFd<'_>,
        name: &OsStr,
        made: MadeAs,
    ) -> SysResult<Draft<'a>> {
        let perm = |private: u32| made.mode.unwrap_or(private);
        if kind == libc::S_IFREG && self.layers.work_makes_tmpfiles() {
            let flags = libc::O_TMPFILE | libc::O_WRONLY;
            match fs::openat(work, OsStr::new("."), flags, perm(0o600)) {
                Ok(fd) => return Ok(Draft::Unnamed(fd)),
                // EOPNOTSUPP from filesystems without it; EISDIR or EINVAL from kernels
                // or filesystems that do not know the flag.
                Err(e) if [Errno::EOPNOTSUPP, Errno::EISDIR, Errno::EINVAL].contains(&e) => {
                    self.layers.work_lacks_tmpfiles(e)
                }
                Err(e) => return Err(e),
            }
        }
        let tmp = temp_name();
        match kind {
            libc::S_IFDIR => fs::mkdirat(work, &tmp, perm(0o700))?,
            libc::S_IFREG => drop(fs::openat(
                work,
                &tmp,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                perm(0o600),
            )?),
            libc::S_IFLNK => {
                let target = fs::readlinkat(lpfd, name)?;
                fs::symlinkat(&target, work, &tmp)?;
            }
            _ => fs::mknodat(work, &tmp, kind | perm(0o600), rdev)?,
        }
        Ok(Draft::Named(work, tmp))
    }

    /// Gives `draft`, the copy of lower entry `name` (in `lpfd`, in layer `lower`), its data
    /// (`with_data`) and the lower object's metadata `st`, but for what its making gave it
    /// (`made`). Returns the immutable and append-only attributes the copy's protattr
    /// records, and whether the copy records the lower object's number (`record_origin`).
    fn build_copy(
        &self,
        draft: &Draft<'_>,
        (lower, lpfd, name): (LayerId, BorrowedFd<'_>, &OsStr),
        st: &Stat,
        with_data: bool,
        made: MadeAs,
    ) -> SysResult<(u32, bool)> {
        let kind = fs::ifmt(st.st_mode);
        // Only copied data needs syncing before the copy goes into place (as in the
        // kernel's ovl_copy_up_file): an empty copy is whole as soon as it exists, and
        // O_TRUNC, truncate(0) and empty files then cost no journal commit.
        if kind == libc::S_IFREG && with_data && st.st_size > 0 {
            let src = fs::openat_noatime(lpfd, name, libc::O_RDONLY)?;
            draft.with_open(libc::O_WRONLY, |dst| {
                // Every 8th chunk (64 MiB) looks at the caller whatever INTERRUPTs said.
                let killed = |chunk: u64| self.interrupts.caller_killed(chunk % 8 == 7);
                copy_data(src.as_fd(), dst, st.st_size as u64, self.cfg.fsync, &killed)?;
                if self.cfg.fsync {
                    fs::fsync(dst, false)?;
                }
                Ok(())
            })?;
        }
        // Owner first: chown(2) strips security.capability and set-id bits, so xattrs and
        // the mode go on after it.
        let chown = || {
            if made.owner {
                Ok(())
            } else {
                draft.chown(st.st_uid, st.st_gid)
            }
        };
        match chown() {
            // An unprivileged mount cannot give a copy away, and root of a user namespace
            // cannot give it to an id outside its map (EINVAL); it stays the mounter's, as
            // with fuse-overlayfs.
            Err(Errno::EPERM) | Err(Errno::EINVAL)
                if self.upper_override().is_some() || !crate::sys::is_host_root() =>
            {
                debug!("copy-up of {:?}: owner not kept in the inode", name)
            }
            other => other?,
        }
        let (dir, at) = draft.at();
        copy_xattrs(lpfd, name, dir, at, self.layers.xattr_prefix)?;
        if kind != libc::S_IFLNK && made.mode.is_none() {
            draft.chmod(self.real_perm(st.st_mode & 0o7777, kind))?;
        }

        let recorded = self.record_origin((dir, at), (lower, lpfd, name), st)?;
        let prot = if kind == libc::S_IFREG || kind == libc::S_IFDIR {
            self.copy_inode_flags(lpfd, name, draft, kind)
        } else {
            0
        };
        let (at, mt) = fs::stat_times(st);
        draft.utimens(at, mt).map(|()| (prot, recorded))
    }

    /// The lower object's inode attributes that its copy keeps, as the kernel's copy-up
    /// keeps them: sync and no-atime on the copy itself; immutable and append-only in
    /// `<prefix>protattr` (see [`Overlay::check_protection`]), because a copy carrying them
    /// could not be renamed into place, nor take its children's copies. Best effort, as in
    /// the kernel: a filesystem without them loses nothing else. Returns the protection
    /// attributes the protattr now records.
    fn copy_inode_flags(
        &self,
        lpfd: BorrowedFd<'_>,
        name: &OsStr,
        draft: &Draft<'_>,
        kind: u32,
    ) -> u32 {
        let is_dir = kind == libc::S_IFDIR;
        let lower = fs::inode_flags_at(lpfd, name, is_dir).unwrap_or(0);
        let mut prot = lower & (fs::FS_IMMUTABLE_FL | fs::FS_APPEND_FL);
        if prot != 0 {
            let (dir, at) = draft.at();
            if let Err(e) = self.set_protattr(dir, at, prot) {
                debug!("copy-up of {name:?}: protection attributes not kept: {e:?}");
                prot = 0;
            }
        }
        let kept = lower & (fs::FS_SYNC_FL | fs::FS_NOATIME_FL);
        if kept != 0 {
            let dir = if is_dir { libc::O_DIRECTORY } else { 0 };
            let res = draft.with_open(libc::O_RDONLY | libc::O_NONBLOCK | dir, |fd| {
                let now = fs::get_inode_flags(fd)?;
                fs::set_inode_flags(fd, (now & !(fs::FS_SYNC_FL | fs::FS_NOATIME_FL)) | kept)
            });
            if let Err(e) = res {
                debug!("copy-up of {name:?}: sync/noatime attributes not kept: {e:?}");
            }
        }
        prot
    }

    /// Records on the copy `at` in `dir` where it came from (lower object `name` in `lpfd`,
    /// in layer `lower`), for its inode number: the kernel's own origin record, as its
    /// copy-up (index=off) writes it, on a directory and on anything else with one link; a
    /// kernel overlay mounting the upper then shows the lower object's number, as ovlfuse
    /// does. (A kernel overlay that finds a merged upper directory without
    /// one writes it at its first lookup, and that lookup fails if the directory's
    /// xattrs have filled their space meanwhile: ENOSPC, the directory is gone from its
    /// view.) Where that record holds no file handle (a daemon that may not open them,
    /// a layer that gives none), a non-directory gets our own record instead, which
    /// needs none. Not both: on ext4 with 256-byte inodes the two overflow the inode's
    /// room for xattrs, and each copy would take a 4 KiB block more. A copy of a lower
    /// hard link is another file than the link's other names: it gets neither, and
    /// shows its own number (as on the kernel overlay without `index`), where two files
    /// sharing one would look like links to tar or rsync -H.
    ///
    /// Returns whether the copy shows the lower object's number after it is forgotten:
    /// false where no record could be written (user.* xattrs on a symlink or FIFO, an
    /// upper filesystem without xattrs).
    fn record_origin(
        &self,
        (dir, at): (BorrowedFd<'_>, &OsStr),
        (lower, lpfd, name): (LayerId, BorrowedFd<'_>, &OsStr),
        st: &Stat,
    ) -> SysResult<bool> {
        let kind = fs::ifmt(st.st_mode);
        if kind != libc::S_IFDIR && st.st_nlink != 1 {
            return Ok(true);
        }
        let record = if self.layers.upper_xattrs {
            self.kernel_origin(lower, lpfd, name)
        } else {
            Vec::new()
        };
        if kind == libc::S_IFDIR || !record.is_empty() {
            let attr = format!("{}{}", self.layers.xattr_prefix, KERNEL_ORIGIN_XATTR);
            match xattr::set(dir, at, &attr, &record, 0) {
                // user.* xattrs are for regular files and directories only; the
                // kernel goes on without the record there too.
                Err(e)
                    if e == Errno::EOPNOTSUPP
                        || (e == Errno::EPERM
                            && kind != libc::S_IFREG
                            && kind != libc::S_IFDIR) =>
                {
                    debug!("cannot record origin of {:?}: {e:?}", name);
                    return Ok(false);
                }
                other => other?,
            }
        } else {
            let attr = format!("{}{}", self.layers.xattr_prefix, ORIGIN_XATTR);
            let val = format!("{}:{}", st.st_dev, st.st_ino);
            if let Err(e) = xattr::set(dir, at, &attr, val.as_bytes(), 0) {
                // Only st_ino stability after remount depends on it.
                debug!("cannot record origin of {:?}: {e:?}", name);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The origin record the kernel's copy-up writes for lower object `name` in `dir`, in
    /// layer `lower` (see `namei::origin_record`). Empty where the layer cannot give file
    /// handles, and where the daemon could not open them (no CAP_DAC_READ_SEARCH: rootless),
    /// as the kernel writes it then.
    fn kernel_origin(&self, lower: LayerId, dir: BorrowedFd<'_>, name: &OsStr) -> Vec<u8> {
        if !crate::sys::can_open_file_handles() {
            return Vec::new();
        }
        let Ok((kind, handle)) = fs::name_to_handle(dir, name) else {
            return Vec::new();
        };
        let dev = self.layers.get(lower).dev;
        let Some(layer) = self.layers.lower_filesystems().find(|l| l.dev == dev) else {
            return Vec::new();
        };
        origin_record(layer.handle_fs().uuid, kind, &handle).unwrap_or_default()
    }

    /// Marks an upper directory as holding copied-up entries, so readdir knows to look up
    /// their origin inode numbers (the kernel's `impure` xattr).
    pub fn mark_impure(&self, dir: &Node) {
        if dir.state.read().impure {
            return;
        }
        let attr = format!("{}{}", self.layers.xattr_prefix, IMPURE_XATTR);
        let ok = match self.nodes.dir_fd(dir, UPPER) {
            Ok(fd) => xattr::set_on_dir(fd.as_fd(), &attr, b"y").is_ok(),
            Err(_) => false,
        };
        if ok {
            dir.state.write().impure = true;
        }
    }

    /// Marks `dir` impure if its entry `name` (in `fd`, its upper directory) came from
    /// another layer: the kernel marks the new parent when a copy or a redirected
    /// directory moves to another directory.
    pub fn mark_impure_if_holds_copy(&self, dir: &Node, fd: BorrowedFd<'_>, name: &OsStr) {
        if whiteout::OverlayXattrs::of(fd, name).came_from_elsewhere() {
            self.mark_impure(dir);
        }
    }

    /// Whether removing `name` (from elsewhere) from upper-only directory `dir` (its upper
    /// copy open as `fd`) may leave it pure. The caller then drops the directory's listing:
    /// the next one is built afresh and drops the mark, as the kernel re-reads an impure
    /// directory after each change to it.
    pub fn may_turn_pure(&self, dir: &Node, fd: BorrowedFd<'_>, name: &OsStr) -> bool {
        let candidate = {
            let st = dir.state.read();
            st.impure && st.upper && st.lowers.is_empty()
        };
        candidate && whiteout::OverlayXattrs::of(fd, name).came_from_elsewhere()
    }

    /// Removes the mark from upper directory `dir` (open as `fd`) once its listing found no
    /// entry from another layer. Best effort, as on the kernel: a mark left costs only
    /// origin lookups.
    pub fn drop_impure(&self, dir: &Node, fd: BorrowedFd<'_>) {
        let attr = format!("{}{}", self.layers.xattr_prefix, IMPURE_XATTR);
        match xattr::remove_on_dir(fd, &attr) {
            Ok(()) => {}
            Err(e) if e == Errno::ENODATA => {}
            Err(e) => {
                debug!("cannot drop the impure mark of directory {}: {e:?}", dir.id);
                return;
            }
        }
        dir.state.write().impure = false;
    }
}

/// What making a copy's object already gave it (see `Overlay::made_as`).
#[derive(Clone, Copy, Default)]
struct MadeAs {
    /// Its owner: no chown.
    owner: bool,
    /// Its mode, made with it: no chmod.
    mode: Option<u32>,
}

/// The copy being built in the work directory: an object under a temporary name there, or
/// a regular file made with O_TMPFILE, which no name leads to until it is linked into place
/// (nothing is left behind if the daemon dies first).
enum Draft<'a> {
    Named(BorrowedFd<'a>, OsString),
    Unnamed(OwnedFd),
}

impl Draft<'_> {
    /// The (directory fd, name) that reach the copy in the calls taking both; an unnamed
    /// file is the fd's own object (an empty name).
    fn at(&self) -> (BorrowedFd<'_>, &OsStr) {
        match self {
            Draft::Named(dir, name) => (*dir, name),
            Draft::Unnamed(fd) => (fd.as_fd(), OsStr::new("")),
        }
    }

    /// Runs `f` with the copy open (`flags`: an access mode and open flags).
    fn with_open<T>(
        &self,
        flags: i32,
        f: impl FnOnce(BorrowedFd<'_>) -> SysResult<T>,
    ) -> SysResult<T> {
        match self {
            Draft::Named(dir, name) => f(fs::openat(*dir, name, flags, 0)?.as_fd()),
            Draft::Unnamed(fd) => f(fd.as_fd()),
        }
    }

    fn chown(&self, uid: u32, gid: u32) -> SysResult<()> {
        match self {
            Draft::Named(dir, name) => fs::fchownat(*dir, name, Some(uid), Some(gid)),
            Draft::Unnamed(fd) => fs::fchown(fd.as_fd(), uid, gid),
        }
    }

    fn chmod(&self, mode: u32) -> SysResult<()> {
        match self {
            Draft::Named(dir, name) => fs::fchmodat(*dir, name, mode),
            Draft::Unnamed(fd) => fs::chmod_fd(fd.as_fd(), mode),
        }
    }

    fn utimens(&self, atime: libc::timespec, mtime: libc::timespec) -> SysResult<()> {
        match self {
            Draft::Named(dir, name) => fs::utimensat(*dir, name, Some(atime), Some(mtime)),
            Draft::Unnamed(fd) => fs::utimens_fd(fd.as_fd(), Some(atime), Some(mtime)),
        }
    }

    /// Gives the copy the name `name` in upper directory `dir`, failing with EEXIST if
    /// something holds it: one rename, or one link of the unnamed file. Either is atomic.
    fn put_in_place(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        match self {
            Draft::Named(work, tmp) => fs::renameat2(*work, tmp, dir, name, fs::RENAME_NOREPLACE),
            Draft::Unnamed(fd) => fs::link_fd(fd.as_fd(), dir, name),
        }
    }

    /// The copy's attributes once in place as `name` in `dir`.
    fn stat(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Stat> {
        match self {
            Draft::Named(..) => fs::fstatat(dir, name),
            Draft::Unnamed(fd) => fs::fstat(fd.as_fd()),
        }
    }

    /// Removes a copy that failed (an unnamed one goes with its fd).
    fn discard(&self) {
        if let Draft::Named(work, tmp) = self {
            let _ = remove_tree(*work, tmp);
        }
    }
}

/// Copies `len` bytes of file data, keeping holes: reflink when the filesystem shares
/// blocks, else `copy_file_range` over each data extent, else plain read/write.
///
/// With `sync_after`, the caller fsyncs the copy before renaming it into place; the copy
/// then goes in chunks and starts each chunk's writeback as soon as it is in the page
/// cache, so the disk writes overlap the copying instead of all waiting for that fsync
/// (1 GiB on ext4 here: 0.5 s instead of 0.85 s).
///
/// Before each chunk it asks `give_up` (given how many chunks are done), and fails with
/// EINTR when that says so (the caller is being killed: see `interrupt`).
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: u64,
    sync_after: bool,
    give_up: &dyn Fn(u64) -> bool,
) -> SysResult<()> {
    if fs::ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut copier = RangeCopier {
        src,
        dst,
        chunk: if sync_after {
            WRITEBACK_CHUNK
        } else {
            UNSYNCED_CHUNK
        },
        sync_after,
        give_up,
        chunks: 0,
        use_cfr: true,
        buf: Vec::new(),
    };
    let mut off: u64 = 0;
    while off < len {
        let data = match fs::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(Errno(libc::ENXIO)) => break,
            // No SEEK_DATA support: treat the rest as data.
            Err(_) => off,
        };
        let end = match fs::lseek(src, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(len),
            Err(_) => len,
        };
        copier.copy(data, end)?;
        off = end.max(data + 1);
    }
    fs::ftruncate(dst, len)
}

/// How much data is copied before its writeback is started (when the copy is synced),
/// and how much written back by the kernel's write cache (`Overlay::write`). Small enough
/// that the disk starts early, large enough that each system call moves plenty: 8 and 32
/// MiB chunks measured alike, whole-file copies 70% slower.
pub(super) const WRITEBACK_CHUNK: usize = 8 << 20;
/// The chunk of a copy that is not synced: only as small as a prompt check for a killed
/// caller needs (a copy_file_range of 64 MiB takes tens of milliseconds).
const UNSYNCED_CHUNK: usize = 64 << 20;

struct RangeCopier<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    chunk: usize,
    sync_after: bool,
    give_up: &'a dyn Fn(u64) -> bool,
    /// Chunks copied so far, across the data extents.
    chunks: u64,
    /// Cleared when `copy_file_range` fails (e.g. EXDEV on old kernels, EINVAL on some
    /// filesystems); the rest goes through `buf`.
    use_cfr: bool,
    buf: Vec<u8>,
}

impl RangeCopier<'_> {
    fn copy(&mut self, mut pos: u64, end: u64) -> SysResult<()> {
        while pos < end {
            if (self.give_up)(self.chunks) {
                debug!("copy-up given up at {pos} bytes: its caller is being killed");
                return Err(Errno(libc::EINTR));
            }
            let want = ((end - pos) as usize).min(self.chunk);
            let n = self.copy_some(pos, want)?;
            if n == 0 {
                return Ok(());
            }
            if self.sync_after {
                // Only a hint: the fsync that follows reports any write error.
                if let Err(e) = fs::start_writeback(self.dst, pos, n as u64) {
                    debug!("copy-up: cannot start writeback early: {e:?}");
                    self.sync_after = false;
                }
            }
            pos += n as u64;
            self.chunks += 1;
        }
        Ok(())
    }

    /// Copies up to `want` bytes at `pos`; returns how many (0 at the source's end).
    fn copy_some(&mut self, pos: u64, want: usize) -> SysResult<usize> {
        if self.use_cfr {
            match fs::copy_file_range(self.src, pos, self.dst, pos, want) {
                Ok(n) => return Ok(n),
                Err(_) => self.use_cfr = false,
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; 1 << 20];
        }
        let mut done = 0;
        while done < want {
            let room = (want - done).min(self.buf.len());
            let n = fs::pread(self.src, &mut self.buf[..room], pos + done as u64)?;
            if n == 0 {
                break;
            }
            let mut put = 0;
            while put < n {
                put += fs::pwrite(self.dst, &self.buf[put..n], pos + (done + put) as u64)?;
            }
            done += n;
        }
        Ok(done)
    }
}

/// Copies every xattr of `sname` in `sdir` to `dname` in `ddir`, except overlay-private
/// ones (under `prefix`, unless escaped). Attributes the upper filesystem does not support
/// are skipped with a warning.
pub fn copy_xattrs(
    sdir: BorrowedFd<'_>,
    sname: &OsStr,
    ddir: BorrowedFd<'_>,
    dname: &OsStr,
    prefix: &str,
) -> SysResult<()> {
    let list = match xattr::list(sdir, sname) {
        Ok(l) => l,
        Err(Errno::EOPNOTSUPP) => return Ok(()),
        Err(Errno(libc::E2BIG)) => {
            // The kernel overlay copies such a file (its own listing has no limit); no
            // system call lists more than 64 KiB of names (README, "Differences").
            warn!("cannot copy up {sname:?}: the names of its xattrs take more than the 64 KiB listxattr(2) can return");
            return Err(Errno(libc::E2BIG));
        }
        Err(e) => return Err(e),
    };
    let metacopy = format!("{prefix}{METACOPY_XATTR}");
    for raw in xattr::split_names(&list) {
        if raw == metacopy.as_bytes() {
            // Its data is in a lower file we do not follow: a copy would hold none.
            warn!("refusing to copy up {sname:?}: a metadata-only copy (overlay.metacopy)");
            return Err(Errno::EPERM);
        }
        if super::xattr::is_private(prefix, raw)
            || raw.starts_with(b"trusted.overlay.") && !raw.starts_with(b"trusted.overlay.overlay.")
        {
            continue;
        }
        let Ok(attr) = std::str::from_utf8(raw) else {
            continue;
        };
        let val = match xattr::get_vec(sdir, sname, attr) {
            Ok(v) => v,
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        match xattr::set(ddir, dname, attr, &val, 0) {
            Ok(()) => {}
            Err(e)
                if e == Errno::EOPNOTSUPP || (e == Errno::EPERM && !attr.starts_with("user.")) =>
            {
                warn!("copy-up: xattr {attr} of {:?} not copied: {e:?}", sname);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{copy_data, RangeCopier, WRITEBACK_CHUNK};
    use crate::sys::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileExt, MetadataExt};

    /// Two data extents around a hole, each crossing a chunk boundary.
    fn sparse_source(dir: &std::path::Path) -> (std::fs::File, Vec<u8>, u64) {
        let len = 3 * WRITEBACK_CHUNK as u64 + 12345;
        let f = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("src"))
            .unwrap();
        f.set_len(len).unwrap();
        let a: Vec<u8> = (0..WRITEBACK_CHUNK + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        let b: Vec<u8> = (0..WRITEBACK_CHUNK / 2)
            .map(|i| (i % 13) as u8 + 1)
            .collect();
        f.write_all_at(&a, 100).unwrap();
        let b_at = len - b.len() as u64 - 7;
        f.write_all_at(&b, b_at).unwrap();
        let mut want = vec![0u8; len as usize];
        want[100..100 + a.len()].copy_from_slice(&a);
        want[b_at as usize..b_at as usize + b.len()].copy_from_slice(&b);
        (f, want, len)
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ovlfuse-cu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn chunked_copy_with_early_writeback_keeps_data_and_holes() {
        for sync_after in [true, false] {
            let d = scratch(&format!("sync{sync_after}"));
            let (src, want, len) = sparse_source(&d);
            let dst = std::fs::File::create(d.join("dst")).unwrap();
            copy_data(src.as_fd(), dst.as_fd(), len, sync_after, &|_| false).unwrap();
            assert_eq!(std::fs::read(d.join("dst")).unwrap(), want);
            let blocks = |p: &str| std::fs::metadata(d.join(p)).unwrap().blocks();
            if blocks("src") * 512 < len {
                assert!(
                    blocks("dst") <= blocks("src") + 8,
                    "hole filled in: {} blocks vs {}",
                    blocks("dst"),
                    blocks("src")
                );
            }
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn read_write_fallback_copies_chunks_across_buffer_ends() {
        let d = scratch("rw");
        let (src, want, len) = sparse_source(&d);
        let dst = std::fs::File::create(d.join("dst")).unwrap();
        let mut c = RangeCopier {
            src: src.as_fd(),
            dst: dst.as_fd(),
            chunk: WRITEBACK_CHUNK,
            sync_after: true,
            give_up: &|_| false,
            chunks: 0,
            use_cfr: false,
            buf: Vec::new(),
        };
        c.copy(0, len).unwrap();
        fs::fsync(dst.as_fd(), false).unwrap();
        assert_eq!(std::fs::read(d.join("dst")).unwrap(), want);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_copy_told_to_give_up_stops_between_chunks_with_eintr() {
        let d = scratch("give-up");
        let (src, _, len) = sparse_source(&d);
        let dst = std::fs::File::create(d.join("dst")).unwrap();
        let asked = std::cell::Cell::new(0);
        let give_up = |_done: u64| {
            asked.set(asked.get() + 1);
            asked.get() > 1
        };
        let r = copy_data(src.as_fd(), dst.as_fd(), len, true, &give_up);
        assert_eq!(r, Err(crate::sys::Errno(libc::EINTR)));
        assert_eq!(
            asked.get(),
            2,
            "asked before each chunk, stopped at the second"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
