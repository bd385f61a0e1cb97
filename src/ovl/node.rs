//! Merged objects ("nodes") and the table that holds the live ones.
//!
//! A node is one object of the merged tree. It knows its parent node and name — not a path
//! string — so a rename is one update; its path inside a layer is rebuilt from the parent
//! chain when a layer must be reached, then resolved beneath that layer's root fd.
//! The node id is the FUSE node id; a node lives while the kernel holds a lookup on it.
//! Names of one upper inode (hard links) share one node, so nlink and data agree across
//! the names; lower hard links are separate objects, as in kernel overlayfs (index=off).

use super::layers::{LayerId, Layers, UPPER};
use super::readdir::MergedDir;
use crate::sys::{fs, Errno, SysResult};
use dashmap::DashMap;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use std::ffi::{OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub type NodeId = u64;
pub const ROOT_ID: NodeId = 1;

/// Directory fds kept open for reuse; bounded so idle directories hold no fd.
const DIRFD_CACHE: usize = 1024;

/// Relative paths at least this long are resolved from the parent directory's fd instead
/// of from the layer root, so depth is not limited by PATH_MAX.
const DEEP_PATH: usize = 2048;

/// Where ids for nodes whose inode number is already taken start (a freed upper inode
/// number reused while the kernel still holds the old, unlinked file open).
const SYNTHETIC_BASE: u64 = 0x7fff_0000_0000_0000;

/// Where a node sits in the merged tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub parent: NodeId,
    pub name: OsString,
}

/// Which layers supply a node. Changes on copy-up only.
#[derive(Clone, Debug, Default)]
pub struct NodeState {
    /// The object exists in the upper layer at the node's path.
    pub upper: bool,
    /// For a directory: the lower layers merged below it, highest first (empty if opaque).
    /// For anything else: the highest lower layer holding it, if any.
    pub lowers: Vec<LayerId>,
    /// The upper directory has been marked impure (it holds copied-up entries).
    pub impure: bool,
    /// Lower layers where this directory sits at another path than its own, because a
    /// kernel with `redirect_dir=on` renamed it (`overlay.redirect`): (layer, path).
    pub redirects: Vec<(LayerId, OsString)>,
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
    /// The `st_ino` shown. Equal to the id except for the root (whose id FUSE fixes at 1)
    /// and for objects whose number another live object holds (a lower hard link whose
    /// sibling was copied up, a reused upper inode number).
    pub ino: u64,
    loc: RwLock<Loc>,
    /// Further names of a hard-linked upper file.
    aliases: Mutex<Vec<Loc>>,
    pub state: RwLock<NodeState>,
    lookups: AtomicU64,
    /// Held while the node is copied up, so a copy-up happens once.
    pub copy_lock: Mutex<()>,
    /// Held (on a directory) while a name inside it is created, removed or renamed.
    pub dir_lock: Mutex<()>,
    /// The merged listing of a directory, once built; patched per entry afterwards.
    pub merged: Mutex<Option<Arc<MergedDir>>>,
    /// An fd to the object kept when its last name goes while it is open, so attributes
    /// can still be read and changed through it.
    pub detached: Mutex<Option<Arc<OwnedFd>>>,
    /// The object has no name left in the merged tree.
    pub unlinked: AtomicBool,
    /// Lookups of absent names in this directory, until its merged listing is built.
    pub misses: std::sync::atomic::AtomicU32,
    /// (st_dev, st_ino) of the upper copy, once there is one (see `NodeInit::upper_key`).
    pub upper_key: Mutex<Option<(u64, u64)>>,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn loc(&self) -> Loc {
        self.loc.read().clone()
    }

    pub fn name(&self) -> OsString {
        self.loc.read().name.clone()
    }

    pub fn parent(&self) -> NodeId {
        self.loc.read().parent
    }

    pub fn state(&self) -> NodeState {
        self.state.read().clone()
    }

    pub fn is_upper(&self) -> bool {
        self.state.read().upper
    }
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
}

pub struct NodeTable {
    nodes: DashMap<NodeId, Arc<Node>>,
    children: DashMap<(NodeId, OsString), NodeId>,
    /// Next id to try for a node whose inode number is taken by another live object.
    next_synthetic: AtomicU64,
    /// Counters for giving memory back after mass forgets (see `after_removal`).
    removals: AtomicU64,
    inserts: AtomicU64,
    peak: std::sync::atomic::AtomicUsize,
    dirfds: Mutex<LruCache<(NodeId, LayerId), Arc<OwnedFd>>>,
    roots: Vec<Arc<OwnedFd>>,
}

impl NodeTable {
    pub fn new(layers: &Layers) -> SysResult<NodeTable> {
        let mut roots = Vec::new();
        if let Some(u) = &layers.upper {
            roots.push(Arc::new(u.root.try_clone().map_err(Errno::from)?));
        } else {
            // Keeps layer ids as indexes; never handed out, as a read-only mount has no upper.
            roots.push(Arc::new(
                layers.lowers[0].root.try_clone().map_err(Errno::from)?,
            ));
        }
        for l in &layers.lowers {
            roots.push(Arc::new(l.root.try_clone().map_err(Errno::from)?));
        }
        let t = NodeTable {
            nodes: DashMap::new(),
            children: DashMap::new(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            removals: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            peak: std::sync::atomic::AtomicUsize::new(0),
            dirfds: Mutex::new(LruCache::new(NonZeroUsize::new(DIRFD_CACHE).unwrap())),
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
                name: OsString::new(),
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
        let id = *self.children.get(&(parent, name.to_os_string()))?;
        let n = self.nodes.get(&id)?;
        n.lookups.fetch_add(1, Ordering::Relaxed);
        Some(n.clone())
    }

    /// The live node for `name` in `parent` without taking a reference.
    pub fn peek_child(&self, parent: NodeId, name: &OsStr) -> Option<Arc<Node>> {
        let id = *self.children.get(&(parent, name.to_os_string()))?;
        self.nodes.get(&id).map(|n| n.clone())
    }

    /// Makes the node for `name` in `parent` — or, when a live node already stands for the
    /// same object (an upper hard link), adds the name to it — with one lookup reference.
    ///
    /// The node id is the object's `st_ino` where it can be: fuser sends an entry's node id
    /// as its inode number. Another object holding that number gets a synthetic id; its
    /// entry replies then carry no attribute lifetime, so the kernel asks getattr at once
    /// and learns the real `st_ino` from it.
    pub fn insert(&self, parent: NodeId, name: &OsStr, init: NodeInit) -> Arc<Node> {
        let loc = Loc {
            parent,
            name: name.to_os_string(),
        };
        let key = (parent, name.to_os_string());
        let mut id = init.ino;
        if id == ROOT_ID || id == 0 {
            id = self.synthetic_id();
        }
        loop {
            match self.nodes.entry(id) {
                dashmap::Entry::Vacant(v) => {
                    let node = Arc::new(Node::new(id, init.kind, init.ino, loc, init.state));
                    *node.upper_key.lock() = init.upper_key;
                    node.lookups.store(1, Ordering::Relaxed);
                    v.insert(node.clone());
                    self.children.insert(key, id);
                    self.note_size();
                    return node;
                }
                dashmap::Entry::Occupied(o) => {
                    let n = o.get().clone();
                    let same_upper =
                        init.upper_key.is_some() && *n.upper_key.lock() == init.upper_key;
                    let same_object = n.kind == init.kind
                        && !n.unlinked.load(Ordering::Relaxed)
                        && (n.loc() == loc || same_upper);
                    if same_object {
                        n.lookups.fetch_add(1, Ordering::Relaxed);
                        if n.loc() != loc {
                            let mut al = n.aliases.lock();
                            if !al.contains(&loc) {
                                al.push(loc.clone());
                            }
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

    fn synthetic_id(&self) -> NodeId {
        self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes one more lookup reference on a node (a hard link made through the mount).
    pub fn add_link(&self, node: &Arc<Node>, parent: NodeId, name: &OsStr) {
        node.lookups.fetch_add(1, Ordering::Relaxed);
        node.aliases.lock().push(Loc {
            parent,
            name: name.to_os_string(),
        });
        self.children.insert((parent, name.to_os_string()), node.id);
    }

    /// Drops `n` lookup references; the node goes when none are left.
    pub fn forget(&self, id: NodeId, n: u64) {
        if id == ROOT_ID {
            return;
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
            self.children
                .remove_if(&(loc.parent, loc.name), |_, v| *v == id);
            for a in node.aliases.lock().drain(..) {
                self.children
                    .remove_if(&(a.parent, a.name), |_, v| *v == id);
            }
            self.drop_dirfds(&node);
            self.after_removal();
        }
    }

    /// After many nodes are forgotten (the kernel dropped its inode cache), hands the memory
    /// back: the maps keep their capacity and the allocator its freed pages otherwise, so
    /// the daemon would stay at its peak size for good. Checked every 4096 removals.
    fn after_removal(&self) {
        if self.removals.fetch_add(1, Ordering::Relaxed) % 4096 != 4095 {
            return;
        }
        let len = self.nodes.len();
        let peak = self.peak.fetch_max(len, Ordering::Relaxed).max(len);
        if peak >= 16_384 && len <= peak / 4 {
            self.peak.store(len, Ordering::Relaxed);
            self.nodes.shrink_to_fit();
            self.children.shrink_to_fit();
            crate::sys::trim_heap();
        }
    }

    /// Notes the node count after an insertion, for [`Self::after_removal`].
    fn note_size(&self) {
        if self.inserts.fetch_add(1, Ordering::Relaxed) % 1024 == 1023 {
            self.peak.fetch_max(self.nodes.len(), Ordering::Relaxed);
        }
    }

    /// Records that `name` in `parent` no longer names `node` (unlink, rmdir, or the target
    /// of a rename). Returns whether the node has no name left.
    pub fn unlink_name(&self, node: &Node, parent: NodeId, name: &OsStr) -> bool {
        self.children
            .remove_if(&(parent, name.to_os_string()), |_, v| *v == node.id);
        let gone = Loc {
            parent,
            name: name.to_os_string(),
        };
        let mut al = node.aliases.lock();
        al.retain(|l| *l != gone);
        let mut loc = node.loc.write();
        if *loc == gone {
            if let Some(next) = al.pop() {
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
        self.children
            .remove_if(&(old_parent, old_name.to_os_string()), |_, v| *v == node.id);
        let old = Loc {
            parent: old_parent,
            name: old_name.to_os_string(),
        };
        let new = Loc {
            parent,
            name: name.to_os_string(),
        };
        {
            let mut loc = node.loc.write();
            if *loc == old {
                *loc = new.clone();
            } else {
                let mut al = node.aliases.lock();
                al.retain(|l| *l != old);
                al.push(new);
            }
        }
        self.children.insert((parent, name.to_os_string()), node.id);
    }

    /// A name of `node` whose parent the kernel still holds, with that parent. The
    /// first-known name of a hard-linked file may sit in a directory that has since been
    /// forgotten; another name then takes its place.
    pub fn live_parent(&self, node: &Node) -> SysResult<(Arc<Node>, OsString)> {
        let loc = node.loc();
        if let Ok(p) = self.get(loc.parent) {
            return Ok((p, loc.name));
        }
        let mut al = node.aliases.lock();
        let Some((i, parent)) = al
            .iter()
            .enumerate()
            .find_map(|(i, l)| self.get(l.parent).ok().map(|p| (i, p)))
        else {
            return Err(Errno::ESTALE);
        };
        let alt = al.swap_remove(i);
        let mut primary = node.loc.write();
        al.push(std::mem::replace(&mut *primary, alt.clone()));
        Ok((parent, alt.name))
    }

    /// Path of `node` relative to the root of `layer`, rebuilt from its parent chain. In a
    /// lower layer it starts from the nearest ancestor (or the node) that a redirect put
    /// elsewhere there; the flag tells whether one did.
    fn path_in(&self, node: &Node, layer: LayerId) -> SysResult<(OsString, bool)> {
        let mut parts: Vec<OsString> = Vec::new();
        let mut base: Option<OsString> = None;
        let mut next: Option<Arc<Node>> = None;
        loop {
            let cur: &Node = next.as_deref().unwrap_or(node);
            if cur.id == ROOT_ID {
                break;
            }
            if layer != UPPER {
                if let Some((_, p)) = cur.state.read().redirects.iter().find(|(l, _)| *l == layer) {
                    base = Some(p.clone());
                    break;
                }
            }
            let (parent, name) = self.live_parent(cur)?;
            parts.push(name);
            next = Some(parent);
            if parts.len() > 4096 {
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
        if node.id == ROOT_ID {
            return Ok(self.roots[layer as usize].clone());
        }
        if let Some(fd) = self.dirfds.lock().get(&(node.id, layer)) {
            return Ok(fd.clone());
        }
        let (rel, redirected) = self.path_in(node, layer)?;
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let fd = if rel.len() < DEEP_PATH || redirected {
            fs::open_beneath(self.roots[layer as usize].as_fd(), &rel, flags, 0)?
        } else {
            // Too long for one path walk (PATH_MAX): continue from the parent's fd.
            let (parent, name) = self.live_parent(node)?;
            let pfd = self.dir_fd(&parent, layer)?;
            fs::open_beneath(pfd.as_fd(), &name, flags, 0)?
        };
        let fd = Arc::new(fd);
        self.dirfds.lock().put((node.id, layer), fd.clone());
        Ok(fd)
    }

    /// Forgets cached fds of a directory that went away or changed layers.
    pub fn drop_dirfds(&self, node: &Node) {
        if !node.is_dir() {
            return;
        }
        let st = node.state();
        let mut c = self.dirfds.lock();
        c.pop(&(node.id, UPPER));
        for l in st.lowers {
            c.pop(&(node.id, l));
        }
    }
}

impl Node {
    fn new(id: NodeId, kind: u32, ino: u64, loc: Loc, state: NodeState) -> Node {
        Node {
            id,
            kind,
            ino,
            loc: RwLock::new(loc),
            aliases: Mutex::new(Vec::new()),
            state: RwLock::new(state),
            lookups: AtomicU64::new(0),
            copy_lock: Mutex::new(()),
            dir_lock: Mutex::new(()),
            merged: Mutex::new(None),
            detached: Mutex::new(None),
            unlinked: AtomicBool::new(false),
            misses: std::sync::atomic::AtomicU32::new(0),
            upper_key: Mutex::new(None),
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
