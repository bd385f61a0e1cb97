//! One FUSE request answered: the dispatch from opcode to overlay call, and the reply
//! written in the wire format, for both transports (our /dev/fuse loop in `fuse_dev` and
//! the io_uring threads in `fuse_uring`). Each transport hands over the request's header,
//! the opcode's fixed argument struct and its variable part (names, data); they differ only
//! in where those arrive and how the reply goes back.

use crate::fuse::{Adapter, FREE_FOR_READS_UP_TO, PASSTHROUGH_FLAGS};
use crate::fuse_wire::{fattr, op, Fields, InHeader, Out, Payload};
use crate::ovl::inode::{SetAttr, TimeSet};
use crate::ovl::{Ctx, Errno, Node};
use crate::passthrough::Backing;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

/// Who may use a mount without allow_other (the rule of fuser's own request loop, kept):
/// requests from other users fail, but for those the kernel may send on a file already
/// open.
fn allowed(fs: &Adapter, req: &InHeader) -> bool {
    use fuser::SessionACL;
    let owner = fs.owner;
    let exempt = matches!(
        req.opcode,
        op::DESTROY
            | op::READ
            | op::READDIR
            | op::READDIRPLUS
            | op::WRITE
            | op::FSYNC
            | op::FSYNCDIR
            | op::RELEASE
            | op::RELEASEDIR
    );
    match fs.acl {
        SessionACL::All => true,
        SessionACL::RootAndOwner => exempt || req.uid == owner || req.uid == 0,
        SessionACL::Owner => exempt || req.uid == owner,
    }
}

const EINVAL: Errno = Errno(libc::EINVAL);

/// `answer`, as the transports send it back: (0 or a negative errno, the body's length).
/// A panic is answered with EIO and logged: the caller, and on io_uring the ring entry,
/// would otherwise wait for the reply for ever.
pub fn answer_caught(
    fs: &Adapter,
    req: &InHeader,
    op_in: &[u8],
    p: &mut [u8],
    in_len: usize,
    let_go: Option<&mut dyn FnMut()>,
) -> (i32, usize) {
    let _serving = crate::ovl::interrupt::Serving::new(req.unique, req.pid);
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        answer(fs, req, op_in, p, in_len, let_go)
    }));
    let reply = match answered {
        Ok(Ok(len)) => (0, len),
        Ok(Err(e)) => (-e.0, 0),
        Err(_) => {
            log::error!("request {} (opcode {}) panicked", req.unique, req.opcode);
            (-libc::EIO, 0)
        }
    };
    // `-d` / `RUST_LOG=debug`: one line per request, as fuse-overlayfs -d gives.
    if log::log_enabled!(log::Level::Debug) {
        let outcome = match reply {
            (0, len) => format!("{len} bytes"),
            (e, _) => format!("{}", std::io::Error::from_raw_os_error(-e)),
        };
        log::debug!(
            "{} node {} (unique {}, pid {}): {outcome}",
            crate::fuse_wire::op_name(req.opcode),
            req.nodeid,
            req.unique,
            req.pid
        );
    }
    reply
}

/// Answers one request: `op_in` is the opcode's fixed argument struct, `p[..in_len]` the
/// request's variable part; the reply body goes into `p` (over the request); returns its
/// length. `let_go` lets the serving thread off its pinned CPU before a small READ, or an
/// OPEN handing a small file's data to the kernel, waits for a disk (see
/// `FREE_FOR_READS_UP_TO`).
fn answer(
    fs: &Adapter,
    req: &InHeader,
    op_in: &[u8],
    p: &mut [u8],
    in_len: usize,
    let_go: Option<&mut dyn FnMut()>,
) -> Result<usize, Errno> {
    if !allowed(fs, req) {
        return Err(Errno(libc::EACCES));
    }
    let a = Fields(op_in);
    let id = req.nodeid;
    let ctx = Ctx {
        uid: req.uid,
        gid: req.gid,
        pid: req.pid,
        umask: 0,
    };
    let with_umask = |umask| Ctx { umask, ..ctx };
    let mut args = Payload::new(&p[..in_len]);
    match req.opcode {
        op::LOOKUP => {
            let name = args.name().ok_or(EINVAL)?;
            match fs.ovl.lookup(id, name) {
                // A negative entry (node id 0) with a lifetime: the kernel remembers the name
                // is absent, so repeated probes (PATH and include-path searches) stay in the
                // kernel. Only the kernel itself creates names we show, and it updates its
                // own cache when it does.
                Err(Errno::ENOENT) => {
                    let mut out = Out::new(p);
                    out.entry(0, fs.ttl, Duration::ZERO, &Default::default());
                    Ok(out.len)
                }
                r => entry_reply(fs, p, r),
            }
        }
        op::GETATTR => {
            let fh = (a.u32(0) & crate::fuse_wire::GETATTR_FH != 0).then(|| a.u64(8));
            let attr = fs.ovl.getattr(id, fh)?;
            attr_reply(p, fs.attr_ttl(id), &attr)
        }
        // Sent instead of GETATTR only when the caller asks for the birth time (coreutils'
        // stat does; so does Rust's metadata()), once per inode while its attributes stay
        // cached. Without btime=1 it gets ENOSYS below, and the kernel stops asking.
        op::STATX if fs.ovl.cfg.btime => {
            let fh = (a.u32(0) & crate::fuse_wire::GETATTR_FH != 0).then(|| a.u64(8));
            let attr = fs.ovl.getattr(id, fh)?;
            // Without it the reply still holds every other attribute.
            let birth = fs.ovl.birth_time(id, fh).unwrap_or(None);
            let mut out = Out::new(p);
            out.statx_out(fs.attr_ttl(id), &attr, birth);
            Ok(out.len)
        }
        op::SETATTR => {
            let valid = a.u32(0);
            let has = |b: u32| valid & b != 0;
            let time = |set: u32, now: u32, sec: usize, nsec: usize| {
                has(set).then(|| {
                    if has(now) {
                        TimeSet::Now
                    } else {
                        TimeSet::At(a.time(sec, nsec))
                    }
                })
            };
            let set = SetAttr {
                mode: has(fattr::MODE).then(|| a.u32(68)),
                uid: has(fattr::UID).then(|| a.u32(76)),
                gid: has(fattr::GID).then(|| a.u32(80)),
                size: has(fattr::SIZE).then(|| a.u64(16)),
                atime: time(fattr::ATIME, fattr::ATIME_NOW, 32, 56),
                mtime: time(fattr::MTIME, fattr::MTIME_NOW, 40, 60),
                ctime: has(fattr::CTIME).then(|| a.time(48, 64)),
                fh: has(fattr::FH).then(|| a.u64(8)),
            };
            let attr = fs.ovl.setattr(&ctx, id, &set)?;
            // A size change may land between another process's open(O_TRUNC) and the
            // kernel's setting its own size to 0 after it (the kernel's FUSE client does
            // that without a request, atomic O_TRUNC); attributes kept from this reply
            // would then show size 0 for the whole timeout. Without a lifetime the next
            // stat asks. (With the writeback cache atomic O_TRUNC is off, see `init`, and
            // the kernel keeps sizes itself.)
            let ttl = if set.size.is_some() && !fs.ovl.writes_cached() {
                Duration::ZERO
            } else {
                fs.attr_ttl(id)
            };
            attr_reply(p, ttl, &attr)
        }
        op::READLINK => {
            let t = fs.ovl.readlink(id)?;
            data_reply(p, &t)
        }
        op::SYMLINK => {
            let name = args.name().ok_or(EINVAL)?;
            let target = args.name().ok_or(EINVAL)?;
            let r = fs.ovl.symlink(&ctx, id, name, target);
            entry_reply(fs, p, r)
        }
        op::MKNOD => {
            let name = args.name().ok_or(EINVAL)?;
            let r = fs
                .ovl
                .mknod(&with_umask(a.u32(8)), id, name, a.u32(0), a.u32(4) as u64);
            entry_reply(fs, p, r)
        }
        op::MKDIR => {
            let name = args.name().ok_or(EINVAL)?;
            let r = fs.ovl.mkdir(&with_umask(a.u32(4)), id, name, a.u32(0));
            entry_reply(fs, p, r)
        }
        op::UNLINK => fs.ovl.unlink(id, args.name().ok_or(EINVAL)?).map(|()| 0),
        op::RMDIR => fs.ovl.rmdir(id, args.name().ok_or(EINVAL)?).map(|()| 0),
        op::RENAME | op::RENAME2 => {
            let flags = if req.opcode == op::RENAME2 {
                a.u32(8)
            } else {
                0
            };
            let old = args.name().ok_or(EINVAL)?;
            let new = args.name().ok_or(EINVAL)?;
            fs.ovl.rename(id, old, a.u64(0), new, flags).map(|()| 0)
        }
        op::LINK => {
            let name = args.name().ok_or(EINVAL)?;
            let r = fs.ovl.link(&ctx, a.u64(0), id, name);
            entry_reply(fs, p, r)
        }
        op::OPEN => {
            let fh = fs.ovl.open(&ctx, id, a.i32(0))?;
            let mut out = Out::new(p);
            let backing = fs.backing(fh, id, None);
            fs.prefill(fh, id, backing.is_none(), let_go);
            open_out(fs, &mut out, fh, backing);
            Ok(out.len)
        }
        op::CREATE => {
            let name = args.name().ok_or(EINVAL)?;
            let made = fs
                .ovl
                .create(&with_umask(a.u32(8)), id, name, a.u32(4), a.i32(0))?;
            created_reply(fs, p, made)
        }
        op::TMPFILE => {
            let made = fs
                .ovl
                .tmpfile(&with_umask(a.u32(8)), id, a.u32(4), a.i32(0))?;
            created_reply(fs, p, made)
        }
        op::READ => {
            let size = (a.u32(16) as usize).min(p.len());
            let before_wait = let_go.filter(|_| size <= FREE_FOR_READS_UP_TO);
            fs.ovl
                .read_into(a.u64(0), a.u64(8), &mut p[..size], before_wait)
        }
        op::WRITE => {
            let data = args.bytes(a.u32(16) as usize).ok_or(EINVAL)?;
            // fuse_write_in.write_flags: FUSE_WRITE_CACHE marks the kernel's write-back.
            let write_back = a.u32(20) & 1 != 0;
            let n = fs.ovl.write(&ctx, a.u64(0), a.u64(8), data, write_back)?;
            let mut out = Out::new(p);
            out.u32_out(n);
            Ok(out.len)
        }
        op::STATFS => {
            let s = fs.ovl.statfs()?;
            let mut out = Out::new(p);
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                out.u64(v);
            }
            for v in [s.bsize, s.namelen, s.frsize] {
                out.u32(v);
            }
            out.zeros(4 + 6 * 4);
            Ok(out.len)
        }
        op::RELEASE => {
            let fh = a.u64(0);
            fs.pt.release(fh);
            fs.ovl.release(fh);
            Ok(0)
        }
        op::FLUSH | op::RELEASEDIR | op::DESTROY => Ok(0),
        op::FSYNC => fs
            .ovl
            .fsync(a.u64(0), a.u32(8) & crate::fuse_wire::FSYNC_FDATASYNC != 0)
            .map(|()| 0),
        op::FSYNCDIR => fs
            .ovl
            .fsyncdir(id, a.u32(8) & crate::fuse_wire::FSYNC_FDATASYNC != 0)
            .map(|()| 0),
        // ENOSYS, not the EOPNOTSUPP the overlay answers: the kernel then answers every
        // later call of that kind with EOPNOTSUPP itself, and the security.capability
        // reads of each first write and each chown no longer make a round trip.
        op::SETXATTR | op::GETXATTR | op::LISTXATTR | op::REMOVEXATTR
            if fs.ovl.xattrs_refused() =>
        {
            Err(Errno(libc::ENOSYS))
        }
        op::SETXATTR => {
            let name = args.name().ok_or(EINVAL)?;
            let value = args.bytes(a.u32(0) as usize).ok_or(EINVAL)?;
            fs.ovl.setxattr(&ctx, id, name, value, a.i32(4)).map(|()| 0)
        }
        op::GETXATTR => {
            let v = fs.ovl.getxattr(id, args.name().ok_or(EINVAL)?)?;
            xattr_reply(p, a.u32(0), &v)
        }
        op::LISTXATTR => {
            let v = fs.ovl.listxattr(id)?;
            xattr_reply(p, a.u32(0), &v)
        }
        op::REMOVEXATTR => fs
            .ovl
            .removexattr(id, args.name().ok_or(EINVAL)?)
            .map(|()| 0),
        op::ACCESS => fs.ovl.access(id, a.i32(0)).map(|()| 0),
        op::OPENDIR => {
            let flags = fs.opendir_flags(id)?;
            let mut out = Out::new(p);
            out.open(0, flags.bits(), 0);
            Ok(out.len)
        }
        op::READDIR => {
            let size = (a.u32(16) as usize).min(p.len());
            let list = fs.ovl.read_dir(id, a.u64(8))?;
            let mut out = Out::new(&mut p[..size]);
            for (next, e) in list {
                if !out.dirent(e.ino, next, e.kind, &e.name) {
                    break;
                }
            }
            Ok(out.len)
        }
        op::READDIRPLUS => {
            let size = (a.u32(16) as usize).min(p.len());
            let mut out = Out::new(&mut p[..size]);
            fs.fill_dir_plus(id, a.u64(8), size, |node, next, name: &OsStr, ttl, attr| {
                !out.direntplus(node, next, name, ttl, attr)
            })?;
            Ok(out.len)
        }
        op::FALLOCATE => fs
            .ovl
            .fallocate(&ctx, a.u64(0), a.u64(8), a.u64(16), a.i32(24))
            .map(|()| 0),
        op::LSEEK => {
            let off = fs.ovl.lseek(a.u64(0), a.i64(8), a.i32(16))?;
            let mut out = Out::new(p);
            out.u64(off as u64);
            Ok(out.len)
        }
        op::COPY_FILE_RANGE => {
            let n = fs.ovl.copy_file_range(
                &ctx,
                a.u64(0),
                a.u64(8),
                a.u64(24),
                a.u64(32),
                a.u64(40),
            )?;
            let mut out = Out::new(p);
            out.u32_out(n);
            Ok(out.len)
        }
        op::IOCTL => {
            let (cmd, in_size, out_size) = (a.u32(12), a.u32(24), a.u32(28) as usize);
            let data = if cmd == crate::ovl::SYNC_UPPER_IOCTL {
                fs.ovl.sync_upper()?;
                Vec::new()
            } else {
                let input = args.bytes(in_size as usize).unwrap_or_default();
                fs.ovl.attr_ioctl(id, cmd, input, out_size)?
            };
            let mut out = Out::new(p);
            out.zeros(16); // fuse_ioctl_out: result 0, no retry
            out.put(&data[..data.len().min(out_size)]);
            Ok(out.len)
        }
        // The kernel then does without (POSIX locks, polls, bmap) or fails the call
        // with EOPNOTSUPP, and stops asking.
        _ => Err(Errno(libc::ENOSYS)),
    }
}

fn attr_reply(p: &mut [u8], ttl: Duration, attr: &crate::ovl::Attr) -> Result<usize, Errno> {
    let mut out = Out::new(p);
    out.attr_out(ttl, attr);
    Ok(out.len)
}

fn entry_reply(
    fs: &Adapter,
    p: &mut [u8],
    r: Result<(Arc<Node>, crate::ovl::Attr), Errno>,
) -> Result<usize, Errno> {
    let (n, attr) = r?;
    let mut out = Out::new(p);
    out.entry(n.id, fs.ttl, fs.attr_ttl(n.id), &attr);
    Ok(out.len)
}

/// CREATE's and TMPFILE's reply: the new entry and its open file.
fn created_reply(
    fs: &Adapter,
    p: &mut [u8],
    (n, attr, fh): (Arc<Node>, crate::ovl::Attr, u64),
) -> Result<usize, Errno> {
    let backing = fs.backing(fh, n.id, Some(attr.mode));
    // Only the wait of an open of a file whose data another open is handing over: a made
    // file is upper, whose data never goes over.
    fs.prefill(fh, n.id, false, None);
    // One lifetime for entry and attributes: the attributes'.
    let ttl = fs.attr_ttl(n.id);
    let mut out = Out::new(p);
    out.entry(n.id, ttl, ttl, &attr);
    open_out(fs, &mut out, fh, backing);
    Ok(out.len)
}

fn data_reply(p: &mut [u8], d: &[u8]) -> Result<usize, Errno> {
    let mut out = Out::new(p);
    out.put(d);
    if !out.fits {
        return Err(Errno(libc::ERANGE));
    }
    Ok(out.len)
}

/// A size probe (`size` 0: the value's length), ERANGE, or the value.
fn xattr_reply(p: &mut [u8], size: u32, v: &[u8]) -> Result<usize, Errno> {
    if size == 0 {
        let mut out = Out::new(p);
        out.u32_out(v.len() as u32);
        Ok(out.len)
    } else if v.len() > size as usize {
        Err(Errno(libc::ERANGE))
    } else {
        data_reply(p, v)
    }
}

/// `fuse_open_out` for a new open file: passthrough when the adapter gave a backing file.
fn open_out(fs: &Adapter, out: &mut Out<'_>, fh: u64, backing: Option<Arc<Backing>>) {
    match backing {
        Some(b) => out.open(
            fh,
            (PASSTHROUGH_FLAGS | fuser::FopenFlags::FOPEN_PASSTHROUGH).bits(),
            b.id(),
        ),
        None => out.open(fh, fs.open_flags(fh).bits(), 0),
    }
}
