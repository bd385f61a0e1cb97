//! FUSE over io_uring (Linux 6.14+): the second transport, beside our /dev/fuse loop.
//!
//! Why: on /dev/fuse a request wakes whichever daemon thread waits, usually on the other
//! CPU, and that cross-CPU wake-up is most of a round trip's cost here. Over io_uring the
//! kernel keeps one queue per CPU and hands a request to the queue of the CPU it was made
//! on; our threads for that queue are pinned to that CPU and idle-class, so the caller and
//! the daemon take turns on one CPU (`serve` says why idle-class).
//!
//! How: after FUSE_INIT (whose reply asked for FUSE_OVER_IO_URING), each thread registers
//! one ring entry (a header buffer and a payload buffer) with FUSE_IO_URING_CMD_REGISTER.
//! Once every queue has an entry, the kernel sends requests there instead of /dev/fuse (all
//! but FORGET and INTERRUPT, which the /dev/fuse threads keep serving). A thread answers a request by
//! writing the reply into the same buffers and sending COMMIT_AND_FETCH, which also waits
//! for its next request. Each thread owns one entry, so a slow request (a big copy-up)
//! holds up only that thread.
//!
//! The requests are answered by `fuse_ops`, as on /dev/fuse (`fuse_dev`).

use crate::fuse::{Adapter, ReadSize};
use crate::fuse_wire::{Fields, InHeader};
use crate::sys::process::CpuSet;
use crate::uring_priority::{Governor, Policy};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Whether to serve over io_uring (`-o uring=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UringMode {
    /// Never.
    Off,
    /// When the kernel offers it (its `enable_uring` parameter is set).
    #[default]
    Auto,
    /// As Auto, with a warning when the kernel does not offer it.
    On,
}

/// Whether to serve over io_uring, and how the ring threads are scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringConfig {
    pub mode: UringMode,
    pub priority: Policy,
}

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_req_header`: the in/out header (128 bytes), the opcode's first
/// argument (128 bytes), then `struct fuse_uring_ent_in_out`.
const HEADER_LEN: usize = 288;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;

/// Threads per queue: one serves every request while requests come one at a time (the
/// kernel hands a request to the entry committed last); the second keeps the CPU's
/// requests moving while the first waits on a slow one.
const THREADS_PER_QUEUE: usize = 2;

/// One ring entry, set up before INIT's reply asks for io_uring: once it has, requests
/// wait until every queue has an entry, so nothing may fail after that but the
/// registration itself (whose failure makes the kernel fall back to /dev/fuse).
pub struct Entry {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    header: Mapping,
    payload: Mapping,
}

// SAFETY: the mappings are owned by the entry and used by one thread at a time.
unsafe impl Send for Entry {}

/// Sets up `THREADS_PER_QUEUE` entries for each queue; `max_write` sizes the payload
/// buffers, which the kernel refuses when smaller than its largest request or reply.
pub fn prepare(max_write: usize) -> std::io::Result<Vec<Entry>> {
    // The kernel's own limit: FUSE_MIN_READ_BUFFER, max_write, max_pages pages.
    let payload = max_write.max(8192).max(256 * page_size());
    let mut entries = Vec::new();
    for q in 0..possible_cpus() {
        for _ in 0..THREADS_PER_QUEUE {
            entries.push(Entry {
                qid: q as u16,
                ring: IoUring::builder().build(2)?,
                header: Mapping::new(page_size())?,
                payload: Mapping::new(payload)?,
            });
        }
    }
    Ok(entries)
}

/// Starts one thread per entry. Called from INIT, before its reply; the threads register
/// once the kernel has taken the reply.
pub fn start(fs: Arc<Adapter>, dev: Arc<OwnedFd>, entries: Vec<Entry>, priority: Policy) {
    log::info!(
        "serving FUSE over io_uring: {} queues x {THREADS_PER_QUEUE} threads",
        entries.len() / THREADS_PER_QUEUE
    );
    for (i, e) in entries.into_iter().enumerate() {
        let fs = fs.clone();
        let dev = dev.clone();
        let q = e.qid;
        let spawned = std::thread::Builder::new()
            .name(format!("ring{q}.{}", i % THREADS_PER_QUEUE))
            .spawn(move || {
                if let Err(err) = serve(&fs, &dev, e, priority) {
                    log::warn!("io_uring queue {q}: {err}");
                }
            });
        if let Err(err) = spawned {
            log::error!("cannot start io_uring thread for queue {q}: {err}");
        }
    }
}

/// The kernel makes one queue per possible CPU, and uses the ring only once each has an
/// entry.
fn possible_cpus() -> usize {
    let from_sys = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit([',', '-']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        });
    // SAFETY: sysconf has no memory effects.
    from_sys.unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

fn page_size() -> usize {
    // SAFETY: as above.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// Anonymous memory shared with the kernel: it writes requests into it and reads replies
/// from it while our command is outstanding, so Rust references into it live only while
/// no command is.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // The first page takes every request's header or start of payload: touched now, it
        // costs the first request after mount no page fault (in the kernel's copy to it).
        // SAFETY: inside the fresh mapping, which no one else uses yet.
        unsafe { ptr.cast::<u8>().write_volatile(0) };
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// SAFETY: no command using this mapping may be outstanding while the slice lives.
    unsafe fn slice(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Where a ring thread runs: on its queue's CPU, except for big reads (read-ahead) and
/// after a small read (up to `FREE_FOR_READS_UP_TO`) that waited for a disk, until it
/// serves a request that is no read, or a small read that does not wait.
///
/// Big reads: the caller goes on copying the pages it has while we fill the next ones,
/// so the two copies should run on two CPUs. Pinned, the idle-class thread ran only when
/// the caller waited. 1 GiB lower file read through a fresh mount from the host's cache,
/// 7 interleaved rounds with memory touched first (the VM's first touch of fresh pages
/// otherwise swung each run by up to 2 s), medians: 0.62 s pinned, 0.49 s moved to the
/// other CPU, 0.42 s let run anywhere (kernel overlay 0.16 s); over /dev/fuse 0.54 and
/// 0.40 s. Cold from the disk: 0.89 s pinned, 0.78 s let run anywhere.
///
/// Why the exception: a disk's interrupts may all arrive on one CPU (the benchmark VM's
/// virtio disk sends every one to CPU 1). A thread pinned to the other CPU, sleeping on
/// the disk, is then woken there by an inter-processor interrupt, which costs a VM dear.
/// Let run anywhere first, the thread wakes where the interrupt came, and returns home
/// when its next request arrives. 20000 random 4 KiB reads of a cold lower file (7 rounds,
/// interleaved): 2.24 s pinned throughout, 1.93 s so, kernel overlay 1.79 s; re-pinning
/// before the reply instead measured 2.14 s, never pinning 2.06 s.
///
/// A small read does not bring it home unless it is served without waiting: in a run of
/// reads that wait for the disk, each would let it go again, and the trip home is a
/// migration, started from the CPU it is woken on. On the AMD host, the same reads (10
/// interleaved rounds in two orders of the tools, medians): 1.42 s going home at every
/// request, 1.17 s so, fuse-overlayfs 1.12 s. Reads the page cache serves are answered
/// faster from home (20000 such reads after some that waited: 0.26 s going home, 0.41 s
/// staying away).
struct Placement {
    cpu: usize,
    /// The CPUs the thread was allowed before it was pinned.
    allowed: Option<CpuSet>,
    away: bool,
}

impl Placement {
    fn pin(cpu: usize) -> Placement {
        let allowed = crate::sys::process::thread_cpus().ok();
        let mut p = Placement {
            cpu,
            allowed,
            away: true,
        };
        p.home();
        p
    }

    /// Before serving a request: home for one that is no read, free for a big read; a
    /// small read leaves the thread where it is.
    fn before(&mut self, read: ReadSize) {
        match read {
            ReadSize::Small => {}
            ReadSize::Big => self.free(),
            ReadSize::NotRead => self.home(),
        }
    }

    /// Before a wait for a disk: the thread may be woken on any CPU it was allowed.
    fn free(&mut self) {
        if self.away {
            return;
        }
        if let Some(set) = &self.allowed {
            self.away |= crate::sys::process::set_thread_cpus(set).is_ok();
        }
    }

    fn home(&mut self) {
        if !std::mem::take(&mut self.away) {
            return;
        }
        let Some(set) = crate::sys::process::one_cpu(self.cpu) else {
            return;
        };
        if let Err(e) = crate::sys::process::set_thread_cpus(&set) {
            // An offline CPU: its queue gets no requests while it stays offline.
            log::debug!("cannot pin to CPU {}: {e:?}", self.cpu);
        }
    }
}

/// The SQE for a FUSE ring command: `struct fuse_uring_cmd_req` in the command area, and
/// for REGISTER the two buffers as an iovec array.
fn command(
    dev: RawFd,
    cmd: u32,
    qid: u16,
    commit_id: u64,
    iov: &[libc::iovec; 2],
) -> squeue::Entry128 {
    let mut req = [0u8; 80];
    req[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    req[16..18].copy_from_slice(&qid.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(dev), cmd)
        .cmd(req)
        .addr(Some(iov.as_ptr() as u64))
        .build();
    // The builder has no `len`; the kernel wants 2 (iovec count) for REGISTER. It sits
    // at byte 24 of `struct io_uring_sqe`.
    // SAFETY: Entry128 is a repr(C) 128-byte SQE; any byte pattern is a valid value.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Serves one ring entry until the connection ends.
///
/// The thread is pinned to its queue's CPU (but see `Placement`) and starts idle-class
/// (SCHED_IDLE, see `uring_priority`). The caller whose request it serves sleeps on the
/// same CPU; when the reply wakes it, the scheduler looks for an idle CPU to run it on. A
/// CPU running only idle-class work counts as idle, so the caller stays where it was (and
/// preempts us, who are about to wait anyway). With normal priority, the caller moved to the
/// other, really idle CPU at nearly every reply, and its next request went to that CPU's
/// queue: two wake-ups of idle CPUs per round trip, the cost the ring was meant to save.
/// Measured on the 2-core VM (Python stat loop, 20000 lookups): 12-15 us per lookup
/// idle-class, 53-61 us with normal priority, 44-62 us on /dev/fuse.
fn serve(fs: &Adapter, dev: &OwnedFd, entry: Entry, priority: Policy) -> std::io::Result<()> {
    let Entry {
        qid,
        mut ring,
        mut header,
        mut payload,
    } = entry;
    let mut place = Placement::pin(qid as usize);
    let mut class = Governor::start(priority);
    let iov = [
        libc::iovec {
            iov_base: header.ptr.cast(),
            iov_len: HEADER_LEN,
        },
        libc::iovec {
            iov_base: payload.ptr.cast(),
            iov_len: payload.len,
        },
    ];
    let mut cmd = CMD_REGISTER;
    let mut commit_id = 0;
    // Registration waits for the kernel to take INIT's reply (EAGAIN until then).
    let mut not_ready = 0;
    loop {
        let sqe = command(dev.as_raw_fd(), cmd, qid, commit_id, &iov);
        // SAFETY: `iov` and the buffers outlive the command: this loop waits for its
        // completion before touching them, and returns only after one.
        unsafe { ring.submission().push(&sqe) }
            .map_err(|_| std::io::Error::other("submission queue full"))?;
        let res = loop {
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            if let Some(c) = ring.completion().next() {
                break c.result();
            }
        };
        match -res {
            0 => {}
            // The kernel holds requests back until all queues register, so keep trying.
            libc::EAGAIN if cmd == CMD_REGISTER => {
                not_ready += 1;
                std::thread::sleep(Duration::from_millis(not_ready.min(20)));
                continue;
            }
            libc::EINTR => continue,
            // Unmounted or aborted.
            libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV => return Ok(()),
            e => return Err(std::io::Error::from_raw_os_error(e)),
        }
        // SAFETY: the command completed; none is outstanding until the next push.
        let (h, p) = unsafe { (header.slice(), payload.slice()) };
        let req = InHeader::parse(&h[..crate::fuse_wire::IN_HEADER_LEN]);
        let mut op_in = [0u8; OP_IN];
        op_in.copy_from_slice(&h[OP_IN..2 * OP_IN]);
        let read = crate::fuse::read_size(req.opcode, &op_in);
        place.before(read);
        let f = Fields(h);
        if !fs.ring_live.load(Ordering::Relaxed) {
            fs.ring_live.store(true, Ordering::Relaxed);
        }
        commit_id = f.u64(ENT_COMMIT_ID);
        let in_len = (f.u32(ENT_PAYLOAD_SZ) as usize).min(p.len());
        let mut waited = false;
        let mut let_go = || {
            waited = true;
            place.free()
        };
        let (error, out_len) =
            crate::fuse_ops::answer_caught(fs, &req, &op_in, p, in_len, Some(&mut let_go));
        if read == ReadSize::Small && !waited {
            // Served from the page cache: the reads to come may be too.
            place.home();
        }
        h[..crate::fuse_wire::OUT_HEADER_LEN]
            .copy_from_slice(&crate::fuse_wire::out_header(out_len, error, req.unique));
        h[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&(out_len as u32).to_ne_bytes());
        cmd = CMD_COMMIT_AND_FETCH;
        class.served();
    }
}

#[cfg(test)]
mod tests {
    use super::Placement;
    use crate::fuse::ReadSize;
    use crate::sys::process::thread_cpu_list as our_cpus;

    #[test]
    fn a_ring_thread_let_go_for_a_disk_wait_goes_home_once() {
        // A thread of our own, so the test runner's threads keep their CPUs.
        std::thread::spawn(|| {
            let before = our_cpus();
            let cpu = *before.last().unwrap();
            let mut p = Placement::pin(cpu);
            assert_eq!(our_cpus(), vec![cpu]);
            p.home();
            assert_eq!(our_cpus(), vec![cpu], "home while home: unchanged");
            p.free();
            assert_eq!(our_cpus(), before, "free: every CPU it had before pinning");
            assert!(p.away);
            p.home();
            assert_eq!(our_cpus(), vec![cpu], "back on its queue's CPU");
            assert!(!p.away);
        })
        .join()
        .expect("the pinning thread");
    }

    #[test]
    fn big_reads_let_a_ring_thread_go_and_a_request_that_is_no_read_brings_it_home() {
        std::thread::spawn(|| {
            let before = our_cpus();
            let cpu = *before.last().unwrap();
            let mut p = Placement::pin(cpu);
            p.before(ReadSize::Big);
            assert_eq!(our_cpus(), before, "a big read: every CPU it had");
            p.before(ReadSize::Small);
            assert_eq!(our_cpus(), before, "a small read leaves it there");
            p.before(ReadSize::Big);
            p.before(ReadSize::NotRead);
            assert_eq!(our_cpus(), vec![cpu], "home for a request that is no read");
            p.before(ReadSize::Small);
            assert_eq!(our_cpus(), vec![cpu], "and a small read leaves it home");
        })
        .join()
        .expect("the pinning thread");
    }
}
