//! FUSE passthrough bookkeeping (adapter side): which open files the kernel reads and
//! writes on a backing file by itself, without a request to us.
//!
//! The kernel puts each inode in one I/O mode while it has open files: cached (requests
//! to us) or passthrough (one backing file). An open in the other mode fails with EIO, so
//! the mode of a node's first open decides its later opens until all are closed. The core
//! says which opens may use passthrough at all (`Overlay::passthrough_fd`); the kernel
//! refuses backing files to an unprivileged daemon, after which passthrough stays off.

use crate::ovl::DashMap;
use fuser::BackingId;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct NodeIo {
    /// Open files in cached mode.
    cached: u32,
    /// The backing file of the open files in passthrough mode.
    backing: Option<Arc<BackingId>>,
    passthrough: u32,
}

#[derive(Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    nodes: DashMap<u64, NodeIo>,
    /// Open file handle -> its node and whether it is in passthrough mode.
    files: DashMap<u64, (u64, bool)>,
}

impl Passthrough {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Decides the mode of a new open file `fh` of `node`: its backing id for passthrough,
    /// or `None` for cached. `candidate` gives the backing fd if the core allows passthrough
    /// (asked only when the node could start passthrough); `open_backing` registers an fd
    /// with the kernel. With passthrough off nothing is tracked: no inode is in
    /// passthrough mode then (it is turned off only when the first registration fails).
    pub fn open<C, F>(
        &self,
        fh: u64,
        node: u64,
        candidate: C,
        open_backing: F,
    ) -> Option<Arc<BackingId>>
    where
        C: FnOnce() -> Option<Arc<OwnedFd>>,
        F: FnOnce(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut io = self.nodes.entry(node).or_default();
        let backing = match &io.backing {
            // The inode is in passthrough mode: every open joins it.
            Some(b) => Some(b.clone()),
            None if io.cached == 0 => candidate().and_then(|fd| match open_backing(fd.as_fd()) {
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
            }),
            None => None,
        };
        match &backing {
            Some(b) => {
                io.backing = Some(b.clone());
                io.passthrough += 1;
            }
            None => io.cached += 1,
        }
        drop(io);
        self.files.insert(fh, (node, backing.is_some()));
        backing
    }

    /// The open file `fh` is released.
    pub fn release(&self, fh: u64) {
        let Some((_, (node, pass))) = self.files.remove(&fh) else {
            return;
        };
        let mut gone = false;
        if let Some(mut io) = self.nodes.get_mut(&node) {
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
