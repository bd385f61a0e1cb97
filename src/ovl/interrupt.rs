//! A long copy-up gives up when its caller is being killed, as on the kernel overlay, whose
//! copy loop stops on a fatal signal. Without that, a process killed while its write
//! copies up a big lower file stays in the kernel, unkillable, until the copy is done: the
//! kernel's FUSE client waits for the answer to a request it has handed over.
//!
//! The client sends INTERRUPT, naming the request, when the caller waiting for it gets a
//! signal; the transport records it here (`interrupted`). The serving thread says which
//! request it serves (`Serving`), and the copy loop asks `caller_killed` between chunks:
//! true once that request was interrupted and its caller has SIGKILL pending, which is
//! how the kernel marks every thread of a process that a signal is killing (read with
//! `sys::caller_status`'s time limit); every 64 MiB
//! it looks at the caller whether interrupted or not, for a daemon with no thread free to
//! read the INTERRUPT. Other signals leave a copy-up going, as on the kernel overlay.

use parking_lot::Mutex;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How many interrupted requests are remembered, and for how long once that many are: a
/// request's number is never used again, so a stale one only takes room.
const MAX_KEPT: usize = 4096;
const KEEP: Duration = Duration::from_secs(60);

thread_local! {
    /// The request this thread serves, and the caller's thread id.
    static SERVING: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
}

/// The calling thread serves request `unique` of caller thread `pid` while this lives.
pub struct Serving(());

impl Serving {
    pub fn new(unique: u64, pid: u32) -> Serving {
        SERVING.with(|s| s.set(Some((unique, pid))));
        Serving(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.with(|s| s.set(None));
    }
}

/// The requests the kernel said were interrupted.
#[derive(Default)]
pub struct Interrupts {
    seen: Mutex<HashMap<u64, Instant>>,
    /// Whether any was, so that a check costs nothing until then.
    any: AtomicBool,
}

impl Interrupts {
    /// The kernel interrupted request `unique` (its caller got a signal). It may be one
    /// still being served, or one answered already, or one not read yet.
    pub fn interrupted(&self, unique: u64) {
        let now = Instant::now();
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_KEPT {
            seen.retain(|_, t| now.duration_since(*t) < KEEP);
            if seen.len() >= MAX_KEPT {
                seen.clear();
            }
        }
        seen.insert(unique, now);
        self.any.store(true, Ordering::Relaxed);
    }

    /// Whether the caller of the request this thread serves is being killed: looked up
    /// once its request was interrupted, or whatever the record says with `look_anyway`.
    /// The INTERRUPT needs a free thread to read it from /dev/fuse, which a daemon with
    /// one thread (`threaded=0`), or with all of them busy, does not have; so the copy
    /// loop also looks every so often (a read of /proc/TID/status on a thread of its own, some tens of microseconds).
    pub fn caller_killed(&self, look_anyway: bool) -> bool {
        if !look_anyway && !self.any.load(Ordering::Relaxed) {
            return false;
        }
        let Some((unique, pid)) = SERVING.with(|s| s.get()) else {
            return false;
        };
        pid != 0
            && (look_anyway || self.seen.lock().contains_key(&unique))
            && crate::sys::caller_status::being_killed(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_interrupted_request_whose_caller_is_killed_gives_up() {
        let ints = Interrupts::default();
        let me = unsafe { libc::gettid() } as u32;
        let _s = Serving::new(7, me);
        assert!(!ints.caller_killed(false), "nothing interrupted yet");
        ints.interrupted(8);
        assert!(
            !ints.caller_killed(false),
            "another request was interrupted"
        );
        ints.interrupted(7);
        // This test's thread has no SIGKILL pending.
        assert!(
            !ints.caller_killed(false),
            "interrupted, but not by a fatal signal"
        );
        assert!(!ints.caller_killed(true), "looked at, and not being killed");
    }

    #[test]
    fn a_thread_serving_nothing_never_gives_up() {
        let ints = Interrupts::default();
        ints.interrupted(1);
        assert!(!ints.caller_killed(false));
        assert!(!ints.caller_killed(true));
    }

    #[test]
    fn the_remembered_requests_stay_bounded() {
        let ints = Interrupts::default();
        for u in 0..(MAX_KEPT as u64 * 3) {
            ints.interrupted(u);
        }
        assert!(ints.seen.lock().len() <= MAX_KEPT);
    }
}
