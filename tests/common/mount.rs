//! Stacks of layers, and mounting ovlfuse and the kernel overlay on them (`MountGuard`
//! unmounts on drop).

use super::*;

/// Escapes `\`, `:` and `,` in a layer path for an option value.
pub fn escape_layer(p: &Path) -> String {
    let s = p
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 layer path {p:?}"));
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The directories of one overlay: lower0 (highest) .. lowerN-1, upper, work, mnt.
#[derive(Debug, Clone)]
pub struct Stack {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

impl Stack {
    pub fn new(s: &Scratch, n_lowers: usize) -> Stack {
        Stack::new_at(&s.root, n_lowers)
    }

    /// Same as [`Stack::new`] but below any directory.
    pub fn new_at(dir: &Path, n_lowers: usize) -> Stack {
        let mk = |name: &str| {
            let p = dir.join(name);
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {}", describe_err(&e)));
            p
        };
        Stack {
            lowers: (0..n_lowers).map(|i| mk(&format!("lower{i}"))).collect(),
            upper: mk("upper"),
            work: mk("work"),
            mnt: mk("mnt"),
        }
    }

    /// Puts the upper and work directories in `fs_root` (the root of another filesystem,
    /// say a tmpfs the test mounted), made there.
    pub fn move_upper_to(&mut self, fs_root: &Path) {
        self.upper = fs_root.join("upper");
        self.work = fs_root.join("work");
        for d in [&self.upper, &self.work] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {d:?}: {}", describe_err(&e)));
        }
    }

    /// "lowerdir=a:b" with each path escaped.
    pub fn lowerdir_opt(&self) -> String {
        lowerdir_opt_of(&self.lowers)
    }

    /// "lowerdir=..,upperdir=..,workdir=.."
    pub fn full_opts(&self) -> String {
        format!(
            "{},upperdir={},workdir={}",
            self.lowerdir_opt(),
            escape_layer(&self.upper),
            escape_layer(&self.work)
        )
    }
}

pub fn lowerdir_opt_of(lowers: &[PathBuf]) -> String {
    let v: Vec<String> = lowers.iter().map(|l| escape_layer(l)).collect();
    format!("lowerdir={}", v.join(":"))
}

/// A live mount; unmounted on drop (never panics there).
pub struct MountGuard {
    pub(crate) mnt: PathBuf,
    pub(crate) pid: Option<u32>,
    pub(crate) kernel: bool,
    pub(crate) active: bool,
}

impl MountGuard {
    /// Takes charge of a FUSE mount already at `mnt` (made by the test itself).
    pub fn adopt_fuse(mnt: &Path) -> MountGuard {
        let mnt = absolute(mnt);
        let pid = find_daemon_pid(&mnt);
        MountGuard {
            mnt,
            pid,
            kernel: false,
            active: true,
        }
    }

    /// Takes charge of a FUSE mount whose daemon pid is known.
    pub fn adopt_fuse_pid(mnt: &Path, pid: Option<u32>) -> MountGuard {
        MountGuard {
            mnt: absolute(mnt),
            pid,
            kernel: false,
            active: true,
        }
    }

    /// Takes charge of a non-FUSE mount (kernel overlay, tmpfs) at `mnt`.
    pub fn adopt_kernel(mnt: &Path) -> MountGuard {
        MountGuard {
            mnt: absolute(mnt),
            pid: None,
            kernel: true,
            active: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The test unmounted by itself: do nothing on drop.
    pub fn forget(mut self) {
        self.active = false;
    }

    /// Unmounts now and asserts that it worked, that the mount is gone and that the
    /// daemon (if known) exited within 10 s.
    pub fn unmount(mut self) {
        self.active = false;
        let dev = (!self.kernel)
            .then(|| mount_at(&self.mnt).map(|m| m.dev))
            .flatten();
        let o = if self.kernel {
            run_unmount("umount", &[self.mnt.as_os_str()])
        } else {
            run_unmount("fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()])
        };
        assert!(
            o.status.success(),
            "unmounting {:?} failed:\n{}",
            self.mnt,
            show_output(&o)
        );
        assert!(
            !is_mounted(&self.mnt) || !self.still_ours(),
            "{:?} is still mounted after unmount",
            self.mnt
        );
        if let Some(pid) = self.pid {
            if wait_pid_exit(pid, Duration::from_secs(10)) {
                return;
            }
            // A process that made a mount namespace while the mount was up (`unshare -m`,
            // a container) holds a copy of it there, and the daemon rightly serves that
            // copy until it goes.
            let held = dev.as_deref().map(namespaces_holding).unwrap_or_default();
            if !held.is_empty() {
                eprintln!(
                    "NOTE: the ovlfuse daemon (pid {pid}) for {:?} outlives its unmount: \
                     another mount namespace holds a copy of the mount (pid, command: \
                     {held:?}); waiting up to 60 s for it to go",
                    self.mnt
                );
                let dev = dev.unwrap_or_default();
                if !wait_until(Duration::from_secs(60), || {
                    namespaces_holding(&dev).is_empty()
                }) {
                    eprintln!(
                        "NOT CHECKED: whether the daemon (pid {pid}) exits after the unmount \
                         of {:?}: a mount namespace of another process still holds the mount \
                         ({:?})",
                        self.mnt,
                        namespaces_holding(&dev)
                    );
                    return;
                }
            }
            assert!(
                wait_pid_exit(pid, Duration::from_secs(10)),
                "the ovlfuse daemon (pid {pid}) for {:?} did not exit within 10 s of the unmount \
                 (no other mount namespace holds a copy of the mount); its threads now:\n{}",
                self.mnt,
                thread_states(pid)
            );
        }
    }

    pub(crate) fn still_ours(&self) -> bool {
        match mount_at(&self.mnt) {
            None => false,
            Some(m) => {
                if self.kernel {
                    !m.fstype.starts_with("fuse")
                } else {
                    m.fstype == "fuse" || m.fstype.starts_with("fuse.")
                }
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        if self.still_ours() {
            let o = if self.kernel {
                run_unmount("umount", &[self.mnt.as_os_str()])
            } else {
                run_unmount("fusermount3", &[OsStr::new("-u"), self.mnt.as_os_str()])
            };
            if !o.status.success() && self.still_ours() {
                let _ = run_tool("umount", &[OsStr::new("-l"), self.mnt.as_os_str()]);
            }
        }
        if let Some(pid) = self.pid {
            if !wait_pid_exit(pid, Duration::from_secs(10)) {
                eprintln!(
                    "warning: ovlfuse daemon pid {pid} for {:?} still running 10 s after unmount",
                    self.mnt
                );
            }
        }
    }
}

/// Runs the binary in daemon mode with `args`, checks it exited 0 and that a FUSE mount is
/// live at `mnt`, and returns a guard for it.
pub fn mount_ovlfuse_args(args: &[&str], mnt: &Path) -> MountGuard {
    let mut args = args.to_vec();
    if !args.iter().any(|a| a.contains("uring=")) {
        args.extend(["-o", transport_opt()]);
    }
    if let Some(o) = data_path_opt() {
        if !args.iter().any(|a| a.contains("passthrough=")) {
            args.extend(["-o", o]);
        }
    }
    if let Some(o) = listattrs_opt() {
        if !args.iter().any(|a| a.contains("listattrs=")) {
            args.extend(["-o", o]);
        }
    }
    let args = &args[..];
    let o = run_ovlfuse(args);
    let mnt = absolute(mnt);
    if !o.status.success() {
        panic!("ovlfuse {args:?} failed:\n{}", show_output(&o));
    }
    if !is_fuse_mounted(&mnt) {
        // The contract says exit 0 only once the mount is live; the cli tests check that
        // strictly. Here, be lenient for a moment so that semantic tests stay about semantics.
        if wait_for_fuse_mount(&mnt, Duration::from_secs(10)) {
            eprintln!("warning: ovlfuse exited 0 before {mnt:?} was mounted (appeared later)");
        } else {
            panic!(
                "ovlfuse {args:?} exited 0 but no FUSE mount appeared at {mnt:?}:\n{}",
                show_output(&o)
            );
        }
    }
    let pid = find_daemon_pid(&mnt);
    if pid.is_none() {
        eprintln!("warning: could not find the ovlfuse daemon process for {mnt:?}");
    }
    MountGuard {
        mnt,
        pid,
        kernel: false,
        active: true,
    }
}

/// The FUSE transport the harness's mounts use: /dev/fuse unless
/// `OVLFUSE_TEST_TRANSPORT=uring`, which runs them over io_uring and first lets the kernel
/// offer it (`enable_uring`, left on afterwards: it only lets daemons ask for io_uring).
pub fn transport_opt() -> &'static str {
    static OPT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    OPT.get_or_init(
        || match std::env::var("OVLFUSE_TEST_TRANSPORT").as_deref() {
            Ok("uring") if !Path::new(FUSE_URING_PARAM).exists() => {
                eprintln!(
                    "NOT TESTED OVER IO_URING: this kernel has no FUSE over io_uring \
                 ({FUSE_URING_PARAM} is missing); these mounts use /dev/fuse"
                );
                "uring=off"
            }
            Ok("uring") => {
                if let Err(e) = enable_fuse_uring() {
                    panic!("OVLFUSE_TEST_TRANSPORT=uring, but {e}");
                }
                "uring=on"
            }
            Ok("dev") | Err(_) => "uring=off",
            Ok(other) => panic!("OVLFUSE_TEST_TRANSPORT={other}: want uring or dev"),
        },
    )
}

/// How file data travels in the harness's mounts: as the daemon decides (passthrough as
/// root) unless `OVLFUSE_TEST_DATA=writeback`, which turns passthrough off so that the
/// kernel's writeback cache carries the writes, as for an unprivileged daemon.
pub fn data_path_opt() -> Option<&'static str> {
    static OPT: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *OPT.get_or_init(|| match std::env::var("OVLFUSE_TEST_DATA").as_deref() {
        Ok("writeback") => Some("passthrough=off"),
        Ok("default") | Err(_) => None,
        Ok(other) => panic!("OVLFUSE_TEST_DATA={other}: want writeback or default"),
    })
}

/// What listings carry in the harness's mounts: as the daemon decides (attributes, except
/// for big cold directories) unless `OVLFUSE_TEST_LISTATTRS=off`, which makes every
/// READDIRPLUS reply give names only, so that each stat after a listing is a lookup.
pub fn listattrs_opt() -> Option<&'static str> {
    static OPT: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *OPT.get_or_init(
        || match std::env::var("OVLFUSE_TEST_LISTATTRS").as_deref() {
            Ok("off") => Some("listattrs=off"),
            Ok("default") | Err(_) => None,
            Ok(other) => panic!("OVLFUSE_TEST_LISTATTRS={other}: want off or default"),
        },
    )
}

/// How the start of a foreground daemon (`ovlfuse -f`) ended.
#[derive(Debug)]
pub enum Started {
    Mounted,
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Waits up to 10 s for `child`, an `ovlfuse -f` mounting at `mnt`, to mount or exit.
pub fn wait_for_foreground_mount(child: &mut std::process::Child, mnt: &Path) -> Started {
    for _ in 0..500 {
        if is_fuse_mounted(mnt) {
            return Started::Mounted;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Started::Exited(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Started::TimedOut
}

/// Whether a test of FUSE over io_uring can run: /dev/fuse is there (else the loud skip of
/// `fuse_available`) and the kernel has FUSE over io_uring (else a loud skip), which is
/// then turned on. A failure to turn it on fails the test.
pub fn fuse_uring_available() -> bool {
    if !fuse_available() {
        return false;
    }
    if !Path::new(FUSE_URING_PARAM).exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring ({FUSE_URING_PARAM})");
        return false;
    }
    if let Err(e) = enable_fuse_uring() {
        panic!("{e}");
    }
    true
}

/// The kernel's switch for FUSE over io_uring (CONFIG_FUSE_IO_URING, Linux 6.14+).
pub const FUSE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Lets the kernel offer FUSE over io_uring to daemons.
pub fn enable_fuse_uring() -> Result<(), String> {
    fs::write(FUSE_URING_PARAM, "Y").map_err(|e| {
        format!("cannot turn on {FUSE_URING_PARAM}: {e} (kernel without CONFIG_FUSE_IO_URING?)")
    })
}

/// The transport option for a test that checks something over both transports:
/// `uring=on` once the kernel offers FUSE over io_uring, else `uring=off` with a note that
/// `what` was not tested over io_uring.
pub fn uring_opt_or_note(what: &str) -> &'static str {
    match enable_fuse_uring() {
        Ok(()) => "uring=on",
        Err(e) => {
            eprintln!("NOTE: {what} not tested over io_uring: {e}");
            "uring=off"
        }
    }
}

/// ovlfuse -o lowerdir=..,upperdir=..,workdir=..[,extra] MNT
pub fn mount_ovlfuse(stack: &Stack, extra_opts: &[&str]) -> MountGuard {
    let mut opts = vec![stack.full_opts()];
    opts.extend(extra_opts.iter().map(|s| s.to_string()));
    let opts = opts.join(",");
    let mnt = stack.mnt.to_str().expect("utf-8 mnt").to_string();
    mount_ovlfuse_args(&["-o", &opts, &mnt], &stack.mnt)
}

/// ovlfuse -o lowerdir=..[,extra] MNT (no upper: read-only view)
pub fn mount_ovlfuse_ro(lowers: &[PathBuf], mnt: &Path, extra_opts: &[&str]) -> MountGuard {
    let mut opts = vec![lowerdir_opt_of(lowers)];
    opts.extend(extra_opts.iter().map(|s| s.to_string()));
    let opts = opts.join(",");
    let m = mnt.to_str().expect("utf-8 mnt").to_string();
    mount_ovlfuse_args(&["-o", &opts, &m], mnt)
}

pub(crate) fn mount_kernel_opts(opts: &str, mnt: &Path) -> MountGuard {
    let o = run_tool(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new("overlay"),
            OsStr::new("overlay"),
            OsStr::new("-o"),
            OsStr::new(opts),
            mnt.as_os_str(),
        ],
    );
    if !o.status.success() {
        panic!(
            "kernel overlay mount -o {opts} {mnt:?} failed:\n{}",
            show_output(&o)
        );
    }
    let g = MountGuard::adopt_kernel(mnt);
    match mount_at(mnt) {
        Some(m) if m.fstype == "overlay" => {}
        other => panic!("mount -t overlay succeeded but {mnt:?} shows {other:?}"),
    }
    g
}

/// mount -t overlay overlay -o lowerdir=..,upperdir=..,workdir=.. MNT (redirect_dir on, as
/// ovlfuse's default; index and metacopy off).
pub fn mount_kernel(stack: &Stack) -> MountGuard {
    let opts = format!(
        "{},index=off,redirect_dir=on,metacopy=off",
        stack.full_opts()
    );
    mount_kernel_opts(&opts, &stack.mnt)
}

/// Like [`mount_kernel`], with more mount options (e.g. `noatime`) after the layers.
pub fn mount_kernel_with(stack: &Stack, extra: &str) -> MountGuard {
    let opts = format!(
        "{},index=off,redirect_dir=on,metacopy=off,{extra}",
        stack.full_opts()
    );
    mount_kernel_opts(&opts, &stack.mnt)
}

/// Kernel overlay with the layers of `stack` and exactly the options `extra` (no
/// redirects: rootless kernel overlayfs, `userxattr`, refuses them).
pub fn mount_kernel_plain(stack: &Stack, extra: &str) -> MountGuard {
    mount_kernel_opts(&format!("{},{extra}", stack.full_opts()), &stack.mnt)
}

/// Kernel overlay with only lower layers (the kernel needs at least two).
pub fn mount_kernel_ro(lowers: &[PathBuf], mnt: &Path) -> MountGuard {
    mount_kernel_opts(&lowerdir_opt_of(lowers), mnt)
}

/// A tmpfs at `mnt` (for "other file system" and "mount inside a layer" cases).
pub fn mount_tmpfs(mnt: &Path) -> MountGuard {
    mount_tmpfs_with(mnt, "defaults")
}

/// A tmpfs with mount options `opts` ("size=8m", say).
pub fn mount_tmpfs_with(mnt: &Path, opts: &str) -> MountGuard {
    mount_memory_fs("tmpfs", mnt, opts)
}

/// A ramfs: a filesystem that takes no xattrs of any kind.
pub fn mount_ramfs(mnt: &Path) -> MountGuard {
    mount_memory_fs("ramfs", mnt, "defaults")
}

pub(crate) fn mount_memory_fs(fstype: &str, mnt: &Path, opts: &str) -> MountGuard {
    let o = run_tool(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new(fstype),
            OsStr::new("-o"),
            OsStr::new(opts),
            OsStr::new(fstype),
            mnt.as_os_str(),
        ],
    );
    assert!(
        o.status.success(),
        "mount {fstype} at {mnt:?} failed:\n{}",
        show_output(&o)
    );
    MountGuard::adopt_kernel(mnt)
}
