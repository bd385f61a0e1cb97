//! Command-line contract of the `ovlfuse` binary, on real mounts.
//!
//! Every test returns early (with a loud message) when /dev/fuse is missing.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
mod daemon;
mod errors;
mod forms;
mod mount_table;
mod options;
mod views;
mod workdir;

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
