//! The FUSE adapter: the state both transports share to answer requests (`Adapter`: the
//! overlay, lifetimes, passthrough, the io_uring rings), the INIT negotiation (through
//! fuser, which mounts and answers INIT; `fuse_dev` serves the requests after it), and the
//! choices made for replies: open flags, directory caching, READDIRPLUS lines. It holds no
//! overlay logic, and no `fuser` type goes below it.

use crate::fuse_uring::{UringConfig, UringMode};
use crate::ovl::file::PageCache;
use crate::ovl::listing::DirReader;
use crate::ovl::{Attr, Errno, Overlay};
use crate::passthrough::Backing;
use fuser::{Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig, Request};
use log::debug;
use std::ffi::OsStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The overlay as a `fuser` filesystem, for the mount and INIT; its state is shared with
/// the threads that serve the requests (`fuse_dev`, `fuse_uring`).
pub struct OvlFs(Arc<Adapter>);

/// What both transports need to answer a request.
pub struct Adapter {
    pub(crate) ovl: Overlay,
    pub(crate) ttl: Duration,
    debug: bool,
    pub(crate) pt: crate::passthrough::Passthrough,
    /// The kernel opens directories without us when OPENDIR fails with ENOSYS
    /// (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1); older ones would fail the open instead.
    pub(crate) skip_opendir: AtomicBool,
    /// Set once a request has come over io_uring: from then on /dev/fuse brings only
    /// FORGET and INTERRUPT (see `fuse_dev::pause_before_forgets`).
    pub(crate) ring_live: AtomicBool,
    /// The session's /dev/fuse descriptor: backing files are registered through it, and
    /// the io_uring transport's commands go to it.
    pub(crate) device: OnceLock<Arc<OwnedFd>>,
    notifier: NotifierSlot,
    /// Ring entries set up at INIT, started once the session is attached.
    ring: parking_lot::Mutex<Vec<crate::fuse_uring::Entry>>,
    /// Serve requests over io_uring when the kernel offers it (`-o uring`).
    uring: UringConfig,
    /// Passthrough, else the writeback cache, where allowed (`-o passthrough,writeback`).
    data: crate::passthrough::DataPath,
    /// Who may use the mount, checked for each request (`fuse_ops`).
    pub(crate) acl: fuser::SessionACL,
    /// The mount's owner for that check (fuser's too: our effective uid at start).
    pub(crate) owner: u32,
    /// Which CPU the /dev/fuse threads run on (`follow_caller=`).
    pub(crate) follow: crate::devfuse_cpu::Follow,
}

impl std::ops::Deref for OvlFs {
    type Target = Adapter;
    fn deref(&self) -> &Adapter {
        &self.0
    }
}

/// The daemon's hold on the adapter once the filesystem value has gone into the session.
pub struct SessionLink(Arc<Adapter>);

impl SessionLink {
    /// The session is mounted, and the INIT handshake done: take its notifier and device,
    /// and start serving over io_uring if INIT asked for it.
    pub fn attach(&self, notifier: fuser::Notifier, device: OwnedFd) {
        let _ = self.0.notifier.set(notifier);
        let device = Arc::new(device);
        let _ = self.0.device.set(device.clone());
        let entries = std::mem::take(&mut *self.0.ring.lock());
        if !entries.is_empty() {
            crate::fuse_uring::start(self.0.clone(), device, entries, self.0.uring.priority);
        }
    }

    /// Serves the session's requests over /dev/fuse (`fuse_dev`) on `threads` threads until
    /// the connection ends.
    pub fn serve(&self, session: BorrowedFd<'_>, threads: usize) -> std::io::Result<()> {
        crate::fuse_dev::serve(self.0.clone(), session, threads)
    }
}

/// The largest READ whose serving thread, pinned to its caller's CPU, lets itself be
/// woken elsewhere when the read waits for a disk (see `fuse_uring::Placement`): random
/// reads come as single pages, where that wake-up is a good part of the wait; a big
/// read-ahead waits long anyway, and moving back costs its thread a migration (cold
/// sequential reads over /dev/fuse, 13 rounds: 0.88 s pinned, 1.18 s let go at every
/// read).
pub const FREE_FOR_READS_UP_TO: usize = 64 << 10;

/// What a request is to the placement of the thread serving it: a READ of at most
/// `FREE_FOR_READS_UP_TO` bytes, a bigger READ, or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadSize {
    NotRead,
    Small,
    /// Read-ahead, mostly: the caller goes on with the pages it has while we fill the
    /// next ones, on another CPU if one is free (see `fuse_uring::Placement`).
    Big,
}

/// `ReadSize` of a request (`op_in`: its fixed arguments, `fuse_read_in` for a READ).
pub fn read_size(opcode: u32, op_in: &[u8]) -> ReadSize {
    if opcode != crate::fuse_wire::op::READ || op_in.len() < 20 {
        return ReadSize::NotRead;
    }
    if crate::fuse_wire::Fields(op_in).u32(16) as usize <= FREE_FOR_READS_UP_TO {
        ReadSize::Small
    } else {
        ReadSize::Big
    }
}

/// Read-ahead asked for at init, at most; the daemon raises the mount's window to it
/// after mounting (see `sys::process::raise_readahead`).
pub const MAX_READAHEAD: u32 = 1 << 20;

/// The largest READ the kernel is told to send (the `max_read` mount option), where our
/// pipes cannot carry a reply of `MAX_READAHEAD` (a daemon without CAP_SYS_RESOURCE gets
/// pipes of 1 MiB, which hold 1 MiB of data but not its header): as much as they can, so
/// that read-ahead over /dev/fuse is spliced (`fuse_splice`). 1 GiB read through a fresh
/// mount from the host's cache (8 rounds): 0.30 s spliced in 1 MiB replies, 0.39 s
/// copied; in 256 KiB replies 0.36 s and 0.43 s. `None`: no limit needed, or pipes too
/// small to be worth one.
pub fn max_read() -> Option<u32> {
    let room = crate::fuse_splice::pipe_room() as u32;
    (MAX_READAHEAD / 2..MAX_READAHEAD)
        .contains(&room)
        .then_some(room)
}

/// The read-ahead window asked for: `MAX_READAHEAD`, or `max_read` where that is less.
pub fn readahead() -> u32 {
    max_read().unwrap_or(MAX_READAHEAD)
}

/// The largest WRITE request asked for at init.
pub(crate) const MAX_WRITE: u32 = 1 << 20;

/// Where the session's notifier goes once the session exists (it is made after the
/// filesystem value has been handed to it).
pub type NotifierSlot = Arc<OnceLock<fuser::Notifier>>;

impl OvlFs {
    pub fn new(
        ovl: Overlay,
        ttl: Duration,
        debug: bool,
        uring: UringConfig,
        data: crate::passthrough::DataPath,
        acl: fuser::SessionACL,
        follow: crate::devfuse_cpu::Follow,
    ) -> (OvlFs, SessionLink) {
        let slot: NotifierSlot = Arc::new(OnceLock::new());
        let s = slot.clone();
        let _ = ovl.attr_changed.set(Box::new(move |id| {
            if let Some(n) = s.get() {
                // Offset -1: attributes only; the page cache stays.
                if let Err(e) = n.inval_inode(INodeNo(id), -1, 0) {
                    debug!("inval_inode {id}: {e}");
                }
            }
        }));
        let s = slot.clone();
        let _ = ovl
            .data_changed
            .set(Box::new(move |id| invalidate_data(&s, id)));
        let fs = Arc::new(Adapter {
            ovl,
            ttl,
            debug,
            pt: Default::default(),
            skip_opendir: AtomicBool::new(false),
            ring_live: AtomicBool::new(false),
            device: OnceLock::new(),
            notifier: slot,
            ring: Default::default(),
            uring,
            data,
            acl,
            owner: crate::sys::geteuid(),
            follow,
        });
        (OvlFs(fs.clone()), SessionLink(fs))
    }
}

/// How long a request that changed a file's data waits for the kernel to drop its cached
/// pages (`invalidate_data`).
const DATA_INVAL_WAIT: Duration = Duration::from_millis(50);

/// Drops the kernel's cached pages of node `id`, on a thread of its own, waiting for that
/// at most `DATA_INVAL_WAIT`: the kernel waits for each page under a read, whose READ may
/// be queued behind the very request that asks, so it must be able to answer first.
fn invalidate_data(slot: &NotifierSlot, id: u64) {
    let s = slot.clone();
    let (done, wait) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("ovl-inval".into())
        .spawn(move || {
            if let Some(n) = s.get() {
                // Offset 0, length 0: every page, and the attributes.
                if let Err(e) = n.inval_inode(INodeNo(id), 0, 0) {
                    debug!("inval_inode {id} (data): {e}");
                }
            }
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            if wait.recv_timeout(DATA_INVAL_WAIT).is_err() {
                debug!("dropping node {id}'s cached pages is taking long; answering first");
            }
        }
        Err(e) => debug!("cannot start a thread to drop node {id}'s cached pages: {e}"),
    }
}

/// Open flags allowed beside FOPEN_PASSTHROUGH (the kernel fails the open with EIO for
/// any other, page-cache ones included: the backing file has its own cache).
pub(crate) const PASSTHROUGH_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

impl Adapter {
    /// How long the kernel may keep node `id`'s attributes: none while a passthrough file
    /// of it is open read-write, whose mapped writes change its times without a request
    /// (see `passthrough`).
    pub(crate) fn attr_ttl(&self, id: u64) -> Duration {
        if self.pt.attrs_volatile(id) {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// The backing file for a new open file `fh` of `node`, if it goes through passthrough.
    /// Decided before the reply's attributes are made: it may take away their lifetime.
    ///
    /// `mode`: the file's mode, where the caller has it fresh (see `passthrough_fd`).
    pub(crate) fn backing(&self, fh: u64, node: u64, mode: Option<u32>) -> Option<Arc<Backing>> {
        let read_write = self.ovl.handle_read_write(fh);
        // Only the first such open of a node needs to tell the kernel; later ones find
        // its attributes already going out with no lifetime.
        let was_volatile = read_write && self.pt.attrs_volatile(node);
        let b = self.pt.open(
            fh,
            node,
            read_write,
            || self.ovl.passthrough_fd(fh, mode),
            self.device.get(),
        );
        if b.is_some() && read_write && !was_volatile {
            // Attributes the kernel took before with a lifetime would go stale.
            self.ovl.notify_attr_changed(node);
        }
        b
    }

    /// FOPEN_NOFLUSH: our flush does nothing (writes reach the upper file as they come, and
    /// the kernel keeps POSIX locks itself), so close(2) need not wait for a round trip.
    pub(crate) fn open_flags(&self, fh: u64) -> FopenFlags {
        FopenFlags::FOPEN_NOFLUSH
            | match self.ovl.page_cache(fh) {
                PageCache::Bypass => FopenFlags::FOPEN_DIRECT_IO,
                PageCache::Keep => FopenFlags::FOPEN_KEEP_CACHE,
                PageCache::Drop => FopenFlags::empty(),
            }
    }

    /// Before the reply to an open (`Overlay::prefill`): hands the kernel's page cache the
    /// data of a small lower file read through us (`cached`: not passthrough), by
    /// NOTIFY_STORE.
    pub(crate) fn prefill(
        &self,
        fh: u64,
        node: u64,
        cached: bool,
        before_wait: Option<&mut dyn FnMut()>,
    ) {
        let Some(n) = self.notifier.get().filter(|_| cached) else {
            // Only the wait for another open handing the node's data over.
            return self.ovl.prefill(fh, None, None);
        };
        let mut store = |data: &[u8]| {
            if let Err(e) = n.store(INodeNo(node), 0, data) {
                debug!("store of node {node}'s data: {e}");
            }
        };
        self.ovl.prefill(fh, Some(&mut store), before_wait);
    }

    /// OPENDIR's open flags, or the error to answer.
    pub(crate) fn opendir_flags(&self, ino: u64) -> Result<FopenFlags, Errno> {
        // Once refused, the kernel opens directories without asking us, and keeps
        // their listings cached (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR): one round trip less
        // per directory listed.
        if self.skip_opendir.load(Ordering::Relaxed) {
            return Err(Errno(libc::ENOSYS));
        }
        self.ovl.opendir(ino)?;
        Ok(if self.ovl.cache_listing(ino) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        })
    }

    /// The lines of a READDIRPLUS reply of at most `room` bytes from `offset`, handed to
    /// `add` with the node id, next offset, name, lifetime and attributes of each, until it
    /// says the buffer is full. A line without attributes (see `ListAttrs`) has node id 0
    /// and only the type and inode number.
    pub(crate) fn fill_dir_plus(
        &self,
        ino: u64,
        offset: u64,
        room: usize,
        mut add: impl FnMut(u64, u64, &OsStr, Duration, &Attr) -> bool,
    ) -> Result<(), Errno> {
        let mut list = self.ovl.read_dir(ino, offset)?;
        let mut lookups = self.ovl.listed_lookups(ino)?;
        // The lines that fit, so that their stats can start on other threads at once.
        let mut lines = Vec::new();
        let mut left = room;
        for (next, e) in list.by_ref() {
            let len = crate::fuse_wire::direntplus_len(e.name.len());
            lines.push((next, e));
            if len > left {
                break;
            }
            left -= len;
        }
        let attrs = lookups.with_attributes(&lines, offset);
        for (next, e) in lines.into_iter().chain(list) {
            // Each entry given with a node counts as a lookup; one that does not fit in the
            // buffer is forgotten again.
            let found = if !attrs || DirReader::is_dot(next) {
                None
            } else {
                match lookups.lookup(&e.name) {
                    Ok((n, a)) => Some((n.id, a)),
                    // Gone since the line was copied out: skip it, as a later readdir would.
                    Err(Errno::ENOENT) => continue,
                    // There, but its lookup fails (an invalid redirect, say): listed by
                    // name, as the kernel overlay lists it, and a stat fails.
                    Err(_) => None,
                }
            };
            let full = match found {
                // One lifetime for both here: the attributes'.
                Some((id, a)) => {
                    let full = add(id, next, &e.name, self.attr_ttl(id), &a);
                    if full {
                        self.ovl.forget(id, 1);
                    }
                    full
                }
                // Node id 0: a plain directory entry, which the kernel links to nothing (it
                // links no inode for `.` and `..` either, whatever they carry).
                None => {
                    let a = Attr {
                        ino: e.ino,
                        mode: e.kind,
                        ..Attr::default()
                    };
                    add(0, next, &e.name, Duration::ZERO, &a)
                }
            };
            if full {
                break;
            }
        }
        Ok(())
    }
}

impl OvlFs {
    /// Asks for FUSE over io_uring if the kernel offers it and the rings can be set up;
    /// their threads start at `SessionLink::attach`.
    fn start_uring(&self, config: &mut KernelConfig) {
        if !config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING)
        {
            if self.uring.mode == UringMode::On {
                log::warn!(
                    "the kernel does not offer FUSE over io_uring \
                     (/sys/module/fuse/parameters/enable_uring is N); serving /dev/fuse"
                );
            }
            return;
        }
        match crate::fuse_uring::prepare(MAX_WRITE as usize) {
            Ok(entries) => {
                if config
                    .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                    .is_ok()
                {
                    *self.ring.lock() = entries;
                }
            }
            Err(e) => log::warn!("cannot set up io_uring ({e}); serving /dev/fuse"),
        }
    }
}

impl Filesystem for OvlFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = [
            InitFlags::FUSE_PARALLEL_DIROPS,
            // Listings carry each entry's attributes, so `ls -l`, find, du and tar cost one
            // request per chunk instead of a lookup per name. Not READDIRPLUS_AUTO: tree
            // walkers read a whole directory before they stat, so the kernel's heuristic
            // would ask for attributes only in the first chunk. The price is paid by pure
            // name listings (`ls -f`) of cold directories.
            InitFlags::FUSE_DO_READDIRPLUS,
            // ACLs are checked and inherited as on the kernel overlay; with them, the umask
            // comes to us and we apply it where no default ACL does.
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // We clear set-ID bits ourselves on write, truncate and O_TRUNC by callers
            // other than root (`kill_suid_sgid`), so the kernel need not ask for the
            // attributes before each chown, and marks inodes it has checked for
            // security.capability so that later writes skip that GETXATTR. A passthrough
            // write to a file made set-user-ID while open still clears the bit: the
            // kernel's privilege check then sends an empty SETATTR, which we carry out as
            // chown(-1, -1) unless the caller is root and not in chown(2) (semantics test,
            // against the kernel; `is_privileged_write_check`).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // No FUSE_CACHE_SYMLINKS: following a symlink must reach us, so that an upper
            // symlink's atime moves as on kernel overlayfs.
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
            // File handles only for identifying files (fanotify's FIDs, AT_HANDLE_FID), as
            // on the kernel overlay without nfs_export: a plain name_to_handle_at fails
            // with EOPNOTSUPP. Otherwise the kernel hands out handles that open_by_handle_at
            // can resolve only while it still holds the inode (ESTALE after that), and
            // NFS would export the mount with handles that go stale.
            InitFlags::FUSE_NO_EXPORT_SUPPORT,
        ];
        // The kernel does reads and writes of upper files itself on the upper file (FUSE
        // passthrough; only for root of the initial user namespace). Stack depth 1: the
        // backing files may not be on another stacking filesystem, and a kernel overlay
        // can still be stacked on us.
        if self.data.passthrough
            && crate::sys::process::may_register_backing_files()
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.pt.enable();
        } else if self.data.writeback
            && self.ovl.has_upper()
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok()
        {
            // Without passthrough, each write(2) would be a round trip: the kernel keeps
            // written pages and sends them in batches of up to max_write. It then keeps
            // size, mtime and ctime of regular files itself, and sends the times back
            // with its write-back.
            self.ovl.set_write_cache();
        }
        // Files opened for direct I/O (where the write cache cannot serve, see
        // `Overlay::room_for_cached_writes`; empty upper files whose next read moves their
        // atime, see `Overlay::page_cache`) may still be mapped shared.
        match config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) {
            Ok(()) => self.ovl.set_direct_io_maps(),
            Err(missing) => debug!("kernel lacks FUSE capability {missing:?}"),
        }
        let skip = !self.ovl.wants_opendir()
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
                .is_ok();
        self.skip_opendir.store(skip, Ordering::Relaxed);
        for f in want {
            if f == InitFlags::FUSE_POSIX_ACL && self.ovl.cfg.noacl {
                continue;
            }
            // With the writeback cache the kernel keeps the file size itself, and after an
            // OPEN that truncated it drops the lock and later sets its size to 0 again
            // without asking; a write or truncate by another process in between reaches
            // the upper file but not the kernel's size (the mount then shows 0 bytes where
            // the file holds data, which comes back after a remount). Without atomic
            // O_TRUNC the kernel truncates with a SETATTR under the file's lock.
            if f == InitFlags::FUSE_ATOMIC_O_TRUNC && self.ovl.writes_cached() {
                continue;
            }
            if let Err(missing) = config.add_capabilities(f) {
                debug!("kernel lacks FUSE capability {missing:?}");
            }
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(readahead());
        let _ = config.set_max_background(64);
        // Requests over io_uring: one queue per CPU, served by threads on that CPU, so a
        // request is answered without waking a thread elsewhere (the kernel offers it only
        // where /sys/module/fuse/parameters/enable_uring is set).
        if self.uring.mode != UringMode::Off {
            self.start_uring(config);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if self.debug {
            debug!("destroy: {} nodes live", self.ovl.nodes.live_count());
        }
        // What removals left in the work directory goes before the daemon does (see
        // `ovl::reaper`).
        self.ovl.finish_removals();
        if let Err(e) = self.ovl.sync_upper() {
            log::warn!("cannot write back the upper filesystem at unmount: {e:?}");
        }
        // The session is over. If the kernel ended the connection (umount, fusermount3 -u,
        // an abort), leave now: fuser 0.18 would next unmount the mount point by its path,
        // and a new mount made there meanwhile (a container restarted at once) would be
        // the one unmounted. When the connection is still up, fuser's unmount is right.
        if crate::sys::process::fuse_connection_gone() {
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{read_size, ReadSize, FREE_FOR_READS_UP_TO};
    use crate::fuse_wire::op;

    /// `fuse_read_in` with `size` at byte 16.
    fn read_in(size: u32) -> [u8; 40] {
        let mut a = [0u8; 40];
        a[16..20].copy_from_slice(&size.to_ne_bytes());
        a
    }

    #[test]
    fn small_reads_are_reads_up_to_the_limit_and_bigger_ones_big() {
        let limit = FREE_FOR_READS_UP_TO as u32;
        assert_eq!(read_size(op::READ, &read_in(4096)), ReadSize::Small);
        assert_eq!(read_size(op::READ, &read_in(limit)), ReadSize::Small);
        assert_eq!(read_size(op::READ, &read_in(limit + 4096)), ReadSize::Big);
        assert_eq!(read_size(op::WRITE, &read_in(4096)), ReadSize::NotRead);
        assert_eq!(
            read_size(op::READ, &read_in(4096)[..16]),
            ReadSize::NotRead,
            "truncated arguments"
        );
    }
}
