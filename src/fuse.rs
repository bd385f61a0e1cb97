//! The FUSE adapter: turns `fuser` requests into calls on the overlay core and the core's
//! results into replies. It holds no overlay logic, and no `fuser` type goes below it.

use crate::fuse_uring::{UringConfig, UringMode};
use crate::ovl::file::PageCache;
use crate::ovl::inode::{SetAttr, Time, TimeSet};
use crate::ovl::listing::DirReader;
use crate::ovl::statahead::ListAttrs;
use crate::ovl::{Attr, Ctx, Errno, Overlay};
use crate::passthrough::Backing;
use fuser::{
    AccessFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::debug;
use std::cell::Cell;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The overlay as a `fuser` filesystem. Its state is shared with the io_uring transport
/// (`fuse_uring`), which serves the same requests on other threads once the kernel moves
/// them there.
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
    /// FORGET and INTERRUPT (see `pause_before_forgets`).
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
    /// Who may use the mount, checked by fuser on /dev/fuse and by us on the ring.
    pub(crate) acl: fuser::SessionACL,
    /// The mount's owner for that check (fuser's too: our effective uid at start).
    pub(crate) owner: u32,
    /// Which CPU the /dev/fuse threads run on (`follow_caller=`).
    follow: crate::devfuse_cpu::Follow,
}

impl std::ops::Deref for OvlFs {
    type Target = Adapter;
    fn deref(&self) -> &Adapter {
        &self.0
    }
}

/// Who encodes a reply: fuser (requests over /dev/fuse) or our own wire code (io_uring).
/// fuser sends an entry's `attr.ino` as its node id and cannot send a READDIRPLUS line
/// without attributes; ours sends node id, st_ino and attributes as it is given them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    Fuser,
    Own,
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
}

/// The largest READ whose serving thread, pinned to its caller's CPU, lets itself be
/// woken elsewhere when the read waits for a disk (see `fuse_uring::Placement`): random
/// reads come as single pages, where that wake-up is a good part of the wait; a big
/// read-ahead waits long anyway, and moving back costs its thread a migration (cold
/// sequential reads over /dev/fuse, 13 rounds: 0.88 s pinned, 1.18 s let go at every
/// read).
pub const FREE_FOR_READS_UP_TO: usize = 64 << 10;

/// Read-ahead asked for at init; the daemon raises the mount's window to it after mounting
/// (see `sys::process::raise_readahead`).
pub const MAX_READAHEAD: u32 = 1 << 20;

/// The largest WRITE request asked for at init.
const MAX_WRITE: u32 = 1 << 20;

/// How long a /dev/fuse thread lets FORGETs pile up once the rings serve requests
/// (`Adapter::pause_before_forgets`). 0.5 to 20 ms measured the same; each pause delays
/// only the release of forgotten nodes.
const FORGET_PAUSE: Duration = Duration::from_millis(2);

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

/// Open flags allowed beside FOPEN_PASSTHROUGH (the kernel fails the open with EIO for
/// any other, page-cache ones included: the backing file has its own cache).
pub(crate) const PASSTHROUGH_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

pub(crate) fn err(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

fn ctx_umask(req: &Request, umask: u32) -> Ctx {
    Ctx { umask, ..ctx(req) }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn system_time(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::new(t.sec.unsigned_abs(), 0) + Duration::new(0, t.nsec)
    }
}

fn time_of(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Time { sec, nsec }
        }
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        // Linux's FUSE has no birth time; fuser sends it to macOS only.
        crtime: UNIX_EPOCH,
        kind: kind_of(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(s) => TimeSet::At(time_of(s)),
    })
}

impl Adapter {
    /// Called on a /dev/fuse thread for each node of a FORGET or BATCH_FORGET read
    /// (`unique` is the read's request id); pauses once per read, before its first node.
    ///
    /// Why: once the rings serve every other request, each FORGET the kernel queues wakes
    /// a /dev/fuse thread sleeping in read(2), and the caller whose unlink evicted the
    /// inode pays for that cross-CPU wake-up (here a VM exit). A thread that pauses is
    /// not waiting, so the kernel only queues the FORGETs, and the thread's next read
    /// takes all of them as one BATCH_FORGET: rm -rf of 10k lower files went from
    /// 0.35-0.41 s to 0.27-0.29 s, with 30% fewer context switches. Only then: before the
    /// rings serve (or without them) a pausing thread would hold up real requests.
    fn pause_before_forgets(&self, unique: u64) {
        thread_local!(static LAST_READ: Cell<u64> = const { Cell::new(0) });
        let first_of_read = LAST_READ.with(|l| l.replace(unique)) != unique;
        if first_of_read && self.ring_live.load(Ordering::Relaxed) {
            std::thread::sleep(FORGET_PAUSE);
        }
    }

    /// An entry's lifetimes and attributes. Over fuser, when a node's id is not its st_ino,
    /// the attributes go out with no lifetime, so the kernel's next stat asks getattr, whose
    /// reply carries the real st_ino (fuser sends `attr.ino` as the node id). Our own wire
    /// code sends both, so such an entry keeps its st_ino and its lifetime there.
    /// Returns (entry lifetime, attribute lifetime, attributes).
    pub(crate) fn entry_parts(&self, id: u64, a: &Attr, wire: Wire) -> (Duration, Duration, Attr) {
        let mut a = *a;
        if id == a.ino || wire == Wire::Own {
            (self.ttl, self.attr_ttl(id), a)
        } else {
            a.ino = id;
            (self.ttl, Duration::ZERO, a)
        }
    }

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
    pub(crate) fn backing(&self, fh: u64, node: u64) -> Option<Arc<Backing>> {
        let read_write = self.ovl.handle_read_write(fh);
        // Only the first such open of a node needs to tell the kernel; later ones find
        // its attributes already going out with no lifetime.
        let was_volatile = read_write && self.pt.attrs_volatile(node);
        let b = self.pt.open(
            fh,
            node,
            read_write,
            || self.ovl.passthrough_fd(fh),
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

    /// OPENDIR's open flags, or the error to answer.
    pub(crate) fn opendir_flags(&self, ino: u64) -> Result<FopenFlags, fuser::Errno> {
        // Once refused, the kernel opens directories without asking us, and keeps
        // their listings cached (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR): one round trip less
        // per directory listed.
        if self.skip_opendir.load(Ordering::Relaxed) {
            return Err(fuser::Errno::ENOSYS);
        }
        self.ovl.opendir(ino).map_err(err)?;
        Ok(if self.ovl.cache_listing(ino) {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        })
    }

    /// The lines of a READDIRPLUS reply of at most `room` bytes from `offset`, handed to
    /// `add` with the node id, next offset, name, entry lifetime and attributes (see
    /// `entry_parts`) of each, until it says the buffer is full. Where our own wire code
    /// sends the lines, which can send a line without attributes, such a line has node
    /// id 0 and only the type and inode number.
    pub(crate) fn fill_dir_plus(
        &self,
        ino: u64,
        offset: u64,
        room: usize,
        wire: Wire,
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
        let attrs = lookups.with_attributes(&lines, offset, wire == Wire::Own);
        for (next, e) in lines.into_iter().chain(list) {
            if !attrs || DirReader::is_dot(next) {
                // Node id 0: a plain directory entry, which the kernel links to nothing (it
                // links no inode for `.` and `..` either, whatever they carry).
                let a = Attr {
                    ino: e.ino,
                    mode: e.kind,
                    ..Attr::default()
                };
                if add(0, next, &e.name, Duration::ZERO, &a) {
                    break;
                }
                continue;
            }
            // Each entry given with a node counts as a lookup; one that does not fit in the
            // buffer is forgotten again.
            let (id, a) = match lookups.lookup(&e.name) {
                Ok((n, a)) => (n.id, a),
                // Gone since the line was copied out: skip it, as a later readdir would.
                Err(_) => continue,
            };
            // One lifetime for both here: the attributes'.
            let (_, ttl, a) = self.entry_parts(id, &a, wire);
            if add(id, next, &e.name, ttl, &a) {
                self.ovl.forget(id, 1);
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

    /// fuser sends `attr.ino` as the entry's node id. When a node's id is not its st_ino,
    /// the attributes go out with no lifetime, so the kernel's next stat asks getattr,
    /// whose reply carries the real st_ino.
    fn reply_entry(&self, reply: ReplyEntry, id: u64, a: &Attr) {
        let (entry_ttl, attr_ttl, a) = self.entry_parts(id, a, Wire::Fuser);
        reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(&a), Generation(0));
    }

    fn xattr_reply(reply: ReplyXattr, size: u32, data: Vec<u8>) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(fuser::Errno::from_i32(libc::ERANGE));
        } else {
            reply.data(&data);
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
            // chown(-1, -1) (semantics test, against the kernel).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // No FUSE_CACHE_SYMLINKS: following a symlink must reach us, so that an upper
            // symlink's atime moves as on kernel overlayfs.
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
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
            // Files opened for direct I/O where that cache cannot serve (see
            // `Overlay::room_for_cached_writes`) may still be mapped shared.
            if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP) {
                debug!("kernel lacks FUSE capability {missing:?}");
            }
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
            if let Err(missing) = config.add_capabilities(f) {
                debug!("kernel lacks FUSE capability {missing:?}");
            }
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let _ = config.set_max_background(64);
        // Requests over io_uring: one queue per CPU, served by threads on that CPU, so a
        // request is answered without waking a thread elsewhere (the kernel offers it only
        // where /sys/module/fuse/parameters/enable_uring is set).
        if self.uring.mode != UringMode::Off {
            self.start_uring(config);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.follow.serving(req.pid());
        match self.ovl.lookup(parent.0, name) {
            Ok((n, a)) => self.reply_entry(reply, n.id, &a),
            // A negative entry (node id 0) with a lifetime: the kernel remembers the name is
            // absent, so repeated probes (PATH and include-path searches) stay in the kernel.
            // Only the kernel itself creates names we show, and it updates its own cache
            // when it does.
            Err(Errno::ENOENT) => {
                let mut fa = file_attr(&Attr::default());
                fa.ino = INodeNo(0);
                reply.entry(&self.ttl, &fa, Generation(0));
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        self.pause_before_forgets(req.unique().0);
        self.ovl.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.follow.serving(req.pid());
        match self.ovl.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.follow.serving(req.pid());
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
            ctime: ctime.map(time_of),
            fh: fh.map(|f| f.0),
        };
        match self.ovl.setattr(&ctx(req), ino.0, &set) {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.follow.serving(req.pid());
        match self.ovl.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.follow.serving(req.pid());
        match self
            .ovl
            .mknod(&ctx_umask(req, umask), parent.0, name, mode, rdev as u64)
        {
            Ok((n, a)) => self.reply_entry(reply, n.id, &a),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.mkdir(&ctx_umask(req, umask), parent.0, name, mode) {
            Ok((n, a)) => self.reply_entry(reply, n.id, &a),
            Err(e) => reply.error(err(e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.follow.serving(req.pid());
        match self.ovl.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.follow.serving(req.pid());
        match self.ovl.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.follow.serving(req.pid());
        match self
            .ovl
            .symlink(&ctx(req), parent.0, link_name, target.as_os_str())
        {
            Ok((n, a)) => self.reply_entry(reply, n.id, &a),
            Err(e) => reply.error(err(e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.follow.serving(req.pid());
        match self
            .ovl
            .rename(parent.0, name, newparent.0, newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.link(&ctx(req), ino.0, newparent.0, newname) {
            Ok((n, a)) => self.reply_entry(reply, n.id, &a),
            Err(e) => reply.error(err(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.follow.serving(req.pid());
        match self.ovl.open(&ctx(req), ino.0, flags.0) {
            Ok(fh) => match self.backing(fh, ino.0) {
                Some(b) => {
                    // SAFETY: `b` keeps the id open while the file is; `into_raw` stops
                    // fuser from closing it again.
                    let id = unsafe { reply.wrap_backing(b.id()) };
                    reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, &id);
                    let _ = id.into_raw();
                }
                None => reply.opened(FileHandle(fh), self.open_flags(fh)),
            },
            Err(e) => reply.error(err(e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.follow.serving(req.pid());
        thread_local! {
            // A fresh zeroed megabyte per request cost more than the copy it holds.
            static BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
        }
        crate::sys::with_scratch(&BUF, size as usize, |buf| {
            let mut free = || self.follow.free();
            let before_wait: Option<&mut dyn FnMut()> =
                (buf.len() <= FREE_FOR_READS_UP_TO && self.follow.pinned()).then_some(&mut free);
            match self.ovl.read_into(fh.0, offset, buf, before_wait) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.follow.serving(req.pid());
        let write_back = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        match self.ovl.write(&ctx(req), fh.0, offset, data, write_back) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.follow.serving(req.pid());
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.pt.release(fh.0);
        self.ovl.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.follow.serving(req.pid());
        match self.opendir_flags(ino.0) {
            Ok(flags) => reply.opened(FileHandle(0), flags),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.read_dir(ino.0, offset) {
            Ok(list) => {
                for (next, e) in list {
                    if reply.add(INodeNo(e.ino), next, kind_of(e.kind), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.follow.serving(req.pid());
        // fuser does not tell the size asked for; the kernel asks for what the caller's
        // getdents buffer holds, 32 KiB from glibc's readdir. And it sends each line's
        // inode number as its node id, so every line here carries a node and attributes.
        if self.ovl.cfg.listattrs == ListAttrs::Off {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                log::warn!("listattrs=off needs FUSE over io_uring: listings over /dev/fuse carry attributes")
            });
        }
        let r = self.fill_dir_plus(
            ino.0,
            offset,
            32 << 10,
            Wire::Fuser,
            |id, next, name, ttl, a| {
                reply.add(INodeNo(id), next, name, &ttl, &file_attr(a), Generation(0))
            },
        );
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.fsyncdir(ino.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.follow.serving(req.pid());
        match self.ovl.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.setxattr(&ctx(req), ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.follow.serving(req.pid());
        match self.ovl.getxattr(ino.0, name) {
            Ok(v) => Self::xattr_reply(reply, size, v),
            Err(e) => reply.error(err(e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.follow.serving(req.pid());
        match self.ovl.listxattr(ino.0) {
            Ok(v) => Self::xattr_reply(reply, size, v),
            Err(e) => reply.error(err(e)),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.follow.serving(req.pid());
        match self.ovl.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.follow.serving(req.pid());
        match self.ovl.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.follow.serving(req.pid());
        match self
            .ovl
            .create(&ctx_umask(req, umask), parent.0, name, mode, flags)
        {
            Ok((n, a, fh)) => {
                let backing = self.backing(fh, n.id);
                // One lifetime for entry and attributes: the attributes'.
                let (_, ttl, a) = self.entry_parts(n.id, &a, Wire::Fuser);
                let fa = file_attr(&a);
                match backing {
                    Some(b) => {
                        // SAFETY: as in `open`.
                        let id = unsafe { reply.wrap_backing(b.id()) };
                        reply.created_passthrough(
                            &ttl,
                            &fa,
                            Generation(0),
                            FileHandle(fh),
                            PASSTHROUGH_FLAGS,
                            &id,
                        );
                        let _ = id.into_raw();
                    }
                    None => reply.created(
                        &ttl,
                        &fa,
                        Generation(0),
                        FileHandle(fh),
                        self.open_flags(fh),
                    ),
                }
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.fallocate(&ctx(req), fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn lseek(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(err(e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.follow.serving(req.pid());
        match self
            .ovl
            .copy_file_range(&ctx(req), fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(err(e)),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.follow.serving(req.pid());
        match self.ovl.attr_ioctl(ino.0, cmd, in_data, out_size as usize) {
            Ok(out) => reply.ioctl(0, &out[..out.len().min(out_size as usize)]),
            Err(e) => reply.error(err(e)),
        }
    }

    /// Files of the mount are always ready, as on the layers' filesystems. ENOSYS, without
    /// fuser's "Not Implemented" warning, makes the kernel answer polls itself from then on
    /// (ready for reading and writing) and never ask again.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(fuser::Errno::from_i32(libc::ENOSYS));
    }

    fn destroy(&mut self) {
        if self.debug {
            debug!("destroy: {} nodes live", self.ovl.nodes.live_count());
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
