//! End to end: ovlfuse as the `mount_program` of podman and buildah (the job fuse-overlayfs
//! does for containers/storage), compared with the same steps on the kernel's overlay driver.
//!
//! Each test builds a tiny busybox root filesystem, then runs one flow twice — once with
//! `[storage.options.overlay] mount_program = <target/release/ovlfuse>`, once with the native
//! overlay driver, in separate graphroots — and asserts both the expected results and that
//! ovlfuse and the kernel agree on `podman diff`, on the file tree of the resulting image
//! (type, mode, owner, size, content hash, link target) and on the whiteouts in each layer.
//!
//! Needs podman, buildah, runc, uidmap (newuidmap) and busybox-static; `.ci/run` installs
//! them. Without them the tests fail, unless OVLFUSE_SKIP_ENGINES=1 (then they skip loudly).
//! Never touches /etc/containers: every engine gets its own CONTAINERS_CONF,
//! CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF below a per-test directory
//! /tmp/ovlfuse-engines-<pid>-<n>, which is reset, unmounted and removed afterwards.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ROOTLESS_USER: &str = "ovltest";
const CMD_TIMEOUT: Duration = Duration::from_secs(180);
static N: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------

fn have(prog: &str) -> bool {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(prog).exists())
}

/// Whether /bin/busybox is statically linked (no PT_INTERP program header).
fn busybox_static() -> bool {
    let Ok(b) = fs::read("/bin/busybox") else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let u16at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64at(0x20), u16at(0x36), u16at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 > b.len() || u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

/// True when the test can run. Missing engines are a failure (pointing at `.ci/run`),
/// unless OVLFUSE_SKIP_ENGINES=1; a missing /dev/fuse is a loud skip.
fn engines_ready(test: &str, progs: &[&str]) -> bool {
    if !fuse_available() {
        return false;
    }
    let mut missing: Vec<String> = progs
        .iter()
        .filter(|p| !have(p))
        .map(|p| p.to_string())
        .collect();
    if !busybox_static() {
        missing.push("static /bin/busybox (busybox-static)".into());
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("OVLFUSE_SKIP_ENGINES").as_deref() == Ok("1") {
        eprintln!();
        eprintln!("************************************************************");
        eprintln!(
            "*** SKIPPED {test}: OVLFUSE_SKIP_ENGINES=1 and missing: {}",
            missing.join(", ")
        );
        eprintln!("************************************************************");
        eprintln!();
        return false;
    }
    panic!(
        "{test}: missing {}; run .ci/run (it installs podman, buildah, runc, uidmap, \
         busybox-static) or set OVLFUSE_SKIP_ENGINES=1 to skip these tests",
        missing.join(", ")
    );
}

fn sh(cmd: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd);
    run_with_timeout(c, Duration::from_secs(60))
}

#[track_caller]
fn sh_ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(o.status.success(), "`{cmd}` failed:\n{}", show_output(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// uid and gid of the rootless test user, creating it (with subuid/subgid ranges) if needed.
fn rootless_user() -> (u32, u32) {
    let id = |flag: &str| sh(&format!("id {flag} {ROOTLESS_USER}"));
    if !id("-u").status.success() {
        sh_ok(&format!("useradd -m {ROOTLESS_USER}"));
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        let has = fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{ROOTLESS_USER}:")));
        assert!(
            has,
            "{f} has no range for {ROOTLESS_USER}; `useradd -m {ROOTLESS_USER}` should have added one \
             (or: usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {ROOTLESS_USER})"
        );
    }
    let num = |flag: &str| -> u32 {
        String::from_utf8_lossy(&id(flag).stdout)
            .trim()
            .parse()
            .expect("id output")
    };
    (num("-u"), num("-g"))
}

// ---------------------------------------------------------------------------------------
// Per-test directory and per-engine environments (with cleanup)
// ---------------------------------------------------------------------------------------

/// /tmp/ovlfuse-engines-<pid>-<n>: on drop, kills leftover processes that mention it,
/// lazily unmounts everything below it and removes it.
struct TestDir {
    root: PathBuf,
}

impl TestDir {
    fn new(name: &str) -> TestDir {
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

fn umount_below(root: &Path) {
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
fn procs_mentioning(root: &Path) -> Vec<(u32, String)> {
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

fn kill_procs_mentioning(root: &Path) {
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
enum Driver {
    Ovlfuse,
    Native,
}

/// One engine configuration: its own graphroot/runroot/configs below `dir`, run as root or
/// as the rootless user. On drop: removes every container and image (buildah rm, podman
/// system reset), stops the rootless pause process, unmounts what is left below `dir`.
struct Eng {
    label: String,
    dir: PathBuf,
    rootless: Option<(u32, u32)>,
    env: Vec<(String, String)>,
    buildah: bool,
}

impl Eng {
    fn new(parent: &Path, driver: Driver, rootless: Option<(u32, u32)>, buildah: bool) -> Eng {
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

    fn run(&self, prog: &str, args: &[&str]) -> Output {
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
    fn ok(&self, prog: &str, args: &[&str]) -> String {
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
    fn podman(&self, args: &[&str]) -> String {
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
    fn expect(&self, what: &str, args: &[&str], want: &str) {
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
    fn host_sh(&self, engine: &str, script: &str) -> String {
        if self.rootless.is_some() {
            self.ok(engine, &["unshare", "sh", "-c", script])
        } else {
            self.ok("sh", &["-c", script])
        }
    }

    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).to_string_lossy().into_owned()
    }

    fn cleanup(&self) {
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
    fn assert_no_leftovers(&self) {
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

// ---------------------------------------------------------------------------------------
// Inputs: the busybox root filesystem and the build context
// ---------------------------------------------------------------------------------------

const CONTAINERFILE: &str = "FROM localhost/bb
RUN rm /data/a && rm -rf /data/sub && mkdir /data/sub && echo new > /data/sub/c
RUN echo appended >> /data/keep && chown 12:34 /data/own && chmod 4750 /data/own
RUN mkdir -p /opq && echo x > /opq/1 && echo y > /opq/2
RUN rm -rf /opq && mkdir /opq && echo z > /opq/3 && rm -rf /data/deep/x && mkdir -p /data/deep/x/z
RUN rm /bin/vi && mv /data/keep /data/moved && chmod 600 /data/moved && ln /data/moved /data/hard && ln -s moved /data/sym && chmod 700 /data/deep
COPY added.txt /data/added.txt
";
/// Instructions after FROM: each must be a cache hit on the rebuild.
const BUILD_STEPS: usize = 6;

/// What the built image must show (run inside it with busybox sh).
const BUILT_CHECK: &str = "ls /data | tr '\\n' ' '; echo; ls /data/sub | tr '\\n' ' '; echo; \
    cat /data/sub/c; cat /data/moved | tr '\\n' '+'; echo; ls /opq; ls /data/deep/x; \
    test -e /bin/vi || echo novi; stat -c '%a %h %u:%g' /data/moved /data/own; \
    readlink /data/sym; stat -c %a /data/deep";
const BUILT_WANT: &str =
    "added.txt deep hard moved own sub sym \nc \nnew\nkeep+appended+\n3\nz\nnovi\n\
    600 2 0:0\n4750 1 12:34\nmoved\n700";

/// The mutation container `writer` makes before `podman diff` / `commit`. (Not named
/// `c1`: `podman diff` looks the name up as an image first, and an image ID starting with
/// the hex digits `c1` made it diff that image instead, now and then.)
const C1_SCRIPT: &str =
    "rm /data/hard; rm -rf /opq; echo w > /data/new; echo more >> /data/moved; \
    mkdir /newdir; rm /bin/cat; chmod 711 /data/sub; rm -rf /data/deep; mkdir /data/deep; \
    echo fresh > /data/deep/f";

struct Inputs {
    rootfs_tar: String,
    ctx: String,
    containerfile: String,
}

/// Builds rootfs/ (static busybox, applet links, /etc/passwd+group, /data files),
/// rootfs.tar and the build context, readable by everyone.
fn make_inputs(td: &TestDir) -> Inputs {
    let base = td.root.join("inputs");
    let rootfs = base.join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "var/tmp",
        "root",
        "run",
        "data/sub",
        "data/deep/x/y",
    ] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::set_permissions(rootfs.join("var/tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    fs::set_permissions(
        rootfs.join("bin/busybox"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let list = sh_ok("/bin/busybox --list");
    let mut n = 0;
    for applet in list.split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            n += 1;
        }
    }
    assert!(n > 100, "busybox --list gave only {n} applets");
    for a in [
        "sh", "ls", "cat", "vi", "stat", "readlink", "tr", "rm", "mkdir", "ln", "chmod", "chown",
        "id", "tar",
    ] {
        assert!(
            rootfs.join("bin").join(a).exists(),
            "busybox has no {a} applet"
        );
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::write(rootfs.join("data/a"), "aaaaaa\n").unwrap();
    fs::write(rootfs.join("data/keep"), "keep\n").unwrap();
    fs::write(rootfs.join("data/own"), "own\n").unwrap();
    fs::write(rootfs.join("data/sub/b"), "bbbbbb\n").unwrap();
    fs::write(rootfs.join("data/deep/x/y/f"), "deep\n").unwrap();
    let tar = base.join("rootfs.tar");
    sh_ok(&format!(
        "tar --numeric-owner --owner=0 --group=0 -C '{}' -cf '{}' .",
        rootfs.display(),
        tar.display()
    ));
    let ctx = base.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Containerfile"), CONTAINERFILE).unwrap();
    fs::write(ctx.join("added.txt"), "added\n").unwrap();
    sh_ok(&format!("chmod -R a+rX '{}'", base.display()));
    Inputs {
        rootfs_tar: tar.to_string_lossy().into_owned(),
        containerfile: ctx.join("Containerfile").to_string_lossy().into_owned(),
        ctx: ctx.to_string_lossy().into_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// A small tar reader (ustar, GNU long names, PAX), for exports, layers and oci-archives
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct TarEntry {
    path: String,
    kind: char, // '-' file, 'd', 'l' symlink, 'h' hard link, 'c', 'b', 'p'
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    link: String,
    data: Vec<u8>,
}

impl TarEntry {
    /// One comparable line: everything but times.
    fn line(&self) -> String {
        let tail = match self.kind {
            '-' => format!("size={} fnv={:016x}", self.size, fnv(&self.data)),
            'l' => format!("-> {}", self.link),
            'h' => format!("link to {}", self.link),
            _ => String::new(),
        };
        format!(
            "{} {} {:04o} {}:{} {}",
            self.path, self.kind, self.mode, self.uid, self.gid, tail
        )
    }
}

fn fnv(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn tar_num(f: &[u8]) -> u64 {
    if !f.is_empty() && f[0] & 0x80 != 0 {
        return f[1..]
            .iter()
            .fold((f[0] & 0x7f) as u64, |a, &b| (a << 8) | b as u64);
    }
    let s: String = f
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(s.trim(), 8).unwrap_or(0)
}

fn tar_str(f: &[u8]) -> String {
    String::from_utf8_lossy(&f[..f.iter().position(|&b| b == 0).unwrap_or(f.len())]).into_owned()
}

fn norm_path(p: &str) -> String {
    let p = p
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    if p.is_empty() || p == "." {
        ".".into()
    } else {
        p.to_string()
    }
}

fn parse_tar(b: &[u8]) -> Vec<TarEntry> {
    let mut out = Vec::new();
    let mut off = 0;
    let (mut long_name, mut long_link): (Option<String>, Option<String>) = (None, None);
    let mut pax: BTreeMap<String, String> = BTreeMap::new();
    while off + 512 <= b.len() {
        let h = &b[off..off + 512];
        if h.iter().all(|&x| x == 0) {
            break;
        }
        let mut size = tar_num(&h[124..136]);
        if let Some(s) = pax.get("size") {
            size = s.parse().unwrap_or(size);
        }
        let flag = h[156];
        let dstart = off + 512;
        let dend = (dstart + size as usize).min(b.len());
        let data = &b[dstart..dend];
        off = dstart + (size as usize).div_ceil(512) * 512;
        match flag {
            b'x' => {
                let mut rest = data;
                while let Some(sp) = rest.iter().position(|&c| c == b' ') {
                    let len: usize = String::from_utf8_lossy(&rest[..sp]).parse().unwrap_or(0);
                    if len == 0 || len > rest.len() {
                        break;
                    }
                    let rec = String::from_utf8_lossy(&rest[sp + 1..len - 1]).into_owned();
                    if let Some((k, v)) = rec.split_once('=') {
                        pax.insert(k.to_string(), v.to_string());
                    }
                    rest = &rest[len..];
                }
                continue;
            }
            b'g' => continue,
            b'L' => {
                long_name = Some(tar_str(data));
                continue;
            }
            b'K' => {
                long_link = Some(tar_str(data));
                continue;
            }
            _ => {}
        }
        let mut name = tar_str(&h[0..100]);
        let prefix = tar_str(&h[345..500]);
        if &h[257..262] == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let name = pax.remove("path").or(long_name.take()).unwrap_or(name);
        let link = pax
            .remove("linkpath")
            .or(long_link.take())
            .unwrap_or_else(|| tar_str(&h[157..257]));
        let kind = match flag {
            b'0' | 0 | b'7' => '-',
            b'1' => 'h',
            b'2' => 'l',
            b'3' => 'c',
            b'4' => 'b',
            b'5' => 'd',
            b'6' => 'p',
            other => other as char,
        };
        let uid = pax
            .remove("uid")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| tar_num(&h[108..116]));
        let gid = pax
            .remove("gid")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| tar_num(&h[116..124]));
        pax.clear();
        out.push(TarEntry {
            path: norm_path(&name),
            kind,
            mode: (tar_num(&h[100..108]) & 0o7777) as u32,
            uid,
            gid,
            size,
            link: if kind == 'h' { norm_path(&link) } else { link },
            data: data.to_vec(),
        });
    }
    out
}

fn read_tar(path: &str) -> Vec<TarEntry> {
    let b = fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    parse_tar(&decompress(b))
}

fn decompress(b: Vec<u8>) -> Vec<u8> {
    if b.len() > 2 && b[0] == 0x1f && b[1] == 0x8b {
        let tmp = std::env::temp_dir().join(format!(
            "ovlfuse-engines-gz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::write(&tmp, &b).unwrap();
        let o = sh(&format!("gzip -dc < '{}'", tmp.display()));
        let _ = fs::remove_file(&tmp);
        assert!(o.status.success(), "gunzip layer: {}", show_output(&o));
        return o.stdout;
    }
    b
}

/// Sorted comparable lines of a file tree tar (export, image mount), without "." .
fn tree_lines(entries: &[TarEntry]) -> Vec<String> {
    let mut v: Vec<String> = entries
        .iter()
        .filter(|e| e.path != ".")
        .map(|e| e.line())
        .collect();
    v.sort();
    v
}

/// The layers of the single image in an oci-archive, in order (base first): for each,
/// its whiteout entries (`.wh.*` names) and all its entries as comparable lines.
struct Layer {
    whiteouts: Vec<String>,
    lines: Vec<String>,
    /// (path, comparable line) of every non-whiteout entry.
    entries: Vec<(String, String)>,
}

fn oci_layers(archive: &str) -> Vec<Layer> {
    let outer = read_tar(archive);
    let blob = |digest: &str| -> &TarEntry {
        let want = format!("blobs/{}", digest.replacen(':', "/", 1));
        outer
            .iter()
            .find(|e| e.path == want)
            .unwrap_or_else(|| panic!("{archive}: no {want}"))
    };
    let digests_after = |json: &str, key: &str| -> Vec<String> {
        let Some(i) = json.find(key) else {
            return vec![];
        };
        json[i..]
            .split("\"digest\"")
            .skip(1)
            .filter_map(|s| {
                let s = s
                    .trim_start()
                    .strip_prefix(':')?
                    .trim_start()
                    .strip_prefix('"')?;
                Some(s[..s.find('"')?].to_string())
            })
            .collect()
    };
    let index = outer
        .iter()
        .find(|e| e.path == "index.json")
        .expect("oci-archive has no index.json");
    let index = String::from_utf8_lossy(&index.data).into_owned();
    let manifests = digests_after(&index, "\"manifests\"");
    assert_eq!(manifests.len(), 1, "{archive}: index.json: {index}");
    let manifest = String::from_utf8_lossy(&blob(&manifests[0]).data).into_owned();
    let layers = digests_after(&manifest, "\"layers\"");
    assert!(
        !layers.is_empty(),
        "{archive}: no layers in manifest {manifest}"
    );
    layers
        .iter()
        .map(|d| {
            let entries = parse_tar(&decompress(blob(d).data.clone()));
            let mut whiteouts: Vec<String> = entries
                .iter()
                .filter(|e| e.path.rsplit('/').next().unwrap_or("").starts_with(".wh."))
                .map(|e| e.path.clone())
                .collect();
            whiteouts.sort();
            Layer {
                whiteouts,
                lines: tree_lines(&entries),
                entries: entries
                    .iter()
                    .filter(|e| {
                        e.path != "."
                            && !e.path.rsplit('/').next().unwrap_or("").starts_with(".wh.")
                    })
                    .map(|e| (e.path.clone(), e.line()))
                    .collect(),
            }
        })
        .collect()
}

fn show_layers(ls: &[Layer]) -> String {
    ls.iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "  layer {i}: {} entries, whiteouts {:?}",
                l.lines.len(),
                l.whiteouts
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------

#[track_caller]
fn assert_same_lines(what: &str, a_label: &str, a: &[String], b_label: &str, b: &[String]) {
    if a == b {
        return;
    }
    let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
    panic!(
        "{what} differs between {a_label} and {b_label}\n--- only in {a_label}:\n{}\n--- only in {b_label}:\n{}\n\
         --- full {a_label}:\n{}\n--- full {b_label}:\n{}",
        only_a.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"),
        only_b.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n"),
        a.join("\n"),
        b.join("\n")
    );
}

fn parent_and_name(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

fn join(d: &str, n: &str) -> String {
    if d.is_empty() || d == "." {
        n.to_string()
    } else {
        format!("{d}/{n}")
    }
}

fn children<'a>(tree: &'a BTreeMap<String, String>, d: &str) -> Vec<&'a String> {
    let pre = if d.is_empty() {
        String::new()
    } else {
        format!("{d}/")
    };
    tree.keys()
        .filter(|k| k.starts_with(&pre) && !k[pre.len()..].contains('/') && k.len() > pre.len())
        .collect()
}

fn is_dir_line(l: &str) -> bool {
    l.split(' ').nth(1) == Some("d")
}

/// The paths a layer deletes from the tree below it. An opaque marker (`D/.wh..wh..opq`,
/// what the kernel driver's native diff writes) counts as deleting every old child of D
/// the layer does not bring back (recursively for directories it does bring back) — what
/// containers/storage's naive diff, used with a mount_program, writes as `.wh.NAME` files.
fn deleted_paths(below: &BTreeMap<String, String>, l: &Layer) -> Vec<String> {
    let new: BTreeMap<&str, &str> = l
        .entries
        .iter()
        .map(|(p, x)| (p.as_str(), x.as_str()))
        .collect();
    let mut del = Vec::new();
    fn expand(
        d: &str,
        below: &BTreeMap<String, String>,
        new: &BTreeMap<&str, &str>,
        del: &mut Vec<String>,
    ) {
        for c in children(below, d) {
            match new.get(c.as_str()) {
                None => del.push(c.clone()),
                Some(nl) if is_dir_line(nl) && is_dir_line(&below[c]) => expand(c, below, new, del),
                Some(_) => {}
            }
        }
    }
    for w in &l.whiteouts {
        let (d, n) = parent_and_name(w);
        if n == ".wh..wh..opq" {
            expand(d, below, &new, &mut del);
        } else {
            del.push(join(d, &n[4..]));
        }
    }
    del.sort();
    del.dedup();
    del
}

/// Applies a layer (whiteouts, opaque markers, entries) to a tree of comparable lines.
fn apply_layer(tree: &mut BTreeMap<String, String>, l: &Layer) {
    let remove_subtree = |tree: &mut BTreeMap<String, String>, p: &str, keep_self: bool| {
        let pre = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        tree.retain(|k, _| !(k.starts_with(&pre) || (!keep_self && k == p)));
    };
    for w in &l.whiteouts {
        let (d, n) = parent_and_name(w);
        if n == ".wh..wh..opq" {
            remove_subtree(tree, d, true);
        } else {
            remove_subtree(tree, &join(d, &n[4..]), false);
        }
    }
    for (p, line) in &l.entries {
        if let Some(old) = tree.get(p) {
            if is_dir_line(old) && !is_dir_line(line) {
                remove_subtree(tree, p, true);
            }
        }
        tree.insert(p.clone(), line.clone());
    }
}

/// Compares two images layer by layer by what they mean: the same number of layers, each
/// deleting the same paths (whatever the whiteout style), and the same file tree after
/// each layer is applied.
#[track_caller]
fn assert_same_layers(what: &str, a_label: &str, a: &[Layer], b_label: &str, b: &[Layer]) {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: number of layers differs\n{a_label}:\n{}\n{b_label}:\n{}",
        show_layers(a),
        show_layers(b)
    );
    let (mut ta, mut tb) = (BTreeMap::new(), BTreeMap::new());
    for (i, (la, lb)) in a.iter().zip(b).enumerate() {
        let (da, db) = (deleted_paths(&ta, la), deleted_paths(&tb, lb));
        assert_eq!(
            da,
            db,
            "{what}: layer {i} deletes different paths ({a_label}: {da:?}, {b_label}: {db:?})\n{a_label}:\n{}\n{b_label}:\n{}",
            show_layers(a),
            show_layers(b)
        );
        apply_layer(&mut ta, la);
        apply_layer(&mut tb, lb);
        let (va, vb): (Vec<String>, Vec<String>) = (
            ta.values().cloned().collect(),
            tb.values().cloned().collect(),
        );
        assert_same_lines(
            &format!("{what}: tree after layer {i}"),
            a_label,
            &va,
            b_label,
            &vb,
        );
    }
}

/// `podman diff` with the kernel driver reports a directory that was deleted and made
/// again (an opaque directory) as `D P` plus `A P/...`; with a mount_program (naive diff)
/// as `C P` plus `D P/<old child>`. Rewrites the first form into the second, given the
/// paths of the image below.
fn normalize_diff(diff: &[String], below: &[String]) -> Vec<String> {
    let below_paths: Vec<&str> = below
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut out = Vec::new();
    for l in diff {
        if let Some(p) = l.strip_prefix("D /") {
            let recreated = diff
                .iter()
                .any(|x| x.starts_with(&format!("A /{p}/")) || x == &format!("A /{p}"));
            if recreated {
                out.push(format!("C /{p}"));
                let pre = format!("{p}/");
                for c in &below_paths {
                    if c.starts_with(&pre) && !c[pre.len()..].contains('/') {
                        let again = diff.iter().any(|x| x == &format!("A /{c}"));
                        if !again {
                            out.push(format!("D /{c}"));
                        }
                    }
                }
                continue;
            }
        }
        out.push(l.clone());
    }
    out.sort();
    out.dedup();
    out
}

/// What one flow produced, for comparison with the other driver.
struct Results {
    label: String,
    diff: Vec<String>,
    export_tree: Vec<String>,
    mount_tree: Vec<String>,
    layers: Vec<Layer>,
}

#[track_caller]
fn compare(a: &Results, b: &Results) {
    assert_same_lines(
        "`podman diff writer` (opaque directories normalized)",
        &a.label,
        &normalize_diff(&a.diff, &a.mount_tree),
        &b.label,
        &normalize_diff(&b.diff, &b.mount_tree),
    );
    assert_same_lines(
        "file tree of the committed image (podman export)",
        &a.label,
        &a.export_tree,
        &b.label,
        &b.export_tree,
    );
    assert_same_lines(
        "file tree of the mounted image",
        &a.label,
        &a.mount_tree,
        &b.label,
        &b.mount_tree,
    );
    assert_same_layers(
        "layers of the saved image",
        &a.label,
        &a.layers,
        &b.label,
        &b.layers,
    );
}

fn has_line(lines: &[String], prefix: &str) -> bool {
    lines.iter().any(|l| l.starts_with(prefix))
}

/// Asserts that `tree` has a line starting with each of `want` and none with any of `gone`.
#[track_caller]
fn assert_tree_has(label: &str, what: &str, tree: &[String], want: &[&str], gone: &[&str]) {
    for w in want {
        assert!(
            has_line(tree, w),
            "[{label}] {what} has no {w:?}:\n{}",
            tree.join("\n")
        );
    }
    for g in gone {
        assert!(!has_line(tree, g), "[{label}] {what} still has {g:?}");
    }
}

/// The whiteouts every saved image of the flows must carry, in some layer.
const SAVED_WHITEOUTS: [&str; 5] = [
    "data/.wh.a",
    "bin/.wh.vi",
    "bin/.wh.cat",
    "data/.wh.hard",
    ".wh.opq",
];

#[track_caller]
fn assert_saved_whiteouts(label: &str, layers: &[Layer]) {
    let all: Vec<&String> = layers.iter().flat_map(|l| &l.whiteouts).collect();
    for w in SAVED_WHITEOUTS {
        assert!(
            all.iter().any(|x| *x == w),
            "[{label}] no whiteout {w} in the saved image:\n{}",
            show_layers(layers)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The podman flow (rootful and rootless)
// ---------------------------------------------------------------------------------------

fn podman_flow(e: &Eng, inp: &Inputs) -> Results {
    let t0 = Instant::now();
    let rootless = e.rootless.is_some();
    let mut steps: Vec<(String, Duration)> = Vec::new();
    let mut lap = |name: &str, t: &mut Instant| {
        steps.push((name.to_string(), t.elapsed()));
        *t = Instant::now();
    };
    let mut t = Instant::now();

    e.podman(&["import", &inp.rootfs_tar, "localhost/bb"]);
    lap("import", &mut t);

    // A container that writes and deletes, then a fresh one that sees the image intact.
    e.expect(
        "run that writes and deletes",
        &[
            "run",
            "--rm",
            "localhost/bb",
            "sh",
            "-c",
            "echo hi > /f; cat /f; rm /bin/ls; rm -rf /data/sub; echo x >> /data/keep; \
           busybox ls /data | tr '\\n' ' '; echo; test -e /bin/ls || echo no-ls; cat /data/keep",
        ],
        "hi\na deep keep own \nno-ls\nkeep\nx",
    );
    e.expect(
        "a new container sees the image unchanged",
        &[
            "run",
            "--rm",
            "localhost/bb",
            "sh",
            "-c",
            "test -e /bin/ls && test ! -e /f && cat /data/keep && ls /data/sub",
        ],
        "keep\nb",
    );
    lap("run", &mut t);

    let build = |tag: &str| -> String {
        let o = e.run(
            "podman",
            &[
                "build",
                "--network",
                "none",
                "--layers",
                "-t",
                tag,
                "-f",
                &inp.containerfile,
                &inp.ctx,
            ],
        );
        assert!(
            o.status.success(),
            "[{}] podman build -t {tag} failed:\n{}",
            e.label,
            show_output(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    build("localhost/built");
    lap("build", &mut t);
    // Includes the regression check for fuse-overlayfs 1.10: after
    // `rm -rf /data/sub && mkdir /data/sub && echo new > /data/sub/c` the old b must be gone.
    e.expect(
        "content of the built image",
        &["run", "--rm", "localhost/built", "sh", "-c", BUILT_CHECK],
        BUILT_WANT,
    );
    let rebuild = build("localhost/built2");
    let hits = rebuild.matches("Using cache").count();
    assert_eq!(
        hits, BUILD_STEPS,
        "[{}] rebuild: {hits} cache hits, want {BUILD_STEPS}:\n{rebuild}",
        e.label
    );
    let id = |img: &str| e.podman(&["image", "inspect", "--format", "{{.Id}}", img]);
    assert_eq!(
        id("localhost/built"),
        id("localhost/built2"),
        "[{}] the cached rebuild made a different image",
        e.label
    );
    lap("rebuild (cached)", &mut t);

    e.podman(&[
        "run",
        "--name",
        "writer",
        "localhost/built",
        "sh",
        "-c",
        C1_SCRIPT,
    ]);
    let mut diff: Vec<String> = e
        .podman(&["diff", "writer"])
        .lines()
        .map(str::to_string)
        .collect();
    diff.sort();
    for want in [
        "A /data/new",
        "A /newdir",
        "C /data/moved",
        "D /bin/cat",
        "D /data/hard",
        "D /opq",
    ] {
        assert!(
            diff.iter().any(|l| l == want),
            "[{}] podman diff writer lacks {want:?}:\n{}",
            e.label,
            diff.join("\n")
        );
    }
    e.podman(&["commit", "-q", "writer", "localhost/committed"]);
    e.expect(
        "content of the committed image",
        &["run", "--rm", "localhost/committed", "sh", "-c",
          "cat /data/new /data/moved; test -e /bin/cat || echo nocat; test -e /opq || echo noopq; \
           ls /data | tr '\\n' ' '; echo; ls /data/deep; stat -c %a /data/sub"],
        "w\nkeep\nappended\nmore\nnocat\nnoopq\nadded.txt deep moved new own sub sym \nf\n711",
    );
    lap("run writer, diff, commit", &mut t);

    // The committed image's tree, exported from a container created from it.
    e.podman(&["create", "--name", "ex", "localhost/committed", "true"]);
    let export = e.p("export.tar");
    e.podman(&["export", "-o", &export, "ex"]);
    e.podman(&["rm", "ex"]);
    let export_tree = tree_lines(&read_tar(&export));
    assert_tree_has(
        &e.label,
        "export of the committed image",
        &export_tree,
        &[
            "data/new - 0644 0:0 size=2",
            "data/own - 4750 12:34 size=4",
            "data/sym l 0777 0:0 -> moved",
            "data/deep/f -",
            "bin/busybox - 0755 0:0",
        ],
        &[
            "data/hard ",
            "data/a ",
            "data/sub/b ",
            "opq",
            "bin/cat ",
            "bin/vi ",
            "data/deep/x",
        ],
    );
    lap("export", &mut t);

    // `podman image mount` (inside `podman unshare` when rootless): tar up what it shows.
    let mtar = e.p("mount.tar");
    e.host_sh(
        "podman",
        &format!(
        "m=$(podman image mount localhost/built) || exit 1; tar --numeric-owner --sort=name -C \"$m\" -cf {mtar} .; rc=$?; \
         podman image umount localhost/built >/dev/null || rc=1; exit $rc"
        ),
    );
    let mount_tree = tree_lines(&read_tar(&mtar));
    assert_tree_has(
        &e.label,
        "image mount of localhost/built",
        &mount_tree,
        &[
            "data/sub/c - 0644 0:0 size=4",
            "data/hard - 0600 0:0 size=14",
            "data/moved h 0600 0:0 link to data/hard",
            "opq/3 -",
            "data/deep/x/z d",
        ],
        &[
            "data/sub/b ",
            "data/a ",
            "opq/1 ",
            "opq/2 ",
            "bin/vi ",
            "data/deep/x/y",
        ],
    );
    lap("image mount", &mut t);

    e.expect(
        "--read-only",
        &[
            "run",
            "--rm",
            "--read-only",
            "localhost/bb",
            "sh",
            "-c",
            "(echo x > /f) 2>/dev/null && echo rw || echo ro-ok",
        ],
        "ro-ok",
    );
    // User namespaces: files of the image still show as 0:0 (and 12:34) inside.
    let (map, map_shown) = if rootless {
        ("0:1:1000", "0 1 1000")
    } else {
        ("0:100000:65536", "0 100000 65536")
    };
    e.expect(
        "--uidmap/--gidmap",
        &["run", "--rm", "--uidmap", map, "--gidmap", map, "localhost/built", "sh", "-c",
          "cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //'; stat -c %u:%g /data/moved /data/own /etc/passwd; \
           echo t > /data/sub/new && stat -c %u:%g /data/sub/new && cat /data/sub/new; rm /data/own && echo rm-ok"],
        &format!("{map_shown}\n0:0\n12:34\n0:0\n0:0\nt\nrm-ok"),
    );
    if let Some((uid, _)) = e.rootless {
        e.expect(
            "--userns=keep-id",
            &[
                "run",
                "--rm",
                "--userns=keep-id",
                "localhost/built",
                "sh",
                "-c",
                "id -u; stat -c %u:%g /data/moved /data/own; cat /data/sub/c",
            ],
            &format!("{uid}\n0:0\n12:34\nnew"),
        );
    }
    lap("read-only, userns", &mut t);

    // An overlay volume: writes inside must not reach the host directory.
    let vol = e.p("vol");
    fs::write(format!("{vol}/h"), "hostfile\n").unwrap();
    if let Some((uid, gid)) = e.rootless {
        sh_ok(&format!("chown {uid}:{gid} {vol}/h"));
    }
    e.expect(
        "-v SRC:DST:O",
        &["run", "--rm", "-v", &format!("{vol}:/mnt:O"), "localhost/bb", "sh", "-c",
          "cat /mnt/h; echo x > /mnt/new; cat /mnt/new; echo changed > /mnt/h; cat /mnt/h; rm /mnt/h; ls /mnt"],
        "hostfile\nx\nchanged\nnew",
    );
    assert_eq!(
        fs::read_to_string(format!("{vol}/h")).unwrap(),
        "hostfile\n",
        "[{}] :O volume changed the host file",
        e.label
    );
    assert!(
        !Path::new(&format!("{vol}/new")).exists(),
        "[{}] :O volume created a file on the host",
        e.label
    );
    lap("overlay volume", &mut t);

    let save = e.p("save.tar");
    e.podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        &save,
        "localhost/committed",
    ]);
    let layers = oci_layers(&save);
    assert_saved_whiteouts(&e.label, &layers);
    lap("save oci-archive", &mut t);

    e.podman(&["rm", "writer"]);
    e.assert_no_leftovers();
    lap("rm, rmi, leftovers", &mut t);
    eprintln!(
        "[{}] podman flow ok in {:.1?}: {}",
        e.label,
        t0.elapsed(),
        steps
            .iter()
            .map(|(n, d)| format!("{n} {d:.1?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Results {
        label: e.label.clone(),
        diff,
        export_tree,
        mount_tree,
        layers,
    }
}

fn podman_test(name: &str, rootless: bool) {
    if !engines_ready(name, &["podman", "runc", "newuidmap", "runuser"]) {
        return;
    }
    side_by_side(name, rootless, false, podman_flow);
}

/// Runs `flow` with ovlfuse as mount_program and with the native driver, side by side
/// (separate graphroots, so the two are independent), and compares what they produced.
fn side_by_side(name: &str, rootless: bool, buildah: bool, flow: fn(&Eng, &Inputs) -> Results) {
    let user = rootless.then(rootless_user);
    let td = TestDir::new(name);
    let inp = make_inputs(&td);
    let ovl = Eng::new(&td.root, Driver::Ovlfuse, user, buildah);
    let nat = Eng::new(&td.root, Driver::Native, user, buildah);
    let (r_ovl, r_nat) = std::thread::scope(|s| {
        let h = s.spawn(|| flow(&nat, &inp));
        let a = flow(&ovl, &inp);
        (a, h.join())
    });
    let r_nat = r_nat.unwrap_or_else(|p| std::panic::resume_unwind(p));
    compare(&r_ovl, &r_nat);
}

#[test]
fn podman_rootful_matches_native_overlay() {
    podman_test("podman-rootful", false);
}

#[test]
fn podman_rootless_matches_native_overlay() {
    podman_test("podman-rootless", true);
}

// ---------------------------------------------------------------------------------------
// buildah
// ---------------------------------------------------------------------------------------

fn buildah_flow(e: &Eng, inp: &Inputs) -> Results {
    let t0 = Instant::now();
    let b = |args: &[&str]| e.ok("buildah", args);
    let run = |c: &str, script: &str| {
        b(&[
            "run",
            "--isolation",
            "oci",
            "--network",
            "none",
            c,
            "--",
            "sh",
            "-c",
            script,
        ])
    };

    let c = b(&["from", "--pull-never", "scratch"]).trim().to_string();
    b(&["add", &c, &inp.rootfs_tar, "/"]);
    b(&["commit", "-q", &c, "localhost/bb"]);
    b(&["rm", &c]);

    b(&[
        "bud",
        "--pull-never",
        "--layers",
        "--isolation",
        "oci",
        "--network",
        "none",
        "-t",
        "localhost/built",
        "-f",
        &inp.containerfile,
        &inp.ctx,
    ]);
    let c = b(&["from", "--pull-never", "localhost/built"])
        .trim()
        .to_string();
    let got = run(&c, BUILT_CHECK);
    assert_eq!(
        got.trim_end(),
        BUILT_WANT,
        "[{}] buildah: content of the built image",
        e.label
    );
    run(&c, C1_SCRIPT);
    let got = run(
        &c,
        "ls /data | tr '\\n' ' '; echo; test -e /bin/cat || echo nocat; cat /data/deep/f",
    );
    assert_eq!(
        got.trim_end(),
        "added.txt deep moved new own sub sym \nnocat\nfresh",
        "[{}] buildah run after deletions",
        e.label
    );
    b(&["commit", "-q", &c, "localhost/committed"]);
    b(&["rm", &c]);

    // The committed image's tree through `buildah mount` of a new working container.
    let c = b(&["from", "--pull-never", "localhost/committed"])
        .trim()
        .to_string();
    let mtar = e.p("mount.tar");
    e.host_sh(
        "buildah",
        &format!(
            "m=$(buildah mount {c}) || exit 1; tar --numeric-owner --sort=name -C \"$m\" -cf '{mtar}' .; \
             rc=$?; buildah umount {c} >/dev/null || rc=1; exit $rc"
        ),
    );
    b(&["rm", &c]);
    let mount_tree = tree_lines(&read_tar(&mtar));
    for gone in [
        "data/hard ",
        "opq",
        "bin/cat ",
        "bin/vi ",
        "data/sub/b ",
        "data/deep/x",
    ] {
        assert!(
            !has_line(&mount_tree, gone),
            "[{}] buildah: committed image still has {gone:?}",
            e.label
        );
    }
    assert!(
        has_line(&mount_tree, "data/new - 0644 0:0 size=2"),
        "[{}] buildah: no data/new:\n{}",
        e.label,
        mount_tree.join("\n")
    );

    let save = e.p("push.tar");
    b(&[
        "push",
        "localhost/committed",
        &format!("oci-archive:{save}"),
    ]);
    let layers = oci_layers(&save);
    assert_saved_whiteouts(&e.label, &layers);
    e.assert_no_leftovers();
    eprintln!("[{}] buildah flow ok in {:.1?}", e.label, t0.elapsed());
    Results {
        label: e.label.clone(),
        diff: vec![],
        export_tree: vec![],
        mount_tree,
        layers,
    }
}

fn buildah_test(name: &str, rootless: bool) {
    let progs: &[&str] = if rootless {
        &["buildah", "podman", "runc", "newuidmap", "runuser"]
    } else {
        &["buildah", "podman", "runc"]
    };
    if !engines_ready(name, progs) {
        return;
    }
    side_by_side(name, rootless, true, buildah_flow);
}

#[test]
fn buildah_rootful_bud_and_commit() {
    buildah_test("buildah-rootful", false);
}

#[test]
fn buildah_rootless_bud_and_commit() {
    buildah_test("buildah-rootless", true);
}
