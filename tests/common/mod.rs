//! Shared helpers for the real-mount integration tests.
//!
//! Everything here uses only std and libc; the only external programs run are `mount`,
//! `umount`, `fusermount3` (and the `ovlfuse` binary under test).
//!
//! Each test builds its layers below a unique [`Scratch`] directory, mounts with
//! [`mount_ovlfuse`] / [`mount_kernel`] (the returned [`MountGuard`] unmounts on drop, even
//! when an assertion fails), and guards its lower layers with a [`LowerCheck`].

// Each test binary uses a different part of these helpers.
#![allow(dead_code, unused_imports)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Where every scratch directory lives.
pub const TEST_ROOT: &str = "/tmp/ovlfuse-tests";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

mod build;
mod env;
mod errno;
mod lower_check;
mod mount;
mod mountinfo;
mod process;
mod requests;
mod scratch;
mod snapshot;
mod sys;

pub use build::*;
pub use env::*;
pub use errno::*;
pub use lower_check::*;
pub use mount::*;
pub use mountinfo::*;
pub use process::*;
pub use requests::*;
pub use scratch::*;
pub use snapshot::*;
pub use sys::*;
