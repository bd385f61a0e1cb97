//! A directory per test and an environment per engine (its own containers.conf,
//! storage.conf and registries.conf), reset and removed afterwards.

use super::*;

/// /tmp/ovlfuse-engines-<pid>-<n>: on drop, kills leftover processes that mention it,
/// lazily unmounts everything below it and removes it.
pub(crate) struct TestDir {
    pub(crate) root: PathBuf,
}

impl TestDir {
    pub(crate) fn new(name: &str) -> TestDir {
        let n = N.fetch_add(1, Ordering::SeqCst);
        // Short on purpose: with a long runroot path (its attach socket path passes the
        // 108-byte limit of a unix socket name) podman 4.3 loses every container's exit
        // and `podman run` waits 20 s for conmon before giving up.
        let _ = name;
        let root = PathBuf::from(format!("/tmp/ovle-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        TestDir { root }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        kill_procs_mentioning(&self.root);
        umount_below(&self.root);
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!("engines: cannot remove {:?}: {e}", self.root);
        }
    }
}

pub(crate) fn umount_below(root: &Path) {
    for _ in 0..20 {
        let mut ms = mounts_below(root, true);
        if ms.is_empty() {
            return;
        }
        ms.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in ms {
            let _ = Command::new("umount").arg("-l").arg(&m).output();
        }
    }
}

/// Processes (other than us) whose command line mentions `root`: (pid, cmdline).
pub(crate) fn procs_mentioning(root: &Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    let needle = root.to_string_lossy().into_owned();
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        let Ok(c) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        if c.contains(&needle) {
            v.push((pid, c));
        }
    }
    v
}

pub(crate) fn kill_procs_mentioning(root: &Path) {
    for _ in 0..3 {
        let ps = procs_mentioning(root);
        if ps.is_empty() {
            return;
        }
        for (pid, c) in ps {
            eprintln!("engines: killing leftover pid {pid}: {c}");
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Which overlay implementation an engine uses.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Driver {
    Ovlfuse,
    Native,
}

/// One engine configuration: its own graphroot/runroot/configs below `dir`, run as root or
/// as the rootless user. On drop: removes every container and image (buildah rm, podman
/// system reset), stops the rootless pause process, unmounts what is left below `dir`.
pub(crate) struct Eng {
    pub(crate) label: String,
    pub(crate) dir: PathBuf,
    pub(crate) rootless: Option<(u32, u32)>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) buildah: bool,
}

impl Eng {
    pub(crate) fn new(
        parent: &Path,
        driver: Driver,
        rootless: Option<(u32, u32)>,
        buildah: bool,
    ) -> Eng {
        let label = format!(
            "{}{}",
            match driver {
                Driver::Ovlfuse => "ovlfuse",
                Driver::Native => "native",
            },
            if rootless.is_some() {
                "-rootless"
            } else {
                "-rootful"
            }
        );
        let dir = parent.join(match driver {
            Driver::Ovlfuse => "ovl",
            Driver::Native => "nat",
        });
        for d in ["graph", "run", "xdg", "home", "tmp", "vol"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
        let nofile = {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
            rl.rlim_max.min(1 << 20)
        };
        fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\nlog_driver = \"k8s-file\"\npids_limit = 0\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=32768:32768\"]\n\
                 netns = \"none\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{}\"\n\
                 pull_policy = \"never\"\nruntime = \"runc\"\n\
                 lock_type = \"file\"\ntmp_dir = \"{}\"\n",
                p("events.log"),
                p("libpodtmp")
            ),
        )
        .unwrap();
        let runroot = if rootless.is_some() {
            p("xdg/containers")
        } else {
            p("run")
        };
        let mut storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{g}\"\nrunroot = \"{runroot}\"\n",
            g = p("graph")
        );
        if rootless.is_some() {
            storage += &format!("rootless_storage_path = \"{}\"\n", p("graph"));
        }
        if driver == Driver::Ovlfuse {
            let bin = ovlfuse_bin();
            let bin = match rootless {
                // The user must be able to run the binary; copy it if its path is closed.
                Some(_)
                    if !sh(&format!(
                        "runuser -u {ROOTLESS_USER} -- test -x '{}'",
                        bin.display()
                    ))
                    .status
                    .success() =>
                {
                    let c = dir.join("ovlfuse");
                    fs::copy(&bin, &c).unwrap();
                    c
                }
                _ => bin,
            };
            // The harness's transport, through containers/storage's default mount
            // options (handed to the mount program with -o).
            storage += &format!(
                "\n[storage.options.overlay]\nmount_program = \"{}\"\nmountopt = \"{}\"\n",
                bin.display(),
                transport_opt()
            );
        }
        fs::write(dir.join("storage.conf"), storage).unwrap();
        fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        let env: Vec<(String, String)> = vec![
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME", p("home")),
            ("XDG_RUNTIME_DIR", p("xdg")),
            ("XDG_CONFIG_HOME", p("home/.config")),
            ("XDG_DATA_HOME", p("home/.local/share")),
            ("TMPDIR", p("tmp")),
            ("LANG", "C".into()),
            ("CONTAINERS_CONF", p("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", p("storage.conf")),
            ("CONTAINERS_REGISTRIES_CONF", p("registries.conf")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some((uid, gid)) = rootless {
            sh_ok(&format!("chown -R {uid}:{gid} '{}'", dir.display()));
        }
        fs::set_permissions(dir.join("xdg"), fs::Permissions::from_mode(0o700)).unwrap();
        Eng {
            label,
            dir,
            rootless,
            env,
            buildah,
        }
    }

    pub(crate) fn run(&self, prog: &str, args: &[&str]) -> Output {
        let mut c = if self.rootless.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", ROOTLESS_USER, "--", "env", "-i"]);
            for (k, v) in &self.env {
                c.arg(format!("{k}={v}"));
            }
            c.arg(prog);
            c
        } else {
            let mut c = Command::new(prog);
            c.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
            c
        };
        c.args(args).current_dir(&self.dir);
        run_with_timeout(c, CMD_TIMEOUT)
    }

    /// Runs and asserts success; returns stdout.
    #[track_caller]
    pub(crate) fn ok(&self, prog: &str, args: &[&str]) -> String {
        let t = Instant::now();
        let o = self.run(prog, args);
        assert!(
            o.status.success(),
            "[{}] {prog} {args:?} failed after {:?}:\n{}",
            self.label,
            t.elapsed(),
            show_output(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[track_caller]
    pub(crate) fn podman(&self, args: &[&str]) -> String {
        self.ok("podman", args)
    }

    /// `podman ARGS` must print exactly `want` (trailing newlines ignored).
    ///
    /// A `podman run` that succeeds and prints nothing at all is run once more: podman
    /// 4.3 now and then loses a short-lived container's whole output (its attach races
    /// the container's exit: containers/podman#7195). Seen once in CI here (the rootless
    /// ovlfuse side, 2026-12-07), where a command that prints two lines printed none and
    /// six reruns printed both. Output that is there but wrong fails at once.
    #[track_caller]
    pub(crate) fn expect(&self, what: &str, args: &[&str], want: &str) {
        let mut got = self.podman(args);
        if got.is_empty() && !want.trim_end().is_empty() && args.first() == Some(&"run") {
            eprintln!(
                "[{}] {what}: `podman {args:?}` succeeded and printed nothing; \
                 running it again (podman's attach race)",
                self.label
            );
            got = self.podman(args);
        }
        assert_eq!(
            got.trim_end(),
            want.trim_end(),
            "[{}] {what}: `podman {args:?}` printed\n{got}\nexpected\n{want}",
            self.label
        );
    }

    /// `sh -c SCRIPT` on the host, as the engine's user, inside `ENGINE unshare` (podman or
    /// buildah) when rootless, so the engine's mounts are visible (and can be made at all).
    #[track_caller]
    pub(crate) fn host_sh(&self, engine: &str, script: &str) -> String {
        if self.rootless.is_some() {
            self.ok(engine, &["unshare", "sh", "-c", script])
        } else {
            self.ok("sh", &["-c", script])
        }
    }

    pub(crate) fn p(&self, rel: &str) -> String {
        self.dir.join(rel).to_string_lossy().into_owned()
    }

    pub(crate) fn cleanup(&self) {
        // The rootless pause process that keeps podman's user namespace alive (its pid
        // file goes away with the reset, so read it first).
        let pause: Vec<i32> = ["libpodtmp/pause.pid", "xdg/libpod/tmp/pause.pid"]
            .iter()
            .filter_map(|f| {
                fs::read_to_string(self.dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .filter(|&pid| pid > 1)
            .collect();
        if self.buildah {
            let _ = self.run("buildah", &["rm", "--all"]);
        }
        let _ = self.run("podman", &["system", "reset", "-f"]);
        for pid in pause {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// After the flow: no ovlfuse daemon (or anything else) that mentions our directory
    /// survives the removal of every container and image, and nothing stays mounted.
    #[track_caller]
    pub(crate) fn assert_no_leftovers(&self) {
        if self.buildah {
            self.ok("buildah", &["rm", "--all"]);
        }
        self.podman(&["rm", "-af"]);
        self.podman(&["rmi", "-af"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ps: Vec<_> = procs_mentioning(&self.dir.join("graph"))
                .into_iter()
                .filter(|(_, c)| c.contains("ovlfuse") || c.contains("lowerdir="))
                .collect();
            let ms: Vec<_> = mounts_below(&self.dir.join("graph"), false)
                .into_iter()
                .filter(|m| m.ends_with("merged") || m.ends_with("merge"))
                .collect();
            if ps.is_empty() && ms.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "[{}] after removing all containers and images, left behind:\n  processes: {ps:?}\n  mounts: {ms:?}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Eng {
    fn drop(&mut self) {
        self.cleanup();
        kill_procs_mentioning(&self.dir);
        umount_below(&self.dir);
    }
}
