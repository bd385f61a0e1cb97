//! Layer set-up: resolving and checking the layer paths, opening each layer once as a root
//! fd, and preparing the workdir.
//!
//! Each layer is opened before the mount appears, as a private clone of its mount
//! (`open_tree(OPEN_TREE_CLONE)`, without the mounts below it) where the kernel lets us, so
//! a mount inside a layer — our own mountpoint included — is never crossed and the layer is
//! seen as its own filesystem holds it, as kernel overlayfs sees it. Without that privilege
//! a plain `O_PATH` fd is used and lookups refuse to cross mounts (`RESOLVE_NO_XDEV`).

use super::ino::InoMap;
use super::ownership::{OverrideStat, OVERRIDE_XATTRS};
use super::params::{Atime, Params, Uuid};
use super::whiteout;
use crate::sys::{self, fs, Errno};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Index of a layer: 0 is the upper layer, 1..=N the lower layers from the highest down.
pub type LayerId = u16;
pub const UPPER: LayerId = 0;

/// The kernel's limit on lower layers.
pub const MAX_LOWERS: usize = 500;

pub struct Layer {
    /// Shared with the node table, which reaches everything in the layer from it: one fd
    /// per layer, as a mount may have 500.
    pub root: Arc<OwnedFd>,
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    /// The xattr that holds owner and mode in this layer (`ownership`), if it uses one.
    pub override_stat: Option<&'static str>,
    /// The layer sits on an idmapped mount: its ids are already the ids the mount shows.
    /// containers/storage hands such lowers (`mapped/0/...`) together with `uidmapping=`.
    pub idmapped: bool,
    /// What file handles of the layer's objects need (see [`HandleFs`]), read at first use.
    pub handles: OnceLock<HandleFs>,
}

impl Layer {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The layer's filesystem as file handles of its objects need it. (Callers ask the
    /// layers of `Layers::lower_filesystems`, which `Layers::new` asked already.)
    pub fn handle_fs(&self) -> &HandleFs {
        self.handles.get_or_init(|| {
            // Neither the ioctl nor open_by_handle_at takes an O_PATH fd, which the layer's
            // root is.
            let root = fs::openat(
                self.fd(),
                OsStr::new("."),
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
            )
            .ok();
            let uuid = root
                .as_ref()
                .and_then(|d| fs::fs_uuid(d.as_fd()).ok())
                .unwrap_or([0; 16]);
            HandleFs { uuid, root }
        })
    }
}

/// A layer's filesystem, for the file handles of the kernel's origin records.
pub struct HandleFs {
    /// Its uuid, as the kernel overlay puts it in the records it writes (`s_uuid`, read
    /// with FS_IOC_GETFSUUID); all zeros where the filesystem has none or the kernel cannot
    /// say (before 6.5), which is what the kernel records for such a filesystem.
    pub uuid: [u8; 16],
    /// The layer's root opened for reading: what open_by_handle_at takes to say which
    /// filesystem a handle is for.
    pub root: Option<OwnedFd>,
}

/// An object the daemon makes in the work directory, as one made there at mount came out:
/// its owner (the daemon's ids, unless the filesystem squashes or maps them), and whether
/// it took the mode asked for unchanged (the daemon's umask is 0 and the work directory has
/// no default ACL, but a filesystem may force modes). Copy-up then skips a chown or chmod
/// that would change nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Made {
    pub uid: u32,
    pub gid: u32,
    pub exact_mode: bool,
}

pub struct Layers {
    pub upper: Option<Layer>,
    pub lowers: Vec<Layer>,
    /// `workdir/work`: where copies and whiteouts are built before renaming into place.
    pub work: Option<OwnedFd>,
    pub workdir: Option<PathBuf>,
    /// Prefix of the private xattrs this mount writes (`trusted.overlay.` or `user.overlay.`).
    pub xattr_prefix: &'static str,
    /// Whether the upper filesystem takes those xattrs at all (ramfs, some FUSE and network
    /// filesystems do not): without them no directory can be marked opaque or redirected.
    pub upper_xattrs: bool,
    /// Whether any layer keeps owners and modes in an override xattr.
    pub any_override: bool,
    /// Whether any lower layer is on an idmapped mount.
    pub any_idmapped: bool,
    /// The first lower layer on each filesystem the lower layers are on, in layer order:
    /// where a file handle of a lower object is made and opened (see `Layer::handle_fs`).
    lower_filesystems: Vec<LayerId>,
    /// How whiteouts are written; see [`whiteout::Format`].
    pub whiteout_format: whiteout::Format,
    /// What the daemon's new objects in the work directory come out as (None: unknown, as
    /// on a read-only mount).
    pub made: Option<Made>,
    /// Cleared once the work directory's filesystem refuses O_TMPFILE: copies of regular
    /// files are then built under a name and renamed into place, as other objects are.
    work_tmpfiles: AtomicBool,
    pub ino: InoMap,
    /// The upper, work and `work/work` directories as (device, inode): a lookup in a lower
    /// layer that holds them (`lowerdir=/` with the upper below it) fails with ELOOP
    /// there, as on the kernel overlay, whose trap inodes refuse them.
    traps: Vec<(u64, u64)>,
    /// The upperdir and workdir, locked for as long as the daemon lives (see `claim`).
    _claims: Vec<OwnedFd>,
}

impl Layers {
    /// Whether a lower layer's directory stat-ed as `st` is one a lookup must not enter
    /// (see `traps`).
    pub fn is_trap(&self, st: &fs::Stat) -> bool {
        self.traps.contains(&(st.st_dev, st.st_ino))
    }

    pub fn get(&self, id: LayerId) -> &Layer {
        if id == UPPER {
            self.upper
                .as_ref()
                .expect("upper layer requested on a read-only overlay")
        } else {
            &self.lowers[id as usize - 1]
        }
    }

    /// The first lower layer on each lower filesystem (see `lower_filesystems`).
    pub fn lower_filesystems(&self) -> impl Iterator<Item = &Layer> {
        self.lower_filesystems.iter().map(|&id| self.get(id))
    }

    pub fn lower_ids(&self) -> impl Iterator<Item = LayerId> {
        1..=(self.lowers.len() as LayerId)
    }

    /// Whether `id` is the lowest layer: nothing lies below it to hide, merge or redirect to.
    pub fn is_lowest(&self, id: LayerId) -> bool {
        id as usize == self.lowers.len()
    }

    pub fn work(&self) -> sys::SysResult<BorrowedFd<'_>> {
        self.work.as_ref().map(|f| f.as_fd()).ok_or(Errno::EROFS)
    }

    /// Whether copies of regular files may be built as O_TMPFILE files in the work
    /// directory (until its filesystem first refuses one).
    pub fn work_makes_tmpfiles(&self) -> bool {
        self.work_tmpfiles.load(Ordering::Relaxed)
    }

    /// Notes that the work directory's filesystem refused an O_TMPFILE file (`e`).
    pub fn work_lacks_tmpfiles(&self, e: Errno) {
        if self.work_tmpfiles.swap(false, Ordering::Relaxed) {
            log::info!("the work directory makes no O_TMPFILE files ({e:?}): copies of files are built under a name instead");
        }
    }

    /// Opens and checks every layer named by the mount options. Every problem is reported
    /// as a message naming the option and path, before anything is mounted.
    pub fn open(p: &Params) -> Result<Layers, String> {
        if p.lowerdirs.len() > MAX_LOWERS {
            return Err(format!(
                "lowerdir: {} layers given, at most {MAX_LOWERS} are supported",
                p.lowerdirs.len()
            ));
        }
        let lower_paths: Vec<PathBuf> = p
            .lowerdirs
            .iter()
            .map(|l| resolve_dir("lowerdir", l))
            .collect::<Result<_, _>>()?;
        let upper_path = p
            .upperdir
            .as_ref()
            .map(|u| resolve_dir("upperdir", u))
            .transpose()?;
        let work_path = p
            .workdir
            .as_ref()
            .map(|w| resolve_dir("workdir", w))
            .transpose()?;

        if let (Some(u), Some(w)) = (&upper_path, &work_path) {
            check_overlap(u, &lower_paths, w)?;
        }

        let idmapped_mounts = if p.uidmapping.is_empty() && p.gidmapping.is_empty() {
            Vec::new()
        } else {
            idmapped_mount_ids()
        };
        let mut lowers = Vec::with_capacity(lower_paths.len());
        for path in lower_paths {
            let mut l = open_layer("lowerdir", path)?;
            l.idmapped = !idmapped_mounts.is_empty()
                && mount_id(&l.path).is_some_and(|id| idmapped_mounts.contains(&id));
            // Our private clone of a lower layer's mount becomes read-only and noatime: the
            // lowers are never modified, by anything (a plain fd, unprivileged, stays as is).
            if let Err(e) = fs::seal_mount(l.fd()) {
                log::debug!("lowerdir {}: not sealed read-only: {e}", l.path.display());
            }
            lowers.push(l);
        }
        let mut claims = Vec::new();
        if let (Some(up), Some(wp)) = (&upper_path, &work_path) {
            claims.extend(claim("upperdir", up, true));
            claims.extend(claim("workdir", wp, true));
        }
        for l in &lowers {
            // Only checked: a lower layer may be shared by any number of mounts.
            claim("lowerdir", &l.path, false);
        }
        let mut upper = None;
        let mut work = None;
        let mut made = None;
        let mut traps = Vec::new();
        if let (Some(up), Some(wp)) = (upper_path, work_path) {
            let (mut u, w) = open_upper_and_work(up, wp, upper_atime_attrs(p))?;
            if let Some(name) = super::ownership::override_xattr_for(p.xattr_permissions) {
                mark_override_layer(&mut u, name)?;
            }
            if u.dev != w.dev {
                return Err(format!(
                    "workdir {} is on another filesystem than upperdir {}; they must share one filesystem",
                    w.path.display(),
                    u.path.display()
                ));
            }
            let vfs = fs::fstatvfs(u.fd())
                .map_err(|e| format!("upperdir {}: statfs: {e}", u.path.display()))?;
            if vfs.f_flag & libc::ST_RDONLY != 0 {
                return Err(format!(
                    "upperdir {} is on a read-only filesystem",
                    u.path.display()
                ));
            }
            let (fd, m) = prepare_work(&w, p.volatile)
                .map_err(|e| format!("workdir {}: {e}", w.path.display()))?;
            traps.extend([(u.dev, u.ino), (w.dev, w.ino)]);
            traps.extend(fs::fstat(fd.as_fd()).map(|st| (st.st_dev, st.st_ino)));
            (work, made) = (Some(fd), m);
            upper = Some(u);
        }
        // Root of a user namespace cannot write `trusted.*`: it uses the names rootless
        // kernel overlayfs (`userxattr`) reads, as does anyone who asks for them.
        let mut prefix = if sys::is_host_root() && !p.userxattr {
            "trusted.overlay."
        } else {
            "user.overlay."
        };
        let mut xattrs_ok = false;
        if let Some(w) = &work {
            (prefix, xattrs_ok) = pick_xattr_prefix(w.as_fd(), prefix);
        }
        if let Some(u) = upper.as_ref().filter(|_| xattrs_ok) {
            keep_instance_uuid(u, prefix, p.uuid);
        }
        let devs: Vec<u64> = upper.iter().chain(lowers.iter()).map(|l| l.dev).collect();
        let any_override = upper
            .iter()
            .chain(lowers.iter())
            .any(|l| l.override_stat.is_some());
        let any_idmapped = lowers.iter().any(|l| l.idmapped);
        let whiteout_format = match &work {
            Some(w) => whiteout::Format::probe(w.as_fd(), xattrs_ok),
            None => whiteout::Format::Device,
        };
        let (mut lower_filesystems, mut seen) = (Vec::new(), Vec::new());
        for (id, l) in (1..).zip(lowers.iter()) {
            if !seen.contains(&l.dev) {
                seen.push(l.dev);
                lower_filesystems.push(id);
            }
        }
        let layers = Layers {
            lower_filesystems,
            whiteout_format,
            any_override,
            any_idmapped,
            workdir: p.workdir.clone(),
            upper,
            lowers,
            work,
            xattr_prefix: prefix,
            upper_xattrs: xattrs_ok,
            made,
            work_tmpfiles: AtomicBool::new(true),
            ino: InoMap::new(devs, p.ino32),
            traps,
            _claims: claims,
        };
        // What copy-ups and lookups of copies need for the kernel's origin records, read
        // now rather than within the first such request (it read /proc and opened each
        // lower filesystem's root there: ~30 us of a single O_TRUNC on a fresh mount).
        if layers.upper.is_some() && sys::can_open_file_handles() {
            for l in layers.lower_filesystems() {
                l.handle_fs();
            }
        }
        Ok(layers)
    }
}

/// How long a mount waits for a layer another daemon holds before warning (`claim`).
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Marks `path` as in use by this mount (an exclusive flock, held by the returned fd), or
/// with `exclusive` false only checks that no mount holds it. Another mount whose upper
/// or workdir it already is gets a warning, as from the kernel overlay (which refuses the
/// mount only with `index=on`, a feature ovlfuse does not have): two overlays writing
/// one upper each see the other's changes, or not, in no defined way.
fn claim(opt: &str, path: &Path, exclusive: bool) -> Option<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let fd = fs::open_path(&c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC).ok()?;
    // umount(8) returns before the daemon of the mount it ends has exited and let go, so
    // a mount right after an unmount (xfstests' scratch cycles) may find the lock still
    // held for some milliseconds: wait for it a while before calling it in use.
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    let mut held = fs::try_flock(fd.as_fd(), exclusive);
    while held == Ok(false) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
        held = fs::try_flock(fd.as_fd(), exclusive);
    }
    match held {
        Ok(true) => Some(fd),
        Ok(false) => {
            log::warn!(
                "{opt} {} is in use as upperdir or workdir of another ovlfuse mount: \
                 accessing files from both mounts will give undefined results",
                path.display()
            );
            None
        }
        Err(e) => {
            log::debug!("{opt} {}: cannot flock: {e}", path.display());
            None
        }
    }
}

/// Resolves a layer path once: relative paths against the cwd, symlinks followed (container
/// engines pass short links such as `l/ABCD -> ../ID/diff`). Must be a directory.
fn resolve_dir(opt: &str, p: &Path) -> Result<PathBuf, String> {
    let canon =
        std::fs::canonicalize(p).map_err(|e| format!("{opt}: {}: {}", p.display(), plain(&e)))?;
    let md =
        std::fs::metadata(&canon).map_err(|e| format!("{opt}: {}: {}", p.display(), plain(&e)))?;
    if !md.is_dir() {
        return Err(format!("{opt}: {} is not a directory", p.display()));
    }
    Ok(canon)
}

fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn is_within(inner: &Path, outer: &Path) -> bool {
    inner.starts_with(outer)
}

/// Refuses layer sets where the upper and work directories overlap each other, or one of
/// them is, or holds, a lower layer, as the kernel overlay refuses them.
fn check_overlap(upper: &Path, lowers: &[PathBuf], work: &Path) -> Result<(), String> {
    if upper == work {
        return Err(format!(
            "upperdir and workdir are the same directory {}",
            upper.display()
        ));
    }
    if is_within(work, upper) {
        return Err(format!(
            "workdir {} is inside upperdir {}; they must be separate",
            work.display(),
            upper.display()
        ));
    }
    if is_within(upper, work) {
        return Err(format!(
            "upperdir {} is inside workdir {}; they must be separate",
            upper.display(),
            work.display()
        ));
    }
    // An upper or work directory inside a lower layer is allowed, as on the kernel
    // overlay (`lowerdir=/` with the upper somewhere below it): the lower's clone shows
    // those directories as they are, and nothing is ever written through a lower.
    for l in lowers {
        for (name, p) in [("upperdir", upper), ("workdir", work)] {
            if l == p {
                return Err(format!(
                    "lowerdir {} is also the {name}; layers must not overlap",
                    l.display()
                ));
            }
            if is_within(l, p) {
                return Err(format!(
                    "lowerdir {} is inside {name} {}; layers must not overlap",
                    l.display(),
                    p.display()
                ));
            }
        }
    }
    Ok(())
}

/// Opens upper and work through one private clone of the mount holding both (at their
/// common ancestor): a rename from work into upper must not cross mounts.
/// The atime mode our clone of the upper mount gets: the one this mount was given, so that
/// what we read from the upper layer moves atimes as the mount's options say (the kernel's
/// FUSE client leaves atime to us). A read-only mount moves none.
fn upper_atime_attrs(p: &Params) -> u64 {
    let mode = match p.effective_atime() {
        Atime::Never => fs::MOUNT_ATTR_NOATIME,
        Atime::Strict => fs::MOUNT_ATTR_STRICTATIME,
        Atime::Relative => fs::MOUNT_ATTR_RELATIME,
    };
    if p.nodiratime {
        mode | fs::MOUNT_ATTR_NODIRATIME
    } else {
        mode
    }
}

fn open_upper_and_work(
    up: PathBuf,
    wp: PathBuf,
    atime_attrs: u64,
) -> Result<(Layer, Layer), String> {
    let plain_u = open_layer("upperdir", up.clone())?;
    let plain_w = open_layer("workdir", wp.clone())?;
    let (mu, mw) = (mount_id(&up), mount_id(&wp));
    if mu.is_some() && mu != mw {
        return Err(format!(
            "workdir {} and upperdir {} are on different mounts; they must be on the same mount",
            wp.display(),
            up.display()
        ));
    }
    let common: PathBuf = up
        .components()
        .zip(wp.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let Ok(c) = CString::new(common.as_os_str().as_bytes()) else {
        return Ok((plain_u, plain_w));
    };
    let Ok(base) = fs::open_tree_clone(&c) else {
        return Ok((plain_u, plain_w));
    };
    if let Err(e) = fs::set_mount_attrs(base.as_fd(), atime_attrs) {
        log::debug!("upperdir: atime mode not set on our clone: {e}");
    }
    let sub = |p: &Path| -> Option<Layer> {
        let rel = p.strip_prefix(&common).ok()?;
        let fd = fs::open_beneath(
            base.as_fd(),
            rel.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .ok()?;
        let st = fs::fstat(fd.as_fd()).ok()?;
        Some(Layer {
            override_stat: None,
            idmapped: false,
            root: Arc::new(fd),
            path: p.to_path_buf(),
            dev: st.st_dev,
            ino: st.st_ino,
            handles: OnceLock::new(),
        })
    };
    match (sub(&up), sub(&wp)) {
        (Some(mut u), Some(w)) if u.ino == plain_u.ino && w.ino == plain_w.ino => {
            u.override_stat = plain_u.override_stat;
            Ok((u, w))
        }
        _ => Ok((plain_u, plain_w)),
    }
}

/// Ids of the mounts that are idmapped, from /proc/self/mountinfo (the kernel lists
/// `idmapped` among the mount's own options).
fn idmapped_mount_ids() -> Vec<u64> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let idmapped = f.get(5)?.split(',').any(|o| o == "idmapped");
            idmapped.then(|| f[0].parse().ok()).flatten()
        })
        .collect()
}

/// The mount id of a path (statx STATX_MNT_ID), where the kernel tells it.
fn mount_id(p: &Path) -> Option<u64> {
    let c = CString::new(p.as_os_str().as_bytes()).ok()?;
    fs::statx_mnt_id(&c)
}

fn open_layer(opt: &str, path: PathBuf) -> Result<Layer, String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{opt}: bad path"))?;
    // A private clone of the layer's mount, without submounts; fall back to a plain fd
    // where cloning mounts is not permitted (unprivileged users).
    let root = match fs::open_tree_clone(&c) {
        Ok(fd) => fd,
        Err(_) => fs::open_path(&c, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| format!("{opt}: {}: {e}", path.display()))?,
    };
    let st = fs::fstat(root.as_fd()).map_err(|e| format!("{opt}: {}: {e}", path.display()))?;
    if !fs::is_dir(&st) {
        return Err(format!("{opt}: {} is not a directory", path.display()));
    }
    let override_stat = OVERRIDE_XATTRS
        .into_iter()
        .find(|a| sys::xattr::get_on_dir(root.as_fd(), a).is_ok());
    Ok(Layer {
        override_stat,
        idmapped: false,
        root: Arc::new(root),
        path,
        dev: st.st_dev,
        ino: st.st_ino,
        handles: OnceLock::new(),
    })
}

/// Makes the upper layer keep owners and modes in the xattr `name` (`xattr_permissions`).
/// The root carries the xattr too, so later mounts — ours or fuse-overlayfs's — read the
/// layer the same way; it records the root's own owner and mode, so nothing shown changes.
fn mark_override_layer(u: &mut Layer, name: &'static str) -> Result<(), String> {
    if sys::xattr::get_on_dir(u.fd(), name).is_err() {
        let st = fs::fstat(u.fd()).map_err(|e| format!("upperdir: {e}"))?;
        let value = OverrideStat {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            rdev: None,
        }
        .format();
        sys::xattr::set_on_dir(u.fd(), name, value.as_bytes()).map_err(|e| {
            format!(
                "xattr_permissions: upperdir {} does not take the xattr {name}: {e}",
                u.path.display()
            )
        })?;
    }
    u.override_stat = Some(name);
    Ok(())
}

/// Checks that the upper filesystem takes the private xattrs (opaque directories need them);
/// falls back from `trusted.` to `user.` (nested overlays refuse `trusted.overlay.*`).
/// Returns the prefix, and whether the upper takes it at all.
fn pick_xattr_prefix(work: BorrowedFd<'_>, preferred: &'static str) -> (&'static str, bool) {
    for prefix in [preferred, "user.overlay."] {
        let name = format!("{prefix}ovlfuse.probe");
        if sys::xattr::set_on_dir(work, &name, b"1").is_ok() {
            let _ = sys::xattr::remove_on_dir(work, &name);
            if prefix != preferred {
                log::warn!("upper filesystem refuses {preferred}* xattrs; writing opaque markers as {prefix}*");
            }
            return (prefix, true);
        }
    }
    log::warn!("upper filesystem supports no overlay xattrs: opaque directories are marked with OCI .wh..wh..opq files (which kernel overlayfs does not read), and renaming a directory with lower parts fails with EXDEV (redirect_dir=off)");
    (preferred, false)
}

/// The kernel overlay's instance uuid, on the upper layer's root.
const UUID_XATTR: &str = "uuid";

/// Writes the persistent instance uuid that the kernel overlay's first mount of a new
/// upper writes (`ovl_init_uuid_xattr`): with `uuid=auto` only where the root is not yet
/// marked impure, since an older upper without one is mounted `uuid=null`. ovlfuse itself
/// has no use for it; it is written so that the kernel finds an upper in the same state
/// whichever of the two mounted it first. Where it cannot be read or written the kernel
/// falls back to `uuid=null`, and so, in effect, does this.
fn keep_instance_uuid(upper: &Layer, prefix: &str, mode: Uuid) {
    if mode == Uuid::Null {
        return;
    }
    let name = format!("{prefix}{UUID_XATTR}");
    match sys::xattr::get_on_dir(upper.fd(), &name) {
        Err(Errno::ENODATA) => {}
        Ok(_) => return,
        Err(e) => {
            log::info!("upperdir {}: cannot read {name}: {e}", upper.path.display());
            return;
        }
    }
    let impure = format!("{prefix}{}", super::namei::IMPURE_XATTR);
    if mode == Uuid::Auto && sys::xattr::get_on_dir(upper.fd(), &impure).is_ok() {
        return;
    }
    let Some(uuid) = random_uuid() else {
        log::info!("no random bytes for the overlay's uuid: none stored");
        return;
    };
    if let Err(e) = sys::xattr::set_on_dir(upper.fd(), &name, &uuid) {
        log::info!(
            "upperdir {}: cannot store {name}: {e}",
            upper.path.display()
        );
    }
}

/// A random (version 4) uuid, as the kernel's `uuid_gen` makes one.
fn random_uuid() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return None;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Some(b)
}

/// Creates `workdir/work` and empties it: anything left there is a copy-up or whiteout
/// that a crash interrupted before its final rename, so it was never visible. A mount
/// marked as incompatible (`incompat`) fails; a `volatile` one leaves that mark.
fn prepare_work(w: &Layer, volatile: bool) -> Result<(OwnedFd, Option<Made>), String> {
    let name = OsStr::new("work");
    let mkdir = || fs::mkdirat(w.fd(), name, 0o700);
    match mkdir() {
        Ok(()) => {}
        // Something else by that name (a file, a symlink, which is never followed) is
        // replaced, as the kernel overlay replaces it.
        Err(Errno::EEXIST) => {
            let st = fs::fstatat(w.fd(), name)
                .map_err(|e| format!("cannot look at the work directory: {e}"))?;
            if !fs::is_dir(&st) {
                log::info!(
                    "workdir {}: replacing the work entry, which is no directory",
                    w.path.display()
                );
                fs::unlinkat(w.fd(), name, false)
                    .map_err(|e| format!("cannot remove work, which is no directory: {e}"))?;
                mkdir().map_err(|e| format!("cannot create work directory: {e}"))?;
            }
        }
        Err(e) => return Err(format!("cannot create work directory: {e}")),
    }
    let fd = fs::openat(w.fd(), name, libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|e| format!("cannot open work directory: {e}"))?;
    check_incompat(fd.as_fd())?;
    // Copies are built in here: a default ACL inherited from the workdir would give each of
    // them entries and mode bits its lower original lacks (a world-writable directory from
    // `default:other::rwx`). The kernel strips both ACLs from its work directory too.
    for acl in ["system.posix_acl_default", "system.posix_acl_access"] {
        match sys::xattr::remove_on_dir(fd.as_fd(), acl) {
            Ok(()) | Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(format!("cannot remove {acl} from the work directory: {e}")),
        }
    }
    // No mode bits either, as the kernel leaves it: nothing but the daemon has business
    // there. A daemon that needs them to create anything (a plain user's) keeps 0700.
    let mode = |m: u32| {
        fs::chmod_fd(fd.as_fd(), m)
            .map_err(|e| format!("cannot set the work directory's mode: {e}"))
    };
    mode(0)?;
    let made = match probe_made(fd.as_fd()) {
        Ok(m) => m,
        Err(_) => {
            mode(0o700)?;
            probe_made(fd.as_fd()).ok().flatten()
        }
    };
    for ent in
        fs::read_dir_all(fd.as_fd()).map_err(|e| format!("cannot read work directory: {e}"))?
    {
        remove_tree(fd.as_fd(), &ent.name)
            .map_err(|e| format!("cannot clean {:?} from the work directory: {e}", ent.name))?;
    }
    if volatile {
        mark_volatile(fd.as_fd())
            .map_err(|e| format!("cannot mark the work directory volatile: {e}"))?;
    }
    Ok((fd, made))
}

/// Where a mount marks the work directory with what a mount that does not know it must not
/// go on from: kernel overlayfs's `work/incompat/FEATURE`, a non-empty directory.
const INCOMPAT: &str = "incompat";

/// Fails if the work directory carries an incompatibility mark, as kernel overlayfs does.
/// The one there is: `volatile`, left by a mount that never synced, whose upper may be
/// incomplete if the system crashed since. Nobody can tell that afterwards, so every later
/// mount is refused until the mark is removed by someone who knows (container engines
/// remove it before each mount of a container they made volatile). Emptying the work
/// directory must not take it away.
fn check_incompat(work: BorrowedFd<'_>) -> Result<(), String> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let marks = match fs::openat(work, OsStr::new(INCOMPAT), flags, 0) {
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
        opened => opened,
    }
    .and_then(|d| fs::read_dir_all(d.as_fd()))
    .map_err(|e| format!("cannot read work/{INCOMPAT}: {e}"))?;
    match marks.first() {
        None => Ok(()),
        Some(m) => {
            let feature = m.name.to_string_lossy();
            Err(format!(
                "work/{INCOMPAT}/{feature} is there: the upper layer was last mounted with \
                 \"{feature}\" (by ovlfuse or kernel overlayfs), so it may be incomplete if the \
                 system crashed since, and kernel overlayfs refuses it too; if it did not crash, \
                 remove that directory and mount again"
            ))
        }
    }
}

/// Leaves kernel overlayfs's mark of a volatile mount, `work/incompat/volatile/dirty`, so
/// that a later mount, by the kernel or by us, knows (see `check_incompat`).
fn mark_volatile(work: BorrowedFd<'_>) -> sys::SysResult<()> {
    let subdir = |at: BorrowedFd<'_>, name: &str| {
        let name = OsStr::new(name);
        match fs::mkdirat(at, name, 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        fs::openat(
            at,
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    };
    let incompat = subdir(work, INCOMPAT)?;
    let volatile = subdir(incompat.as_fd(), "volatile")?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW;
    fs::openat(volatile.as_fd(), OsStr::new("dirty"), flags, 0o600).map(drop)
}

/// Makes a directory in the work directory `work` to see what the daemon's objects come
/// out as there (see [`Made`]); fails if the daemon cannot make one.
fn probe_made(work: BorrowedFd<'_>) -> sys::SysResult<Option<Made>> {
    let probe = OsStr::new("#ovlfuse.probe");
    // One a crash left would say EEXIST.
    let _ = fs::unlinkat(work, probe, true);
    fs::mkdirat(work, probe, 0o777)?;
    let made = fs::fstatat(work, probe).ok().map(|st| Made {
        uid: st.st_uid,
        gid: st.st_gid,
        exact_mode: st.st_mode & 0o7777 == 0o777,
    });
    let _ = fs::unlinkat(work, probe, true);
    Ok(made)
}

/// How many levels of a tree `remove_tree` keeps open at once.
const REMOVE_LEVELS: usize = 64;

/// Removes `name` inside `dir`, with everything under it if it is a directory. Only ever
/// used on our own work directory and on upper directories that hold nothing but
/// whiteouts.
///
/// Depth first with one open directory per level, in a loop rather than by recursion: a
/// leftover tree may be deeper than the stack allows. Below `REMOVE_LEVELS` levels a
/// subtree is moved up beside `name` and removed after it, so that a tree of any depth
/// needs only so many descriptors. That happens only in the work directory: a directory
/// of whiteouts has one level.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> sys::SysResult<()> {
    let mut pending = vec![name.to_owned()];
    while let Some(next) = pending.pop() {
        remove_levels(dir, &next, &mut pending)?;
    }
    Ok(())
}

/// `remove_tree` of `name`, down to `REMOVE_LEVELS`; the names of the subtrees it moved up
/// into `dir` go to `moved`. Each level reads its directory a getdents batch at a time and
/// removes what it read before it reads on: a directory of a million whiteouts costs a
/// batch of names in memory, not a list of them all.
fn remove_levels(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    moved: &mut Vec<OsString>,
) -> sys::SysResult<()> {
    if remove_entry(dir, name)? {
        return Ok(());
    }
    /// A directory being emptied: its name in the level above, the entries of the batch
    /// read last that are left, whether there is more to read, and how many times it was
    /// read through (entries that appeared meanwhile, or that a read missed while others
    /// went, leave it not empty at the end of one).
    struct Level {
        fd: OwnedFd,
        name: OsString,
        left: Vec<fs::RawDirent>,
        more: bool,
        passes: u32,
    }
    let open = |at: BorrowedFd<'_>, name: &OsStr, passes: u32| -> sys::SysResult<Level> {
        Ok(Level {
            fd: fs::openat_noatime(at, name, libc::O_RDONLY | libc::O_DIRECTORY)?,
            name: name.to_owned(),
            left: Vec::new(),
            more: true,
            passes,
        })
    };
    let mut levels = vec![open(dir, name, 1)?];
    loop {
        let depth = levels.len();
        let Some(top) = levels.last_mut() else { break };
        if top.left.is_empty() && top.more {
            top.more = fs::read_dir_batch(top.fd.as_fd(), &mut top.left)?;
            continue;
        }
        if let Some(ent) = top.left.pop() {
            if remove_entry(top.fd.as_fd(), &ent.name)? {
                continue;
            }
            if depth < REMOVE_LEVELS {
                let below = open(top.fd.as_fd(), &ent.name, 1)?;
                levels.push(below);
            } else {
                let up = super::copy_up::temp_name();
                fs::renameat2(top.fd.as_fd(), &ent.name, dir, &up, fs::RENAME_NOREPLACE)?;
                moved.push(up);
            }
            continue;
        }
        let Some(emptied) = levels.pop() else { break };
        let above = levels.last().map_or(dir, |l| l.fd.as_fd());
        match fs::unlinkat(above, &emptied.name, true) {
            Err(Errno::ENOTEMPTY) if emptied.passes < REMOVE_PASSES => {
                let again = open(above, &emptied.name, emptied.passes + 1)?;
                levels.push(again);
            }
            other => other?,
        }
    }
    Ok(())
}

/// How many times `remove_levels` reads a directory through before it gives up on
/// emptying it.
const REMOVE_PASSES: u32 = 4;

/// Removes `name` unless it is a directory with entries; whether it did.
fn remove_entry(dir: BorrowedFd<'_>, name: &OsStr) -> sys::SysResult<bool> {
    // Nearly everything removed here is a whiteout: unlink first, which Linux refuses to a
    // directory with EISDIR, rather than a stat of each entry. An entry already gone counts
    // as removed: a daemon that has just ended its session may still be clearing its
    // leftovers while the next mount clears the work directory (see `reaper`).
    match fs::unlinkat(dir, name, false) {
        Err(Errno::EISDIR) => {}
        Err(Errno::ENOENT) => return Ok(true),
        other => return other.map(|()| true),
    }
    match fs::unlinkat(dir, name, true) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(e) if e == Errno::ENOTEMPTY || e == Errno(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}
