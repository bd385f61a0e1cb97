//! Command-line contract of the `ovlfuse` binary, on real mounts.
//!
//! Every test returns early (with a loud message) when /dev/fuse is missing.

mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn all_output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A stack with a file in each lower, one shared name, and a directory.
fn simple_stack(sc: &Scratch) -> Stack {
    simple_stack_at(&sc.root)
}

fn simple_stack_at(dir: &Path) -> Stack {
    let st = Stack::new_at(dir, 2);
    build(
        &st.lowers[0],
        &[
            E::File("a", b"from lower0"),
            E::File("shared", b"top"),
            E::Dir("d"),
        ],
    );
    build(
        &st.lowers[1],
        &[
            E::File("b", b"from lower1"),
            E::File("shared", b"bottom"),
            E::File("d/x", b"x"),
        ],
    );
    st
}

fn check_simple_view(mnt: &Path) {
    assert_eq!(
        names(mnt).unwrap_or_else(|e| panic!("readdir {mnt:?}: {}", describe_err(&e))),
        vec!["a", "b", "d", "shared"],
        "merged root of {mnt:?}"
    );
    assert_eq!(ok(fs::read(mnt.join("a")), "read a"), b"from lower0");
    assert_eq!(ok(fs::read(mnt.join("b")), "read b"), b"from lower1");
    assert_eq!(
        ok(fs::read(mnt.join("shared")), "read shared"),
        b"top",
        "the highest lower must win"
    );
    assert_eq!(ok(names(&mnt.join("d")), "readdir d"), vec!["x"]);
}

/// Asserts the binary failed, said something naming the problem, and mounted nothing.
fn expect_mount_failure(sc: &Scratch, args: &[&str], mnt: &Path, mention_any: &[&str]) {
    let before = mounts_below(&sc.root, true);
    let o = run_ovlfuse(args);
    let after = mounts_below(&sc.root, true);
    let new_mounts: Vec<&PathBuf> = after.iter().filter(|m| !before.contains(m)).collect();
    let daemon = find_daemon_pid(mnt);
    assert!(
        !o.status.success(),
        "ovlfuse {args:?} should have failed but exited 0 (new mounts: {new_mounts:?})\n{}",
        show_output(&o)
    );
    assert!(
        new_mounts.is_empty(),
        "ovlfuse {args:?} failed but left mounts behind: {new_mounts:?}\n{}",
        show_output(&o)
    );
    assert!(
        daemon.is_none(),
        "ovlfuse {args:?} failed but a daemon (pid {daemon:?}) is still running"
    );
    let err = stderr_of(&o);
    assert!(
        !err.trim().is_empty(),
        "ovlfuse {args:?} failed without a message on stderr\n{}",
        show_output(&o)
    );
    // A usage hint names every option; only the rest of the message counts.
    let err: String = err
        .lines()
        .filter(|l| !l.to_lowercase().contains("usage"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        mention_any.iter().any(|m| err.contains(m)),
        "ovlfuse {args:?}: the error message should name the problem (one of {mention_any:?}):\n{}",
        show_output(&o)
    );
}

// ---------------------------------------------------------------------------------------
// Daemon / foreground / unmount
// ---------------------------------------------------------------------------------------

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

fn mount_simple(sc: &Scratch) -> (Stack, MountGuard) {
    let st = simple_stack(sc);
    let g = mount_ovlfuse(&st, &[]);
    assert!(
        g.pid().is_some(),
        "cannot find the daemon process of {:?}",
        st.mnt
    );
    (st, g)
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

// ---------------------------------------------------------------------------------------
// Command-line forms
// ---------------------------------------------------------------------------------------

#[test]
fn mount_fuse3_form_source_mountpoint_then_options() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-mountfuse-form");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let opts = format!("rw,{},dev,suid", st.full_opts());
    let g = mount_ovlfuse_args(&["overlay", &s(&st.mnt), "-o", &opts], &st.mnt);
    check_simple_view(&st.mnt);
    ok(
        fs::write(st.mnt.join("c"), b"c"),
        "create through the mount",
    );
    assert_eq!(
        fs::read(st.upper.join("c")).unwrap(),
        b"c",
        "new file must land in upperdir"
    );
    g.unmount();
    lc.verify();
}

fn mount_helper_check(sc: &Scratch, st: &Stack, mut cmd: Command, what: &str) {
    let o = run_with_timeout(
        {
            cmd.stdin(Stdio::null());
            cmd
        },
        Duration::from_secs(60),
    );
    let mounted = is_fuse_mounted(&st.mnt);
    let g = MountGuard::adopt_fuse(&st.mnt);
    assert!(o.status.success(), "{what} failed:\n{}", show_output(&o));
    assert!(
        mounted,
        "{what} exited 0 but {:?} is not a FUSE mount: {:?}",
        st.mnt,
        mount_at(&st.mnt)
    );
    assert!(g.pid().is_some(), "{what}: no ovlfuse daemon process found");
    check_simple_view(&st.mnt);
    let _ = sc;
    ok(
        fs::write(st.mnt.join("c"), b"c"),
        "create through the mount",
    );
    assert_eq!(
        fs::read(st.upper.join("c")).unwrap(),
        b"c",
        "{what}: new file must land in upperdir"
    );
    g.unmount();
}

/// mount(8) runs FUSE helpers through mount.fuse3 with a sanitized PATH, so the binary is
/// named by absolute path (`-t fuse BIN#SOURCE`); mount.fuse3 itself gets `ovlfuse#SOURCE`
/// with the binary's directory first in PATH. Both pass `-o rw,...,dev,suid`.
#[test]
fn mount8_and_mount_fuse3_helpers() {
    if !fuse_available() {
        return;
    }
    let helper = ["/sbin/mount.fuse3", "/usr/sbin/mount.fuse3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(helper) = helper else {
        eprintln!("*** SKIPPED mount8_and_mount_fuse3_helpers: no mount.fuse3 helper ***");
        return;
    };
    let sc = Scratch::new("cli-mount8");
    let st = simple_stack_at(&sc.dir("one"));
    let st2 = simple_stack_at(&sc.dir("two"));
    let lc = LowerCheck::new(&[st.lowers.clone(), st2.lowers.clone()].concat());

    let mut cmd = Command::new("mount");
    cmd.args([
        "-t",
        "fuse",
        &format!("{}#overlay", s(&ovlfuse_bin())),
        &s(&st.mnt),
        "-o",
        &st.full_opts(),
    ]);
    mount_helper_check(&sc, &st, cmd, "mount -t fuse BIN#overlay");

    let bindir = ovlfuse_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let mut cmd = Command::new(helper);
    cmd.args(["ovlfuse#overlay", &s(&st2.mnt), "-o", &st2.full_opts()])
        .env("PATH", path);
    mount_helper_check(&sc, &st2, cmd, "mount.fuse3 ovlfuse#overlay");
    lc.verify();
}

#[test]
fn repeated_o_options_accumulate() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-repeated-o");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse_args(
        &[
            "-o",
            &st.lowerdir_opt(),
            "-o",
            &format!("upperdir={}", escape_layer(&st.upper)),
            "-o",
            &format!("workdir={}", escape_layer(&st.work)),
            &s(&st.mnt),
        ],
        &st.mnt,
    );
    check_simple_view(&st.mnt);
    ok(
        fs::write(st.mnt.join("c"), b"c"),
        "create through the mount (upperdir from a later -o)",
    );
    assert_eq!(fs::read(st.upper.join("c")).unwrap(), b"c");
    g.unmount();
    lc.verify();
}

#[test]
fn relative_layer_paths() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-relative");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let o = run_ovlfuse_in(
        &sc.root,
        &[
            "-o",
            "lowerdir=lower0:./lower1,upperdir=upper,workdir=./work",
            "mnt",
        ],
    );
    let g = MountGuard::adopt_fuse(&st.mnt);
    assert!(
        o.status.success(),
        "relative paths rejected:\n{}",
        show_output(&o)
    );
    assert!(
        is_fuse_mounted(&st.mnt),
        "exit 0 but no mount at {:?}",
        st.mnt
    );
    check_simple_view(&st.mnt);
    ok(fs::write(st.mnt.join("c"), b"c"), "create");
    assert_eq!(
        fs::read(st.upper.join("c")).unwrap(),
        b"c",
        "relative upperdir must be resolved against the cwd"
    );
    g.unmount();
    lc.verify();
}

#[test]
fn symlinked_layer_paths() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-symlinked");
    // containers/storage style: l/SHORT -> ../ID/diff
    let d1 = sc.dir("aaaa1111/diff");
    let d2 = sc.dir("bbbb2222/diff");
    let up = sc.dir("cccc3333/diff");
    sc.dir("cccc3333/work");
    let mnt = sc.dir("merged");
    sc.dir("l");
    build(
        &d1,
        &[
            E::File("a", b"from lower0"),
            E::File("shared", b"top"),
            E::Dir("d"),
        ],
    );
    build(
        &d2,
        &[
            E::File("b", b"from lower1"),
            E::File("shared", b"bottom"),
            E::File("d/x", b"x"),
        ],
    );
    build(
        &sc.root,
        &[
            E::Symlink("l/AAAA", "../aaaa1111/diff"),
            E::Symlink("l/BBBB", "../bbbb2222/diff"),
            E::Symlink("l/CCCC", "../cccc3333/diff"),
            E::Symlink("wk", "cccc3333/work"),
        ],
    );
    let lc = LowerCheck::new(&[d1.clone(), d2.clone()]);
    // Absolute paths through symlinks.
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        s(&sc.path("l/AAAA")),
        s(&sc.path("l/BBBB")),
        s(&sc.path("l/CCCC")),
        s(&sc.path("wk"))
    );
    let g = mount_ovlfuse_args(&["-o", &opts, &s(&mnt)], &mnt);
    check_simple_view(&mnt);
    ok(fs::write(mnt.join("c"), b"c"), "create");
    assert_eq!(
        fs::read(up.join("c")).unwrap(),
        b"c",
        "upperdir given as a symlink must resolve to its target"
    );
    g.unmount();
    // Relative symlinked paths, as containers/storage passes them.
    let o = run_ovlfuse_in(
        &sc.root,
        &[
            "-o",
            "lowerdir=l/AAAA:l/BBBB,upperdir=l/CCCC,workdir=wk",
            "merged",
        ],
    );
    let g = MountGuard::adopt_fuse(&mnt);
    assert!(
        o.status.success(),
        "relative symlinked layers rejected:\n{}",
        show_output(&o)
    );
    assert!(is_fuse_mounted(&mnt));
    assert_eq!(ok(fs::read(mnt.join("c")), "read c after remount"), b"c");
    assert_eq!(ok(fs::read(mnt.join("shared")), "read shared"), b"top");
    g.unmount();
    // The symlinks themselves are untouched.
    assert_eq!(
        fs::read_link(sc.path("l/CCCC")).unwrap(),
        PathBuf::from("../cccc3333/diff")
    );
    lc.verify();
}

#[test]
fn escaped_colon_and_comma_in_layer_paths() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-escapes");
    let l0 = sc.dir("low:er,0");
    let l1 = sc.dir("lower1");
    let up = sc.dir("up,per");
    let wk = sc.dir("wo:rk");
    let mnt = sc.dir("mnt");
    build(
        &l0,
        &[
            E::File("a", b"from lower0"),
            E::File("shared", b"top"),
            E::Dir("d"),
        ],
    );
    build(
        &l1,
        &[
            E::File("b", b"from lower1"),
            E::File("shared", b"bottom"),
            E::File("d/x", b"x"),
        ],
    );
    let lc = LowerCheck::new(&[l0.clone(), l1.clone()]);
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        escape_layer(&l0),
        escape_layer(&l1),
        escape_layer(&up),
        escape_layer(&wk)
    );
    assert!(opts.contains("low\\:er\\,0"), "{opts}");
    let g = mount_ovlfuse_args(&["-o", &opts, &s(&mnt)], &mnt);
    check_simple_view(&mnt);
    ok(fs::write(mnt.join("c"), b"c"), "create");
    assert_eq!(fs::read(up.join("c")).unwrap(), b"c");
    g.unmount();
    lc.verify();
}

#[test]
fn five_hundred_lower_layers() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-500-lowers");
    let st = Stack::new(&sc, 500);
    for (i, l) in st.lowers.iter().enumerate() {
        let own = format!("f{i:03}");
        let shared = format!("layer {i}");
        build(
            l,
            &[
                E::File(&own, own.as_bytes()),
                E::File("shared", shared.as_bytes()),
            ],
        );
    }
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let got = ok(names(&st.mnt), "readdir of a 500-layer merge");
    let mut want: Vec<String> = (0..500).map(|i| format!("f{i:03}")).collect();
    want.push("shared".into());
    want.sort();
    if got != want {
        let missing: Vec<&String> = want.iter().filter(|n| !got.contains(n)).collect();
        let extra: Vec<&String> = got.iter().filter(|n| !want.contains(n)).collect();
        panic!(
            "500-layer readdir: {} names, missing {missing:?}, unexpected {extra:?}",
            got.len()
        );
    }
    assert_eq!(
        ok(fs::read(st.mnt.join("shared")), "read shared"),
        b"layer 0",
        "the highest lower must win"
    );
    assert_eq!(
        ok(fs::read(st.mnt.join("f499")), "read f499 (lowest layer)"),
        b"f499"
    );
    assert_eq!(ok(fs::read(st.mnt.join("f250")), "read f250"), b"f250");
    ok(
        fs::write(st.mnt.join("f499"), b"changed"),
        "copy-up from the 500th layer",
    );
    assert_eq!(fs::read(st.upper.join("f499")).unwrap(), b"changed");
    g.unmount();
    lc.verify();
}

#[test]
fn ignored_options_are_accepted() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-ignored-opts");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let opts = format!(
        "rw,dev,suid,,exec,noatime,private,context=\"a,b\",{},,",
        st.full_opts()
    );
    let g = mount_ovlfuse_args(&["-o", &opts, &s(&st.mnt)], &st.mnt);
    check_simple_view(&st.mnt);
    ok(
        fs::write(st.mnt.join("c"), b"c"),
        "the mount must be writable with rw",
    );
    assert_eq!(fs::read(st.upper.join("c")).unwrap(), b"c");
    g.unmount();
    lc.verify();
}

#[test]
fn ro_option_with_upper_gives_read_only_mount() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-ro-opt");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let opts = format!("ro,{}", st.full_opts());
    let g = mount_ovlfuse_args(&["-o", &opts, &s(&st.mnt)], &st.mnt);
    check_simple_view(&st.mnt);
    expect_errno(
        fs::write(st.mnt.join("c"), b"c"),
        libc::EROFS,
        "create on an -o ro mount",
    );
    expect_errno(
        fs::remove_file(st.mnt.join("a")),
        libc::EROFS,
        "unlink on an -o ro mount",
    );
    assert_eq!(
        names(&st.upper).unwrap(),
        Vec::<String>::new(),
        "nothing may be written to upperdir"
    );
    g.unmount();
    lc.verify();
}

// ---------------------------------------------------------------------------------------
// Errors before mounting
// ---------------------------------------------------------------------------------------

#[test]
fn error_misspelt_option() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-misspelt");
    let st = simple_stack(&sc);
    let opts = format!(
        "lowerdri={},upperdir={},workdir={}",
        s(&st.lowers[0]),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["lowerdri"]);
    let opts = format!("{},frobnicate=7", st.full_opts());
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["frobnicate"]);
}

#[test]
fn error_missing_lower_layer() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-missing");
    let st = simple_stack(&sc);
    let missing = sc.path("no-such-layer");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        s(&st.lowers[0]),
        s(&missing),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["no-such-layer"],
    );
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&sc.path("no-such-upper")),
        s(&st.work)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["no-such-upper"],
    );
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&st.upper),
        s(&sc.path("no-such-work"))
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["no-such-work"]);
}

#[test]
fn error_layer_is_not_a_directory() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-notdir");
    let st = simple_stack(&sc);
    let file = sc.path("plainfile");
    fs::write(&file, b"x").unwrap();
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        s(&st.lowers[0]),
        s(&file),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["plainfile"]);
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&file),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["plainfile"]);
}

#[test]
fn error_empty_or_missing_lowerdir() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-emptylower");
    let st = simple_stack(&sc);
    let opts = format!(
        "lowerdir=,upperdir={},workdir={}",
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["lowerdir"]);
    let opts = format!("upperdir={},workdir={}", s(&st.upper), s(&st.work));
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["lowerdir"]);
}

#[test]
fn error_upperdir_without_workdir() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-nowork");
    let st = simple_stack(&sc);
    let opts = format!("{},upperdir={}", st.lowerdir_opt(), s(&st.upper));
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["workdir"]);
}

#[test]
fn error_workdir_on_other_filesystem() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-workfs");
    let st = simple_stack(&sc);
    let t = sc.dir("tmpfs");
    let _tg = mount_tmpfs(&t);
    let wk = t.join("work");
    fs::create_dir(&wk).unwrap();
    let opts = format!(
        "{},upperdir={},workdir={}",
        st.lowerdir_opt(),
        s(&st.upper),
        s(&wk)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["workdir", "tmpfs/work", "file system", "filesystem"],
    );
}

#[test]
fn error_overlapping_layers() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-overlap");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let l0 = s(&st.lowers[0]);
    let up = s(&st.upper);
    let wk = s(&st.work);
    let mnt = s(&st.mnt);
    // Each case: (description, options). Directories are made after the LowerCheck would
    // see them, so make them first in scratch places outside the lowers.
    let up_in_work = sc.dir("work2/up");
    let work2 = sc.path("work2");
    let lower_in_upper = sc.dir("upper2/lower");
    let upper2 = sc.path("upper2");
    let work_in_upper = sc.dir("upper3/work");
    let upper3 = sc.path("upper3");
    let cases: Vec<(&str, String)> = vec![
        (
            "lower inside upper",
            format!(
                "lowerdir={},upperdir={},workdir={wk}",
                s(&lower_in_upper),
                s(&upper2)
            ),
        ),
        (
            "workdir inside upper",
            format!(
                "lowerdir={l0},upperdir={},workdir={}",
                s(&upper3),
                s(&work_in_upper)
            ),
        ),
        (
            "upper inside workdir",
            format!(
                "lowerdir={l0},upperdir={},workdir={}",
                s(&up_in_work),
                s(&work2)
            ),
        ),
        (
            "workdir == upperdir",
            format!("lowerdir={l0},upperdir={up},workdir={up}"),
        ),
        (
            "upper == lower",
            format!("lowerdir={l0},upperdir={l0},workdir={wk}"),
        ),
    ];
    for (what, opts) in &cases {
        eprintln!("case: {what}: -o {opts}");
        expect_mount_failure(
            &sc,
            &["-o", opts, &mnt],
            &st.mnt,
            &["upperdir", "workdir", "lowerdir", "overlap", "inside"],
        );
    }
    lc.verify();
}

/// A lower layer inside the upper is refused, as the kernel overlay refuses it (the other
/// way round is allowed: `a_lower_layer_holding_the_upper_is_mounted_...` in semantics).
#[test]
fn error_a_lower_inside_the_upper() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-lower-in-upper");
    let st = Stack::new(&sc, 1);
    build(&st.upper, &[E::File("inner/a", b"a")]);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s(&st.upper.join("inner")),
        s(&st.upper),
        s(&st.work)
    );
    expect_mount_failure(
        &sc,
        &["-o", &opts, &s(&st.mnt)],
        &st.mnt,
        &["lowerdir", "overlap", "inside", "upper/inner"],
    );
    assert_eq!(fs::read(st.upper.join("inner/a")).unwrap(), b"a");
}

#[test]
fn error_missing_mountpoint() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-err-nomnt");
    let st = simple_stack(&sc);
    let mnt = sc.path("no-such-mountpoint");
    expect_mount_failure(
        &sc,
        &["-o", &st.full_opts(), &s(&mnt)],
        &mnt,
        &["no-such-mountpoint"],
    );
}

// ---------------------------------------------------------------------------------------
// Read-only view, odd mount points
// ---------------------------------------------------------------------------------------

#[test]
fn read_only_view_without_upper_gives_erofs() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-readonly");
    let st = simple_stack(&sc);
    build(&st.lowers[1], &[E::Xattr("b", "user.k", b"v")]);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse_ro(&st.lowers, &st.mnt, &[]);
    let kmnt = sc.dir("kmnt");
    let kg = mount_kernel_ro(&st.lowers, &kmnt);
    for root in [&st.mnt, &kmnt] {
        let who = if root == &st.mnt { "ovlfuse" } else { "kernel" };
        check_simple_view(root);
        let w = |what: &str, r: std::io::Result<()>| {
            expect_errno(r, libc::EROFS, &format!("{who}: {what}"))
        };
        w("create", fs::write(root.join("new"), b"x"));
        w("mkdir", fs::create_dir(root.join("newdir")));
        w("unlink of a lower file", fs::remove_file(root.join("a")));
        w("rmdir of a lower dir", fs::remove_dir(root.join("d")));
        w(
            "chmod",
            fs::set_permissions(
                root.join("a"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            ),
        );
        w("chown", lchown(&root.join("a"), 1, 1));
        w("setxattr", lsetxattr(&root.join("a"), "user.x", b"1"));
        w("removexattr", lremovexattr(&root.join("b"), "user.k"));
        w(
            "open for writing",
            fs::OpenOptions::new()
                .write(true)
                .open(root.join("a"))
                .map(|_| ()),
        );
        w(
            "open O_TRUNC",
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(root.join("b"))
                .map(|_| ()),
        );
        w("rename", fs::rename(root.join("a"), root.join("a2")));
        w("symlink", std::os::unix::fs::symlink("a", root.join("sl")));
        w("link", fs::hard_link(root.join("a"), root.join("a3")));
        w("mkfifo", mkfifo(&root.join("fifo"), 0o644));
        w("utimes", set_times(&root.join("a"), (1, 0), (1, 0)));
        assert_eq!(ok(fs::read(root.join("a")), "read"), b"from lower0");
    }
    kg.unmount();
    g.unmount();
    lc.verify();
}

#[test]
fn mount_on_top_of_the_highest_lower_itself() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-mnt-is-lower");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let l0 = st.lowers[0].clone();
    let opts = st.full_opts();
    let g = mount_ovlfuse_args(&["-o", &opts, &s(&l0)], &l0);
    check_simple_view(&l0);
    ok(
        fs::write(l0.join("c"), b"c"),
        "create through a mount that covers lower0",
    );
    ok(
        fs::write(l0.join("a"), b"changed"),
        "copy-up through a mount that covers lower0",
    );
    assert_eq!(fs::read(st.upper.join("c")).unwrap(), b"c");
    assert_eq!(fs::read(st.upper.join("a")).unwrap(), b"changed");
    g.unmount();
    assert_eq!(
        fs::read(l0.join("a")).unwrap(),
        b"from lower0",
        "lower0 itself must be unchanged"
    );
    lc.verify();
}

#[test]
fn mount_inside_a_layer_is_not_crossed() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-mount-in-layer");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[E::File("top", b"t"), E::File("sub/under", b"u")],
    );
    let sub = st.lowers[0].join("sub");
    let _tmpfs = mount_tmpfs(&sub);
    fs::write(sub.join("hidden"), b"h").unwrap();
    let lc = LowerCheck::new(&st.lowers);
    // The kernel shares the lower, with its own upper/work.
    let kst = Stack {
        lowers: st.lowers.clone(),
        upper: sc.dir("kupper"),
        work: sc.dir("kwork"),
        mnt: sc.dir("kmnt"),
    };
    let kg = mount_kernel(&kst);
    let g = mount_ovlfuse(&st, &[]);
    let kernel_view = ok(names(&kst.mnt.join("sub")), "kernel readdir sub");
    let fuse_view = ok(names(&st.mnt.join("sub")), "ovlfuse readdir sub");
    assert_eq!(kernel_view, vec!["under"], "kernel reference view changed?");
    assert_eq!(
        fuse_view, kernel_view,
        "ovlfuse must show the lower's own sub directory, not the tmpfs mounted on it"
    );
    expect_errno(
        fs::metadata(st.mnt.join("sub/hidden")),
        libc::ENOENT,
        "lookup of a name only in the mount inside the layer",
    );
    assert_same_snapshots(
        "merged views",
        "kernel",
        &snapshot(&kst.mnt, XattrSel::User),
        "ovlfuse",
        &snapshot(&st.mnt, XattrSel::User),
    );
    g.unmount();
    kg.unmount();
    lc.verify();
}

// ---------------------------------------------------------------------------------------
// Help and version
// ---------------------------------------------------------------------------------------

#[test]
fn help_prints_usage_and_exits_zero() {
    for flag in ["-h", "--help"] {
        let o = run_ovlfuse(&[flag]);
        assert!(
            o.status.success(),
            "ovlfuse {flag} exited non-zero:\n{}",
            show_output(&o)
        );
        let out = all_output(&o).to_lowercase();
        assert!(
            out.contains("usage"),
            "ovlfuse {flag} printed no usage:\n{}",
            show_output(&o)
        );
        assert!(
            out.contains("lowerdir"),
            "ovlfuse {flag} usage does not mention lowerdir:\n{}",
            show_output(&o)
        );
    }
}

#[test]
fn version_prints_a_version_line() {
    for flag in ["-V", "--version"] {
        let o = run_ovlfuse(&[flag]);
        assert!(
            o.status.success(),
            "ovlfuse {flag} exited non-zero:\n{}",
            show_output(&o)
        );
        let out = all_output(&o);
        assert!(
            out.lines().any(|l| l.contains(env!("CARGO_PKG_VERSION"))),
            "ovlfuse {flag} should print a line with version {}:\n{}",
            env!("CARGO_PKG_VERSION"),
            show_output(&o)
        );
    }
}

#[test]
fn no_arguments_is_an_error() {
    let o = run_ovlfuse(&[]);
    assert!(
        !o.status.success(),
        "ovlfuse without arguments exited 0:\n{}",
        show_output(&o)
    );
    assert!(
        !stderr_of(&o).trim().is_empty(),
        "no message on stderr:\n{}",
        show_output(&o)
    );
}

#[test]
fn stat_of_mount_root_reports_a_directory() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-root-stat");
    let st = simple_stack(&sc);
    fs::set_permissions(
        &st.upper,
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    let g = mount_ovlfuse(&st, &[]);
    let md = ok(fs::metadata(&st.mnt), "stat mount root");
    assert!(md.is_dir());
    assert_eq!(
        md.mode() & 0o7777,
        0o750,
        "the merged root takes the upper root's mode, as the kernel does"
    );
    g.unmount();
}

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
fn mount_inside_the_upper_layer_is_not_crossed() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-mount-in-upper");
    let st = Stack::new(&sc, 1);
    build(&st.lowers[0], &[E::File("low", b"l")]);
    build(&st.upper, &[E::File("sub/under", b"u")]);
    let kst = Stack {
        lowers: st.lowers.clone(),
        upper: sc.dir("kupper"),
        work: sc.dir("kwork"),
        mnt: sc.dir("kmnt"),
    };
    build(&kst.upper, &[E::File("sub/under", b"u")]);
    let _t1 = mount_tmpfs(&st.upper.join("sub"));
    let _t2 = mount_tmpfs(&kst.upper.join("sub"));
    fs::write(st.upper.join("sub/hidden"), b"h").unwrap();
    fs::write(kst.upper.join("sub/hidden"), b"h").unwrap();
    let lc = LowerCheck::new(&st.lowers);
    let kg = mount_kernel(&kst);
    let g = mount_ovlfuse(&st, &[]);
    let kv = ok(names(&kst.mnt.join("sub")), "kernel readdir sub");
    let fv = ok(names(&st.mnt.join("sub")), "ovlfuse readdir sub");
    assert_eq!(kv, vec!["under"], "kernel reference view changed?");
    assert_eq!(
        fv, kv,
        "ovlfuse must show the upper's own sub directory, not the tmpfs mounted on it"
    );
    g.unmount();
    kg.unmount();
    lc.verify();
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

#[test]
fn workdir_left_by_a_crash_or_by_the_kernel_is_reused() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-stale-work");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    // The kernel's workdir layout (work/work, mode 0), as left after a kernel mount...
    let kg = mount_kernel(&st);
    ok(fs::write(st.mnt.join("by-kernel"), b"k"), "kernel write");
    kg.unmount();
    // ...plus leftovers of an interrupted copy-up or rename.
    let junk = st.work.join("work");
    fs::create_dir_all(junk.join("#1234/sub")).unwrap();
    fs::write(junk.join("#1234/sub/f"), b"junk").unwrap();
    fs::write(junk.join("#5678"), b"junk").unwrap();
    mknod(&junk.join("#9abc"), libc::S_IFCHR, 0).unwrap();
    let g = mount_ovlfuse(&st, &[]);
    check_simple_view_with(&st.mnt, &["by-kernel"]);
    ok(fs::write(st.mnt.join("by-ovlfuse"), b"o"), "create");
    ok(
        write_at(&st.mnt.join("a"), 0, b"A"),
        "copy-up using the reused workdir",
    );
    g.unmount();
    // And the kernel mounts again over what ovlfuse left in the workdir.
    let kg = mount_kernel(&st);
    assert_eq!(read_str_cli(&st.mnt.join("by-ovlfuse")), "o");
    assert_eq!(read_str_cli(&st.mnt.join("a")), "Arom lower0");
    kg.unmount();
    lc.verify();
}

fn read_str_cli(p: &Path) -> String {
    match fs::read(p) {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(e) => format!("<{}>", describe_err(&e)),
    }
}

fn check_simple_view_with(mnt: &Path, extra: &[&str]) {
    let mut want: Vec<String> = ["a", "b", "d", "shared"]
        .iter()
        .chain(extra.iter())
        .map(|s| s.to_string())
        .collect();
    want.sort();
    assert_eq!(ok(names(mnt), "readdir"), want, "merged root of {mnt:?}");
    assert_eq!(ok(fs::read(mnt.join("shared")), "read shared"), b"top");
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

/// A daemon killed with SIGKILL leaves its mount behind ("Transport endpoint is not
/// connected"); mounting there again fails and says how to clear it, and once it is
/// unmounted the same command mounts.
#[test]
fn mounting_over_a_dead_mount_says_to_unmount_it_first() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-dead-mount");
    let (st, g) = mount_simple(&sc);
    let pid = g.pid().unwrap();
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)),
        "daemon outlived SIGKILL for 10 s"
    );
    // Over io_uring the kernel tears the rings down after the process has gone (in a
    // worker), and a request caught in that teardown fails with ECONNABORTED; once the
    // connection is down, everything says ENOTCONN.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut res = fs::metadata(&st.mnt);
    while res.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::ECONNABORTED)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        res = fs::metadata(&st.mnt);
    }
    expect_errno(res, libc::ENOTCONN, "the dead mount");
    let opts = st.full_opts();
    expect_mount_failure(&sc, &["-o", &opts, &s(&st.mnt)], &st.mnt, &["umount"]);
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    ok(fs::read_dir(&st.mnt), "listing after the remount");
    g.unmount();
}

/// Runs `ovlfuse SOURCE MNT -o OPTS` as mount.fuse3 would for a remount, first with
/// `opts[0]` (read-only: the mount table says `ro`, writes fail with EROFS), then with
/// `opts[1]` (read-write again: writes work).
#[track_caller]
fn remount_ro_then_rw(mnt: &Path, source: &str, opts: [impl AsRef<str>; 2]) {
    let m = mnt.to_str().unwrap();
    for (i, o) in opts.iter().enumerate() {
        let out = run_ovlfuse(&[source, m, "-o", o.as_ref()]);
        assert!(
            out.status.success(),
            "remount -o {}: {}",
            o.as_ref(),
            String::from_utf8_lossy(&out.stderr)
        );
        let r = fs::write(mnt.join("new"), b"x");
        if i == 0 {
            let e = mount_at(mnt).unwrap();
            assert!(
                e.opts.split(',').any(|o| o == "ro"),
                "not read-only after the remount: {e:?}"
            );
            expect_errno(r, libc::EROFS, "write after the read-only remount");
        } else {
            ok(r, "write after the read-write remount");
        }
    }
}

#[test]
fn remount_changes_flags_of_the_live_mount() {
    if !fuse_available() {
        return;
    }
    // What `mount -t fuse.ovlfuse SRC MNT -o remount,ro` makes mount.fuse3 run (xfstests does
    // this): the daemon keeps serving, the kernel changes the mount's flags.
    let sc = Scratch::new("cli-remount");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    remount_ro_then_rw(&st.mnt, "overlay", ["rw,remount,ro,dev,suid", "remount,rw"]);
    g.unmount();
    lc.verify();
}

/// A SOURCE directory holding lower/ (and upper/ with work/) stands for its layers when the
/// options name none: how xfstests mounts a FUSE filesystem after clearing MOUNT_OPTIONS.
/// `fsname=` and `subtype=` name the mount in the mount table (`fuse.SUBTYPE`), and with
/// `subtype=ovlfuse` a remount without `-t` reaches us: mount.fuse3 then runs us with the
/// mount table's options, the kernel's `user_id=`/`group_id=` among them.
#[test]
fn fsname_and_subtype_name_the_mount_and_a_remount_takes_the_table_options() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-subtype");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &["fsname=ovl-subtype-test", "subtype=ovlfuse"]);
    let m = mount_at(&st.mnt).expect("the mount is in the mount table");
    assert_eq!(m.fstype, "fuse.ovlfuse", "type in the mount table: {m:?}");
    assert_eq!(
        m.source, "ovl-subtype-test",
        "source in the mount table: {m:?}"
    );
    // What `mount -o remount,ro MNT` made mount.fuse3 run (traced by hand).
    let table = "relatime,remount,user_id=0,group_id=0,default_permissions,allow_other,dev,suid";
    remount_ro_then_rw(
        &st.mnt,
        "ovl-subtype-test",
        [format!("ro,{table}"), format!("rw,{table}")],
    );
    g.unmount();
    lc.verify();
}

#[test]
fn remount_rw_of_a_view_without_upper_is_refused() {
    if !fuse_available() {
        return;
    }
    // xfstests overlay/035: the kernel refuses to remount a lower-only overlay read-write
    // ("is write-protected"); a mount that said rw but answered every change with EROFS
    // would tell tools the wrong thing.
    let sc = Scratch::new("cli-remount-view");
    let st = simple_stack(&sc);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse_ro(&st.lowers, &st.mnt, &[]);
    let ro = |what: &str| {
        let m = mount_at(&st.mnt).unwrap();
        assert!(
            m.opts.split(',').any(|o| o == "ro"),
            "{what}: not read-only: {m:?}"
        );
    };
    ro("mounted");
    let out = run_ovlfuse(&["-o", "remount,rw", st.mnt.to_str().unwrap()]);
    assert!(!out.status.success(), "remount,rw of a view succeeded");
    let err = stderr_of(&out);
    assert!(
        err.contains("read-write") && err.contains("no upper layer"),
        "remount,rw: {err}"
    );
    ro("after the refused remount");
    expect_errno(
        fs::write(st.mnt.join("new"), b"x"),
        libc::EROFS,
        "write after the refused remount",
    );
    g.unmount();
    lc.verify();
}

#[test]
fn source_directory_names_the_layers_when_options_do_not() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-source-layers");
    let src = sc.dir("set");
    for d in ["lower", "upper", "work"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("lower/a"), b"from lower").unwrap();
    let mnt = sc.dir("mnt");
    let lc = LowerCheck::new(&[src.join("lower")]);
    let g = mount_ovlfuse_args(&[&s(&src), &s(&mnt), "-o", "rw,dev,suid"], &mnt);
    assert_eq!(ok(fs::read(mnt.join("a")), "read a"), b"from lower");
    ok(fs::write(mnt.join("new"), b"n"), "create through the mount");
    assert_eq!(fs::read(src.join("upper/new")).unwrap(), b"n");
    let m = mount_at(&mnt).expect("mounted");
    assert_eq!(m.source, s(&src), "the mount table names the layer set");
    g.unmount();

    // Only lower/: a read-only view.
    let ro = sc.dir("ro-set");
    fs::create_dir_all(ro.join("lower")).unwrap();
    fs::write(ro.join("lower/b"), b"b").unwrap();
    let g = mount_ovlfuse_args(&[&s(&ro), &s(&mnt)], &mnt);
    assert_eq!(ok(fs::read(mnt.join("b")), "read b"), b"b");
    let e = fs::write(mnt.join("c"), b"c").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    g.unmount();
    lc.verify();

    // A directory without lower/ is no layer set.
    let out = run_ovlfuse(&[&s(&sc.dir("empty")), &s(&mnt)]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("lowerdir= is required"),
        "{}",
        all_output(&out)
    );
    assert!(!is_fuse_mounted(&mnt));
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

/// Mounts `opts` at `mnt` in daemon mode, asserting success; returns the launcher's stderr
/// and a guard for the mount.
fn mount_opts(opts: &str, mnt: &Path) -> (String, MountGuard) {
    let o = run_ovlfuse(&["-o", opts, &s(mnt)]);
    assert!(
        o.status.success(),
        "mount at {mnt:?} failed: {}",
        show_output(&o)
    );
    (stderr_of(&o), MountGuard::adopt_fuse(mnt))
}

/// As on the kernel overlay (without `index=on`): a second mount on an upperdir and workdir
/// in use is warned about but made, and so is a lower layer that is another mount's upper;
/// once the first mount is gone, the same layers mount without a word.
#[test]
fn layers_in_use_by_another_mount_are_warned_about() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-in-use");
    let (st, g) = mount_simple(&sc);
    let in_use = |err: &str, opt: &str, dir: &Path| {
        err.lines().any(|l| {
            l.contains(&format!("{opt} ")) && l.contains(&s(dir)) && l.contains("is in use")
        })
    };

    let (err, g2) = mount_opts(&st.full_opts(), &sc.dir("second"));
    assert!(
        in_use(&err, "upperdir", &st.upper),
        "no upperdir warning:\n{err}"
    );
    assert!(
        in_use(&err, "workdir", &st.work),
        "no workdir warning:\n{err}"
    );
    check_simple_view(&sc.path("second"));
    g2.unmount();

    let ro = format!(
        "lowerdir={}:{}",
        escape_layer(&st.upper),
        escape_layer(&st.lowers[0])
    );
    let (err, g3) = mount_opts(&ro, &sc.dir("ro"));
    assert!(
        in_use(&err, "lowerdir", &st.upper),
        "no lowerdir warning:\n{err}"
    );
    // A lower layer shared with another mount is not in use in that sense.
    assert!(!in_use(&err, "lowerdir", &st.lowers[0]), "{err}");
    g3.unmount();

    g.unmount();
    let (err, g4) = mount_opts(&st.full_opts(), &sc.dir("again"));
    assert!(
        !err.contains("is in use"),
        "warned with no other mount:\n{err}"
    );
    check_simple_view(&sc.path("again"));
    g4.unmount();
}

/// umount(8) returns before the ended mount's daemon has exited and let go of its layers;
/// a mount right after it (xfstests cycles its scratch mount so) waits for them instead of
/// warning that they are in use.
#[test]
fn a_mount_right_after_an_unmount_gives_no_in_use_warning() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-remount-quick");
    let st = simple_stack(&sc);
    for i in 0..15 {
        let (err, g) = mount_opts(&st.full_opts(), &st.mnt);
        assert!(!err.contains("is in use"), "mount {i} warned:\n{err}");
        fs::write(st.mnt.join(format!("f{i}")), b"x").unwrap();
        let o = run_unmount("umount", &[st.mnt.as_os_str()]);
        assert!(o.status.success(), "umount {i}: {}", show_output(&o));
        g.forget();
    }
    assert!(st.upper.join("f14").exists());
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

/// `volatile` leaves kernel overlayfs's mark (`work/incompat/volatile`): the upper may be
/// incomplete after a crash, and nobody can tell later, so the next mount is refused
/// until the mark is removed; container engines remove it before each mount. The kernel
/// refuses an upper that ovlfuse left so, and ovlfuse one the kernel left so, and neither
/// takes the mark away.
#[test]
fn a_volatile_mount_leaves_a_mark_that_refuses_the_next_mount_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-volatile-mark");
    let st = simple_stack(&sc);
    let mark = st.work.join("work/incompat/volatile");
    let opts = st.full_opts();
    let kernel_mount = |extra: &str| {
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("{opts}{extra}"))
            .arg(&st.mnt)
            .output()
            .expect("run mount");
        o.status.success()
    };
    let args = ["-o", &opts, &s(&st.mnt)];

    assert!(kernel_mount(",volatile"), "setup: a volatile kernel mount");
    MountGuard::adopt_kernel(&st.mnt).unmount();
    assert!(
        mark.is_dir(),
        "setup: the kernel's volatile mount left its mark"
    );
    expect_mount_failure(&sc, &args, &st.mnt, &["incompat/volatile"]);
    assert!(mark.is_dir(), "ovlfuse took the kernel's mark away");

    fs::remove_dir_all(&mark).unwrap();
    let vopts = format!("{opts},volatile");
    let g = mount_ovlfuse(&st, &["volatile"]);
    fs::write(st.mnt.join("written"), b"w").unwrap();
    g.unmount();
    assert!(
        mark.join("dirty").is_file(),
        "ovlfuse's volatile mount left no mark"
    );
    assert!(
        !kernel_mount(""),
        "the kernel mounted an upper that ovlfuse's volatile mount marked"
    );
    expect_mount_failure(
        &sc,
        &["-o", &vopts, &s(&st.mnt)],
        &st.mnt,
        &["incompat/volatile"],
    );

    fs::remove_dir_all(&mark).unwrap();
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(fs::read(st.mnt.join("written")).unwrap(), b"w");
    g.unmount();
    assert!(!mark.exists(), "a mount without volatile left the mark");
}

/// A `work` entry in the workdir that is no directory (a file, or a symlink, which must
/// never be followed) is replaced by the work directory, as the kernel overlay replaces
/// it; nothing the symlink points to is touched. ovlfuse used to refuse the mount
/// ("cannot open work directory: Not a directory").
#[test]
fn a_work_entry_that_is_no_directory_is_replaced_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("cli-work-not-dir");
    for side in ["kernel", "ovlfuse"] {
        for kind in ["symlink", "file"] {
            let st = Stack::new_at(&sc.dir(&format!("{side}-{kind}")), 1);
            build(&st.work, &[E::File("keep/precious", b"p")]);
            let work = st.work.join("work");
            if kind == "symlink" {
                std::os::unix::fs::symlink("keep", &work).unwrap();
            } else {
                fs::write(&work, b"not a directory").unwrap();
            }
            let g = if side == "kernel" {
                mount_kernel(&st)
            } else {
                mount_ovlfuse(&st, &[])
            };
            ok(
                fs::write(st.mnt.join("new"), b"n"),
                &format!("{side}, {kind}: write through the mount"),
            );
            g.unmount();
            let md = ok(fs::symlink_metadata(&work), "lstat work");
            assert!(
                md.is_dir(),
                "{side}, {kind}: work is {md:?}, not a directory"
            );
            assert_eq!(
                names(&st.work.join("keep")).unwrap(),
                ["precious"],
                "{side}, {kind}: what the symlink pointed to"
            );
            assert_eq!(fs::read(st.upper.join("new")).unwrap(), b"n");
        }
    }
}
