//! Ownership as the mount shows it, for container engines: fuse-overlayfs's id mapping
//! (`uidmapping=`/`gidmapping=`), squashing (`squash_to_root`, `squash_to_uid=`,
//! `squash_to_gid=`) and owner/mode kept in an xattr (`xattr_permissions=`).
//!
//! Two kinds of id meet here. *Disk* ids are the ones stored in the layers (for a container
//! image, the ids of the image). *Shown* ids are the ones the mount reports and the ones
//! requests arrive with. A mapping triple `D:S:N` says disk ids D..D+N are shown as
//! S..S+N; an id outside every triple shows, and is stored, as the kernel's overflow id.
//! Squashing changes only what is shown, and makes chown never fail (as in fuse-overlayfs).
//!
//! With `xattr_permissions`, a file's owner, group, mode and (for device files a user may
//! not make) its type live in an xattr `uid:gid:octal-mode[:type]` instead of the inode,
//! so an unprivileged daemon can keep what it cannot chown or mknod. Any layer whose root
//! directory carries one of these xattrs is read that way too, as fuse-overlayfs does.

use super::node::Node;
use super::{Overlay, SysResult};
use crate::sys::fs::Stat;
use crate::sys::xattr;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

/// Override xattr names, in the order a layer's root is probed.
pub const OVERRIDE_XATTRS: [&str; 3] = [
    "security.fuseoverlayfs.override_stat",
    "user.containers.override_stat",
    "user.fuseoverlayfs.override_stat",
];

/// Value of `xattr_permissions=`: which override xattr the upper layer gets.
pub fn override_xattr_for(option: u8) -> Option<&'static str> {
    match option {
        1 => Some(OVERRIDE_XATTRS[0]),
        2 => Some(OVERRIDE_XATTRS[1]),
        _ => None,
    }
}

/// One `disk:shown:len` triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub disk: u32,
    pub shown: u32,
    pub len: u32,
}

/// Parses fuse-overlayfs's mapping syntax: triples joined by `:`; empty fields are skipped,
/// so the leading colon containers/storage writes (`:0:1000:1:1:100000:65536`) is fine.
pub fn parse_mapping(v: &str) -> Result<Vec<IdRange>, String> {
    let fields: Vec<&str> = v.split(':').filter(|f| !f.is_empty()).collect();
    if fields.is_empty() || fields.len() % 3 != 0 {
        let n = fields.len();
        let plural = if n == 1 { "" } else { "s" };
        return Err(format!("{n} field{plural}, where they come in threes"));
    }
    let mut out = Vec::new();
    for t in fields.chunks(3) {
        let n: Vec<u32> = t
            .iter()
            .map(|f| {
                f.parse::<u32>()
                    .map_err(|_| format!("\"{f}\" is not an id"))
            })
            .collect::<Result<_, _>>()?;
        if n[2] == 0 {
            return Err("a range of 0 ids".into());
        }
        if n[0].checked_add(n[2] - 1).is_none() || n[1].checked_add(n[2] - 1).is_none() {
            return Err(format!("range {}:{}:{} overflows", n[0], n[1], n[2]));
        }
        out.push(IdRange {
            disk: n[0],
            shown: n[1],
            len: n[2],
        });
    }
    Ok(out)
}

/// One direction-aware id table; empty means identity.
#[derive(Clone, Debug, Default)]
pub struct IdMap {
    ranges: Vec<IdRange>,
    overflow: u32,
}

impl IdMap {
    pub fn new(ranges: Vec<IdRange>, overflow: u32) -> IdMap {
        IdMap { ranges, overflow }
    }

    pub fn shown(&self, disk: u32) -> u32 {
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find(|r| disk.wrapping_sub(r.disk) < r.len)
            .map_or(self.overflow, |r| r.shown + (disk - r.disk))
    }

    pub fn disk(&self, shown: u32) -> u32 {
        if self.ranges.is_empty() {
            return shown;
        }
        self.ranges
            .iter()
            .find(|r| shown.wrapping_sub(r.shown) < r.len)
            .map_or(self.overflow, |r| r.disk + (shown - r.shown))
    }
}

/// Owner, group and mode kept in an override xattr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, plus the type when the value names one.
    pub mode: u32,
    pub rdev: Option<u64>,
}

impl OverrideStat {
    /// Parses `uid:gid:octal-mode[:type]`; the type is `file`, `dir`, `symlink`, `pipe`,
    /// `socket`, `block-MAJ-MIN` or `char-MAJ-MIN`. `None` for anything else.
    pub fn parse(v: &[u8]) -> Option<OverrideStat> {
        let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
        let mut it = s.splitn(4, ':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mut mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let mut rdev = None;
        if let Some(t) = it.next() {
            let (kind, dev) = match t {
                "file" => (libc::S_IFREG, None),
                "dir" => (libc::S_IFDIR, None),
                "symlink" => (libc::S_IFLNK, None),
                "pipe" => (libc::S_IFIFO, None),
                "socket" => (libc::S_IFSOCK, None),
                _ => {
                    let (k, rest) = if let Some(r) = t.strip_prefix("block") {
                        (libc::S_IFBLK, r)
                    } else {
                        (libc::S_IFCHR, t.strip_prefix("char")?)
                    };
                    let (ma, mi) = rest.trim_start_matches('-').split_once('-')?;
                    (k, Some(libc::makedev(ma.parse().ok()?, mi.parse().ok()?)))
                }
            };
            mode = (mode & 0o7777) | kind;
            rdev = dev;
        }
        Some(OverrideStat {
            uid,
            gid,
            mode,
            rdev,
        })
    }

    /// The value written: owner, group and permission bits; the type only where the inode
    /// cannot carry it (a device or other special file kept as a plain file).
    pub fn format(&self) -> String {
        let perm = self.mode & 0o7777;
        let kind = match self.mode & libc::S_IFMT {
            libc::S_IFIFO => Some("pipe".to_string()),
            libc::S_IFSOCK => Some("socket".to_string()),
            k @ (libc::S_IFBLK | libc::S_IFCHR) => {
                let d = self.rdev.unwrap_or(0);
                let name = if k == libc::S_IFBLK { "block" } else { "char" };
                Some(format!("{name}-{}-{}", libc::major(d), libc::minor(d)))
            }
            _ => None,
        };
        match kind {
            Some(k) => format!("{}:{}:{perm:o}:{k}", self.uid, self.gid),
            None => format!("{}:{}:{perm:o}", self.uid, self.gid),
        }
    }

    /// Puts the kept owner and mode into a stat of the real file. The type is taken from the
    /// value only for plain files and directories (what the daemon stores special files as).
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        let real = st.st_mode & libc::S_IFMT;
        let kind = self.mode & libc::S_IFMT;
        let kind = if kind != 0 && (real == libc::S_IFREG || real == libc::S_IFDIR) {
            kind
        } else {
            real
        };
        st.st_mode = kind | (self.mode & 0o7777);
        if let Some(d) = self.rdev {
            st.st_rdev = d;
        }
    }
}

/// The ownership rules of one mount.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    pub uids: IdMap,
    pub gids: IdMap,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

impl Ownership {
    pub fn shown_uid(&self, disk: u32) -> u32 {
        self.squash_uid.unwrap_or_else(|| self.uids.shown(disk))
    }

    pub fn shown_gid(&self, disk: u32) -> u32 {
        self.squash_gid.unwrap_or_else(|| self.gids.shown(disk))
    }

    pub fn disk_uid(&self, shown: u32) -> u32 {
        self.uids.disk(shown)
    }

    pub fn disk_gid(&self, shown: u32) -> u32 {
        self.gids.disk(shown)
    }

    /// Whether any id differs between disk and mount (ACL entries then need translating).
    pub fn maps_ids(&self) -> bool {
        !self.uids.ranges.is_empty() || !self.gids.ranges.is_empty()
    }

    /// Whether chown is best-effort: squashed mounts never fail it.
    pub fn squashed(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }

    /// Translates the user and group entries of a POSIX ACL xattr value, in place.
    /// `to_disk` picks the direction.
    pub fn map_acl(&self, value: &mut [u8], to_disk: bool) {
        // struct posix_acl_xattr_header { u32 version } then entries of
        // { u16 tag, u16 perm, u32 id }, little-endian.
        const ACL_USER: u16 = 0x02;
        const ACL_GROUP: u16 = 0x08;
        if value.len() < 4 {
            return;
        }
        for e in value[4..].chunks_exact_mut(8) {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let new = match (tag, to_disk) {
                (ACL_USER, true) => self.disk_uid(id),
                (ACL_USER, false) => self.uids.shown(id),
                (ACL_GROUP, true) => self.disk_gid(id),
                (ACL_GROUP, false) => self.gids.shown(id),
                _ => continue,
            };
            e[4..8].copy_from_slice(&new.to_le_bytes());
        }
    }
}

impl Overlay {
    /// The xattr owners and modes are kept in, in the upper layer (`xattr_permissions`, or
    /// an upper layer found carrying one).
    pub(super) fn upper_override(&self) -> Option<&'static str> {
        self.layers.upper.as_ref().and_then(|u| u.override_stat)
    }

    /// The owner and group `node` shows, from the disk ids of its copy that is seen. A
    /// copy on an idmapped lower already has shown ids: only squashing applies to it.
    pub(super) fn shown_ids(&self, node: &Node, uid: u32, gid: u32) -> (u32, u32) {
        let own = &self.cfg.own;
        if self.layers.any_idmapped && self.seen_on_idmapped(node) {
            (own.squash_uid.unwrap_or(uid), own.squash_gid.unwrap_or(gid))
        } else {
            (own.shown_uid(uid), own.shown_gid(gid))
        }
    }

    /// Whether the copy of `node` that is seen is in an idmapped lower layer.
    pub(super) fn seen_on_idmapped(&self, node: &Node) -> bool {
        let top = node.state.read().top();
        top.is_some_and(|l| l != super::UPPER && self.layers.get(l).idmapped)
    }

    /// `st`, a stat of the copy of `node` that is seen, with the owner and mode its layer
    /// keeps in an override xattr. Ids stay disk ids.
    pub(super) fn effective_stat(&self, node: &Node, st: &Stat) -> Stat {
        let mut st = *st;
        if !self.layers.any_override {
            return st;
        }
        let top = node.state.read().top();
        if let Some(o) = top.and_then(|top| self.read_override(node, top)) {
            o.apply(&mut st);
        }
        st
    }

    /// The override value of `node`'s copy in `layer`, if that layer keeps them.
    pub(super) fn read_override(&self, node: &Node, layer: super::LayerId) -> Option<OverrideStat> {
        let attr = self.layers.get(layer).override_stat?;
        let (dir, n) = self.xattr_target(node, layer).ok()?;
        let v = xattr::get_vec(dir.as_fd(), &n, attr).ok()?;
        OverrideStat::parse(&v)
    }

    /// The real permission bits an upper entry gets when its shown mode is `perm`. Where
    /// the mode lives in the override xattr and the daemon has no CAP_DAC_OVERRIDE, the
    /// inode always lets its owner (the daemon) read, write and search it, so that what
    /// the kernel lets a container's root do, the daemon can carry out.
    pub(super) fn real_perm(&self, perm: u32, kind: u32) -> u32 {
        if self.upper_override().is_none() || crate::sys::is_host_root() {
            return perm;
        }
        let owner = if kind == libc::S_IFDIR { 0o700 } else { 0o600 };
        (perm & 0o777) | owner
    }

    /// Records owner and mode of the upper entry `name` (of type `kind`) of `dir` in the
    /// override xattr. `false` when the entry cannot carry it — a symlink refuses `user.`
    /// xattrs — so its owner must live in the inode.
    pub(super) fn write_override(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        o: &OverrideStat,
        kind: u32,
    ) -> SysResult<bool> {
        let Some(attr) = self.upper_override() else {
            return Ok(true);
        };
        match xattr::set(dir, name, attr, o.format().as_bytes(), 0) {
            Ok(()) => Ok(true),
            Err(_) if kind == libc::S_IFLNK => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The kernel's overflow ids (shown for ids without a mapping), 65534 if unreadable.
pub fn overflow_ids() -> (u32, u32) {
    let read = |f: &str| {
        std::fs::read_to_string(f)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|&v: &u32| v != 0)
            .unwrap_or(65534)
    };
    (
        read("/proc/sys/kernel/overflowuid"),
        read("/proc/sys/kernel/overflowgid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_syntax() {
        let m = parse_mapping(":0:1000:1:1:100000:65536").unwrap();
        assert_eq!(
            m,
            vec![
                IdRange {
                    disk: 0,
                    shown: 1000,
                    len: 1
                },
                IdRange {
                    disk: 1,
                    shown: 100000,
                    len: 65536
                }
            ]
        );
        for bad in ["", "0:1", "0:1:2:3", "a:1:1", "0:1:0", "4294967295:0:2"] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn both_directions_and_overflow() {
        let m = IdMap::new(parse_mapping("0:1000:1:1:100000:10").unwrap(), 65534);
        assert_eq!(m.shown(0), 1000);
        assert_eq!(m.shown(5), 100004);
        assert_eq!(m.shown(11), 65534);
        assert_eq!(m.disk(1000), 0);
        assert_eq!(m.disk(100009), 10);
        assert_eq!(m.disk(100010), 65534);
        assert_eq!(IdMap::default().shown(7), 7);
    }

    #[test]
    fn squash_only_changes_what_is_shown() {
        let o = Ownership {
            squash_uid: Some(0),
            squash_gid: Some(0),
            ..Default::default()
        };
        assert_eq!((o.shown_uid(1234), o.shown_gid(99)), (0, 0));
        assert_eq!(o.disk_uid(1234), 1234);
        assert!(o.squashed());
    }

    #[test]
    fn override_values() {
        let o = OverrideStat::parse(b"0:0:755").unwrap();
        assert_eq!((o.uid, o.gid, o.mode, o.rdev), (0, 0, 0o755, None));
        let o = OverrideStat::parse(b"1:2:100644").unwrap();
        assert_eq!(o.mode & 0o7777, 0o644);
        let o = OverrideStat::parse(b"5:6:620:char-4-1").unwrap();
        assert_eq!(o.mode, libc::S_IFCHR | 0o620);
        assert_eq!(o.rdev, Some(libc::makedev(4, 1)));
        assert_eq!(o.format(), "5:6:620:char-4-1");
        assert_eq!(
            OverrideStat::parse(b"1:2:4755").unwrap().format(),
            "1:2:4755"
        );
        for bad in [&b"x:0:755"[..], b"0:0", b"0:0:9", b"0:0:755:weird"] {
            assert!(OverrideStat::parse(bad).is_none());
        }
        let mut st: Stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFREG | 0o755;
        OverrideStat::parse(b"7:8:640:pipe").unwrap().apply(&mut st);
        assert_eq!(
            (st.st_uid, st.st_gid, st.st_mode),
            (7, 8, libc::S_IFIFO | 0o640)
        );
    }

    #[test]
    fn acl_entries_translated() {
        let o = Ownership {
            uids: IdMap::new(parse_mapping("0:1000:10").unwrap(), 65534),
            gids: IdMap::new(parse_mapping("0:2000:10").unwrap(), 65534),
            ..Default::default()
        };
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, id) in [(0x01u16, u32::MAX), (0x02, 1003), (0x08, 2005)] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&6u16.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        o.map_acl(&mut v, true);
        assert_eq!(&v[16..20], &3u32.to_le_bytes());
        assert_eq!(&v[24..28], &5u32.to_le_bytes());
        assert_eq!(&v[8..12], &u32::MAX.to_le_bytes());
        o.map_acl(&mut v, false);
        assert_eq!(&v[16..20], &1003u32.to_le_bytes());
    }
}
