//! FUSE passthrough bookkeeping (adapter side): which open files the kernel reads and
//! writes on a backing file by itself, without a request to us; and what the mount asked
//! for instead where the kernel refuses backing files (`DataPath`: its writeback cache).
//!
//! The kernel puts each inode in one I/O mode while it has open files: cached (requests
//! to us) or passthrough (one backing file). An open in the other mode fails with EIO, so
//! the mode of a node's first open decides its later opens until all are closed. The core
//! says which opens may use passthrough at all (`Overlay::passthrough_fd`); the kernel
//! refuses backing files to an unprivileged daemon, after which passthrough stays off.
//!
//! A passthrough file opened read-write may be mapped shared, and then written by page
//! faults on the backing file: its mtime and ctime move, and no request tells us or the
//! kernel's FUSE inode (a write(2) does: the kernel marks the times stale itself). So
//! while a node has such an open file, its attributes go out with no lifetime and every
//! stat reaches us (`attrs_volatile`), as the kernel overlay reads the upper inode's
//! times on each stat.

use crate::ovl::DashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// How file data may travel, as the mount options ask (`passthrough=`, `writeback=`);
/// INIT settles what the kernel and our privileges allow. Passthrough and the writeback
/// cache exclude each other: a passthrough file has no page cache of its own.
#[derive(Clone, Copy, Debug)]
pub struct DataPath {
    pub passthrough: bool,
    pub writeback: bool,
}

/// A backing file registered with the kernel (FUSE_DEV_IOC_BACKING_OPEN), closed again
/// when the last open file using it is released. Ours rather than fuser's `BackingId`,
/// because replies on the io_uring transport (`fuse_uring`) need one too.
#[derive(Debug)]
pub struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

/// _IOW(229, 2, u32): FUSE_DEV_IOC_BACKING_CLOSE.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

impl Backing {
    /// Registers `fd` through the FUSE device `dev`.
    pub fn open(dev: &Arc<OwnedFd>, fd: BorrowedFd<'_>) -> std::io::Result<Backing> {
        let id = fuser::BackingId::create_raw(dev.as_fd(), fd)?;
        Ok(Backing {
            dev: dev.clone(),
            id,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: the ioctl reads one u32 from a live local.
        let r = unsafe {
            libc::ioctl(
                self.dev.as_raw_fd(),
                FUSE_DEV_IOC_BACKING_CLOSE as _,
                &self.id as *const u32,
            )
        };
        if r < 0 {
            log::debug!(
                "closing backing id {}: {}",
                self.id,
                std::io::Error::last_os_error()
            );
        }
    }
}

#[derive(Default)]
struct NodeIo {
    /// Open files in cached mode.
    cached: u32,
    /// The backing file of the open files in passthrough mode.
    backing: Option<Arc<Backing>>,
    passthrough: u32,
    /// Of those, the ones opened read-write (which may be mapped shared and writable).
    mappable: u32,
}

#[derive(Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    nodes: DashMap<u64, NodeIo>,
    /// Open file handle -> its node, whether it is in passthrough mode, and whether it
    /// counts in its node's `mappable`.
    files: DashMap<u64, (u64, bool, bool)>,
    /// Nodes whose `mappable` is not 0: when none, attribute replies skip the lookup.
    volatile_nodes: AtomicUsize,
}

impl Passthrough {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Decides the mode of a new open file `fh` of `node`: its backing file for
    /// passthrough, or `None` for cached. `read_write`: it was opened read-write (see the
    /// module doc). `candidate` gives the backing fd if the core
    /// allows passthrough (asked only when the node could start passthrough); it is
    /// registered through the FUSE device `dev`. With passthrough off nothing is tracked:
    /// no inode is in passthrough mode then (it is turned off only when the first
    /// registration fails).
    pub fn open<C>(
        &self,
        fh: u64,
        node: u64,
        read_write: bool,
        candidate: C,
        dev: Option<&Arc<OwnedFd>>,
    ) -> Option<Arc<Backing>>
    where
        C: FnOnce() -> Option<Arc<OwnedFd>>,
    {
        let dev = match dev {
            Some(d) if self.enabled.load(Ordering::Relaxed) => d,
            _ => return None,
        };
        let mut io = self.nodes.entry(node).or_default();
        let backing = match &io.backing {
            // The inode is in passthrough mode: every open joins it.
            Some(b) => Some(b.clone()),
            None if io.cached == 0 => {
                candidate().and_then(|fd| match Backing::open(dev, fd.as_fd()) {
                    Ok(b) => Some(Arc::new(b)),
                    Err(e) => {
                        if e.raw_os_error() == Some(libc::EPERM) {
                            log::info!(
                                "FUSE passthrough refused ({e}); all I/O goes through the daemon"
                            );
                            self.enabled.store(false, Ordering::Relaxed);
                        } else {
                            log::debug!("no passthrough for node {node}: {e}");
                        }
                        None
                    }
                })
            }
            None => None,
        };
        let mappable = read_write && backing.is_some();
        match &backing {
            Some(b) => {
                io.backing = Some(b.clone());
                io.passthrough += 1;
                if mappable {
                    io.mappable += 1;
                    if io.mappable == 1 {
                        self.volatile_nodes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => io.cached += 1,
        }
        drop(io);
        self.files.insert(fh, (node, backing.is_some(), mappable));
        backing
    }

    /// Whether `node`'s attributes may change without a request: it has a passthrough file
    /// open read-write (see the module doc).
    pub fn attrs_volatile(&self, node: u64) -> bool {
        self.volatile_nodes.load(Ordering::Relaxed) > 0
            && self.nodes.get(&node).is_some_and(|io| io.mappable > 0)
    }

    /// The open file `fh` is released.
    pub fn release(&self, fh: u64) {
        let Some((_, (node, pass, mappable))) = self.files.remove(&fh) else {
            return;
        };
        let mut gone = false;
        if let Some(mut io) = self.nodes.get_mut(&node) {
            if mappable && io.mappable > 0 {
                io.mappable -= 1;
                if io.mappable == 0 {
                    self.volatile_nodes.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if pass {
                io.passthrough = io.passthrough.saturating_sub(1);
                if io.passthrough == 0 {
                    io.backing = None;
                }
            } else {
                io.cached = io.cached.saturating_sub(1);
            }
            gone = io.passthrough == 0 && io.cached == 0;
        }
        if gone {
            self.nodes
                .remove_if(&node, |_, io| io.passthrough == 0 && io.cached == 0);
        }
    }
}
