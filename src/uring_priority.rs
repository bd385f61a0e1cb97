//! The scheduling class of the io_uring threads (`uring_idle=`): idle-class (SCHED_IDLE)
//! while the CPUs have room, normal priority while they do not.
//!
//! Idle-class keeps a caller on its own CPU (see `fuse_uring::serve`), but an idle-class
//! thread gets a CPU only when no other thread of its scheduling group (autogroup or
//! cgroup) wants it. When busy threads of the daemon's group fill the CPUs, it queues
//! behind them at every request: 6-12 ms per lookup with one busy loop per CPU on the
//! 2-core VM, against 24-56 us at normal priority (busy threads in another group cost
//! it no more than a normal-priority thread: 25-34 us). So, by default, each ring
//! thread watches how long it waits to run once woken (its run-queue delay, from
//! /proc/thread-self/schedstat) and moves to normal priority while that is long. It tries
//! idle-class again after a while, unless other threads filled every CPU at each look
//! meanwhile (/proc/loadavg) and its own CPU never fell idle (/proc/stat): a try on a
//! full CPU stalls a request for as long as the others run (up to a second, measured).
//! The count alone is not enough: one busy thread pinned to the other CPU, with anything
//! else runnable at each look (a kernel thread, the caller), reads as full CPUs and kept
//! a ring thread whose own CPU was free at normal priority for good.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// `uring_idle=`: how the ring threads are scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Idle-class while it does not make requests wait for a CPU (default).
    #[default]
    Adaptive,
    /// Always idle-class (`uring_idle=1`).
    Idle,
    /// Always normal priority (`uring_idle=0`).
    Normal,
}

/// How often a busy thread looks at its run-queue delay.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Fewer wake-ups than this in a period are judged as this many: a few long waits are
/// starvation, a few short ones say nothing.
const MIN_WAKEUPS: u64 = 50;
/// The share of a normal-priority spell its CPU must have spent idle for a try of
/// idle-class, when the count of runnable threads says the CPUs are full.
const IDLE_ROOM: f64 = 0.02;
/// Mean wait to run per wake-up above which idle-class costs more than it saves.
const STARVED: Duration = Duration::from_micros(40);
/// How long normal priority lasts before idle-class is tried again; doubled (up to
/// `MAX_HOLD`) each time the try finds the CPUs still crowded.
const FIRST_HOLD: Duration = Duration::from_secs(2);
const MAX_HOLD: Duration = Duration::from_secs(16);

/// What the thread should do after a look at its delays.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Stay,
    ToNormal,
    ToIdle,
}

/// The adaptive state, apart from the clock and the system (unit-tested).
#[derive(Debug)]
struct Adaptive {
    cpus: usize,
    hold: Duration,
    /// When the current normal-priority spell ends; `None` while idle-class.
    normal_until: Option<Instant>,
    /// The fewest runnable threads seen during this normal-priority spell. One look can
    /// count the caller whose request we serve, so the spell's best look decides.
    fewest_runnable: Option<usize>,
    /// Whether the current idle-class period is a try after normal priority.
    trying: bool,
}

impl Adaptive {
    fn new(cpus: usize) -> Self {
        Adaptive {
            cpus,
            hold: FIRST_HOLD,
            normal_until: None,
            fewest_runnable: None,
            trying: false,
        }
    }

    fn idle(&self) -> bool {
        self.normal_until.is_none()
    }

    /// A period ends at `now` with `wakeups` wake-ups that waited `waited` in all;
    /// `runnable` counts the threads runnable right now, ourselves included;
    /// `idle_share` tells what share of the normal-priority spell the thread's CPU spent
    /// idle (asked at a spell's end only, and a new spell starts from there).
    fn step(
        &mut self,
        now: Instant,
        wakeups: u64,
        waited: Duration,
        runnable: impl FnOnce() -> Option<usize>,
        idle_share: impl FnOnce() -> Option<f64>,
    ) -> Step {
        if let Some(until) = self.normal_until {
            if let Some(r) = runnable() {
                self.fewest_runnable = Some(self.fewest_runnable.map_or(r, |f| f.min(r)));
            }
            if now < until {
                return Step::Stay;
            }
            // Others filled every CPU at each look, ours with no pause: a try would stall.
            if self.fewest_runnable.is_some_and(|r| r > self.cpus)
                && idle_share().is_none_or(|s| s < IDLE_ROOM)
            {
                self.normal_until = Some(now + self.hold);
                self.fewest_runnable = None;
                return Step::Stay;
            }
            self.trying = true;
            self.normal_until = None;
            return Step::ToIdle;
        }
        let starved = waited > STARVED * wakeups.max(MIN_WAKEUPS) as u32;
        if !starved {
            if self.trying {
                self.hold = FIRST_HOLD;
                self.trying = false;
            }
            return Step::Stay;
        }
        if self.trying {
            self.hold = (self.hold * 2).min(MAX_HOLD);
        }
        self.trying = false;
        self.normal_until = Some(now + self.hold);
        self.fewest_runnable = None;
        Step::ToNormal
    }
}

/// Threads runnable right now, system-wide (the caller among them).
fn runnable_threads() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// CPUs online (not those this thread may run on: ring threads are pinned to one).
fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The idle time of the calling thread's CPU since a mark, from /proc/stat.
#[derive(Default)]
struct CpuIdle {
    /// (CPU, idle ticks, all ticks) at the mark.
    mark: Option<(usize, u64, u64)>,
}

impl CpuIdle {
    fn mark(&mut self) {
        self.mark = Self::now();
    }

    /// The share of the time since the mark that the CPU spent idle; marks again. `None`
    /// when unknown, or when the thread has moved to another CPU since.
    fn share_since_mark(&mut self) -> Option<f64> {
        let (cpu0, idle0, all0) = self.mark?;
        self.mark = Self::now();
        let (cpu, idle, all) = self.mark?;
        let span = all.checked_sub(all0).filter(|&d| d > 0)?;
        (cpu == cpu0).then(|| idle.saturating_sub(idle0) as f64 / span as f64)
    }

    fn now() -> Option<(usize, u64, u64)> {
        let cpu = crate::sys::process::current_cpu()?;
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let (idle, all) = cpu_ticks(&text, cpu)?;
        Some((cpu, idle, all))
    }
}

/// From /proc/stat, CPU `cpu`'s (idle, all) ticks so far; waiting for I/O counts as idle.
fn cpu_ticks(stat: &str, cpu: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice: guest time is
    // counted in user and nice already.
    let idle = ticks.get(3)? + ticks.get(4).unwrap_or(&0);
    let all = ticks.iter().take(8).sum();
    Some((idle, all))
}

/// Run-queue delay so far of the calling thread: (total wait, times it was run).
struct SchedStat(std::fs::File);

impl SchedStat {
    fn open() -> Option<SchedStat> {
        std::fs::File::open("/proc/thread-self/schedstat")
            .ok()
            .map(SchedStat)
    }

    fn read(&self) -> Option<(u64, u64)> {
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        parse_schedstat(&buf[..n])
    }
}

/// "on-CPU ns, waiting ns, timeslices": the last two.
fn parse_schedstat(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut f = text.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// One ring thread's scheduling class, kept by the thread itself (also that of a /dev/fuse
/// thread while it is pinned to its callers' CPU: see `devfuse_cpu`).
pub struct Governor {
    policy: Policy,
    adaptive: Option<(Adaptive, SchedStat)>,
    cpu_idle: CpuIdle,
    last_check: Instant,
    last: (u64, u64),
}

impl Governor {
    /// Sets the calling thread's class for `policy`.
    pub fn start(policy: Policy) -> Governor {
        let adaptive = match policy {
            Policy::Normal => None,
            Policy::Idle => {
                set_class(true);
                None
            }
            Policy::Adaptive => {
                set_class(true);
                match SchedStat::open() {
                    Some(s) => Some((Adaptive::new(online_cpus()), s)),
                    None => {
                        log::debug!("no schedstat for this thread; ring thread stays idle-class");
                        None
                    }
                }
            }
        };
        let last = adaptive
            .as_ref()
            .and_then(|(_, s)| s.read())
            .unwrap_or_default();
        Governor {
            policy,
            adaptive,
            cpu_idle: CpuIdle::default(),
            last_check: Instant::now(),
            last,
        }
    }

    /// Gives the calling thread back the class this governor last chose, after something
    /// else gave it another.
    pub fn resume(&self) {
        match (&self.adaptive, self.policy) {
            (_, Policy::Normal) => set_class(false),
            (Some((state, _)), _) => set_class(state.idle()),
            (None, _) => set_class(true),
        }
    }

    /// Called after each request the thread served.
    pub fn served(&mut self) {
        if self.adaptive.is_some() {
            self.served_at(Instant::now());
        }
    }

    /// `served`, for a caller that has read the clock already.
    pub fn served_at(&mut self, now: Instant) {
        let Some((state, stat)) = self.adaptive.as_mut() else {
            return;
        };
        if now.duration_since(self.last_check) < CHECK_EVERY {
            return;
        }
        self.last_check = now;
        let Some((wait, runs)) = stat.read() else {
            return;
        };
        let (waited, wakeups) = (
            wait.saturating_sub(self.last.0),
            runs.saturating_sub(self.last.1),
        );
        self.last = (wait, runs);
        let cpu_idle = &mut self.cpu_idle;
        let step = state.step(
            now,
            wakeups,
            Duration::from_nanos(waited),
            runnable_threads,
            || cpu_idle.share_since_mark(),
        );
        log::trace!(
            "ring thread: {wakeups} runs waited {waited} ns in all; {step:?} (idle: {})",
            state.idle()
        );
        match step {
            Step::Stay => {}
            Step::ToNormal => {
                set_class(false);
                self.cpu_idle.mark();
            }
            Step::ToIdle => set_class(true),
        }
    }
}

/// SCHED_IDLE or SCHED_OTHER for the calling thread.
fn set_class(idle: bool) {
    if let Err(e) = crate::sys::process::set_sched_idle(idle) {
        log::debug!("cannot set a ring thread's scheduling class: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);
    /// Looks at a 2-CPU machine: nobody else, or two busy threads besides us.
    const FREE: fn() -> Option<usize> = || Some(1);
    const FULL: fn() -> Option<usize> = || Some(3);
    /// The thread's CPU was never idle during a normal-priority spell.
    const CPU_BUSY: fn() -> Option<f64> = || Some(0.0);

    #[test]
    fn schedstat_line_gives_wait_and_runs() {
        assert_eq!(parse_schedstat(b"123456 7890 42\n"), Some((7890, 42)));
        assert_eq!(parse_schedstat(b"garbage"), None);
    }

    #[test]
    fn short_waits_keep_idle_class() {
        let mut a = Adaptive::new(2);
        let t = Instant::now();
        assert_eq!(a.step(t, 1000, US * 5000, FULL, CPU_BUSY), Step::Stay);
        // A few wake-ups with short waits say nothing.
        assert_eq!(a.step(t, 3, US * 30, FULL, CPU_BUSY), Step::Stay);
        assert!(a.idle());
    }

    #[test]
    fn a_few_long_waits_are_starvation() {
        let mut a = Adaptive::new(2);
        assert_eq!(
            a.step(Instant::now(), 1, 300 * MS, FREE, CPU_BUSY),
            Step::ToNormal
        );
        assert!(!a.idle());
    }

    #[test]
    fn starvation_gives_normal_priority_then_a_try_with_growing_holds() {
        let mut a = Adaptive::new(2);
        let t0 = Instant::now();
        // 100 us per wake-up: starved.
        let starved = |n: u64| US * 100 * n as u32;
        assert_eq!(
            a.step(t0, 500, starved(500), FREE, CPU_BUSY),
            Step::ToNormal
        );
        assert_eq!(
            a.step(t0 + MS, 500, Duration::ZERO, FREE, CPU_BUSY),
            Step::Stay
        );
        let t1 = t0 + FIRST_HOLD;
        assert_eq!(
            a.step(t1, 500, Duration::ZERO, FREE, CPU_BUSY),
            Step::ToIdle
        );
        // The try finds the thread starved again: the next hold is twice as long.
        assert_eq!(
            a.step(t1 + MS, 500, starved(500), FREE, CPU_BUSY),
            Step::ToNormal
        );
        let early = t1 + FIRST_HOLD + MS;
        assert_eq!(
            a.step(early, 500, Duration::ZERO, FREE, CPU_BUSY),
            Step::Stay
        );
        let t2 = t1 + MS + FIRST_HOLD * 2;
        assert_eq!(
            a.step(t2, 500, Duration::ZERO, FREE, CPU_BUSY),
            Step::ToIdle
        );
        // This try finds room: idle-class stays, and the hold starts over.
        assert_eq!(
            a.step(t2 + MS, 500, Duration::ZERO, FULL, CPU_BUSY),
            Step::Stay
        );
        assert_eq!(a.hold, FIRST_HOLD);
        assert!(a.idle());
    }

    /// A thread starved into normal priority, whose first look of the spell finds the
    /// CPUs full; and when the spell began.
    fn starved_then_full() -> (Adaptive, Instant) {
        let mut a = Adaptive::new(2);
        let t0 = Instant::now();
        assert_eq!(a.step(t0, 1, 300 * MS, FREE, CPU_BUSY), Step::ToNormal);
        assert_eq!(
            a.step(t0 + MS, 500, Duration::ZERO, FULL, CPU_BUSY),
            Step::Stay
        );
        (a, t0)
    }

    #[test]
    fn no_try_while_others_fill_every_cpu_at_each_look() {
        let (mut a, t0) = starved_then_full();
        let t1 = t0 + FIRST_HOLD;
        assert_eq!(a.step(t1, 500, Duration::ZERO, FULL, CPU_BUSY), Step::Stay);
        assert!(!a.idle());
        // One look with a CPU to spare during the next spell (two runnable: us and
        // the caller) is enough for a try at its end.
        assert_eq!(
            a.step(t1 + MS, 500, Duration::ZERO, || Some(2), CPU_BUSY),
            Step::Stay
        );
        let t2 = t1 + FIRST_HOLD;
        assert_eq!(
            a.step(t2, 500, Duration::ZERO, FULL, CPU_BUSY),
            Step::ToIdle
        );
    }

    #[test]
    fn a_try_when_the_count_says_full_but_our_cpu_had_room() {
        let (mut a, t0) = starved_then_full();
        // One thread busy on the other CPU and another runnable at each look: the count
        // says full, but this thread's CPU was idle a tenth of the spell.
        let t1 = t0 + FIRST_HOLD;
        assert_eq!(
            a.step(t1, 500, Duration::ZERO, FULL, || Some(0.1)),
            Step::ToIdle
        );
        // Not knowing the CPU's idle time leaves the count to decide.
        assert_eq!(a.step(t1 + MS, 1, 300 * MS, FREE, CPU_BUSY), Step::ToNormal);
        let t2 = t1 + MS + a.hold;
        assert_eq!(
            a.step(t2 - MS, 500, Duration::ZERO, FULL, CPU_BUSY),
            Step::Stay
        );
        assert_eq!(a.step(t2, 500, Duration::ZERO, FULL, || None), Step::Stay);
        assert!(!a.idle());
    }

    #[test]
    fn proc_stat_cpu_lines_give_idle_and_all_ticks() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 1 20 300 40 5 6 7 0 0\n\
                    cpu1 1 0 1 50 0 0 0 0 0 0\nintr 1 2 3\n";
        assert_eq!(cpu_ticks(stat, 0), Some((340, 389)));
        assert_eq!(cpu_ticks(stat, 1), Some((50, 52)));
        assert_eq!(cpu_ticks(stat, 2), None);
    }

    #[test]
    fn holds_stop_growing_at_the_maximum() {
        let mut a = Adaptive::new(2);
        let mut t = Instant::now();
        let starved = US * 100 * 100;
        for _ in 0..10 {
            assert_eq!(a.step(t, 100, starved, FREE, CPU_BUSY), Step::ToNormal);
            t += a.hold;
            assert_eq!(a.step(t, 100, Duration::ZERO, FREE, CPU_BUSY), Step::ToIdle);
        }
        assert_eq!(a.hold, MAX_HOLD);
    }
}
