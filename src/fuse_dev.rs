//! FUSE over /dev/fuse: our own request loop, one thread per CPU, each reading its own
//! clone of the session's descriptor.
//!
//! fuser mounts and answers INIT (`daemon::serve`); from then on these threads read the
//! requests, answer them with `fuse_ops` as the io_uring threads do, and write the replies
//! back on the descriptor they came from (a clone has its own queue of requests being
//! answered); a READ of more than 64 KiB goes back by splice, its data never passing
//! through our memory (`fuse_splice`). Once io_uring carries the requests (`fuse_uring`),
//! the kernel still sends FORGET, BATCH_FORGET and INTERRUPT here.
//!
//! Why not fuser's loop: its codec sends each entry's st_ino as the node id and every
//! READDIRPLUS line with attributes, and it does not pass on the size the kernel asked
//! for; so over /dev/fuse a cold listing of a big directory stat-ed every entry (the 1M
//! entry `ls -f` took 15.6 times the kernel overlay's time, against 1.6 times over
//! io_uring), and a node whose id is not its st_ino had to go out with no attribute
//! lifetime. One codec for both transports also leaves one dispatch to keep right.

use crate::fuse::{Adapter, ReadSize};
use crate::fuse_splice::{ReplyPipe, Spliced};
use crate::fuse_wire::{op, Fields, InHeader, IN_HEADER_LEN};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A request's largest size: its header and fixed arguments, and a WRITE's data of up to
/// max_write; the same buffer takes the reply, a READ's data of up to max_pages pages.
const BUF_LEN: usize = crate::fuse::MAX_WRITE as usize + 8192;

/// How long a thread lets FORGETs pile up once io_uring serves the requests (see
/// `pause_before_forgets`). 0.5 to 20 ms measured the same; each pause delays only the
/// release of forgotten nodes.
const FORGET_PAUSE: Duration = Duration::from_millis(2);

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
const DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// Serves the session's requests on `threads` threads until the kernel ends the
/// connection (unmount, abort) or sends DESTROY.
pub fn serve(fs: Arc<Adapter>, session: BorrowedFd<'_>, threads: usize) -> io::Result<()> {
    fs.follow.start();
    let mut serving = Vec::new();
    for i in 0..threads.max(1) {
        let dev = if i == 0 {
            session.try_clone_to_owned()?
        } else {
            clone_device(session).or_else(|e| {
                // Plain users may not open /dev/fuse themselves (fusermount3 opened it):
                // share the one descriptor, as threads of fuser's loop without clone_fd do.
                log::debug!("cannot clone the /dev/fuse descriptor ({e}); sharing it");
                session.try_clone_to_owned()
            })?
        };
        let fs = fs.clone();
        let t = std::thread::Builder::new()
            .name(format!("ovl-dev-{i}"))
            .spawn(move || serve_device(&fs, &dev))?;
        serving.push(t);
    }
    let mut result = Ok(());
    for t in serving {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a /dev/fuse thread panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// A new /dev/fuse descriptor attached to the session of `session`, with its own queue of
/// requests being answered.
fn clone_device(session: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: a plain open(2) of a constant path; the descriptor is owned below.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is ours alone.
    let dev = unsafe { OwnedFd::from_raw_fd(fd) };
    let source = session.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the session's descriptor) from the pointer.
    if unsafe { libc::ioctl(dev.as_raw_fd(), DEV_IOC_CLONE, &source) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dev)
}

/// One thread's loop: read a request, answer it, write the reply.
fn serve_device(fs: &Adapter, dev: &OwnedFd) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_LEN];
    // Made at the first big READ: once io_uring serves the reads, none come here.
    let mut pipe: Option<Option<ReplyPipe>> = None;
    loop {
        // SAFETY: reads into the buffer, within its length.
        let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => continue,
                // Unmounted or aborted.
                Some(libc::ENODEV) => return Ok(()),
                _ => return Err(e),
            }
        }
        let n = n as usize;
        if n < IN_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a request of {n} bytes from /dev/fuse"),
            ));
        }
        let req = InHeader::parse(&buf[..IN_HEADER_LEN]);
        let args = &mut buf[IN_HEADER_LEN..];
        let args_len = n - IN_HEADER_LEN;
        let read = crate::fuse::read_size(req.opcode, &args[..args_len]);
        match req.opcode {
            op::FORGET => {
                pause_before_forgets(fs);
                fs.ovl.forget(req.nodeid, Fields(args).u64(0));
                continue;
            }
            op::BATCH_FORGET => {
                pause_before_forgets(fs);
                let count = Fields(args).u32(0) as usize;
                let forgets = args[8.min(args_len)..args_len].chunks_exact(16).take(count);
                for f in forgets {
                    fs.ovl.forget(Fields(f).u64(0), Fields(f).u64(8));
                }
                continue;
            }
            // No reply is wanted. A copy-up of the interrupted request gives up if its
            // caller is being killed (`ovl::interrupt`); anything else is answered as soon
            // as it can be anyway.
            op::INTERRUPT => {
                fs.ovl.interrupts.interrupted(Fields(args).u64(0));
                continue;
            }
            op::NOTIFY_REPLY => continue,
            // Closing a file waits for nobody.
            op::RELEASE | op::RELEASEDIR => {}
            _ => fs.follow.serving(req.pid, read),
        }
        let fixed = crate::fuse_wire::fixed_arg_len(req.opcode).min(args_len);
        if read == ReadSize::Big {
            match spliced_read(fs, &mut pipe, dev, &req, &args[..fixed]) {
                Spliced::NotSent => {}
                Spliced::Sent => continue,
                Spliced::Refused(e) => {
                    if session_ended(req.unique, &io::Error::from_raw_os_error(e)) {
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        let (op_in, p) = args.split_at_mut(fixed);
        let in_len = args_len - fixed;
        let follow = &fs.follow;
        let mut waited = false;
        let mut let_go = || {
            waited = true;
            follow.free()
        };
        let let_go: Option<&mut dyn FnMut()> = follow.following().then_some(&mut let_go);
        let (error, out_len) = crate::fuse_ops::answer_caught(fs, &req, op_in, p, in_len, let_go);
        if read == ReadSize::Small && !waited {
            follow.settle();
        }
        if let Err(e) = reply(dev, req.unique, error, &p[..out_len]) {
            if session_ended(req.unique, &e) {
                return Ok(());
            }
        }
        if req.opcode == op::DESTROY {
            return Ok(());
        }
    }
}

/// After a reply to request `unique` failed with `e`: whether the session has ended
/// (ENODEV), which ends the thread's loop. ENOENT: the caller was interrupted and has
/// gone; anything else is logged.
fn session_ended(unique: u64, e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(libc::ENODEV) => true,
        Some(libc::ENOENT) => false,
        _ => {
            log::warn!("reply to request {unique} failed: {e}");
            false
        }
    }
}

/// Answers the big READ `req` (fixed arguments `op_in`, `fuse_read_in`) through the
/// thread's pipe where it can go that way (see `fuse_splice`); the pipe is made for the
/// first one (`None`: not yet; `Some(None)`: none could be had).
fn spliced_read(
    fs: &Adapter,
    pipe: &mut Option<Option<ReplyPipe>>,
    dev: &OwnedFd,
    req: &InHeader,
    op_in: &[u8],
) -> Spliced {
    let a = Fields(op_in);
    let size = a.u32(16) as usize;
    let offset = a.u64(8);
    let made = pipe.get_or_insert_with(ReplyPipe::for_reads);
    let Some(pipe) = made.as_mut() else {
        return Spliced::NotSent;
    };
    if !pipe.fits(offset, size) {
        return Spliced::NotSent;
    }
    // A handle that is not there, or cannot be read, gets its error the usual way.
    let Ok(file) = fs.ovl.read_source(a.u64(0)) else {
        return Spliced::NotSent;
    };
    pipe.send_read(dev.as_fd(), req.unique, file.as_fd(), offset, size)
}

/// Writes the reply to request `unique`: an errno (negative) or the body.
fn reply(dev: &OwnedFd, unique: u64, error: i32, body: &[u8]) -> io::Result<()> {
    let mut head = crate::fuse_wire::out_header(body.len(), error, unique);
    let iov = [
        libc::iovec {
            iov_base: head.as_mut_ptr().cast(),
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        },
    ];
    // SAFETY: both buffers outlive the call; the kernel only reads them.
    let n = unsafe { libc::writev(dev.as_raw_fd(), iov.as_ptr(), 2) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Before the nodes of a FORGET or BATCH_FORGET are let go, once io_uring carries the
/// other requests: waits a moment.
///
/// Why: then each FORGET the kernel queues wakes a /dev/fuse thread sleeping in read(2),
/// and the caller whose unlink evicted the inode pays for that cross-CPU wake-up (here a
/// VM exit). A thread that pauses is not waiting, so the kernel only queues the FORGETs,
/// and the thread's next read takes all of them as one BATCH_FORGET: rm -rf of 10k lower
/// files went from 0.35-0.41 s to 0.27-0.29 s, with 30% fewer context switches. Only then:
/// before the rings serve (or without them) a pausing thread would hold up real requests.
fn pause_before_forgets(fs: &Adapter) {
    if fs.ring_live.load(Ordering::Relaxed) {
        std::thread::sleep(FORGET_PAUSE);
    }
}
