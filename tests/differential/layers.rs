//! Generated lower layers, owned (`LE`, the owned form of `common::E`), and how a seed
//! picks them.

use super::*;

#[derive(Clone, Debug)]
pub(crate) enum LE {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Fifo(String),
    Whiteout(String),
    Opaque(String),
    Xattr(String, String, Vec<u8>),
    Mode(String, u32),
    Owner(String, u32, u32),
    /// Hardlink(existing path, new path), as common::E::Hardlink
    Hardlink(String, String),
    /// Extend(path, size): truncate a built file up to `size`, leaving a hole (applied by
    /// this test after common::build).
    Extend(String, u64),
}

impl LE {
    pub(crate) fn as_e(&self) -> Option<E<'_>> {
        Some(match self {
            LE::Extend(..) => return None,
            LE::File(p, d) => E::File(p, d),
            LE::Dir(p) => E::Dir(p),
            LE::Symlink(p, t) => E::Symlink(p, t),
            LE::Fifo(p) => E::Fifo(p),
            LE::Whiteout(p) => E::Whiteout(p),
            LE::Opaque(p) if userxattr() => E::Xattr(p, "user.overlay.opaque", b"y"),
            LE::Opaque(p) => E::Opaque(p),
            LE::Xattr(p, n, v) => E::Xattr(p, n, v),
            LE::Mode(p, m) => E::Mode(p, *m),
            LE::Owner(p, u, g) => E::Owner(p, *u, *g),
            LE::Hardlink(old, new) => E::Hardlink(old, new),
        })
    }
    /// Paths this entry creates or needs to exist.
    pub(crate) fn paths(&self) -> Vec<&str> {
        match self {
            LE::File(p, _)
            | LE::Dir(p)
            | LE::Symlink(p, _)
            | LE::Fifo(p)
            | LE::Whiteout(p)
            | LE::Opaque(p)
            | LE::Xattr(p, _, _)
            | LE::Mode(p, _)
            | LE::Owner(p, _, _)
            | LE::Extend(p, _) => vec![p],
            LE::Hardlink(old, new) => vec![old, new],
        }
    }
    /// The path this entry creates, if it creates one.
    pub(crate) fn creates(&self) -> Option<&str> {
        match self {
            LE::File(p, _) | LE::Dir(p) | LE::Symlink(p, _) | LE::Fifo(p) | LE::Whiteout(p) => {
                Some(p)
            }
            LE::Hardlink(_, new) => Some(new),
            _ => None,
        }
    }
}

impl fmt::Display for LE {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LE::File(p, d) => write!(f, "E::File({:?}, b{:?})", p, String::from_utf8_lossy(d)),
            LE::Dir(p) => write!(f, "E::Dir({:?})", p),
            LE::Symlink(p, t) => write!(f, "E::Symlink({:?}, {:?})", p, t),
            LE::Fifo(p) => write!(f, "E::Fifo({:?})", p),
            LE::Whiteout(p) => write!(f, "E::Whiteout({:?})", p),
            LE::Opaque(p) => write!(f, "E::Opaque({:?})", p),
            LE::Xattr(p, n, v) => write!(
                f,
                "E::Xattr({:?}, {:?}, b{:?})",
                p,
                n,
                String::from_utf8_lossy(v)
            ),
            LE::Mode(p, m) => write!(f, "E::Mode({:?}, 0o{:o})", p, m),
            LE::Owner(p, u, g) => write!(f, "E::Owner({:?}, {}, {})", p, u, g),
            LE::Hardlink(o, n) => write!(f, "E::Hardlink({:?}, {:?})", o, n),
            LE::Extend(p, n) => write!(f, "truncate({:?}, {}) after building", p, n),
        }
    }
}

pub(crate) fn build_layer(dir: &Path, entries: &[LE]) {
    let es: Vec<E<'_>> = entries.iter().filter_map(|e| e.as_e()).collect();
    common::build(dir, &es);
    for e in entries {
        if let LE::Extend(p, n) = e {
            let c = cpath(dir, p);
            let r = unsafe { libc::truncate(c.as_ptr(), *n as libc::off_t) };
            assert_eq!(
                r,
                0,
                "truncate {:?}: {}",
                dir.join(p),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Candidate paths of lower-layer objects, parents before children.
pub(crate) const LAYER_POOL: &[&str] = &[
    "a", "b", "c", "d1", "d2", "d3", "e", "a/b", "a/x", "d1/x", "d1/y", "d1/s", "d2/x", "d2/y",
    "d2/s", "d3/x", "d3/y", "d1/s/z", "d1/s/w", "d2/s/z",
];

pub(crate) fn parent_of(p: &str) -> Option<&str> {
    p.rfind('/').map(|i| &p[..i])
}

pub(crate) fn has_pool_children(p: &str) -> bool {
    let prefix = format!("{}/", p);
    LAYER_POOL.iter().any(|q| q.starts_with(&prefix))
}

pub(crate) fn symlink_target(rng: &mut Rng, at: &str) -> String {
    // Targets never leave the mount: ".." is only used below the top level.
    let top: &[&str] = &["a", "b", "d1", "d1/x", "d2/s", "nx", "c", "d3/x", "e"];
    let nested: &[&str] = &["../a", "../d2", "x", "s/z", "y", "../d1/x", "nx"];
    let depth = at.matches('/').count();
    if depth >= 1 && rng.pct(50) {
        rng.pick(nested).to_string()
    } else {
        rng.pick(top).to_string()
    }
}

pub(crate) const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o640, 0o444, 0o000, 0o4755, 0o2755, 0o666,
];
pub(crate) const DIR_MODES: &[u32] = &[
    0o755, 0o700, 0o775, 0o2775, 0o1777, 0o555, 0o711, 0o777, 0o1777,
];

/// Generate `n` lower layers; index 0 is the topmost lower (first in `lowerdir=`).
///
/// Layers are generated bottom-up so that whiteouts are only placed in directories that are
/// merged with the layer below.  (A whiteout in a directory that exists in one layer only is
/// listed by the kernel's readdir although lookup says ENOENT -- a kernel quirk that this
/// test deliberately does not exercise.)
pub(crate) fn gen_layers(rng: &mut Rng, n: usize) -> Vec<Vec<LE>> {
    let mut layers = Vec::new();
    // (kinds, opaque dirs) of the layer just below the one being generated
    let mut below: Option<(BTreeMap<&str, char>, Vec<&str>)> = None;
    // Exploration knob: OVLFUSE_DIFF_NO_LOWER_HARDLINKS=1 leaves hard links out of the layers
    // (to look past a known hard-link difference).
    let lower_hardlinks = std::env::var("OVLFUSE_DIFF_NO_LOWER_HARDLINKS")
        .map(|v| v == "0")
        .unwrap_or(true);
    for li in (0..n).rev() {
        let bottom = li == n - 1;
        let mut entries = Vec::new();
        // kind of object at each path in this layer: 'd' dir, 'f' file, other
        let mut kinds: BTreeMap<&str, char> = BTreeMap::new();
        let mut opaque: Vec<&str> = Vec::new();
        let mut files: Vec<&str> = Vec::new();
        let density = rng.range(35, 70);
        for &p in LAYER_POOL {
            if let Some(par) = parent_of(p) {
                if kinds.get(par) != Some(&'d') {
                    continue;
                }
            }
            if !rng.pct(density) {
                continue;
            }
            // A whiteout is only placed where every ancestor directory is merged with the
            // layer below (present there as a directory, not opaque here).
            let mut whiteout_ok = !bottom;
            let mut a = p;
            while let Some(par) = parent_of(a) {
                let merged = kinds.get(par) == Some(&'d')
                    && !opaque.contains(&par)
                    && below
                        .as_ref()
                        .is_some_and(|(bk, _)| bk.get(par) == Some(&'d'));
                whiteout_ok &= merged;
                a = par;
            }
            let container = has_pool_children(p);
            // weights: dir, file, symlink, fifo, whiteout, hardlink
            let weights: [u64; 6] = if container {
                [
                    60,
                    22,
                    5,
                    3,
                    if whiteout_ok { 10 } else { 0 },
                    if files.is_empty() || !lower_hardlinks {
                        0
                    } else {
                        3
                    },
                ]
            } else {
                [
                    10,
                    50,
                    12,
                    6,
                    if whiteout_ok { 14 } else { 0 },
                    if files.is_empty() || !lower_hardlinks {
                        0
                    } else {
                        8
                    },
                ]
            };
            match rng.weighted(&weights) {
                0 => {
                    entries.push(LE::Dir(p.to_string()));
                    kinds.insert(p, 'd');
                    if !bottom && rng.pct(25) {
                        entries.push(LE::Opaque(p.to_string()));
                        opaque.push(p);
                    }
                    if rng.pct(35) {
                        entries.push(LE::Mode(p.to_string(), *rng.pick(DIR_MODES)));
                    }
                    if rng.pct(30) {
                        entries.push(LE::Owner(p.to_string(), 1000, 1000));
                    }
                    if rng.pct(20) {
                        entries.push(LE::Xattr(p.to_string(), "user.dx".into(), rng.data(12)));
                    }
                }
                1 => {
                    let max = if rng.pct(2) {
                        300_000
                    } else if rng.pct(20) {
                        3000
                    } else {
                        60
                    };
                    let data = rng.data(max);
                    let len = data.len() as u64;
                    entries.push(LE::File(p.to_string(), data));
                    if rng.pct(8) {
                        // a sparse lower file: copy-up should keep the hole
                        entries.push(LE::Extend(
                            p.to_string(),
                            len + *rng.pick(&[70_000u64, 1 << 20]),
                        ));
                    }
                    kinds.insert(p, 'f');
                    files.push(p);
                    if rng.pct(30) {
                        entries.push(LE::Mode(p.to_string(), *rng.pick(FILE_MODES)));
                    }
                    if rng.pct(15) {
                        let (u, g) = *rng.pick(&[(1000u32, 1000u32), (0, 100), (1234, 0)]);
                        entries.push(LE::Owner(p.to_string(), u, g));
                    }
                    if rng.pct(25) {
                        entries.push(LE::Xattr(p.to_string(), "user.k1".into(), rng.data(16)));
                        if rng.pct(40) {
                            entries.push(LE::Xattr(p.to_string(), "user.k2".into(), rng.data(8)));
                        }
                    }
                    if rng.pct(8) {
                        entries.push(LE::Xattr(p.to_string(), "trusted.t1".into(), rng.data(8)));
                    }
                }
                2 => {
                    let t = symlink_target(rng, p);
                    entries.push(LE::Symlink(p.to_string(), t));
                    kinds.insert(p, 'l');
                }
                3 => {
                    entries.push(LE::Fifo(p.to_string()));
                    kinds.insert(p, 'p');
                    if rng.pct(30) {
                        entries.push(LE::Mode(
                            p.to_string(),
                            *rng.pick(&[0o600u32, 0o644, 0o666]),
                        ));
                    }
                }
                4 => {
                    entries.push(LE::Whiteout(p.to_string()));
                    kinds.insert(p, 'w');
                }
                _ => {
                    let old = *rng.pick(&files);
                    entries.push(LE::Hardlink(old.to_string(), p.to_string()));
                    kinds.insert(p, 'f');
                }
            }
        }
        layers.push(entries);
        below = Some((kinds, opaque));
    }
    layers.reverse();
    layers
}
