//! `redirect_dir=on`: renaming directories that have lower parts, compared with kernel
//! overlayfs mounted with the same option over identical layers.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn mount_kernel_redirect(st: &Stack) -> MountGuard {
    let o = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("{},redirect_dir=on", st.full_opts()))
        .arg(&st.mnt)
        .output()
        .expect("run mount");
    assert!(
        o.status.success(),
        "kernel mount with redirect_dir=on: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    MountGuard::adopt_kernel(&st.mnt)
}

fn layers() -> Vec<Vec<E<'static>>> {
    vec![
        vec![E::File("a/y", b"y from lower0"), E::Dir("keep")],
        vec![
            E::File("a/sub/x", b"x from lower1"),
            E::File("b/z", b"z"),
            E::File("c/w", b"w"),
        ],
    ]
}

/// Runs the same renames on both mounts; returns (kernel view, ovlfuse view).
fn run_both(ops: &dyn Fn(&Path)) -> (Scratch, Stack, Stack) {
    let sc = Scratch::new("redirect");
    let k = Stack::new_at(&sc.dir("k"), 2);
    let f = Stack::new_at(&sc.dir("f"), 2);
    for st in [&k, &f] {
        for (i, l) in layers().iter().enumerate() {
            build(&st.lowers[i], l);
        }
    }
    let kg = mount_kernel_redirect(&k);
    let fg = mount_ovlfuse(&f, &["redirect_dir=on"]);
    ops(&k.mnt);
    ops(&f.mnt);
    let kv = snapshot(&k.mnt, XattrSel::User);
    let fv = snapshot(&f.mnt, XattrSel::User);
    assert_same_snapshots("merged view after renames", "kernel", &kv, "ovlfuse", &fv);
    kg.unmount();
    fg.unmount();
    (sc, k, f)
}

fn renames(m: &Path) {
    fs::rename(m.join("a"), m.join("b/moved")).expect("move a merged dir into another");
    fs::rename(m.join("b"), m.join("b2")).expect("rename a merged dir in place");
    fs::write(m.join("b2/moved/sub/x2"), b"new").unwrap();
    fs::remove_file(m.join("b2/moved/y")).unwrap();
    fs::create_dir(m.join("a")).unwrap();
    fs::rename(m.join("c"), m.join("keep/c")).expect("move a lower-only dir");
}

#[test]
fn merged_directories_rename_like_the_kernel() {
    if !fuse_available() {
        return;
    }
    let (_sc, k, f) = run_both(&renames);
    // The uppers hold the same names, types and redirects.
    let ku = snapshot(&k.upper, XattrSel::All);
    let fu = snapshot(&f.upper, XattrSel::All);
    let strip = |m: &std::collections::BTreeMap<std::path::PathBuf, Node>| {
        let mut m = m.clone();
        for n in m.values_mut() {
            n.xattrs.retain(|k, _| {
                k == "trusted.overlay.redirect"
                    || k == "trusted.overlay.opaque"
                    || k.starts_with("user.")
            });
            n.mode = 0;
        }
        m
    };
    let d = diff_snapshots(&strip(&ku), &strip(&fu));
    assert!(
        d.is_empty(),
        "upper layers differ (kernel vs ovlfuse):\n{}",
        d.join("\n")
    );
}

#[test]
fn redirects_written_by_ovlfuse_read_back_on_both() {
    if !fuse_available() {
        return;
    }
    let (sc, k, f) = run_both(&renames);
    let lc = LowerCheck::new(&f.lowers);
    // The kernel's view of its own upper, as reference.
    let k2 = Stack {
        lowers: k.lowers.clone(),
        upper: k.upper.clone(),
        work: sc.dir("kw2"),
        mnt: sc.dir("km2"),
    };
    let g = mount_kernel_redirect(&k2);
    let reference = snapshot(&k2.mnt, XattrSel::User);
    g.unmount();
    // ovlfuse remounted over its own upper, and the kernel over ovlfuse's upper.
    let f2 = Stack {
        lowers: f.lowers.clone(),
        upper: f.upper.clone(),
        work: sc.dir("fw2"),
        mnt: sc.dir("fm2"),
    };
    let g = mount_ovlfuse(&f2, &[]);
    let again = snapshot(&f2.mnt, XattrSel::User);
    g.unmount();
    assert_same_snapshots(
        "ovlfuse remount of its own upper",
        "kernel reference",
        &reference,
        "ovlfuse",
        &again,
    );
    let kf = Stack {
        lowers: f.lowers.clone(),
        upper: f.upper.clone(),
        work: sc.dir("kfw"),
        mnt: sc.dir("kfm"),
    };
    let g = mount_kernel_redirect(&kf);
    let kernel_on_ours = snapshot(&kf.mnt, XattrSel::User);
    g.unmount();
    assert_same_snapshots(
        "kernel over ovlfuse's upper",
        "kernel reference",
        &reference,
        "kernel on ovlfuse upper",
        &kernel_on_ours,
    );
    lc.verify();
}

#[test]
fn without_redirect_dir_merged_directories_do_not_move() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("redirect-off");
    let st = Stack::new(&sc, 2);
    for (i, l) in layers().iter().enumerate() {
        build(&st.lowers[i], l);
    }
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &["redirect_dir=off"]);
    let e = fs::rename(st.mnt.join("a"), st.mnt.join("a2")).expect_err("must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    g.unmount();
    lc.verify();
}

type Step<'a> = &'a dyn Fn(&Path);

/// Runs `steps` with redirect_dir=on on kernel overlayfs and on ovlfuse over identical
/// layers. After each step the mount is taken down and its upper becomes the top lower
/// layer of the next mount (unionmount-testsuite's `--ov=N` layer rotation); the merged
/// views are compared after every remount.
fn rotate_both(name: &str, base: &[E], steps: &[Step]) {
    let sc = Scratch::new(name);
    let stacks = |side: &str| -> Vec<Stack> {
        let base_dir = sc.dir(&format!("{side}/l"));
        build(&base_dir, base);
        let mut lowers = vec![base_dir];
        let mut out = Vec::new();
        for i in 0..steps.len() {
            let st = Stack {
                lowers: lowers.clone(),
                upper: sc.dir(&format!("{side}/u{i}")),
                work: sc.dir(&format!("{side}/w{i}")),
                mnt: sc.dir(&format!("{side}/m")),
            };
            lowers.insert(0, st.upper.clone());
            out.push(st);
        }
        out
    };
    let (ks, fs_) = (stacks("k"), stacks("f"));
    let lc = LowerCheck::new(&[ks[0].lowers.clone(), fs_[0].lowers.clone()].concat());
    for (i, step) in steps.iter().enumerate() {
        let kg = mount_kernel_redirect(&ks[i]);
        let fg = mount_ovlfuse(&fs_[i], &["redirect_dir=on"]);
        let kv = snapshot(&ks[i].mnt, XattrSel::User);
        let fv = snapshot(&fs_[i].mnt, XattrSel::User);
        assert_same_snapshots(
            &format!("{name}: merged view at mount {i}"),
            "kernel",
            &kv,
            "ovlfuse",
            &fv,
        );
        step(&ks[i].mnt);
        step(&fs_[i].mnt);
        let kv = snapshot(&ks[i].mnt, XattrSel::User);
        let fv = snapshot(&fs_[i].mnt, XattrSel::User);
        assert_same_snapshots(
            &format!("{name}: merged view after step {i}"),
            "kernel",
            &kv,
            "ovlfuse",
            &fv,
        );
        kg.unmount();
        fg.unmount();
    }
    lc.verify();
}

fn mv(m: &Path, from: &str, to: &str) {
    fs::rename(m.join(from), m.join(to)).unwrap_or_else(|e| panic!("rename {from} -> {to}: {e}"));
}

/// An absolute redirect whose path is missing in a middle layer: lookup goes on to the
/// next layer (unionmount-testsuite rename-dir with --ov=3).
#[test]
fn absolute_redirect_skips_layers_that_lack_its_path() {
    if !fuse_available() {
        return;
    }
    let base = [
        E::File("a/dir100/a", b"a"),
        E::Dir("a/empty100"),
        E::File("a/dir101/pop/b", b"b"),
        E::Dir("a/empty101"),
    ];
    rotate_both(
        "redirect-rot1",
        &base,
        &[
            &|m| mv(m, "a/dir100", "a/empty100/x"),
            &|m| mv(m, "a/dir101/pop", "a/empty101/pop"),
            &|_| {},
        ],
    );
}

/// A relative redirect met while following an absolute one names a sibling of the path
/// being followed (unionmount-testsuite rename-move-dir with --ov=3).
#[test]
fn relative_redirect_below_an_absolute_one_is_resolved_along_it() {
    if !fuse_available() {
        return;
    }
    let base = [E::File("a/dir102/a", b"a"), E::Dir("a/empty102")];
    rotate_both(
        "redirect-rot2",
        &base,
        &[
            &|m| mv(m, "a/dir102", "a/dir102x"),
            &|m| mv(m, "a/dir102x", "a/empty102/dir102"),
            &|_| {},
        ],
    );
}

/// Renaming a directory that already has an absolute redirect within its new parent keeps
/// the absolute redirect; a relative one would lose its contents at the next mount.
#[test]
fn rename_within_a_parent_keeps_an_absolute_redirect() {
    if !fuse_available() {
        return;
    }
    let base = [E::File("a/dir103/a", b"a"), E::Dir("a/empty103")];
    rotate_both(
        "redirect-rot3",
        &base,
        &[
            &|m| {
                mv(m, "a/dir103", "a/empty103/dir103");
                mv(m, "a/empty103/dir103", "a/empty103/dir103x");
            },
            &|_| {},
        ],
    );
}

/// A redirect on a directory along an absolute redirect's path rewrites the path the
/// layers below follow, as in the kernel's lookup: `c` is `b/s`, and `b` of the layer
/// below is `a/d` of the base layer, so `c` shows `a/d/s`.
#[test]
fn redirect_on_a_directory_along_an_absolute_path_is_followed() {
    if !fuse_available() {
        return;
    }
    let base = [E::File("a/d/s/f", b"f"), E::File("a/d/g", b"g")];
    rotate_both(
        "redirect-rot4",
        &base,
        &[&|m| mv(m, "a/d", "b"), &|m| mv(m, "b/s", "c"), &|m| {
            assert_eq!(fs::read(m.join("c/f")).unwrap(), b"f", "{m:?}");
        }],
    );
}

/// An opaque directory along an absolute redirect's path hides the layers below it.
#[test]
fn opaque_directory_along_an_absolute_path_hides_the_layers_below() {
    if !fuse_available() {
        return;
    }
    let base = [E::File("a/s/hidden", b"h"), E::Dir("x")];
    rotate_both(
        "redirect-rot5",
        &base,
        &[
            // `a` becomes opaque (a new directory over the removed one), holding a new `s`.
            &|m| {
                fs::remove_dir_all(m.join("a")).unwrap();
                fs::create_dir_all(m.join("a/s")).unwrap();
                fs::write(m.join("a/s/new"), b"n").unwrap();
            },
            &|m| mv(m, "a/s", "x/moved"),
            &|m| {
                assert_eq!(names(&m.join("x/moved")).unwrap(), vec!["new"], "{m:?}");
            },
        ],
    );
}

/// Whether every name listed under `m` (recursively, `.` and `..` aside) carries the
/// number its lstat shows; the names that do not, with both numbers.
fn listed_apart_from_stat(m: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut dirs = vec![m.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in read_dir_raw(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let p = d.join(&e.name);
            let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if md.ino() != e.ino {
                bad.push(format!(
                    "{}: listed {} stat {}",
                    p.display(),
                    e.ino,
                    md.ino()
                ));
            }
            if md.is_dir() {
                dirs.push(p);
            }
        }
    }
    bad
}

/// Directories renamed into a merged directory, into a new upper-only one and within their
/// parent are listed, after a remount, with the number stat gives them (that of the lower
/// directory their redirect leads to), on both. Names-only listings make ovlfuse number the
/// entries itself rather than from a lookup.
#[test]
fn renamed_directories_list_with_their_stat_number_after_a_remount() {
    if !fuse_available() {
        return;
    }
    let moves = |m: &Path| {
        fs::create_dir(m.join("new")).unwrap();
        mv(m, "b", "a/b");
        mv(m, "c", "new/c");
        mv(m, "keep", "kept");
    };
    let sc = Scratch::new("redirect-dino");
    for (side, opts) in [("k", None), ("f", Some("listattrs=off"))] {
        let st = Stack::new_at(&sc.dir(side), 2);
        for (i, l) in layers().iter().enumerate() {
            build(&st.lowers[i], l);
        }
        let mount = |st: &Stack| match opts {
            None => mount_kernel_redirect(st),
            Some(o) => mount_ovlfuse(st, &["redirect_dir=on", o]),
        };
        let g = mount(&st);
        moves(&st.mnt);
        g.unmount();
        let g = mount(&st);
        let bad = listed_apart_from_stat(&st.mnt);
        assert!(
            bad.is_empty(),
            "{side}: listed apart from stat:\n{}",
            bad.join("\n")
        );
        g.unmount();
    }
}

/// The directory `path` (relative, its components below PATH_MAX each) opened under
/// `root` one component at a time, made first where `create`: the whole path is longer
/// than one system call may name.
fn open_deep(root: &Path, path: &[String], create: bool) -> std::os::fd::OwnedFd {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fd: OwnedFd = fs::File::open(root).expect("open the root").into();
    for c in path {
        let name = CString::new(c.as_str()).unwrap();
        if create {
            let r = unsafe { libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755) };
            assert_eq!(r, 0, "mkdir {c}: {}", std::io::Error::last_os_error());
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let n = unsafe { libc::openat(fd.as_raw_fd(), name.as_ptr(), flags) };
        assert!(n >= 0, "open {c}: {}", std::io::Error::last_os_error());
        fd = unsafe { OwnedFd::from_raw_fd(n) };
    }
    fd
}

/// renameat of "victim" in directory `from` to "moved" in `to`; the errno on failure.
fn move_victim(
    from: &impl std::os::fd::AsRawFd,
    to: &impl std::os::fd::AsRawFd,
) -> Result<(), i32> {
    let (a, b) = (c"victim", c"moved");
    // SAFETY: two open directory descriptors and two NUL-terminated names.
    let r = unsafe { libc::renameat(from.as_raw_fd(), a.as_ptr(), to.as_raw_fd(), b.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// A lower directory 17 levels of 255-byte names down moves to another directory: its
/// redirect (the absolute path of its old place, 4.4 KB) does not fit in an ext4 xattr.
/// The kernel fails such a rename with EXDEV, so that mv copies instead; ovlfuse must do
/// the same, not report the upper filesystem's ENOSPC, and leave the directory where it
/// was.
#[test]
fn a_redirect_too_long_for_the_upper_filesystem_fails_the_rename_with_exdev() {
    use std::os::fd::AsRawFd;
    if !fuse_available() {
        return;
    }
    let deep: Vec<String> = (0..17)
        .map(|i| format!("{i:02}{}", "d".repeat(253)))
        .collect();
    let sc = Scratch::new("redirect-long");
    let mut outcomes = Vec::new();
    for side in ["kernel", "ovlfuse"] {
        let st = Stack::new_at(&sc.dir(side), 1);
        build(&st.lowers[0], &[E::Dir("b")]);
        let mut path = vec!["a".to_string()];
        path.extend(deep.iter().cloned());
        path.push("victim".into());
        let victim = open_deep(&st.lowers[0], &path, true);
        fs::write(
            format!("/proc/self/fd/{}/file", victim.as_raw_fd()),
            b"data",
        )
        .unwrap();
        drop(victim);
        let lc = LowerCheck::new(&st.lowers);
        let g = match side {
            "kernel" => mount_kernel_redirect(&st),
            _ => mount_ovlfuse(&st, &["redirect_dir=on"]),
        };
        let parent = open_deep(&st.mnt, &path[..path.len() - 1], false);
        let target = open_deep(&st.mnt, &["b".to_string()], false);
        let outcome = move_victim(&parent, &target).err();
        let still = fs::read(format!("/proc/self/fd/{}/victim/file", parent.as_raw_fd()));
        let moved = st.mnt.join("b/moved").exists();
        outcomes.push((outcome, still.ok(), moved));
        drop((parent, target));
        g.unmount();
        lc.verify();
    }
    assert_eq!(
        outcomes[0],
        (Some(libc::EXDEV), Some(b"data".to_vec()), false),
        "setup: the kernel overlay should refuse the move with EXDEV"
    );
    assert_eq!(
        outcomes[1], outcomes[0],
        "ovlfuse (left) vs kernel (right): rename result, the file left behind, the moved name"
    );
}

/// The same move with the upper on tmpfs, which holds the 4.4 KB redirect: ovlfuse moves
/// the directory (the kernel, by default, refuses redirects over 256 bytes with EXDEV:
/// README, "Differences"), and the moved directory is then used through its redirect, a
/// path longer than one system call may name: on this mount, after a remount, and by the
/// kernel overlay on the same layers, which reads such redirects whatever its own limit.
#[test]
fn a_redirect_longer_than_a_path_is_written_and_followed() {
    use std::os::fd::AsRawFd;
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("redirect-longer");
    let mut st = Stack::new(&sc, 1);
    let tmp = sc.dir("upperfs");
    let _t = mount_tmpfs(&tmp);
    st.move_upper_to(&tmp);
    build(&st.lowers[0], &[E::Dir("b")]);
    let mut path = vec!["a".to_string()];
    path.extend((0..17).map(|i| format!("{i:02}{}", "d".repeat(253))));
    let parent = open_deep(&st.lowers[0], &path, true);
    let victim = format!("/proc/self/fd/{}/victim", parent.as_raw_fd());
    fs::create_dir(&victim).unwrap();
    fs::write(format!("{victim}/low"), b"low").unwrap();
    drop(parent);
    let lc = LowerCheck::new(&st.lowers);

    let g = mount_ovlfuse(&st, &["redirect_dir=on"]);
    let parent = open_deep(&st.mnt, &path, false);
    let target = open_deep(&st.mnt, &["b".to_string()], false);
    move_victim(&parent, &target).unwrap_or_else(|e| panic!("rename: errno {e}"));
    drop((parent, target));
    fs::write(st.mnt.join("b/moved/new"), b"new").expect("create in the moved directory");
    let redirect = lgetxattr(&st.upper.join("b/moved"), "trusted.overlay.redirect")
        .expect("the moved directory's redirect");
    assert!(
        redirect.len() > 4096,
        "redirect of {} bytes",
        redirect.len()
    );
    let seen = |m: &Path| {
        let mut names: Vec<String> = fs::read_dir(m.join("b/moved"))
            .unwrap_or_else(|e| panic!("list {m:?}/b/moved: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let low = fs::read(m.join("b/moved/low")).unwrap_or_default();
        let parent = open_deep(m, &path, false);
        let left = fs::symlink_metadata(format!("/proc/self/fd/{}/victim", parent.as_raw_fd()));
        (names, low, left.is_ok())
    };
    let want = (
        vec!["low".to_string(), "new".to_string()],
        b"low".to_vec(),
        false,
    );
    assert_eq!(seen(&st.mnt), want, "ovlfuse, right after the move");
    g.unmount();
    let g = mount_ovlfuse(&st, &["redirect_dir=on"]);
    assert_eq!(seen(&st.mnt), want, "ovlfuse, after a remount");
    g.unmount();
    let g = mount_kernel_redirect(&st);
    assert_eq!(seen(&st.mnt), want, "the kernel overlay on ovlfuse's upper");
    g.unmount();
    lc.verify();
}

/// Redirects the kernel calls invalid, or that lead through `.` or `..`, on directories in
/// the upper and in a middle layer: the lookup of such a directory fails as on the kernel
/// overlay (EINVAL for an empty value, an empty component or a relative path with a `/`;
/// EACCES where the lookup meets `.` or `..`), its parent still lists it, and nothing
/// outside a layer is ever reached. A bad redirect in the lowest layer is no error: there
/// is no layer below it, and the kernel reads none there. ovlfuse used to ignore the bad
/// ones, and followed `.` (merging a lower directory's parent in) and `..` (a stat of what
/// holds the layer).
#[test]
fn redirects_the_kernel_calls_invalid_fail_their_lookup_as_there() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("redirect-invalid");
    // (layer: 0 upper, 1 the middle lower; directory; redirect)
    let bad: [(usize, &str, &[u8]); 17] = [
        (0, "u-empty", b""),
        (0, "u-relative-path", b"../a"),
        (0, "u-double-slash", b"/a//sub"),
        (0, "u-trailing-slash", b"/a/sub/"),
        (0, "u-root", b"/"),
        (0, "u-dot", b"."),
        (0, "u-dotdot", b".."),
        (0, "u-abs-dot", b"/."),
        (0, "u-abs-dotdot", b"/a/.."),
        (0, "u-missing-then-dotdot", b"/nothere/.."),
        (0, "u-nul", b"/a\0junk"),
        (0, "u-through-bad", b"/x/y"),
        (1, "m-dotdot", b".."),
        (1, "m-double-slash", b"/a//sub"),
        (1, "m-good", b"/a/sub"),
        // Through `p`, a lowest-layer directory whose bad redirect the kernel never reads.
        (0, "u-through-lowest", b"/p/q"),
        (1, "m-through-lowest", b"/p/q"),
    ];
    let mut seen = Vec::new();
    for side in ["kernel", "ovlfuse"] {
        let st = Stack::new_at(&sc.dir(side), 2);
        build(
            &st.lowers[1],
            &[E::File("a/sub/f", b"f"), E::File("b/g", b"g")],
        );
        // What a `..` out of the lowest layer would reach.
        build(&sc.dir(side), &[E::File("outside", b"o")]);
        build(&st.lowers[1], &[E::File("p/q/in-q", b"q")]);
        ok(
            lsetxattr(
                &st.lowers[1].join("p"),
                "trusted.overlay.redirect",
                b"bad/x",
            ),
            "redirect on the lowest layer's p",
        );
        build(&st.lowers[0], &[E::File("x/y/in-y", b"y")]);
        ok(
            lsetxattr(&st.lowers[0].join("x"), "trusted.overlay.redirect", b"q/r"),
            "redirect on x",
        );
        for (layer, dir, value) in bad {
            let root = if layer == 0 { &st.upper } else { &st.lowers[0] };
            build(root, &[E::File(&format!("{dir}/own"), b"o")]);
            ok(
                lsetxattr(&root.join(dir), "trusted.overlay.redirect", value),
                "set the redirect",
            );
        }
        let g = if side == "kernel" {
            mount_kernel_redirect(&st)
        } else {
            mount_ovlfuse(&st, &["redirect_dir=on"])
        };
        let m = &st.mnt;
        let mut view = vec![format!("root lists {}", outcome(&names(m)))];
        for (_, dir, _) in bad {
            view.push(format!(
                "{dir}: stat {}, lists {}",
                outcome(&fs::symlink_metadata(m.join(dir)).map(|md| md.is_dir())),
                outcome(&names(&m.join(dir)))
            ));
        }
        view.push(format!("x: lists {}", outcome(&names(&m.join("x")))));
        g.unmount();
        assert!(
            !view.iter().any(|v| v.contains("outside")),
            "{side} reached outside its layers: {view:#?}"
        );
        seen.push(view);
    }
    assert_eq!(seen[0], seen[1], "kernel, then ovlfuse");
}
