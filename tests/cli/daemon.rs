//! The daemon's life: backgrounding, foreground mode, the ways a mount ends (unmount,
//! lazy unmount, signals, other mount namespaces), its open-file limit and its log.

use super::*;

#[test]
fn daemon_mode_returns_only_when_mount_is_live() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-daemon-live");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let o = run_ovlfuse(&["-o", &st.full_opts(), &s(&st.mnt)]);
    // Check immediately: no polling allowed here, exit 0 must mean "mounted".
    let mounted_now = is_fuse_mounted(&st.mnt);
    let stat_now = fs::metadata(st.mnt.join("a"));
    let guard = MountGuard::adopt_fuse(&st.mnt);
    assert!(
        o.status.success(),
        "ovlfuse exited non-zero:\n{}",
        show_output(&o)
    );
    assert!(
        mounted_now,
        "ovlfuse exited 0 but {:?} was not (yet) a FUSE mount; mounts: {:?}",
        st.mnt,
        mount_at(&st.mnt)
    );
    let md = stat_now.unwrap_or_else(|e| {
        panic!(
            "stat of a lower file right after exit 0: {}",
            describe_err(&e)
        )
    });
    assert_eq!(md.len(), b"from lower0".len() as u64);
    let pid = guard
        .pid()
        .expect("no ovlfuse daemon process found serving the mount after exit 0");
    assert!(pid_alive(pid));
    check_simple_view(&st.mnt);
    guard.unmount();
    lc.verify();
}

#[test]
fn foreground_mode_stays_and_exits_zero_after_unmount() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-foreground");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let errf = sc.path("fg.stderr");
    let mut child = Command::new(ovlfuse_bin())
        .args(["-f", "-o", &st.full_opts(), &s(&st.mnt)])
        .stdin(Stdio::null())
        .stdout(fs::File::create(sc.path("fg.stdout")).unwrap())
        .stderr(fs::File::create(&errf).unwrap())
        .spawn()
        .expect("spawn ovlfuse -f");
    let started = wait_for_foreground_mount(&mut child, &st.mnt);
    if let Started::Exited(status) = started {
        panic!(
            "ovlfuse -f exited ({status:?}) before mounting; stderr:\n{}",
            fs::read_to_string(&errf).unwrap_or_default()
        );
    }
    let guard = MountGuard::adopt_fuse_pid(&st.mnt, Some(child.id()));
    if !matches!(started, Started::Mounted) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "ovlfuse -f did not mount within 10 s; stderr:\n{}",
            fs::read_to_string(&errf).unwrap_or_default()
        );
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "ovlfuse -f must keep running in the foreground while mounted"
    );
    check_simple_view(&st.mnt);
    fs::write(st.mnt.join("new"), b"n").expect("write through the foreground mount");
    guard.forget();
    let o = run_unmount("fusermount3", &[OsStr::new("-u"), st.mnt.as_os_str()]);
    assert!(
        o.status.success(),
        "fusermount3 -u failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = wait_child(&mut child, Duration::from_secs(10));
    let status = match status {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ovlfuse -f still running 10 s after fusermount3 -u");
        }
    };
    assert!(
        status.success(),
        "ovlfuse -f exited with {status:?} after a clean unmount; stderr:\n{}",
        fs::read_to_string(&errf).unwrap_or_default()
    );
    assert_eq!(fs::read(st.upper.join("new")).unwrap(), b"n");
    lc.verify();
}

#[test]
fn daemon_exits_after_fusermount3_u() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-exit-fusermount");
    let (st, g) = mount_simple(&sc);
    let lc = LowerCheck::new(&st.lowers);
    check_simple_view(&st.mnt);
    // unmount() runs fusermount3 -u and asserts the daemon exits within 10 s.
    g.unmount();
    assert!(!is_mounted(&st.mnt));
    lc.verify();
}

#[test]
fn daemon_exits_after_umount() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-exit-umount");
    let (st, g) = mount_simple(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let pid = g.pid().unwrap();
    check_simple_view(&st.mnt);
    let o = run_unmount("umount", &[st.mnt.as_os_str()]);
    assert!(
        o.status.success(),
        "umount failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    g.forget();
    assert!(!is_mounted(&st.mnt));
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon pid {pid} still running 10 s after umount"
    );
    lc.verify();
}

#[test]
fn daemon_exits_after_lazy_umount_once_last_file_is_closed() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-exit-umount-l");
    let (st, g) = mount_simple(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let pid = g.pid().unwrap();
    let f = ok(fs::File::open(st.mnt.join("b")), "open b");
    let o = run_unmount("umount", &[OsStr::new("-l"), st.mnt.as_os_str()]);
    assert!(
        o.status.success(),
        "umount -l failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    g.forget();
    assert!(!is_mounted(&st.mnt), "mount still listed after umount -l");
    // The detached mount still serves the open file.
    let mut buf = Vec::new();
    use std::io::Read;
    let mut f = f;
    ok(
        f.read_to_end(&mut buf),
        "read from a file opened before umount -l",
    );
    assert_eq!(buf, b"from lower1");
    assert!(
        pid_alive(pid),
        "daemon exited while a file of the detached mount was still open"
    );
    drop(f);
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon pid {pid} still running 10 s after umount -l and closing the last file"
    );
    lc.verify();
}

#[test]
fn lazy_umount_without_open_files_ends_daemon() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-exit-umount-l2");
    let (st, g) = mount_simple(&sc);
    let pid = g.pid().unwrap();
    let o = run_unmount("umount", &[OsStr::new("-l"), st.mnt.as_os_str()]);
    assert!(
        o.status.success(),
        "umount -l failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    g.forget();
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon pid {pid} still running 10 s after umount -l"
    );
}

/// A process that made a mount namespace while the mount was up (`unshare -m`, a
/// container) holds a copy of the mount there: the daemon serves that copy after the
/// unmount in ours, and exits once the copy goes, as the FUSE connection ends only then.
#[test]
fn daemon_serves_a_copy_of_its_mount_in_another_namespace_until_it_goes() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-exit-ns-copy");
    let (st, g) = mount_simple(&sc);
    let pid = g.pid().unwrap();
    let dev = mount_at(&st.mnt).expect("the mount is listed").dev;
    let b = st.mnt.join("b");
    // Reads b, says so, waits for a line on stdin, reads b again.
    let script = r#"cat "$1" && echo && echo ready && read line && cat "$1""#;
    let mut holder = ok(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&b)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn(),
        "unshare -m",
    );
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut first = String::new();
    use std::io::{BufRead, Read, Write};
    ok(out.read_line(&mut first), "the holder's first read");
    let mut ready = String::new();
    ok(out.read_line(&mut ready), "the holder's ready line");
    assert_eq!(
        (first.as_str(), ready.as_str()),
        ("from lower1\n", "ready\n")
    );
    let held = namespaces_holding(&dev);
    assert!(
        held.iter().any(|(_, comm)| comm == "sh"),
        "the holder's namespace is not found holding the mount ({dev}): {held:?}"
    );
    let o = run_unmount("fusermount3", &[OsStr::new("-u"), st.mnt.as_os_str()]);
    assert!(o.status.success(), "fusermount3 -u: {}", show_output(&o));
    g.forget();
    assert!(
        !is_mounted(&st.mnt),
        "still mounted here after fusermount3 -u"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pid_alive(pid),
        "the daemon exited while another namespace still held its mount"
    );
    ok(
        holder.stdin.take().unwrap().write_all(b"go\n"),
        "wake the holder",
    );
    let mut second = String::new();
    ok(out.read_to_string(&mut second), "the holder's second read");
    let status = ok(holder.wait(), "wait for the holder");
    assert!(
        status.success(),
        "the copy in the other namespace stopped serving after our unmount: {status:?}, \
         read {second:?}"
    );
    assert_eq!(
        second, "from lower1",
        "read through the copy after our unmount"
    );
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon pid {pid} still running 10 s after the last copy of its mount went"
    );
}

#[test]
fn daemon_does_not_hold_the_callers_stdout_stderr_pipes() {
    if !fuse_available() {
        return;
    }
    // `out=$(ovlfuse ...)` or a runtime capturing output through pipes must not hang until
    // unmount: the backgrounded daemon has to let go of the caller's stdout/stderr.
    let sc = Scratch::new("cli-daemon-pipes");
    let st = simple_stack(&sc);
    let mut child = Command::new(ovlfuse_bin())
        .args(["-o", &st.full_opts(), &s(&st.mnt)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ovlfuse");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        let _ = tx.send(("stdout", v));
    });
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        let _ = tx2.send(("stderr", v));
    });
    let status = wait_child(&mut child, Duration::from_secs(60));
    let guard = MountGuard::adopt_fuse(&st.mnt);
    let status = status.expect("ovlfuse did not exit within 60 s");
    assert!(status.success(), "ovlfuse failed: {status:?}");
    assert!(is_fuse_mounted(&st.mnt));
    // Both pipes must reach EOF while the mount is still up.
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(_) => {}
            Err(_) => panic!("the ovlfuse daemon still holds the caller's stdout or stderr pipe 10 s after the launcher exited"),
        }
    }
    guard.unmount();
}

fn proc_stat_field(pid: u32, idx_after_comm: usize) -> Option<i64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(idx_after_comm)?.parse().ok()
}

#[test]
fn daemon_is_detached_from_the_launcher() {
    if !fuse_available() {
        return;
    }
    // Like libfuse's fuse_daemonize(): own session (a Ctrl-C or SIGHUP aimed at the
    // launcher's terminal/process group must not kill the mount), cwd "/" (it must not pin
    // the directory it was started in), stdin not the caller's.
    let sc = Scratch::new("cli-detached");
    let st = simple_stack(&sc);
    let o = run_ovlfuse_in(
        &sc.root,
        &[
            "-o",
            "lowerdir=lower0:lower1,upperdir=upper,workdir=work",
            "mnt",
        ],
    );
    let g = MountGuard::adopt_fuse(&st.mnt);
    assert!(o.status.success(), "{}", show_output(&o));
    let pid = g.pid().expect("daemon pid");
    // stat fields after "(comm) ": 0 state, 1 ppid, 2 pgrp, 3 session
    let my_sid = proc_stat_field(std::process::id(), 3).unwrap();
    let sid = proc_stat_field(pid, 3).unwrap();
    assert_ne!(
        sid, my_sid,
        "the daemon stayed in the launcher's session (no setsid)"
    );
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(
        cwd,
        PathBuf::from("/"),
        "the daemon keeps its cwd at {cwd:?}, pinning that file system"
    );
    check_simple_view(&st.mnt);
    g.unmount();
}

#[test]
fn sigterm_to_the_daemon_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    // As with libfuse daemons (fuse-overlayfs): SIGTERM ends the session and unmounts, rather
    // than leaving a dead "Transport endpoint is not connected" mount behind.
    let sc = Scratch::new("cli-sigterm");
    let (st, g) = mount_simple(&sc);
    let lc = LowerCheck::new(&st.lowers);
    ok(fs::write(st.mnt.join("c"), b"c"), "write before SIGTERM");
    let pid = g.pid().unwrap();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon ignored SIGTERM for 10 s"
    );
    let still = mount_at(&st.mnt);
    if still.is_none() {
        g.forget();
    }
    assert!(
        still.is_none(),
        "after SIGTERM the daemon exited but left the mount behind: {still:?}"
    );
    assert_eq!(fs::read(st.upper.join("c")).unwrap(), b"c");
    lc.verify();
}

#[test]
fn an_exiting_daemon_leaves_a_new_mount_at_its_mount_point_alone() {
    if !fuse_available() {
        return;
    }
    // A daemon with many layers takes a moment to exit after its unmount (each layer is
    // a private mount clone to release). A new overlay mounted at the same place in that
    // moment (a container restarted at once) must survive the old daemon's exit: fuser
    // 0.18 unmounts by path on its way out unless the daemon leaves first.
    let sc = Scratch::new("cli-remount");
    let old = Stack::new_at(&sc.root.join("old"), 200);
    let new = simple_stack_at(&sc.root.join("new"));
    let g_old = mount_ovlfuse(&old, &[]);
    let old_pid = g_old.pid().expect("daemon of the first mount");
    let o = Command::new("umount").arg(&old.mnt).output().unwrap();
    assert!(o.status.success(), "umount: {}", stderr_of(&o));
    g_old.forget();
    let opts = new.full_opts();
    let g_new = mount_ovlfuse_args(&["-o", &opts, &s(&old.mnt)], &old.mnt);
    assert!(
        wait_pid_exit(old_pid, Duration::from_secs(10)),
        "the first daemon did not exit"
    );
    assert!(
        is_fuse_mounted(&old.mnt),
        "the new mount at {:?} went away when the old daemon exited",
        old.mnt
    );
    check_simple_view(&old.mnt);
    g_new.unmount();
}

/// Mounts with `prlimit --nofile=SOFT:HARD ovlfuse -o OPTS MNT`.
fn mount_with_fd_limit(soft: u32, hard: u32, opts: &str, mnt: &Path) -> MountGuard {
    let o = Command::new("prlimit")
        .arg(format!("--nofile={soft}:{hard}"))
        .arg(ovlfuse_bin())
        .args(["-o", opts])
        .arg(mnt)
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        o.status.success(),
        "mount with nofile {soft}:{hard} failed: {}",
        show_output(&o)
    );
    MountGuard::adopt_fuse(mnt)
}

/// The daemon's soft limit on open files (`Max open files` in /proc/PID/limits).
fn soft_fd_limit(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Every file open through the mount holds an fd of the daemon, and so does every layer and
/// each directory it keeps open for speed. Started with the usual soft limit of 1024 the
/// daemon raises it to the hard limit, as fuse-overlayfs does; and where the hard limit
/// itself is low, its cached directory fds make room, so that files in many directories can
/// still be read, held open and created. (Before, a daemon with 1024 failed opens with
/// EMFILE once it had walked a thousand directories, even with no file open.)
#[test]
fn open_file_limit_is_raised_and_cached_directory_fds_make_room() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-fd-limit");
    let st = Stack::new_at(&sc.root, 1);
    const DIRS: usize = 400;
    for i in 0..DIRS {
        let d = st.lowers[0].join(format!("d{i}"));
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), i.to_string()).unwrap();
    }
    let lc = LowerCheck::new(&st.lowers);

    let g = mount_with_fd_limit(1024, 4096, &st.full_opts(), &st.mnt);
    let pid = g.pid().expect("the daemon's pid");
    assert_eq!(
        soft_fd_limit(pid),
        4096,
        "soft limit raised to the hard one"
    );
    g.unmount();

    // 128 fds in all: about 25 go to the daemon itself, 32 to cached directories.
    let g = mount_with_fd_limit(128, 128, &st.full_opts(), &st.mnt);
    let pid = g.pid().expect("the daemon's pid");
    assert_eq!(soft_fd_limit(pid), 128);
    let file = |i: usize| st.mnt.join(format!("d{i}/f"));
    for i in 0..DIRS {
        let got = ok(fs::read_to_string(file(i)), &format!("read d{i}/f"));
        assert_eq!(got, i.to_string());
    }
    let held: Vec<fs::File> = (0..80)
        .map(|i| ok(fs::File::open(file(i)), &format!("hold d{i}/f open")))
        .collect();
    for i in 0..20 {
        let p = st.mnt.join(format!("d{}/new", DIRS - 1 - i));
        ok(
            fs::write(&p, b"new"),
            &format!("create {p:?} with 80 files open"),
        );
        let p = file(DIRS - 1 - i);
        let append = fs::OpenOptions::new().append(true).open(&p);
        ok(
            std::io::Write::write_all(
                &mut ok(append, &format!("open {p:?} to append (copy-up)")),
                b"+",
            ),
            &format!("append to {p:?}"),
        );
    }
    drop(held);
    g.unmount();
    assert_eq!(
        fs::read(st.upper.join(format!("d{}/new", DIRS - 1))).unwrap(),
        b"new"
    );
    assert_eq!(
        fs::read_to_string(st.upper.join(format!("d{}/f", DIRS - 20))).unwrap(),
        format!("{}+", DIRS - 20)
    );
    lc.verify();
}

/// In the background the daemon's stderr is /dev/null, so its log records go to the system
/// log: here a SIGTERM's "unmounting" line at daemon.info, tagged with the daemon's pid.
/// The test listens on /dev/log itself, so it runs only where no system logger holds that
/// socket, and says so otherwise.
#[test]
fn a_background_daemon_logs_to_the_system_log() {
    if !fuse_available() {
        return;
    }
    let dev_log = Path::new("/dev/log");
    if fs::symlink_metadata(dev_log).is_ok() {
        eprintln!("SKIPPED: /dev/log belongs to this machine's system logger; not taken over");
        return;
    }
    let log = ok(
        std::os::unix::net::UnixDatagram::bind(dev_log),
        "listen on /dev/log",
    );
    struct Unbind;
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = fs::remove_file("/dev/log");
        }
    }
    let _unbind = Unbind;
    ok(
        log.set_read_timeout(Some(Duration::from_secs(10))),
        "log timeout",
    );
    let sc = Scratch::new("cli-syslog");
    let st = simple_stack(&sc);
    let status = ok(
        Command::new(ovlfuse_bin())
            .env("RUST_LOG", "info")
            .args(["-o", &st.full_opts(), &s(&st.mnt)])
            .status(),
        "run ovlfuse",
    );
    let g = MountGuard::adopt_fuse(&st.mnt);
    assert!(status.success(), "ovlfuse failed: {status:?}");
    let pid = g.pid().expect("daemon pid");
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let mut seen = Vec::new();
    let line = loop {
        let mut buf = [0u8; 4096];
        let n = match log.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no 'unmounting' record on /dev/log within 10 s ({e}); got {seen:?}"),
        };
        // Daemons of other tests may log here meanwhile.
        let l = String::from_utf8_lossy(&buf[..n]).into_owned();
        if l.contains(&format!("[{pid}]")) && l.contains("unmounting") {
            break l;
        }
        seen.push(l);
    };
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon ignored SIGTERM for 10 s"
    );
    if mount_at(&st.mnt).is_none() {
        g.forget();
    }
    let want = format!("<30>ovlfuse[{pid}]: INFO ");
    assert!(line.starts_with(&want), "{line:?} does not start {want:?}");
    assert!(
        line.ends_with(&format!("unmounting {}", st.mnt.display())),
        "{line:?}"
    );
}
