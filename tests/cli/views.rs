//! The read-only view without an upper layer, and mount points in odd places (on a lower
//! layer, inside a layer).

use super::*;

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
