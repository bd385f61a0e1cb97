//! The CPU of the /dev/fuse threads (`follow_caller=`): while requests come from one
//! caller, the threads that serve them move to its CPU (but for big reads and reads that
//! wait for a disk, see `fuse_uring::Placement`).
//!
//! Why: on /dev/fuse a request wakes whichever daemon thread has waited longest, and the
//! scheduler runs it on the CPU it last ran on. When that CPU is idle it must be woken
//! first, and so must the caller's when the reply comes; on a VM that halts idle vCPUs,
//! those two wake-ups are most of a round trip. On the benchmarks' 2-core VM a pipe round
//! trip between two processes takes 3.7 us on one CPU and 192 us across the two, and 20000
//! stats from one process over /dev/fuse took 32-47 us each, against 13-17 us with the
//! daemon pinned to the caller's CPU. (io_uring has a queue per CPU and needs none of
//! this: see `fuse_uring`.)
//!
//! How: every millisecond of requests, a serving thread has a helper thread (the looker)
//! read which CPU its current caller last ran on (field 39 of /proc/PID/stat; never the
//! serving thread itself, see `Follow::ask`). The last `LOOKS` readings are kept. While
//! they all come from one caller and most of them (`AGREE`) name one CPU, that is the CPU
//! the serving threads pin themselves to at their next request. A request from another
//! caller than the one before lets them go back to the CPUs they were allowed before at
//! once, and keeps them there for `QUIET` after the last such change (several callers,
//! whom one pinned CPU would serialise). A caller that the scheduler moves now and then
//! (`tar x` was moved a few times a second) keeps its threads: with unanimity required
//! instead, they were let go and pinned again every few tens of milliseconds. Pinning is
//! only ever to a CPU the caller runs on, so it stays within the daemon's cgroup's CPUs
//! as far as the caller does; where the kernel refuses it, the thread keeps its CPUs.
//!
//! The looker is idle-class and looks every millisecond. At normal priority, waking on
//! the caller's CPU it made that CPU busy for a moment, and the scheduler moved the
//! caller to the other CPU at its next wake-up, away from its pinned threads; looking
//! every 4 ms, the threads took 12 ms or more to follow. 10000 stats of lower files from
//! one C process over `/dev/fuse`: the caller was moved 20-190 times and up to 12% of the
//! requests crossed CPUs (80-130 us each), 15.0 us per stat (median of 12 runs); with
//! both changes mostly under 15 moves and 2% crossing, 11.4 us (io_uring: 10.0 us). An
//! idle-class looker may wait long for a CPU when both are busy, which is why a change
//! of caller is noticed by the serving threads themselves and not left to it.
//!
//! A pinned thread is also scheduled as the io_uring threads are (`uring_idle=`, see
//! `uring_priority`): idle-class by default. Pinned alone it helped only callers pinned
//! themselves: a reply woke the caller while our thread still ran on its CPU, and the
//! scheduler moved the caller to the idle CPU, where its next request came from. An
//! idle-class thread leaves the CPU counted as idle, so the caller stays. (Same 20000
//! stats, caller free to move: 40-49 us each before, 39-41 pinned at normal priority,
//! 15-17 pinned and idle-class.)

use crate::fuse::ReadSize;
use crate::uring_priority::{Governor, Policy};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Read;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a thread serves requests before it looks at its caller's CPU again.
const LOOK_EVERY: Duration = Duration::from_millis(1);
/// Readings kept, and how many of them must name one CPU for threads to pin themselves
/// there.
const LOOKS: usize = 4;
const AGREE: usize = 3;
/// How long after a request from a new caller the threads stay unpinned.
const QUIET: Duration = Duration::from_millis(4);

/// The last `LOOKS` readings: which caller (thread id) ran on which CPU, oldest first.
/// The looker's own.
#[derive(Default)]
struct Looks(VecDeque<(u32, usize)>);

impl Looks {
    /// Records a reading; returns the CPU to pin to: while one caller made every request
    /// read, the CPU it was found on in `AGREE` of the readings, if any. Callers that take
    /// turns might come from one CPU by chance for a while; pinned there, the threads
    /// would make the other callers' requests wait for that CPU (two parallel jobs of the
    /// benchmark's build mix took 1.5 times as long as that).
    fn record(&mut self, pid: u32, cpu: usize) -> Option<usize> {
        let l = &mut self.0;
        if l.len() == LOOKS {
            l.pop_front();
        }
        l.push_back((pid, cpu));
        if l.len() < LOOKS || l.iter().any(|&(p, _)| p != pid) {
            return None;
        }
        let named = |c: usize| l.iter().filter(|&&(_, x)| x == c).count();
        l.iter().rev().map(|&(_, c)| c).find(|&c| named(c) >= AGREE)
    }
}

/// One /dev/fuse thread's own state.
#[derive(Default)]
struct ThreadState {
    next_look: Option<Instant>,
    /// The CPU the thread is pinned to, if any.
    pinned: Option<usize>,
    /// The CPUs it was allowed before it first pinned itself.
    home: Option<crate::sys::process::CpuSet>,
    /// A move the kernel refused (a CPU outside the daemon's cpuset, say), not tried again
    /// on every request while it is still the one wanted.
    refused: Option<Option<usize>>,
    /// Let run on its former CPUs while a read waits for a disk (`Follow::free`), still
    /// counted as pinned: its next request pins it again, or lets it go for good.
    freed: bool,
    /// Its scheduling class while pinned (kept while it is not, as the governor's history
    /// still holds, and opening it again costs a /proc open per move).
    class: Option<Governor>,
}

thread_local! {
    static STATE: RefCell<ThreadState> = RefCell::default();
}

/// The daemon's policy and the readings its /dev/fuse threads share.
pub struct Follow {
    on: bool,
    /// The class of a pinned thread (`uring_idle=`).
    class: Policy,
    /// What the looker finds: the CPU serving threads should be pinned to; `NO_CPU` for
    /// none.
    target: Arc<AtomicUsize>,
    /// The caller of the latest request (0 before the first).
    last_caller: AtomicU32,
    /// Until when (microseconds since `epoch`) no thread pins itself: the last change of
    /// caller was more recent than `QUIET`.
    quiet_until: AtomicU64,
    epoch: Instant,
    /// Where serving threads hand callers to the looker (started with the first).
    looker: OnceLock<Option<SyncSender<u32>>>,
}

const NO_CPU: usize = usize::MAX;

impl Follow {
    pub fn new(on: bool, class: Policy) -> Follow {
        Follow {
            on,
            class,
            target: Arc::new(AtomicUsize::new(NO_CPU)),
            last_caller: AtomicU32::new(0),
            quiet_until: AtomicU64::new(0),
            epoch: Instant::now(),
            looker: OnceLock::new(),
        }
    }

    /// Starts the looker before the first request, so that no caller waits for a thread
    /// to be made (about 100 us on the first request of a fresh mount).
    pub fn start(&self) {
        if self.on {
            self.looker();
        }
    }

    /// Called by a /dev/fuse thread as it starts on a request from thread `pid` (0 for
    /// the kernel's own), which waits for the reply. A big read (read-ahead) lets a
    /// pinned thread go, and a thread let go stays so for any read (see
    /// `fuse_uring::Placement`).
    pub fn serving(&self, pid: u32, read: ReadSize) {
        if !self.on || pid == 0 {
            return;
        }
        let now = Instant::now();
        let settled = self.caller_settled(pid, now);
        STATE.with_borrow_mut(|st| {
            if let (Some(_), Some(g)) = (st.pinned, st.class.as_mut()) {
                g.served_at(now);
            }
            if st.next_look.is_none_or(|t| now >= t) {
                st.next_look = Some(now + LOOK_EVERY);
                self.ask(pid);
            }
            if read != ReadSize::NotRead && st.freed {
                return;
            }
            let want = match self.target.load(Ordering::Relaxed) {
                NO_CPU => None,
                _ if !settled => None,
                c => Some(c),
            };
            let freed = std::mem::take(&mut st.freed);
            if (want != st.pinned || freed) && st.refused != Some(want) {
                move_thread(st, want, self.class);
            }
            if read == ReadSize::Big {
                let_go(st);
            }
        });
    }

    /// Notes a request from `pid` at `now`; whether one caller has made every request for
    /// `QUIET` (the first caller counts as one from the start). A change of caller also
    /// drops the CPU the looker found, which was the caller's before.
    fn caller_settled(&self, pid: u32, now: Instant) -> bool {
        let at = now.saturating_duration_since(self.epoch).as_micros() as u64;
        // Read first: the threads serving one caller then share the line unwritten.
        let before = self.last_caller.load(Ordering::Relaxed);
        if before != pid {
            self.last_caller.store(pid, Ordering::Relaxed);
            if before != 0 {
                self.target.store(NO_CPU, Ordering::Relaxed);
                let until = at + QUIET.as_micros() as u64;
                self.quiet_until.fetch_max(until, Ordering::Relaxed);
            }
        }
        at >= self.quiet_until.load(Ordering::Relaxed)
    }

    /// Whether the calling thread is pinned to its caller's CPU, or let go from it for a
    /// disk wait.
    pub fn following(&self) -> bool {
        self.on && STATE.with_borrow(|st| st.pinned.is_some())
    }

    /// After a small read that did not wait for the disk: a thread let go for an earlier
    /// one goes back to its caller's CPU (see `fuse_uring::Placement`).
    pub fn settle(&self) {
        STATE.with_borrow_mut(|st| {
            if std::mem::take(&mut st.freed) {
                move_thread(st, st.pinned, self.class);
            }
        });
    }

    /// Whether the calling thread is pinned to its caller's CPU now.
    #[cfg(test)]
    pub fn pinned(&self) -> bool {
        self.on && STATE.with_borrow(|st| st.pinned.is_some() && !st.freed)
    }

    /// Before a read waits for a disk: lets a pinned thread be woken on any of its former
    /// CPUs, where the disk's interrupt lands, until its next request (the reason is in
    /// `fuse_uring::Placement`).
    pub fn free(&self) {
        STATE.with_borrow_mut(let_go);
    }

    /// Has the looker read where `pid` runs, unless it is still at an earlier caller.
    /// Never on the serving thread itself: reading /proc/PID/stat can wait for locks the
    /// caller holds while it waits for our reply (a caller writing back a shared mapping
    /// did; the serving thread hung in the read, and the caller with it).
    fn ask(&self, pid: u32) {
        if let Some(tx) = self.looker() {
            let _ = tx.try_send(pid);
        }
    }

    /// Where serving threads hand callers to the looker, which this starts the first time.
    fn looker(&self) -> Option<&SyncSender<u32>> {
        let tx = self.looker.get_or_init(|| {
            let (tx, rx) = sync_channel::<u32>(1);
            let target = self.target.clone();
            std::thread::Builder::new()
                .name("ovl-follow".into())
                .spawn(move || {
                    if let Err(e) = crate::sys::process::set_sched_idle(true) {
                        log::debug!("the CPU-follow thread keeps normal priority: {e:?}");
                    }
                    let mut looks = Looks::default();
                    for pid in rx {
                        if let Some(cpu) = caller_cpu(pid) {
                            let want = looks.record(pid, cpu);
                            log::trace!("caller {pid} on CPU {cpu}: pin to {want:?}");
                            target.store(want.unwrap_or(NO_CPU), Ordering::Relaxed);
                        }
                    }
                })
                .map_err(|e| log::warn!("cannot start the CPU-follow thread: {e}"))
                .ok()
                .map(|_| tx)
        });
        tx.as_ref()
    }
}

/// Lets a pinned thread run on its former CPUs until its next request (`Follow::free`).
fn let_go(st: &mut ThreadState) {
    if let (Some(_), Some(home), false) = (st.pinned, &st.home, st.freed) {
        st.freed = crate::sys::process::set_thread_cpus(home).is_ok();
    }
}

/// Pins the calling thread to `cpu` and gives it `class`, or returns it to its former
/// CPUs and normal priority (`None`).
fn move_thread(st: &mut ThreadState, cpu: Option<usize>, class: Policy) {
    use crate::sys::process::{one_cpu, set_thread_cpus, thread_cpus};
    if st.home.is_none() {
        match thread_cpus() {
            Ok(set) => st.home = Some(set),
            Err(_) => return,
        }
    }
    let Some(set) = (match cpu {
        Some(c) => one_cpu(c),
        None => st.home,
    }) else {
        return;
    };
    match set_thread_cpus(&set) {
        Ok(()) => {
            log::trace!("/dev/fuse thread: CPU {:?} -> {cpu:?}", st.pinned);
            match (cpu, &st.class) {
                (Some(_), Some(g)) if st.pinned.is_none() => g.resume(),
                (Some(_), Some(_)) => {}
                (Some(_), None) => st.class = Some(Governor::start(class)),
                (None, _) => {
                    if let Err(e) = crate::sys::process::set_sched_idle(false) {
                        log::debug!("cannot give a /dev/fuse thread normal priority: {e:?}");
                    }
                }
            }
            st.pinned = cpu;
            st.refused = None;
        }
        Err(e) => {
            st.refused = Some(cpu);
            log::debug!("cannot move a /dev/fuse thread to CPU {cpu:?}: {e:?}");
        }
    }
}

/// The CPU thread `pid` last ran on, from /proc (a thread id works there too).
fn caller_cpu(pid: u32) -> Option<usize> {
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut buf = [0u8; 1024];
    let n = f.read(&mut buf).ok()?;
    last_cpu_in_stat(&buf[..n])
}

/// Field 39 (`processor`) of a /proc/PID/stat line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis, the last
/// one on the line.
fn last_cpu_in_stat(line: &[u8]) -> Option<usize> {
    let close = line.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&line[close + 1..]).ok()?;
    // Fields 3 onwards follow the name: `processor` is the 37th of them.
    rest.split_ascii_whitespace().nth(36)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_field_is_found_after_an_awkward_command_name() {
        let mut line = String::from("4242 (a) b (c) d) S");
        for f in 4..=38 {
            line.push_str(&format!(" {f}"));
        }
        line.push_str(" 7 0 0 0 0 0\n");
        assert_eq!(last_cpu_in_stat(line.as_bytes()), Some(7));
        assert_eq!(last_cpu_in_stat(b"12 (x) S 1 2 3"), None);
        assert_eq!(last_cpu_in_stat(b"no name here"), None);
    }

    #[test]
    fn our_own_cpu_is_read_from_proc() {
        // SAFETY: gettid has no memory effects.
        let tid = unsafe { libc::gettid() } as u32;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = caller_cpu(tid).expect("our own /proc stat line");
        assert!(cpu < cpus.max(libc::CPU_SETSIZE as usize), "cpu {cpu}");
    }

    #[test]
    fn one_caller_found_mostly_on_one_cpu_chooses_it() {
        let mut l = Looks::default();
        assert_eq!(l.record(7, 1), None);
        assert_eq!(l.record(7, 1), None);
        assert_eq!(l.record(7, 1), None);
        assert_eq!(l.record(7, 1), Some(1), "four readings, all of CPU 1");
        assert_eq!(
            l.record(7, 0),
            Some(1),
            "one reading elsewhere leaves the majority"
        );
        assert_eq!(l.record(7, 0), None, "two and two: no CPU");
        assert_eq!(
            l.record(7, 0),
            Some(0),
            "the caller moved: its threads follow"
        );
        // Two callers: none, even where most readings name one CPU.
        let mut l = Looks::default();
        for (pid, cpu) in [(7, 0), (7, 0), (8, 1), (7, 0), (7, 0), (7, 0), (8, 0)] {
            assert_eq!(l.record(pid, cpu), None, "caller {pid} on CPU {cpu}");
        }
        assert_eq!(l.record(8, 0), None, "caller 7 still among the readings");
        assert_eq!(l.record(8, 0), None);
        assert_eq!(l.record(8, 0), Some(0), "caller 8 alone now");
    }

    #[test]
    fn a_thread_that_follows_is_pinned_and_then_let_go() {
        // A thread of our own, so the test runner's threads keep their CPUs.
        std::thread::spawn(|| {
            let home = crate::sys::process::thread_cpus().expect("our CPUs");
            let mut st = ThreadState::default();
            let me = caller_cpu(unsafe { libc::gettid() } as u32).expect("our CPU");
            move_thread(&mut st, Some(me), Policy::Idle);
            assert_eq!(st.pinned, Some(me));
            assert_eq!(sched_policy(), libc::SCHED_IDLE, "idle-class while pinned");
            let now = crate::sys::process::thread_cpus().unwrap();
            // SAFETY: CPU_COUNT/CPU_ISSET read a valid set.
            assert_eq!(unsafe { libc::CPU_COUNT(&now) }, 1);
            assert!(unsafe { libc::CPU_ISSET(me, &now) });
            move_thread(&mut st, None, Policy::Idle);
            assert_eq!(st.pinned, None);
            assert_eq!(sched_policy(), libc::SCHED_OTHER, "normal priority again");
            // A CPU this machine lacks: refused, and remembered as such.
            let absent = libc::CPU_SETSIZE as usize - 1;
            move_thread(&mut st, Some(absent), Policy::Idle);
            assert_eq!((st.pinned, st.refused), (None, Some(Some(absent))));
            move_thread(&mut st, Some(me), Policy::Idle);
            assert_eq!(
                sched_policy(),
                libc::SCHED_IDLE,
                "idle-class when pinned again"
            );
            move_thread(&mut st, None, Policy::Idle);
            let back = crate::sys::process::thread_cpus().unwrap();
            assert!(
                unsafe { libc::CPU_EQUAL(&back, &home) },
                "back to the CPUs it had"
            );
        })
        .join()
        .expect("the pinning thread");
    }

    fn sched_policy() -> i32 {
        // SAFETY: no memory effects.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_change_of_caller_lets_go_until_one_caller_has_kept_on_for_a_while() {
        let f = Follow::new(true, Policy::Normal);
        let ms = |n: u64| f.epoch + Duration::from_millis(n);
        assert!(f.caller_settled(7, ms(1)), "the first caller");
        f.target.store(1, Ordering::Relaxed);
        assert!(f.caller_settled(7, ms(2)));
        assert_eq!(
            f.target.load(Ordering::Relaxed),
            1,
            "kept for the same caller"
        );
        assert!(!f.caller_settled(8, ms(3)), "another caller");
        assert_eq!(
            f.target.load(Ordering::Relaxed),
            NO_CPU,
            "the CPU found was caller 7's"
        );
        f.target.store(0, Ordering::Relaxed);
        assert!(!f.caller_settled(8, ms(5)), "within QUIET of the change");
        assert!(f.caller_settled(8, ms(3) + QUIET), "caller 8 alone since");
        assert_eq!(f.target.load(Ordering::Relaxed), 0);
        for i in 0..20 {
            assert!(
                !f.caller_settled(7 + i as u32 % 2, ms(20 + i)),
                "callers taking turns never settle"
            );
        }
    }

    /// Runs `test` on a thread of its own, so the test runner's threads keep their CPUs,
    /// with a `Follow` that starts no looker (the test sets the CPU wanted itself) and the
    /// CPUs the thread had at the start.
    fn without_looker(test: impl FnOnce(&Follow, Vec<usize>) + Send + 'static) {
        std::thread::spawn(|| {
            let before = crate::sys::process::thread_cpu_list();
            let f = Follow::new(true, Policy::Normal);
            STATE.with_borrow_mut(|st| {
                st.next_look = Some(Instant::now() + Duration::from_secs(3600))
            });
            test(&f, before);
        })
        .join()
        .expect("the pinning thread");
    }

    #[test]
    fn a_request_from_another_caller_unpins_its_thread_at_once() {
        use crate::sys::process::thread_cpu_list as our_cpus;
        without_looker(|f, before| {
            f.target.store(before[0], Ordering::Relaxed);
            f.serving(1, ReadSize::NotRead);
            assert!(f.pinned(), "pinned for the first caller");
            assert_eq!(our_cpus(), vec![before[0]]);
            f.serving(2, ReadSize::NotRead);
            assert!(!f.pinned(), "let go for the second");
            assert_eq!(our_cpus(), before);
            f.target.store(before[0], Ordering::Relaxed);
            f.serving(1, ReadSize::NotRead);
            assert!(!f.pinned(), "not pinned again while callers take turns");
        });
    }

    #[test]
    fn the_looker_starts_before_the_first_request_when_on() {
        let on = Follow::new(true, Policy::Adaptive);
        on.start();
        assert!(matches!(on.looker.get(), Some(Some(_))), "looker started");
        let off = Follow::new(false, Policy::Adaptive);
        off.start();
        assert!(off.looker.get().is_none(), "no looker with follow_caller=0");
    }

    #[test]
    fn off_means_no_looks() {
        let f = Follow::new(false, Policy::Adaptive);
        std::thread::spawn(move || {
            f.serving(std::process::id(), ReadSize::NotRead);
            assert!(STATE.with_borrow(|s| s.next_look.is_none()));
            assert!(f.looker.get().is_none(), "no looker thread");
        })
        .join()
        .expect("the thread");
    }

    #[test]
    fn a_thread_let_go_for_a_disk_wait_is_pinned_again_by_a_request_that_does_not_wait() {
        use crate::sys::process::thread_cpu_list as our_cpus;
        without_looker(|f, before| {
            if before.len() < 2 {
                eprintln!(
                    "NOTE: this thread may run on one CPU only; pinning changes nothing here"
                );
            }
            let cpu = before[0];
            f.target.store(cpu, Ordering::Relaxed);
            f.serving(1, ReadSize::NotRead);
            assert_eq!(our_cpus(), vec![cpu], "pinned to the caller's CPU");
            assert!(f.pinned());
            f.free();
            assert_eq!(our_cpus(), before, "let go while a read waits");
            assert!(!f.pinned());
            f.serving(1, ReadSize::Small);
            assert_eq!(our_cpus(), before, "still let go for a small read");
            assert!(
                f.following() && !f.pinned(),
                "nothing to let go before that read"
            );
            f.settle();
            assert_eq!(our_cpus(), vec![cpu], "home once a small read did not wait");
            assert!(f.pinned());
            f.free();
            f.serving(1, ReadSize::NotRead);
            assert_eq!(our_cpus(), vec![cpu], "pinned again by the next request");
            assert!(f.pinned());
            // No CPU wanted any more: the next request lets it go for good.
            f.free();
            f.target.store(NO_CPU, Ordering::Relaxed);
            f.serving(1, ReadSize::NotRead);
            assert_eq!(our_cpus(), before);
            assert!(!f.pinned());
            f.free();
            assert_eq!(
                our_cpus(),
                before,
                "an unpinned thread has nothing to let go"
            );
        });
    }

    #[test]
    fn a_big_read_lets_a_pinned_thread_go_until_a_request_that_is_no_read() {
        use crate::sys::process::thread_cpu_list as our_cpus;
        without_looker(|f, before| {
            let cpu = before[0];
            f.target.store(cpu, Ordering::Relaxed);
            f.serving(1, ReadSize::NotRead);
            assert_eq!(our_cpus(), vec![cpu], "pinned to the caller's CPU");
            f.serving(1, ReadSize::Big);
            assert_eq!(our_cpus(), before, "a big read: every CPU it had");
            assert!(f.following() && !f.pinned());
            f.serving(1, ReadSize::Small);
            assert_eq!(our_cpus(), before, "a small read does not bring it home");
            f.serving(1, ReadSize::Big);
            assert_eq!(our_cpus(), before);
            f.serving(1, ReadSize::NotRead);
            assert_eq!(our_cpus(), vec![cpu], "home for a request that is no read");
            assert!(f.pinned());
        });
    }
}
