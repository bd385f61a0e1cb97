//! The upper and work directories across mounts: leftovers of a crash or of the kernel,
//! the volatile mark, and warnings when another mount uses them.

use super::*;

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
