//! Where the serving threads run, on real mounts: the io_uring threads' scheduling class
//! under CPU load (`uring_idle=`), and the CPU of the /dev/fuse threads (`follow_caller=`).
//!
//! A test binary of its own because it keeps every CPU busy for seconds: cargo runs test
//! binaries one at a time, so no other mount test runs beside it; and its tests take
//! turns (`machine_to_myself`), since each reads how the scheduler treats the daemon and
//! the others' busy threads would change that. It asserts what the daemon does (the
//! threads' scheduling policy and CPUs), not how fast it is.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// Held by each test while it runs. The harness runs a binary's tests on parallel threads;
/// here the callers one test keeps spinning on every CPU fill the CPUs another test needs
/// free (CI once saw a ring thread kept at normal priority for 40 s that way).
fn machine_to_myself() -> std::sync::MutexGuard<'static, ()> {
    static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads runnable system-wide right now (the 4th field of /proc/loadavg), for messages.
fn runnable_now() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().nth(3).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// One busy thread pinned to each CPU until dropped.
struct BusyCpus {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyCpus {
    fn start() -> BusyCpus {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        BusyCpus { stop, threads }
    }
}

impl Drop for BusyCpus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes requests (a getxattr of a missing name is one each), 20 at a time with a pause
/// of 20 ms between, until `done` says so or `limit` passes (one round at least);
/// returns whether `done` did.
fn requests_until(f: &Path, limit: Duration, done: impl FnMut() -> bool) -> bool {
    requests_paced(f, limit, Duration::from_millis(20), done)
}

/// `requests_until` with another pause.
fn requests_paced(
    f: &Path,
    limit: Duration,
    pause: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let end = Instant::now() + limit;
    loop {
        for _ in 0..20 {
            expect_errno(lgetxattr(f, "user.absent"), libc::ENODATA, "getxattr");
        }
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(pause);
    }
}

/// `ovlfuse -f` from this process: the daemon stays in the test's session, and so in its
/// scheduling group (autogroup), where the busy threads below compete with it. (A
/// backgrounded daemon starts a session of its own; idle-class threads then yield only
/// to the other threads of its group.)
fn mount_in_our_group(st: &Stack, opts: &str) -> (MountGuard, std::process::Child) {
    let mut child = std::process::Command::new(ovlfuse_bin())
        .args(["-f", "-o", &format!("{},{opts}", st.full_opts())])
        .arg(&st.mnt)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn ovlfuse -f");
    match wait_for_foreground_mount(&mut child, &st.mnt) {
        Started::Mounted => (MountGuard::adopt_fuse_pid(&st.mnt, Some(child.id())), child),
        Started::Exited(status) => panic!("ovlfuse -f exited ({status:?}) before mounting"),
        Started::TimedOut => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ovlfuse -f did not mount within 10 s");
        }
    }
}

/// The share of half a second each CPU spent idle, by CPU number.
fn cpu_idle_shares() -> std::collections::BTreeMap<usize, f64> {
    let ticks = || -> std::collections::BTreeMap<usize, (u64, u64)> {
        let stat = ok(fs::read_to_string("/proc/stat"), "/proc/stat");
        stat.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let cpu = f.next()?.strip_prefix("cpu")?.parse().ok()?;
                let t: Vec<u64> = f.map(|f| f.parse().unwrap_or(0)).collect();
                Some((cpu, (t[3] + t[4], t.iter().take(8).sum())))
            })
            .collect()
    };
    let a = ticks();
    std::thread::sleep(Duration::from_millis(500));
    ticks()
        .into_iter()
        .filter_map(|(cpu, (i1, a1))| {
            let (i0, a0) = a.get(&cpu)?;
            Some((cpu, (i1 - i0) as f64 / (a1 - a0).max(1) as f64))
        })
        .collect()
}

/// By default the ring threads are idle-class; once busy threads of the daemon's own
/// scheduling group fill every CPU, the threads serving requests move to normal priority
/// (an idle-class thread would wait behind the busy ones at every request: 6-12 ms per
/// lookup, measured); once the CPUs are free again, they go back to idle-class.
///
/// After the busy spell the caller takes turns on the CPUs of the threads that moved (a
/// ring thread serves the requests made on its CPU, and looks at its class when it
/// serves one). Only those on CPUs that were mostly idle before the test must come
/// back: a program of someone else's busy on a CPU rightly keeps that CPU's thread at
/// normal priority.
#[test]
fn ring_threads_leave_idle_class_while_the_cpus_are_full_and_come_back_after() {
    if !fuse_uring_available() {
        return;
    }
    let _turn = machine_to_myself();
    let idle_before = cpu_idle_shares();
    let sc = Scratch::new("uring-load");
    let st = Stack::new(&sc, 1);
    ok(fs::write(st.lowers[0].join("f"), b"x"), "lower file");
    let (g, mut child) = mount_in_our_group(&st, "uring=on");
    let pid = child.id();
    let f = st.mnt.join("f");
    ok(fs::metadata(&f), "stat");
    let before = ring_thread_policies(pid);
    assert!(
        !before.is_empty() && before.iter().all(|&p| p == SCHED_IDLE),
        "ring threads at start: {before:?}"
    );
    // CPUs that were mostly idle before the test. With another program busy on one, the
    // thread of that CPU moves first and rightly stays moved; the requests are then made
    // from a quiet CPU, whose thread must move too (and come back below).
    let quiet: Vec<usize> = idle_before
        .iter()
        .filter(|(_, &share)| share > 0.5)
        .map(|(&cpu, _)| cpu)
        .collect();
    if quiet.is_empty() {
        eprintln!(
            "NOT CHECKED: whether ring threads come back to idle-class: no CPU was mostly \
             idle before the test (idle shares {idle_before:?})"
        );
    }
    let busy = BusyCpus::start();
    let (f2, quiet2) = (f.clone(), quiet.clone());
    let moved = std::thread::spawn(move || {
        if let Some(&cpu) = quiet2.first() {
            pin_me(cpu);
        }
        requests_until(&f2, Duration::from_secs(20), || {
            daemon_threads(pid, "ring").iter().any(|t| {
                t.policy == SCHED_OTHER
                    && (quiet2.is_empty() || t.cpus.first().is_some_and(|c| quiet2.contains(c)))
            })
        })
    })
    .join()
    .expect("the caller during the busy spell");
    let during = daemon_threads(pid, "ring");
    drop(busy);
    assert!(
        moved,
        "with every CPU busy, no ring thread (of CPUs {quiet:?}, those mostly idle before, \
         if any) left idle-class in 20 s: {:?}",
        ring_thread_policies(pid)
    );
    if quiet.is_empty() {
        g.unmount();
        let _ = wait_child(&mut child, Duration::from_secs(10));
        return;
    }
    // (tid, CPU) of the threads that moved, on CPUs nothing else kept busy before.
    let moved: Vec<(u32, usize)> = during
        .iter()
        .filter(|t| t.policy == SCHED_OTHER)
        .filter_map(|t| Some((t.tid, *t.cpus.first()?)))
        .filter(|(_, cpu)| idle_before.get(cpu).is_some_and(|&s| s > 0.5))
        .collect();
    assert!(
        !moved.is_empty(),
        "the ring threads that moved to normal priority are all on CPUs that were busy \
         before the test (idle shares by CPU {idle_before:?}): (tid, policy, CPUs) {:?}",
        during
            .iter()
            .map(|t| (t.tid, t.policy, &t.cpus))
            .collect::<Vec<_>>()
    );
    let (f2, moved2) = (f.clone(), moved.clone());
    let (back, runnable) = std::thread::spawn(move || {
        let mut runnable = std::collections::VecDeque::new();
        let end = Instant::now() + Duration::from_secs(40);
        while Instant::now() < end {
            for (_, cpu) in &moved2 {
                pin_me(*cpu);
                if runnable.len() == 12 {
                    runnable.pop_front();
                }
                runnable.push_back(runnable_now());
                let all_back = requests_paced(&f2, Duration::ZERO, Duration::ZERO, || {
                    let now = daemon_threads(pid, "ring");
                    moved2
                        .iter()
                        .all(|(tid, _)| now.iter().any(|t| t.tid == *tid && t.policy == SCHED_IDLE))
                });
                if all_back {
                    return (true, runnable);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (false, runnable)
    })
    .join()
    .expect("the caller on the moved threads' CPUs");
    assert!(
        back,
        "40 s after the CPUs were freed, the ring threads that moved to normal priority \
         (tid, CPU) {moved:?} are not all idle-class again, after requests on their CPUs: \
         (tid, policy, switches) {:?}; threads runnable system-wide at the last looks: \
         {runnable:?}",
        ring_threads(pid)
    );
    assert_eq!(ok(fs::read(&f), "read"), b"x");
    g.unmount();
    let _ = wait_child(&mut child, Duration::from_secs(10));
}

/// `uring_idle=0` keeps the ring threads at normal priority from the start.
#[test]
fn uring_idle_0_gives_normal_priority() {
    if !fuse_uring_available() {
        return;
    }
    let _turn = machine_to_myself();
    let sc = Scratch::new("uring-normal");
    let st = Stack::new(&sc, 1);
    ok(fs::write(st.lowers[0].join("f"), b"x"), "lower file");
    let g = mount_ovlfuse(&st, &["uring=on", "uring_idle=0"]);
    let pid = g.pid().expect("the daemon's pid");
    assert_eq!(ok(fs::read(st.mnt.join("f")), "read"), b"x");
    let p = ring_thread_policies(pid);
    assert!(
        !p.is_empty() && p.iter().all(|&p| p == SCHED_OTHER),
        "ring threads with uring_idle=0: {p:?}"
    );
    drop(g);
}

/// The CPUs each /dev/fuse thread (`ovl-dev-N`) of daemon `pid` may run on, and its
/// scheduling policy.
fn devfuse_threads(pid: u32) -> Vec<(Vec<usize>, u32)> {
    daemon_threads(pid, "ovl-dev-")
        .into_iter()
        .map(|t| (t.cpus, t.policy))
        .collect()
}

/// Waits (10 s at most) for daemon `pid` to start its /dev/fuse threads: the mount is
/// ready before they are all named, and a slow start (another program busy on a CPU)
/// showed none at the first look.
fn wait_for_devfuse_threads(pid: u32) {
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    loop {
        let n = devfuse_threads(pid).len();
        if n > 0 && n == last {
            return;
        }
        assert!(
            Instant::now() < end,
            "daemon {pid} started no /dev/fuse thread in 10 s"
        );
        last = n;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CPUs each /dev/fuse thread of daemon `pid` may run on.
fn devfuse_thread_cpus(pid: u32) -> Vec<Vec<usize>> {
    devfuse_threads(pid).into_iter().map(|(c, _)| c).collect()
}

/// Runs the calling thread on `cpu` only.
fn pin_me(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "pin the test thread to CPU {cpu}"
        );
    }
}

fn two_cpus() -> bool {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        eprintln!("SKIPPED: following the caller's CPU needs 2 CPUs; this machine has {n}");
    }
    n >= 2
}

/// Over /dev/fuse, the threads that serve a caller who keeps to one CPU move to that CPU,
/// and follow the caller to another.
#[test]
fn devfuse_threads_follow_a_caller_from_cpu_to_cpu() {
    if !fuse_available() || !two_cpus() {
        return;
    }
    let _turn = machine_to_myself();
    let sc = Scratch::new("follow");
    let st = Stack::new(&sc, 1);
    ok(fs::write(st.lowers[0].join("f"), b"x"), "lower file");
    // uring_idle=1: the other test of this binary fills every CPU for seconds, which may
    // make the default's watch move a pinned thread to normal priority meanwhile.
    let g = mount_ovlfuse(&st, &["uring=off", "uring_idle=1"]);
    let pid = g.pid().expect("the daemon's pid");
    let f = st.mnt.join("f");
    wait_for_devfuse_threads(pid);
    let home = devfuse_thread_cpus(pid);
    assert!(
        !home.is_empty() && home.iter().all(|c| c.len() >= 2),
        "/dev/fuse threads before any request: {home:?}"
    );
    let f2 = f.clone();
    std::thread::spawn(move || {
        for cpu in [1, 0] {
            pin_me(cpu);
            let all_there = || {
                let now = devfuse_thread_cpus(pid);
                !now.is_empty() && now.iter().all(|c| c == &[cpu])
            };
            assert!(
                requests_until(&f2, Duration::from_secs(10), all_there),
                "requests from CPU {cpu} for 10 s, and the /dev/fuse threads run on {:?}",
                devfuse_thread_cpus(pid)
            );
            // Scheduled as the io_uring threads (`uring_idle=`).
            let t = devfuse_threads(pid);
            assert!(
                t.iter().all(|(_, p)| *p == SCHED_IDLE),
                "pinned /dev/fuse threads (CPUs, policy): {t:?}"
            );
        }
    })
    .join()
    .expect("the caller on CPU 1, then CPU 0");
    assert_eq!(ok(fs::read(&f), "read"), b"x");
    drop(g);
}

/// When callers on two CPUs take turns, the /dev/fuse threads are not held to one of them;
/// and `follow_caller=0` leaves their CPUs alone.
#[test]
fn devfuse_threads_let_go_for_callers_on_two_cpus_and_stay_put_when_told() {
    if !fuse_available() || !two_cpus() {
        return;
    }
    let _turn = machine_to_myself();
    let sc = Scratch::new("follow-two");
    let st = Stack::new(&sc, 1);
    ok(fs::write(st.lowers[0].join("f"), b"x"), "lower file");
    let g = mount_ovlfuse(&st, &["uring=off"]);
    let pid = g.pid().expect("the daemon's pid");
    wait_for_devfuse_threads(pid);
    let f = st.mnt.join("f");
    let f1 = f.clone();
    // First pinned by a caller on CPU 1 alone...
    std::thread::spawn(move || {
        pin_me(1);
        let pinned = || devfuse_thread_cpus(pid).iter().any(|c| c == &[1]);
        assert!(
            requests_until(&f1, Duration::from_secs(10), pinned),
            "a caller on CPU 1 did not draw a /dev/fuse thread there: {:?}",
            devfuse_thread_cpus(pid)
        );
    })
    .join()
    .expect("the caller on CPU 1");
    // ...then callers on CPUs 0 and 1 in turn, one request each: the readings disagree.
    let stop = Arc::new(AtomicBool::new(false));
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let callers: Vec<_> = (0..2)
        .map(|cpu| {
            let (f, stop, turn) = (f.clone(), stop.clone(), turn.clone());
            std::thread::spawn(move || {
                pin_me(cpu);
                while !stop.load(Ordering::Relaxed) {
                    if turn.load(Ordering::Acquire) % 2 == cpu {
                        expect_errno(lgetxattr(&f, "user.absent"), libc::ENODATA, "getxattr");
                        std::thread::sleep(Duration::from_millis(1));
                        turn.fetch_add(1, Ordering::Release);
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(10);
    let mut freed = false;
    while Instant::now() < end && !freed {
        std::thread::sleep(Duration::from_millis(20));
        let t = devfuse_threads(pid);
        freed = t.iter().all(|(c, p)| c.len() >= 2 && *p == SCHED_OTHER);
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.join().expect("a caller");
    }
    assert!(
        freed,
        "callers on CPUs 0 and 1 in turn for 10 s, and a /dev/fuse thread stayed on one \
         CPU or idle-class: (CPUs, policy) {:?}",
        devfuse_threads(pid)
    );
    drop(g);

    let g = mount_ovlfuse(&st, &["uring=off", "follow_caller=0"]);
    let pid = g.pid().expect("the daemon's pid");
    wait_for_devfuse_threads(pid);
    std::thread::spawn(move || {
        pin_me(1);
        let moved = requests_until(&f, Duration::from_secs(1), || {
            devfuse_thread_cpus(pid).iter().any(|c| c.len() < 2)
        });
        assert!(
            !moved,
            "with follow_caller=0 a /dev/fuse thread was pinned: {:?}",
            devfuse_thread_cpus(pid)
        );
    })
    .join()
    .expect("the caller on CPU 1");
    drop(g);
}
