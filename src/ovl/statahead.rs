//! Stat-ahead for listings that carry attributes (READDIRPLUS).
//!
//! Such a reply holds the attributes of each of its entries, and on a cold cache each one
//! costs the layer's filesystem a name lookup and an inode read: about 7-10 us of CPU and
//! disk on ext4, one after the other on the thread that serves the request, while the
//! other CPUs idle. Helper threads here stat a reply's entries in their layers just ahead
//! of that thread, so the cold work is spread over the CPUs and the disk gets several
//! reads at once; the serving thread then finds them cached. The helpers only warm the
//! layers' caches: what a reply says still comes from the serving thread's own lookups.

use super::listing::Name;
use crate::sys::fs;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Names a helper claims at a time: few enough that the helpers share a reply evenly,
/// enough that claiming costs little next to the stats.
const CHUNK: usize = 8;
/// Replies with fewer entries are left to the serving thread: waking a helper costs about
/// as much as a few cold stats.
pub const MIN_BATCH: usize = 32;
/// Most helper threads, whatever the number of CPUs.
const MAX_HELPERS: usize = 4;
/// What a stat costs on average from which the layers' caches are taken to be cold
/// (about 1 us when they hold the entry, 5-10 us on ext4 when they do not, on the machine
/// this was measured on).
const COLD_STAT: Duration = Duration::from_micros(3);

/// When replies share their stats with helpers (`statahead=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// When a reply's first stats show the layers' caches to be cold.
    #[default]
    Auto,
    /// For every reply of `MIN_BATCH` entries or more.
    Always,
    /// Never: no helper threads.
    Off,
}

/// The helper pool, started on first use.
pub struct StatAhead {
    mode: Mode,
    shared: Arc<Shared>,
    started: OnceLock<()>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Arc<Batch>>>,
    wake: Condvar,
    closed: AtomicBool,
}

/// The entries of one reply after those the serving thread timed alone, each with its
/// directory's fd in the layer whose copy is seen.
struct Batch {
    items: Vec<(Arc<OwnedFd>, Name)>,
    next: AtomicUsize,
}

impl Batch {
    fn left(&self) -> bool {
        self.next.load(Ordering::Relaxed) < self.items.len()
    }

    /// The next `CHUNK` entries no thread has taken yet.
    fn claim(&self) -> Option<&[(Arc<OwnedFd>, Name)]> {
        let i = self.next.fetch_add(CHUNK, Ordering::Relaxed);
        self.items.get(i..self.items.len().min(i + CHUNK))
    }

    fn run(&self) {
        while let Some(chunk) = self.claim() {
            for (dir, name) in chunk {
                // Only the cache warmed matters; a name gone meanwhile is the serving
                // thread's to find out.
                let _ = fs::fstatat(dir.as_fd(), name);
            }
        }
    }
}

/// How many helpers: one per CPU besides the serving thread's, at least one. (With 2
/// CPUs, 2 helpers listed a cold 1M-entry directory 10% slower than 1 did, and 3 were 30%
/// slower: the serving thread lost its CPU to them.)
fn helpers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, MAX_HELPERS)
}

impl StatAhead {
    pub fn new(mode: Mode) -> StatAhead {
        StatAhead {
            mode,
            shared: Arc::default(),
            started: OnceLock::new(),
        }
    }

    /// Whether replies may share their stats at all.
    pub fn enabled(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Stats `items` on the helpers and the calling thread together, when there are at
    /// least `MIN_BATCH` of them, and returns once every stat has been started.
    ///
    /// The caller's own lookups come after this, not beside it: a lookup of a name whose
    /// stat is under way on another thread sleeps until that stat is done, and waking it
    /// costs more than the stat. And it first stats a few entries alone and times them:
    /// when the layers' caches hold them already, a stat costs about 1 us, and sharing the
    /// rest would only add the helpers' wake-ups and a second stat of each; the rest of
    /// `items` is then not even taken.
    pub fn run(&self, mut items: impl Iterator<Item = (Arc<OwnedFd>, Name)>) {
        if !self.enabled() {
            return;
        }
        let t = Instant::now();
        let mut probed = 0;
        for (dir, name) in items.by_ref().take(CHUNK) {
            let _ = fs::fstatat(dir.as_fd(), &name);
            probed += 1;
        }
        let cold = t.elapsed() >= COLD_STAT * CHUNK as u32;
        if probed < CHUNK || !(cold || self.mode == Mode::Always) {
            return;
        }
        let rest: Vec<_> = items.collect();
        if probed + rest.len() < MIN_BATCH || !self.running() {
            return;
        }
        let batch = Arc::new(Batch {
            items: rest,
            next: AtomicUsize::new(0),
        });
        self.shared.queue.lock().push_back(batch.clone());
        self.shared.wake.notify_all();
        batch.run();
    }

    /// Starts the helpers on first use; false if none could be started.
    fn running(&self) -> bool {
        self.started.get_or_init(|| {
            for i in 0..helpers() {
                let shared = self.shared.clone();
                let r = std::thread::Builder::new()
                    .name(format!("ovl-statahead-{i}"))
                    .spawn(move || shared.serve());
                if let Err(e) = r {
                    log::warn!("cannot start a stat-ahead thread: {e}");
                    if i == 0 {
                        self.shared.closed.store(true, Ordering::Relaxed);
                    }
                    break;
                }
            }
        });
        !self.shared.closed.load(Ordering::Relaxed)
    }
}

impl Drop for StatAhead {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        // Taken so that no helper is between its check of `closed` and its wait.
        let _q = self.shared.queue.lock();
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn serve(&self) {
        // Idle-class: a helper takes only CPU time nothing else wants, so under load the
        // serving threads simply do the stats themselves.
        if let Err(e) = crate::sys::process::set_sched_idle(true) {
            log::debug!("stat-ahead thread stays in the normal scheduling class: {e}");
        }
        while let Some(batch) = self.next_batch() {
            batch.run();
        }
    }

    fn next_batch(&self) -> Option<Arc<Batch>> {
        let mut q = self.queue.lock();
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            while q.front().is_some_and(|b| !b.left()) {
                q.pop_front();
            }
            if let Some(b) = q.front() {
                return Some(b.clone());
            }
            self.wake.wait(&mut q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn items(n: usize) -> Vec<(Arc<OwnedFd>, Name)> {
        let dir = Arc::new(OwnedFd::from(std::fs::File::open("/").unwrap()));
        (0..n)
            .map(|i| (dir.clone(), Name::from(OsStr::new(&format!("n{i}")))))
            .collect()
    }

    #[test]
    fn threads_claiming_a_batch_take_each_entry_once() {
        let batch = Batch {
            items: items(1003),
            next: AtomicUsize::new(CHUNK),
        };
        let taken: Vec<String> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while let Some(c) = batch.claim() {
                            mine.extend(c.iter().map(|(_, n)| n.to_string_lossy().into_owned()));
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let mut got: Vec<usize> = taken.iter().map(|n| n[1..].parse().unwrap()).collect();
        got.sort();
        let want: Vec<usize> = (CHUNK..1003).collect();
        assert_eq!(got, want);
        assert!(!batch.left());
    }

    /// How many helper threads this process has, once that number is `want` (a new
    /// thread names itself, an exiting one goes, a moment after the call that caused it),
    /// or after `within`.
    fn helper_threads(want: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let n = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with("ovl-statahead"))
                .count();
            if n == want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // One test for the pool's threads, so that no other test's helpers are counted.
    #[test]
    fn helpers_start_only_when_asked_and_stop_with_the_pool() {
        StatAhead::new(Mode::Off).run(items(100).into_iter());
        // Below the batch size nothing is shared, even when always asked.
        let pool = StatAhead::new(Mode::Always);
        pool.run(items(MIN_BATCH - 1).into_iter());
        let (short, long) = (Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(
            helper_threads(1, short),
            0,
            "helpers without a batch to share"
        );
        pool.run(items(100).into_iter());
        assert_eq!(helper_threads(helpers(), long), helpers());
        drop(pool);
        assert_eq!(
            helper_threads(0, long),
            0,
            "helpers left running after the pool was dropped"
        );
    }
}
