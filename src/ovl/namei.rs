//! Name resolution: finding a name of a merged directory in its layers, top-down.
//!
//! Upper first, then each lower layer of the parent's stack. A whiteout stops the search
//! (the name does not exist); a non-directory stops it (it is the object); directories of
//! the same name merge until one is opaque. When the parent's merged listing is already
//! built, a name it does not hold is answered as absent without touching the layers, so
//! lookup and readdir always agree.

use super::inode::prot_of_lower;
use super::layers::{LayerId, UPPER};
use super::listing::{DirReader, Listed, MergedDir, Name};
use super::node::{Lowers, Node, NodeInit, NodeState, ROOT_ID};
use super::statahead::{self, ListAttrs};
use super::{whiteout, Attr, Errno, Overlay, SysResult};
use crate::sys::fs::{self, Stat};
use crate::sys::xattr;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// From this many lower layers under a directory, a lookup miss builds its merged listing.
const DEEP_STACK: usize = 16;
/// In shallower stacks, this many misses in one directory build its merged listing, if
/// its layers' directories are small enough to list at about the cost of a few misses.
const MISSES_BEFORE_LISTING: u32 = 4;
/// Total size (st_size) of a directory's layer directories up to which that holds:
/// about 25k entries on ext4 or xfs.
const LISTABLE_DIR_BYTES: i64 = 1 << 20;

/// What the layers hold for one name.
// This and `ChildRef` carry a stat (`NodeInit::seen`) and live on the stack for one lookup;
// boxing it would cost an allocation per lookup instead.
#[allow(clippy::large_enum_variant)]
pub enum Found {
    Node(NodeInit),
    /// Absent (or hidden by a whiteout).
    Missing,
}

/// Name of the xattr (after the private prefix) where we record the origin of a copied-up
/// file, so that its `st_ino` stays the lower one after copy-up and across remounts.
pub const ORIGIN_XATTR: &str = "ovlfuse.origin";
pub const IMPURE_XATTR: &str = "impure";
/// The kernel overlay's origin record of a copied-up object (after the prefix): a file
/// handle of the lower object (struct ovl_fb). ovlfuse writes it on directories it copies
/// up, and reads it on files the kernel copied up (`kernel_origin_ino`).
pub const KERNEL_ORIGIN_XATTR: &str = "origin";
/// The kernel's mark (after the prefix) on a metadata-only copy, which a kernel overlay
/// mounted with `metacopy=on` makes: the data stays in a lower file. ovlfuse follows no
/// such copy (see `Overlay::refuse_metadata_only`).
pub const METACOPY_XATTR: &str = "metacopy";

impl Overlay {
    /// Resolves `name` in directory `parent` and returns its node with a lookup reference.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<(Arc<Node>, Attr)> {
        self.lookup_name(parent, name, None)
    }

    /// Lookups of the names of one listing of directory `dir`, for a READDIRPLUS reply.
    pub fn listed_lookups(&self, dir: u64) -> SysResult<ListedLookups<'_>> {
        let dir = self.node(dir)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(ListedLookups {
            ovl: self,
            dir,
            fds: DirFds::default(),
        })
    }

    fn lookup_name(
        &self,
        parent: u64,
        name: &OsStr,
        shared: Option<&Name>,
    ) -> SysResult<(Arc<Node>, Attr)> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let p = self.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        if whiteout::is_marker_name(name) {
            return Err(Errno::ENOENT);
        }
        self.lookup_in(&p, name, shared, &mut DirFds::default())
    }

    /// Hands the entries of `dir`'s listing `m` to the stat-ahead helpers: its names are
    /// being looked up one by one after a reply gave them without attributes.
    fn warm_listing(&self, dir: &Node, m: Arc<MergedDir>) {
        if !self.statahead.enabled() {
            return;
        }
        let mut fds = DirFds::default();
        let items = DirReader::new(m, [None, None], 2)
            .filter_map(|(_, l)| Some((fds.get(self, dir, l.layer).ok()?.clone(), l.name)))
            .collect();
        self.statahead.warm(items);
    }

    /// `lookup_name` once `name` is known to be an ordinary name in directory `p`.
    fn lookup_in(
        &self,
        p: &Arc<Node>,
        name: &OsStr,
        shared: Option<&Name>,
        fds: &mut DirFds,
    ) -> SysResult<(Arc<Node>, Attr)> {
        let owned = || shared.cloned().unwrap_or_else(|| Name::from(name));
        if let Some(n) = self.nodes.lookup_cached(p.id, name) {
            match self.stat_child(p, &n, name, fds) {
                Ok(st) => {
                    let a = self.attr_of(&n, &st);
                    return Ok((n, a));
                }
                Err(e) => {
                    self.nodes.forget(n.id, 1);
                    return Err(e);
                }
            }
        }
        // In a deep stack a probe may stat hundreds of layers; where the layers' copies of
        // the directory are small, listing them costs about as much once and then answers
        // every name. (Big ones are listed after the first miss, in `after_miss`: a single
        // hit there is cheaper to probe.)
        let listing = match p.merged() {
            None if self.deep_and_small(p) => self.merged_dir(p).ok(),
            m => m,
        };
        if let Some(m) = listing {
            // A lookup the kernel sent (a listing's own lookups share its names): one of
            // those that may call for warming a listing given with names only.
            if shared.is_none() && m.looked_up() {
                self.warm_listing(p, m.clone());
            }
            match m.get(name) {
                None => return Err(Errno::ENOENT),
                Some(e) if e.layer != UPPER && e.kind != libc::S_IFDIR => {
                    if let Some(found) = self.lookup_listed_lower(p, owned(), &e, fds)? {
                        return Ok(found);
                    }
                }
                Some(_) => {}
            }
        }
        match self.probe(p, name)? {
            Found::Missing => {
                self.after_miss(p);
                Err(Errno::ENOENT)
            }
            Found::Node(init) => self.insert_found(p, owned(), init),
        }
    }

    /// `stat_node` of `n`, reached as `name` in `dir`: where that is the node's own name,
    /// through `dir`'s fd, without finding the parent again.
    fn stat_child(&self, dir: &Node, n: &Node, name: &OsStr, fds: &mut DirFds) -> SysResult<Stat> {
        let top = n.state.read().top();
        match top {
            Some(top) if !n.unlinked.load(Ordering::Relaxed) && n.is_named(dir.id, name) => {
                match fs::fstatat(fds.get(self, dir, top)?.as_fd(), name) {
                    // Gone meanwhile: the slow way knows about fds kept for open files.
                    Err(Errno::ENOENT | Errno::ESTALE) => self.stat_node(n),
                    r => r,
                }
            }
            _ => self.stat_node(n),
        }
    }

    /// Makes (or finds) the node for what a lookup found and answers with its attributes:
    /// from the stat the lookup made, unless the node already existed with another copy
    /// seen (it was copied up meanwhile).
    fn insert_found(
        &self,
        parent: &Node,
        name: Name,
        init: NodeInit,
    ) -> SysResult<(Arc<Node>, Attr)> {
        let (seen, top) = (init.seen, init.state.top());
        let n = self.nodes.insert(parent.id, name, init);
        if let Some(st) = seen.filter(|_| n.state.read().top() == top) {
            let a = self.attr_of(&n, &st);
            return Ok((n, a));
        }
        match self.getattr_node(&n) {
            Ok(a) => Ok((n, a)),
            Err(e) => {
                self.nodes.forget(n.id, 1);
                Err(e)
            }
        }
    }

    /// Lookup of a lower non-directory that the parent's merged listing holds: the listing
    /// already settled which layer's copy is seen (no upper copy, no whiteout or marker
    /// above it), so one stat of that copy gives both the node and its attributes, where a
    /// probe would stat every layer above it as well. `None` if the layer no longer agrees.
    fn lookup_listed_lower(
        &self,
        parent: &Node,
        name: Name,
        e: &super::listing::Entry,
        fds: &mut DirFds,
    ) -> SysResult<Option<(Arc<Node>, Attr)>> {
        let (st, hint) =
            match fs::fstatat_with_protection(fds.get(self, parent, e.layer)?.as_fd(), &name) {
                Ok((st, hint)) if fs::ifmt(st.st_mode) == e.kind => (st, hint),
                _ => return Ok(None),
            };
        let init = self.lower_object(e.layer, &st, hint);
        self.insert_found(parent, name, init).map(Some)
    }

    /// Looks `name` up in `parent` without making a node: for create/remove/rename checks.
    /// Returns the live node when the kernel already knows it, else what the layers hold.
    pub fn find_child(&self, parent: &Node, name: &OsStr) -> SysResult<Option<ChildRef>> {
        if let Some(n) = self.nodes.peek_child(parent.id, name) {
            return Ok(Some(ChildRef::Live(n)));
        }
        if let Some(m) = parent.merged() {
            if !m.contains(name) {
                return Ok(None);
            }
        }
        // No `after_miss` here: callers hold the directory lock, which building the
        // listing takes.
        match self.probe(parent, name)? {
            Found::Missing => Ok(None),
            Found::Node(init) => Ok(Some(ChildRef::Fresh(init))),
        }
    }

    /// Whether `dir` merges a deep stack of layer directories small enough to list before
    /// its first lookup.
    fn deep_and_small(&self, dir: &Node) -> bool {
        if dir.state.read().lowers.len() < DEEP_STACK || dir.big_layers.load(Ordering::Relaxed) {
            return false;
        }
        let small = self.layer_dirs_bytes(dir, &dir.state()) <= LISTABLE_DIR_BYTES;
        if !small {
            dir.big_layers.store(true, Ordering::Relaxed);
        }
        small
    }

    /// A miss probed every layer of `parent`. Deep stacks then build the merged listing,
    /// and so does a directory with a few misses if its layers' directories are small
    /// enough to list at about the cost of a few misses: later misses there are answered
    /// from it at once instead of by one probe per layer.
    fn after_miss(&self, parent: &Arc<Node>) {
        let st = parent.state();
        if st.lowers.is_empty() {
            return;
        }
        let build = st.lowers.len() >= DEEP_STACK
            || (parent.tally.fetch_add(1, Ordering::Relaxed) + 1 == MISSES_BEFORE_LISTING
                && self.layer_dirs_bytes(parent, &st) <= LISTABLE_DIR_BYTES);
        if build {
            let _ = self.merged_dir(parent);
        }
    }

    /// The summed st_size of the directories that make up `dir` in its layers.
    fn layer_dirs_bytes(&self, dir: &Node, st: &super::node::NodeState) -> i64 {
        let layers = st
            .upper
            .then_some(super::UPPER)
            .into_iter()
            .chain(st.lowers.iter().copied());
        layers
            .filter_map(|l| self.nodes.dir_fd(dir, l).ok())
            .filter_map(|fd| fs::fstat(fd.as_fd()).ok())
            .map(|s| s.st_size)
            .sum()
    }

    /// Like `find_child`, but always yields a node (one with a lookup reference the caller
    /// must drop with `release_temp`).
    pub fn child_node(&self, parent: &Node, name: &OsStr) -> SysResult<Option<(Arc<Node>, bool)>> {
        match self.find_child(parent, name)? {
            None => Ok(None),
            Some(ChildRef::Live(n)) => Ok(Some((n, false))),
            Some(ChildRef::Fresh(init)) => Ok(Some((
                self.nodes.insert(parent.id, Name::from(name), init),
                true,
            ))),
        }
    }

    /// Drops the reference `child_node` took for a node it had to make.
    pub fn release_temp(&self, node: &Node, made: bool) {
        if made {
            self.nodes.forget(node.id, 1);
        }
    }

    /// Whether any lower layer of `parent` holds `name` (first hit decides: a whiteout
    /// means no). Decides whether removing the name must leave a whiteout.
    pub fn lower_positive(&self, parent: &Node, name: &OsStr) -> SysResult<bool> {
        if let Some(m) = parent.merged() {
            return Ok(m.lower_positive(name));
        }
        let lowers = parent.state().lowers;
        for &l in lowers.iter() {
            let pfd = self.nodes.dir_fd(parent, l)?;
            match fs::fstatat(pfd.as_fd(), name) {
                Ok(st) => return Ok(!whiteout::is_whiteout_in(pfd.as_fd(), name, &st)),
                Err(Errno::ENOENT) => {
                    if self.oci_hidden(pfd.as_fd(), name) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Probes the layers of `parent` for `name`.
    pub fn probe(&self, parent: &Node, name: &OsStr) -> SysResult<Found> {
        let ps = parent.state();
        // A directory found so far: what merges into it, its number, its top copy's stat.
        let mut dir: Option<(NodeState, u64, fs::Stat)> = None;
        // Where to look in the layers below: the name itself, or where a redirect points.
        let mut redirect: Option<Redirect> = None;
        if ps.upper {
            let pfd = self.nodes.dir_fd(parent, UPPER)?;
            match fs::fstatat(pfd.as_fd(), name) {
                Ok(st) => {
                    if whiteout::is_whiteout_in(pfd.as_fd(), name, &st) {
                        return Ok(Found::Missing);
                    }
                    let upper = self.layers.get(UPPER);
                    if !fs::is_dir(&st) {
                        let kernel_too = self.upper_dir_impure(parent, pfd.as_fd());
                        let ino = self
                            .origin_ino(pfd.as_fd(), name, kernel_too)
                            .unwrap_or_else(|| self.layers.ino.map(upper.dev, st.st_ino));
                        return Ok(Found::Node(NodeInit {
                            kind: fs::ifmt(st.st_mode),
                            ino,
                            state: NodeState {
                                upper: true,
                                lowers: Lowers::None,
                                ..Default::default()
                            },
                            upper_key: Some((st.st_dev, st.st_ino)),
                            seen: Some(st),
                        }));
                    }
                    let state = NodeState {
                        upper: true,
                        lowers: Lowers::None,
                        ..Default::default()
                    };
                    let ino = self.layers.ino.map(upper.dev, st.st_ino);
                    let xa = whiteout::OverlayXattrs::of(pfd.as_fd(), name);
                    if self.dir_is_opaque(pfd.as_fd(), name, xa)?
                        || self.oci_hidden(pfd.as_fd(), name)
                    {
                        return Ok(Found::Node(NodeInit {
                            kind: libc::S_IFDIR,
                            ino,
                            state,
                            upper_key: None,
                            seen: Some(st),
                        }));
                    }
                    redirect = self.redirect_of(pfd.as_fd(), name, xa)?;
                    dir = Some((state, ino, st));
                }
                // A marker hides lower copies: with no lower layer there is none to hide.
                Err(Errno::ENOENT) => {
                    if ps.lowers.is_empty() || self.oci_hidden(pfd.as_fd(), name) {
                        return Ok(Found::Missing);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // An absolute redirect is looked up from the root, so in every lower layer (below
        // the one that holds it), not only in the parent's stack.
        let all_below =
            |l: LayerId| -> Vec<LayerId> { self.layers.lower_ids().filter(|x| *x > l).collect() };
        let mut order: Vec<LayerId> = match &redirect {
            Some(Redirect::Abs(_)) => all_below(UPPER),
            _ => ps.lowers.to_vec(),
        };
        let mut i = 0;
        while i < order.len() {
            let l = order[i];
            i += 1;
            // Where an absolute redirect's copy sits in this layer, when the walk to it
            // met a redirect (the layers below then follow another path); and whether
            // the walk passed an opaque directory, which hides the layers below.
            let mut walked: Option<std::ffi::OsString> = None;
            let mut stop_below = false;
            let (pfd, look) = match &redirect {
                None => (self.nodes.dir_fd(parent, l)?, name.to_os_string()),
                Some(Redirect::Rel(r)) => (self.nodes.dir_fd(parent, l)?, r.clone()),
                Some(Redirect::Abs(p)) => {
                    let w = match self.walk_redirect(l, p) {
                        Ok(w) => w,
                        // A non-directory on the way stops the lookup, as in the kernel.
                        Err(Errno::ENOTDIR) => break,
                        Err(e) => return Err(e),
                    };
                    stop_below = w.stop;
                    if let Some(b) = w.below {
                        walked = Some(p.clone());
                        redirect = Some(Redirect::Abs(b));
                    }
                    match w.at {
                        Some(x) => x,
                        // A missing directory on the way: nothing in this layer, look in
                        // the next one (the kernel's ovl_lookup_layer returns no dentry).
                        None if stop_below => break,
                        None => continue,
                    }
                }
            };
            let look = look.as_os_str();
            if matches!(redirect, Some(Redirect::Rel(_))) {
                redirect_step_ok(look.as_bytes())?;
            }
            match fs::fstatat_with_protection(pfd.as_fd(), look) {
                Ok((st, hint)) => {
                    let own_dir = !matches!(redirect, Some(Redirect::Abs(_)));
                    if self.lower_whiteout(parent, l, own_dir, pfd.as_fd(), look, &st) {
                        break;
                    }
                    let layer = self.layers.get(l);
                    if fs::is_dir(&st) {
                        if self.layers.is_trap(&st) {
                            return Err(Errno::ELOOP);
                        }
                        let at = match &redirect {
                            None => None,
                            Some(Redirect::Rel(r)) => {
                                Some(join(&self.nodes.layer_path(parent, l)?, r))
                            }
                            Some(Redirect::Abs(p)) => Some(walked.take().unwrap_or(p.clone())),
                        };
                        match &mut dir {
                            None => {
                                let state = NodeState {
                                    upper: false,
                                    lowers: Lowers::One(l),
                                    prot: prot_of_lower(libc::S_IFDIR, hint),
                                    ..Default::default()
                                };
                                dir = Some((state, self.layers.ino.map(layer.dev, st.st_ino), st));
                            }
                            Some((state, ino, _)) => {
                                if state.lowers.is_empty() {
                                    // A merged directory keeps the number of its highest
                                    // lower copy, as it had before copy-up.
                                    *ino = self.layers.ino.map(layer.dev, st.st_ino);
                                }
                                state.lowers.push(l);
                            }
                        }
                        if let (Some(at), Some((state, _, _))) = (at, &mut dir) {
                            state
                                .redirects
                                .get_or_insert_with(Default::default)
                                .push((l, at));
                        }
                        // Opacity and redirects only speak of the layers below; the
                        // lowest layer's directories (most of a base image) need neither
                        // read: three system calls fewer per directory.
                        if self.layers.is_lowest(l) {
                            break;
                        }
                        let xa = whiteout::OverlayXattrs::of(pfd.as_fd(), look);
                        if self.dir_is_opaque(pfd.as_fd(), look, xa)?
                            || self.oci_hidden(pfd.as_fd(), look)
                        {
                            break;
                        }
                        if let Some(r) = self.redirect_of(pfd.as_fd(), look, xa)? {
                            // A relative redirect met while following an absolute one
                            // names a sibling of the path being followed.
                            let r = match (r, &redirect) {
                                (Redirect::Rel(n), Some(Redirect::Abs(p))) => {
                                    let (dir, _) = split_last(p.as_bytes());
                                    Redirect::Abs(join(OsStr::from_bytes(dir), &n))
                                }
                                (r, _) => r,
                            };
                            if matches!(r, Redirect::Abs(_)) {
                                order = all_below(l);
                                i = 0;
                                // The kernel's ovl_check_redirect: an absolute redirect
                                // below an opaque directory on the way lifts its stop.
                                stop_below = false;
                            }
                            redirect = Some(r);
                        }
                    } else {
                        if dir.is_some() {
                            break;
                        }
                        return Ok(Found::Node(self.lower_object(l, &st, hint)));
                    }
                }
                // A marker hides the name in the layers still to be looked in; after the
                // last of them there is nothing left to hide.
                Err(Errno::ENOENT) => {
                    if i < order.len() && self.oci_hidden(pfd.as_fd(), look) {
                        break;
                    }
                }
                Err(Errno::ENOTDIR) => break,
                Err(e) => return Err(e),
            }
            if stop_below {
                break;
            }
        }
        Ok(match dir {
            Some((state, ino, st)) => Found::Node(NodeInit {
                kind: libc::S_IFDIR,
                ino,
                state,
                upper_key: None,
                seen: Some(st),
            }),
            None => Found::Missing,
        })
    }

    /// A non-directory whose copy in lower layer `l` (stat-ed as `st`) is the one seen.
    fn lower_object(&self, l: LayerId, st: &fs::Stat, prot_hint: u32) -> NodeInit {
        let kind = fs::ifmt(st.st_mode);
        NodeInit {
            kind,
            ino: self.layers.ino.map(self.layers.get(l).dev, st.st_ino),
            upper_key: None,
            state: NodeState {
                upper: false,
                lowers: Lowers::One(l),
                prot: prot_of_lower(kind, prot_hint),
                ..Default::default()
            },
            seen: Some(*st),
        }
    }

    /// Whether entry `look` of `parent`'s directory in lower layer `l` (reached as `dir`,
    /// stat-ed as `st`) is a whiteout. Whether that directory holds xattr whiteouts is
    /// remembered when `dir` is the parent's own directory (not one a redirect leads to).
    fn lower_whiteout(
        &self,
        parent: &Node,
        l: LayerId,
        own_dir: bool,
        dir: BorrowedFd<'_>,
        look: &OsStr,
        st: &fs::Stat,
    ) -> bool {
        if !own_dir {
            return whiteout::is_whiteout_in(dir, look, st);
        }
        whiteout::is_whiteout_stat(st)
            || whiteout::may_be_xattr_whiteout(st)
                && self.nodes.lower_xwhiteouts(parent, l, dir)
                && whiteout::has_whiteout_xattr(dir, look)
    }

    /// The redirect recorded on directory `name` in layer directory `dir`, if any. One the
    /// kernel's `ovl_get_redirect_xattr` would call invalid fails the lookup with EINVAL,
    /// as there: an empty value, an absolute path with an empty component (`//`, a
    /// trailing `/`), a relative one with a `/` in it.
    pub(super) fn redirect_of(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        xa: whiteout::OverlayXattrs,
    ) -> SysResult<Option<Redirect>> {
        if !xa.may_redirect() {
            return Ok(None);
        }
        for a in whiteout::REDIRECT_XATTRS {
            if let Ok(v) = xattr::get_vec(dir, name, a) {
                return parse_redirect(&v).map(Some).ok_or_else(|| {
                    static LAST: AtomicU64 = AtomicU64::new(0);
                    let level = if crate::logging::may_warn(&LAST) {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    let v = OsStr::from_bytes(&v);
                    log::log!(
                        level,
                        "invalid redirect {v:?} on {name:?}: its lookup fails"
                    );
                    Errno::EINVAL
                });
            }
        }
        Ok(None)
    }

    /// Walks an absolute redirect `p` (layer-relative) in layer `l` one directory at a
    /// time, as the kernel's `ovl_lookup_layer` does: a directory on the way that is
    /// missing leaves nothing in this layer; one that is a whiteout or no directory stops
    /// the lookup; an opaque one lets the walk go on in this layer but hides the layers
    /// below; a redirect on one rewrites the path the layers below follow (an absolute
    /// one also lifts an opaque ancestor's stop).
    fn walk_redirect(&self, l: LayerId, p: &OsStr) -> SysResult<RedirectWalk> {
        let comps: Vec<&[u8]> = p.as_bytes().split(|c| *c == b'/').collect();
        let Some((last, dirs)) = comps.split_last() else {
            return Err(Errno::ENOTDIR);
        };
        let mut walk = RedirectWalk {
            at: None,
            stop: false,
            below: None,
        };
        let mut cur = fs::open_beneath(
            self.layers.get(l).fd(),
            OsStr::new("."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        for (k, c) in dirs.iter().enumerate() {
            redirect_step_ok(c)?;
            let name = OsStr::from_bytes(c);
            let st = match fs::fstatat(cur.as_fd(), name) {
                Ok(st) => st,
                Err(Errno::ENOENT) => {
                    walk.stop |= self.oci_hidden(cur.as_fd(), name);
                    return Ok(walk);
                }
                Err(e) => return Err(e),
            };
            if !fs::is_dir(&st) || whiteout::is_whiteout_in(cur.as_fd(), name, &st) {
                walk.stop = true;
                return Ok(walk);
            }
            if self.layers.is_trap(&st) {
                return Err(Errno::ELOOP);
            }
            // The lowest layer has none below it for opacity or a redirect to speak of: the
            // kernel reads neither there (`d->last`), so a bad redirect there is no error.
            let mut redirect = None;
            if !self.layers.is_lowest(l) {
                let xa = whiteout::OverlayXattrs::of(cur.as_fd(), name);
                if self.dir_is_opaque(cur.as_fd(), name, xa)? {
                    walk.stop = true;
                } else {
                    redirect = self.redirect_of(cur.as_fd(), name, xa)?;
                }
            }
            if let Some(r) = redirect {
                let mut v = match r {
                    Redirect::Abs(a) => {
                        walk.stop = false;
                        std::os::unix::ffi::OsStringExt::into_vec(a)
                    }
                    Redirect::Rel(n) => {
                        let mut v = comps[..k].join(&b'/');
                        if !v.is_empty() {
                            v.push(b'/');
                        }
                        v.extend_from_slice(n.as_bytes());
                        v
                    }
                };
                for rest in &comps[k + 1..] {
                    v.push(b'/');
                    v.extend_from_slice(rest);
                }
                walk.below = Some(std::os::unix::ffi::OsStringExt::from_vec(v));
            }
            cur = match fs::open_beneath(cur.as_fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(walk),
                // Replaced by a symlink since the stat (RESOLVE_NO_SYMLINKS says ELOOP): a
                // non-directory, which stops the lookup.
                Err(Errno::ELOOP) => return Err(Errno::ENOTDIR),
                Err(e) => return Err(e),
            };
        }
        redirect_step_ok(last)?;
        walk.at = Some((Arc::new(cur), OsStr::from_bytes(last).to_os_string()));
        Ok(walk)
    }

    /// Whether the OCI marker `.wh.NAME` sits in `dir`.
    pub fn oci_hidden(&self, dir: BorrowedFd<'_>, name: &OsStr) -> bool {
        let marker = whiteout::oci_marker_for(name);
        marker.len() <= 255 && fs::fstatat(dir, &marker).is_ok()
    }

    /// Whether directory `name` in layer directory `parent` is opaque.
    fn dir_is_opaque(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        xa: whiteout::OverlayXattrs,
    ) -> SysResult<bool> {
        if xa.opaque_dir(parent, name) {
            return Ok(true);
        }
        // The OCI marker inside it, reached in one open that follows no symlink.
        let mut marker = name.as_bytes().to_vec();
        marker.push(b'/');
        marker.extend_from_slice(whiteout::OCI_OPAQUE);
        Ok(fs::open_beneath(parent, OsStr::from_bytes(&marker), libc::O_PATH, 0).is_ok())
    }

    /// The inode number upper non-directory `name` in `dir` keeps from the lower object it
    /// was copied from, if any. With `kernel_too` (an impure directory: the kernel marks
    /// the directory before a copy lands), from the kernel's origin record first, which
    /// both overlays' copy-ups write where they may open file handles (see
    /// `kernel_origin_ino`); then, where there is none, from our own.
    pub fn origin_ino(&self, dir: BorrowedFd<'_>, name: &OsStr, kernel_too: bool) -> Option<u64> {
        // Without CAP_DAC_READ_SEARCH no handle can be opened: only our record can say.
        if kernel_too && crate::sys::can_open_file_handles() {
            if let Some(shown) = self.kernel_origin_ino(dir, name) {
                return shown;
            }
        }
        let attr = format!("{}{}", self.layers.xattr_prefix, ORIGIN_XATTR);
        let mut buf = [0u8; 64];
        let n = xattr::get(dir, name, &attr, &mut buf).ok()?;
        let s = std::str::from_utf8(&buf[..n]).ok()?;
        let (dev, ino) = s.split_once(':')?;
        let (dev, ino): (u64, u64) = (dev.parse().ok()?, ino.parse().ok()?);
        if !self.layers.ino.knows(dev) {
            return None;
        }
        Some(self.layers.ino.map(dev, ino))
    }

    /// The `st_ino` the kernel overlay shows for a file it copied up, from the origin
    /// record its copy-up left (a file handle of the lower file): the lower file's, where
    /// the handle still leads to a file of a lower layer's filesystem with one link (the
    /// kernel does not use the number of a lower file with hard links, whose names may have
    /// been copied up apart). None where the copy has no such record (or an empty one);
    /// Some(None) where it shows its own number.
    fn kernel_origin_ino(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<Option<u64>> {
        let attr = format!("{}{KERNEL_ORIGIN_XATTR}", self.layers.xattr_prefix);
        let fb = xattr::get_vec(dir, name, &attr)
            .ok()
            .filter(|fb| !fb.is_empty())?;
        Some(self.ino_of_handle(&fb))
    }

    /// The number a copy with kernel origin record `fb` shows (see `kernel_origin_ino`).
    fn ino_of_handle(&self, fb: &[u8]) -> Option<u64> {
        let (uuid, kind, handle) = origin_file_handle(fb)?;
        for layer in self.layers.lower_filesystems() {
            let hfs = layer.handle_fs();
            // As on the kernel, a handle is only looked for on a filesystem with the uuid
            // it was recorded with: another's could name an unrelated file.
            let Some(root) = hfs.root.as_ref().filter(|_| hfs.uuid == uuid) else {
                continue;
            };
            let Ok(fd) = fs::open_by_handle(root.as_fd(), kind, handle) else {
                continue;
            };
            let st = fs::fstat(fd.as_fd()).ok()?;
            let usable = !fs::is_dir(&st) && st.st_nlink == 1 && self.layers.ino.knows(st.st_dev);
            return usable.then(|| self.layers.ino.map(st.st_dev, st.st_ino));
        }
        None
    }

    /// Whether upper directory `dir` (reached as `fd`) is marked impure, read from its
    /// xattr the first time it is asked. A mark an earlier mount left makes removals from
    /// it check for the last copy from then on (see `may_turn_pure`).
    pub(super) fn upper_dir_impure(&self, dir: &Node, fd: BorrowedFd<'_>) -> bool {
        {
            let st = dir.state.read();
            if st.impure || st.impure_read {
                return st.impure;
            }
        }
        let attr = format!("{}{IMPURE_XATTR}", self.layers.xattr_prefix);
        let marked = xattr::get_on_dir(fd, &attr).is_ok();
        let mut st = dir.state.write();
        st.impure |= marked;
        st.impure_read = true;
        st.impure
    }

    /// The parent node of `node` and the fd of that parent directory in `layer`.
    pub fn parent_fd(&self, node: &Node, layer: LayerId) -> SysResult<(Arc<OwnedFd>, Name)> {
        if node.id == ROOT_ID {
            return Err(Errno::EINVAL);
        }
        let (parent, name) = self.nodes.live_parent(node)?;
        Ok((self.nodes.dir_fd(&parent, layer)?, name))
    }

    /// Runs `f` on the fd of `node`'s parent in `layer` and its name there, again if a
    /// rename or removal moved that name meanwhile (`NodeTable::stable_node`); `f` must be
    /// safe to repeat.
    pub fn at_name<T>(
        &self,
        node: &Node,
        layer: LayerId,
        mut f: impl FnMut(BorrowedFd<'_>, &OsStr) -> SysResult<T>,
    ) -> SysResult<T> {
        self.nodes.stable_node(node, || {
            let (pfd, name) = self.parent_fd(node, layer)?;
            f(pfd.as_fd(), &name)
        })
    }
}

/// Fds of one directory in its layers, taken from the shared cache once for a run of
/// lookups in it rather than once per name.
#[derive(Default)]
pub struct DirFds(Vec<(LayerId, Arc<OwnedFd>)>);

impl DirFds {
    fn get(&mut self, ovl: &Overlay, dir: &Node, layer: LayerId) -> SysResult<&Arc<OwnedFd>> {
        let i = match self.0.iter().position(|(l, _)| *l == layer) {
            Some(i) => i,
            None => {
                self.0.push((layer, ovl.nodes.dir_fd(dir, layer)?));
                self.0.len() - 1
            }
        };
        Ok(&self.0[i].1)
    }
}

/// Lookups of the names one listing of a directory holds (the entries of a READDIRPLUS
/// reply): the directory and its layer fds are found once for all of them.
pub struct ListedLookups<'a> {
    ovl: &'a Overlay,
    dir: Arc<Node>,
    fds: DirFds,
}

impl ListedLookups<'_> {
    /// `lookup` of a listed name; a node made for it shares the listing's copy of the name.
    /// Listings hold no marker names and no names over 255 bytes, which `lookup` checks.
    pub fn lookup(&mut self, name: &Name) -> SysResult<(Arc<Node>, Attr)> {
        self.ovl
            .lookup_in(&self.dir, name, Some(name), &mut self.fds)
    }

    /// Whether the entries `lines`, read from `offset` of the directory's listing, go out
    /// with their attributes (then looked up with `lookup`) or with names only; see
    /// `statahead::ListAttrs`.
    pub fn with_attributes(&mut self, lines: &[(u64, Listed)], offset: u64) -> bool {
        match self.ovl.cfg.listattrs {
            ListAttrs::Off => {
                if let Some(m) = self.dir.merged() {
                    m.set_listed_names_only(true, offset <= 2);
                }
                false
            }
            ListAttrs::On => {
                self.stat_ahead(lines);
                true
            }
            ListAttrs::Auto => {
                let Some(m) = self
                    .dir
                    .merged()
                    .filter(|m| m.len() >= statahead::NAMES_ONLY_FROM)
                else {
                    self.stat_ahead(lines);
                    return true;
                };
                // Go on as the listing's earlier replies went: once cold, all of it is.
                if offset > 2 && m.listed_names_only() {
                    return false;
                }
                let cold = statahead::probe(&mut self.layer_items(lines)) == Some(true);
                m.set_listed_names_only(cold, offset <= 2);
                !cold
            }
        }
    }

    /// Stats `lines` (the entries about to be looked up) in their layers on helper
    /// threads and this one, when there are enough of them; see `statahead`.
    fn stat_ahead(&mut self, lines: &[(u64, Listed)]) {
        if lines.len() < statahead::MIN_BATCH || !self.ovl.statahead.enabled() {
            return;
        }
        let ovl = self.ovl;
        ovl.statahead.run(self.layer_items(lines))
    }

    /// Each line but `.` and `..` as its name and its directory's fd in the layer whose
    /// copy is seen.
    fn layer_items<'b>(
        &'b mut self,
        lines: &'b [(u64, Listed)],
    ) -> impl Iterator<Item = (Arc<OwnedFd>, Name)> + 'b {
        let (ovl, dir, fds) = (self.ovl, &self.dir, &mut self.fds);
        lines
            .iter()
            .filter(|(next, _)| !DirReader::is_dot(*next))
            .filter_map(|(_, l)| Some((fds.get(ovl, dir, l.layer).ok()?.clone(), l.name.clone())))
    }
}

/// What walking an absolute redirect's path in one layer found (`walk_redirect`).
struct RedirectWalk {
    /// The directory holding the path's last component, and that component; `None` when
    /// a directory on the way is missing.
    at: Option<(Arc<OwnedFd>, std::ffi::OsString)>,
    /// No layer below this one is to be looked in.
    stop: bool,
    /// The path the layers below follow, where a redirect on the way rewrote it.
    below: Option<std::ffi::OsString>,
}

/// Where a renamed directory's lower parts are, from its `overlay.redirect` xattr.
pub(super) enum Redirect {
    /// Another name in the same parent directory.
    Rel(std::ffi::OsString),
    /// A path from the layer root.
    Abs(std::ffi::OsString),
}

/// A redirect xattr's value, read as the kernel reads it (a C string: up to its first
/// NUL); `None` where the kernel calls it invalid. Components `.` and `..` (and an empty
/// relative name) pass here and fail where a lookup meets them ([`redirect_step_ok`]).
fn parse_redirect(v: &[u8]) -> Option<Redirect> {
    if v.is_empty() {
        return None;
    }
    let v = v.split(|c| *c == 0).next().unwrap_or_default();
    match v.strip_prefix(b"/") {
        Some(abs) if abs.split(|c| *c == b'/').any(<[u8]>::is_empty) => None,
        Some(abs) => Some(Redirect::Abs(OsStr::from_bytes(abs).to_os_string())),
        None if v.contains(&b'/') => None,
        None => Some(Redirect::Rel(OsStr::from_bytes(v).to_os_string())),
    }
}

/// Whether a lookup may look up `name` on a redirect's path: the kernel's
/// `lookup_one_len` refuses `.`, `..` and the empty name (EACCES), so a redirect that
/// leads through one fails the lookup that meets it.
fn redirect_step_ok(name: &[u8]) -> SysResult<()> {
    match name {
        b"" | b"." | b".." => Err(Errno::EACCES),
        _ => Ok(()),
    }
}

/// A layer-relative path split at its last `/`: (directory part, last component); the
/// directory part is empty for a single component.
pub(super) fn split_last(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().rposition(|c| *c == b'/') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (&b[..0], b),
    }
}

fn join(dir: &OsStr, name: &OsStr) -> std::ffi::OsString {
    let mut v = dir.as_bytes().to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name.as_bytes());
    std::ffi::OsString::from(OsStr::from_bytes(&v))
}

/// A child found by name: either a node the kernel already knows or a fresh probe result.
#[allow(clippy::large_enum_variant)]
pub enum ChildRef {
    Live(Arc<Node>),
    Fresh(NodeInit),
}

/// The filesystem uuid and file handle (type, bytes) in a kernel origin record (struct
/// ovl_fb: version 0, magic 0xfb, its own length, flags, handle type, 16 bytes of uuid,
/// the handle), where it names a lower object in this CPU's byte order.
fn origin_file_handle(fb: &[u8]) -> Option<([u8; 16], i32, &[u8])> {
    const BIG_ENDIAN: u8 = 1;
    const ANY_ENDIAN: u8 = 2;
    const PATH_UPPER: u8 = 4;
    if fb.len() <= 21 || fb[0] != 0 || fb[1] != 0xfb || usize::from(fb[2]) != fb.len() {
        return None;
    }
    let flags = fb[3];
    let ours = (flags & BIG_ENDIAN != 0) == cfg!(target_endian = "big");
    if flags & PATH_UPPER != 0 || !(ours || flags & ANY_ENDIAN != 0) {
        return None;
    }
    let uuid = fb[5..21].try_into().ok()?;
    Some((uuid, i32::from(fb[4]), &fb[21..]))
}

/// The origin record (struct ovl_fb) the kernel overlay's copy-up writes for a lower
/// object whose filesystem has uuid `uuid` and gives it file handle (`kind`, `handle`):
/// version 0, magic 0xfb, length, flags (byte order), the handle's type, the uuid, then
/// the handle. None where the record could not say it (a type or length beyond a byte).
pub(super) fn origin_record(uuid: [u8; 16], kind: i32, handle: &[u8]) -> Option<Vec<u8>> {
    let kind = u8::try_from(kind).ok()?;
    let len = u8::try_from(21 + handle.len()).ok()?;
    // OVL_FH_FLAG_BIG_ENDIAN, else nothing: the handle's bytes are in this CPU's order.
    let flags = u8::from(cfg!(target_endian = "big"));
    let mut fb = vec![0, 0xfb, len, flags, kind];
    fb.extend_from_slice(&uuid);
    fb.extend_from_slice(handle);
    Some(fb)
}

#[cfg(test)]
mod tests {
    use super::{origin_file_handle, origin_record, parse_redirect, Redirect};
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn redirects_are_read_as_the_kernel_reads_them() {
        let read = |v: &[u8]| match parse_redirect(v) {
            None => "invalid".to_string(),
            Some(Redirect::Abs(p)) => format!("abs {}", String::from_utf8_lossy(p.as_bytes())),
            Some(Redirect::Rel(n)) => format!("rel {}", String::from_utf8_lossy(n.as_bytes())),
        };
        let cases: [(&[u8], &str); 12] = [
            (b"", "invalid"),
            (b"/", "invalid"),
            (b"//a", "invalid"),
            (b"/a//b", "invalid"),
            (b"/a/", "invalid"),
            (b"a/b", "invalid"),
            (b"../a", "invalid"),
            (b"/a/b", "abs a/b"),
            (b"name", "rel name"),
            (b"/a\0/b", "abs a"),
            (b"\0", "rel "),
            (b"..", "rel .."),
        ];
        for (v, want) in cases {
            assert_eq!(read(v), want, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn origin_records_are_written_as_the_kernel_writes_them() {
        // A kernel overlay's copy-up of a file on tmpfs (little-endian machine).
        let uuid = [
            0x8a, 0xd3, 0x7c, 0x73, 0xcf, 0x63, 0x4d, 0x54, 0x80, 0x78, 0xd1, 0x6d, 0xc9, 0x76,
            0x40, 0xfe,
        ];
        let handle = [0x63, 0x42, 0x70, 0x2c, 3, 0, 0, 0, 0, 0, 0, 0];
        let fb = origin_record(uuid, 1, &handle).unwrap();
        let mut want = vec![0, 0xfb, 33, u8::from(cfg!(target_endian = "big")), 1];
        want.extend_from_slice(&uuid);
        want.extend_from_slice(&handle);
        assert_eq!(fb, want);
        assert_eq!(origin_file_handle(&fb), Some((uuid, 1, &handle[..])));
        assert_eq!(
            origin_record(uuid, 256, &handle),
            None,
            "type beyond a byte"
        );
        assert_eq!(
            origin_record(uuid, 1, &[0; 235]),
            None,
            "longer than a byte says"
        );
    }

    #[test]
    fn kernel_origin_records_give_their_file_handle() {
        // As a kernel overlay's copy-up wrote it on ext4 (null uuid, FILEID_INO32_GEN).
        let mut fb = vec![0, 0xfb, 29, 0, 1];
        fb.extend_from_slice(&[0; 16]);
        fb.extend_from_slice(&[0xed, 0x0e, 0x33, 0, 0xe2, 0x30, 0x81, 0x2d]);
        assert_eq!(origin_file_handle(&fb), Some(([0; 16], 1, &fb[21..])));
        let with = |i: usize, v: u8| {
            let mut b = fb.clone();
            b[i] = v;
            origin_file_handle(&b).map(|(uuid, kind, h)| (uuid, kind, h.to_vec()))
        };
        assert_eq!(with(1, 0xfa), None, "magic");
        assert_eq!(with(2, 30), None, "length");
        assert_eq!(with(3, 4), None, "a handle of an upper object");
        let other_order = if cfg!(target_endian = "big") { 0 } else { 1 };
        assert_eq!(with(3, other_order), None, "the other byte order");
        assert!(with(3, other_order | 2).is_some(), "any byte order");
        assert_eq!(origin_file_handle(&fb[..21]), None, "no handle");
    }
}
