//! Removal, after the request is answered, of the upper directories of whiteouts that
//! rmdir (or a rename over them) swapped out into the work directory.
//!
//! Why: once swapped, such a directory is out of every view, and nothing shows whether it
//! is still there (no other name links to it, and what it holds are links to the shared
//! whiteout); but its removal costs an unlink per whiteout (73 ms for 10k on the benchmark
//! VM, as much as the kernel overlay's rmdir, which removes them before it answers). The
//! caller need not wait for that, and the other CPU is often idle meanwhile. (A file that
//! unlink swaps out is removed at once: its other names' link count, and the space it
//! frees, show when.) What is queued when the session ends is removed before the
//! daemon exits (`finish`, for half a second at most); what is left then, or by a killed
//! daemon, the next mount clears from the work directory (`layers`), as the kernel overlay
//! clears its own.

use super::layers::remove_tree;
use crate::sys::process::{set_sched_idle, set_thread_cpus, thread_cpus, CpuSet};
use parking_lot::{Condvar, Mutex};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the end of a session waits for queued removals. A mount of the same upper and
/// work directories right after the unmount waits up to a second for this daemon to go
/// (`layers::claim`), and then clears what is left itself.
const FINISH_WAIT: Duration = Duration::from_millis(500);

pub struct Reaper {
    /// The work directory's fd, duplicated for the thread, and the CPUs the daemon was
    /// started with: the thread starts on first use, from a serving thread that may be
    /// pinned to one CPU and idle-class, and must not stay so.
    setup: Option<(OwnedFd, Option<CpuSet>)>,
    state: Mutex<State>,
    /// Removals queued and not done yet, and a signal for each one done (see `flush`).
    pending: Arc<(Mutex<usize>, Condvar)>,
}

#[derive(Default)]
struct State {
    queue: Option<mpsc::Sender<OsString>>,
    thread: Option<JoinHandle<()>>,
    /// Set by `finish`: later removals are done at once, by their caller.
    finished: bool,
}

impl Reaper {
    /// A reaper for the work directory `work` (none on a read-only mount). Call from the
    /// thread whose CPUs the removals may use.
    pub fn new(work: Option<BorrowedFd<'_>>) -> Reaper {
        let setup = work
            .and_then(|w| w.try_clone_to_owned().ok())
            .map(|w| (w, thread_cpus().ok()));
        Reaper {
            setup,
            state: Mutex::new(State::default()),
            pending: Arc::default(),
        }
    }

    /// Removes `name` (in the work directory `work`) with everything under it, later. Done
    /// at once where no thread can take it.
    pub fn remove(&self, work: BorrowedFd<'_>, name: OsString) {
        let name = match self.queue() {
            Some(q) => {
                *self.pending.0.lock() += 1;
                match q.send(name) {
                    Ok(()) => return,
                    Err(mpsc::SendError(name)) => {
                        done(&self.pending);
                        name
                    }
                }
            }
            None => name,
        };
        clear(work, &name);
    }

    /// Waits until every queued removal is done (10 s at most): a directory still held
    /// open after its rmdir shows its removal (its size and times), as the kernel overlay's
    /// does, only once it happened.
    pub fn flush(&self) {
        if !self.wait_pending(Duration::from_secs(10)) {
            log::warn!("queued removals in the work directory are taking long");
        }
    }

    /// Waits until no queued removal is left, for `limit` at most; whether none is.
    fn wait_pending(&self, limit: Duration) -> bool {
        let (count, signal) = &*self.pending;
        let deadline = Instant::now() + limit;
        let mut n = count.lock();
        while *n > 0 {
            if signal.wait_until(&mut n, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    /// Waits until everything queued is removed, for `FINISH_WAIT` at most (what is left
    /// then, the next mount clears); removals from now on are done at once.
    pub fn finish(&self) {
        let thread = {
            let mut s = self.state.lock();
            s.finished = true;
            s.queue = None;
            s.thread.take()
        };
        let Some(t) = thread else { return };
        // The queue is closed: once nothing is pending, the thread ends.
        if self.wait_pending(FINISH_WAIT) {
            let _ = t.join();
        } else {
            log::info!("leaving the rest of the work directory's clean-up to the next mount");
        }
    }

    fn queue(&self) -> Option<mpsc::Sender<OsString>> {
        let mut s = self.state.lock();
        if s.finished {
            return None;
        }
        if s.queue.is_none() {
            let (work, cpus) = self.setup.as_ref()?;
            let work = work.try_clone().ok()?;
            let cpus = *cpus;
            let (tx, rx) = mpsc::channel::<OsString>();
            let pending = self.pending.clone();
            let spawned = std::thread::Builder::new()
                .name("ovl-reaper".into())
                .spawn(move || {
                    let _ = set_sched_idle(false);
                    if let Some(c) = cpus {
                        let _ = set_thread_cpus(&c);
                    }
                    for name in rx {
                        clear(work.as_fd(), &name);
                        done(&pending);
                    }
                });
            match spawned {
                Ok(t) => {
                    s.queue = Some(tx);
                    s.thread = Some(t);
                }
                Err(e) => {
                    log::debug!("no reaper thread ({e}): removals are done at once");
                    return None;
                }
            }
        }
        s.queue.clone()
    }
}

/// Removes `name` from the work directory `work` now, with everything under it; a
/// failure is logged (the next mount clears what is left).
pub fn clear(work: BorrowedFd<'_>, name: &OsStr) {
    if let Err(e) = remove_tree(work, name) {
        log::warn!("cannot clear {name:?} from the work directory: {e:?}");
    }
}

/// One queued removal is done (or will not be): wakes `flush`.
fn done(pending: &(Mutex<usize>, Condvar)) {
    let mut n = pending.0.lock();
    *n = n.saturating_sub(1);
    pending.1.notify_all();
}
