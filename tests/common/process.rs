//! Processes: running ovlfuse and other tools with a timeout, finding the daemon and its
//! threads, waiting for processes to exit.

use super::*;

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => {
            // "pid (comm) S ..." — comm may contain spaces and parens.
            let state = s
                .rfind(')')
                .and_then(|i| s[i + 1..].trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

/// Processes (pid, command), one per mount namespace other than ours, whose namespace
/// holds a FUSE mount of the superblock `dev` (`major:minor`, see `MountEntry::dev`).
pub fn namespaces_holding(dev: &str) -> Vec<(u32, String)> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
            continue;
        };
        if Some(&ns) == ours.as_ref() || !seen.insert(ns) {
            continue;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
            continue;
        };
        let holds = parse_mountinfo(&text)
            .iter()
            .any(|m| m.dev == dev && m.fstype.starts_with("fuse"));
        if holds {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// Polls `done` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bounded wait for `pid` to be gone (or a zombie). True when it is.
pub fn wait_pid_exit(pid: u32, timeout: Duration) -> bool {
    wait_until(timeout, || !pid_alive(pid))
}

/// Each thread of process `pid`: name, scheduler state, where it waits (wchan) and, where
/// we may read it, its kernel stack; so that a daemon that will not exit says why.
pub fn thread_states(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task: the process is gone)\n");
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .map(|l| l["State:".len()..].trim().to_string())
            .unwrap_or_default();
        out += &format!(
            "  {} {} [{}] wchan {}\n",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan").trim()
        );
        for l in read("stack").lines() {
            out += &format!("      {l}\n");
        }
    }
    out
}

/// Environment variable naming the directory a test launched ovlfuse from.
pub const LAUNCH_CWD_ENV: &str = "OVLFUSE_TEST_LAUNCH_CWD";

/// The pid of the ovlfuse daemon serving `mnt`: a process running the test binary whose
/// command line names the mount point (absolute, or relative to its launch directory: the
/// one [`run_ovlfuse_in`] recorded in its environment, else its current directory).
pub fn find_daemon_pid(mnt: &Path) -> Option<u32> {
    let mnt = absolute(mnt);
    let bin = fs::canonicalize(ovlfuse_bin()).unwrap_or_else(|_| ovlfuse_bin());
    let me = std::process::id();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        let exe_s = exe.to_string_lossy();
        let exe = PathBuf::from(exe_s.strip_suffix(" (deleted)").unwrap_or(&exe_s));
        if exe != bin {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        // Where relative arguments were resolved: the launch directory recorded by
        // run_ovlfuse_in (a daemon moves to "/"), else the process's current directory.
        let launch_cwd: Option<PathBuf> = fs::read(format!("/proc/{pid}/environ"))
            .ok()
            .and_then(|env| {
                env.split(|b| *b == 0).find_map(|kv| {
                    kv.strip_prefix(LAUNCH_CWD_ENV.as_bytes())
                        .and_then(|r| r.strip_prefix(b"="))
                        .map(|v| PathBuf::from(OsStr::from_bytes(v)))
                })
            })
            .or_else(|| fs::read_link(format!("/proc/{pid}/cwd")).ok());
        let hit = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty() && !a.starts_with(b"-"))
            .any(|a| {
                let ap = Path::new(OsStr::from_bytes(a));
                if ap.is_absolute() {
                    absolute(ap) == mnt
                } else {
                    match &launch_cwd {
                        Some(cwd) => absolute(&cwd.join(ap)) == mnt,
                        None => false,
                    }
                }
            });
        if hit && pid_alive(pid) {
            found.push(pid);
        }
    }
    found.sort();
    found.pop()
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured in files (so a daemon
/// that keeps them open cannot block us), killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let _ = fs::create_dir_all(TEST_ROOT);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let base = format!("{TEST_ROOT}/.out-{}-{n}", std::process::id());
    let (out_p, err_p) = (
        PathBuf::from(format!("{base}.stdout")),
        PathBuf::from(format!("{base}.stderr")),
    );
    let out_f = fs::File::create(&out_p).expect("create stdout capture file");
    let err_f = fs::File::create(&err_p).expect("create stderr capture file");
    cmd.stdin(Stdio::null()).stdout(out_f).stderr(err_f);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            killed = true;
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = fs::read(&out_p).unwrap_or_default();
    let mut stderr = fs::read(&err_p).unwrap_or_default();
    let _ = fs::remove_file(&out_p);
    let _ = fs::remove_file(&err_p);
    if killed {
        stderr.extend_from_slice(
            format!("\n[test harness: killed {cmd:?} after {timeout:?} without exiting]\n")
                .as_bytes(),
        );
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs the ovlfuse binary with `args` (60 s limit). If it mounted something, the caller's
/// Scratch still cleans it up.
pub fn run_ovlfuse(args: &[&str]) -> Output {
    let mut cmd = Command::new(ovlfuse_bin());
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// Like [`run_ovlfuse`] but in `cwd` (for relative layer paths).
pub fn run_ovlfuse_in(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(ovlfuse_bin());
    // Recorded so that find_daemon_pid can resolve the daemon's relative arguments.
    cmd.args(args)
        .current_dir(cwd)
        .env(LAUNCH_CWD_ENV, absolute(cwd));
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// Bounded wait for a spawned child; None if it is still running after `timeout`.
pub fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Human-readable summary of a finished command.
pub fn show_output(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub(crate) fn run_tool(prog: &str, args: &[&OsStr]) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(30))
}

/// Runs an unmount command (`umount ...` or `fusermount3 -u ...`), retrying for up to 5 s
/// while it fails with "busy".
///
/// Why: tests run in parallel threads of one process, and every process another thread
/// spawns (or forks) starts with a copy of the whole fd table until its exec closes the
/// O_CLOEXEC descriptors. A descriptor this test just closed can thus briefly pin the mount
/// and make the unmount fail with EBUSY. A mount that stays busy still fails after 5 s.
pub fn run_unmount(prog: &str, args: &[&OsStr]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = run_tool(prog, args);
        let busy = String::from_utf8_lossy(&o.stderr)
            .to_lowercase()
            .contains("busy");
        if o.status.success() || !busy || Instant::now() >= deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
