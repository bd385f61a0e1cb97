//! Stat-ahead for listings that carry attributes (READDIRPLUS), and what those carry.
//!
//! Such a reply holds the attributes of each of its entries, and on a cold cache each one
//! costs the layer's filesystem a name lookup and an inode read: about 7-10 us of CPU and
//! disk on ext4, one after the other on the thread that serves the request, while the
//! other CPUs idle. Helper threads here stat a reply's entries in their layers just ahead
//! of that thread, so the cold work is spread over the CPUs and the disk gets several
//! reads at once; the serving thread then finds them cached. The helpers only warm the
//! layers' caches: what a reply says still comes from the serving thread's own lookups.
//!
//! By default (`ListAttrs::Auto`) a reply of a big directory whose first entries are cold
//! goes out with names only; the helpers then warm the listing in the background once the
//! caller shows that it stats the entries (lookups of them follow), and never for a
//! caller that only lists names.

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
/// Entries from which a cold listing goes out with names only (`ListAttrs::Auto`). In
/// smaller directories the stats cost little next to the lookups they save a caller that
/// stats each entry (a tree walk: `tar c`, `du`, `find -printf`); in big ones a mere
/// listing would wait for a disk read per entry (`ls -f` of a cold 1M-entry directory:
/// 15 s, where the kernel overlay lists it in under 1 s).
pub const NAMES_ONLY_FROM: usize = 4096;
/// Most helper threads, whatever the number of CPUs.
const MAX_HELPERS: usize = 4;
/// What a stat costs (the median of a probe's) from which the layers' caches are taken
/// to be cold: about 1 us when they hold the entry, 3.5-10 us on ext4 when they do not
/// (3.5 while the inode's block is still in memory), on the machines this was measured on.
const COLD_STAT: Duration = Duration::from_micros(3);

/// What READDIRPLUS replies carry for their entries (`listattrs=`; see
/// `ListedLookups::with_attributes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListAttrs {
    /// Attributes while the layers' caches hold the entries (a stat then costs about 1 us
    /// and saves the caller a lookup) or the directory is small; in a big directory
    /// (`NAMES_ONLY_FROM`), names only, as a plain readdir, when a reply's first stats
    /// show them cold: listing it then costs what it costs on the kernel overlay, and
    /// callers that stat the entries look them up, which warms the rest of the listing
    /// on the helpers.
    #[default]
    Auto,
    /// Always attributes.
    On,
    /// Never: names only.
    Off,
}

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
    /// Batches of replies in the queue: a helper warming a listing leaves it for them.
    replies: AtomicUsize,
}

/// The entries of one reply after those the serving thread timed alone, or of a listing
/// warmed in the background, each with its directory's fd in the layer whose copy is seen.
struct Batch {
    items: Vec<(Arc<OwnedFd>, Name)>,
    next: AtomicUsize,
    /// Warming a listing: no reply waits for it.
    background: bool,
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
        self.run_while(|| true)
    }

    /// Stats entries no thread has taken yet while `go_on` says so.
    fn run_while(&self, go_on: impl Fn() -> bool) {
        while go_on() {
            let Some(chunk) = self.claim() else {
                return;
            };
            for (dir, name) in chunk {
                // Only the cache warmed matters; a name gone meanwhile is the serving
                // thread's to find out.
                let _ = fs::fstatat(dir.as_fd(), name);
            }
        }
    }
}

/// Stats the first `CHUNK` of `items` on this thread and tells from their times whether
/// the layers' caches lack them; `None` when there are fewer (too few to tell).
pub fn probe(items: &mut impl Iterator<Item = (Arc<OwnedFd>, Name)>) -> Option<bool> {
    let mut took = [Duration::ZERO; CHUNK];
    let mut probed = 0;
    for (dir, name) in items.by_ref().take(CHUNK) {
        let t = Instant::now();
        let _ = fs::fstatat(dir.as_fd(), &name);
        took[probed] = t.elapsed();
        probed += 1;
    }
    (probed == CHUNK).then(|| judged_cold(&mut took))
}

/// Whether stats that took `took` found the layers' caches cold: their median is what a
/// stat cost. Not their sum, which one stat held up by an interrupt or by a preempting
/// thread could tip: a big listing is probed at each of its thousands of replies, and the
/// first reply judged cold sends the rest of it out with names only (a warm 100k-entry
/// directory stat-ed entry by entry took 0.95-1.15 s instead of 0.55-0.6 s).
fn judged_cold(took: &mut [Duration]) -> bool {
    took.sort_unstable();
    took.get(took.len() / 2).is_some_and(|m| *m >= COLD_STAT)
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
    /// costs more than the stat. And it first stats a few entries alone and times them
    /// (`probe`): when the layers' caches hold them already, sharing the rest would only
    /// add the helpers' wake-ups and a second stat of each; the rest of `items` is then
    /// not even taken.
    pub fn run(&self, mut items: impl Iterator<Item = (Arc<OwnedFd>, Name)>) {
        if !self.enabled() {
            return;
        }
        let Some(cold) = probe(&mut items) else {
            return;
        };
        if !(cold || self.mode == Mode::Always) {
            return;
        }
        let rest: Vec<_> = items.collect();
        if CHUNK + rest.len() < MIN_BATCH || !self.running() {
            return;
        }
        let batch = self.share(rest, false);
        batch.run();
    }

    /// Hands `items` to the helpers alone, to be stat-ed while the caller goes on.
    pub fn warm(&self, items: Vec<(Arc<OwnedFd>, Name)>) {
        if self.enabled() && !items.is_empty() && self.running() {
            self.share(items, true);
        }
    }

    fn share(&self, items: Vec<(Arc<OwnedFd>, Name)>, background: bool) -> Arc<Batch> {
        let batch = Arc::new(Batch {
            items,
            next: AtomicUsize::new(0),
            background,
        });
        let mut q = self.shared.queue.lock();
        q.push_back(batch.clone());
        if !background {
            self.shared.replies.fetch_add(1, Ordering::Relaxed);
        }
        drop(q);
        self.shared.wake.notify_all();
        batch
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
            if batch.background {
                batch.run_while(|| self.replies.load(Ordering::Relaxed) == 0);
            } else {
                batch.run();
            }
        }
    }

    /// The oldest batch with entries left, a reply's before any listing's.
    fn next_batch(&self) -> Option<Arc<Batch>> {
        let mut q = self.queue.lock();
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            q.retain(|b| {
                let keep = b.left();
                if !keep && !b.background {
                    self.replies.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
            if let Some(b) = q.iter().find(|b| !b.background).or_else(|| q.front()) {
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
    fn a_probe_is_judged_by_its_median_stat_not_by_one_held_up() {
        let us = Duration::from_micros;
        // Warm: stats of about 1 us, one held up 300 us (an interrupt, a preemption). The
        // sum, 307 us, was over the limit of 8 x 3 us.
        let mut warm = [us(1), us(1), us(300), us(1), us(1), us(1), us(1), us(1)];
        assert!(!judged_cold(&mut warm));
        let mut three_held_up = [us(1), us(90), us(1), us(200), us(1), us(1), us(60), us(1)];
        assert!(!judged_cold(&mut three_held_up));
        // Cold: most stats wait for the layer's filesystem, a few found their entry.
        let mut cold = [us(40), us(1), us(55), us(38), us(1), us(70), us(45), us(4)];
        assert!(judged_cold(&mut cold));
        let mut inode_blocks_in_memory = [us(3); 8];
        assert!(judged_cold(&mut inode_blocks_in_memory));
    }

    #[test]
    fn threads_claiming_a_batch_take_each_entry_once() {
        let batch = Batch {
            items: items(1003),
            next: AtomicUsize::new(CHUNK),
            background: false,
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

    #[test]
    fn helpers_take_replies_before_listings_being_warmed() {
        let batch = |n, background| {
            Arc::new(Batch {
                items: items(n),
                next: AtomicUsize::new(0),
                background,
            })
        };
        let shared = Shared::default();
        let (warm, reply) = (batch(100, true), batch(10, false));
        shared.queue.lock().extend([warm.clone(), reply.clone()]);
        shared.replies.store(1, Ordering::Relaxed);
        let next = shared.next_batch().expect("a batch");
        assert!(Arc::ptr_eq(&next, &reply), "the reply's batch first");
        let no_reply_waits = || shared.replies.load(Ordering::Relaxed) == 0;
        warm.run_while(no_reply_waits);
        assert_eq!(
            warm.next.load(Ordering::Relaxed),
            0,
            "warming while a reply waits"
        );
        reply.run();
        let next = shared.next_batch().expect("a batch");
        assert!(Arc::ptr_eq(&next, &warm));
        assert_eq!(shared.replies.load(Ordering::Relaxed), 0);
        warm.run_while(no_reply_waits);
        assert!(!warm.left());
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
