//! Command-line forms: the mount.fuse3 form, mount(8), repeated and ignored options,
//! layer paths (relative, symlinked, escaped, 500 of them), help and version.

use super::*;

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
