//! The overlay core: a union of one writable upper layer over read-only lower layers, with
//! kernel overlayfs semantics. It knows nothing of FUSE; `crate::fuse` translates requests
//! into the calls on [`Overlay`] and the results back into replies.
//!
//! One file per concern, after the kernel's `fs/overlayfs`:
//! `params` (mount options), `layers` (opening and checking layers, the workdir),
//! `node` (merged objects and the node table), `namei` (lookup), `readdir` (merging a
//! directory's layers, readdir), `listing` (a merged directory's entries in readdir order
//! and its offsets), `statahead` (warming the layers' caches for READDIRPLUS, and what its
//! replies carry), `copy_up`, `dir` (create/remove/rename), `inode` (attributes), `file`
//! (open files and I/O), `xattr`, `whiteout` (on-disk formats), `ino` (inode numbers),
//! `ownership` (id mapping, squashing and owners kept in an xattr, for container engines),
//! `reaper` (removing directories of whiteouts that removals swap out, after the reply),
//! `interrupt` (a long copy-up giving up when its caller is being killed).

pub mod copy_up;
pub mod dir;
pub mod file;
pub mod ino;
pub mod inode;
pub mod interrupt;
pub mod layers;
pub mod listing;
pub mod namei;
pub mod node;
pub mod ownership;
pub mod params;
pub mod readdir;
pub mod reaper;
pub mod statahead;
pub mod whiteout;
pub mod xattr;

#[cfg(test)]
mod tests;

pub use crate::sys::{Errno, SysResult};
pub use inode::{Attr, SetAttr};
pub use layers::{LayerId, Layers, UPPER};
pub use node::{Node, NodeId, ROOT_ID};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Hash state of the daemon's maps: foldhash. SipHash, the standard one, took about a
/// tenth of the daemon's CPU listing a 1M-entry directory (a name is hashed several times
/// on its way into the merged listing and the node maps). foldhash seeds each map from
/// address-space randomisation and the clock, so names chosen to collide cannot simply be
/// computed in advance; it does not claim more than that, which is the trade made here.
pub type HashState = foldhash::fast::RandomState;
pub type HashMap<K, V> = std::collections::HashMap<K, V, HashState>;
pub type HashSet<T> = std::collections::HashSet<T, HashState>;
pub type DashMap<K, V> = dashmap::DashMap<K, V, HashState>;

/// The ioctl (`_IO('o', 0x53)`, no argument) on a directory of the mount that makes the
/// daemon write the upper filesystem back ([`Overlay::sync_upper`]).
pub const SYNC_UPPER_IOCTL: u32 = (b'o' as u32) << 8 | 0x53;

/// Who is asking: the credentials of the process behind a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's umask, for creations; applied by us unless the parent directory has a
    /// default ACL (POSIX: the ACL replaces the umask).
    pub umask: u32,
}

impl Ctx {
    /// Whether the caller is root or a member of group `gid` (its own or a supplementary
    /// one): the test the VFS makes before it keeps a set-group-ID bit.
    pub fn in_group_or_root(&self, gid: u32) -> bool {
        self.uid == 0
            || gid == self.gid
            || crate::sys::caller_status::groups(self.pid).is_some_and(|g| g.contains(&gid))
    }
}

/// Behaviour switches that come from mount options.
#[derive(Clone, Debug)]
pub struct Config {
    /// fsync data on copy-up and forward fsync calls; off with `fsync=0` / `volatile`.
    pub fsync: bool,
    /// Rename directories with lower parts by writing a redirect (`redirect_dir=on`).
    pub redirect_dir: bool,
    /// When reads move atime (from the mount options; `Never` on a read-only mount).
    pub atime: params::Atime,
    /// Id mapping, squashing and owner/mode xattrs (container engines' options).
    pub own: ownership::Ownership,
    /// Directories report one link (`static_nlink`).
    pub static_nlink: bool,
    /// POSIX ACLs refused (`noacl`).
    pub noacl: bool,
    /// Extended attributes refused (`noxattrs=1`).
    pub noxattrs: bool,
    /// When READDIRPLUS shares its stats with helper threads (`statahead=`).
    pub statahead: statahead::Mode,
    /// What READDIRPLUS replies carry for their entries (`listattrs=`).
    pub listattrs: statahead::ListAttrs,
    /// Mounted `ro` with an upper layer: housekeeping writes (dropping a stale impure
    /// mark) are left out, as the kernel leaves them out on a read-only mount.
    pub read_only: bool,
    /// Birth times are answered (`btime=1`).
    pub btime: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fsync: true,
            redirect_dir: true,
            atime: params::Atime::Relative,
            own: ownership::Ownership::default(),
            static_nlink: false,
            noacl: false,
            noxattrs: false,
            statahead: statahead::Mode::Auto,
            listattrs: statahead::ListAttrs::Auto,
            read_only: false,
            btime: false,
        }
    }
}

/// The mounted overlay: layers, live nodes, open handles.
pub struct Overlay {
    pub layers: Layers,
    pub nodes: node::NodeTable,
    pub cfg: Config,
    /// Tells the kernel that its cached attributes of a node are stale (set by the adapter).
    pub attr_changed: std::sync::OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
    /// Tells the kernel to drop the pages it caches of a file, waiting a bounded time for
    /// that (set by the adapter).
    pub data_changed: std::sync::OnceLock<Box<dyn Fn(u64) + Send + Sync>>,
    /// Directories whose merged listing is built, with its size, least recently built
    /// first; and the total of those sizes.
    merged_lru: parking_lot::Mutex<(lru::LruCache<NodeId, usize>, usize)>,
    files: DashMap<u64, Arc<file::FileHandle>>,
    statahead: statahead::StatAhead,
    next_fh: AtomicU64,
    /// The kernel keeps written data in its page cache and writes it back later, at any
    /// offset, through any writable open file of the inode (set by the adapter at INIT
    /// when it asks for the FUSE writeback cache; see `file::write_cache_flags`).
    write_cache: std::sync::atomic::AtomicBool,
    /// The kernel lets files open for direct I/O be mapped shared (FUSE_DIRECT_IO_ALLOW_MMAP,
    /// Linux 6.6; set by the adapter at INIT): only then may an open that needs no direct
    /// I/O be given it (see `file::page_cache`).
    direct_io_maps: std::sync::atomic::AtomicBool,
    /// Nodes whose write-back failed (full disk, quota), with the error: the next write(2)
    /// to them fails with it (see `file::write`).
    write_back_errors: DashMap<u64, Errno>,
    /// Removes the directories of whiteouts that removals swapped into the work directory,
    /// after their reply.
    reaper: reaper::Reaper,
    /// Requests the kernel interrupted (set by the adapter), for copy-ups to give up when
    /// their caller is being killed.
    pub interrupts: interrupt::Interrupts,
}

impl Overlay {
    pub fn new(layers: Layers, cfg: Config) -> SysResult<Overlay> {
        let nodes = node::NodeTable::new(&layers)?;
        let statahead = statahead::StatAhead::new(cfg.statahead);
        let reaper = reaper::Reaper::new(layers.work().ok());
        Ok(Overlay {
            layers,
            nodes,
            cfg,
            attr_changed: std::sync::OnceLock::new(),
            data_changed: std::sync::OnceLock::new(),
            merged_lru: parking_lot::Mutex::new((lru::LruCache::unbounded(), 0)),
            files: DashMap::default(),
            statahead,
            next_fh: AtomicU64::new(1),
            write_cache: std::sync::atomic::AtomicBool::new(false),
            direct_io_maps: std::sync::atomic::AtomicBool::new(false),
            write_back_errors: DashMap::default(),
            reaper,
            interrupts: interrupt::Interrupts::default(),
        })
    }

    /// The session is over: waits (a while) until what removals left in the work directory
    /// is gone.
    pub fn finish_removals(&self) {
        self.reaper.finish();
    }

    /// Writes the upper filesystem back (syncfs), as the kernel overlay does at unmount
    /// and when remounted read-only (its `sync_fs`); nothing when mounted `volatile` or
    /// `fsync=0`. Neither event, nor a `syncfs` on the mount, reaches a FUSE daemon (the
    /// kernel's FUSE client sends FUSE_SYNCFS to virtiofs only), so the daemon calls this
    /// when its session ends, and `ovlfuse -o remount,ro` asks for it with
    /// [`SYNC_UPPER_IOCTL`] on the mount's root.
    pub fn sync_upper(&self) -> SysResult<()> {
        use crate::sys::fs;
        use std::os::fd::AsFd;
        let Some(upper) = &self.layers.upper else {
            return Ok(());
        };
        if !self.cfg.fsync {
            return Ok(());
        }
        // The layer's own descriptor is O_PATH, which syncfs refuses.
        let dot = std::ffi::OsStr::new(".");
        let dir = fs::openat(upper.fd(), dot, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        fs::syncfs(dir.as_fd())
    }

    /// From now on the kernel caches writes (FUSE writeback cache): open files so that
    /// its write-back can use any of them.
    pub fn set_write_cache(&self) {
        self.write_cache.store(true, Ordering::Relaxed);
    }

    /// From now on files open for direct I/O may be mapped shared (see `direct_io_maps`).
    pub fn set_direct_io_maps(&self) {
        self.direct_io_maps.store(true, Ordering::Relaxed);
    }

    /// Whether the kernel caches writes (see `set_write_cache`).
    pub fn writes_cached(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    pub fn has_upper(&self) -> bool {
        self.layers.upper.is_some()
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Fails with EROFS when there is no upper layer to write to.
    pub fn require_upper(&self) -> SysResult<()> {
        if self.layers.upper.is_some() {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }

    /// Our own change altered attributes the kernel may hold in its cache.
    pub fn notify_attr_changed(&self, id: NodeId) {
        if let Some(f) = self.attr_changed.get() {
            f(id);
        }
    }

    /// The kernel's cached pages of file `id` no longer show what reads should reach.
    pub fn notify_data_changed(&self, id: NodeId) {
        if let Some(f) = self.data_changed.get() {
            f(id);
        }
    }

    pub fn node(&self, id: NodeId) -> SysResult<Arc<Node>> {
        self.nodes.get(id)
    }
}

/// Rejects names that cannot be created: too long, or reserved for layer markers.
pub fn check_new_name(name: &std::ffi::OsStr) -> SysResult<()> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}
