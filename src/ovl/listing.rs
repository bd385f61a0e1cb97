//! A merged directory's entries, kept in readdir order: what each name shows (type,
//! inode number, which layer), patched per entry by our own changes, and read out from
//! any offset.
//!
//! Readdir needs no open handle (the kernel is told to skip OPENDIR, which saves a round
//! trip per directory listed), so its offsets must stay valid while the directory changes
//! between two reads. They are cookies, as in ext4's hashed directories: entries are kept
//! ordered by a keyed hash of their name, an entry's offset is its place in that order,
//! and reading on from an offset gives the entries placed after it. An entry that stays
//! in the directory is therefore listed exactly once, whatever is created or removed
//! meanwhile, and the order survives the listing being dropped and rebuilt.

use super::layers::{LayerId, UPPER};
use super::HashSet;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// Low bits of a readdir offset that tell apart names whose hashes share a slot.
const SEQ_BITS: u32 = 7;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
/// Offsets below this are the start of the listing, `.` and `..`; slots start at 1, so
/// every entry's offset is at least this.
const FIRST_ENTRY: u64 = 1 << SEQ_BITS;
/// How many entries are copied out of a listing under its lock at a time.
const PAGE: usize = 128;

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
    pub(super) lower_positive: bool,
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
    /// The layer whose copy is seen (as in `Entry`).
    pub layer: LayerId,
}

/// A name in a merged directory, shared by its map, its set of lower-positive names and
/// the lines readdir copies out (a big directory holds each name once).
pub type Name = Arc<OsStr>;

/// Where a name sits in listing order: the top 56 bits of a hash keyed once per daemon,
/// never 0. The key keeps anyone who picks names from piling them into one slot.
fn slot_of(name: &OsStr) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    let h = KEY.get_or_init(RandomState::new).hash_one(name.as_bytes());
    (h >> (64 - 56)).max(1)
}

/// The readdir offset of the `seq`-th name of a slot. A slot holds more than one name only
/// when 56-bit hashes collide (about once in 10^5 directories of a million entries); the
/// 129th name of a slot, which would take 2^56 tries to make, shares the 128th's offset.
fn cookie(slot: u64, seq: usize) -> u64 {
    slot << SEQ_BITS | (seq as u64).min(SEQ_MASK)
}

/// The names of one slot, in byte order; almost always exactly one.
enum Slot {
    One((Name, Entry)),
    Many(Vec<(Name, Entry)>),
}

impl Slot {
    fn items(&self) -> &[(Name, Entry)] {
        match self {
            Slot::One(x) => std::slice::from_ref(x),
            Slot::Many(v) => v,
        }
    }

    fn get(&self, name: &OsStr) -> Option<&Entry> {
        self.items()
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, e)| e)
    }

    fn get_mut(&mut self, name: &OsStr) -> Option<&mut Entry> {
        match self {
            Slot::One((n, e)) => (**n == *name).then_some(e),
            Slot::Many(v) => v.iter_mut().find(|(n, _)| **n == *name).map(|(_, e)| e),
        }
    }

    /// Adds a name the slot does not hold.
    fn add(&mut self, name: Name, e: Entry) {
        let mut v = match std::mem::replace(self, Slot::Many(Vec::new())) {
            Slot::One(x) => vec![x],
            Slot::Many(v) => v,
        };
        let at = v.partition_point(|(n, _)| **n < *name);
        v.insert(at, (name, e));
        *self = Slot::Many(v);
    }

    /// Takes a name out, leaving an empty `Many` when it was the last.
    fn take(&mut self, name: &OsStr) -> Option<(Name, Entry)> {
        let mut v = match std::mem::replace(self, Slot::Many(Vec::new())) {
            Slot::One(x) if *x.0 == *name => return Some(x),
            Slot::One(x) => {
                *self = Slot::One(x);
                return None;
            }
            Slot::Many(v) => v,
        };
        let taken = v
            .iter()
            .position(|(n, _)| **n == *name)
            .map(|i| v.remove(i));
        *self = match v.len() {
            1 => Slot::One(v.remove(0)),
            _ => Slot::Many(v),
        };
        taken
    }

    fn is_empty(&self) -> bool {
        matches!(self, Slot::Many(v) if v.is_empty())
    }
}

#[derive(Default)]
struct Inner {
    /// Every shown name, by slot.
    slots: BTreeMap<u64, Slot>,
    len: usize,
    /// Names not shown now whose highest lower copy is a real object (shown ones carry
    /// that in their entry): removing or replacing them needs a whiteout.
    lower_positive: HashSet<Name>,
}

impl Inner {
    fn get(&self, name: &OsStr) -> Option<&Entry> {
        self.slots.get(&slot_of(name))?.get(name)
    }

    fn get_mut(&mut self, name: &OsStr) -> Option<&mut Entry> {
        self.slots.get_mut(&slot_of(name))?.get_mut(name)
    }

    /// Orders a freshly merged directory's names into slots.
    fn from_slotted(entries: Slotted, lower_positive: HashSet<Name>) -> Inner {
        let mut v = entries.0;
        let len = v.len();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        // A big listing is built without a second copy of it: when no two names share a
        // slot (all but about one in 10^5 listings of 1M names), each line becomes its
        // slot where it lies, and the map is built from that same memory.
        let slots: Vec<(u64, Slot)> = if v.windows(2).all(|w| w[0].0 != w[1].0) {
            v.into_iter()
                .map(|(s, n, e)| (s, Slot::One((n, e))))
                .collect()
        } else {
            let mut v = v.into_iter().peekable();
            std::iter::from_fn(|| {
                let (s, n, e) = v.next()?;
                let mut slot = Slot::One((n, e));
                while let Some((_, n, e)) = v.next_if(|x| x.0 == s) {
                    slot.add(n, e);
                }
                Some((s, slot))
            })
            .collect()
        };
        Inner {
            // Built from sorted input in one pass, with full nodes.
            slots: slots.into_iter().collect(),
            len,
            lower_positive,
        }
    }
}

/// The names of a listing being built, each given once, with the slot each goes to.
#[derive(Default)]
pub struct Slotted(Vec<(u64, Name, Entry)>);

impl Slotted {
    pub fn with_capacity(n: usize) -> Slotted {
        Slotted(Vec::with_capacity(n))
    }

    pub fn push(&mut self, name: Name, e: Entry) {
        self.0.push((slot_of(&name), name, e));
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Name, &mut Entry)> {
        self.0.iter_mut().map(|(_, n, e)| (&*n, e))
    }

    pub fn names(&self) -> impl ExactSizeIterator<Item = &Name> {
        self.0.iter().map(|(_, n, _)| n)
    }
}

impl FromIterator<(Name, Entry)> for Slotted {
    fn from_iter<I: IntoIterator<Item = (Name, Entry)>>(it: I) -> Slotted {
        let it = it.into_iter();
        let mut s = Slotted::with_capacity(it.size_hint().0);
        for (n, e) in it {
            s.push(n, e);
        }
        s
    }
}

pub struct MergedDir {
    inner: RwLock<Inner>,
    /// How the listing's READDIRPLUS replies went out, so that lookups of names from a
    /// cold listing can warm the rest of it (`Overlay::lookup`): 0 with attributes; from
    /// 1, names only, counting 1 + the lookups in the directory since; `WARMING` once
    /// its rest is handed to the stat-ahead helpers.
    names_only: AtomicU32,
}

/// `MergedDir::names_only` once the listing's rest is being warmed.
const WARMING: u32 = u32::MAX;
/// Lookups in a directory listed with names only after which the rest of its listing is
/// warmed: a few stats of single names do not pay for stat-ing a whole directory, a walk
/// that stats each entry does.
const WARM_AFTER_LOOKUPS: u32 = 16;

impl MergedDir {
    /// A freshly merged directory: its shown names, and the hidden names whose highest
    /// lower copy is a real object.
    pub(super) fn from_entries(entries: Slotted, lower_positive: HashSet<Name>) -> MergedDir {
        MergedDir::of(Inner::from_slotted(entries, lower_positive))
    }

    fn of(inner: Inner) -> MergedDir {
        MergedDir {
            inner: RwLock::new(inner),
            names_only: AtomicU32::new(0),
        }
    }

    /// Whether a READDIRPLUS reply of this listing last went out with names only.
    pub fn listed_names_only(&self) -> bool {
        self.names_only.load(Ordering::Relaxed) != 0
    }

    /// Records how a READDIRPLUS reply of this listing went out, `first` for the reply
    /// that starts a listing. The count of lookups starts again with a listing, cold once
    /// more (a warm-up long done may have been undone by reclaim since); a later reply of
    /// the same listing keeps it, and the warm-up it may have started.
    pub fn set_listed_names_only(&self, names_only: bool, first: bool) {
        if !names_only {
            self.names_only.store(0, Ordering::Relaxed);
        } else if first {
            self.names_only.store(1, Ordering::Relaxed);
        } else {
            let _ = self
                .names_only
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Whether lookups after a names-only reply called for the rest of this listing to be
    /// warmed (`looked_up` said so).
    pub fn warming(&self) -> bool {
        self.names_only.load(Ordering::Relaxed) == WARMING
    }

    /// Counts a lookup in the directory; true, once, when enough have followed a listing
    /// with names only that the rest of it should be warmed.
    pub fn looked_up(&self) -> bool {
        let n = self.names_only.load(Ordering::Relaxed);
        if n == 0 || n == WARMING {
            return false;
        }
        if n < WARM_AFTER_LOOKUPS {
            // Lost increments under concurrent lookups only delay the warming.
            self.names_only.store(n + 1, Ordering::Relaxed);
            return false;
        }
        self.names_only
            .compare_exchange(n, WARMING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    pub fn contains(&self, name: &OsStr) -> bool {
        self.inner.read().get(name).is_some()
    }

    pub fn get(&self, name: &OsStr) -> Option<Entry> {
        self.inner.read().get(name).copied()
    }

    /// The entry's object was copied up: its upper copy is the one seen from now on.
    /// `name` was copied up; its copy shows inode number `ino`.
    pub fn copied_up(&self, name: &OsStr, ino: u64) {
        if let Some(e) = self.inner.write().get_mut(name) {
            e.layer = UPPER;
            e.ino = ino;
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lower_positive(&self, name: &OsStr) -> bool {
        let i = self.inner.read();
        match i.get(name) {
            Some(e) => e.lower_positive,
            None => i.lower_positive.contains(name),
        }
    }

    /// A name now exists (create, mkdir, rename target, ...).
    pub fn insert(&self, name: &OsStr, mut e: Entry) {
        let mut i = self.inner.write();
        if let Some(old) = i.get_mut(name) {
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
        i.len += 1;
        match i.slots.entry(slot_of(&name)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Slot::One((name, e)));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => o.get_mut().add(name, e),
        }
    }

    /// A name is gone.
    pub fn remove(&self, name: &OsStr) {
        let mut i = self.inner.write();
        let s = slot_of(name);
        let Some(slot) = i.slots.get_mut(&s) else {
            return;
        };
        let taken = slot.take(name);
        if slot.is_empty() {
            i.slots.remove(&s);
        }
        if let Some((n, e)) = taken {
            i.len -= 1;
            if e.lower_positive {
                i.lower_positive.insert(n);
            }
        }
    }

    /// Appends to `out` up to `max` lines placed after readdir offset `after` (below
    /// `FIRST_ENTRY`: from the first), each with its own offset.
    fn page(&self, after: u64, max: usize, out: &mut Vec<(u64, Listed)>) {
        let i = self.inner.read();
        let (from, past_seq) = if after < FIRST_ENTRY {
            (0, None)
        } else {
            (after >> SEQ_BITS, Some(after & SEQ_MASK))
        };
        for (&s, slot) in i.slots.range(from..) {
            for (seq, (n, e)) in slot.items().iter().enumerate() {
                if s == from && past_seq.is_some_and(|p| seq as u64 <= p) {
                    continue;
                }
                let line = Listed {
                    name: n.clone(),
                    kind: e.kind,
                    ino: e.ino,
                    layer: e.layer,
                };
                out.push((cookie(s, seq), line));
                if out.len() >= max {
                    return;
                }
            }
        }
    }
}

/// Readdir of a directory from some offset: `.` (offset 1 after it), `..` (offset 2),
/// then its entries in listing order, each with the offset to read on from after it.
/// Lines are copied out of the listing a page at a time, so no lock is held while the
/// caller handles one.
pub struct DirReader {
    merged: Arc<MergedDir>,
    dots: [Option<Listed>; 2],
    after: u64,
    page: std::vec::IntoIter<(u64, Listed)>,
    done: bool,
}

impl DirReader {
    /// Reads `merged` after offset `after`, first giving what is left of `.` and `..`.
    pub(super) fn new(merged: Arc<MergedDir>, dots: [Option<Listed>; 2], after: u64) -> Self {
        DirReader {
            merged,
            dots,
            after,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Whether a line with next offset `next` is `.` or `..`.
    pub fn is_dot(next: u64) -> bool {
        next <= 2
    }
}

impl Iterator for DirReader {
    type Item = (u64, Listed);

    fn next(&mut self) -> Option<(u64, Listed)> {
        for (i, d) in self.dots.iter_mut().enumerate() {
            if let Some(l) = d.take() {
                return Some((i as u64 + 1, l));
            }
        }
        if let Some(x) = self.page.next() {
            self.after = x.0;
            return Some(x);
        }
        if self.done {
            return None;
        }
        let mut v = Vec::with_capacity(PAGE);
        self.merged.page(self.after, PAGE, &mut v);
        self.done = v.len() < PAGE;
        self.page = v.into_iter();
        let x = self.page.next()?;
        self.after = x.0;
        Some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovl::HashMap;

    fn name(s: &str) -> Name {
        Name::from(OsStr::new(s))
    }

    fn merged(names: &[String]) -> MergedDir {
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, n)| (name(n), Entry::upper(libc::S_IFREG, i as u64 + 10)))
            .collect::<HashMap<_, _>>();
        MergedDir::of(Inner::from_slotted(
            entries.into_iter().collect(),
            HashSet::default(),
        ))
    }

    /// Reads the whole listing `chunk` lines at a time, calling `between` after each chunk.
    fn read_all(m: &MergedDir, chunk: usize, mut between: impl FnMut(usize)) -> Vec<(u64, String)> {
        let (mut out, mut after, mut round) = (Vec::new(), 0, 0);
        loop {
            let mut v = Vec::new();
            m.page(after, chunk, &mut v);
            let Some(last) = v.last() else { break };
            after = last.0;
            out.extend(
                v.into_iter()
                    .map(|(c, l)| (c, l.name.to_string_lossy().into_owned())),
            );
            between(round);
            round += 1;
        }
        out
    }

    #[test]
    fn offsets_resume_after_the_last_line_and_survive_a_rebuild() {
        let names: Vec<String> = (0..1000).map(|i| format!("f{i}")).collect();
        let m = merged(&names);
        let whole = read_all(&m, 100_000, |_| ());
        let chunked = read_all(&m, 7, |_| ());
        assert_eq!(whole, chunked);
        let mut seen: Vec<&String> = whole.iter().map(|(_, n)| n).collect();
        seen.sort();
        let mut want: Vec<&String> = names.iter().collect();
        want.sort();
        assert_eq!(seen, want);
        assert!(whole.windows(2).all(|w| w[0].0 < w[1].0), "offsets rise");
        assert!(whole.iter().all(|(c, _)| *c >= FIRST_ENTRY));
        // Built again from the same names (after the listing was dropped), in another
        // order: the same offsets, so a reader can go on where it was.
        let mut rev = names.clone();
        rev.reverse();
        assert_eq!(read_all(&merged(&rev), 13, |_| ()), whole);
    }

    #[test]
    fn a_name_that_stays_is_listed_once_while_others_come_and_go() {
        let names: Vec<String> = (0..500).map(|i| format!("keep{i}")).collect();
        let m = merged(&names);
        let mut removed = HashSet::default();
        let listed = read_all(&m, 9, |round| {
            // Between reads: add names, remove names listed already and names not yet.
            m.insert(
                OsStr::new(&format!("new{round}")),
                Entry::upper(libc::S_IFREG, 1),
            );
            m.remove(OsStr::new(&format!("new{}", round / 2)));
            let gone = format!("keep{}", 499 - round);
            m.remove(OsStr::new(&gone));
            removed.insert(gone);
        });
        let mut counts: HashMap<&str, usize> = HashMap::default();
        for (_, n) in &listed {
            *counts.entry(n.as_str()).or_default() += 1;
        }
        assert!(
            counts.values().all(|c| *c == 1),
            "a name listed twice: {counts:?}"
        );
        assert!(removed.len() > 40, "{} reads", removed.len());
        for n in names.iter().filter(|n| !removed.contains(*n)) {
            assert_eq!(counts.get(n.as_str()), Some(&1), "{n} missing");
        }
        assert_eq!(m.len(), read_all(&m, 1000, |_| ()).len());
        // Round r added new{r} and removed new{r/2}: half the added names (rounded down) stay.
        assert_eq!(m.len(), 500 - removed.len() + removed.len() / 2);
    }

    #[test]
    fn names_sharing_a_slot_get_offsets_of_their_own() {
        // Hash collisions cannot be made on purpose; give names their slots by hand, in no
        // order, as a listing build would.
        let e = Entry::upper(libc::S_IFREG, 5);
        let given = ["b", "z", "c", "a"].map(|n| (if n == "z" { 9 } else { 7 }, name(n), e));
        let m = MergedDir::of(Inner::from_slotted(
            Slotted(given.into()),
            HashSet::default(),
        ));
        assert_eq!(m.len(), 4);
        let all = read_all(&m, 1, |_| ());
        let want = [
            (7 << 7, "a"),
            ((7 << 7) + 1, "b"),
            ((7 << 7) + 2, "c"),
            (9 << 7, "z"),
        ];
        let got: Vec<(u64, &str)> = all.iter().map(|(c, n)| (*c, n.as_str())).collect();
        assert_eq!(got, want);
        // Taking names out of a shared slot keeps it ordered and empties it last.
        let mut i = m.inner.write();
        let s = i.slots.get_mut(&7).unwrap();
        assert!(s.take(OsStr::new("b")).is_some());
        assert!(s.take(OsStr::new("x")).is_none());
        assert!(matches!(s, Slot::Many(v) if v.len() == 2));
        assert!(s.take(OsStr::new("a")).is_some());
        assert!(matches!(s, Slot::One((n, _)) if &**n == "c"));
        assert!(s.take(OsStr::new("c")).is_some() && s.is_empty());
    }

    #[test]
    fn a_listing_given_with_names_only_is_warmed_once_after_enough_lookups() {
        let m = merged(&["a".to_string()]);
        assert!(
            !(0..100).any(|_| m.looked_up()),
            "listed with attributes: never warmed"
        );
        m.set_listed_names_only(true, true);
        let first = (1..=100).find(|_| m.looked_up());
        assert_eq!(first, Some(WARM_AFTER_LOOKUPS));
        assert!(m.warming() && m.listed_names_only());
        assert!(!(0..100).any(|_| m.looked_up()), "warmed once only");
        m.set_listed_names_only(true, false);
        assert!(
            m.warming(),
            "a later reply of the same listing keeps the warm-up"
        );
        m.set_listed_names_only(true, true);
        assert!(!m.warming(), "a new cold listing counts again");
        assert_eq!((1..=100).find(|_| m.looked_up()), Some(WARM_AFTER_LOOKUPS));
        m.set_listed_names_only(false, false);
        assert!(!m.warming() && !m.listed_names_only());
        m.set_listed_names_only(true, false);
        assert_eq!((1..=100).find(|_| m.looked_up()), Some(WARM_AFTER_LOOKUPS));
    }
}
