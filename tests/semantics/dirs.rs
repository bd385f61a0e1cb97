//! Directories: mkdir/rmdir over lower directories, opaque marks, impure marks, the
//! workdir left clean.

use super::*;

#[test]
fn rmdir_of_nonempty_merged_dir_and_of_emptied_dir() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rmdir",
        &[
            &[E::File("d/a", b"a")],
            &[E::File("d/b", b"b"), E::Dir("e")],
        ],
        &[E::File("d/c", b"c"), E::Whiteout("d/zz")],
    );
    t.both("rmdir non-empty merged dir", |r| {
        outcome_unit(&fs::remove_dir(r.join("d")))
    });
    t.both("rmdir a file", |r| {
        outcome_unit(&fs::remove_dir(r.join("d/a")))
    });
    for n in ["a", "b", "c"] {
        t.both(&format!("unlink d/{n}"), |r| {
            outcome_unit(&fs::remove_file(r.join("d").join(n)))
        });
    }
    t.both("rmdir emptied dir (only whiteouts left)", |r| {
        outcome_unit(&fs::remove_dir(r.join("d")))
    });
    t.both("lookup removed dir", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("d")))
    });
    t.both("rmdir empty lower dir", |r| {
        outcome_unit(&fs::remove_dir(r.join("e")))
    });
    t.both("rmdir missing", |r| {
        outcome_unit(&fs::remove_dir(r.join("e")))
    });
    assert!(
        is_whiteout(&t.f.upper.join("d")),
        "upper/d must be a whiteout after rmdir"
    );
    assert!(
        is_whiteout(&t.f.upper.join("e")),
        "upper/e must be a whiteout after rmdir"
    );
    t.finish(true);
}

#[test]
fn rmdir_then_mkdir_gives_empty_opaque_dir_and_new_dirs_are_not_opaque() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-mkdir-opaque",
        &[&[
            E::File("d/a", b"a"),
            E::File("d/sub/x", b"x"),
            E::File("wf", b"file"),
        ]],
        &[],
    );
    t.both("rm -r d", |r| {
        vec![
            outcome_unit(&fs::remove_file(r.join("d/a"))),
            outcome_unit(&fs::remove_file(r.join("d/sub/x"))),
            outcome_unit(&fs::remove_dir(r.join("d/sub"))),
            outcome_unit(&fs::remove_dir(r.join("d"))),
            outcome_unit(&fs::create_dir(r.join("d"))),
        ]
    });
    t.both("readdir recreated d", |r| names_or_err(&r.join("d")));
    t.both("lookup old child", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("d/a")))
    });
    t.both("mkdir brand-new", |r| {
        outcome_unit(&fs::create_dir(r.join("brandnew")))
    });
    t.both("unlink file, mkdir same name", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("wf"))),
            outcome_unit(&fs::create_dir(r.join("wf"))),
            names_or_err(&r.join("wf")),
        )
    });
    let opaque = |p: &Path| {
        outcome(
            &lgetxattr(p, "trusted.overlay.opaque")
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        )
    };
    assert_eq!(
        opaque(&t.f.upper.join("d")),
        "ok: \"y\"",
        "recreated d must be opaque in upper"
    );
    assert_eq!(
        opaque(&t.f.upper.join("brandnew")),
        opaque(&t.k.upper.join("brandnew")),
        "brand-new dir opaque marker vs kernel"
    );
    // With redirect_dir=on (the default of both here) a new directory in a merged parent
    // is marked opaque too; the root of this stack is merged.
    assert_eq!(
        opaque(&t.f.upper.join("brandnew")),
        "ok: \"y\"",
        "a new dir in a merged parent is opaque with redirect_dir=on"
    );
    t.both("opaque marker is not listed through the mount", |r| {
        sorted_xattrs(&r.join("d")).map(|v| {
            v.into_iter()
                .filter(|n| n.starts_with("trusted.overlay."))
                .collect::<Vec<_>>()
        })
    });
    t.finish(true);
}

#[test]
fn create_over_whiteout() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-create-over-wh",
        &[&[
            E::File("w", b"lower"),
            E::File("v", b"lower v"),
            E::Dir("dd"),
        ]],
        &[E::Whiteout("w")],
    );
    t.both("create over upper whiteout", |r| {
        outcome_unit(&fs::write(r.join("w"), b"new w"))
    });
    t.both("unlink + create", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("v"))),
            outcome_unit(&fs::write(r.join("v"), b"new v")),
        )
    });
    t.both("symlink over whiteout", |r| {
        (
            outcome_unit(&fs::remove_dir(r.join("dd"))),
            outcome_unit(&std::os::unix::fs::symlink("w", r.join("dd"))),
        )
    });
    t.both("exclusive create over whiteout", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("w"))),
            outcome_unit(
                &fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(r.join("w")),
            ),
        )
    });
    assert!(
        fs::symlink_metadata(t.f.upper.join("v"))
            .map(|m| m.is_file())
            .unwrap_or(false),
        "upper/v must be a regular file"
    );
    t.finish(true);
}

/// rm -rf of a merged directory: the view and upper match the kernel's, and once the
/// daemon has exited its work directory holds nothing but the shared whiteout: the old
/// upper copy of the removed directory, with a whiteout per lower entry, is moved there
/// to be deleted.
#[test]
fn removed_merged_directories_leave_nothing_in_the_workdir() {
    if !fuse_available() {
        return;
    }
    let files: Vec<String> = (0..600).map(|i| format!("d/sub/f{i}")).collect();
    let mut lower: Vec<E> = files.iter().map(|f| E::File(f, b"l")).collect();
    lower.push(E::File("d/top", b"t"));
    let t = twin("sem-reap", &[&lower], &[E::File("d/upper-only", b"u")]);
    t.both("rm -rf d", |m| {
        fs::remove_dir_all(m.join("d")).map_err(|e| e.kind())
    });
    t.both("d is gone", |m| fs::symlink_metadata(m.join("d")).is_err());
    t.both("mkdir d again", |m| {
        fs::create_dir(m.join("d")).map_err(|e| e.kind())
    });
    t.both("d is empty", |m| {
        ok(fs::read_dir(m.join("d")), "list d").count()
    });
    t.finish_with(true, |_, f| {
        let left: Vec<String> = ok(fs::read_dir(f.work.join("work")), "list work/work")
            .map(|e| ok(e, "dirent").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "#whiteout")
            .collect();
        assert!(
            left.is_empty(),
            "ovlfuse left {left:?} in its work directory after the unmount"
        );
    });
}

/// xfstests overlay/038: an upper directory is marked impure when a copied-up file moves
/// into it from another directory (not when an upper-only file does), readdir then shows
/// the copy's own inode number, and once the last such entry is gone the next listing
/// drops the mark; a directory that still holds a copy keeps it.
#[test]
fn impure_marks_come_and_go_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let got = kernel_then_ovlfuse(
        "sem-impure",
        "",
        |st: &Stack| {
            build(
                &st.lowers[0],
                &[
                    E::File("f1", b"1"),
                    E::File("f2", b"2"),
                    E::File("f3", b"3"),
                    E::Dir("t"),
                ],
            )
        },
        |m, kernel| {
            let upper = m.parent().unwrap().join("upper");
            let marked = |d: &str| lgetxattr(&upper.join(d), "trusted.overlay.impure").is_ok();
            // Each listed name's d_ino against its st_ino.
            let inos_agree = |d: &str| {
                read_dir_raw(&m.join(d))
                    .unwrap()
                    .iter()
                    .filter(|e| e.name != "." && e.name != "..")
                    .all(|e| fs::symlink_metadata(m.join(d).join(&e.name)).unwrap().ino() == e.ino)
            };
            let mut steps = Vec::new();
            let mut note = |what: &str, d: &str| {
                let agree = inos_agree(d);
                steps.push(format!("{what}: marked {} d_ino {agree}", marked(d)));
                assert!(
                    agree,
                    "{what}: d_ino differs from st_ino (kernel: {kernel})"
                );
            };
            for d in ["a", "b", "plain"] {
                fs::create_dir_all(m.join(format!("t/{d}/sub"))).unwrap();
            }
            note("new directory", "t/a");
            fs::write(m.join("t/u"), b"u").unwrap();
            fs::rename(m.join("t/u"), m.join("t/plain/u")).unwrap();
            fs::rename(m.join("t/plain/u"), m.join("t/plain/v")).unwrap();
            note("an upper-only file moved in", "t/plain");
            fs::rename(m.join("f1"), m.join("t/a/f1")).unwrap();
            note("a lower file moved in", "t/a");
            fs::rename(m.join("f2"), m.join("t/b/f2")).unwrap();
            fs::rename(m.join("f3"), m.join("t/b/f3")).unwrap();
            note("two lower files moved in", "t/b");
            fs::remove_file(m.join("t/a/f1")).unwrap();
            fs::remove_dir(m.join("t/a/sub")).unwrap();
            note("its only copy removed, listed", "t/a");
            fs::remove_file(m.join("t/b/f2")).unwrap();
            note("one of two copies removed, listed", "t/b");
            fs::rename(m.join("t/b/f3"), m.join("t/f3")).unwrap();
            note("the other moved out, listed", "t/b");
            steps
        },
    );
    let want = [
        "new directory: marked false d_ino true",
        "an upper-only file moved in: marked false d_ino true",
        "a lower file moved in: marked true d_ino true",
        "two lower files moved in: marked true d_ino true",
        "its only copy removed, listed: marked false d_ino true",
        "one of two copies removed, listed: marked true d_ino true",
        "the other moved out, listed: marked false d_ino true",
    ];
    assert_eq!(got[0], want, "kernel overlayfs");
    assert_eq!(got[1], got[0], "ovlfuse against the kernel");
}
