//! Request budgets: how many FUSE requests the kernel sends for common operations on an
//! ovlfuse mount, counted through its tracepoint (`RequestCounter`). Each guards a choice
//! that spares round trips (listings and attributes kept in the kernel, misses
//! remembered, small lower files handed to the page cache at open), which no semantic
//! test would notice losing. Counts, not times: they do not depend on the machine.
//!
//! The mounts take the default data path and listing mode whatever the environment asks
//! of other tests (`OVLFUSE_TEST_DATA`, `OVLFUSE_TEST_LISTATTRS`): without passthrough the
//! kernel's writeback cache adds requests of its own, and names-only listings make every
//! stat a lookup, by design. The transport may vary: the requests are the same on both.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;

/// The defaults, named so that the environment's choices for other tests do not apply.
const DEFAULTS: &[&str] = &["passthrough=auto", "listattrs=auto"];

fn lower_stack(name: &str) -> (Scratch, Stack) {
    let sc = Scratch::new(name);
    let st = Stack::new(&sc, 1);
    let mut entries = vec![E::Dir("d/sub")];
    let names: Vec<String> = (0..20).map(|i| format!("d/f{i}")).collect();
    for n in &names {
        entries.push(E::File(n, b"small lower file"));
    }
    build(&st.lowers[0], &entries);
    (sc, st)
}

/// How many requests of `op` (`READ`, `LOOKUP`, ...) a count holds.
fn n(counts: &BTreeMap<String, u64>, op: &str) -> u64 {
    counts.get(&format!("FUSE_{op}")).copied().unwrap_or(0)
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

#[test]
fn a_listed_directory_and_its_entries_are_then_served_by_the_kernel() {
    if !fuse_available() {
        return;
    }
    let (_sc, st) = lower_stack("req-listing");
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, DEFAULTS);
    let d = st.mnt.join("d");
    let rc = RequestCounter::new(&st.mnt);

    let names = fs::read_dir(&d).unwrap().count();
    assert_eq!(names, 21);
    let c = rc.take();
    // The entries come with their attributes in one READDIRPLUS; an empty one ends it.
    assert!(n(&c, "READDIRPLUS") <= 2, "first listing: {c:?}");

    for e in fs::read_dir(&d).unwrap() {
        fs::symlink_metadata(e.unwrap().path()).unwrap();
    }
    let c = rc.take();
    assert_eq!(
        n(&c, "LOOKUP") + n(&c, "READDIRPLUS"),
        0,
        "a second listing and a stat of every entry: {c:?}"
    );
    // The kernel marks a directory's atime stale after a listing it fetched, and asks
    // once for the directory's attributes again.
    assert!(
        total(&c) <= 1,
        "a second listing and a stat of every entry: {c:?}"
    );
    drop(rc);
    g.unmount();
    lc.verify();
}

#[test]
fn a_missing_name_is_asked_for_once() {
    if !fuse_available() {
        return;
    }
    let (_sc, st) = lower_stack("req-miss");
    let g = mount_ovlfuse(&st, DEFAULTS);
    let rc = RequestCounter::new(&st.mnt);
    for _ in 0..5 {
        assert!(fs::symlink_metadata(st.mnt.join("d/absent")).is_err());
    }
    let c = rc.take();
    assert_eq!(
        n(&c, "LOOKUP"),
        2,
        "the lookup of d and one of the absent name: {c:?}"
    );
    drop(rc);
    g.unmount();
}

#[test]
fn small_lower_files_are_read_without_read_requests() {
    if !fuse_available() {
        return;
    }
    let (_sc, st) = lower_stack("req-small-read");
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, DEFAULTS);
    let f = st.mnt.join("d/f3");
    assert_eq!(fs::read(&f).unwrap(), b"small lower file");
    let rc = RequestCounter::new(&st.mnt);
    for _ in 0..3 {
        assert_eq!(fs::read(&f).unwrap(), b"small lower file");
    }
    let c = rc.take();
    // Its first open put the data into the kernel's page cache: each read is an OPEN
    // and a RELEASE, and no READ.
    assert_eq!(n(&c, "READ"), 0, "three reads of a small lower file: {c:?}");
    assert_eq!(n(&c, "OPEN"), 3, "three opens: {c:?}");
    drop(rc);
    g.unmount();
    lc.verify();
}

#[test]
fn removing_a_lower_file_is_one_request() {
    if !fuse_available() {
        return;
    }
    let (_sc, st) = lower_stack("req-unlink");
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, DEFAULTS);
    let d = st.mnt.join("d");
    fs::read_dir(&d).unwrap().for_each(drop);
    let rc = RequestCounter::new(&st.mnt);
    fs::remove_file(d.join("f5")).unwrap();
    let c = rc.take();
    // The name is known from the listing: the UNLINK alone (it copies up the directory
    // and leaves a whiteout in the daemon).
    assert_eq!(n(&c, "UNLINK"), 1, "{c:?}");
    assert_eq!(total(&c), 1, "unlink of a listed lower file: {c:?}");
    drop(rc);
    g.unmount();
    lc.verify();
}
