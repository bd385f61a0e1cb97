//! Open files and their I/O.
//!
//! Opening for write (or with O_TRUNC) copies the file up first — without its data when
//! O_TRUNC would throw it away. A file opened read-only from a lower layer switches to the
//! upper copy as soon as one exists, so it reads what kernel overlayfs shows after a
//! copy-up. Each handle owns one fd; idle nodes own none. Where the kernel caches writes
//! (no passthrough), writable files are opened so that its write-back can go through any
//! of them, and a write-back that finds the upper layer full is reported to the next
//! writer.

use super::copy_up::WRITEBACK_CHUNK;
use super::dir::NewObject;
use super::inode::{Attr, Change};
use super::layers::UPPER;
use super::namei::METACOPY_XATTR;
use super::node::Node;
use super::params::Atime;
use super::{Ctx, Errno, Overlay, SysResult};
use crate::sys::fs;
use parking_lot::RwLock;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct FileHandle {
    pub node: Arc<Node>,
    fd: RwLock<Arc<OwnedFd>>,
    upper: RwLock<bool>,
    flags: i32,
    /// Its I/O must bypass the kernel's page cache (see `write_cache_flags`).
    direct: bool,
}

/// How the kernel's page cache is to serve a file just opened (`Overlay::page_cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCache {
    /// Not at all: direct I/O.
    Bypass,
    /// With the pages it already holds.
    Keep,
    /// With those pages dropped first.
    Drop,
}

impl FileHandle {
    pub fn fd(&self) -> Arc<OwnedFd> {
        self.fd.read().clone()
    }

    pub fn is_upper(&self) -> bool {
        *self.upper.read()
    }
}

/// Flags passed to the real open: access mode and the few that change I/O semantics.
/// O_APPEND is kept although the kernel gives every write its offset (the end of the
/// file, for an append handle): an append-only file refuses a writable open without it.
/// O_DIRECT is left out because our buffers are not aligned (the kernel does the direct
/// I/O towards the caller).
pub(super) fn real_open_flags(flags: i32) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOATIME
        | libc::O_NONBLOCK;
    flags & keep
}

/// Serializes, per node (striped), a write-back's keeping of the upper mtime with a
/// setattr of the times (see `write`).
pub(super) fn times_lock(id: u64) -> parking_lot::MutexGuard<'static, ()> {
    const N: usize = 16;
    static LOCKS: [parking_lot::Mutex<()>; N] = [const { parking_lot::Mutex::new(()) }; N];
    LOCKS[id as usize % N].lock()
}

/// The free space below which writable files are opened for direct I/O rather than
/// through the kernel's writeback cache: well above what the kernel lets one FUSE mount
/// hold dirty (1% of the dirtyable memory by default).
const CACHED_WRITES_MIN_ROOM: u64 = 1 << 30;

/// The free space at which a full upper layer counts as having room again, so that a
/// write-back that failed for want of space no longer fails the file's next write.
const WRITE_BACK_ROOM_AGAIN: u64 = 16 << 20;

/// The real flags of a writable open while the kernel caches writes, and whether its
/// I/O goes through that cache. The kernel writes dirty pages back at their own offsets
/// through any writable open file of the inode, so no real file has O_APPEND (it would
/// move each write-back to the end; the kernel, which keeps the file size, gives appends
/// their offsets). A cached open also reads, for a page it writes only in part: the real
/// file is opened for reading too, and those reads must not move the atime (O_NOATIME).
/// Where the upper layer is short of space, the open goes direct instead (see
/// `Overlay::room_for_cached_writes`).
pub(super) fn write_cache_flags(rflags: i32, room: bool) -> (i32, bool) {
    let f = rflags & !libc::O_APPEND;
    if !room {
        (f, false)
    } else if f & libc::O_ACCMODE == libc::O_WRONLY {
        (
            (f & !libc::O_ACCMODE) | libc::O_RDWR | libc::O_NOATIME,
            true,
        )
    } else {
        (f, true)
    }
}

/// The largest lower file whose data an open hands the kernel at once (`prefill`): a
/// caller that opens a file without reading it all costs a read of this much at most.
const PREFILL_UP_TO: usize = 64 * 1024;
/// The bit of a file node's `tally` (its open files) set once `prefill` gave its data.
const PREFILLED: u32 = 1 << 31;

/// Whether file `node` is open through the mount.
pub(super) fn has_open_files(node: &Node) -> bool {
    node.tally.load(Ordering::Relaxed) & !PREFILLED != 0
}

/// Where `prefill` hands a file's data.
pub type DataSink<'a> = &'a mut dyn FnMut(&[u8]);

/// The opens to try, in order, for a writable open of an existing file while the kernel
/// caches writes: `write_cache_flags`; without O_NOATIME (a file we do not own); for
/// direct I/O without O_APPEND; and as asked (an append-only file, which no open without
/// O_APPEND can reach, so that no dirty page is ever written back through it).
pub(super) fn write_cache_opens(rflags: i32, room: bool) -> Vec<(i32, bool)> {
    let (f, cached) = write_cache_flags(rflags, room);
    let mut tries = vec![(f, cached)];
    if f & libc::O_NOATIME != 0 && rflags & libc::O_NOATIME == 0 {
        tries.push((f & !libc::O_NOATIME, cached));
    }
    tries.push((rflags & !libc::O_APPEND, false));
    tries.push((rflags, false));
    tries.dedup_by_key(|t| t.0);
    tries
}

/// Opens with the first of `tries` (flags, through the page cache) the file takes; a
/// refusal (EACCES, EPERM) moves on to the next. Returns the fd and whether its I/O is
/// direct.
fn open_first(
    tries: &[(i32, bool)],
    open: impl Fn(i32) -> SysResult<OwnedFd>,
) -> SysResult<(OwnedFd, bool)> {
    let mut last = Errno::EINVAL;
    for &(flags, cached) in tries {
        match open(flags) {
            Ok(fd) => return Ok((fd, !cached)),
            Err(e) if e == Errno::EACCES || e == Errno::EPERM => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

impl Overlay {
    pub fn file_handle(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.get(&fh).map(|h| h.clone())
    }

    fn add_handle(
        &self,
        node: Arc<Node>,
        fd: OwnedFd,
        upper: bool,
        flags: i32,
        direct: bool,
    ) -> u64 {
        let fh = self.new_fh();
        node.tally.fetch_add(1, Ordering::Relaxed);
        let h = FileHandle {
            node,
            fd: RwLock::new(Arc::new(fd)),
            upper: RwLock::new(upper),
            flags,
            direct,
        };
        self.files.insert(fh, Arc::new(h));
        fh
    }

    pub fn open(&self, ctx: &Ctx, id: u64, flags: i32) -> SysResult<u64> {
        let node = self.node(id)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let acc = flags & libc::O_ACCMODE;
        let writes = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = flags & libc::O_TRUNC != 0;
        if writes || trunc {
            self.require_upper()?;
            let append = flags & libc::O_APPEND != 0;
            self.check_protection(&node, Change::Open { append, trunc })?;
            self.copy_up(&node, !trunc)?;
        }
        let st = node.state();
        let top = st.top().ok_or(Errno::ESTALE)?;
        if node.kind == libc::S_IFREG && !st.whole {
            self.refuse_metadata_only(&node, top)?;
        }
        let mut rflags = real_open_flags(flags);
        if trunc && node.kind == libc::S_IFREG {
            rflags |= libc::O_TRUNC;
        }
        // Without O_TRUNC an open may be repeated (`stable`); with it the kernel holds the
        // file's lock, which a rename or removal of it waits for.
        let open_real = |flags: i32| {
            if node.unlinked.load(Ordering::Relaxed) {
                // No name leads to it (an O_TMPFILE file, one removed while open: reopened
                // through /proc/self/fd), and its directory may be gone too.
                let kept = node.detached().ok_or(Errno::ENOENT)?;
                return fs::reopen(kept.as_fd(), flags);
            }
            let res = self.at_name(&node, top, |dir, name| {
                if node.unlinked.load(Ordering::Relaxed) {
                    // Removed while we looked: its name may now be another file's.
                    return Err(Errno::ESTALE);
                }
                self.nodes.with_fds(|| {
                    if top == UPPER {
                        fs::openat_as_owner(dir, name, flags)
                    } else {
                        fs::openat_noatime(dir, name, flags)
                    }
                })
            });
            match res {
                Err(e) if e == Errno::ENOENT || e == Errno::ESTALE => match node.detached() {
                    Some(d) => fs::reopen(d.as_fd(), flags),
                    None => Err(e),
                },
                other => other,
            }
        };
        let (fd, direct) = if writes && node.kind == libc::S_IFREG && self.writes_cached() {
            open_first(
                &write_cache_opens(rflags, self.room_for_cached_writes()),
                open_real,
            )?
        } else {
            (open_real(rflags)?, false)
        };
        if trunc {
            // Truncation on open is a write as far as set-ID bits go.
            self.kill_suid_sgid(ctx, &node, &fd);
        }
        Ok(self.add_handle(node, fd, top == UPPER, flags, direct))
    }

    /// Refuses (EPERM) a file whose copy seen, in layer `top`, is a kernel overlay's
    /// metadata-only copy (`overlay.metacopy`, made with `metacopy=on`): its data is in a
    /// lower file that ovlfuse does not follow, and the copy holds none, so a read would
    /// show zeros. The kernel overlay with `metacopy=off` refuses its lookup with EPERM.
    /// Read once per node: the layers do not change under the mount, and ovlfuse makes no
    /// such copy.
    fn refuse_metadata_only(&self, node: &Node, top: super::LayerId) -> SysResult<()> {
        let attr = format!("{}{METACOPY_XATTR}", self.layers.xattr_prefix);
        let marked = self.at_name(node, top, |dir, name| {
            match crate::sys::xattr::get(dir, name, &attr, &mut []) {
                Ok(_) => {
                    log::warn!("refusing to open {name:?}: a metadata-only copy ({attr})");
                    Ok(true)
                }
                Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => Ok(false),
                Err(e) => Err(e),
            }
        });
        match marked {
            Ok(true) => Err(Errno::EPERM),
            Ok(false) => {
                let mut st = node.state.write();
                if st.top() == Some(top) {
                    st.whole = true;
                }
                Ok(())
            }
            // Unreachable by name (removed while open): the open meets the same.
            Err(_) => Ok(()),
        }
    }

    /// Whether the upper layer, where a write-back failed for want of space, has room
    /// again (`WRITE_BACK_ROOM_AGAIN`).
    pub(super) fn upper_has_room_again(&self) -> bool {
        self.upper_has_room(WRITE_BACK_ROOM_AGAIN)
    }

    /// Whether the upper layer has at least `bytes` free for us.
    fn upper_has_room(&self, bytes: u64) -> bool {
        let Some(upper) = &self.layers.upper else {
            return false;
        };
        fs::fstatvfs(upper.fd())
            .is_ok_and(|v| (v.f_bavail as u128) * (v.f_frsize as u128) >= bytes as u128)
    }

    /// Whether the upper layer has room enough for the kernel to cache writes. A write
    /// into the page cache succeeds at once; if its write-back then fails for want of space,
    /// the caller learns it only at its next write (see `write`), at fsync or at close. So
    /// where the space is short, files are opened for direct I/O: each write(2) reaches
    /// the upper filesystem and fails there, as on the kernel overlay.
    fn room_for_cached_writes(&self) -> bool {
        self.upper_has_room(CACHED_WRITES_MIN_ROOM)
    }

    /// Whether the open file `fh` was opened for reading and writing: only such a file can
    /// be mapped shared and writable, so that its data and times change by page faults,
    /// without a write(2).
    pub fn handle_read_write(&self, fh: u64) -> bool {
        self.file_handle(fh)
            .is_some_and(|h| h.flags & libc::O_ACCMODE == libc::O_RDWR)
    }

    /// The fd the kernel may do this open file's I/O on by itself (FUSE passthrough): a
    /// regular upper file without set-ID bits, or any regular file of a read-only overlay.
    /// Where there is an upper layer, a lower file may be copied up while open, and reads
    /// must then see the upper copy, which a fixed backing file would not; and writes by an
    /// unprivileged caller must clear set-ID bits, which a backing file written with our
    /// credentials would not. Without one, nothing is ever copied up or written.
    /// `mode`: the file's mode where the caller has it fresh (a file it has just made),
    /// which spares a stat.
    pub fn passthrough_fd(&self, fh: u64, mode: Option<u32>) -> Option<Arc<OwnedFd>> {
        let h = self.file_handle(fh)?;
        if h.node.kind != libc::S_IFREG {
            return None;
        }
        if self.layers.upper.is_none() {
            return Some(h.fd());
        }
        if !h.is_upper() {
            return None;
        }
        let fd = h.fd();
        let mode = match mode {
            Some(m) => m,
            None => {
                let st = fs::fstat(fd.as_fd()).ok()?;
                self.effective_stat(&h.node, &st).st_mode
            }
        };
        if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            return None;
        }
        Some(fd)
    }

    /// How the kernel's page cache serves the file opened as `fh`. Direct where its I/O
    /// must bypass it (see `write_cache_flags`). Otherwise the kernel may keep the pages
    /// it holds, except that a read served from them never reaches us, so the upper
    /// copy's atime would not move: where the mount's atime policy says the next read moves
    /// it, the kernel must drop them and read through us once. Lower layers' atimes never
    /// move.
    pub fn page_cache(&self, fh: u64) -> PageCache {
        let Some(h) = self.file_handle(fh) else {
            return PageCache::Keep;
        };
        if h.direct {
            return PageCache::Bypass;
        }
        if !h.is_upper() || h.flags & libc::O_NOATIME != 0 || self.cfg.atime == Atime::Never {
            return PageCache::Keep;
        }
        let Ok(st) = fs::fstat(h.fd().as_fd()) else {
            return PageCache::Keep;
        };
        if self.cfg.atime == Atime::Relative && !relatime_due(&st) {
            PageCache::Keep
        } else if st.st_size == 0
            && h.flags & libc::O_ACCMODE == libc::O_RDONLY
            && self.direct_io_maps.load(Ordering::Relaxed)
        {
            // The kernel sends no READ for a read at the end of the file it knows, and a
            // read of an empty file is nothing else; the kernel overlay's read moves the
            // atime all the same. Direct I/O sends every read to us; where the kernel
            // would refuse a shared mapping of the file so opened, the difference stays.
            // Only read-only opens: a file opened to be written is seldom read while empty.
            PageCache::Bypass
        } else {
            PageCache::Drop
        }
    }

    /// create(2) through open(O_CREAT): makes the file and returns it open.
    pub fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> SysResult<(Arc<Node>, Attr, u64)> {
        // A new file is ours to open as write-back needs (`write_cache_flags`).
        let (real, cached) = if self.writes_cached() {
            write_cache_flags(flags, self.room_for_cached_writes())
        } else {
            (flags, true)
        };
        // A create that fails for want of fds has made nothing: the fd comes first.
        let (node, attr, fd) = self.nodes.with_fds(|| {
            self.create_object(ctx, parent, name, NewObject::File { mode, flags: real })
        })?;
        let fd = fd.ok_or(Errno::EIO)?;
        let fh = self.add_handle(node.clone(), fd, true, flags, !cached);
        Ok((node, attr, fh))
    }

    /// open(O_TMPFILE) in directory `parent`: makes a file with no name and returns it open
    /// (see `create_unnamed`).
    pub fn tmpfile(
        &self,
        ctx: &Ctx,
        parent: u64,
        mode: u32,
        flags: i32,
    ) -> SysResult<(Arc<Node>, Attr, u64)> {
        let flags = flags & !libc::O_TMPFILE;
        let (real, cached) = if self.writes_cached() {
            write_cache_flags(flags, self.room_for_cached_writes())
        } else {
            (flags, true)
        };
        let (node, attr, fd) = self
            .nodes
            .with_fds(|| self.create_unnamed(ctx, parent, mode, real))?;
        let fh = self.add_handle(node.clone(), fd, true, flags, !cached);
        Ok((node, attr, fh))
    }

    /// The fd to read through: a read-only handle opened on a lower copy moves to the
    /// upper copy once the file has been copied up.
    pub fn read_fd(&self, h: &FileHandle) -> SysResult<Arc<OwnedFd>> {
        if !h.is_upper() && h.node.is_upper() {
            let mut up = h.upper.write();
            if !*up {
                let flags = real_open_flags(h.flags);
                let res = if h.node.unlinked.load(Ordering::Relaxed) {
                    match h.node.detached() {
                        Some(d) => fs::reopen(d.as_fd(), flags),
                        None => Err(Errno::ENOENT),
                    }
                } else {
                    self.parent_fd(&h.node, UPPER)
                        .and_then(|(pfd, name)| fs::openat(pfd.as_fd(), &name, flags, 0))
                };
                match res {
                    Ok(fd) => {
                        *h.fd.write() = Arc::new(fd);
                        *up = true;
                    }
                    Err(e) => log::warn!("cannot move a read-only handle to the upper copy: {e:?}"),
                }
            }
        }
        Ok(h.fd())
    }

    /// The descriptor that READs of handle `fh` read from, for a transport that moves the
    /// data itself (`fuse_splice`); `read_into` reads the same.
    pub fn read_source(&self, fh: u64) -> SysResult<Arc<OwnedFd>> {
        let h = self.file_handle(fh).ok_or(Errno::EBADF)?;
        self.read_fd(&h)
    }

    /// Reads into `buf` from `offset`, filling it unless the file ends first; returns the
    /// length read. Callers reuse one buffer across reads.
    ///
    /// With `before_wait`, what the layer's page cache holds is read first without
    /// waiting, and `before_wait` runs once before the read waits for the disk (a ring
    /// thread pinned to its caller's CPU then lets the disk's interrupt wake it wherever
    /// that lands).
    pub fn read_into(
        &self,
        fh: u64,
        offset: u64,
        buf: &mut [u8],
        mut before_wait: Option<&mut dyn FnMut()>,
    ) -> SysResult<usize> {
        let fd = self.read_source(fh)?;
        let mut done = 0;
        while done < buf.len() {
            if let Some(f) = before_wait.as_mut() {
                match fs::pread_cached(fd.as_fd(), &mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => {
                        done += n;
                        continue;
                    }
                    Err(Errno::EAGAIN) => f(),
                    // A filesystem that cannot tell (EOPNOTSUPP), or a failure the plain
                    // read below reports.
                    Err(_) => {}
                }
                before_wait = None;
            }
            let n = fs::pread(fd.as_fd(), &mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    /// After a write by an unprivileged caller: clear set-user-ID, and set-group-ID where
    /// the VFS would (group-executable, or the caller outside the file's group). The
    /// kernel's FUSE client clears only the first two cases itself, and our writes run
    /// with CAP_FSETID, so the upper filesystem would keep the bits.
    pub(super) fn kill_suid_sgid(&self, ctx: &Ctx, node: &Node, fd: &OwnedFd) {
        if ctx.uid == 0 {
            return;
        }
        let Ok(st) = fs::fstat(fd.as_fd()) else {
            return;
        };
        let st = self.effective_stat(node, &st);
        let mode = st.st_mode & 0o7777;
        let mut keep = mode;
        if mode & libc::S_ISUID != 0 {
            keep &= !libc::S_ISUID;
        }
        if mode & libc::S_ISGID != 0
            && (mode & libc::S_IXGRP != 0
                || !ctx.in_group_or_root(self.cfg.own.shown_gid(st.st_gid)))
        {
            keep &= !libc::S_ISGID;
        }
        if keep == mode {
            return;
        }
        let res = match self.upper_override() {
            Some(_) => self.parent_fd(node, super::UPPER).and_then(|(dir, name)| {
                let o = super::ownership::OverrideStat {
                    uid: st.st_uid,
                    gid: st.st_gid,
                    mode: fs::ifmt(st.st_mode) | keep,
                    rdev: None,
                };
                self.write_override(dir.as_fd(), &name, &o, node.kind)
                    .map(drop)
            }),
            None => fs::chmod_fd(fd.as_fd(), keep),
        };
        match res {
            Ok(()) => self.notify_attr_changed(node.id),
            Err(e) => log::warn!("cannot clear set-ID bits after a write: {e:?}"),
        }
    }

    /// A write; `write_back` when it is the kernel's write-back of cached pages, whose
    /// writers were told of success long ago. A write-back that fails for want of space
    /// makes the next write(2) to the file fail with that error (its attributes are marked
    /// stale, so the kernel asks for them, with the file handle, before it caches that
    /// write; see `getattr`), as the kernel overlay fails the write that finds the disk full.
    pub fn write(
        &self,
        ctx: &Ctx,
        fh: u64,
        offset: u64,
        data: &[u8],
        write_back: bool,
    ) -> SysResult<u32> {
        let h = self.file_handle(fh).ok_or(Errno::EBADF)?;
        let fd = h.fd();
        // The kernel keeps the mtime of a file it caches writes for, and sends it with its
        // write-back of the inode, before or after the data (or beside it, on another
        // thread: hence the lock, which setattr takes too); the data's arrival must not
        // move it past that. Without the writeback cache the kernel keeps no times (pages
        // written through a mapping come back marked as write-back all the same), so the
        // write moves the mtime, as any write does.
        let keep_mtime = write_back && self.writes_cached();
        let _times = keep_mtime.then(|| times_lock(h.node.id));
        let mtime = keep_mtime
            .then(|| fs::fstat(fd.as_fd()).ok())
            .flatten()
            .map(|st| fs::stat_times(&st).1);
        let mut done = 0;
        while done < data.len() {
            let n = match fs::pwrite(fd.as_fd(), &data[done..], offset + done as u64) {
                Ok(n) => n,
                Err(e) if write_back && (e == Errno::ENOSPC || e == Errno::EDQUOT) => {
                    log::warn!("write-back of a file failed: {e:?}; its next write fails too");
                    self.write_back_errors.insert(h.node.id, e);
                    self.notify_attr_changed(h.node.id);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        if let (Some(m), true) = (mtime, done > 0) {
            let _ = fs::utimens_fd(fd.as_fd(), None, Some(m));
        }
        if write_back {
            start_disk_writes(&fd, offset, done as u64);
        }
        if done > 0 {
            self.kill_suid_sgid(ctx, &h.node, &fd);
        }
        Ok(done as u32)
    }

    pub fn release(&self, fh: u64) {
        if let Some((_, h)) = self.files.remove(&fh) {
            h.node.tally.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Before the open `fh` of a regular file returns: the first time its node is opened
    /// while no other file of it is, and it is a small lower file read through us, hands
    /// `give` its whole data, for the kernel's page cache (which such a file keeps).
    ///
    /// Why: a read of it is then served by the kernel, which saves the READ round trip
    /// and the GETATTR that follows one (the kernel marks the atime stale after each READ,
    /// so the next stat asks us). `tar c` of 50k small lower files made four requests
    /// per file (OPEN, READ, GETATTR, RELEASE), now two.
    ///
    /// Every open of a regular file passes here, and waits while another open of the node
    /// hands its data over: filling the page cache locks its pages, and a read through a
    /// file opened meanwhile could lock them first and wait for a READ that no serving
    /// thread is free to answer. So data goes over only while this is the one open file
    /// (no mapping can outlive its file), and opens made meanwhile return after it.
    ///
    /// `before_wait` as for `read_into`.
    pub fn prefill(
        &self,
        fh: u64,
        give: Option<DataSink<'_>>,
        before_wait: Option<&mut dyn FnMut()>,
    ) {
        let Some(h) = self.file_handle(fh) else {
            return;
        };
        if h.node.kind != libc::S_IFREG {
            return;
        }
        let _barrier = h.node.dir_lock.lock();
        let Some(give) = give else {
            return;
        };
        // This file alone, and no data given before.
        if h.node.tally.load(Ordering::Relaxed) != 1
            || h.is_upper()
            || h.direct
            || h.flags & libc::O_ACCMODE != libc::O_RDONLY
            // Its reads bypass the page cache.
            || h.flags & libc::O_DIRECT != 0
        {
            return;
        }
        h.node.tally.fetch_or(PREFILLED, Ordering::Relaxed);
        let fd = h.fd();
        let Ok(st) = fs::fstat(fd.as_fd()) else {
            return;
        };
        if st.st_size <= 0 || st.st_size as usize > PREFILL_UP_TO {
            return;
        }
        let mut data = vec![0u8; st.st_size as usize];
        if self
            .read_into(fh, 0, &mut data, before_wait)
            .is_ok_and(|n| n == data.len())
        {
            give(&data);
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let h = self.file_handle(fh).ok_or(Errno::EBADF)?;
        if !self.cfg.fsync {
            return Ok(());
        }
        fs::fsync(h.fd().as_fd(), datasync)
    }

    pub fn fallocate(&self, ctx: &Ctx, fh: u64, offset: u64, len: u64, mode: i32) -> SysResult<()> {
        let h = self.file_handle(fh).ok_or(Errno::EBADF)?;
        let keep_size = mode & !libc::FALLOC_FL_KEEP_SIZE == 0;
        self.check_protection(&h.node, Change::Allocate { keep_size })?;
        let fd = h.fd();
        fs::fallocate(fd.as_fd(), mode, offset, len)?;
        self.kill_suid_sgid(ctx, &h.node, &fd);
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        if self.writes_cached() && (whence == libc::SEEK_DATA || whence == libc::SEEK_HOLE) {
            // The upper file lacks what the kernel has not written back yet (a new file
            // would be all hole). ENOSYS makes the kernel answer these itself, from the
            // size it keeps: all data up to it.
            return Err(Errno::ENOSYS);
        }
        let h = self.file_handle(fh).ok_or(Errno::EBADF)?;
        let fd = self.read_fd(&h)?;
        fs::lseek(fd.as_fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        ctx: &Ctx,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> SysResult<u32> {
        let hi = self.file_handle(fh_in).ok_or(Errno::EBADF)?;
        let ho = self.file_handle(fh_out).ok_or(Errno::EBADF)?;
        self.check_protection(&ho.node, Change::CopyInto)?;
        let fi = self.read_fd(&hi)?;
        // The kernel overlay copies without moving the source's atime (it touches atime
        // only on read, splice and mmap), where a copy from our fd would move the upper
        // copy's. A file we may not open so is copied as it is.
        let quiet = (hi.node.is_upper() && hi.flags & libc::O_NOATIME == 0)
            .then(|| fs::reopen(fi.as_fd(), libc::O_RDONLY | libc::O_NOATIME).ok())
            .flatten();
        let fi = quiet.as_ref().map_or(fi.as_fd(), |q| q.as_fd());
        let fo = ho.fd();
        let len = len.min(u32::MAX as u64 & !0xfff) as usize;
        let n = fs::copy_file_range(fi, off_in, fo.as_fd(), off_out, len)?;
        if n > 0 {
            self.kill_suid_sgid(ctx, &ho.node, &fo);
        }
        Ok(n as u32)
    }
}

/// Starts the disk writes of each `WRITEBACK_CHUNK` of an upper file that a write-back
/// from the kernel's write cache completes, as copy-up does with its copies: otherwise
/// they start only at the fsync (or after the dirty pages' 30 s), which then waits for all
/// of them, and the data sits in the page cache twice meanwhile (the kernel's copy for the
/// mount and the upper file's). 1 GiB written by dd, passthrough=off, 11 and 6 runs
/// interleaved: with conv=fsync median 1.27 s before, 0.95 s after; without, 0.80 s and
/// 0.85 s (the write-back's last requests now start disk writes themselves). Files under
/// one chunk never get here.
fn start_disk_writes(fd: &OwnedFd, offset: u64, len: u64) {
    let chunk = WRITEBACK_CHUNK as u64;
    let (from, to) = (offset / chunk * chunk, (offset + len) / chunk * chunk);
    if to > from {
        if let Err(e) = fs::start_writeback(fd.as_fd(), from, to - from) {
            log::debug!("cannot start the disk writes of a written-back range: {e:?}");
        }
    }
}

/// The `relatime` rule: a read moves atime when it is not newer than mtime or ctime, or is
/// a day old.
pub(super) fn relatime_due(st: &fs::Stat) -> bool {
    let at = (st.st_atime, st.st_atime_nsec);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    at <= (st.st_mtime, st.st_mtime_nsec)
        || at <= (st.st_ctime, st.st_ctime_nsec)
        || now - st.st_atime >= 24 * 3600
}
