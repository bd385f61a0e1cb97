//! On-disk formats of whiteouts and opaque directories, read and written.
//!
//! Written (what kernel overlayfs reads): a whiteout is a character device 0/0; an opaque
//! directory carries `<prefix>opaque=y`, where the prefix is `trusted.overlay.` when we run
//! as root and `user.overlay.` otherwise (the kernel's `userxattr` mode). An upper
//! filesystem that refuses those gets the fallbacks in [`Format`] and [`set_opaque`].
//!
//! Read, from any layer: char 0/0; a zero-size file carrying `<prefix>whiteout` (the
//! kernel's xattr whiteouts); OCI image markers `.wh.NAME` (hides NAME) and `.wh..wh..opq`
//! (makes the directory opaque); `opaque=y` under `trusted.overlay.`, `user.overlay.` or
//! `user.fuseoverlayfs.`. Marker names never show through the mount.
//!
//! Which of the opaque attributes, and of the redirect ones (`namei`), a layer directory
//! carries is first read with one listxattr: most carry none, and then one system call
//! answers what took one per attribute name.

use crate::sys::fs::{self, Stat};
use crate::sys::{xattr, Errno, SysResult};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

pub const OCI_PREFIX: &[u8] = b".wh.";
pub const OCI_OPAQUE: &[u8] = b".wh..wh..opq";

const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
/// Where a directory renamed by a kernel with `redirect_dir=on` records its lower path.
pub const REDIRECT_XATTRS: [&str; 2] = ["trusted.overlay.redirect", "user.overlay.redirect"];

/// Where a copy-up records the object it came from: the kernel's names, and ours
/// (`<prefix>ovlfuse.origin`).
const ORIGIN_XATTRS: [&str; 4] = [
    "trusted.overlay.origin",
    "user.overlay.origin",
    "trusted.overlay.ovlfuse.origin",
    "user.overlay.ovlfuse.origin",
];

/// Which overlay attributes a layer directory carries, by name (their values are read
/// only for those it has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverlayXattrs {
    opaque: bool,
    redirect: bool,
    origin: bool,
}

impl OverlayXattrs {
    /// Read with one listxattr of `name` in `dir`. Where that fails for another reason
    /// than "no xattrs here" (names too many for the buffer, say), every attribute counts
    /// as possibly present, and is read.
    pub fn of(dir: BorrowedFd<'_>, name: &OsStr) -> OverlayXattrs {
        let mut buf = [0u8; 1024];
        match xattr::list_into(dir, name, &mut buf) {
            Ok(n) => {
                let names = || buf[..n].split(|b| *b == 0);
                let has = |set: &[&str]| names().any(|a| set.iter().any(|s| s.as_bytes() == a));
                OverlayXattrs {
                    opaque: has(&OPAQUE_XATTRS),
                    redirect: has(&REDIRECT_XATTRS),
                    origin: has(&ORIGIN_XATTRS),
                }
            }
            Err(e) if e == Errno::EOPNOTSUPP => OverlayXattrs {
                opaque: false,
                redirect: false,
                origin: false,
            },
            Err(_) => OverlayXattrs {
                opaque: true,
                redirect: true,
                origin: true,
            },
        }
    }

    /// Whether the object came from another layer (a copy-up's origin, or a renamed
    /// directory's redirect): what makes the upper directory holding it "impure".
    pub fn came_from_elsewhere(&self) -> bool {
        self.origin || self.redirect
    }

    /// Whether the directory may carry a redirect (read it to know).
    pub fn may_redirect(&self) -> bool {
        self.redirect
    }

    /// `is_opaque_dir`, with the names already listed.
    pub fn opaque_dir(&self, parent: BorrowedFd<'_>, name: &OsStr) -> bool {
        self.opaque && has_opaque_value(parent, name)
    }
}

/// Whether the stat result is a kernel-format whiteout (char device 0/0).
pub fn is_whiteout_stat(st: &Stat) -> bool {
    fs::ifmt(st.st_mode) == libc::S_IFCHR && st.st_rdev == 0
}

/// Whether `name` in `dir` is an xattr whiteout: an empty regular file tagged with the
/// whiteout xattr. It counts only inside a directory marked `opaque=x` (see
/// `dir_has_xwhiteouts`), as in the kernel.
pub fn is_xattr_whiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> bool {
    may_be_xattr_whiteout(st) && has_whiteout_xattr(dir, name)
}

/// Whether the stat result has the shape of an xattr whiteout (an empty regular file).
pub fn may_be_xattr_whiteout(st: &Stat) -> bool {
    fs::ifmt(st.st_mode) == libc::S_IFREG && st.st_size == 0
}

/// Whether `name` in `dir` carries the whiteout xattr.
pub fn has_whiteout_xattr(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    WHITEOUT_XATTRS
        .iter()
        .any(|a| xattr::get(dir, name, a, &mut []).is_ok())
}

/// Whether the layer directory `dir` is marked as holding xattr whiteouts (`opaque=x`).
pub fn dir_has_xwhiteouts(dir: BorrowedFd<'_>) -> bool {
    // One listxattr (usually empty) instead of a getxattr per name.
    OverlayXattrs::of(dir, OsStr::new(".")).opaque
        && ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|a| xattr::get_on_dir(dir, a).is_ok_and(|v| v == b"x"))
}

/// Whether the entry `name` (already stat-ed) of layer directory `dir` is a whiteout, in
/// any format an entry itself can carry.
pub fn is_whiteout_in(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> bool {
    is_whiteout_stat(st) || is_xattr_whiteout(dir, name, st) && dir_has_xwhiteouts(dir)
}

/// Whether the entry `name` of layer directory `dir` is a whiteout (`is_whiteout_in`,
/// after a stat of it; false where there is no such entry).
pub fn is_whiteout_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<bool> {
    match fs::fstatat(dir, name) {
        Ok(st) => Ok(is_whiteout_in(dir, name, &st)),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a name is one of the OCI marker names, which are never shown.
pub fn is_marker_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OCI_PREFIX)
}

/// For a `.wh.NAME` marker, the NAME it hides (not for the opaque marker).
pub fn oci_hidden_name(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OCI_OPAQUE {
        return None;
    }
    b.strip_prefix(OCI_PREFIX)
        .filter(|r| !r.is_empty())
        .map(OsStr::from_bytes)
}

/// The OCI marker name that hides `name`.
pub fn oci_marker_for(name: &OsStr) -> OsString {
    let mut v = OCI_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from(OsStr::from_bytes(&v))
}

/// Whether the directory `name` inside `parent` (both in one layer) carries an opaque
/// xattr with value `y` (the OCI `.wh..wh..opq` marker inside is checked by lookup).
pub fn is_opaque_dir(parent: BorrowedFd<'_>, name: &OsStr) -> bool {
    OverlayXattrs::of(parent, name).opaque_dir(parent, name)
}

/// One of the opaque attributes of `name` in `parent` reads `y`.
fn has_opaque_value(parent: BorrowedFd<'_>, name: &OsStr) -> bool {
    for a in OPAQUE_XATTRS {
        let mut v = [0u8; 4];
        if let Ok(n) = xattr::get(parent, name, a, &mut v) {
            if n == 1 && v[0] == b'y' {
                return true;
            }
        }
    }
    false
}

/// Marks the directory `name` in `dir` opaque: with `<prefix>opaque=y`, which the kernel
/// reads; or, where the upper filesystem takes no xattrs (`xattrs` false: ramfs, NFSv3),
/// with the OCI marker `.wh..wh..opq` inside it, which our lookup reads in every layer.
/// The kernel overlay cannot mark a directory opaque on such an upper at all.
pub fn set_opaque(dir: BorrowedFd<'_>, name: &OsStr, prefix: &str, xattrs: bool) -> SysResult<()> {
    if xattrs {
        return xattr::set(dir, name, &format!("{prefix}opaque"), b"y", 0);
    }
    let d = fs::openat(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    match fs::openat(
        d.as_fd(),
        OsStr::from_bytes(OCI_OPAQUE),
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
        0o600,
    ) {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a kernel-format whiteout called `name` in `dir`.
pub fn make_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    fs::mknodat(dir, name, libc::S_IFCHR, 0)
}

/// How this mount writes whiteouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Character device 0/0, the kernel's format (a hard link of a shared one).
    Device,
    /// An empty file carrying `<prefix>whiteout`, in a directory marked `<prefix>opaque=x`:
    /// the kernel's format (6.7+) for layers that cannot hold devices. Used when the upper
    /// filesystem refuses whiteout devices, as an overlay used as upper layer does.
    Xattr,
    /// OCI `.wh.NAME` files, when the upper takes neither devices nor our xattrs.
    Oci,
}

impl Format {
    /// Tries a whiteout device in the work directory (leaving it as the shared one).
    /// `xattrs_ok`: the upper takes our private xattrs (as the layer set-up found).
    pub fn probe(work: BorrowedFd<'_>, xattrs_ok: bool) -> Format {
        match make_whiteout(work, OsStr::new(SHARED_WHITEOUT)) {
            Ok(()) | Err(crate::sys::Errno::EEXIST) => return Format::Device,
            Err(e) => log::debug!("whiteout device refused: {e:?}"),
        }
        let format = if xattrs_ok {
            Format::Xattr
        } else {
            Format::Oci
        };
        log::warn!(
            "upper filesystem refuses whiteout devices (char 0/0); writing whiteouts as {}",
            if format == Format::Xattr {
                "xattr whiteouts (read by kernel overlayfs 6.7 and later)"
            } else {
                "OCI .wh.NAME files (which kernel overlayfs does not read)"
            }
        );
        format
    }
}

/// Makes an xattr whiteout `name` in `work`, to be renamed into a directory marked with
/// [`mark_xwhiteouts`].
pub fn make_xattr_whiteout(work: BorrowedFd<'_>, name: &OsStr, prefix: &str) -> SysResult<()> {
    drop(fs::openat(
        work,
        name,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0,
    )?);
    let res = xattr::set(work, name, &format!("{prefix}whiteout"), b"", 0);
    if res.is_err() {
        let _ = fs::unlinkat(work, name, false);
    }
    res
}

/// Marks the upper directory `dir` as holding xattr whiteouts (`opaque=x`), unless it is
/// opaque already.
pub fn mark_xwhiteouts(dir: BorrowedFd<'_>, prefix: &str) -> SysResult<()> {
    let attr = format!("{prefix}opaque");
    match xattr::get_on_dir(dir, &attr) {
        Ok(v) if v == b"y" || v == b"x" => Ok(()),
        _ => xattr::set_on_dir(dir, &attr, b"x"),
    }
}

/// Creates the OCI marker `.wh.NAME` in `dir` (an existing one is fine).
pub fn make_oci_marker(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    let marker = oci_marker_for(name);
    if marker.len() > 255 {
        return Err(crate::sys::Errno::ENAMETOOLONG);
    }
    match fs::openat(
        dir,
        &marker,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    ) {
        Ok(_) | Err(crate::sys::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Name of the whiteout kept in the work directory to be hard-linked wherever a whiteout
/// is needed: a link is cheaper than a new inode, and the kernel shares whiteouts the same
/// way.
const SHARED_WHITEOUT: &str = "#whiteout";

/// Creates a whiteout called `name` in `dir` (a directory of the upper filesystem), as a
/// hard link of the shared one in `work` where possible. Fails with EEXIST if the name is
/// taken, so it is also an atomic "create if absent".
pub fn link_whiteout(work: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    let shared = OsStr::new(SHARED_WHITEOUT);
    for _ in 0..3 {
        match fs::linkat(work, shared, dir, name) {
            Ok(()) => return Ok(()),
            Err(e) if e.0 == libc::ENOENT => match make_whiteout(work, shared) {
                Ok(()) | Err(crate::sys::Errno::EEXIST) => continue,
                Err(_) => break,
            },
            Err(e) if e.0 == libc::EMLINK => {
                // Too many links: start a new shared whiteout.
                let _ = fs::unlinkat(work, shared, false);
            }
            Err(e) if e.0 == libc::EEXIST => return Err(e),
            Err(_) => break,
        }
    }
    make_whiteout(dir, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(
            oci_hidden_name(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(oci_hidden_name(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(oci_hidden_name(OsStr::new("foo")), None);
        assert!(is_marker_name(OsStr::new(".wh..wh..opq")));
        assert_eq!(oci_marker_for(OsStr::new("x")), OsString::from(".wh.x"));
    }

    /// The one-listxattr check finds the overlay attributes among others, and where the
    /// names do not fit its buffer it falls back to reading every attribute.
    #[test]
    fn overlay_xattrs_are_found_by_name_and_fall_back_when_too_many() {
        use std::os::fd::{AsFd, OwnedFd};
        let root = std::path::PathBuf::from(format!("/tmp/ovlfuse-unit-xa-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "plain", "other", "opq", "opq_x", "redir", "copy", "ours", "crowded",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let dir: OwnedFd = std::fs::File::open(&root).unwrap().into();
        let fd = dir.as_fd();
        let set = |d: &str, a: &str, v: &[u8]| xattr::set(fd, OsStr::new(d), a, v, 0).unwrap();
        set("other", "user.mime_type", b"text/plain");
        set("opq", "user.other", b"1");
        set("opq", "user.overlay.opaque", b"y");
        set("opq_x", "user.overlay.opaque", b"x");
        set("redir", "user.overlay.redirect", b"/elsewhere");
        set("copy", "user.overlay.origin", b"\0");
        set("ours", "user.overlay.ovlfuse.origin", b"1:2");
        for i in 0..40 {
            set(
                "crowded",
                &format!("user.a-rather-long-attribute-name-number-{i:03}"),
                b"v",
            );
        }
        set("crowded", "user.overlay.opaque", b"y");
        let of = |d: &str| OverlayXattrs::of(fd, OsStr::new(d));
        let none = OverlayXattrs {
            opaque: false,
            redirect: false,
            origin: false,
        };
        assert_eq!(of("plain"), none);
        assert_eq!(of("other"), none);
        assert!(of("opq").opaque && !of("opq").may_redirect());
        assert!(of("opq").opaque_dir(fd, OsStr::new("opq")));
        // "x" marks a directory holding xattr whiteouts, not an opaque one.
        assert!(of("opq_x").opaque && !of("opq_x").opaque_dir(fd, OsStr::new("opq_x")));
        assert!(of("redir").may_redirect() && !of("redir").opaque);
        // What makes a directory holding them impure: a redirect, either origin.
        assert!(!of("plain").came_from_elsewhere() && !of("opq").came_from_elsewhere());
        for d in ["redir", "copy", "ours"] {
            assert!(of(d).came_from_elsewhere(), "{d}");
        }
        // 40 names of 47 bytes overflow the 1 KiB list: everything may be present.
        let crowded = of("crowded");
        assert!(crowded.opaque && crowded.may_redirect() && crowded.came_from_elsewhere());
        assert!(crowded.opaque_dir(fd, OsStr::new("crowded")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
