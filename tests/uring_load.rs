//! The io_uring threads' scheduling class under CPU load (`uring_idle=`), on real mounts.
//!
//! A test binary of its own because it keeps every CPU busy for seconds: cargo runs test
//! binaries one at a time, so no other mount test runs beside it. It asserts what the
//! daemon does (the threads' scheduling policy), not how fast it is.

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

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

/// Makes requests (a getxattr of a missing name is one each) until `done` says so or
/// `limit` passes; returns whether `done` did.
fn requests_until(f: &Path, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        for _ in 0..20 {
            expect_errno(lgetxattr(f, "user.absent"), libc::ENODATA, "getxattr");
        }
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
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

/// By default the ring threads are idle-class; once busy threads of the daemon's own
/// scheduling group fill every CPU, the threads serving requests move to normal priority
/// (an idle-class thread would wait behind the busy ones at every request: 6-12 ms per
/// lookup, measured); once the CPUs are free again, they go back to idle-class.
#[test]
fn ring_threads_leave_idle_class_while_the_cpus_are_full_and_come_back_after() {
    if !fuse_uring_available() {
        return;
    }
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
    let busy = BusyCpus::start();
    let moved = requests_until(&f, Duration::from_secs(20), || {
        ring_thread_policies(pid).contains(&SCHED_OTHER)
    });
    let during = ring_thread_policies(pid);
    drop(busy);
    assert!(
        moved,
        "with every CPU busy, no ring thread left idle-class in 20 s: {during:?}"
    );
    // Back to idle-class after the normal-priority spell (2 s, longer when a try found
    // the CPUs still full). A thread looks again when it serves a request, so each
    // normal-priority thread that serves requests from now on must come back. (One that
    // serves none keeps its class, and costs nothing while it waits.)
    let mark = ring_threads(pid);
    let back = requests_until(&f, Duration::from_secs(40), || {
        let now = ring_threads(pid);
        let moved_and_serving: Vec<_> = now
            .iter()
            .filter(|(tid, _, sw)| {
                mark.iter()
                    .any(|(t, p, s0)| t == tid && *p == SCHED_OTHER && sw > s0)
            })
            .collect();
        !moved_and_serving.is_empty() && moved_and_serving.iter().all(|(_, p, _)| *p == SCHED_IDLE)
    });
    let after = ring_threads(pid);
    assert!(
        back,
        "40 s after the CPUs were freed, the normal-priority ring threads that serve \
         requests are not idle-class again: (tid, policy, switches) {mark:?} then {after:?}"
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
