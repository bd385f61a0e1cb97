//! Layers on other filesystems than the test directory's own: lower layers packed as the
//! read-only images container tools ship (squashfs, erofs), uppers on btrfs and xfs, and
//! a lower layer that is itself an ovlfuse mount (an overlay inside a container whose root
//! is an overlay), an upper on an overlay, and layers on an ext4 whose directories record
//! no file types; and what an unmount or a read-only remount leaves on an upper's disk.
//! Each case runs the same operations on the kernel overlay and on ovlfuse
//! and compares results and merged views (and, over the same lower layers, the uppers,
//! each then mounted with the other overlay).
//!
//! The image and mkfs tools come from squashfs-tools, erofs-utils, btrfs-progs, xfsprogs
//! and e2fsprogs (`.ci/run` installs them); a missing one fails the test with its package
//! name.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `prog args`, failing the test with its output (and the package that has it when it
/// is not installed).
fn run(prog: &str, package: &str, args: &[&OsStr]) {
    let installed = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false);
    assert!(
        installed,
        "{prog} is not installed: install the Debian package {package} (.ci/run does)"
    );
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let o = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        o.status.success(),
        "{prog} {args:?} failed:\n{}",
        show_output(&o)
    );
}

/// Packs `src` into a read-only image of `kind` ("squashfs" or "erofs") and mounts it at
/// `mnt` through a loop device (released when the mount goes).
fn mount_image_of(kind: &str, src: &Path, img: &Path, mnt: &Path) -> MountGuard {
    match kind {
        "squashfs" => run(
            "mksquashfs",
            "squashfs-tools",
            &[
                src.as_os_str(),
                img.as_os_str(),
                OsStr::new("-quiet"),
                OsStr::new("-noappend"),
                OsStr::new("-xattrs"),
            ],
        ),
        "erofs" => run(
            "mkfs.erofs",
            "erofs-utils",
            &[img.as_os_str(), src.as_os_str()],
        ),
        _ => unreachable!("image kind {kind}"),
    }
    loop_mount(img, mnt, "loop,ro")
}

/// Makes a fresh `kind` ("btrfs" or "xfs") filesystem in a sparse image and mounts it.
fn mount_new_fs(kind: &str, img: &Path, mnt: &Path) -> MountGuard {
    let f = fs::File::create(img).unwrap();
    f.set_len(320 << 20).unwrap();
    drop(f);
    let (prog, package) = match kind {
        "btrfs" => ("mkfs.btrfs", "btrfs-progs"),
        "xfs" => ("mkfs.xfs", "xfsprogs"),
        _ => unreachable!("filesystem {kind}"),
    };
    run(prog, package, &[OsStr::new("-q"), img.as_os_str()]);
    loop_mount(img, mnt, "loop")
}

fn loop_mount(img: &Path, mnt: &Path, opts: &str) -> MountGuard {
    run(
        "mount",
        "mount",
        &[
            OsStr::new("-o"),
            OsStr::new(opts),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    );
    MountGuard::adopt_kernel(mnt)
}

/// The top lower layer: a whiteout and an opaque directory (in the kernel's formats) over
/// the bottom layer, and one of each kind of file.
const TOP: &[E] = &[
    E::File("f", b"top f"),
    E::Xattr("f", "user.k", b"v"),
    E::Hardlink("f", "hard"),
    E::Symlink("link", "f"),
    E::Fifo("p"),
    E::File("d/sub/g", b"g"),
    E::Mode("d/sub/g", 0o640),
    E::Owner("d/sub/g", 1000, 1000),
    E::Whiteout("gone"),
    E::Opaque("opq"),
    E::File("opq/top", b"t"),
    E::File("moved/c", b"c"),
];

/// The bottom lower layer.
const BOTTOM: &[E] = &[
    E::File("gone", b"hidden by a whiteout"),
    E::File("opq/old", b"hidden by an opaque directory"),
    E::File("d/low", b"low"),
    E::File("only_low", b"only low"),
    E::File("moved/low", b"low in moved"),
];

/// A scratch area named `name` with [`TOP`] and [`BOTTOM`] built in it (src/top and
/// src/bottom).
fn scratch_with_sources(name: &str) -> (Scratch, PathBuf, PathBuf) {
    let sc = Scratch::new(name);
    let (top, bottom) = (sc.dir("src/top"), sc.dir("src/bottom"));
    build(&top, TOP);
    build(&bottom, BOTTOM);
    (sc, top, bottom)
}

/// Reads, then copy-ups, removals, a directory rename and re-creations; returns what each
/// step gave.
fn ops(r: &Path) -> Vec<String> {
    vec![
        read_str(&r.join("f")),
        read_str(&r.join("link")),
        read_str(&r.join("only_low")),
        format!("{:?}", names_or_err(r)),
        format!("{:?}", names_or_err(&r.join("opq"))),
        format!("{:?}", names_or_err(&r.join("d"))),
        outcome_unit(&write_at(&r.join("f"), 5, b" appended")),
        read_str(&r.join("f")),
        outcome_unit(&lsetxattr(&r.join("d/sub/g"), "user.new", b"1")),
        outcome_unit(&fs::set_permissions(
            r.join("p"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&fs::remove_file(r.join("link"))),
        outcome_unit(&fs::remove_file(r.join("only_low"))),
        outcome_unit(&fs::rename(r.join("moved"), r.join("moved2"))),
        format!("{:?}", names_or_err(&r.join("moved2"))),
        outcome_unit(&fs::remove_dir_all(r.join("d"))),
        outcome_unit(&fs::create_dir(r.join("d"))),
        outcome_unit(&fs::write(r.join("d/new"), b"new")),
        outcome_unit(&fs::write(r.join("gone"), b"back")),
        outcome_unit(&fs::hard_link(r.join("f"), r.join("f2"))),
        format!("{:?}", names_or_err(r)),
        format!("{:?}", names_or_err(&r.join("d"))),
    ]
}

/// An upper directory as the other overlay will read it: overlay xattrs that only say
/// where a copy came from (each overlay writes its own) are left out.
fn normalized_upper(upper: &Path) -> BTreeMap<PathBuf, Node> {
    upper_snapshot(upper, |k| {
        k.starts_with("user.") || k == "trusted.overlay.opaque" || k == "trusted.overlay.redirect"
    })
}

/// Runs [`ops`] on the kernel overlay and on ovlfuse, each with the given lower layers and
/// its own upper under `uppers[0]` (kernel) and `uppers[1]` (ovlfuse), and compares; then
/// swaps the uppers between the two overlays and compares the views again.
fn compare_on(what: &str, lowers: &[PathBuf], uppers: [&Path; 2], mnts: [&Path; 2]) {
    let stack = |u: &Path, mnt: &Path| {
        let upper = u.join("upper");
        let work = u.join("work");
        fs::create_dir_all(&upper).unwrap();
        fs::create_dir_all(&work).unwrap();
        Stack {
            lowers: lowers.to_vec(),
            upper,
            work,
            mnt: mnt.to_path_buf(),
        }
    };
    let k = stack(uppers[0], mnts[0]);
    let f = stack(uppers[1], mnts[1]);
    let kg = mount_kernel(&k);
    let fg = mount_ovlfuse(&f, &[]);
    assert_eq!(
        ops(&f.mnt),
        ops(&k.mnt),
        "{what}: operations, ovlfuse (left) vs kernel (right)"
    );
    let views = (
        snapshot(&k.mnt, XattrSel::User),
        snapshot(&f.mnt, XattrSel::User),
    );
    assert_same_snapshots(
        &format!("{what}: merged views"),
        "kernel",
        &views.0,
        "ovlfuse",
        &views.1,
    );
    fg.unmount();
    kg.unmount();
    assert_same_snapshots(
        &format!("{what}: upper directories"),
        "kernel",
        &normalized_upper(&k.upper),
        "ovlfuse",
        &normalized_upper(&f.upper),
    );

    // Each overlay reads the other's upper as its own.
    let swapped = |s: &Stack, other: &Stack| Stack {
        lowers: s.lowers.clone(),
        upper: other.upper.clone(),
        work: other.work.clone(),
        mnt: s.mnt.clone(),
    };
    let kg = mount_kernel(&swapped(&k, &f));
    let fg = mount_ovlfuse(&swapped(&f, &k), &[]);
    assert_same_snapshots(
        &format!("{what}: the kernel on ovlfuse's upper, ovlfuse on the kernel's"),
        "kernel",
        &snapshot(&k.mnt, XattrSel::User),
        "ovlfuse",
        &snapshot(&f.mnt, XattrSel::User),
    );
    assert_eq!(
        snapshot(&k.mnt, XattrSel::User),
        views.0,
        "{what}: the kernel shows ovlfuse's upper as it showed its own"
    );
    fg.unmount();
    kg.unmount();
}

/// Mounts ovlfuse on `f`, runs [`ops`] and compares what they give and the view after
/// them with what the kernel overlay gave on plain layers; then compares the view once
/// more after a remount.
fn ops_and_view_match(
    what: &str,
    f: &Stack,
    want_ops: &[String],
    want_view: &BTreeMap<PathBuf, Node>,
) {
    let fg = mount_ovlfuse(f, &[]);
    assert_eq!(
        ops(&f.mnt),
        want_ops,
        "{what}: operations, ovlfuse (left) vs the kernel on plain layers (right)"
    );
    let view = snapshot(&f.mnt, XattrSel::User);
    fg.unmount();
    assert_same_snapshots(what, "kernel", want_view, "ovlfuse", &view);
    let fg = mount_ovlfuse(f, &[]);
    assert_same_snapshots(
        &format!("{what}, mounted anew"),
        "kernel",
        want_view,
        "ovlfuse",
        &snapshot(&f.mnt, XattrSel::User),
    );
    fg.unmount();
}

#[test]
fn lowers_on_squashfs_and_erofs_with_uppers_on_btrfs_and_xfs_match_the_kernel() {
    if !fuse_available() {
        return;
    }
    let (sc, top_src, bottom_src) = scratch_with_sources("layerfs-images");
    let mut guards = Vec::new();
    let top = sc.dir("lower/top");
    let bottom = sc.dir("lower/bottom");
    guards.push(mount_image_of(
        "erofs",
        &top_src,
        &sc.path("top.erofs"),
        &top,
    ));
    guards.push(mount_image_of(
        "squashfs",
        &bottom_src,
        &sc.path("bottom.sqfs"),
        &bottom,
    ));
    let lowers = vec![top.clone(), bottom.clone()];
    let lc = LowerCheck::new(&lowers);
    for upper_fs in ["btrfs", "xfs"] {
        let mut ups = Vec::new();
        for who in ["k", "f"] {
            let d = sc.dir(&format!("{upper_fs}-{who}"));
            guards.push(mount_new_fs(
                upper_fs,
                &sc.path(&format!("{upper_fs}-{who}.img")),
                &d,
            ));
            ups.push(d);
        }
        let (km, fm) = (sc.dir("mnt/k"), sc.dir("mnt/f"));
        compare_on(
            &format!("lowers on erofs and squashfs, upper on {upper_fs}"),
            &lowers,
            [&ups[0], &ups[1]],
            [&km, &fm],
        );
    }
    lc.verify();
    // Uppers first, then the images they were copied up from.
    while let Some(g) = guards.pop() {
        g.unmount();
    }
}

#[test]
fn a_lower_layer_that_is_an_ovlfuse_mount_matches_the_kernel() {
    if !fuse_available() {
        return;
    }
    // The lower layers, served through an ovlfuse mount of their own (read-only view): the
    // outer overlays reach every lower file through FUSE.
    let (sc, top, bottom) = scratch_with_sources("layerfs-nested");
    let lc = LowerCheck::new(&[top.clone(), bottom.clone()]);
    let inner = sc.dir("inner");
    // The inner view is itself an overlay: it shows the merged tree with its whiteout and
    // opaque marks applied, so the outer overlays see one plain layer.
    let ig = mount_ovlfuse_ro(&[top, bottom], &inner, &[]);
    let (km, fm) = (sc.dir("mnt/k"), sc.dir("mnt/f"));
    compare_on(
        "lower on an ovlfuse mount",
        std::slice::from_ref(&inner),
        [&sc.dir("up-k"), &sc.dir("up-f")],
        [&km, &fm],
    );
    ig.unmount();
    lc.verify();
}

/// An upper layer on an overlay, kernel overlayfs or ovlfuse (the kernel refuses that:
/// xfstests overlay/022). The overlay beneath refuses whiteout devices, so ovlfuse writes
/// xattr whiteouts, and stores ovlfuse's overlay attributes escaped, so it does not take
/// them for its own. The operations and the view match the kernel overlay's on a plain
/// upper, and the view is the same again when ovlfuse is mounted anew on that upper.
#[test]
fn an_upper_layer_on_an_overlay_matches_the_kernel_on_a_plain_one() {
    if !fuse_available() {
        return;
    }
    let (sc, top, bottom) = scratch_with_sources("layerfs-upper-on-overlay");
    let lowers = vec![top, bottom];
    let lc = LowerCheck::new(&lowers);
    let on = |dir: &str, mnt: &str| Stack {
        lowers: lowers.clone(),
        upper: sc.dir(&format!("{dir}/upper")),
        work: sc.dir(&format!("{dir}/work")),
        mnt: sc.dir(mnt),
    };
    let k = on("k", "mnt/k");
    let kg = mount_kernel(&k);
    let want_ops = ops(&k.mnt);
    let want_view = snapshot(&k.mnt, XattrSel::User);
    kg.unmount();
    for beneath in ["kernel", "ovlfuse"] {
        let b = Stack::new_at(&sc.dir(&format!("beneath-{beneath}")), 1);
        let bg = match beneath {
            "kernel" => mount_kernel(&b),
            _ => mount_ovlfuse(&b, &[]),
        };
        let f = on(
            &format!("beneath-{beneath}/mnt/layers"),
            &format!("mnt/f-{beneath}"),
        );
        let what = format!("upper on a {beneath} overlay");
        ops_and_view_match(&what, &f, &want_ops, &want_view);
        bg.unmount();
    }
    lc.verify();
}

/// Layers on a filesystem whose directories record no file types (ext4 without
/// `filetype`: every entry reads as DT_UNKNOWN), lowers and upper alike. ovlfuse looks at
/// such entries to find whiteouts, so the operations and the view match the kernel
/// overlay's on the same layers on a plain filesystem. The kernel overlay itself only warns
/// ("upper fs needs to support d_type") and lists whiteouts as entries that cannot be
/// stat-ed (README, "Differences").
#[test]
fn layers_on_a_filesystem_without_file_types_match_the_kernel_on_a_plain_one() {
    if !fuse_available() {
        return;
    }
    let (sc, top_src, bottom_src) = scratch_with_sources("layerfs-no-dtype");
    let k = Stack {
        lowers: vec![top_src, bottom_src],
        upper: sc.dir("k/upper"),
        work: sc.dir("k/work"),
        mnt: sc.dir("mnt/k"),
    };
    let kg = mount_kernel(&k);
    let want_ops = ops(&k.mnt);
    let want_view = snapshot(&k.mnt, XattrSel::User);
    kg.unmount();

    let img = sc.path("no-filetype.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run(
        "mkfs.ext4",
        "e2fsprogs",
        &[
            OsStr::new("-q"),
            OsStr::new("-O"),
            OsStr::new("^filetype"),
            img.as_os_str(),
        ],
    );
    let base = sc.dir("no-filetype");
    let bg = loop_mount(&img, &base, "loop");
    let on = |dir: &str, mnt: &str| Stack {
        lowers: vec![base.join("top"), base.join("bottom")],
        upper: base.join(format!("{dir}/upper")),
        work: base.join(format!("{dir}/work")),
        mnt: sc.dir(mnt),
    };
    let f = on("f", "mnt/f");
    build(&f.lowers[0], TOP);
    build(&f.lowers[1], BOTTOM);
    fs::create_dir_all(&f.upper).unwrap();
    fs::create_dir_all(&f.work).unwrap();
    let lc = LowerCheck::new(&f.lowers);
    ops_and_view_match(
        "ovlfuse on layers without file types",
        &f,
        &want_ops,
        &want_view,
    );
    lc.verify();

    // What the README says of the kernel overlay on such layers.
    let kk = on("k", "mnt/kk");
    fs::create_dir_all(&kk.upper).unwrap();
    fs::create_dir_all(&kk.work).unwrap();
    let kg = mount_kernel(&kk);
    let listed = names(&kk.mnt);
    kg.unmount();
    assert!(
        listed.as_ref().is_ok_and(|n| n.iter().any(|n| n == "gone")),
        "the kernel overlay no longer lists a lower whiteout on a filesystem without file \
         types ({listed:?}): update the README's \"Differences\""
    );
    bg.unmount();
}

/// What was written through the mount and never fsynced is on the upper filesystem's disk
/// once the mount is gone, or remounted read-only, as with the kernel overlay (which syncs
/// its upper filesystem then): checked by shutting an xfs upper down without flushing its
/// log right after the unmount (and, for ovlfuse, its daemon's exit) or the remount, then
/// mounting it again.
#[test]
fn an_unmount_or_a_read_only_remount_leaves_what_was_written_on_the_upper_disk() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("layerfs-unmount-sync");
    for (who, remount) in [("k", false), ("f", false), ("k", true), ("f", true)] {
        let what = format!("{who}-{}", if remount { "remount" } else { "unmount" });
        let img = sc.path(&format!("{what}.img"));
        let disk = sc.dir(&format!("xfs-{what}"));
        let g = mount_new_fs("xfs", &img, &disk);
        let st = Stack::new_at(&disk, 1);
        fs::write(st.lowers[0].join("f"), b"lower\n").unwrap();
        // The lower layer on disk before the overlay starts: only what it writes is at
        // stake.
        run("sync", "coreutils", &[]);
        let m = if who == "k" {
            mount_kernel(&st)
        } else {
            mount_ovlfuse(&st, &[])
        };
        fs::write(st.mnt.join("new"), b"new data\n").unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(st.mnt.join("f"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"appended\n"))
            .unwrap();
        fs::create_dir(st.mnt.join("d")).unwrap();
        // The overlay still mounted at the crash (a read-only remount), if any.
        let mounted = if !remount {
            m.unmount();
            None
        } else {
            if who == "k" {
                let opts = [OsStr::new("-o"), OsStr::new("remount,ro")];
                run(
                    "mount",
                    "mount",
                    &[&opts[..], &[st.mnt.as_os_str()]].concat(),
                );
            } else {
                let o = run_ovlfuse(&["-o", "remount,ro", st.mnt.to_str().unwrap()]);
                assert!(o.status.success(), "remount,ro: {}", show_output(&o));
            }
            Some(m)
        };
        // Shut down without flushing the log: what is only in memory is lost.
        let shutdown = [OsStr::new("-x"), OsStr::new("-c"), OsStr::new("shutdown")];
        run(
            "xfs_io",
            "xfsprogs",
            &[&shutdown[..], &[disk.as_os_str()]].concat(),
        );
        if let Some(m) = mounted {
            m.unmount();
        }
        g.unmount();
        let g = loop_mount(&img, &disk, "loop");
        let got = (
            fs::read_to_string(st.upper.join("new")).map_err(|e| describe_err(&e)),
            fs::read_to_string(st.upper.join("f")).map_err(|e| describe_err(&e)),
            st.upper.join("d").is_dir(),
        );
        assert_eq!(
            got,
            (
                Ok("new data\n".into()),
                Ok("lower\nappended\n".into()),
                true
            ),
            "{what}: the upper after a crash of its filesystem"
        );
        g.unmount();
    }
}
