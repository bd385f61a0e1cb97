//! Hand-written sequences, each checking one overlay behaviour against the kernel.

use super::*;

pub(crate) fn s(x: &str) -> String {
    x.to_string()
}
pub(crate) fn file(p: &str, d: &str) -> LE {
    LE::File(s(p), d.as_bytes().to_vec())
}
pub(crate) fn dir(p: &str) -> LE {
    LE::Dir(s(p))
}
/// A set-group-ID directory (mode 02775) owned by `uid:gid`, then `inside` it.
pub(crate) fn setgid_dir(p: &str, uid: u32, gid: u32, inside: Vec<LE>) -> Vec<LE> {
    let mut v = vec![dir(p), LE::Mode(s(p), 0o2775), LE::Owner(s(p), uid, gid)];
    v.extend(inside);
    v
}
pub(crate) fn op_write(p: &str, d: &str) -> Op {
    Op::CreateWrite {
        path: s(p),
        data: d.as_bytes().to_vec(),
        excl: false,
        mode: 0o644,
    }
}
pub(crate) fn op_append(p: &str, d: &str) -> Op {
    Op::Append {
        path: s(p),
        data: d.as_bytes().to_vec(),
    }
}
pub(crate) fn op_read(p: &str) -> Op {
    Op::Read { path: s(p) }
}
pub(crate) fn op_stat(p: &str) -> Op {
    Op::Stat {
        path: s(p),
        follow: false,
    }
}
pub(crate) fn op_readdir(p: &str) -> Op {
    Op::Readdir { path: s(p) }
}
pub(crate) fn op_rename(a: &str, b: &str, flags: u32) -> Op {
    Op::Rename {
        from: s(a),
        to: s(b),
        flags,
    }
}

/// Run a hand-written case; panic with a report on any difference. Returns the kernel results.
pub(crate) fn check_case(case: Case) -> Vec<R> {
    match run_case_caught(&case, true) {
        Ok(Outcome {
            documented: Some(why),
            ..
        }) => panic!(
            "{}: ended early at a documented difference ({}), so its later steps went \
             unchecked",
            case.name, why
        ),
        Ok(o) => o.kernel,
        Err(f) => panic!("{}", report(&case, &f)),
    }
}

/// A hand-written case that must end at a difference the README documents: the kernel
/// overlay succeeds where ovlfuse refuses (`documented_divergence`), and every step before
/// agrees.
pub(crate) fn regress_documented(name: &str, layers: Vec<Vec<LE>>, ops: Vec<Op>) {
    if !common::fuse_available() {
        return;
    }
    let case = Case::new(name, layers, ops);
    match run_case_caught(&case, true) {
        Ok(o) => assert!(
            o.documented.is_some(),
            "{}: the kernel and ovlfuse agreed throughout; the README's difference is gone",
            name
        ),
        Err(f) => panic!("{}", report(&case, &f)),
    }
}

#[test]
pub(crate) fn rmdir_then_mkdir_is_opaque() {
    if !common::fuse_available() {
        return;
    }
    let k = check_case(Case::new(
        "rmdir_then_mkdir_is_opaque",
        vec![
            vec![dir("d1"), file("d1/x", "top")],
            vec![dir("d1"), file("d1/y", "bottom"), file("a", "a")],
        ],
        vec![
            Op::Rmdir { path: s("d1") },
            Op::Unlink { path: s("d1/x") },
            Op::Unlink { path: s("d1/y") },
            op_readdir("d1"),
            Op::Rmdir { path: s("d1") },
            op_stat("d1"),
            Op::Mkdir {
                path: s("d1"),
                mode: 0o755,
            },
            op_readdir("d1"),
            op_write("d1/x", "new"),
            op_readdir("d1"),
            op_readdir("."),
        ],
    ));
    assert_eq!(k[0], Err(libc::ENOTEMPTY));
    assert_eq!(k[4], Ok(s("ok")));
    assert_eq!(k[5], Err(libc::ENOENT));
}

#[test]
pub(crate) fn unlink_lower_then_recreate() {
    if !common::fuse_available() {
        return;
    }
    let k = check_case(Case::new(
        "unlink_lower_then_recreate",
        vec![
            vec![file("a", "lower a"), dir("d1"), file("d1/x", "lower x")],
            vec![file("b", "bottom b")],
        ],
        vec![
            Op::Unlink { path: s("a") },
            op_stat("a"),
            op_read("a"),
            op_readdir("."),
            op_write("a", "upper a"),
            op_read("a"),
            Op::Unlink { path: s("b") },
            Op::Mkfifo {
                path: s("b"),
                mode: 0o644,
            },
            op_stat("b"),
            Op::Unlink { path: s("d1/x") },
            Op::Symlink {
                target: s("../a"),
                path: s("d1/x"),
            },
            op_read("d1/x"),
            op_readdir("d1"),
        ],
    ));
    assert_eq!(k[1], Err(libc::ENOENT));
}

#[test]
pub(crate) fn rename_file_over_lower_file() {
    if !common::fuse_available() {
        return;
    }
    check_case(Case::new(
        "rename_file_over_lower_file",
        vec![
            vec![file("a", "aaa"), dir("d1"), file("d1/x", "xxx")],
            vec![file("b", "bbb"), dir("d2"), file("d2/y", "yyy")],
        ],
        vec![
            op_rename("a", "b", 0),
            op_read("b"),
            op_stat("a"),
            op_rename("d1/x", "d2/y", RENAME_NOREPLACE),
            op_rename("d1/x", "d2/y", RENAME_EXCHANGE),
            op_read("d1/x"),
            op_read("d2/y"),
            op_rename("d2/y", "d2/z", 0),
            op_readdir("d2"),
            op_readdir("."),
        ],
    ));
}

#[test]
pub(crate) fn copy_up_then_hardlink() {
    if !common::fuse_available() {
        return;
    }
    let k = check_case(Case::new(
        "copy_up_then_hardlink",
        vec![vec![
            file("a", "lower a"),
            LE::Hardlink(s("a"), s("h")),
            dir("d1"),
        ]],
        vec![
            op_stat("a"),
            op_append("a", "+more"),
            op_read("a"),
            op_read("h"),
            op_stat("h"),
            Op::Link {
                from: s("a"),
                to: s("d1/l"),
            },
            op_stat("a"),
            op_append("d1/l", "+via link"),
            op_read("a"),
            Op::Link {
                from: s("h"),
                to: s("c"),
            },
            op_stat("c"),
            op_read("c"),
        ],
    ));
    // nlink of the lower hard-linked file is visible before copy-up.
    assert!(
        matches!(&k[0], Ok(v) if v.contains("nlink=2")),
        "{:?}",
        k[0]
    );
}

#[test]
pub(crate) fn rename_dir_with_lower_parts_moves_with_redirects() {
    if !common::fuse_available() {
        return;
    }
    let k = check_case(Case::new(
        "rename_dir_with_lower_parts_moves_with_redirects",
        vec![vec![dir("d1"), file("d1/x", "x")], vec![dir("d2")]],
        vec![
            op_rename("d1", "d3", 0),
            op_rename("d2", "d3", 0),
            Op::Chmod {
                path: s("d1"),
                mode: 0o700,
            },
            op_rename("d1", "d3", 0),
            Op::Mkdir {
                path: s("n"),
                mode: 0o755,
            },
            op_write("n/f", "f"),
            op_rename("n", "d3", 0),
            op_readdir("d3"),
            op_rename("d3", "d1", RENAME_EXCHANGE),
            op_rename("d3", "d2", 0),
        ],
    ));
    // Both sides run with redirect_dir=on: the merged d1 moves; the lower d2 cannot
    // replace the now non-empty d3.
    assert_eq!(k[0], Ok(s("ok")));
    assert_eq!(k[1], Err(libc::ENOTEMPTY));
}

#[test]
pub(crate) fn whiteouts_and_opaque_dirs_in_lowers() {
    if !common::fuse_available() {
        return;
    }
    check_case(Case::new(
        "whiteouts_and_opaque_dirs_in_lowers",
        vec![
            vec![
                LE::Whiteout(s("a")),
                dir("d1"),
                LE::Opaque(s("d1")),
                file("d1/x", "top x"),
                dir("d2"),
                LE::Whiteout(s("d2/y")),
            ],
            vec![
                file("a", "a"),
                dir("d1"),
                file("d1/y", "hidden"),
                dir("d2"),
                file("d2/y", "gone"),
                file("d2/z", "z"),
            ],
        ],
        vec![
            op_readdir("."),
            op_readdir("d1"),
            op_readdir("d2"),
            op_stat("a"),
            op_stat("d1/y"),
            op_write("a", "new a"),
            op_write("d2/y", "new y"),
            Op::Unlink { path: s("d2/z") },
            op_readdir("d2"),
            Op::Rmdir { path: s("d2") },
            Op::Unlink { path: s("d2/y") },
            Op::Rmdir { path: s("d2") },
            Op::Mkdir {
                path: s("d2"),
                mode: 0o700,
            },
            op_readdir("d2"),
        ],
    ));
}

#[test]
pub(crate) fn metadata_and_xattrs_copy_up() {
    if !common::fuse_available() {
        return;
    }
    check_case(Case::new(
        "metadata_and_xattrs_copy_up",
        vec![vec![
            file("a", "a"),
            LE::Xattr(s("a"), s("user.k1"), b"v1".to_vec()),
            LE::Mode(s("a"), 0o4755),
            LE::Owner(s("a"), 1000, 1000),
            dir("d1"),
            LE::Xattr(s("d1"), s("user.dx"), b"dv".to_vec()),
            LE::Fifo(s("p")),
            LE::Symlink(s("l"), s("a")),
        ]],
        vec![
            Op::ListXattr { path: s("a") },
            Op::SetXattr {
                path: s("a"),
                name: s("user.k2"),
                value: b"v2".to_vec(),
                flags: libc::XATTR_CREATE,
            },
            Op::SetXattr {
                path: s("a"),
                name: s("user.k1"),
                value: b"again".to_vec(),
                flags: libc::XATTR_CREATE,
            },
            Op::GetXattr {
                path: s("a"),
                name: s("user.k1"),
            },
            op_stat("a"),
            Op::Chown {
                path: s("l"),
                uid: 4321,
                gid: 4321,
                nofollow: true,
            },
            op_stat("l"),
            op_stat("a"),
            Op::Chmod {
                path: s("p"),
                mode: 0o600,
            },
            op_stat("p"),
            Op::SetXattr {
                path: s("p"),
                name: s("user.k1"),
                value: b"x".to_vec(),
                flags: 0,
            },
            Op::RemoveXattr {
                path: s("d1"),
                name: s("user.dx"),
            },
            Op::ListXattr { path: s("d1") },
            Op::Utimens {
                path: s("a"),
                atime: (1_000_000_000, 5),
                mtime: (1_200_000_000, 123_456_789),
            },
            Op::Utimens {
                path: s("d1"),
                atime: (1_000_000_001, 0),
                mtime: (1_200_000_001, 0),
            },
            Op::Truncate {
                path: s("a"),
                size: 10000,
            },
            op_read("a"),
        ],
    ));
}

#[test]
pub(crate) fn held_descriptors_across_copy_up() {
    if !common::fuse_available() {
        return;
    }
    let k = check_case(Case::new(
        "held_descriptors_across_copy_up",
        vec![vec![
            file("a", "lower a"),
            file("b", "lower b"),
            dir("d1"),
            file("d1/x", "x"),
        ]],
        vec![
            Op::OpenHeld {
                slot: 0,
                path: s("a"),
                mode: HeldMode::ReadOnly,
            },
            op_append("a", "+appended"),
            Op::ReadHeld { slot: 0 },
            Op::FstatHeld { slot: 0 },
            Op::OpenHeld {
                slot: 1,
                path: s("b"),
                mode: HeldMode::ReadWrite,
            },
            Op::ReadHeld { slot: 1 },
            Op::WriteHeld {
                slot: 1,
                data: b"XY".to_vec(),
            },
            op_read("b"),
            Op::Unlink { path: s("b") },
            Op::ReadHeld { slot: 1 },
            Op::FstatHeld { slot: 1 },
            Op::OpenHeld {
                slot: 2,
                path: s("d1/x"),
                mode: HeldMode::Append,
            },
            op_rename("d1/x", "c", 0),
            Op::WriteHeld {
                slot: 2,
                data: b"+tail".to_vec(),
            },
            op_read("c"),
            Op::CloseHeld { slot: 2 },
            Op::ReadHeld { slot: 2 },
        ],
    ));
    // A descriptor opened read-only before the copy-up sees the copied-up data.
    assert_eq!(k[2], Ok(s("16 bytes \"lower a+appended\"")));
}
