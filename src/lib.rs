//! ovlfuse: a union (overlay) filesystem in userspace over FUSE, with the semantics of
//! Linux kernel overlayfs.
//!
//! `ovl` is the overlay core (no FUSE types); `fuse` the thin adapter (INIT through
//! `fuser`, which mounts; `fuse_ops` answers each request, `fuse_wire` encodes it,
//! `fuse_dev` and `fuse_uring` carry it; `passthrough` keeps FUSE passthrough opens, and
//! `devfuse_cpu` the CPU the /dev/fuse threads run on), `sys`
//! the raw system calls, `cli` the command line, `daemon` mounting and backgrounding, `logging` where log
//! records go (stderr, then the system log in the background).

pub mod cli;
pub mod daemon;
pub mod devfuse_cpu;
pub mod fuse;
pub mod fuse_dev;
pub mod fuse_ops;
pub mod fuse_splice;
pub mod fuse_uring;
pub mod fuse_wire;
pub mod logging;
pub mod ovl;
pub mod passthrough;
pub mod sys;
pub mod uring_priority;

/// The version line shown by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
