//! What the mount table shows and what changes it: fsname, subtype, remount, a
//! SOURCE directory naming the layers, a dead mount in the way.

use super::*;

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
