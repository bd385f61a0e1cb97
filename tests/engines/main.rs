//! End to end: ovlfuse as the `mount_program` of podman and buildah (the job fuse-overlayfs
//! does for containers/storage), compared with the same steps on the kernel's overlay driver.
//!
//! Each test builds a tiny busybox root filesystem, then runs one flow twice — once with
//! `[storage.options.overlay] mount_program = <target/release/ovlfuse>`, once with the native
//! overlay driver, in separate graphroots — and asserts both the expected results and that
//! ovlfuse and the kernel agree on `podman diff`, on the file tree of the resulting image
//! (type, mode, owner, size, content hash, link target) and on the whiteouts in each layer.
//!
//! Needs podman, buildah, runc, uidmap (newuidmap) and busybox-static; `.ci/run` installs
//! them. Without them the tests fail, unless OVLFUSE_SKIP_ENGINES=1 (then they skip loudly).
//! Never touches /etc/containers: every engine gets its own CONTAINERS_CONF,
//! CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF below a per-test directory
//! /tmp/ovlfuse-engines-<pid>-<n>, which is reset, unmounted and removed afterwards.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod buildah;
mod compare;
mod env;
mod inputs;
mod podman;
mod prereq;
mod tar;

use compare::*;
use env::*;
use inputs::*;
use prereq::*;
use tar::*;

const ROOTLESS_USER: &str = "ovltest";
const CMD_TIMEOUT: Duration = Duration::from_secs(180);
static N: AtomicUsize = AtomicUsize::new(0);
