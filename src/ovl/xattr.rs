//! Extended attributes through the mount.
//!
//! Reads come from the copy that is seen; changes copy the object up first. Attributes
//! under the private prefix this mount writes (`trusted.overlay.`, or `user.overlay.`
//! unprivileged) belong to the overlay and are never shown. Like kernel overlayfs (6.7+),
//! a caller's own attribute under that prefix is stored *escaped*: `trusted.overlay.X`
//! through the mount is `trusted.overlay.overlay.X` in the layer, so overlays nest.

use super::inode::{Change, Target};
use super::layers::LayerId;
use super::node::{Node, ROOT_ID};
use super::{Ctx, Errno, Overlay, SysResult};
use crate::sys::{fs, xattr};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// The name an attribute has in the layer: names under the private prefix are escaped.
pub fn real_name(prefix: &str, name: &OsStr) -> SysResult<String> {
    let n = std::str::from_utf8(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    Ok(match n.strip_prefix(prefix) {
        Some(rest) => format!("{prefix}overlay.{rest}"),
        None => n.to_string(),
    })
}

/// The name a layer attribute shows through the mount; `None` for private ones.
pub fn shown_name<'a>(prefix: &str, real: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
    let Some(rest) = real.strip_prefix(prefix.as_bytes()) else {
        return Some(std::borrow::Cow::Borrowed(real));
    };
    let escaped = rest.strip_prefix(b"overlay.")?;
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(escaped);
    Some(std::borrow::Cow::Owned(v))
}

/// Whether a layer attribute is the overlay's own (not copied up, never shown).
pub fn is_private(prefix: &str, real: &[u8]) -> bool {
    shown_name(prefix, real).is_none()
}

/// Whether a layer attribute is one of the owner/mode override xattrs (`ownership`).
fn is_override_name(real: &[u8]) -> bool {
    super::ownership::OVERRIDE_XATTRS
        .iter()
        .any(|o| o.as_bytes() == real)
}

fn is_acl_name(attr: &str) -> bool {
    attr == "system.posix_acl_access" || attr == "system.posix_acl_default"
}

impl Overlay {
    /// The directory fd and name through which `node`'s copy in `layer` is reached.
    pub(super) fn xattr_target(
        &self,
        node: &Node,
        layer: LayerId,
    ) -> SysResult<(Arc<OwnedFd>, super::listing::Name)> {
        if node.id != ROOT_ID && node.unlinked.load(std::sync::atomic::Ordering::Relaxed) {
            // No name leads to it any more (the old one may now hold a whiteout): reached
            // through its own fd, as an fgetxattr of a removed file is on the kernel overlay.
            return Ok((node.detached().ok_or(Errno::ENOENT)?, OsStr::new("").into()));
        }
        // A directory through "." in its own fd: its name may change under us (see
        // `NodeTable::stable`), its fd follows it.
        if node.id == ROOT_ID || node.is_dir() {
            return Ok((self.nodes.dir_fd(node, layer)?, OsStr::new(".").into()));
        }
        if layer != super::UPPER {
            return self.parent_fd(node, layer);
        }
        Ok(match self.upper_by_name(node)? {
            Target::Name(pfd, name) => (pfd, name),
            Target::Fd(fd) => (fd, OsStr::new("").into()),
        })
    }

    /// The layer name of attribute `name` given through the mount, after the checks every
    /// xattr call makes: `noxattrs`, `noacl`, and the override names, which belong to the
    /// overlay (letting a caller write one would let it forge owners and set-ID bits).
    fn layer_attr(&self, name: &OsStr) -> SysResult<String> {
        if self.cfg.noxattrs {
            return Err(Errno::EOPNOTSUPP);
        }
        let attr = real_name(self.layers.xattr_prefix, name)?;
        if self.cfg.noacl && attr.starts_with("system.posix_acl_") {
            return Err(Errno::EOPNOTSUPP);
        }
        if is_override_name(attr.as_bytes()) {
            return Err(Errno::EPERM);
        }
        Ok(attr)
    }

    /// Whether every xattr call through the mount is refused (`noxattrs=1`), whatever the
    /// object and the name.
    pub fn xattrs_refused(&self) -> bool {
        self.cfg.noxattrs
    }

    pub fn getxattr(&self, id: u64, name: &OsStr) -> SysResult<Vec<u8>> {
        let attr = &self.layer_attr(name).map_err(|e| match e {
            Errno::EPERM => Errno::ENODATA,
            e => e,
        })?;
        let node = self.node(id)?;
        let top = node.state().top().ok_or(Errno::ESTALE)?;
        let mut v = self
            .nodes
            .stable_node(&node, || {
                let (dir, n) = self.xattr_target(&node, top)?;
                xattr::get_vec(dir.as_fd(), &n, attr)
            })
            .map_err(|e| match e {
                // A layer on a filesystem without ACLs (ramfs, vfat, NFSv3) has none to
                // show. The kernel asks for them in its permission checks, where an
                // EOPNOTSUPP is an error, not "no ACL": every access that consults the
                // group bits of another user's file would fail.
                Errno::EOPNOTSUPP if is_acl_name(attr) => Errno::ENODATA,
                e => e,
            })?;
        if self.cfg.own.maps_ids() && is_acl_name(attr) {
            self.cfg.own.map_acl(&mut v, false);
        }
        Ok(v)
    }

    /// The NUL-separated list of attribute names, private ones left out.
    pub fn listxattr(&self, id: u64) -> SysResult<Vec<u8>> {
        if self.cfg.noxattrs {
            return Err(Errno::EOPNOTSUPP);
        }
        let node = self.node(id)?;
        let top = node.state().top().ok_or(Errno::ESTALE)?;
        let raw = self.nodes.stable_node(&node, || {
            let (dir, n) = self.xattr_target(&node, top)?;
            xattr::list(dir.as_fd(), &n)
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for a in xattr::split_names(&raw) {
            if is_override_name(a) || self.cfg.noacl && a.starts_with(b"system.posix_acl_") {
                continue;
            }
            if let Some(shown) = shown_name(self.layers.xattr_prefix, a) {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(
        &self,
        ctx: &Ctx,
        id: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> SysResult<()> {
        let attr = &self.layer_attr(name)?;
        self.require_upper()?;
        let node = self.node(id)?;
        self.check_protection(&node, Change::Xattr)?;
        self.copy_up(&node, true)?;
        let (dir, n) = self.xattr_target(&node, super::UPPER)?;
        if self.cfg.own.maps_ids() && is_acl_name(attr) {
            let mut v = value.to_vec();
            self.cfg.own.map_acl(&mut v, true);
            xattr::set(dir.as_fd(), &n, attr, &v, flags)?;
        } else {
            xattr::set(dir.as_fd(), &n, attr, value, flags)?;
        }
        if attr == "system.posix_acl_access" && ctx.uid != 0 {
            // Setting an access ACL rewrites the mode; like chmod, it cannot keep
            // set-group-ID for a caller outside the file's group (the VFS's
            // posix_acl_update_mode). We set it with CAP_FSETID, so strip it here.
            let st = fs::fstatat(dir.as_fd(), &n)?;
            if st.st_mode & libc::S_ISGID != 0
                && !ctx.in_group_or_root(self.cfg.own.shown_gid(st.st_gid))
            {
                fs::fchmodat(dir.as_fd(), &n, st.st_mode & 0o7777 & !libc::S_ISGID)?;
                self.notify_attr_changed(node.id);
            }
        }
        Ok(())
    }

    pub fn removexattr(&self, id: u64, name: &OsStr) -> SysResult<()> {
        let attr = &self.layer_attr(name)?;
        self.require_upper()?;
        let node = self.node(id)?;
        self.check_protection(&node, Change::Xattr)?;
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
