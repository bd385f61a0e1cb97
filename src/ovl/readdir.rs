//! Merged directories: the union listing of a directory, built once from all its layers
//! and then patched per entry by our own changes, plus open directory handles.
//!
//! The listing (name → type, inode number) is what readdir shows and what lookup
//! consults for names that do not exist, so the two always agree. Nothing re-reads a whole
//! directory because one name changed: create, unlink and rename patch one entry, so their
//! cost does not grow with the size of the directory. An open directory handle holds a
//! snapshot (an `Arc` of the sorted listing), so readdir offsets are plain indexes that
//! stay valid while the directory changes; reading from offset 0 takes a fresh snapshot.

use super::layers::{LayerId, UPPER};
use super::namei::IMPURE_XATTR;
use super::node::{Node, ROOT_ID};
use super::{whiteout, Errno, HashMap, HashSet, Overlay, SysResult};
use crate::sys::fs;
use crate::sys::xattr;
use parking_lot::{Mutex, RwLock};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

/// How many entries the merged listings of all directories may hold together.
const MERGED_BUDGET: usize = 400_000;
/// How many directories may keep a merged listing.
const MERGED_DIRS: usize = 8192;
/// Entries of a listing from which freeing it is worth a `malloc_trim` (about 3 MiB).
const TRIM_AFTER_LISTING: usize = 100_000;

/// One visible entry of a merged directory.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// `S_IFMT` bits.
    pub kind: u32,
    /// The inode number shown as `d_ino` (equal to the entry's `st_ino`).
    pub ino: u64,
    /// The layer whose copy is seen (for a directory: the highest of those merged).
    /// Lookups of lower non-directories use it to reach the copy with one stat.
    pub layer: LayerId,
    /// The name's highest lower copy is a real object: removing it needs a whiteout.
    lower_positive: bool,
}

impl Entry {
    /// An entry made by a change through the mount, which always lands in the upper layer.
    pub fn upper(kind: u32, ino: u64) -> Entry {
        Entry {
            kind,
            ino,
            layer: UPPER,
            lower_positive: false,
        }
    }
}

/// One line of a listing, as readdir returns it.
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: Name,
    pub kind: u32,
    pub ino: u64,
}

/// A name in a merged directory, shared by its map, its set of lower-positive names and
/// its listings (a big directory holds each name once).
pub type Name = Arc<OsStr>;

#[derive(Default)]
struct Inner {
    entries: HashMap<Name, Entry>,
    /// Names not shown now whose highest lower copy is a real object (shown ones carry
    /// that in their entry): removing or replacing them needs a whiteout.
    lower_positive: HashSet<Name>,
    /// The sorted listing while some open handle still reads it; sorted again after that,
    /// rather than kept beside the map for good.
    listing: std::sync::Weak<Vec<Listed>>,
}

pub struct MergedDir {
    inner: RwLock<Inner>,
}

impl MergedDir {
    pub fn contains(&self, name: &OsStr) -> bool {
        self.inner.read().entries.contains_key(name)
    }

    pub fn get(&self, name: &OsStr) -> Option<Entry> {
        self.inner.read().entries.get(name).copied()
    }

    /// The entry's object was copied up: its upper copy is the one seen from now on.
    pub fn copied_up(&self, name: &OsStr) {
        if let Some(e) = self.inner.write().entries.get_mut(name) {
            e.layer = UPPER;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.read().entries.is_empty()
    }

    pub fn lower_positive(&self, name: &OsStr) -> bool {
        let i = self.inner.read();
        match i.entries.get(name) {
            Some(e) => e.lower_positive,
            None => i.lower_positive.contains(name),
        }
    }

    /// A name now exists (create, mkdir, rename target, ...).
    pub fn insert(&self, name: &OsStr, mut e: Entry) {
        let mut i = self.inner.write();
        i.listing = Default::default();
        if let Some(old) = i.entries.get_mut(name) {
            e.lower_positive = old.lower_positive;
            *old = e;
            return;
        }
        let name = match i.lower_positive.take(name) {
            Some(n) => {
                e.lower_positive = true;
                n
            }
            None => Name::from(name),
        };
        i.entries.insert(name, e);
    }

    /// A name is gone.
    pub fn remove(&self, name: &OsStr) {
        let mut i = self.inner.write();
        i.listing = Default::default();
        if let Some((n, e)) = i.entries.remove_entry(name) {
            if e.lower_positive {
                i.lower_positive.insert(n);
            }
        }
    }

    /// The sorted listing; shared until the next change.
    pub fn listing(&self) -> Arc<Vec<Listed>> {
        if let Some(l) = self.inner.read().listing.upgrade() {
            return l;
        }
        let mut i = self.inner.write();
        if let Some(l) = i.listing.upgrade() {
            return l;
        }
        // Sorted by name, so that a listing built again from the same entries (after the
        // old one was dropped) has the same order: the kernel may go on reading at an
        // offset of the old one. Most comparisons are settled by the names' first 8 bytes,
        // kept beside each line, without reaching the names themselves.
        let mut v: Vec<(u64, Listed)> = i
            .entries
            .iter()
            .map(|(n, e)| {
                let line = Listed {
                    name: n.clone(),
                    kind: e.kind,
                    ino: e.ino,
                };
                (name_prefix(n), line)
            })
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        let l = Arc::new(v.into_iter().map(|(_, line)| line).collect());
        i.listing = Arc::downgrade(&l);
        l
    }
}

/// The first 8 bytes of a name as a big-endian number (zero-padded): ordering these orders
/// names the way comparing their bytes does, as names hold no NUL byte; equal prefixes
/// leave it to the whole names.
fn name_prefix(name: &OsStr) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let mut b = [0u8; 8];
    let n = name.len().min(8);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(b)
}

/// What one open directory handle reads: `.` and `..` (offsets 0 and 1), then the
/// listing as it was when reading started at offset 0.
pub struct DirSnapshot {
    dots: [Listed; 2],
    entries: Arc<Vec<Listed>>,
}

impl DirSnapshot {
    /// The entries from index `offset` on, each with the offset of the entry after it.
    pub fn from(&self, offset: u64) -> impl Iterator<Item = (u64, &Listed)> {
        self.dots
            .iter()
            .chain(self.entries.iter())
            .enumerate()
            .skip(offset.try_into().unwrap_or(usize::MAX))
            .map(|(i, e)| (i as u64 + 1, e))
    }

    /// Whether the entry at `offset - 1`, as `from` yields it, is `.` or `..`.
    pub fn is_dot(next: u64) -> bool {
        next <= 2
    }
}

/// An open directory: its node and the snapshot being read.
pub struct DirHandle {
    pub node: Arc<Node>,
    snapshot: Mutex<Option<Arc<DirSnapshot>>>,
}

fn dtype_kind(dt: u8) -> Option<u32> {
    Some(match dt {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_REG => libc::S_IFREG,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => return None,
    })
}

impl Overlay {
    /// The merged listing of directory `node`, built on first use.
    pub fn merged_dir(&self, node: &Arc<Node>) -> SysResult<Arc<MergedDir>> {
        if let Some(m) = node.merged() {
            return Ok(m);
        }
        // Built under the directory lock, so no create or unlink in this directory can
        // happen between reading the layers and publishing the result.
        let _g = node.dir_lock.lock();
        if let Some(m) = node.merged() {
            return Ok(m);
        }
        let m = Arc::new(self.build_merged(node)?);
        node.set_merged(Some(m.clone()));
        self.remember_merged(node, m.len());
        Ok(m)
    }

    /// Keeps the merged listings within a budget of entries and of directories: the least
    /// recently built go (they are rebuilt from the layers when next needed; open handles
    /// keep their snapshots).
    fn remember_merged(&self, node: &Arc<Node>, entries: usize) {
        let mut victims = Vec::new();
        {
            let mut b = self.merged_lru.lock();
            let (lru, total) = &mut *b;
            if let Some((_, old)) = lru.push(node.id, entries) {
                *total -= old;
            }
            *total += entries;
            while (*total > MERGED_BUDGET || lru.len() > MERGED_DIRS) && lru.len() > 1 {
                match lru.pop_lru() {
                    Some((id, n)) => {
                        *total -= n;
                        victims.push(id);
                    }
                    None => break,
                }
            }
        }
        for id in victims {
            if let Ok(n) = self.node(id) {
                n.set_merged(None);
            }
        }
    }

    fn build_merged(&self, node: &Arc<Node>) -> SysResult<MergedDir> {
        let st = node.state();
        let mut order: Vec<LayerId> = Vec::with_capacity(st.lowers.len() + 1);
        if st.upper {
            order.push(UPPER);
        }
        order.extend(st.lowers.iter().copied());

        let mut inner = Inner::default();
        // Names a whiteout hid in a higher layer: lower copies of them stay hidden.
        let mut hidden: HashSet<Name> = HashSet::default();
        let mut lower_seen: HashSet<Name> = HashSet::default();
        // Upper directories that may merge with a lower one: their d_ino is the lower's.
        let mut maybe_merged: HashSet<Name> = HashSet::default();
        let n_layers = order.len();
        for (i, layer) in order.into_iter().enumerate() {
            let fd = self.nodes.dir_fd(node, layer)?;
            let dfd = fd.as_fd();
            let raw = fs::read_dirents(dfd, |n: &OsStr| Name::from(n))?;
            let is_lower = layer != UPPER;
            // Whether a lower layer below this one still reads `lower_seen`.
            let lower_follows = i + 1 < n_layers;
            inner.entries.reserve(raw.len());
            let dev = self.layers.get(layer).dev;
            let xwhiteouts = whiteout::dir_has_xwhiteouts(dfd);
            let impure = layer == UPPER
                && (st.impure
                    || xattr::get_on_dir(
                        dfd,
                        &format!("{}{}", self.layers.xattr_prefix, IMPURE_XATTR),
                    )
                    .is_ok());
            let mut markers: Vec<Name> = Vec::new();
            for e in raw {
                let os: &OsStr = &e.name;
                if whiteout::is_marker_name(os) {
                    if let Some(h) = whiteout::oci_hidden_name(os) {
                        markers.push(Name::from(h));
                    }
                    continue;
                }
                let kind = match dtype_kind(e.dtype) {
                    Some(k) => k,
                    None => match fs::fstatat(dfd, os) {
                        Ok(s) => fs::ifmt(s.st_mode),
                        Err(_) => continue,
                    },
                };
                let is_wh = match kind {
                    libc::S_IFCHR => fs::fstatat(dfd, os)
                        .map(|s| whiteout::is_whiteout_stat(&s))
                        .unwrap_or(false),
                    libc::S_IFREG if xwhiteouts => fs::fstatat(dfd, os)
                        .map(|s| whiteout::is_xattr_whiteout(dfd, os, &s))
                        .unwrap_or(false),
                    _ => false,
                };
                // One allocation per name, shared by every set that holds it.
                let mut name: Option<Name> = None;
                // The highest lower copy of a name decides whether removing it takes a
                // whiteout; only the layers below this one need to remember it was seen.
                let first_lower = is_lower
                    && if lower_follows {
                        let n = inner
                            .entries
                            .get_key_value(os)
                            .map_or_else(|| e.name.clone(), |(k, _)| k.clone());
                        name = Some(n.clone());
                        lower_seen.insert(n)
                    } else {
                        !lower_seen.contains(os)
                    };
                let positive = first_lower && !is_wh;
                if let Some(ent) = inner.entries.get_mut(os) {
                    ent.lower_positive |= positive;
                    if kind == libc::S_IFDIR && maybe_merged.remove(os) && ent.kind == libc::S_IFDIR
                    {
                        ent.ino = self.layers.ino.map(dev, e.ino);
                    } else {
                        maybe_merged.remove(os);
                    }
                    continue;
                }
                let name = name.unwrap_or_else(|| e.name.clone());
                if hidden.contains(os) {
                    if positive {
                        inner.lower_positive.insert(name);
                    }
                    continue;
                }
                if is_wh {
                    hidden.insert(name);
                    continue;
                }
                let mut ino = self.layers.ino.map(dev, e.ino);
                if layer == UPPER {
                    if kind == libc::S_IFDIR {
                        if !st.lowers.is_empty() && !whiteout::is_opaque_dir(dfd, os) {
                            maybe_merged.insert(name.clone());
                        }
                    } else if impure {
                        if let Some(o) = self.origin_ino(dfd, os) {
                            ino = o;
                        }
                    }
                }
                inner.entries.insert(
                    name,
                    Entry {
                        kind,
                        ino,
                        layer,
                        lower_positive: positive,
                    },
                );
            }
            for h in markers {
                if is_lower {
                    lower_seen.insert(h.clone());
                }
                if !inner.entries.contains_key(&*h) {
                    hidden.insert(h);
                }
            }
        }
        // Shown names carry their lower-positive mark in their entry; the set holds the rest.
        inner.lower_positive.shrink_to_fit();
        // Objects the kernel already knows keep the number it has seen.
        for (name, e) in inner.entries.iter_mut() {
            if let Some(n) = self.nodes.peek_child(node.id, name) {
                e.ino = n.ino;
            }
        }
        Ok(MergedDir {
            inner: RwLock::new(inner),
        })
    }

    pub fn opendir(&self, id: u64) -> SysResult<u64> {
        let node = self.node(id)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let fh = self.new_fh();
        self.dirs.insert(
            fh,
            Arc::new(DirHandle {
                node,
                snapshot: Mutex::new(None),
            }),
        );
        Ok(fh)
    }

    /// Whether the kernel may keep a directory's listing cached across opens. Our own
    /// changes through the mount invalidate it (the kernel does so on each create, unlink
    /// and rename), and the layers may not change behind the mount. Only `strictatime`
    /// needs every listing of an upper directory to reach us, to move its atime.
    pub fn cache_listing(&self, id: u64) -> bool {
        let upper = self.node(id).is_ok_and(|n| n.is_upper());
        !(upper && self.cfg.atime == super::params::Atime::Strict)
    }

    /// The listing of an open directory from index `offset`: `.` and `..` are indexes 0
    /// and 1. Returns the snapshot; entry `i` has the next offset `i + 1`.
    pub fn readdir(&self, fh: u64, offset: u64) -> SysResult<Arc<DirSnapshot>> {
        let h = self.dirs.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)?;
        let mut snap = h.snapshot.lock();
        if offset == 0 || snap.is_none() {
            let m = self.merged_dir(&h.node)?;
            let listing = m.listing();
            let parent_ino = if h.node.id == ROOT_ID {
                h.node.ino
            } else {
                self.node(h.node.parent())
                    .map(|p| p.ino)
                    .unwrap_or(h.node.ino)
            };
            let dot = |name: &str, ino| Listed {
                name: Name::from(OsStr::new(name)),
                kind: libc::S_IFDIR,
                ino,
            };
            *snap = Some(Arc::new(DirSnapshot {
                dots: [dot(".", h.node.ino), dot("..", parent_ino)],
                entries: listing,
            }));
        }
        snap.clone().ok_or(Errno::EIO)
    }

    pub fn releasedir(&self, fh: u64) {
        let Some((_, h)) = self.dirs.remove(&fh) else {
            return;
        };
        // The last reader of a big listing frees tens of MiB at once, which glibc keeps in
        // its free lists (and in RSS) until asked; hand them back, as forget does.
        let frees_big = h.snapshot.lock().as_ref().is_some_and(|s| {
            s.entries.len() >= TRIM_AFTER_LISTING && Arc::strong_count(&s.entries) == 1
        });
        drop(h);
        if frees_big {
            crate::sys::trim_heap();
        }
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let h = self.dirs.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)?;
        if !self.cfg.fsync || !h.node.is_upper() {
            return Ok(());
        }
        let fd = self.nodes.dir_fd(&h.node, UPPER)?;
        let rfd = fs::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        fs::fsync(rfd.as_fd(), datasync)
    }
}

#[cfg(test)]
mod tests {
    use super::name_prefix;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn prefix_order_agrees_with_name_order() {
        let names: Vec<&[u8]> = vec![
            b"a",
            b"ab",
            b"abcdefgh",
            b"abcdefghi",
            b"abcdefgg",
            b"abcdefgh\x01",
            b"b",
            b"\xff",
            b"\xff\xff",
            b"A",
            b"a\x01",
            b"f0000123",
            b"f0000122",
            b"f00001230",
            b"file.txt",
            b"file",
            b".hidden",
            b"\x7f",
        ];
        let mut by_name = names.clone();
        by_name.sort();
        let mut by_prefix = names.clone();
        by_prefix.sort_by(|a, b| {
            let (a, b) = (OsStr::from_bytes(a), OsStr::from_bytes(b));
            name_prefix(a).cmp(&name_prefix(b)).then_with(|| a.cmp(b))
        });
        assert_eq!(by_prefix, by_name);
    }
}
