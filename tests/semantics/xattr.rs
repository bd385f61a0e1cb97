//! Extended attributes and POSIX ACLs through the mount, including the escaping of
//! overlay-prefixed names.

use super::*;

#[test]
fn user_xattrs_set_get_list_remove() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-xattr-user",
        &[&[
            E::File("f", b"f"),
            E::Xattr("f", "user.old", b"old"),
            E::Dir("d"),
            E::Xattr("d", "user.dold", b"1"),
            E::Symlink("s", "f"),
        ]],
        &[E::File("u", b"u")],
    );
    t.both("get lower xattr", |r| {
        outcome(&lgetxattr(&r.join("f"), "user.old"))
    });
    t.both("set on lower file", |r| {
        outcome_unit(&lsetxattr(&r.join("f"), "user.new", b"v1"))
    });
    t.both("replace", |r| {
        outcome_unit(&lsetxattr(&r.join("f"), "user.new", b"v2-longer"))
    });
    t.both("get", |r| outcome(&lgetxattr(&r.join("f"), "user.new")));
    t.both("list", |r| sorted_xattrs(&r.join("f")));
    t.both("remove lower-origin xattr", |r| {
        outcome_unit(&lremovexattr(&r.join("f"), "user.old"))
    });
    t.both("get removed", |r| {
        outcome(&lgetxattr(&r.join("f"), "user.old"))
    });
    t.both("remove missing", |r| {
        outcome_unit(&lremovexattr(&r.join("f"), "user.nope"))
    });
    t.both("list after remove", |r| sorted_xattrs(&r.join("f")));
    t.both("set on lower dir", |r| {
        outcome_unit(&lsetxattr(&r.join("d"), "user.dnew", b"2"))
    });
    t.both("list dir", |r| sorted_xattrs(&r.join("d")));
    t.both("set on upper file", |r| {
        outcome_unit(&lsetxattr(&r.join("u"), "user.u", &[0, 1, 2, 255]))
    });
    t.both("binary value", |r| {
        outcome(&lgetxattr(&r.join("u"), "user.u"))
    });
    t.both("user xattr on symlink", |r| {
        outcome_unit(&lsetxattr(&r.join("s"), "user.x", b"1"))
    });
    t.both("big value", |r| {
        (
            outcome_unit(&lsetxattr(&r.join("u"), "user.big", &vec![b'z'; 3000])),
            outcome(&lgetxattr(&r.join("u"), "user.big").map(|v| v.len())),
        )
    });
    t.both("missing file", |r| {
        outcome(&lgetxattr(&r.join("nope"), "user.x"))
    });
    t.finish(true);
}

#[test]
fn private_overlay_xattrs_never_show_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-xattr-private",
        &[&[
            E::File("f", b"f"),
            E::Xattr("f", "trusted.overlay.test", b"lower private"),
            E::Xattr("f", "user.visible", b"1"),
            E::Opaque("lo"),
            E::File("lo/x", b"x"),
            E::Dir("d"),
            E::Xattr("d", "trusted.overlay.test", b"p"),
        ]],
        &[
            E::Opaque("uo"),
            E::File("uf", b"u"),
            E::Xattr("uf", "trusted.overlay.test", b"upper private"),
            E::Xattr("uf", "trusted.other", b"t"),
        ],
    );
    let paths = ["f", "lo", "d", "uo", "uf", ""];
    // listxattr first (the main promise), then getxattr of private names.
    let lists = t.both_ret("listxattr of every entry", |r| {
        paths.map(|p| (p, sorted_xattrs(&r.join(p))))
    });
    for (p, names) in &lists {
        if let Ok(names) = names {
            assert!(
                !names.iter().any(|n| n.starts_with("trusted.overlay.")),
                "{p:?} lists private xattrs: {names:?}"
            );
        }
    }
    t.both("getxattr of private names", |r| {
        let mut v = Vec::new();
        for p in paths {
            for n in [
                "trusted.overlay.test",
                "trusted.overlay.opaque",
                "trusted.overlay.origin",
            ] {
                v.push(format!("{p:?} {n}: {}", outcome(&lgetxattr(&r.join(p), n))));
            }
        }
        v
    });
    t.both("copy-up keeps user xattrs, hides private", |r| {
        (
            outcome_unit(&fs::set_permissions(
                r.join("f"),
                fs::Permissions::from_mode(0o600),
            )),
            sorted_xattrs(&r.join("f")),
        )
    });
    t.finish(false);
}

#[test]
fn overlay_prefixed_xattrs_set_through_the_mount_are_escaped() {
    if !fuse_available() {
        return;
    }
    // Kernel >= 6.7 stores trusted.overlay.X set by a user as trusted.overlay.overlay.X in the
    // upper layer and shows it back as trusted.overlay.X (nested overlays rely on this).
    let t = twin(
        "sem-xattr-escape",
        &[&[E::File("f", b"f")]],
        &[E::File("u", b"u")],
    );
    for p in ["f", "u"] {
        t.both(
            &format!("set/get/list/remove trusted.overlay.foo on {p}"),
            |r| {
                let q = r.join(p);
                let s = lsetxattr(&q, "trusted.overlay.foo", b"bar");
                let g = lgetxattr(&q, "trusted.overlay.foo");
                let l = sorted_xattrs(&q);
                let s2 = lsetxattr(&q, "trusted.overlay.opaque", b"y");
                let l2 = sorted_xattrs(&q);
                let rm = lremovexattr(&q, "trusted.overlay.opaque");
                (
                    outcome_unit(&s),
                    outcome(&g),
                    l,
                    outcome_unit(&s2),
                    l2,
                    outcome_unit(&rm),
                )
            },
        );
    }
    t.finish_with(true, |k, f| {
        for p in ["f", "u"] {
            let raw = |st: &Stack| {
                let mut v: Vec<String> = llistxattr(&st.upper.join(p))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.starts_with("trusted.overlay.overlay."))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                raw(f),
                raw(k),
                "escaped names stored in upper/{p}: ovlfuse (left) vs kernel (right)"
            );
        }
    });
}

#[test]
fn posix_acl_changes_and_inheritance() {
    if !fuse_available() {
        return;
    }
    const U: u32 = u32::MAX;
    const NOBODY: u32 = 65534;
    let dflt = acl(&[
        (1, 7, U),
        (2, 5, NOBODY),
        (4, 5, U),
        (0x10, 7, U),
        (0x20, 0, U),
    ]);
    let d2 = dflt.clone();
    let t = twin_with(
        "sem-acl2",
        &[&[
            E::File("f", b"f"),
            E::Mode("f", 0o644),
            E::Dir("dd"),
            E::Mode("dd", 0o777),
            E::File("dd/old", b"old"),
            E::Dir("dd/olddir"),
            E::File("g", b"g"),
            E::Mode("g", 0o600),
        ]],
        &[],
        move |st| lsetxattr(&st.lowers[0].join("dd"), "system.posix_acl_default", &d2).unwrap(),
    );
    let get = |p: &Path, n: &str| outcome(&lgetxattr(p, n));
    t.both(
        "set an access ACL through the mount (copy-up), mode follows the mask",
        |r| {
            let s = lsetxattr(
                &r.join("f"),
                "system.posix_acl_access",
                &acl(&[
                    (1, 6, U),
                    (2, 6, NOBODY),
                    (4, 4, U),
                    (0x10, 6, U),
                    (0x20, 4, U),
                ]),
            );
            (
                outcome_unit(&s),
                stat_str(&r.join("f")),
                get(&r.join("f"), "system.posix_acl_access"),
            )
        },
    );
    t.both("chmod rewrites the ACL mask", |r| {
        let c = fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o640));
        (
            outcome_unit(&c),
            stat_str(&r.join("f")),
            get(&r.join("f"), "system.posix_acl_access"),
        )
    });
    t.both("remove the ACL", |r| {
        (
            outcome_unit(&lremovexattr(&r.join("f"), "system.posix_acl_access")),
            stat_str(&r.join("f")),
        )
    });
    t.both(
        "files and dirs created under a default ACL, umask 077 ignored",
        |r| {
            let c = |n: &str| cpath(&r.join(n));
            let res = run_as(
                NOBODY,
                NOBODY,
                &[
                    Op::Umask(0o077),
                    Op::Open(c("dd/file"), libc::O_CREAT | libc::O_WRONLY),
                    Op::Mkdir(c("dd/sub")),
                ],
            );
            (
                res,
                stat_str(&r.join("dd/file")),
                stat_str(&r.join("dd/sub")),
                get(&r.join("dd/file"), "system.posix_acl_access"),
                get(&r.join("dd/sub"), "system.posix_acl_default"),
                get(&r.join("dd/sub"), "system.posix_acl_access"),
            )
        },
    );
    // Over a whiteout the object is built elsewhere and swapped in: it must still take the
    // default ACL of the directory it lands in (the kernel overlay sets the ACLs it computes).
    t.both(
        "created again over whiteouts under a default ACL, umask 077 ignored",
        |r| {
            let c = |n: &str| cpath(&r.join(n));
            let removed = (
                outcome_unit(&fs::remove_file(r.join("dd/old"))),
                outcome_unit(&fs::remove_dir(r.join("dd/olddir"))),
            );
            let res = run_as(
                NOBODY,
                NOBODY,
                &[
                    Op::Umask(0o077),
                    Op::Open(c("dd/old"), libc::O_CREAT | libc::O_WRONLY),
                    Op::Mkdir(c("dd/olddir")),
                ],
            );
            (
                removed,
                res,
                stat_str(&r.join("dd/old")),
                stat_str(&r.join("dd/olddir")),
                get(&r.join("dd/old"), "system.posix_acl_access"),
                get(&r.join("dd/olddir"), "system.posix_acl_default"),
                get(&r.join("dd/olddir"), "system.posix_acl_access"),
            )
        },
    );
    t.both("umask 027 applies where there is no default ACL", |r| {
        let res = run_as(
            NOBODY,
            NOBODY,
            &[
                Op::Umask(0o027),
                Op::Open(
                    cpath(&r.join("dd/sub/../../newfile_denied")),
                    libc::O_CREAT | libc::O_WRONLY,
                ),
            ],
        );
        (
            res,
            outcome_unit(&fs::symlink_metadata(r.join("newfile_denied"))),
        )
    });
    t.finish(true);
}
