//! Reading /proc/self/mountinfo: which mounts exist and with what options.

use super::*;

#[derive(Debug, Clone)]
pub struct MountEntry {
    pub id: u64,
    /// The superblock's device, `major:minor`: one per FUSE connection, shared by every
    /// copy of the mount (bind mounts, other mount namespaces).
    pub dev: String,
    pub mount_point: PathBuf,
    pub opts: String,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

pub(crate) fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..(i + 4).min(b.len())];
            if oct.len() == 3 && oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// The current mount table of this process's namespace.
pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    parse_mountinfo(&text)
}

/// The entries of a `/proc/PID/mountinfo` text.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || fields.len() < sep + 3 {
            continue;
        }
        v.push(MountEntry {
            id: fields[0].parse().unwrap_or(0),
            dev: fields[2].to_string(),
            mount_point: PathBuf::from(unescape_mountinfo(fields[4])),
            opts: fields[5].to_string(),
            fstype: fields[sep + 1].to_string(),
            source: unescape_mountinfo(fields[sep + 2])
                .to_string_lossy()
                .into_owned(),
            super_opts: fields
                .get(sep + 3)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        });
    }
    v
}

/// Makes `p` absolute lexically (no stat: a dead FUSE mount point must not be touched).
pub fn absolute(p: &Path) -> PathBuf {
    let base = if p.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().expect("current_dir")
    };
    let mut out = base;
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => out = PathBuf::from("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// The topmost mount whose mount point is exactly `p`.
pub fn mount_at(p: &Path) -> Option<MountEntry> {
    let p = absolute(p);
    mounts().into_iter().rfind(|m| m.mount_point == p)
}

/// Whether a FUSE file system is the topmost mount at `p`.
pub fn is_fuse_mounted(p: &Path) -> bool {
    mount_at(p)
        .map(|m| m.fstype == "fuse" || m.fstype.starts_with("fuse."))
        .unwrap_or(false)
}

/// Whether anything is mounted at `p`.
pub fn is_mounted(p: &Path) -> bool {
    mount_at(p).is_some()
}

/// Bounded polling for a FUSE mount to show up at `p`.
pub fn wait_for_fuse_mount(p: &Path, timeout: Duration) -> bool {
    wait_until(timeout, || is_fuse_mounted(p))
}

/// Mount points strictly below `root` (or equal to it when `inclusive`).
pub fn mounts_below(root: &Path, inclusive: bool) -> Vec<PathBuf> {
    let root = absolute(root);
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| mp.starts_with(&root) && (inclusive || mp != &root))
        .collect();
    v.dedup();
    v
}

pub(crate) fn lazy_umount(p: &Path) -> io::Result<()> {
    let cp = cpath(p);
    cvt(unsafe { libc::umount2(cp.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}
