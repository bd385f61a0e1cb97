//! Building layers from a compact description (`E`).

use super::*;

/// One thing to create in a layer directory (paths relative to it).
#[derive(Debug, Clone, Copy)]
pub enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    /// (path, target)
    Symlink(&'a str, &'a str),
    Fifo(&'a str),
    /// A char device 0/0, the kernel's whiteout.
    Whiteout(&'a str),
    /// A directory with trusted.overlay.opaque=y.
    Opaque(&'a str),
    /// (path, name, value)
    Xattr(&'a str, &'a str, &'a [u8]),
    Mode(&'a str, u32),
    Owner(&'a str, u32, u32),
    /// (existing, new)
    Hardlink(&'a str, &'a str),
}

pub(crate) fn mkparents(p: &Path) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("build: mkdir -p {parent:?}: {}", describe_err(&e)));
    }
}

/// Creates `entries` below `dir`, in order; parents are created as needed.
pub fn build(dir: &Path, entries: &[E]) {
    for e in entries {
        let ctx = |err: io::Error| -> ! { panic!("build {dir:?}: {e:?}: {}", describe_err(&err)) };
        match *e {
            E::File(p, data) => {
                let p = dir.join(p);
                mkparents(&p);
                fs::write(&p, data).unwrap_or_else(|x| ctx(x));
            }
            E::Dir(p) => fs::create_dir_all(dir.join(p)).unwrap_or_else(|x| ctx(x)),
            E::Symlink(p, target) => {
                let p = dir.join(p);
                mkparents(&p);
                std::os::unix::fs::symlink(target, &p).unwrap_or_else(|x| ctx(x));
            }
            E::Fifo(p) => {
                let p = dir.join(p);
                mkparents(&p);
                mkfifo(&p, 0o644).unwrap_or_else(|x| ctx(x));
            }
            E::Whiteout(p) => {
                let p = dir.join(p);
                mkparents(&p);
                mknod(&p, libc::S_IFCHR, 0).unwrap_or_else(|x| ctx(x));
            }
            E::Opaque(p) => {
                let p = dir.join(p);
                fs::create_dir_all(&p).unwrap_or_else(|x| ctx(x));
                lsetxattr(&p, "trusted.overlay.opaque", b"y").unwrap_or_else(|x| ctx(x));
            }
            E::Xattr(p, name, value) => {
                lsetxattr(&dir.join(p), name, value).unwrap_or_else(|x| ctx(x))
            }
            E::Mode(p, mode) => chmod_nofollow_dir(&dir.join(p), mode).unwrap_or_else(|x| ctx(x)),
            E::Owner(p, uid, gid) => lchown(&dir.join(p), uid, gid).unwrap_or_else(|x| ctx(x)),
            E::Hardlink(existing, new) => {
                let n = dir.join(new);
                mkparents(&n);
                fs::hard_link(dir.join(existing), &n).unwrap_or_else(|x| ctx(x));
            }
        }
    }
}
