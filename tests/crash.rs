//! A daemon killed at any moment (SIGKILL: a crash, an OOM kill, `kill -9` by an impatient
//! user) must leave layers that show each change done or not done, never half of one, to
//! ovlfuse mounted again and to the kernel overlay alike: copy-ups, whiteouts, opaque and
//! redirected directories are built in the workdir and put in place with one rename, and
//! what a crash leaves in the workdir was never visible.
//!
//! The oracle is the kernel overlay: one run of the operation list over the same lower
//! layers, with a snapshot of the merged view after each operation. Each round then runs
//! the list on ovlfuse and kills the daemon at a chosen point of one operation (a copy-up of
//! a 16 MiB file, a directory rename, an rmdir of a merged directory, ...). After that, with
//! the dead mount gone, ovlfuse and then the kernel overlay mount the layers left behind;
//! both must show the view after the operations that had completed, or after one more (the
//! one the kill interrupted may have been done before its reply was lost), and ovlfuse's
//! unmount must leave its work directory empty.
//!
//! Where the kill lands depends on timing, so a round is not replayable bit for bit; each
//! round prints the operation it aimed at, how far into it the kill came and what the
//! workdir held. `OVLFUSE_CRASH_ROUNDS=<n>` runs n rounds per operation (default 1).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIG: usize = 16 << 20;

/// One change to the merged tree, made with as few system calls as the change allows, so
/// that between them the tree is either as before or as after (an `O_CREAT` open that
/// writes would show an empty file in between, so creating and filling are two steps).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// open(O_APPEND), write, fsync
    Append(&'static str, &'static [u8]),
    /// open, pwrite at 0, fsync
    Overwrite(&'static str, &'static [u8]),
    Truncate(&'static str, u64),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    SetXattr(&'static str, &'static str, &'static [u8]),
    RemoveXattr(&'static str, &'static str),
    Unlink(&'static str),
    Rmdir(&'static str),
    Mkdir(&'static str),
    /// An empty regular file (mknod).
    Mknod(&'static str),
    Mkfifo(&'static str),
    /// (path, target)
    Symlink(&'static str, &'static str),
    /// (existing, new)
    Link(&'static str, &'static str),
    Rename(&'static str, &'static str),
    Exchange(&'static str, &'static str),
    /// (directory, name, data): an O_TMPFILE file written, synced and linked in as name.
    Tmpfile(&'static str, &'static str, &'static [u8]),
}

impl Op {
    /// The operation as a line of a report, with its data as text.
    fn describe(&self) -> String {
        match *self {
            Op::Append(f, d) => format!("append {} to {f}", show_bytes(d)),
            Op::Overwrite(f, d) => format!("overwrite the start of {f} with {}", show_bytes(d)),
            Op::SetXattr(f, n, v) => format!("setxattr {n}={} on {f}", show_bytes(v)),
            Op::Tmpfile(d, n, v) => {
                format!("O_TMPFILE in {d} with {}, linked as {n}", show_bytes(v))
            }
            other => format!("{other:?}"),
        }
    }

    fn apply(&self, root: &Path) -> io::Result<()> {
        let p = |rel: &str| root.join(rel);
        match *self {
            Op::Append(f, data) => {
                let mut file = fs::OpenOptions::new().append(true).open(p(f))?;
                file.write_all(data)?;
                file.sync_all()
            }
            Op::Overwrite(f, data) => {
                let file = fs::OpenOptions::new().write(true).open(p(f))?;
                file.write_all_at(data, 0)?;
                file.sync_all()
            }
            Op::Truncate(f, len) => {
                let cp = cpath(&p(f));
                cvt(unsafe { libc::truncate(cp.as_ptr(), len as libc::off_t) }).map(|_| ())
            }
            Op::Chmod(f, mode) => chmod_nofollow_dir(&p(f), mode),
            Op::Chown(f, uid, gid) => lchown(&p(f), uid, gid),
            Op::SetXattr(f, name, value) => lsetxattr(&p(f), name, value),
            Op::RemoveXattr(f, name) => lremovexattr(&p(f), name),
            Op::Unlink(f) => fs::remove_file(p(f)),
            Op::Rmdir(d) => fs::remove_dir(p(d)),
            Op::Mkdir(d) => fs::create_dir(p(d)),
            Op::Mknod(f) => mknod(&p(f), libc::S_IFREG | 0o644, 0),
            Op::Mkfifo(f) => mkfifo(&p(f), 0o640),
            Op::Symlink(f, target) => std::os::unix::fs::symlink(target, p(f)),
            Op::Link(from, to) => fs::hard_link(p(from), p(to)),
            Op::Rename(from, to) => fs::rename(p(from), p(to)),
            Op::Exchange(a, b) => renameat2(&p(a), &p(b), libc::RENAME_EXCHANGE),
            Op::Tmpfile(dir, name, data) => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_TMPFILE)
                    .open(p(dir))?;
                file.write_all_at(data, 0)?;
                file.sync_all()?;
                link_open_file(file.as_raw_fd(), &p(dir).join(name))
            }
        }
    }
}

/// The operations, in order. Each names paths no earlier operation left in a state that
/// would make the kernel and ovlfuse part on purpose (see README, "Differences").
const OPS: &[Op] = &[
    Op::Append("big/b0", b"+tail of b0"),
    Op::Chmod("f01", 0o600),
    Op::SetXattr("f02", "user.new", b"1"),
    Op::Unlink("f03"),
    Op::Rename("f04", "f04.moved"),
    Op::Overwrite("f05", b"LOWER0"),
    Op::Truncate("f06", 3),
    Op::Mkdir("newdir"),
    Op::Mknod("newdir/n"),
    Op::Overwrite("newdir/n", b"new\n"),
    Op::Unlink("d1/a"),
    Op::Unlink("d1/b"),
    Op::Rmdir("d1"),
    Op::Mkdir("d1"),
    Op::Rename("d0", "d0.moved"),
    Op::Chmod("d3/deep/er/file", 0o700),
    Op::Link("f07", "f07.link"),
    Op::Symlink("sym.new", "target"),
    Op::Append("big/b1", b"+tail of b1"),
    Op::Rename("f08", "f09"),
    Op::Mkfifo("fifo.new"),
    Op::Chown("f10", 1234, 5678),
    Op::RemoveXattr("f11", "user.x"),
    Op::Rename("d2/a", "m/a2"),
    Op::Rmdir("empty"),
    Op::Rename("newdir", "newdir2"),
    Op::Exchange("f12", "f13"),
    Op::Truncate("big/b0", 1 << 20),
    Op::Unlink("big/b1"),
    Op::Rename("l0", "l0.moved"),
    Op::Unlink("m/x"),
    Op::Unlink("m/a2"),
    Op::Unlink("m/w"),
    Op::Unlink("m/sub/z"),
    Op::Rmdir("m/sub"),
    Op::Rmdir("m"),
    Op::Mkdir("m"),
    Op::Mknod("m/again"),
    Op::Unlink("d5/q"),
    Op::Rename("d4", "d5"),
    Op::Chmod("d6", 0o700),
    Op::SetXattr("d6/sub", "user.d", b"1"),
    Op::Tmpfile("d6/sub", "t.linked", b"tmp data\n"),
    Op::Link("f00", "newdir2/f00.link"),
];

fn pattern(seed: u8) -> Vec<u8> {
    (0..BIG)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 32) as u8
        })
        .collect()
}

/// Two lower layers: lower0 (top) and lower1, with a directory `m` merged from both.
fn build_lowers(lowers: &[PathBuf]) {
    let names: Vec<String> = (0..14).map(|i| format!("f{i:02}")).collect();
    let text: Vec<String> = names.iter().map(|n| format!("lower1 {n}\n")).collect();
    let mut l1: Vec<E> = names
        .iter()
        .zip(&text)
        .map(|(n, t)| E::File(n, t.as_bytes()))
        .collect();
    l1.extend([
        E::Xattr("f11", "user.x", b"1"),
        E::Xattr("f02", "user.old", b"kept"),
        E::Owner("f10", 100, 100),
        E::File("m/x", b"m/x in lower1\n"),
        E::File("m/sub/z", b"m/sub/z\n"),
        E::File("d1/a", b"d1/a\n"),
        E::File("d1/b", b"d1/b\n"),
        E::File("d2/a", b"d2/a\n"),
        E::File("d3/deep/er/file", b"deep\n"),
        E::Mode("d3/deep", 0o750),
        E::Dir("empty"),
        E::Symlink("l0", "f00"),
        E::File("d4/p", b"d4/p\n"),
        E::File("d4/sub/r", b"d4/sub/r\n"),
        E::File("d5/q", b"d5/q\n"),
        E::File("d6/sub/s", b"d6/sub/s\n"),
    ]);
    build(&lowers[1], &l1);
    build(
        &lowers[0],
        &[
            E::File("f05", b"lower0 f05\n"),
            E::File("m/w", b"m/w in lower0\n"),
            E::File("d0/a", b"d0/a\n"),
            E::File("d0/b", b"d0/b\n"),
            E::File("d0/sub/x", b"d0/sub/x\n"),
            E::File("d4/o", b"d4/o in lower0\n"),
        ],
    );
    for (layer, name, seed) in [(&lowers[1], "big/b0", 0u8), (&lowers[0], "big/b1", 7)] {
        let p = layer.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, pattern(seed)).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
    }
}

type View = BTreeMap<PathBuf, Node>;

/// Whether the overlays run with `userxattr` (rootless podman's layer format), and whether
/// ovlfuse's upper and work directories lie on a kernel overlay (a container inside a
/// container; that overlay has no RENAME_WHITEOUT and makes no whiteout devices, and the
/// kernel overlay refuses such an upper, so only ovlfuse mounts it after a kill).
#[derive(Clone, Copy)]
struct Format {
    userxattr: bool,
    upper_on_overlay: bool,
}

impl Format {
    fn mount_kernel(self, st: &Stack) -> MountGuard {
        if self.userxattr {
            mount_kernel_plain(st, "index=off,metacopy=off,userxattr")
        } else {
            mount_kernel(st)
        }
    }

    fn mount_ovlfuse(self, st: &Stack) -> MountGuard {
        mount_ovlfuse(st, if self.userxattr { &["userxattr"] } else { &[] })
    }
}

/// A fresh upper and work directory over the shared lower layers, below `at`.
fn stack_over(at: &Path, lowers: &[PathBuf], name: &str) -> Stack {
    let dir = at.join(name);
    let mut st = Stack::new_at(&dir, 0);
    st.lowers = lowers.to_vec();
    st
}

fn outcome_of(r: &io::Result<()>) -> Result<(), i32> {
    r.as_ref()
        .map(|_| ())
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// The kernel overlay's view after each prefix of OPS (views[k]: after k operations), and
/// each operation's outcome.
fn oracle(sc: &Scratch, lowers: &[PathBuf], fmt: Format) -> (Vec<View>, Vec<Result<(), i32>>) {
    let st = stack_over(&sc.root, lowers, "oracle");
    let g = fmt.mount_kernel(&st);
    let mut views = vec![snapshot(&st.mnt, XattrSel::User)];
    let mut outcomes = Vec::new();
    for op in OPS {
        outcomes.push(outcome_of(&op.apply(&st.mnt)));
        views.push(snapshot(&st.mnt, XattrSel::User));
    }
    g.unmount();
    (views, outcomes)
}

/// Runs OPS on `root` until one's outcome differs from the kernel's; returns the outcomes
/// seen and each operation's duration. `current` tells the thread that kills the daemon
/// which operation is running (OPS.len() once none is).
fn run_ops(
    root: &Path,
    want: &[Result<(), i32>],
    current: &AtomicUsize,
) -> (Vec<io::Result<()>>, Vec<Duration>) {
    let mut results = Vec::new();
    let mut took = Vec::new();
    for (k, op) in OPS.iter().enumerate() {
        current.store(k, Ordering::SeqCst);
        let t = Instant::now();
        let r = op.apply(root);
        took.push(t.elapsed());
        let differs = outcome_of(&r) != want[k];
        results.push(r);
        if differs {
            break;
        }
    }
    current.store(OPS.len(), Ordering::SeqCst);
    (results, took)
}

/// Entries below the work directory's `work` (what a crash left there), but for the
/// whiteout ovlfuse keeps there to link new whiteouts to.
fn work_leftovers(work: &Path) -> Vec<String> {
    let w = work.join("work");
    let mut out: Vec<String> = snapshot(&w, XattrSel::None)
        .into_iter()
        .filter(|(k, _)| !k.as_os_str().is_empty() && k != Path::new("#whiteout"))
        .map(|(k, n)| format!("{} ({})", k.display(), n.kind))
        .collect();
    out.sort();
    out
}

/// A small deterministic spread of fractions in [0, 1.25), so that the kills of successive
/// rounds land early, in the middle and after the end of an operation.
fn fraction(round: usize, op: usize) -> f64 {
    let x = (round * 7919 + op * 104729 + 17) % 1000;
    x as f64 / 800.0
}

fn crash_rounds(fmt: Format, label: &str) {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new(&format!("crash-{label}"));
    let lowers = vec![sc.dir("lower0"), sc.dir("lower1")];
    build_lowers(&lowers);
    let lc = LowerCheck::new(&lowers);
    let (views, want) = oracle(&sc, &lowers, fmt);
    let n = OPS.len();
    // Where the rounds' upper and work directories go.
    let beneath = Stack::new_at(&sc.dir("beneath"), 1);
    let _beneath_guard = fmt.upper_on_overlay.then(|| mount_kernel(&beneath));
    let at = if fmt.upper_on_overlay {
        beneath.mnt.clone()
    } else {
        sc.root.clone()
    };

    // An uninterrupted run: the same outcomes and the same final view as the kernel's, and
    // each operation's duration, which places the kills of the rounds below.
    let st = stack_over(&at, &lowers, "full");
    let g = fmt.mount_ovlfuse(&st);
    let (results, durations) = run_ops(&st.mnt, &want, &AtomicUsize::new(0));
    for (k, r) in results.iter().enumerate() {
        assert_eq!(
            outcome_of(r),
            want[k],
            "operation {k} {} without a kill: ovlfuse {}, the kernel overlay {:?}",
            OPS[k].describe(),
            outcome_unit(r),
            want[k]
        );
    }
    assert_same_snapshots(
        "the view after every operation, no kill",
        "kernel overlay",
        &views[n],
        "ovlfuse",
        &snapshot(&st.mnt, XattrSel::User),
    );
    g.unmount();

    let rounds: usize = std::env::var("OVLFUSE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut with_leftovers = 0;
    let mut split_seen = 0;
    let mut interrupted_done = 0;
    for round in 0..rounds {
        for target in 0..n {
            let frac = fraction(round, target);
            let delay = durations[target].mul_f64(frac);
            let st = stack_over(&at, &lowers, &format!("r{round}-op{target}"));
            let g = fmt.mount_ovlfuse(&st);
            let pid = g.pid().expect("daemon pid");
            let current = Arc::new(AtomicUsize::new(0));
            let worker = {
                let (root, want, current) = (st.mnt.clone(), want.clone(), current.clone());
                std::thread::spawn(move || run_ops(&root, &want, &current).0)
            };
            while current.load(Ordering::SeqCst) < target {
                std::thread::sleep(Duration::from_micros(20));
            }
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
            assert!(
                wait_pid_exit(pid, Duration::from_secs(10)),
                "daemon outlived SIGKILL for 10 s"
            );
            let results = worker.join().expect("workload thread");
            g.unmount();

            // Operations before the first whose outcome is not the kernel's completed; that
            // one was cut off by the kill and must have failed as a dead daemon's requests
            // do (ENOTCONN; ECONNABORTED for one the kernel aborted; over io_uring also
            // ECANCELED, for one caught in a ring the kernel was tearing down); none after
            // it ran.
            let done = results
                .iter()
                .zip(&want)
                .take_while(|(r, w)| outcome_of(r) == **w)
                .count();
            if let Some(r) = results.get(done) {
                let e = outcome_of(r).unwrap_err();
                assert!(
                    [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&e),
                    "round {round}, operation {done} {}: {} where the kernel overlay gave \
                     {:?}, before or as the daemon was killed",
                    OPS[done].describe(),
                    outcome_unit(r),
                    want[done]
                );
            }
            let leftovers = work_leftovers(&st.work);
            if !leftovers.is_empty() {
                with_leftovers += 1;
            }

            let after = fmt.mount_ovlfuse(&st);
            let fview = snapshot(&st.mnt, XattrSel::User);
            after.unmount();
            let left = work_leftovers(&st.work);
            assert!(
                left.is_empty(),
                "round {round}: ovlfuse's work directory holds {left:?} after a mount and \
                 unmount over what a kill left ({leftovers:?})"
            );
            let kview = (!fmt.upper_on_overlay).then(|| {
                let kg = fmt.mount_kernel(&st);
                let v = snapshot(&st.mnt, XattrSel::User);
                kg.unmount();
                v
            });

            let matches = |v: &View| -> Option<usize> {
                [done, done + 1]
                    .into_iter()
                    .filter(|&k| k <= n)
                    .find(|&k| diff_snapshots(&views[k], v).is_empty())
            };
            // Without RENAME_WHITEOUT, a rename over a name the view shows is two steps (see
            // README, "The upper layer may be on an overlay"): a kill between them leaves the
            // lower object at the old name beside the moved one at the new.
            let split = split_rename(&views, done, fmt);
            let is_split = |v: &View| {
                split
                    .as_ref()
                    .is_some_and(|s| diff_snapshots(s, v).is_empty())
            };
            let fstate = matches(&fview);
            if fstate.is_none() && is_split(&fview) {
                eprintln!(
                    "round {round}: killed between the two steps of {} on an upper without \
                     RENAME_WHITEOUT (the lower object shows at the old name too)",
                    OPS[done].describe()
                );
                split_seen += 1;
                remove_round_dirs(&st);
                continue;
            }
            eprintln!(
                "round {round}, op {target} {}: killed {:?} into it ({:.0}% of its \
                 uninterrupted time): {done} operation(s) done; work directory after the \
                 kill: {} entr(y/ies); view after {:?} operations",
                OPS[target].describe(),
                delay,
                frac * 100.0,
                leftovers.len(),
                fstate
            );
            let shown = std::iter::once(("ovlfuse", &fview))
                .chain(kview.as_ref().map(|k| ("the kernel overlay", k)));
            for (who, view) in shown {
                if matches(view).is_none() {
                    let d = diff_snapshots(&views[done], view);
                    let d1 = diff_snapshots(&views[(done + 1).min(n)], view);
                    panic!(
                        "round {round}: killed in or after operation {done} ({}), the layers \
                         left show through {who} neither the view after {done} operations nor \
                         after {}; work directory after the kill: {leftovers:?}\n\
                         against the view after {done} (first = expected):\n  {}\n\
                         against the view after {}:\n  {}",
                        OPS.get(done)
                            .map_or("none: all done".to_string(), |o| o.describe()),
                        done + 1,
                        d.join("\n  "),
                        done + 1,
                        d1.join("\n  ")
                    );
                }
            }
            if let Some(kview) = &kview {
                assert_same_snapshots(
                    &format!("round {round}: the layers a kill left"),
                    "ovlfuse",
                    &fview,
                    "kernel overlay",
                    kview,
                );
            }
            if fstate == Some(done + 1) && done < results.len() {
                interrupted_done += 1;
            }
            remove_round_dirs(&st);
        }
    }
    eprintln!(
        "{label}: {} rounds; the work directory held leftovers after {with_leftovers}; the \
         interrupted operation showed as done after {interrupted_done}; a rename showed \
         between its two steps after {split_seen}",
        rounds * n
    );
    lc.verify();
}

/// The view a kill leaves between the two steps of a rename over a name the view shows,
/// on an upper filesystem without RENAME_WHITEOUT: the view after it, with the old name
/// showing what it showed before.
fn split_rename(views: &[View], done: usize, fmt: Format) -> Option<View> {
    let Some(Op::Rename(from, to)) = OPS.get(done) else {
        return None;
    };
    if !fmt.upper_on_overlay || !views[done].contains_key(Path::new(to)) {
        return None;
    }
    let mut v = views[done + 1].clone();
    v.extend(
        views[done]
            .iter()
            .filter(|(k, _)| k.starts_with(from))
            .map(|(k, n)| (k.clone(), n.clone())),
    );
    Some(v)
}

/// Removes a round's upper and work directories (the big copies would add up).
fn remove_round_dirs(st: &Stack) {
    let _ = fs::remove_dir_all(st.upper.parent().unwrap());
}

#[test]
fn a_killed_daemon_leaves_each_change_done_or_not_done() {
    let fmt = Format {
        userxattr: false,
        upper_on_overlay: false,
    };
    crash_rounds(fmt, "trusted");
}

#[test]
fn a_killed_daemon_leaves_each_change_done_or_not_done_with_userxattr() {
    let fmt = Format {
        userxattr: true,
        upper_on_overlay: false,
    };
    crash_rounds(fmt, "userxattr");
}

#[test]
fn a_killed_daemon_leaves_each_change_done_or_not_done_on_an_overlay_upper() {
    let fmt = Format {
        userxattr: false,
        upper_on_overlay: true,
    };
    crash_rounds(fmt, "upper-on-overlay");
}
