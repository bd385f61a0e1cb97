//! The FUSE wire format, for both transports (`fuse_dev`, `fuse_uring`): reading a
//! request's arguments and writing replies, as `include/uapi/linux/fuse.h` lays them out.
//! fuser has a codec too, but a private one, which cannot send a READDIRPLUS line without
//! attributes nor an entry whose node id differs from its st_ino, and is not told how big
//! a READDIRPLUS reply may be.
//!
//! All fields are native-endian, as the kernel writes them.

use crate::ovl::inode::Time;
use crate::ovl::Attr;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// Declares each opcode once: its constant in `op`, and its name for `op_name`.
macro_rules! opcodes {
    ($(#[$doc:meta])* $($name:ident = $value:expr),* $(,)?) => {
        $(#[$doc])*
        pub mod op {
            $(pub const $name: u32 = $value;)*
        }

        /// The name of an opcode, for the request log.
        pub fn op_name(opcode: u32) -> &'static str {
            match opcode {
                $(op::$name => stringify!($name),)*
                _ => "(unknown opcode)",
            }
        }
    };
}

opcodes! {
    /// Request opcodes we serve or must recognise (the kernel sends FORGET, BATCH_FORGET and
    /// INTERRUPT through /dev/fuse even when io_uring carries the rest).
    LOOKUP = 1,
    FORGET = 2,
    GETATTR = 3,
    SETATTR = 4,
    READLINK = 5,
    SYMLINK = 6,
    MKNOD = 8,
    MKDIR = 9,
    UNLINK = 10,
    RMDIR = 11,
    RENAME = 12,
    LINK = 13,
    OPEN = 14,
    READ = 15,
    WRITE = 16,
    STATFS = 17,
    RELEASE = 18,
    FSYNC = 20,
    SETXATTR = 21,
    GETXATTR = 22,
    LISTXATTR = 23,
    REMOVEXATTR = 24,
    FLUSH = 25,
    OPENDIR = 27,
    READDIR = 28,
    RELEASEDIR = 29,
    FSYNCDIR = 30,
    ACCESS = 34,
    CREATE = 35,
    INTERRUPT = 36,
    DESTROY = 38,
    IOCTL = 39,
    NOTIFY_REPLY = 41,
    BATCH_FORGET = 42,
    FALLOCATE = 43,
    READDIRPLUS = 44,
    RENAME2 = 45,
    LSEEK = 46,
    COPY_FILE_RANGE = 47,
    TMPFILE = 51,
    STATX = 52,
}

/// `fuse_setattr_in.valid` bits.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const CTIME: u32 = 1 << 10;
}

/// `fuse_getattr_in.getattr_flags`: the `fh` field is set.
pub const GETATTR_FH: u32 = 1;
/// `fuse_fsync_in.fsync_flags`: fdatasync.
pub const FSYNC_FDATASYNC: u32 = 1;

/// `struct fuse_in_header` (40 bytes).
#[derive(Clone, Copy, Debug, Default)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

impl InHeader {
    pub fn parse(b: &[u8]) -> InHeader {
        let f = Fields(b);
        InHeader {
            opcode: f.u32(4),
            unique: f.u64(8),
            nodeid: f.u64(16),
            uid: f.u32(24),
            gid: f.u32(28),
            pid: f.u32(32),
        }
    }
}

/// `struct fuse_out_header` of a reply with a body of `body_len` bytes; `error` is 0 or a
/// negative errno.
pub fn out_header(body_len: usize, error: i32, unique: u64) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&((OUT_HEADER_LEN + body_len) as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// Over /dev/fuse a request's arguments follow its header one after another: the opcode's
/// fixed argument struct (io_uring hands that one over in a buffer of its own), then names
/// and data. This is that struct's length, for the opcodes with more after it; the others
/// have nothing else (`usize::MAX`: all of it). The lengths are those of protocol 7.12 and
/// later, which the kernel sends us (fuser answers INIT with 7.40), and of
/// `fuse_setxattr_in` without FUSE_SETXATTR_EXT, which we do not ask for.
pub fn fixed_arg_len(opcode: u32) -> usize {
    match opcode {
        op::LOOKUP | op::SYMLINK | op::UNLINK | op::RMDIR | op::REMOVEXATTR => 0,
        op::MKDIR | op::RENAME | op::LINK | op::SETXATTR | op::GETXATTR | op::BATCH_FORGET => 8,
        op::MKNOD | op::RENAME2 | op::CREATE | op::TMPFILE => 16,
        op::IOCTL => 32,
        op::WRITE => 40,
        _ => usize::MAX,
    }
}

/// Fixed-layout fields of an argument struct, read by byte offset. A short buffer reads
/// as zeros rather than panicking: the kernel never sends one, but a bug must not crash
/// the daemon.
#[derive(Clone, Copy)]
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        self.0
            .get(off..off + N)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; N])
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.bytes(off))
    }
    pub fn i32(&self, off: usize) -> i32 {
        i32::from_ne_bytes(self.bytes(off))
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_ne_bytes(self.bytes(off))
    }
    pub fn i64(&self, off: usize) -> i64 {
        i64::from_ne_bytes(self.bytes(off))
    }
    pub fn time(&self, sec_off: usize, nsec_off: usize) -> Time {
        Time {
            sec: self.i64(sec_off),
            nsec: self.u32(nsec_off),
        }
    }
}

/// The variable part of a request: NUL-terminated names, then data.
pub struct Payload<'a> {
    rest: &'a [u8],
}

impl<'a> Payload<'a> {
    pub fn new(b: &'a [u8]) -> Payload<'a> {
        Payload { rest: b }
    }

    /// The next NUL-terminated string (EINVAL-worthy if there is none).
    pub fn name(&mut self) -> Option<&'a OsStr> {
        let end = self.rest.iter().position(|&c| c == 0)?;
        let (s, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        Some(OsStr::from_bytes(s))
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (s, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(s)
    }
}

/// A reply body being written into the ring entry's payload buffer. Writes past its end
/// are refused (`fits` turns false) instead of panicking.
pub struct Out<'a> {
    buf: &'a mut [u8],
    pub len: usize,
    pub fits: bool,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out {
            buf,
            len: 0,
            fits: true,
        }
    }

    pub fn put(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(d) => {
                d.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.fits = false,
        }
    }
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_ne_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.put(&v.to_ne_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_ne_bytes());
    }
    pub fn zeros(&mut self, n: usize) {
        const Z: [u8; 8] = [0; 8];
        let mut n = n;
        while n > 0 {
            let k = n.min(8);
            self.put(&Z[..k]);
            n -= k;
        }
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// The unwritten rest of the buffer, for data read straight into it.
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// A u32 and its padding: `struct fuse_write_out`, `struct fuse_getxattr_out`.
    pub fn u32_out(&mut self, v: u32) {
        self.u32(v);
        self.u32(0);
    }

    /// `struct fuse_attr` (88 bytes).
    pub fn attr(&mut self, a: &Attr) {
        self.u64(a.ino);
        self.u64(a.size);
        self.u64(a.blocks);
        self.u64(a.atime.sec as u64);
        self.u64(a.mtime.sec as u64);
        self.u64(a.ctime.sec as u64);
        self.u32(a.atime.nsec);
        self.u32(a.mtime.nsec);
        self.u32(a.ctime.nsec);
        self.u32(a.mode);
        self.u32(a.nlink);
        self.u32(a.uid);
        self.u32(a.gid);
        self.u32(a.rdev);
        self.u32(a.blksize);
        self.u32(0);
    }

    /// `struct fuse_entry_out` (128 bytes).
    pub fn entry(&mut self, nodeid: u64, entry_ttl: Duration, attr_ttl: Duration, a: &Attr) {
        self.u64(nodeid);
        self.u64(0); // generation
        self.u64(entry_ttl.as_secs());
        self.u64(attr_ttl.as_secs());
        self.u32(entry_ttl.subsec_nanos());
        self.u32(attr_ttl.subsec_nanos());
        self.attr(a);
    }

    /// `struct fuse_attr_out` (104 bytes).
    pub fn attr_out(&mut self, ttl: Duration, a: &Attr) {
        self.u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos());
        self.u32(0);
        self.attr(a);
    }

    /// `struct fuse_statx_out` (288 bytes): the attributes, and the birth time where
    /// there is one. The kernel's FUSE client takes nothing else from it.
    pub fn statx_out(&mut self, ttl: Duration, a: &Attr, birth: Option<Time>) {
        const BASIC_STATS: u32 = 0x7ff;
        const BTIME: u32 = 0x800;
        self.u64(ttl.as_secs());
        self.u32(ttl.subsec_nanos());
        self.u32(0); // flags
        self.zeros(16); // spare
        self.u32(BASIC_STATS | if birth.is_some() { BTIME } else { 0 });
        self.u32(a.blksize);
        self.u64(0); // attributes
        self.u32(a.nlink);
        self.u32(a.uid);
        self.u32(a.gid);
        self.put(&(a.mode as u16).to_ne_bytes());
        self.zeros(2);
        self.u64(a.ino);
        self.u64(a.size);
        self.u64(a.blocks);
        self.u64(0); // attributes_mask
        for t in [a.atime, birth.unwrap_or_default(), a.ctime, a.mtime] {
            self.u64(t.sec as u64);
            self.u32(t.nsec);
            self.u32(0);
        }
        // rdev as the kernel encodes it in `fuse_attr` (new_encode_dev)
        self.u32((a.rdev >> 8) & 0xfff);
        self.u32((a.rdev & 0xff) | ((a.rdev >> 12) & 0xfff00));
        self.zeros(8 + 14 * 8); // dev (unused by the kernel) and spare
    }

    /// `struct fuse_open_out` (16 bytes).
    pub fn open(&mut self, fh: u64, flags: u32, backing_id: u32) {
        self.u64(fh);
        self.u32(flags);
        self.u32(backing_id);
    }

    /// A `struct fuse_dirent` line, padded to 8 bytes; false (and nothing written) when
    /// it does not fit.
    pub fn dirent(&mut self, ino: u64, next: u64, kind: u32, name: &OsStr) -> bool {
        let name = name.as_bytes();
        let len = dirent_len(name.len());
        if len > self.room() {
            return false;
        }
        self.u64(ino);
        self.u64(next);
        self.u32(name.len() as u32);
        self.u32((kind & libc::S_IFMT) >> 12);
        self.put(name);
        self.zeros(len - 24 - name.len());
        true
    }

    /// A `struct fuse_direntplus` line; false (and nothing written) when it does not fit.
    pub fn direntplus(
        &mut self,
        id: u64,
        next: u64,
        name: &OsStr,
        ttl: Duration,
        a: &Attr,
    ) -> bool {
        if direntplus_len(name.len()) > self.room() {
            return false;
        }
        self.entry(id, ttl, ttl, a);
        self.dirent(a.ino, next, a.mode, name)
    }
}

/// Bytes of a READDIRPLUS line (entry and dirent) for a name of `namelen` bytes.
pub fn direntplus_len(namelen: usize) -> usize {
    128 + dirent_len(namelen)
}

fn dirent_len(namelen: usize) -> usize {
    (24 + namelen + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_padded_and_refused_when_full() {
        let mut buf = [0u8; 64];
        let mut o = Out::new(&mut buf);
        assert!(o.dirent(7, 9, libc::S_IFDIR, OsStr::new("abc")));
        assert_eq!(o.len, 32);
        assert!(!o.dirent(8, 10, libc::S_IFREG, OsStr::new("a-longer-name-here")));
        assert_eq!(o.len, 32, "a line that does not fit leaves nothing behind");
        let f = Fields(&buf);
        assert_eq!((f.u64(0), f.u64(8), f.u32(16), f.u32(20)), (7, 9, 3, 4));
        assert_eq!(&buf[24..27], b"abc");
    }

    #[test]
    fn names_and_data_are_split_at_nul() {
        let mut p = Payload::new(b"old\0new\0rest");
        assert_eq!(p.name(), Some(OsStr::new("old")));
        assert_eq!(p.name(), Some(OsStr::new("new")));
        assert_eq!(p.name(), None, "no terminator: no name");
        assert_eq!(p.bytes(4), Some(&b"rest"[..]));
        assert_eq!(p.bytes(1), None);
    }

    #[test]
    fn short_argument_structs_read_as_zero() {
        let f = Fields(&[1, 0, 0, 0]);
        assert_eq!(f.u32(0), 1);
        assert_eq!(f.u64(0), 0);
    }
}
