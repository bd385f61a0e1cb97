//! Options whose effect shows from outside: dev/suid, the read-ahead window, poll,
//! io_uring and its fallback, threaded=0.

use super::*;

#[test]
fn dev_and_suid_options_are_honoured() {
    if !fuse_available() {
        return;
    }
    // As root the default is dev,suid (as kernel overlayfs and mount(8) for root); `-o nodev,nosuid`
    // restrict it, and a later `-o dev,suid` lifts that again (last one wins, as with mount(8)).
    let sc = Scratch::new("cli-dev-suid");
    let st = simple_stack(&sc);
    mknod(
        &st.lowers[0].join("null"),
        libc::S_IFCHR | 0o666,
        makedev(1, 3),
    )
    .unwrap();
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &["nodev", "nosuid"]);
    let m = mount_at(&st.mnt).unwrap();
    assert!(
        m.opts.split(',').any(|o| o == "nodev"),
        "-o nodev mount should be nodev: {m:?}"
    );
    expect_errno(
        fs::OpenOptions::new().write(true).open(st.mnt.join("null")),
        libc::EACCES,
        "open a device on a nodev mount",
    );
    g.unmount();
    for extra in [&[][..], &["nodev", "nosuid", "dev", "suid"][..]] {
        let g = mount_ovlfuse(&st, extra);
        let m = mount_at(&st.mnt).unwrap();
        let opts: Vec<&str> = m.opts.split(',').collect();
        assert!(
            !opts.contains(&"nodev") && !opts.contains(&"nosuid"),
            "mount with {extra:?} still has {:?}",
            m.opts
        );
        let w = fs::OpenOptions::new()
            .write(true)
            .open(st.mnt.join("null"))
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(b"into /dev/null")
            });
        ok(w, "write to a char 1:3 device node through a dev mount");
        g.unmount();
    }
    lc.verify();
}

#[test]
fn mount_raises_the_read_ahead_window_to_what_one_spliced_reply_carries() {
    if !fuse_available() {
        return;
    }
    // The kernel caps what FUSE init asks for at 128 KiB; the daemon raises its mount's
    // window itself (root only), so that reads of lower files come in 1 MiB requests. A
    // daemon whose pipes stop at 1 MiB (root without CAP_SYS_RESOURCE) cannot splice a
    // reply of 1 MiB and its header: it asks for 1020 KiB, and the mount's max_read says
    // so, which keeps every READ within a pipe.
    let sc = Scratch::new("cli-readahead");
    let (st, g) = mount_simple(&sc);
    let dev = fs::metadata(&st.mnt).unwrap().dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kb: u32 = fs::read_to_string(&knob)
        .unwrap_or_else(|e| panic!("read {knob}: {e}"))
        .trim()
        .parse()
        .unwrap();
    let m = mount_at(&st.mnt).expect("the mount in the mount table");
    let max_read = m
        .super_opts
        .split(',')
        .find_map(|o| o.strip_prefix("max_read="))
        .map(|v| v.parse::<u32>().expect("max_read is a number"));
    match max_read {
        None => assert!(kb >= 1024, "{knob} is {kb}, and no max_read"),
        Some(n) => {
            assert_eq!(n, 1020 << 10, "max_read: one pipe's room (255 pages)");
            assert!(kb >= 1020, "{knob} is {kb} with max_read={n}");
        }
    }
    g.unmount();
}

/// A foreground daemon (`ovlfuse -f -o OPTS,extra MNT`) with its stderr in a file.
struct Foreground {
    child: std::process::Child,
    guard: MountGuard,
    stderr: PathBuf,
}

impl Foreground {
    /// Starts it and waits for its mount; `started` runs once the wait ends, before the
    /// mount is checked (to undo what only the start-up had to see). Panics with the
    /// daemon's stderr when the mount does not come up.
    fn start(sc: &Scratch, st: &Stack, extra: &str, started: impl FnOnce()) -> Foreground {
        let stderr = sc.path("daemon.stderr");
        let mut child = Command::new(ovlfuse_bin())
            .args([
                "-f",
                "-o",
                &format!("{},{extra}", st.full_opts()),
                &s(&st.mnt),
            ])
            // The log level comes from the options alone.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn ovlfuse -f");
        let appeared = matches!(
            wait_for_foreground_mount(&mut child, &st.mnt),
            Started::Mounted
        );
        started();
        let guard = MountGuard::adopt_fuse_pid(&st.mnt, Some(child.id()));
        let fg = Foreground {
            child,
            guard,
            stderr,
        };
        if !appeared {
            let mut child = fg.child;
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ovlfuse -o ..,{extra} did not mount; stderr:\n{}",
                fs::read_to_string(&fg.stderr).unwrap_or_default()
            );
        }
        fg
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn unmount(mut self) {
        self.guard.unmount();
        let _ = wait_child(&mut self.child, Duration::from_secs(10));
    }
}

/// `-o debug` (as `-d`) logs a line for each request answered: what it was, about which
/// node, and how it was answered.
#[test]
fn debug_logs_a_line_for_each_request_answered() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-debug-log");
    let st = simple_stack(&sc);
    let fg = Foreground::start(&sc, &st, "debug", || {});
    assert!(fs::symlink_metadata(st.mnt.join("no-such-name")).is_err());
    fs::write(st.mnt.join("new"), b"n").expect("create through the mount");
    expect_errno(
        lgetxattr(&st.mnt.join("new"), "user.none"),
        libc::ENODATA,
        "getxattr of an absent name",
    );
    let log = fg.stderr();
    fg.unmount();
    let has = |op: &str, outcome: &str| {
        log.lines()
            .any(|l| l.contains(&format!("{op} node ")) && l.contains(outcome))
    };
    assert!(has("LOOKUP", " bytes"), "no line for the lookups:\n{log}");
    assert!(has("CREATE", " bytes"), "no line for the create:\n{log}");
    assert!(
        has("GETXATTR", "No data available"),
        "no line for the getxattr that failed:\n{log}"
    );
}

/// poll(2) and select(2) on files of the mount find them ready, as on the layers, and the
/// daemon logs nothing for it (fuser warned "Not Implemented" at the first poll over
/// /dev/fuse, at the default log level).
#[test]
fn polling_files_finds_them_ready_and_logs_nothing() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-poll");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    for transport in ["uring=off", "uring=auto"] {
        let fg = Foreground::start(&sc, &st, transport, || {});
        let lower = fs::File::open(st.mnt.join("b")).expect("open the lower file b");
        let upper = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(st.mnt.join(format!("polled-{}", transport.len())))
            .expect("create a file to poll");
        for _ in 0..2 {
            let mut fds = [
                libc::pollfd {
                    fd: lower.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: upper.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                },
            ];
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
            assert_eq!(n, 2, "{transport}: poll found {n} of 2 files ready");
            assert_ne!(fds[0].revents & libc::POLLIN, 0, "{transport}: {fds:?}");
            assert_ne!(fds[1].revents & libc::POLLOUT, 0, "{transport}: {fds:?}");
        }
        let err = fg.stderr();
        drop((lower, upper));
        fg.unmount();
        assert!(
            !err.contains("Not Implemented") && !err.contains("WARN"),
            "{transport}: the daemon logged:\n{err}"
        );
    }
    lc.verify();
}

/// Puts `kernel.io_uring_disabled` back as it was, even when the test fails.
struct IoUringSysctl(String);

const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

impl Drop for IoUringSysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(IO_URING_DISABLED, &self.0) {
            eprintln!("could not restore {IO_URING_DISABLED} to {}: {e}", self.0);
        }
    }
}

/// `uring=on` on a system that refuses io_uring (kernel.io_uring_disabled=2): the mount
/// still comes up, serves over /dev/fuse, and says why on stderr. (Other tests of this
/// binary mount with `uring=auto` or `off`, which the setting cannot break; the mount
/// suites that run over io_uring are other binaries, which cargo runs one at a time.)
#[test]
fn io_uring_refused_by_the_system_falls_back_to_dev_fuse_with_a_warning() {
    if !fuse_uring_available() {
        return;
    }
    let old = fs::read_to_string(IO_URING_DISABLED)
        .unwrap_or_else(|e| panic!("read {IO_URING_DISABLED}: {e}"))
        .trim()
        .to_string();
    let sc = Scratch::new("cli-uring-refused");
    let st = simple_stack(&sc);
    let sysctl = IoUringSysctl(old);
    fs::write(IO_URING_DISABLED, "2").unwrap_or_else(|e| panic!("disable io_uring: {e}"));
    // Refused only while the mount starts up.
    let fg = Foreground::start(&sc, &st, "uring=on", || drop(sysctl));
    check_simple_view(&st.mnt);
    fs::write(st.mnt.join("new"), b"n").expect("write through the mount");
    let rings = ring_threads(fg.child.id());
    assert!(
        rings.is_empty(),
        "ring threads despite the refusal: {rings:?}"
    );
    let err = fg.stderr();
    assert!(
        err.contains("cannot set up io_uring") && err.contains("serving /dev/fuse"),
        "no warning about the refusal on stderr:\n{err}"
    );
    fg.unmount();
    assert_eq!(fs::read(st.upper.join("new")).unwrap(), b"n");
}

/// `threaded=0` promises one serving thread: no io_uring threads even where the kernel
/// offers io_uring (it needs one per CPU), no stat-ahead helpers, and a warning when
/// `uring=on` or `statahead=on` asked for them.
#[test]
fn threaded_0_serves_dev_fuse_on_one_thread_even_with_io_uring_offered() {
    if !fuse_uring_available() {
        return;
    }
    let sc = Scratch::new("cli-threaded0");
    let st = simple_stack(&sc);
    let fg = Foreground::start(&sc, &st, "threaded=0,uring=on,statahead=on", || {});
    check_simple_view(&st.mnt);
    fs::write(st.mnt.join("new"), b"n").expect("write through the mount");
    // A listing big enough for stat-ahead, which `statahead=on` would share.
    for i in 0..40 {
        fs::write(st.mnt.join(format!("many{i}")), b"m").expect("write through the mount");
    }
    assert_eq!(
        fs::read_dir(&st.mnt).expect("list the mount").count(),
        4 + 1 + 40
    );
    let rings = ring_threads(fg.child.id());
    assert!(rings.is_empty(), "ring threads with threaded=0: {rings:?}");
    let threads: Vec<String> = fs::read_dir(format!("/proc/{}/task", fg.child.id()))
        .expect("daemon threads")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    let servers = threads.iter().filter(|c| c.starts_with("ovl-dev-")).count();
    assert_eq!(servers, 1, "/dev/fuse serving threads: {threads:?}");
    assert!(
        !threads.iter().any(|c| c.starts_with("ovl-statahead")),
        "stat-ahead threads with threaded=0: {threads:?}"
    );
    let err = fg.stderr();
    assert!(
        err.contains("uring=on ignored") && err.contains("threaded=0"),
        "no warning that uring=on was ignored:\n{err}"
    );
    assert!(
        err.contains("statahead=on ignored"),
        "no warning that statahead=on was ignored:\n{err}"
    );
    fg.unmount();
    assert_eq!(fs::read(st.upper.join("new")).unwrap(), b"n");
}
