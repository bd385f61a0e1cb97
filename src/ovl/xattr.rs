//! Extended attributes through the mount.
//!
//! Reads come from the copy that is seen; changes copy the object up first. Overlay-private
//! attributes (`trusted.overlay.*`, `user.overlay.*`, `user.fuseoverlayfs.*`) are ours:
//! they are never listed, and reading or writing them through the mount fails with
//! EOPNOTSUPP, as on kernel overlayfs.

use super::layers::LayerId;
use super::node::{Node, ROOT_ID};
use super::whiteout::{is_private_xattr, PRIVATE_XATTR_ERR};
use super::{Errno, Overlay, SysResult};
use crate::sys::xattr;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

fn attr_name(name: &OsStr) -> SysResult<&str> {
    if is_private_xattr(name.as_bytes()) {
        return Err(PRIVATE_XATTR_ERR);
    }
    std::str::from_utf8(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

impl Overlay {
    /// The directory fd and name through which `node`'s copy in `layer` is reached.
    fn xattr_target(&self, node: &Node, layer: LayerId) -> SysResult<(Arc<OwnedFd>, OsString)> {
        if node.id == ROOT_ID {
            return Ok((self.nodes.dir_fd(node, layer)?, OsString::from(".")));
        }
        self.parent_fd(node, layer)
    }

    pub fn getxattr(&self, id: u64, name: &OsStr) -> SysResult<Vec<u8>> {
        let attr = attr_name(name)?;
        let node = self.node(id)?;
        let top = node.state().top().ok_or(Errno::ESTALE)?;
        let (dir, n) = self.xattr_target(&node, top)?;
        xattr::get_vec(dir.as_fd(), &n, attr)
    }

    /// The NUL-separated list of attribute names, private ones left out.
    pub fn listxattr(&self, id: u64) -> SysResult<Vec<u8>> {
        let node = self.node(id)?;
        let top = node.state().top().ok_or(Errno::ESTALE)?;
        let (dir, n) = self.xattr_target(&node, top)?;
        let raw = xattr::list(dir.as_fd(), &n)?;
        let mut out = Vec::with_capacity(raw.len());
        for a in xattr::split_names(&raw) {
            if !is_private_xattr(a) {
                out.extend_from_slice(a);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let attr = attr_name(name)?;
        self.require_upper()?;
        let node = self.node(id)?;
        self.copy_up(&node, true)?;
        let (dir, n) = self.xattr_target(&node, super::UPPER)?;
        xattr::set(dir.as_fd(), &n, attr, value, flags)
    }

    pub fn removexattr(&self, id: u64, name: &OsStr) -> SysResult<()> {
        let attr = attr_name(name)?;
        self.require_upper()?;
        let node = self.node(id)?;
        if !node.is_upper() {
            // Nothing to remove means nothing to copy up.
            let top = node.state().top().ok_or(Errno::ESTALE)?;
            let (dir, n) = self.xattr_target(&node, top)?;
            xattr::get(dir.as_fd(), &n, attr, &mut [])?;
        }
        self.copy_up(&node, true)?;
        let (dir, n) = self.xattr_target(&node, super::UPPER)?;
        xattr::remove(dir.as_fd(), &n, attr)
    }
}
