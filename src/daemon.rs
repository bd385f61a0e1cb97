//! Mounting and running: turns a parsed command line into a live mount, in the foreground
//! or as a background daemon.
//!
//! In daemon mode the command returns only once the mount is live (exit 0), or with the
//! reason it failed (non-zero): container engines rely on exactly that. The daemon runs
//! until its mount goes away (`fusermount3 -u`, `umount`, lazy umount) or it gets
//! SIGTERM/SIGINT/SIGHUP, on which it unmounts itself.

use crate::cli::Cli;
use crate::fuse::OvlFs;
use crate::fuse_uring::{UringConfig, UringMode};
use crate::ovl::ownership::{self, IdMap, Ownership};
use crate::ovl::params::{escape_path, parse_options, Params, LOWERDIR_REQUIRED};
use crate::ovl::{statahead, Config, Layers, Overlay};
use crate::sys::{self, process};
use fuser::{MountOption, Session, SessionACL};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

/// How long the kernel may cache entries and attributes. Every change goes through us, the
/// lower layers must not change under a mount, and the few attribute changes the kernel
/// cannot see (copy-up makes a directory merged, a lower hard link's copy has nlink 1) are
/// pushed to it with an invalidation; so this may be long.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The layer options a SOURCE directory stands for when the options name no `lowerdir`:
/// `SOURCE/lower`, and `SOURCE/upper` with `SOURCE/work` when both exist. This lets a mount
/// be named by its layer set alone (`mount -t fuse.ovlfuse /srv/app /merged`, or an fstab
/// line without layer options).
fn layers_of_source(source: Option<&str>) -> Option<String> {
    let src = std::path::Path::new(source?);
    if !src.is_absolute() || !src.join("lower").is_dir() {
        return None;
    }
    let mut opts = format!("lowerdir={}", escape_path(&src.join("lower")));
    if src.join("upper").is_dir() && src.join("work").is_dir() {
        opts += &format!(
            ",upperdir={},workdir={}",
            escape_path(&src.join("upper")),
            escape_path(&src.join("work"))
        );
    }
    Some(opts)
}

pub fn run(cli: Cli) -> Result<(), String> {
    let params = match parse_options(&cli.options) {
        Ok(p) => p,
        Err(e) => match layers_of_source(cli.source.as_deref()) {
            Some(layers) if e == LOWERDIR_REQUIRED => {
                let mut opts = cli.options.clone();
                opts.push(layers);
                parse_options(&opts)?
            }
            _ => return Err(e),
        },
    };
    if params.remount {
        return remount(&cli.mountpoint, &params);
    }
    let debug = cli.debug || params.debug;
    crate::logging::init(debug);
    let foreground = cli.foreground || debug;

    // Modes of new files are exactly what the caller asked for (the kernel has already
    // applied the caller's umask).
    sys::set_umask(0);
    sys::heap::one_malloc_arena();
    let fds = sys::process::raise_fd_limit();
    log::debug!("open file limit: {fds}");

    let md = std::fs::metadata(&cli.mountpoint).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENOTCONN) {
            // What a killed FUSE daemon leaves: the kernel keeps the mount until unmounted.
            "; the daemon of a FUSE mount there has died: unmount it first \
             (`umount MOUNTPOINT`, or `fusermount3 -u MOUNTPOINT` as its owner)"
        } else {
            ""
        };
        format!("mountpoint {}: {e}{hint}", cli.mountpoint.display())
    })?;
    if !md.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            cli.mountpoint.display()
        ));
    }
    check_allow_other(&params)?;
    let layers = Layers::open(&params)?;
    // Rootless kernel overlayfs (userxattr) has no redirects; written in its format, the
    // upper must not need them unless asked. An upper that takes no xattrs cannot hold a
    // redirect at all: the kernel overlay then falls back to redirect_dir=nofollow.
    let redirect_dir = params.redirect_dir
        && layers.upper_xattrs
        && (params.redirect_dir_given || layers.xattr_prefix == "trusted.overlay.");
    let ovl = Overlay::new(
        layers,
        Config {
            fsync: params.fsync,
            redirect_dir,
            atime: params.effective_atime(),
            own: ownership_of(&params),
            static_nlink: params.static_nlink,
            noacl: params.noacl,
            noxattrs: params.noxattrs,
            statahead: statahead_mode(&params),
            listattrs: params.listattrs,
            read_only: params.read_only,
            btime: params.btime,
        },
    )
    .map_err(|e| format!("cannot set up the overlay: {e}"))?;
    let config = fuse_config(&params, cli.source.as_deref());
    let uring = UringConfig {
        mode: match params.uring {
            // io_uring needs a thread per CPU queue; threaded=0 promises one thread.
            _ if params.single_threaded => {
                if params.uring == Some(true) {
                    log::warn!("uring=on ignored: threaded=0 serves /dev/fuse on one thread");
                }
                UringMode::Off
            }
            Some(true) => UringMode::On,
            Some(false) => UringMode::Off,
            None => UringMode::Auto,
        },
        priority: params.uring_priority,
    };
    let (fs, link) = OvlFs::new(
        ovl,
        params.timeout.unwrap_or(DEFAULT_TTL),
        debug,
        uring,
        crate::passthrough::DataPath {
            passthrough: params.passthrough,
            writeback: params.writeback,
        },
        config.acl,
        crate::devfuse_cpu::Follow::new(params.follow_caller, params.uring_priority),
    );
    log::debug!("mount options: {:?}", config.mount_options);

    if foreground {
        return serve(fs, link, &cli.mountpoint, &config, None);
    }
    let (r, w) = process::pipe().map_err(|e| format!("pipe: {e}"))?;
    match process::fork().map_err(|e| format!("fork: {e}"))? {
        process::Forked::Parent => {
            drop(w);
            let mut status = Vec::new();
            let _ = std::fs::File::from(r).read_to_end(&mut status);
            match status.split_first() {
                Some((0, _)) => Ok(()),
                Some((_, msg)) => Err(String::from_utf8_lossy(msg).into_owned()),
                None => Err("the daemon exited before the mount was ready".to_string()),
            }
        }
        process::Forked::Child => {
            drop(r);
            process::setsid();
            let res = serve(
                fs,
                link,
                &cli.mountpoint,
                &config,
                Some(std::fs::File::from(w)),
            );
            if let Err(msg) = &res {
                log::error!("{msg}");
            }
            res
        }
    }
}

/// Mounts, reports readiness on `ready` (daemon mode), and serves requests until the mount
/// goes away.
fn serve(
    fs: OvlFs,
    link: crate::fuse::SessionLink,
    mnt: &Path,
    config: &fuser::Config,
    mut ready: Option<std::fs::File>,
) -> Result<(), String> {
    process::block_term_signals();
    let mut session = match Session::new(fs, mnt, config) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "cannot mount on {}: {}",
                mnt.display(),
                e.to_string().trim()
            );
            if let Some(w) = ready.as_mut() {
                let mut m = vec![1u8];
                m.extend_from_slice(msg.as_bytes());
                let _ = w.write_all(&m);
                // The waiting parent prints it, once.
                std::process::exit(1);
            }
            return Err(msg);
        }
    };
    // A second descriptor of the session's device, for backing-file registrations and
    // the io_uring transport. Without it (no descriptors left) the ring threads, which
    // INIT may have told the kernel to wait for, could not start: fail the mount instead.
    let device = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate the /dev/fuse descriptor: {e}"))?;
    link.attach(session.notifier(), device);
    process::raise_readahead(mnt, crate::fuse::readahead() >> 10);
    if let Some(mut w) = ready.take() {
        let _ = w.write_all(&[0]);
        drop(w);
        crate::logging::to_syslog();
        process::stdio_to_null();
        let _ = std::env::set_current_dir("/");
    }
    let mut unmounter = session.unmount_callable();
    let mnt_owned = mnt.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = process::wait_term_signal();
            // Already unmounted: unmounting by path now could hit a newer mount there (see
            // `OvlFs::destroy`).
            if process::fuse_connection_gone() {
                std::process::exit(0);
            }
            log::info!("signal {sig}: unmounting {}", mnt_owned.display());
            if unmounter.unmount().is_err() {
                let _ = process::umount_detach(&mnt_owned);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    let served = link.serve(session.as_fd(), config.n_threads.unwrap_or(1));
    // fuser's `destroy` first (which leaves at once if the kernel ended the connection),
    // then its unmount.
    drop(session);
    served.map_err(|e| format!("session ended with an error: {e}"))
}

/// A plain user's mount goes through fusermount3, which grants `allow_other` only where
/// /etc/fuse.conf says `user_allow_other`; say so before anything is set up.
fn check_allow_other(p: &Params) -> Result<(), String> {
    if !(p.allow_other || p.allow_root) || sys::geteuid() == 0 {
        return Ok(());
    }
    let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let allowed = conf
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other");
    if allowed {
        return Ok(());
    }
    let opt = if p.allow_other {
        "allow_other"
    } else {
        "allow_root"
    };
    Err(format!(
        "{opt}: a plain user may only give other users access when /etc/fuse.conf contains \
         the line user_allow_other (root can add it); without {opt} the mount is yours alone"
    ))
}

/// `statahead=` as asked, except that `threaded=0` promises a single thread.
fn statahead_mode(p: &Params) -> statahead::Mode {
    match p.statahead {
        _ if p.single_threaded => {
            if p.statahead == Some(statahead::Mode::Always) {
                log::warn!("statahead=on ignored: threaded=0 serves requests on one thread");
            }
            statahead::Mode::Off
        }
        m => m.unwrap_or_default(),
    }
}

/// The ownership rules from fuse-overlayfs's options. `squash_to_root` squashes both ids
/// to 0; an explicit `squash_to_uid=`/`squash_to_gid=` wins for its own id.
fn ownership_of(p: &Params) -> Ownership {
    let (ouid, ogid) = ownership::overflow_ids();
    let root = p.squash_to_root.then_some(0);
    Ownership {
        uids: IdMap::new(p.uidmapping.clone(), ouid),
        gids: IdMap::new(p.gidmapping.clone(), ogid),
        squash_uid: p.squash_to_uid.or(root),
        squash_gid: p.squash_to_gid.or(root),
    }
}

/// `mount -o remount,...` of a live mount: the kernel changes the mount's flags; the daemon
/// serving it goes on unchanged.
fn remount(mnt: &Path, p: &Params) -> Result<(), String> {
    let mut flags: libc::c_ulong = 0;
    if p.read_only {
        flags |= libc::MS_RDONLY;
    }
    let root = sys::geteuid() == 0;
    let (mut nodev, mut nosuid) = (!root, !root);
    for f in &p.kernel_flags {
        match f.as_str() {
            "nodev" => nodev = true,
            "dev" => nodev = false,
            "nosuid" => nosuid = true,
            "suid" => nosuid = false,
            "noexec" => flags |= libc::MS_NOEXEC,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            "noatime" => flags |= libc::MS_NOATIME,
            _ => {}
        }
    }
    if nodev {
        flags |= libc::MS_NODEV;
    }
    if nosuid {
        flags |= libc::MS_NOSUID;
    }
    process::remount(mnt, flags).map_err(|e| format!("cannot remount {}: {e}", mnt.display()))?;
    if flags & libc::MS_RDONLY != 0 {
        // The kernel overlay writes its upper filesystem back when remounted read-only
        // (and fails the remount if that fails); our daemon does not see the remount.
        match process::dir_ioctl(mnt, crate::ovl::SYNC_UPPER_IOCTL) {
            Ok(()) => {}
            // A daemon started from an older ovlfuse does not know the request; the
            // remount itself is done.
            Err(sys::Errno(libc::ENOTTY)) => eprintln!(
                "ovlfuse: warning: the daemon serving {} is older than this ovlfuse and did \
                 not write its upper layer back on the remount",
                mnt.display()
            ),
            Err(e) => {
                return Err(format!(
                    "remounted {} read-only, but writing its upper layer back failed: {e}",
                    mnt.display()
                ))
            }
        }
    }
    if flags & libc::MS_RDONLY == 0 && process::serves_read_only(mnt) {
        // A view with no upper layer stays read-only whatever its mount flags say; the
        // kernel refuses such a remount too ("is write-protected").
        let _ = process::remount(mnt, flags | libc::MS_RDONLY);
        return Err(format!(
            "cannot remount {} read-write: it has no upper layer",
            mnt.display()
        ));
    }
    Ok(())
}

/// The FUSE mount configuration from the overlay's mount options.
pub fn fuse_config(p: &Params, source: Option<&str>) -> fuser::Config {
    let root = sys::geteuid() == 0;
    let mut opts = vec![MountOption::DefaultPermissions];
    // Kernel overlayfs mounted by root honours device files and set-id bits, and so does
    // mount(8) for root; unprivileged mounts get nodev,nosuid (fusermount3 insists anyway).
    if root {
        opts.push(MountOption::Dev);
        opts.push(MountOption::Suid);
    }
    let fsname = p
        .fsname
        .clone()
        .or_else(|| source.map(str::to_string))
        .unwrap_or_else(|| "ovlfuse".to_string());
    opts.push(MountOption::FSName(fsname));
    if let Some(st) = &p.subtype {
        // As a kernel option: fuser's own mount(2), which root's mounts take, passes its
        // Subtype option nowhere, so the mount table said `fuse`. The kernel's FUSE takes
        // `subtype=` in the mount data (the type then shows as `fuse.NAME`), and
        // fusermount3 takes it in its options.
        opts.push(MountOption::CUSTOM(format!("subtype={st}")));
    }
    if p.read_only || !p.has_upper() {
        opts.push(MountOption::RO);
    }
    if let Some(n) = crate::fuse::max_read() {
        opts.push(MountOption::CUSTOM(format!("max_read={n}")));
    }
    for f in &p.kernel_flags {
        let o = match f.as_str() {
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            _ => continue,
        };
        // Later flags win, as with mount(8): drop an earlier opposite.
        opts.retain(|x| !opposite(x, &o));
        if !opts.contains(&o) {
            opts.push(o);
        }
    }
    let acl = if p.allow_other || root {
        SessionACL::All
    } else if p.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16);
    let mut c = fuser::Config::default();
    c.mount_options = opts;
    c.acl = acl;
    // Our /dev/fuse threads (`serve`), each with its own clone of the descriptor.
    c.n_threads = Some(if p.single_threaded { 1 } else { threads });
    c
}

fn opposite(a: &MountOption, b: &MountOption) -> bool {
    use MountOption::*;
    matches!(
        (a, b),
        (Dev, NoDev)
            | (NoDev, Dev)
            | (Suid, NoSuid)
            | (NoSuid, Suid)
            | (Exec, NoExec)
            | (NoExec, Exec)
            | (Sync, Async)
            | (Async, Sync)
            | (Atime, NoAtime)
            | (NoAtime, Atime)
    )
}
