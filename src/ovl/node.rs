//! Merged objects ("nodes") and the table that holds the live ones.
//!
//! A node is one object of the merged tree. It knows its parent node and name — not a path
//! string — so a rename is one update; its path inside a layer is rebuilt from the parent
//! chain when a layer must be reached, then resolved beneath that layer's root fd. The
//! kernel does not serialise every request about an object with a rename of it, so a name
//! read from the table may be stale by the time a system call uses it: renames mark what
//! they move (`renaming`) and such calls repeat (`stable_node`, `stable`).
//! The node id is the FUSE node id; a node lives while the kernel holds a lookup on it.
//! Names of one upper inode (hard links) share one node, so nlink and data agree across
//! the names; lower hard links are separate objects, as in kernel overlayfs (index=off).

use super::layers::{LayerId, Layers, UPPER};
use super::listing::{MergedDir, Name};
use super::{whiteout, DashMap};
use crate::sys::fs::{self, Stat};
use crate::sys::{Errno, SysResult};
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use std::borrow::Borrow;
use std::ffi::{OsStr, OsString};
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub type NodeId = u64;
pub const ROOT_ID: NodeId = 1;

/// How many levels a chain of parents may have before it is taken for a loop (a bug: the
/// table never links a node under itself). Directories nest as deep as their layers let
/// them, as on the kernel overlay, which sets no limit of its own.
pub const MAX_DEPTH: usize = 1 << 20;

/// Directory fds kept open for reuse; bounded so idle directories hold no fd, and to a
/// quarter of the open-file limit, so that files opened through the mount find fds left.
const DIRFD_CACHE: usize = 1024;
const DIRFD_CACHE_MIN: usize = 16;
/// Whether fds ran short once already (warned once per daemon).
static FD_SHORTAGE_SEEN: AtomicBool = AtomicBool::new(false);
/// How often `NodeTable::stable_node` and `stable` try before they take what they get.
const STABLE_TRIES: usize = 4;
const NAME_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// A rename or removal under way (`NodeTable::renaming`).
pub struct Renaming<'a> {
    table: &'a NodeTable,
    moved: [Option<&'a Node>; 2],
}

impl Drop for Renaming<'_> {
    fn drop(&mut self) {
        for n in self.moved.iter().flatten() {
            n.name_seq.fetch_add(1, Ordering::SeqCst);
        }
        self.table.name_changes.fetch_add(1, Ordering::SeqCst);
        self.table.names_changing.fetch_sub(1, Ordering::SeqCst);
        RENAMING_HERE.with(|c| c.set(c.get() - 1));
    }
}

thread_local! {
    /// How many `Renaming` guards this thread holds.
    static RENAMING_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn dirfd_cache_size(fd_limit: u64) -> NonZeroUsize {
    let quarter = usize::try_from(fd_limit / 4).unwrap_or(usize::MAX);
    NonZeroUsize::new(quarter.clamp(DIRFD_CACHE_MIN, DIRFD_CACHE)).expect("at least the minimum")
}

/// Relative paths at least this long are resolved level by level from the nearest
/// ancestor whose fd is at hand instead of from the layer root, so depth is not limited by
/// PATH_MAX.
const DEEP_PATH: usize = 2048;
/// How many of the levels opened to reach a directory deeper than that go to the cache.
const DEEP_LEVELS_KEPT: usize = 16;

/// Where ids for nodes whose inode number is already taken start (a freed upper inode
/// number reused while the kernel still holds the old, unlinked file open).
const SYNTHETIC_BASE: u64 = 0x7fff_0000_0000_0000;

/// Where a node sits in the merged tree. The name is shared with the children map (and,
/// for nodes made from a listing, with the merged listing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub parent: NodeId,
    pub name: Name,
}

impl Loc {
    fn is(&self, parent: NodeId, name: &OsStr) -> bool {
        self.parent == parent && *self.name == *name
    }
}

/// The lower layers of a node. Nearly every node has none or one (a file's copy, a
/// directory in one lower), which are kept inline: a node costs one allocation, not two.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Lowers {
    #[default]
    None,
    One(LayerId),
    /// Boxed twice so that the enum stays two words.
    Many(Box<Vec<LayerId>>),
}

impl std::ops::Deref for Lowers {
    type Target = [LayerId];
    fn deref(&self) -> &[LayerId] {
        match self {
            Lowers::None => &[],
            Lowers::One(l) => std::slice::from_ref(l),
            Lowers::Many(v) => v,
        }
    }
}

impl From<Vec<LayerId>> for Lowers {
    fn from(v: Vec<LayerId>) -> Lowers {
        match v.as_slice() {
            [] => Lowers::None,
            [l] => Lowers::One(*l),
            _ => Lowers::Many(Box::new(v)),
        }
    }
}

impl FromIterator<LayerId> for Lowers {
    fn from_iter<I: IntoIterator<Item = LayerId>>(it: I) -> Lowers {
        Lowers::from(it.into_iter().collect::<Vec<_>>())
    }
}

impl Lowers {
    pub fn push(&mut self, l: LayerId) {
        let mut v = self.to_vec();
        v.push(l);
        *self = Lowers::from(v);
    }

    pub fn clear(&mut self) {
        *self = Lowers::None;
    }
}

/// Redirected lower paths of a directory, `(layer, path)`; boxed, as almost no node has any.
pub type Redirects = Option<Box<Vec<(LayerId, OsString)>>>;

/// Key of the children map: a name in a directory.
#[derive(Clone)]
struct ChildKey {
    parent: NodeId,
    name: Name,
}

/// What the children map hashes and compares; probing it through `dyn ChildName` borrows
/// the caller's name instead of allocating a key.
trait ChildName {
    fn parts(&self) -> (NodeId, &[u8]);
}

impl ChildName for ChildKey {
    fn parts(&self) -> (NodeId, &[u8]) {
        (self.parent, self.name.as_bytes())
    }
}

impl ChildName for (NodeId, &OsStr) {
    fn parts(&self) -> (NodeId, &[u8]) {
        (self.0, self.1.as_bytes())
    }
}

impl<'a> Borrow<dyn ChildName + 'a> for ChildKey {
    fn borrow(&self) -> &(dyn ChildName + 'a) {
        self
    }
}

impl Hash for dyn ChildName + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for dyn ChildName + '_ {
    fn eq(&self, o: &Self) -> bool {
        self.parts() == o.parts()
    }
}

impl Eq for dyn ChildName + '_ {}

// Must agree with the `dyn ChildName` impls, which lookups go through.
impl Hash for ChildKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for ChildKey {
    fn eq(&self, o: &Self) -> bool {
        self.parts() == o.parts()
    }
}

impl Eq for ChildKey {}

/// Which layers supply a node. Changes on copy-up only.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    /// The object exists in the upper layer at the node's path.
    pub upper: bool,
    /// For a directory: the lower layers merged below it, highest first (empty if opaque).
    /// For anything else: the highest lower layer holding it, if any.
    pub lowers: Lowers,
    /// The upper directory has been marked impure (it holds copied-up entries).
    pub impure: bool,
    /// `impure` has been read from the directory's xattr. Until then a false `impure` only
    /// says that this mount did not mark the directory.
    pub impure_read: bool,
    /// A listing of the directory has been read through the mount, so the kernel may hold
    /// it in its cache (with each entry's number and `..`).
    pub listed: bool,
    /// The immutable and append-only attributes no filesystem enforces for us, once read
    /// (see `Overlay::protection`): 0 unknown, else `PROT_KNOWN` and the `PROT_*` bits of
    /// those it has.
    pub prot: u8,
    /// A regular file whose copy seen is known to hold its own data: not a kernel overlay's
    /// metadata-only copy (see `Overlay::refuse_metadata_only`).
    pub whole: bool,
    /// Lower layers where this directory sits at another path than its own, because a
    /// kernel with `redirect_dir=on` renamed it (`overlay.redirect`): (layer, path).
    pub redirects: Redirects,
}

impl NodeState {
    /// The layer whose copy is the one seen.
    pub fn top(&self) -> Option<LayerId> {
        if self.upper {
            Some(UPPER)
        } else {
            self.lowers.first().copied()
        }
    }
}

pub struct Node {
    pub id: NodeId,
    /// File type bits (`S_IFMT`) — a node never changes type.
    pub kind: u32,
    /// The `st_ino` shown (see [`Node::ino`]).
    ino: AtomicU64,
    /// A directory's lookups of absent names, until its merged listing is built (see
    /// `namei`); any other node's files open through the mount (see `Overlay::prefill`).
    /// One field for both, as a node never changes kind and must stay small.
    pub tally: std::sync::atomic::AtomicU32,
    loc: RwLock<Loc>,
    pub state: RwLock<NodeState>,
    lookups: AtomicU64,
    /// (st_dev, st_ino) of the upper copy, once there is one (see `NodeInit::upper_key`);
    /// (0, 0) before.
    upper_key: Mutex<(u64, u64)>,
    /// Held while the node is copied up, so a copy-up happens once.
    pub copy_lock: Mutex<()>,
    /// Held, on a directory, while a name inside it is created, removed or renamed; on a
    /// file, while an open hands its data to the kernel (see `Overlay::prefill`).
    pub dir_lock: Mutex<()>,
    /// The object has no name left in the merged tree.
    pub unlinked: AtomicBool,
    /// Odd while a rename or removal through the mount moves or drops one of this node's
    /// names; bumped again when it is done (see `NodeTable::stable_node`).
    name_seq: std::sync::atomic::AtomicU32,
    /// A directory of a deep stack whose layer copies were found too big to list before
    /// its lookups (see `namei`), so that the sizes are summed once, not per lookup.
    pub big_layers: AtomicBool,
    /// What only some nodes have, kept off the node so that the many plain files of a big
    /// directory stay small.
    rare: Mutex<Option<Box<Rare>>>,
}

#[derive(Default)]
struct Rare {
    /// Further names of a hard-linked upper file.
    aliases: Vec<Loc>,
    /// The merged listing of a directory, once built; patched per entry afterwards.
    merged: Option<Arc<MergedDir>>,
    /// What is kept of the object when its last name goes while it is open, so that
    /// attributes can still be read and changed through it.
    detached: Option<Detached>,
    /// A copy whose lower object's number (which it shows) is recorded nowhere: once
    /// forgotten, its names show the upper copy's (see `NodeTable::forget`).
    number_in_memory: bool,
}

/// How an object that lost its last name is still reached.
enum Detached {
    /// An `O_PATH` fd to it.
    Fd(Arc<OwnedFd>),
    /// Its name in its lower layer's directory (an `O_PATH` fd): lower layers do not
    /// change, so the name leads to it as long as the mount lasts, and it is opened only
    /// when needed. Most removed lower files never are, and a `rm -rf` saves an open and
    /// a close per file.
    Lower(Arc<OwnedFd>, Name),
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// The `st_ino` shown. Equal to the id except for the root (whose id FUSE fixes at 1),
    /// for objects whose number another live object holds (a lower hard link's other
    /// names, a reused upper inode number), and for the copy of a lower hard link, which
    /// takes its own number at copy-up (see [`Node::set_ino`]).
    pub fn ino(&self) -> u64 {
        self.ino.load(Ordering::Relaxed)
    }

    /// A copy-up that breaks a lower hard link makes the copy another file than the
    /// link's other names: it shows the upper copy's number from then on, as on the
    /// kernel overlay (without `index`), not the number those names still show.
    pub fn set_ino(&self, ino: u64) {
        self.ino.store(ino, Ordering::Relaxed)
    }

    pub fn loc(&self) -> Loc {
        self.loc.read().clone()
    }

    pub fn name(&self) -> Name {
        self.loc.read().name.clone()
    }

    pub fn parent(&self) -> NodeId {
        self.loc.read().parent
    }

    /// Whether `name` in `parent` is the node's first-known name.
    pub fn is_named(&self, parent: NodeId, name: &OsStr) -> bool {
        self.loc.read().is(parent, name)
    }

    pub fn state(&self) -> NodeState {
        self.state.read().clone()
    }

    pub fn is_upper(&self) -> bool {
        self.state.read().upper
    }

    /// Whether the directory merges lower layers (it has lower parts of its own).
    pub fn has_lowers(&self) -> bool {
        !self.state.read().lowers.is_empty()
    }

    pub fn upper_key(&self) -> Option<(u64, u64)> {
        Some(*self.upper_key.lock()).filter(|k| *k != (0, 0))
    }

    pub fn set_upper_key(&self, key: Option<(u64, u64)>) {
        *self.upper_key.lock() = key.unwrap_or((0, 0));
    }

    /// See `Rare::number_in_memory`.
    pub fn set_number_in_memory(&self) {
        self.with_rare(|r| r.number_in_memory = true);
    }

    fn with_rare<T>(&self, f: impl FnOnce(&mut Rare) -> T) -> T {
        let mut r = self.rare.lock();
        f(r.get_or_insert_with(Default::default))
    }

    fn read_rare<T>(&self, f: impl FnOnce(&Rare) -> Option<T>) -> Option<T> {
        self.rare.lock().as_deref().and_then(f)
    }

    /// The directory's merged listing, if built.
    pub fn merged(&self) -> Option<Arc<MergedDir>> {
        self.read_rare(|r| r.merged.clone())
    }

    pub fn set_merged(&self, m: Option<Arc<MergedDir>>) {
        if m.is_some() || self.rare.lock().is_some() {
            self.with_rare(|r| r.merged = m);
        }
    }

    /// The fd kept for an object whose last name went while it was open.
    pub fn detached(&self) -> Option<Arc<OwnedFd>> {
        let mut rare = self.rare.lock();
        let kept = rare.as_deref_mut()?.detached.as_mut()?;
        if let Detached::Lower(dir, name) = kept {
            let fd = fs::openat(dir.as_fd(), name, libc::O_PATH, 0).ok()?;
            *kept = Detached::Fd(Arc::new(fd));
        }
        match kept {
            Detached::Fd(fd) => Some(fd.clone()),
            Detached::Lower(..) => None,
        }
    }

    /// Whether the fd kept for this object since it lost its last name is the upper inode
    /// `key` (st_dev, st_ino): then that inode is alive, and is this object.
    fn keeps_alive(&self, key: Option<(u64, u64)>) -> bool {
        self.read_rare(|r| match &r.detached {
            Some(Detached::Fd(fd)) => fs::fstat(fd.as_fd())
                .ok()
                .map(|st| Some((st.st_dev, st.st_ino)) == key),
            _ => None,
        })
        .unwrap_or(false)
    }

    /// The object lost its last name, as far as the node knew, and is found again under
    /// `loc`: that is its name from now on. The fd it was reached through stays, for when
    /// that name's directory is no longer known: the kernel keeps an O_TMPFILE file open
    /// under the directory it was made in, not under the one it was linked into, and may
    /// forget the latter meanwhile.
    fn revive(&self, loc: Loc) {
        *self.loc.write() = loc;
        self.unlinked.store(false, Ordering::Relaxed);
    }

    pub fn set_detached(&self, fd: Arc<OwnedFd>) {
        self.with_rare(|r| r.detached = Some(Detached::Fd(fd)));
    }

    /// Keeps the name `name` in lower directory `dir` as the way to the object once it has
    /// no name in the overlay.
    pub fn set_detached_lower(&self, dir: Arc<OwnedFd>, name: Name) {
        self.with_rare(|r| r.detached = Some(Detached::Lower(dir, name)));
    }

    /// The redirected path of this directory in lower `layer`, if a redirect put it there.
    pub fn redirect_in(&self, layer: LayerId) -> Option<OsString> {
        let st = self.state.read();
        let r = st.redirects.as_ref()?;
        r.iter().find(|(l, _)| *l == layer).map(|(_, p)| p.clone())
    }
}

/// `path` cut at slashes into pieces shorter than `limit` bytes each (a piece is longer
/// only where one name is).
fn path_chunks(path: &OsStr, limit: usize) -> Vec<OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    for c in path
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
    {
        if !cur.is_empty() && cur.len() + 1 + c.len() >= limit {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(b'/');
        }
        cur.extend_from_slice(c);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out.into_iter().map(OsString::from_vec).collect()
}

/// Redirect paths as a node keeps them.
pub fn redirects_from(v: Vec<(LayerId, OsString)>) -> Redirects {
    (!v.is_empty()).then(|| Box::new(v))
}

/// What a lookup found, before it becomes a node.
pub struct NodeInit {
    pub kind: u32,
    pub ino: u64,
    pub state: NodeState,
    /// (st_dev, st_ino) of the upper copy of a non-directory: names with the same upper
    /// inode are one object (hard links). Lower-only names are each their own object, as
    /// kernel overlayfs (index=off) breaks lower hard links on copy-up.
    pub upper_key: Option<(u64, u64)>,
    /// The stat of the copy that is seen, when finding the object made one; the lookup
    /// then answers with it instead of asking again.
    pub seen: Option<Stat>,
}

/// The node `id` of what `init` found, at `loc`, with one lookup reference.
fn new_node(id: NodeId, init: NodeInit, loc: Loc) -> Arc<Node> {
    let node = Arc::new(Node::new(id, init.kind, init.ino, loc, init.state));
    node.set_upper_key(init.upper_key);
    node.lookups.store(1, Ordering::Relaxed);
    node
}

/// Heap freed with a forgotten node, roughly: the node, its name and its two map entries.
const NODE_HEAP_BYTES: usize = std::mem::size_of::<Node>() + 64;

/// A layer's copy of a directory, about to be listed (see `NodeTable::list_dir`).
pub struct LayerDir {
    pub fd: Arc<OwnedFd>,
    /// A second open of it, at its start, when `fd` was not opened to be read.
    reader: Option<OwnedFd>,
}

impl LayerDir {
    /// Hands each entry (name, inode number, `d_type`) to `f`, as the directory holds it
    /// now; once.
    pub fn for_each_entry(&self, f: impl FnMut(&OsStr, u64, u8)) -> SysResult<()> {
        let r = self.reader.as_ref().map_or(self.fd.as_fd(), |r| r.as_fd());
        fs::for_each_dirent_at_start(r, f)
    }
}

pub struct NodeTable {
    nodes: DashMap<NodeId, Arc<Node>>,
    children: DashMap<ChildKey, NodeId>,
    /// Next id to try for a node whose inode number is taken by another live object.
    next_synthetic: AtomicU64,
    /// Counters for giving memory back after mass forgets (see `after_removal`).
    removals: AtomicU64,
    /// Renames and removals through the mount: bumped as each starts and ends (`renaming`),
    /// and how many are under way. See `stable`; each node keeps its own count too.
    name_changes: AtomicU64,
    names_changing: std::sync::atomic::AtomicUsize,
    inserts: AtomicU64,
    peak: std::sync::atomic::AtomicUsize,
    dirfds: Mutex<LruCache<(NodeId, LayerId), Arc<OwnedFd>>>,
    /// Whether a lower directory is marked as holding xattr whiteouts, so that lookups of
    /// empty files need not ask each file for a whiteout xattr. Lower layers do not change.
    xwhiteouts: Mutex<LruCache<(NodeId, LayerId), bool>>,
    roots: Vec<Arc<OwnedFd>>,
}

impl NodeTable {
    pub fn new(layers: &Layers) -> SysResult<NodeTable> {
        let mut roots = Vec::new();
        if let Some(u) = &layers.upper {
            roots.push(u.root.clone());
        } else {
            // Keeps layer ids as indexes; never handed out, as a read-only mount has no upper.
            roots.push(layers.lowers[0].root.clone());
        }
        for l in &layers.lowers {
            roots.push(l.root.clone());
        }
        let t = NodeTable {
            nodes: DashMap::default(),
            children: DashMap::default(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            removals: AtomicU64::new(0),
            name_changes: AtomicU64::new(0),
            names_changing: std::sync::atomic::AtomicUsize::new(0),
            inserts: AtomicU64::new(0),
            peak: std::sync::atomic::AtomicUsize::new(0),
            dirfds: Mutex::new(LruCache::new(dirfd_cache_size(
                crate::sys::process::fd_limit(),
            ))),
            xwhiteouts: Mutex::new(LruCache::new(NonZeroUsize::new(DIRFD_CACHE).unwrap())),
            roots,
        };
        let root_ino = match &layers.upper {
            Some(u) => layers.ino.map(u.dev, u.ino),
            None => layers.ino.map(layers.lowers[0].dev, layers.lowers[0].ino),
        };
        let state = NodeState {
            upper: layers.upper.is_some(),
            lowers: layers.lower_ids().collect(),
            ..Default::default()
        };
        let root = Arc::new(Node::new(
            ROOT_ID,
            libc::S_IFDIR,
            root_ino,
            Loc {
                parent: ROOT_ID,
                name: Name::from(OsStr::new("")),
            },
            state,
        ));
        // The root is never forgotten: give it a reference of its own.
        root.lookups.store(1, Ordering::Relaxed);
        t.nodes.insert(ROOT_ID, root);
        Ok(t)
    }

    pub fn get(&self, id: NodeId) -> SysResult<Arc<Node>> {
        self.nodes.get(&id).map(|n| n.clone()).ok_or(Errno::ESTALE)
    }

    /// How many nodes are live (held by the kernel).
    pub fn live_count(&self) -> usize {
        self.nodes.len()
    }

    /// The live node for `name` in `parent`, with one more lookup reference taken.
    pub fn lookup_cached(&self, parent: NodeId, name: &OsStr) -> Option<Arc<Node>> {
        let id = *self.children.get(&(parent, name) as &dyn ChildName)?;
        let n = self.nodes.get(&id)?;
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Some(n.clone())
    }

    /// The live node for `name` in `parent` without taking a reference.
    pub fn peek_child(&self, parent: NodeId, name: &OsStr) -> Option<Arc<Node>> {
        let id = *self.children.get(&(parent, name) as &dyn ChildName)?;
        self.nodes.get(&id).map(|n| n.clone())
    }

    /// The shown inode number of each live child of `parent` among `names`, as
    /// `peek_child` of every one of them would find them; perhaps with other live children
    /// of `parent` too. Walks whichever is smaller: the names asked about, or every live
    /// name in the mount (a fresh listing of a big directory has few of its names live,
    /// and probing the map costs more per name than walking it).
    pub fn live_child_inos<'a>(
        &self,
        parent: NodeId,
        names: impl ExactSizeIterator<Item = &'a Name>,
    ) -> Vec<(Name, u64)> {
        if names.len() <= self.children.len() {
            return names
                .filter_map(|name| Some((name.clone(), self.peek_child(parent, name)?.ino())))
                .collect();
        }
        // Ids first, so that no shard of `children` is held while `nodes` is read.
        let live: Vec<(Name, NodeId)> = self
            .children
            .iter()
            .filter(|kv| kv.key().parent == parent)
            .map(|kv| (kv.key().name.clone(), *kv.value()))
            .collect();
        live.into_iter()
            .filter_map(|(name, id)| Some((name, self.nodes.get(&id)?.ino())))
            .collect()
    }

    /// Makes the node for `name` in `parent` — or, when a live node already stands for the
    /// same object (an upper hard link), adds the name to it — with one lookup reference.
    ///
    /// The node id is the object's `st_ino` where it can be (one number to follow in
    /// traces); another object holding that number gets a synthetic id. Replies carry
    /// node id and `st_ino` apart, so callers see the real `st_ino` either way.
    pub fn insert(&self, parent: NodeId, name: Name, init: NodeInit) -> Arc<Node> {
        let key = ChildKey {
            parent,
            name: name.clone(),
        };
        let loc = Loc { parent, name };
        let mut id = self.first_id(init.ino);
        loop {
            match self.nodes.entry(id) {
                dashmap::Entry::Vacant(v) => {
                    let node = new_node(id, init, loc);
                    v.insert(node.clone());
                    self.children.insert(key, id);
                    self.note_size();
                    return node;
                }
                dashmap::Entry::Occupied(o) => {
                    let n = o.get().clone();
                    let same_upper = init.upper_key.is_some() && n.upper_key() == init.upper_key;
                    let unlinked = n.unlinked.load(Ordering::Relaxed);
                    let same_object = n.kind == init.kind
                        && ((!unlinked && (n.loc() == loc || same_upper))
                            || (unlinked && same_upper && n.keeps_alive(init.upper_key)));
                    if same_object && unlinked {
                        // An upper hard link whose known names were all removed while it
                        // was open, found again under a name the node never knew: the fd
                        // the node keeps holds that inode, so its number cannot have gone
                        // to another file. One node, or the kernel would keep two inodes'
                        // attributes for one file, one of them stale.
                        n.revive(loc.clone());
                    }
                    if same_object {
                        n.lookups.fetch_add(1, Ordering::Relaxed);
                        if n.loc() != loc {
                            n.with_rare(|r| {
                                if !r.aliases.contains(&loc) {
                                    r.aliases.push(loc.clone());
                                }
                            });
                        }
                        drop(o);
                        self.children.insert(key, id);
                        return n;
                    }
                }
            }
            id = self.synthetic_id();
        }
    }

    /// The id a node of the object numbered `ino` tries first: that number, unless it is
    /// the root's or none.
    fn first_id(&self, ino: u64) -> NodeId {
        if ino == ROOT_ID || ino == 0 {
            self.synthetic_id()
        } else {
            ino
        }
    }

    fn synthetic_id(&self) -> NodeId {
        self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes one more lookup reference on a node (a hard link made through the mount); a
    /// node with no name (O_TMPFILE) takes the new one as its name.
    pub fn add_link(&self, node: &Arc<Node>, parent: NodeId, name: &OsStr) {
        node.lookups.fetch_add(1, Ordering::Relaxed);
        let loc = Loc {
            parent,
            name: Name::from(name),
        };
        if node.unlinked.load(Ordering::Relaxed) {
            node.revive(loc.clone());
        } else {
            node.with_rare(|r| r.aliases.push(loc.clone()));
        }
        self.children.insert(
            ChildKey {
                parent,
                name: loc.name,
            },
            node.id,
        );
    }

    /// Makes the node of a file with no name (O_TMPFILE) in directory `parent`, reached
    /// through `fd` (`O_PATH`), with one lookup reference. No name leads to it until
    /// `add_link` gives it one.
    pub fn insert_unnamed(&self, parent: NodeId, init: NodeInit, fd: Arc<OwnedFd>) -> Arc<Node> {
        let loc = Loc {
            parent,
            name: Name::from(OsStr::new("")),
        };
        let mut id = self.first_id(init.ino);
        // As in `insert`, taken atomically: a live node may hold the number already.
        loop {
            match self.nodes.entry(id) {
                dashmap::Entry::Vacant(v) => {
                    let node = new_node(id, init, loc);
                    node.unlinked.store(true, Ordering::Relaxed);
                    node.set_detached(fd);
                    v.insert(node.clone());
                    self.note_size();
                    return node;
                }
                dashmap::Entry::Occupied(_) => id = self.synthetic_id(),
            }
        }
    }

    /// Drops `n` lookup references; the node goes when none are left.
    ///
    /// Returns the names of a forgotten copy whose number lived only in memory
    /// (`Rare::number_in_memory`): listings that hold them show the old number.
    pub fn forget(&self, id: NodeId, n: u64) -> Vec<Loc> {
        let mut renumbered = Vec::new();
        if id == ROOT_ID {
            return renumbered;
        }
        let removed = self.nodes.remove_if(&id, |_, node| {
            let prev = node.lookups.fetch_sub(
                n.min(node.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            prev <= n
        });
        if let Some((_, node)) = removed {
            let loc = node.loc();
            self.remove_child(loc.parent, &loc.name, id);
            // The node is gone: its aliases can be taken rather than copied.
            let (aliases, in_memory) = node
                .rare
                .lock()
                .as_deref_mut()
                .map(|r| (std::mem::take(&mut r.aliases), r.number_in_memory))
                .unwrap_or_default();
            for a in &aliases {
                self.remove_child(a.parent, &a.name, id);
            }
            if in_memory && !node.unlinked.load(Ordering::Relaxed) {
                renumbered.push(loc);
                renumbered.extend(aliases);
            }
            self.drop_dirfds(&node);
            self.after_removal();
        }
        renumbered
    }

    /// After many nodes are forgotten (the kernel dropped its inode cache), hands the memory
    /// back: the maps keep their capacity otherwise, and glibc its freed pages (`sys::heap`
    /// trims once the wave of forgets pauses), so the daemon would stay at its peak size for
    /// good. The maps are checked every 4096 removals.
    fn after_removal(&self) {
        crate::sys::heap::freed(NODE_HEAP_BYTES);
        if self.removals.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 {
            return;
        }
        let len = self.nodes.len();
        let peak = self.peak.fetch_max(len, Ordering::Relaxed).max(len);
        if peak >= 16_384 && len <= peak / 4 {
            self.peak.store(len, Ordering::Relaxed);
            self.nodes.shrink_to_fit();
            self.children.shrink_to_fit();
        }
    }

    /// Notes the node count after an insertion, for [`Self::after_removal`].
    fn note_size(&self) {
        if self.inserts.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.peak.fetch_max(self.nodes.len(), Ordering::Relaxed);
        }
    }

    fn remove_child(&self, parent: NodeId, name: &OsStr, id: NodeId) {
        self.children
            .remove_if(&(parent, name) as &dyn ChildName, |_, v| *v == id);
    }

    /// Records that `name` in `parent` no longer names `node` (unlink, rmdir, or the target
    /// of a rename). Returns whether the node has no name left.
    pub fn unlink_name(&self, node: &Node, parent: NodeId, name: &OsStr) -> bool {
        self.remove_child(parent, name, node.id);
        let mut loc = node.loc.write();
        let mut rare = node.rare.lock();
        let next = rare.as_deref_mut().and_then(|r| {
            r.aliases.retain(|l| !l.is(parent, name));
            if loc.is(parent, name) {
                r.aliases.pop()
            } else {
                None
            }
        });
        if loc.is(parent, name) {
            if let Some(next) = next {
                *loc = next;
                return false;
            }
            node.unlinked.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Moves a node to a new name (rename).
    pub fn move_node(
        &self,
        node: &Node,
        old_parent: NodeId,
        old_name: &OsStr,
        parent: NodeId,
        name: &OsStr,
    ) {
        self.remove_child(old_parent, old_name, node.id);
        let new = Loc {
            parent,
            name: Name::from(name),
        };
        {
            let mut loc = node.loc.write();
            if loc.is(old_parent, old_name) {
                *loc = new.clone();
            } else {
                node.with_rare(|r| {
                    r.aliases.retain(|l| !l.is(old_parent, old_name));
                    r.aliases.push(new.clone());
                });
            }
        }
        self.children.insert(
            ChildKey {
                parent,
                name: new.name,
            },
            node.id,
        );
    }

    /// A name of `node` whose parent the kernel still holds, with that parent. The
    /// first-known name of a hard-linked file may sit in a directory that has since been
    /// forgotten; another name then takes its place.
    pub fn live_parent(&self, node: &Node) -> SysResult<(Arc<Node>, Name)> {
        let loc = node.loc();
        if let Ok(p) = self.get(loc.parent) {
            return Ok((p, loc.name));
        }
        let mut primary = node.loc.write();
        let mut rare = node.rare.lock();
        let al = rare
            .as_deref_mut()
            .map(|r| &mut r.aliases)
            .ok_or(Errno::ESTALE)?;
        let Some((i, parent)) = al
            .iter()
            .enumerate()
            .find_map(|(i, l)| self.get(l.parent).ok().map(|p| (i, p)))
        else {
            return Err(Errno::ESTALE);
        };
        let alt = al.swap_remove(i);
        al.push(std::mem::replace(&mut *primary, alt.clone()));
        Ok((parent, alt.name))
    }

    /// Path of `node` relative to the root of `layer`, rebuilt from its parent chain. In a
    /// lower layer it starts from the nearest ancestor (or the node) that a redirect put
    /// elsewhere there; the flag tells whether one did.
    fn path_in(&self, node: &Node, layer: LayerId) -> SysResult<(OsString, bool)> {
        let mut parts: Vec<Name> = Vec::new();
        let mut base: Option<OsString> = None;
        let mut next: Option<Arc<Node>> = None;
        loop {
            let cur: &Node = next.as_deref().unwrap_or(node);
            if cur.id == ROOT_ID {
                break;
            }
            if layer != UPPER {
                if let Some(p) = cur.redirect_in(layer) {
                    base = Some(p);
                    break;
                }
            }
            let (parent, name) = self.live_parent(cur)?;
            parts.push(name);
            next = Some(parent);
            if parts.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
        }
        let redirected = base.is_some();
        let mut out = base.unwrap_or_default().into_vec();
        for p in parts.iter().rev() {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(p.as_bytes());
        }
        Ok((OsString::from_vec(out), redirected))
    }

    /// Path of directory `node` in lower `layer` (see `path_in`).
    pub fn layer_path(&self, node: &Node, layer: LayerId) -> SysResult<OsString> {
        Ok(self.path_in(node, layer)?.0)
    }

    /// An `O_PATH` fd for directory `node` in `layer`, from the bounded cache when it can.
    pub fn dir_fd(&self, node: &Node, layer: LayerId) -> SysResult<Arc<OwnedFd>> {
        self.open_dir(node, layer, false).map(|(fd, _)| fd)
    }

    /// The directory's fd in `layer` (as `dir_fd`), to read its entries from. When the fd
    /// is not cached yet it is opened for reading (without moving atime), to be read from
    /// its start before it is cached, which saves the second open a cached `O_PATH` fd
    /// needs; only `*at` calls use a cached fd, so its position never matters after that.
    pub fn list_dir(&self, node: &Node, layer: LayerId) -> SysResult<LayerDir> {
        let (fd, fresh) = self.open_dir(node, layer, true)?;
        let reader = if fresh {
            None
        } else {
            Some(fs::open_to_list(fd.as_fd())?)
        };
        Ok(LayerDir { fd, reader })
    }

    fn open_dir(
        &self,
        node: &Node,
        layer: LayerId,
        to_list: bool,
    ) -> SysResult<(Arc<OwnedFd>, bool)> {
        if let Some(fd) = self.cached_dir_fd(node, layer) {
            return Ok((fd, false));
        }
        let mut opened = Vec::new();
        let (fd, fresh) = self.stable(|| {
            opened.clear();
            self.open_dir_by_path(node, layer, to_list, &mut opened)
        })?;
        let fd = Arc::new(fd);
        let mut cache = self.dirfds.lock();
        for (key, dir) in opened {
            cache.put(key, dir);
        }
        cache.put((node.id, layer), fd.clone());
        Ok((fd, fresh))
    }

    /// Directory `node`'s fd in `layer` if it is at hand: the layer's root, or cached.
    fn cached_dir_fd(&self, node: &Node, layer: LayerId) -> Option<Arc<OwnedFd>> {
        if node.id == ROOT_ID {
            return Some(self.roots[layer as usize].clone());
        }
        self.dirfds.lock().get(&(node.id, layer)).cloned()
    }

    fn open_dir_by_path(
        &self,
        node: &Node,
        layer: LayerId,
        to_list: bool,
        opened: &mut Vec<((NodeId, LayerId), Arc<OwnedFd>)>,
    ) -> SysResult<(OwnedFd, bool)> {
        let open = |at: BorrowedFd<'_>, rel: &OsStr| -> SysResult<(OwnedFd, bool)> {
            let path = libc::O_PATH | libc::O_DIRECTORY;
            if to_list {
                let read = libc::O_RDONLY | libc::O_DIRECTORY;
                match fs::open_beneath(at, rel, read | libc::O_NOATIME, 0) {
                    Ok(fd) => return Ok((fd, true)),
                    // Not the owner (O_NOATIME) or no read permission: an O_PATH fd
                    // still serves lookups, and listing reports its own error.
                    Err(Errno::EPERM) | Err(Errno::EACCES) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((fs::open_beneath(at, rel, path, 0)?, false))
        };
        // From the parent's fd when it is cached: one name to resolve, however deep the
        // directory (a path from the root costs a step per level: walking 20000 levels down
        // and copying up the bottom took 53 s that way, 0.9 s on the kernel overlay).
        if layer == UPPER || node.redirect_in(layer).is_none() {
            let (parent, name) = self.live_parent(node)?;
            if let Some(pfd) = self.cached_dir_fd(&parent, layer) {
                return self.with_fds(|| open(pfd.as_fd(), &name));
            }
        }
        let (rel, redirected) = self.path_in(node, layer)?;
        let root = self.roots[layer as usize].as_fd();
        if rel.len() < DEEP_PATH {
            return self.with_fds(|| open(root, &rel));
        }
        if redirected {
            // A redirect's path longer than one path walk takes (the kernel writes up to
            // its redirect_max, which may be raised; we write what the upper filesystem
            // holds): a few components at a time.
            let chunks = path_chunks(&rel, DEEP_PATH);
            let (last, leading) = chunks.split_last().ok_or(Errno::ENOENT)?;
            return self.with_fds(|| {
                let mut at: Option<OwnedFd> = None;
                for c in leading {
                    let from = at.as_ref().map_or(root, |f| f.as_fd());
                    at = Some(fs::open_beneath(
                        from,
                        c,
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )?);
                }
                open(at.as_ref().map_or(root, |f| f.as_fd()), last)
            });
        }
        // Too long for one path walk (PATH_MAX): down from the nearest ancestor whose fd is
        // at hand, one level at a time, in a loop (a directory may nest deeper than the
        // stack would allow recursion through `dir_fd`). The levels opened on the way go
        // to `opened`, for the cache: the next call, for a neighbour, then starts close by
        // (`rm -rf` of a tree 5000 levels deep went up it opening every level each time).
        let mut below: Vec<(NodeId, Name)> = Vec::new();
        let (mut parent, name) = self.live_parent(node)?;
        let start = loop {
            if let Some(fd) = self.cached_dir_fd(&parent, layer) {
                break fd;
            }
            if layer != UPPER && parent.redirect_in(layer).is_some() {
                // Reached by its redirect's path from the root, not by its name here.
                break self.dir_fd(&parent, layer)?;
            }
            if below.len() > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let (up, n) = self.live_parent(&parent)?;
            below.push((parent.id, n));
            parent = up;
        };
        let mut at = start;
        let levels = below.len();
        for (i, (id, n)) in below.into_iter().rev().enumerate() {
            let next = self.with_fds(|| {
                fs::open_beneath(at.as_fd(), &n, libc::O_PATH | libc::O_DIRECTORY, 0)
            })?;
            at = Arc::new(next);
            // Only the levels nearest the directory: all of them would push out the
            // other layers' levels that the same caller needs next.
            if levels - i <= DEEP_LEVELS_KEPT {
                opened.push(((id, layer), at.clone()));
            }
        }
        self.with_fds(|| open(at.as_fd(), &name))
    }

    /// Whether directory `node`, reached in lower `layer` as `dir`, holds xattr whiteouts.
    pub fn lower_xwhiteouts(&self, node: &Node, layer: LayerId, dir: BorrowedFd<'_>) -> bool {
        if let Some(v) = self.xwhiteouts.lock().get(&(node.id, layer)) {
            return *v;
        }
        let v = whiteout::dir_has_xwhiteouts(dir);
        self.xwhiteouts.lock().put((node.id, layer), v);
        v
    }

    /// Runs `f`, and once more after closing the cached directory fds if it failed for
    /// want of fds (EMFILE, ENFILE): with many files open through the mount, an open
    /// must not fail while fds we only keep for speed could make room.
    pub fn with_fds<T>(&self, f: impl Fn() -> SysResult<T>) -> SysResult<T> {
        match f() {
            Err(e) if e == Errno::EMFILE || e == Errno::ENFILE => {
                let cached = {
                    let mut c = self.dirfds.lock();
                    let n = c.len();
                    c.clear();
                    n
                };
                if cached == 0 {
                    return Err(e);
                }
                if !FD_SHORTAGE_SEEN.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "out of file descriptors (limit {}): closed {cached} cached directory fds; raise the hard limit (ulimit -Hn) for many open files",
                        crate::sys::process::fd_limit()
                    );
                }
                f()
            }
            other => other,
        }
    }

    /// Marks a rename or removal through the mount as under way until the guard drops: for
    /// the nodes whose names it moves or drops (`moved`: the source and any victim), and
    /// for paths in general. Hold it from before the first system call that changes a name
    /// in the upper layer until the node table agrees with it again.
    pub fn renaming<'a>(&'a self, moved: [Option<&'a Node>; 2]) -> Renaming<'a> {
        RENAMING_HERE.with(|c| c.set(c.get() + 1));
        self.names_changing.fetch_add(1, Ordering::SeqCst);
        self.name_changes.fetch_add(1, Ordering::SeqCst);
        for n in moved.iter().flatten() {
            n.name_seq.fetch_add(1, Ordering::SeqCst);
        }
        Renaming { table: self, moved }
    }

    /// Runs `f`, which reaches `node` by its name in its parent's fd, again (up to a few
    /// times) if a rename or removal through the mount moved or dropped that name meanwhile.
    /// The kernel does not serialise every request about a node with a rename of it (a
    /// stat, an open, a getxattr of a directory another process moves), so the name `f`
    /// used may have been its old one: it then failed with ENOENT, or reached whatever
    /// took the name (for a directory with lower parts, the whiteout left there). A retry
    /// sees the node table as the rename left it, or the node unlinked, which callers
    /// answer from its detached fd. `f` must be safe to repeat. (The parent's fd follows
    /// the parent wherever it is renamed; opening it by path is `stable`.)
    pub fn stable_node<T>(&self, node: &Node, f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
        self.retry_if_changed(|| node.name_seq.load(Ordering::SeqCst), f)
    }

    /// As `stable_node`, for a path from a layer's root, which a rename of any directory
    /// on it changes: repeated if any rename or removal overlapped it.
    pub fn stable<T>(&self, f: impl FnMut() -> SysResult<T>) -> SysResult<T> {
        self.retry_if_changed(
            || {
                let busy = self.names_changing.load(Ordering::SeqCst) != 0;
                // Odd while busy, as a node's own count.
                (self.name_changes.load(Ordering::SeqCst) as u32) << 1 | busy as u32
            },
            f,
        )
    }

    /// Runs `f` until the count `seq` reads even (nothing under way) and unchanged across
    /// it, at most `STABLE_TRIES` times, waiting up to `NAME_CHANGE_WAIT` each time for a
    /// change under way to end (a rename is a system call or two).
    fn retry_if_changed<T>(
        &self,
        seq: impl Fn() -> u32,
        mut f: impl FnMut() -> SysResult<T>,
    ) -> SysResult<T> {
        if RENAMING_HERE.with(|c| c.get()) > 0 {
            // The rename under way is this thread's own: nothing to wait for.
            return f();
        }
        for _ in 0..STABLE_TRIES {
            let mut before = seq();
            if before & 1 != 0 {
                let start = std::time::Instant::now();
                while before & 1 != 0 && start.elapsed() < NAME_CHANGE_WAIT {
                    std::thread::yield_now();
                    before = seq();
                }
            }
            let res = f();
            if before & 1 == 0 && seq() == before {
                return res;
            }
        }
        f()
    }

    /// Forgets cached fds of a directory that went away or changed layers.
    pub fn drop_dirfds(&self, node: &Node) {
        if !node.is_dir() {
            return;
        }
        let st = node.state();
        let mut c = self.dirfds.lock();
        let mut x = self.xwhiteouts.lock();
        for l in std::iter::once(UPPER).chain(st.lowers.iter().copied()) {
            c.pop(&(node.id, l));
            x.pop(&(node.id, l));
        }
    }
}

impl Node {
    fn new(id: NodeId, kind: u32, ino: u64, loc: Loc, state: NodeState) -> Node {
        Node {
            id,
            kind,
            ino: AtomicU64::new(ino),
            tally: std::sync::atomic::AtomicU32::new(0),
            loc: RwLock::new(loc),
            state: RwLock::new(state),
            lookups: AtomicU64::new(0),
            upper_key: Mutex::new((0, 0)),
            copy_lock: Mutex::new(()),
            dir_lock: Mutex::new(()),
            unlinked: AtomicBool::new(false),
            name_seq: std::sync::atomic::AtomicU32::new(0),
            big_layers: AtomicBool::new(false),
            rare: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("loc", &self.loc())
            .finish()
    }
}

// Every live object of the mount has a node; a big directory walked by `find` makes
// hundreds of thousands. Keep one within the 176-byte allocation its `Arc` fits.
const _: () = assert!(std::mem::size_of::<Node>() <= 152);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_directory_fds_take_a_quarter_of_the_fd_limit_within_bounds() {
        let size = |limit| dirfd_cache_size(limit).get();
        assert_eq!(size(128), 32);
        assert_eq!(size(1024), 256);
        assert_eq!(size(40), DIRFD_CACHE_MIN);
        assert_eq!(size(1 << 20), DIRFD_CACHE);
        assert_eq!(size(u64::MAX), DIRFD_CACHE);
    }

    #[test]
    fn long_paths_are_cut_at_slashes_into_pieces_under_the_limit() {
        let p = |s: &str| OsString::from(s);
        assert_eq!(path_chunks(&p("a/bb/ccc"), 100), vec![p("a/bb/ccc")]);
        assert_eq!(path_chunks(&p("a/bb/ccc"), 6), vec![p("a/bb"), p("ccc")]);
        assert_eq!(path_chunks(&p("/a//b/"), 100), vec![p("a/b")]);
        let names: Vec<String> = (0..20)
            .map(|i| format!("{i:02}{}", "x".repeat(253)))
            .collect();
        let long = names.join("/");
        let chunks = path_chunks(OsStr::new(&long), DEEP_PATH);
        assert!(
            chunks.iter().all(|c| c.len() < DEEP_PATH),
            "{:?}",
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        let joined: Vec<&str> = chunks.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(joined.join("/"), long);
    }
}
