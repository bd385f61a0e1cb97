//! Snapshots of a tree (types, modes, owners, data, xattrs) for comparing two trees.

use super::*;

/// What a path looks like, independent of times and inode numbers.
#[derive(Debug, PartialEq, Clone)]
pub struct Node {
    /// f d l p c b s, or '!' when the entry could not be examined (the error is in target)
    pub kind: char,
    /// permission bits including suid/sgid/sticky
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// regular files only
    pub size: u64,
    /// regular files only: a hash of the contents (holes and written zeros hash alike)
    pub data_hash: u64,
    pub target: Option<PathBuf>,
    pub rdev: u64,
    /// non-directories only (directories 0)
    pub nlink: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Node {
    pub(crate) fn error(msg: String) -> Node {
        Node {
            kind: '!',
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            data_hash: 0,
            target: Some(PathBuf::from(msg)),
            rdev: 0,
            nlink: 0,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn brief(&self) -> String {
        let mut s = format!("{} {:04o} {}:{}", self.kind, self.mode, self.uid, self.gid);
        match self.kind {
            'f' => {
                s += &format!(
                    " size={} hash={:016x} nlink={}",
                    self.size, self.data_hash, self.nlink
                )
            }
            'l' => s += &format!(" -> {:?}", self.target.as_deref().unwrap_or(Path::new(""))),
            'c' | 'b' => {
                s += &format!(
                    " rdev={}:{}",
                    libc::major(self.rdev as _),
                    libc::minor(self.rdev as _)
                )
            }
            '!' => {
                s += &format!(
                    " {}",
                    self.target.as_deref().unwrap_or(Path::new("")).display()
                )
            }
            _ => {}
        }
        if self.kind != 'd' && self.kind != 'f' && self.kind != '!' {
            s += &format!(" nlink={}", self.nlink);
        }
        if !self.xattrs.is_empty() {
            let xs: Vec<String> = self
                .xattrs
                .iter()
                .map(|(k, v)| format!("{k}={}", show_bytes(v)))
                .collect();
            s += &format!(" xattrs[{}]", xs.join(", "));
        }
        s
    }
}

pub fn show_bytes(v: &[u8]) -> String {
    match std::str::from_utf8(v) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!(
            "0x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSel {
    None,
    User,
    All,
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf29ce484222325;
pub(crate) const FNV_PRIME: u64 = 0x100000001b3;

pub(crate) fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

pub(crate) const CHUNK: u64 = 4096;

/// Hash of a file's contents in which holes and explicit zeros are the same thing: every
/// non-zero 4 KiB chunk contributes (chunk index, bytes). Uses SEEK_DATA to skip holes.
pub fn hash_file(p: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut h = FNV_OFFSET;
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    while pos < size {
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        let start = if d < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => break,
                _ => pos,
            }
        } else {
            d as u64
        };
        let hole = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size
        } else {
            (hole as u64).min(size)
        };
        let mut off = start / CHUNK * CHUNK;
        let end = end.div_ceil(CHUNK) * CHUNK;
        if end <= off {
            pos = off + CHUNK;
            continue;
        }
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let mut got = 0;
            while got < want {
                let n = f.read_at(&mut buf[got..want], off + got as u64)?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            for (i, chunk) in buf[..got].chunks(CHUNK as usize).enumerate() {
                if chunk.iter().any(|b| *b != 0) {
                    let idx = off / CHUNK + i as u64;
                    h = fnv(h, &idx.to_le_bytes());
                    h = fnv(h, chunk);
                }
            }
            if got < want {
                off = end;
                break;
            }
            off += got as u64;
        }
        pos = off.max(pos + 1);
    }
    Ok(h)
}

use std::os::unix::fs::OpenOptionsExt;

pub(crate) fn node_of(full: &Path, md: &fs::Metadata, sel: XattrSel) -> Node {
    let t = md.file_type();
    let kind = if t.is_file() {
        'f'
    } else if t.is_dir() {
        'd'
    } else if t.is_symlink() {
        'l'
    } else if t.is_fifo() {
        'p'
    } else if t.is_char_device() {
        'c'
    } else if t.is_block_device() {
        'b'
    } else if t.is_socket() {
        's'
    } else {
        '?'
    };
    let mut n = Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: 0,
        data_hash: 0,
        target: None,
        rdev: 0,
        nlink: if kind == 'd' { 0 } else { md.nlink() },
        xattrs: BTreeMap::new(),
    };
    match kind {
        'f' => {
            n.size = md.len();
            n.data_hash = match hash_file(full) {
                Ok(h) => h,
                Err(e) => {
                    n.target = Some(PathBuf::from(format!("<read error: {}>", describe_err(&e))));
                    0
                }
            }
        }
        'l' => {
            n.target = Some(match fs::read_link(full) {
                Ok(t) => t,
                Err(e) => PathBuf::from(format!("<readlink error: {}>", describe_err(&e))),
            })
        }
        'c' | 'b' => n.rdev = md.rdev(),
        _ => {}
    }
    if sel != XattrSel::None {
        match llistxattr(full) {
            Ok(names) => {
                for name in names {
                    if sel == XattrSel::User && !name.starts_with("user.") {
                        continue;
                    }
                    let v = match lgetxattr(full, &name) {
                        Ok(v) => v,
                        Err(e) => format!("<getxattr error: {}>", describe_err(&e)).into_bytes(),
                    };
                    n.xattrs.insert(name, v);
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) => {}
            Err(e) => {
                n.xattrs
                    .insert("<listxattr error>".into(), describe_err(&e).into_bytes());
            }
        }
    }
    n
}

/// Everything below `root` (root itself is the empty path), keyed by relative path. Does
/// not follow symlinks and does not descend into mounts below root.
pub fn snapshot(root: &Path, xattrs: XattrSel) -> BTreeMap<PathBuf, Node> {
    let root = absolute(root);
    let skip: BTreeSet<PathBuf> = mounts_below(&root, false).into_iter().collect();
    let mut out = BTreeMap::new();
    walk(&root, PathBuf::new(), &skip, xattrs, &mut out);
    out
}

pub(crate) fn walk(
    root: &Path,
    rel: PathBuf,
    skip: &BTreeSet<PathBuf>,
    sel: XattrSel,
    out: &mut BTreeMap<PathBuf, Node>,
) {
    let full = if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(&rel)
    };
    let md = match fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) => {
            out.insert(
                rel,
                Node::error(format!("<lstat error: {}>", describe_err(&e))),
            );
            return;
        }
    };
    let node = node_of(&full, &md, sel);
    let is_dir = node.kind == 'd';
    out.insert(rel.clone(), node);
    if !is_dir || skip.contains(&full) {
        return;
    }
    let rd = match fs::read_dir(&full) {
        Ok(rd) => rd,
        Err(e) => {
            out.insert(rel.join("<readdir error>"), Node::error(describe_err(&e)));
            return;
        }
    };
    let mut names = Vec::new();
    for ent in rd {
        match ent {
            Ok(ent) => names.push(ent.file_name()),
            Err(e) => {
                out.insert(rel.join("<readdir error>"), Node::error(describe_err(&e)));
                break;
            }
        }
    }
    names.sort();
    for (i, n) in names.iter().enumerate() {
        if i > 0 && names[i - 1] == *n {
            out.insert(
                rel.join(format!("<duplicate readdir entry {:?}>", n)),
                Node::error("readdir returned the name more than once".into()),
            );
            continue;
        }
        walk(root, rel.join(n), skip, sel, out);
    }
}

pub(crate) fn show_rel(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_string()
    } else {
        p.display().to_string()
    }
}

/// A snapshot of an upper directory, keeping the xattrs whose names `keep` accepts, with
/// every whiteout (char 0/0) shown alike: the kernel shares one whiteout inode (more than
/// one link, mode 0), ovlfuse makes one per name.
pub fn upper_snapshot(upper: &Path, keep: impl Fn(&str) -> bool) -> BTreeMap<PathBuf, Node> {
    let mut s = snapshot(upper, XattrSel::All);
    for n in s.values_mut() {
        n.xattrs.retain(|k, _| keep(k));
        if n.kind == 'c' && n.rdev == 0 {
            n.mode = 0;
            n.nlink = 1;
            n.uid = 0;
            n.gid = 0;
        }
    }
    s
}

/// Human-readable differences between two snapshots (empty when equal).
pub fn diff_snapshots(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut out = Vec::new();
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), None) => out.push(format!("- {}: only in first: {}", show_rel(k), x.brief())),
            (None, Some(y)) => {
                out.push(format!("+ {}: only in second: {}", show_rel(k), y.brief()))
            }
            (Some(x), Some(y)) if x != y => {
                let mut d = Vec::new();
                if x.kind != y.kind {
                    d.push(format!("kind {} vs {}", x.kind, y.kind));
                }
                if x.mode != y.mode {
                    d.push(format!("mode {:04o} vs {:04o}", x.mode, y.mode));
                }
                if (x.uid, x.gid) != (y.uid, y.gid) {
                    d.push(format!("owner {}:{} vs {}:{}", x.uid, x.gid, y.uid, y.gid));
                }
                if x.size != y.size {
                    d.push(format!("size {} vs {}", x.size, y.size));
                }
                if x.data_hash != y.data_hash {
                    d.push(format!(
                        "contents differ (hash {:016x} vs {:016x})",
                        x.data_hash, y.data_hash
                    ));
                }
                if x.target != y.target {
                    d.push(format!("target/error {:?} vs {:?}", x.target, y.target));
                }
                if x.rdev != y.rdev {
                    d.push(format!("rdev {:#x} vs {:#x}", x.rdev, y.rdev));
                }
                if x.nlink != y.nlink {
                    d.push(format!("nlink {} vs {}", x.nlink, y.nlink));
                }
                if x.xattrs != y.xattrs {
                    let names: BTreeSet<&String> = x.xattrs.keys().chain(y.xattrs.keys()).collect();
                    for n in names {
                        let (vx, vy) = (x.xattrs.get(n), y.xattrs.get(n));
                        if vx != vy {
                            d.push(format!(
                                "xattr {n}: {} vs {}",
                                vx.map(|v| show_bytes(v))
                                    .unwrap_or_else(|| "<absent>".into()),
                                vy.map(|v| show_bytes(v))
                                    .unwrap_or_else(|| "<absent>".into())
                            ));
                        }
                    }
                }
                out.push(format!("~ {}: {}", show_rel(k), d.join("; ")));
            }
            _ => {}
        }
    }
    out
}

/// Panics with a readable diff when the two snapshots differ.
#[track_caller]
pub fn assert_same_snapshots(
    what: &str,
    a_label: &str,
    a: &BTreeMap<PathBuf, Node>,
    b_label: &str,
    b: &BTreeMap<PathBuf, Node>,
) {
    let d = diff_snapshots(a, b);
    if !d.is_empty() {
        let shown: Vec<&String> = d.iter().take(60).collect();
        panic!(
            "{what}: {a_label} (first) and {b_label} (second) differ in {} place(s):\n  {}{}",
            d.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  "),
            if d.len() > 60 {
                format!("\n  ... and {} more", d.len() - 60)
            } else {
                String::new()
            }
        );
    }
}

/// A compact listing of a snapshot, for failure messages.
pub fn show_snapshot(s: &BTreeMap<PathBuf, Node>) -> String {
    s.iter()
        .map(|(k, v)| format!("  {}: {}", show_rel(k), v.brief()))
        .collect::<Vec<_>>()
        .join("\n")
}
