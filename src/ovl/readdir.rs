//! Merged directories: the union listing of a directory, built once from all its layers
//! (then kept by `listing` and patched per entry by our own changes), and readdir over it.
//!
//! The listing (name → type, inode number) is what readdir shows and what lookup
//! consults for names that do not exist, so the two always agree. Nothing re-reads a whole
//! directory because one name changed: create, unlink and rename patch one entry, so their
//! cost does not grow with the size of the directory.

use super::layers::{LayerId, UPPER};
use super::listing::{DirReader, Entry, Listed, MergedDir, Name, Slotted};
use super::namei::Found;
use super::node::{Node, ROOT_ID};
use super::{whiteout, Errno, HashMap, HashSet, Overlay, SysResult};
use crate::sys::fs;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How many entries the merged listings of all directories may hold together.
const MERGED_BUDGET: usize = 400_000;
/// How many directories may keep a merged listing.
const MERGED_DIRS: usize = 8192;
/// Heap freed per entry when a listing is dropped, or by the temporaries of building one
/// (100k entries: about 4 MiB).
const ENTRY_HEAP_BYTES: usize = 40;

/// The names a listing build has kept so far, with their entries. One layer lists each
/// name once, so a directory in a single layer (most lower directories, every upper-only
/// one) needs no map to merge by name: for a listing of 1M names that map took a third of
/// the daemon's user CPU and 80 MB of short-lived memory.
enum Collected {
    Merging(HashMap<Name, Entry>),
    /// Filled from a single layer's listing: no name comes twice.
    Unique(Slotted),
}

impl Collected {
    /// The entry kept for `name`; in a single layer's listing, never one already kept.
    fn get_mut(&mut self, name: &OsStr) -> Option<&mut Entry> {
        match self {
            Collected::Merging(m) => m.get_mut(name),
            Collected::Unique(_) => None,
        }
    }

    /// The shared name already kept for `name`.
    fn key(&self, name: &OsStr) -> Option<Name> {
        match self {
            Collected::Merging(m) => m.get_key_value(name).map(|(k, _)| k.clone()),
            Collected::Unique(v) => v.names().find(|n| ***n == *name).cloned(),
        }
    }

    fn contains(&self, name: &OsStr) -> bool {
        self.key(name).is_some()
    }

    fn insert(&mut self, name: Name, e: Entry) {
        match self {
            Collected::Merging(m) => {
                m.insert(name, e);
            }
            Collected::Unique(v) => v.push(name, e),
        }
    }

    fn names(&self) -> Box<dyn ExactSizeIterator<Item = &Name> + '_> {
        match self {
            Collected::Merging(m) => Box::new(m.keys()),
            Collected::Unique(v) => Box::new(v.names()),
        }
    }

    /// Gives the kept names among `live` (name, inode number) those numbers.
    fn renumber(&mut self, live: Vec<(Name, u64)>) {
        if live.is_empty() {
            return;
        }
        match self {
            Collected::Merging(m) => {
                for (name, ino) in live {
                    if let Some(e) = m.get_mut(&name) {
                        e.ino = ino;
                    }
                }
            }
            Collected::Unique(v) => {
                let live: HashMap<Name, u64> = live.into_iter().collect();
                for (name, e) in v.iter_mut() {
                    if let Some(&ino) = live.get(name) {
                        e.ino = ino;
                    }
                }
            }
        }
    }
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
        // A copy-up into this directory does not take its lock: one that lands while the
        // lower layers are read would leave its name listed as lower for good (and lookups
        // answered from the listing would show the lower copy). It changes the upper
        // directory's ctime, so a listing built across one is built again, and after
        // three such tries used for this request only.
        let mut tries = 0;
        let m = loop {
            let before = self.upper_dir_stamp(node);
            let m = Arc::new(self.build_merged(node)?);
            if self.upper_dir_stamp(node) == before {
                break m;
            }
            tries += 1;
            if tries == 3 {
                return Ok(m);
            }
        };
        node.set_merged(Some(m.clone()));
        self.remember_merged(node, m.len());
        // Building a listing goes through a hash map and a sorted copy of it that are freed
        // again at once; glibc would keep them in RSS.
        crate::sys::heap::freed(m.len() * ENTRY_HEAP_BYTES);
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
                        victims.push((id, n));
                    }
                    None => break,
                }
            }
        }
        let mut freed = 0;
        for (id, n) in victims {
            if let Ok(node) = self.node(id) {
                node.set_merged(None);
                freed += n;
            }
        }
        // Dropping a big listing frees tens of MiB at once, which glibc keeps in its free
        // lists (and in RSS) until asked.
        crate::sys::heap::freed(freed * ENTRY_HEAP_BYTES);
    }

    /// What tells a change in directory `node`'s upper copy: its inode and change time
    /// (None while it has none).
    fn upper_dir_stamp(&self, node: &Node) -> Option<(u64, i64, i64)> {
        if !node.is_upper() {
            return None;
        }
        let fd = self.nodes.dir_fd(node, UPPER).ok()?;
        let st = fs::fstat(fd.as_fd()).ok()?;
        Some((st.st_ino, st.st_ctime, st.st_ctime_nsec))
    }

    fn build_merged(&self, node: &Arc<Node>) -> SysResult<MergedDir> {
        let st = node.state();
        let mut order: Vec<LayerId> = Vec::with_capacity(st.lowers.len() + 1);
        if st.upper {
            order.push(UPPER);
        }
        order.extend(st.lowers.iter().copied());

        let mut entries = if order.len() == 1 {
            Collected::Unique(Slotted::default())
        } else {
            Collected::Merging(HashMap::default())
        };
        let mut lower_positive: HashSet<Name> = HashSet::default();
        // Names a whiteout hid in a higher layer: lower copies of them stay hidden.
        let mut hidden: HashSet<Name> = HashSet::default();
        let mut lower_seen: HashSet<Name> = HashSet::default();
        // Upper directories that may merge with a lower one: their d_ino is the lower's.
        let mut maybe_merged: HashSet<Name> = HashSet::default();
        // An upper-only directory marked impure that turns out to hold nothing from another
        // layer loses the mark, as on the kernel (its listing then needs no origins).
        let pure_upper = st.lowers.is_empty();
        let mut holds_copies = false;
        let n_layers = order.len();
        for (i, layer) in order.into_iter().enumerate() {
            let dir = self.nodes.list_dir(node, layer)?;
            let dfd = dir.fd.as_fd();
            let is_lower = layer != UPPER;
            // Whether a lower layer below this one still reads `lower_seen`.
            let lower_follows = i + 1 < n_layers;
            let dev = self.layers.get(layer).dev;
            // Read at the first entry that could be an xattr whiteout: a directory of
            // directories never needs it.
            let mut xwhiteouts: Option<bool> = None;
            let impure = layer == UPPER && self.upper_dir_impure(node, dfd);
            let mut markers: Vec<Name> = Vec::new();
            dir.for_each_entry(|os, d_ino, dtype| {
                if whiteout::is_marker_name(os) {
                    // What a marker hides matters only to the layers below.
                    if let Some(h) = whiteout::oci_hidden_name(os).filter(|_| lower_follows) {
                        markers.push(Name::from(h));
                    }
                    return;
                }
                let kind = match dtype_kind(dtype) {
                    Some(k) => k,
                    None => match fs::fstatat(dfd, os) {
                        Ok(s) => fs::ifmt(s.st_mode),
                        Err(_) => return,
                    },
                };
                let is_wh = match kind {
                    libc::S_IFCHR => fs::fstatat(dfd, os)
                        .map(|s| whiteout::is_whiteout_stat(&s))
                        .unwrap_or(false),
                    libc::S_IFREG
                        if *xwhiteouts.get_or_insert_with(|| whiteout::dir_has_xwhiteouts(dfd)) =>
                    {
                        fs::fstatat(dfd, os)
                            .map(|s| whiteout::is_xattr_whiteout(dfd, os, &s))
                            .unwrap_or(false)
                    }
                    _ => false,
                };
                // One allocation per name, shared by every set that holds it.
                let mut name: Option<Name> = None;
                // The highest lower copy of a name decides whether removing it takes a
                // whiteout; only the layers below this one need to remember it was seen.
                let first_lower = is_lower
                    && if lower_follows {
                        let n = entries.key(os).unwrap_or_else(|| Name::from(os));
                        name = Some(n.clone());
                        lower_seen.insert(n)
                    } else {
                        !lower_seen.contains(os)
                    };
                let positive = first_lower && !is_wh;
                if let Some(ent) = entries.get_mut(os) {
                    ent.lower_positive |= positive;
                    if kind == libc::S_IFDIR && maybe_merged.remove(os) && ent.kind == libc::S_IFDIR
                    {
                        ent.ino = self.layers.ino.map(dev, d_ino);
                    } else {
                        maybe_merged.remove(os);
                    }
                    return;
                }
                let name = name.unwrap_or_else(|| Name::from(os));
                if hidden.contains(os) {
                    if positive {
                        lower_positive.insert(name);
                    }
                    return;
                }
                if is_wh {
                    hidden.insert(name);
                    return;
                }
                let mut ino = self.layers.ino.map(dev, d_ino);
                if layer == UPPER {
                    // A directory's overlay attributes, named by one listxattr, say both
                    // whether it was renamed here and whether it is opaque.
                    let mut xa = None;
                    if kind == libc::S_IFDIR && (impure || !st.lowers.is_empty()) {
                        let x = *xa.insert(whiteout::OverlayXattrs::of(dfd, os));
                        if impure && self.moved_dir_ino(node, dfd, os, x, &mut ino) {
                            holds_copies = true;
                        } else if !st.lowers.is_empty() && !x.opaque_dir(dfd, os) {
                            maybe_merged.insert(name.clone());
                        }
                    } else if kind != libc::S_IFDIR && impure {
                        if let Some(o) = self.origin_ino(dfd, os, true) {
                            ino = o;
                            holds_copies = true;
                        }
                    }
                    if impure && pure_upper && !holds_copies {
                        let x = xa.unwrap_or_else(|| whiteout::OverlayXattrs::of(dfd, os));
                        holds_copies = x.came_from_elsewhere();
                    }
                }
                entries.insert(
                    name,
                    Entry {
                        kind,
                        ino,
                        layer,
                        lower_positive: positive,
                    },
                );
            })?;
            if impure && pure_upper && !holds_copies && !self.cfg.read_only {
                self.drop_impure(node, dfd);
            }
            for h in markers {
                if is_lower {
                    lower_seen.insert(h.clone());
                }
                if !entries.contains(&h) {
                    hidden.insert(h);
                }
            }
        }
        // Shown names carry their lower-positive mark in their entry; the set holds the rest.
        lower_positive.shrink_to_fit();
        // Objects the kernel already knows keep the number it has seen.
        let live = self.nodes.live_child_inos(node.id, entries.names());
        entries.renumber(live);
        Ok(match entries {
            Collected::Merging(m) => {
                MergedDir::from_entries(m.into_iter().collect(), lower_positive)
            }
            Collected::Unique(v) => MergedDir::from_entries(v, lower_positive),
        })
    }

    /// For upper subdirectory `name` of the impure directory `dir` (read as `fd`; `xa`: the
    /// subdirectory's overlay attributes): where it is a directory renamed here (it
    /// carries a redirect), sets `ino` to the number a lookup gives it (that of the lower
    /// directory the redirect leads to, which no same-name entry below shows) and says
    /// true. The kernel looks up every entry of an impure directory for its number; only
    /// renamed directories need it here.
    fn moved_dir_ino(
        &self,
        dir: &Node,
        fd: BorrowedFd<'_>,
        name: &OsStr,
        xa: whiteout::OverlayXattrs,
        ino: &mut u64,
    ) -> bool {
        // An invalid redirect fails the entry's lookup; the listing keeps its number.
        if !matches!(self.redirect_of(fd, name, xa), Ok(Some(_))) {
            return false;
        }
        if let Ok(Found::Node(n)) = self.probe(dir, name) {
            *ino = n.ino;
        }
        true
    }

    /// Whether the kernel must open directories through us (OPENDIR) rather than skip
    /// that round trip: only under `strictatime` with an upper layer, where listing an upper
    /// directory must reach us each time (see `cache_listing`).
    pub fn wants_opendir(&self) -> bool {
        self.layers.upper.is_some() && self.cfg.atime == super::params::Atime::Strict
    }

    /// OPENDIR, when it is asked for: checks that `id` is a directory. Readdir keeps no
    /// per-open state, so there is no handle.
    pub fn opendir(&self, id: u64) -> SysResult<()> {
        if !self.node(id)?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(())
    }

    /// Whether the kernel may keep a directory's listing cached across opens. Our own
    /// changes through the mount invalidate it (the kernel does so on each create, unlink
    /// and rename), and the layers may not change behind the mount. Only `strictatime`
    /// needs every listing of an upper directory to reach us, to move its atime.
    pub fn cache_listing(&self, id: u64) -> bool {
        !(self.wants_opendir() && self.node(id).is_ok_and(|n| n.is_upper()))
    }

    /// Readdir of directory `id` from `offset`: 0 is the start, 1 and 2 come after `.` and
    /// `..`, anything else is an offset an earlier read gave.
    pub fn read_dir(&self, id: u64, offset: u64) -> SysResult<DirReader> {
        let node = self.node(id)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if offset == 0 {
            self.dir_accessed(&node);
            if !node.state.read().listed {
                node.state.write().listed = true;
            }
        }
        let merged = self.merged_dir(&node)?;
        let parent_ino = if node.id == ROOT_ID {
            node.ino()
        } else {
            self.node(node.parent())
                .map(|p| p.ino())
                .unwrap_or(node.ino())
        };
        let dot = |name: &str, ino| Listed {
            name: Name::from(OsStr::new(name)),
            kind: libc::S_IFDIR,
            ino,
            layer: UPPER,
        };
        let dots = [
            (offset < 1).then(|| dot(".", node.ino())),
            (offset < 2).then(|| dot("..", parent_ino)),
        ];
        Ok(DirReader::new(merged, dots, offset))
    }

    /// A listing from the start moves the atime of the directory's upper copy, as it does
    /// on the kernel overlay; lower copies never move. Layer directories are read with
    /// O_NOATIME, so the upper copy is read once more, through our clone of the upper
    /// mount, which carries this mount's atime options; a read moves the atime without
    /// touching the ctime, which utimensat would. Only where the options say it moves: under
    /// `relatime`, once the atime is not newer than the mtime or ctime, or a day old.
    fn dir_accessed(&self, node: &Node) {
        use super::params::Atime;
        if !node.is_upper() || self.cfg.atime == Atime::Never {
            return;
        }
        let Ok(fd) = self.nodes.dir_fd(node, UPPER) else {
            return;
        };
        if self.cfg.atime == Atime::Relative
            && !fs::fstat(fd.as_fd()).is_ok_and(|st| super::file::relatime_due(&st))
        {
            return;
        }
        match fs::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|d| fs::touch_dir(d.as_fd()))
        {
            // The kernel's cached attributes still hold the old atime.
            Ok(()) => self.notify_attr_changed(node.id),
            Err(e) => log::debug!("atime of directory {}: {e:?}", node.id),
        }
    }

    pub fn fsyncdir(&self, id: u64, datasync: bool) -> SysResult<()> {
        let node = self.node(id)?;
        // A removed directory has nothing left to sync (its removal is its parent's), and
        // its name may now hold a whiteout or another object.
        if !self.cfg.fsync || !node.is_upper() || node.unlinked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fd = self.nodes.dir_fd(&node, UPPER)?;
        let rfd = fs::reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        fs::fsync(rfd.as_fd(), datasync)
    }
}
