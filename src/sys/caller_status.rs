//! What `/proc` says of the process behind a request, read with a time limit: its
//! supplementary groups and whether it is being killed (`/proc/PID/status`), and whether it
//! is in chown(2) (`/proc/TID/syscall`).
//!
//! FUSE tells us a caller's uid, gid and pid, not its other groups, and the set-group-ID
//! rules need them (a chmod, write or ACL change by someone outside the file's group
//! clears the bit); a long copy-up stops when its caller is being killed (`ovl::interrupt`).
//! An empty SETATTR is a chown(-1, -1) or the kernel's privilege check before a write, and
//! only the system call the caller is in tells them apart (see `ovl::inode`).
//! `/proc` is the only place to read any of this. But reading another
//! process's `/proc` files can wait on that process, and our caller is itself waiting for
//! our reply, sometimes deep in the kernel: reading `/proc/PID/stat` of a caller that was
//! writing back a shared mapping hung a serving thread once (see `devfuse_cpu`). So the
//! read runs on a thread of its own and the serving thread waits for it at most `LIMIT`.
//! Past that the caller counts as a member of no other group, so the set-group-ID bit is
//! cleared (the conservative answer), and as not being killed; the reader is left to
//! finish on its own. While `MAX_STUCK` readers are still out, the answer is given at
//! once, so a caller that never lets go cannot pile up threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long a request waits for a caller's groups (a read takes some 20 us).
const LIMIT: Duration = Duration::from_millis(500);
/// Readers that may be outstanding past their limit at once.
const MAX_STUCK: usize = 4;

static OUT: AtomicUsize = AtomicUsize::new(0);

/// Supplementary groups of process (or thread) `pid`; empty when it is gone, and `None`
/// when its `/proc` entry did not answer in time.
pub fn groups(pid: u32) -> Option<Vec<u32>> {
    let groups = within(LIMIT, &OUT, move || read_groups(pid));
    if groups.is_none() {
        log::warn!(
            "the groups of process {pid} could not be read (its /proc entry did not answer \
             within {LIMIT:?}, or earlier reads still wait): it counts as a member of no \
             other group (a set-group-ID bit it changes is cleared)"
        );
    }
    groups
}

/// The text of `/proc/PID/status`; empty when the process is gone.
fn status_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn read_groups(pid: u32) -> Vec<u32> {
    status_of(pid)
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether thread `tid` has SIGKILL pending: how the kernel marks every thread of a
/// process that a signal is killing (a SIGKILL, or a signal whose default action ends it
/// without a core dump). False when it is gone or its `/proc` entry did not answer in time.
pub fn being_killed(tid: u32) -> bool {
    within(LIMIT, &OUT, move || read_kill_pending(tid)).unwrap_or_else(|| {
        log::debug!("/proc/{tid}/status did not answer: its thread counts as not being killed");
        false
    })
}

fn read_kill_pending(tid: u32) -> bool {
    status_of(tid).lines().any(|l| {
        let Some(mask) = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"))
        else {
            return false;
        };
        u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & (1 << (libc::SIGKILL - 1)) != 0)
    })
}

/// Whether thread `tid` is in chown(2), lchown(2), fchown(2) or fchownat(2); `None` when
/// `/proc/TID/syscall` could not be read (the thread is gone, runs, or did not answer in
/// time).
pub fn in_chown(tid: u32) -> Option<bool> {
    within(LIMIT, &OUT, move || read_syscall(tid))
        .flatten()
        .map(is_chown)
}

/// The number of the system call thread `tid` is blocked in: the first field of
/// `/proc/TID/syscall` ("running" while it runs, -1 outside a system call).
fn read_syscall(tid: u32) -> Option<libc::c_long> {
    std::fs::read_to_string(format!("/proc/{tid}/syscall"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn is_chown(nr: libc::c_long) -> bool {
    [libc::SYS_fchown, libc::SYS_fchownat]
        .iter()
        .chain(LEGACY_CHOWN)
        .any(|&c| c == nr)
}

/// chown(2) and lchown(2), where the architecture has them apart from fchownat(2).
#[cfg(target_arch = "x86_64")]
const LEGACY_CHOWN: &[libc::c_long] = &[libc::SYS_chown, libc::SYS_lchown];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY_CHOWN: &[libc::c_long] = &[];

/// Runs `f` on a thread of its own and waits at most `limit` for its answer; `out` counts
/// the threads not yet finished, and none is started while `MAX_STUCK` are.
fn within<T: Send + 'static>(
    limit: Duration,
    out: &'static AtomicUsize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if out.fetch_add(1, Ordering::AcqRel) >= MAX_STUCK {
        out.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    let (tx, rx) = mpsc::sync_channel(1);
    let started = std::thread::Builder::new()
        .name("ovl-caller".into())
        .spawn(move || {
            let _ = tx.send(f());
            out.fetch_sub(1, Ordering::AcqRel);
        });
    if started.is_err() {
        out.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    rx.recv_timeout(limit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn our_own_groups_are_those_the_kernel_gives_us() {
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut want = vec![0 as libc::gid_t; n.max(0) as usize];
        let n = unsafe { libc::getgroups(want.len() as i32, want.as_mut_ptr()) };
        want.truncate(n.max(0) as usize);
        let mut got = groups(std::process::id()).expect("our own /proc answers");
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(groups(u32::MAX), Some(vec![]), "no such process");
    }

    #[test]
    fn the_system_call_a_blocked_thread_is_in_is_read() {
        let (mut r, mut w) = std::io::pipe().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            std::io::Read::read(&mut r, &mut [0u8; 1]).unwrap()
        });
        let tid = rx.recv().unwrap();
        let t = Instant::now();
        while read_syscall(tid) != Some(libc::SYS_read) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "never seen in read(2)"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(in_chown(tid), Some(false));
        std::io::Write::write_all(&mut w, b"x").unwrap();
        assert_eq!(reader.join().unwrap(), 1);
        assert!(is_chown(libc::SYS_fchownat) && is_chown(libc::SYS_fchown));
        assert!(!is_chown(libc::SYS_write) && !is_chown(-1));
        assert_eq!(in_chown(u32::MAX), None, "no such thread");
    }

    #[test]
    fn a_reader_that_does_not_answer_is_given_up_and_never_piles_up() {
        static OUT: AtomicUsize = AtomicUsize::new(0);
        let limit = Duration::from_millis(50);
        assert_eq!(within(limit, &OUT, || 7), Some(7));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Arc::new(parking_lot::Mutex::new(held));
        for _ in 0..MAX_STUCK {
            let held = held.clone();
            let t = Instant::now();
            let r = within(limit, &OUT, move || held.lock().recv().ok());
            assert_eq!(r, None);
            assert!(t.elapsed() >= limit);
        }
        assert_eq!(OUT.load(Ordering::Acquire), MAX_STUCK);
        let t = Instant::now();
        assert_eq!(within(limit, &OUT, || 1), None, "no thread past the cap");
        assert!(t.elapsed() < limit, "and no wait either");
        for _ in 0..MAX_STUCK {
            release.send(()).unwrap();
        }
        let t = Instant::now();
        while OUT.load(Ordering::Acquire) != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "readers finish once let go"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(within(limit, &OUT, || 2), Some(2));
    }
}
