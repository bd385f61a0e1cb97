//! Overlay semantics on real mounts, compared with the kernel's overlayfs where natural.
//!
//! Most tests build identical layers twice ("twins"), mount kernel overlayfs on one copy and
//! ovlfuse on the other, run the same operations on both, and compare the results (values
//! and errno names), the merged views and the upper directories left behind.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{
    DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

mod copy_up;
mod corners;
mod deep_trees;
mod dirs;
mod errors;
mod file_ops;
mod inode_numbers;
mod layer_filesystems;
mod lookup;
mod names;
mod permissions;
mod prefill;
mod readdir;
mod rename;
mod times;
mod transport;
mod xattr;

// ---------------------------------------------------------------------------------------
// Twin stacks: kernel overlayfs vs ovlfuse
// ---------------------------------------------------------------------------------------

struct Twin {
    // Drop order matters: mounts go first, then the lower checks, then the directories.
    kg: Option<MountGuard>,
    fg: Option<MountGuard>,
    kcheck: LowerCheck,
    fcheck: LowerCheck,
    k: Stack,
    f: Stack,
    _ks: Scratch,
    _fs: Scratch,
}

fn twin(name: &str, lowers: &[&[E]], upper: &[E]) -> Twin {
    twin_with(name, lowers, upper, |_| {})
}

/// Like [`twin`], with `prep` run on each stack after building and before mounting.
fn twin_with(name: &str, lowers: &[&[E]], upper: &[E], prep: impl Fn(&Stack)) -> Twin {
    twin_with_opts(name, lowers, upper, &[], prep)
}

/// Like [`twin_with`], with mount options `opts` for ovlfuse.
fn twin_with_opts(
    name: &str,
    lowers: &[&[E]],
    upper: &[E],
    opts: &[&str],
    prep: impl Fn(&Stack),
) -> Twin {
    let ks = Scratch::new(&format!("{name}-kernel"));
    let fsc = Scratch::new(&format!("{name}-ovlfuse"));
    let n = lowers.len().max(1);
    let k = Stack::new(&ks, n);
    let f = Stack::new(&fsc, n);
    for st in [&k, &f] {
        for (i, l) in lowers.iter().enumerate() {
            build(&st.lowers[i], l);
        }
        build(&st.upper, upper);
        prep(st);
    }
    let kcheck = LowerCheck::new(&k.lowers);
    let fcheck = LowerCheck::new(&f.lowers);
    let kg = mount_kernel(&k);
    let fg = mount_ovlfuse(&f, opts);
    Twin {
        kg: Some(kg),
        fg: Some(fg),
        kcheck,
        fcheck,
        k,
        f,
        _ks: ks,
        _fs: fsc,
    }
}

impl Twin {
    fn km(&self) -> &Path {
        &self.k.mnt
    }
    fn fm(&self) -> &Path {
        &self.f.mnt
    }

    /// Runs `op` on the kernel mount, then on the ovlfuse mount, and asserts equal results.
    #[track_caller]
    fn both<R: fmt::Debug + PartialEq>(&self, what: &str, op: impl Fn(&Path) -> R) {
        self.both_ret(what, op);
    }

    /// [`Twin::both`] returning the (agreed) result.
    #[track_caller]
    fn both_ret<R: fmt::Debug + PartialEq>(&self, what: &str, op: impl Fn(&Path) -> R) -> R {
        let kr = op(self.km());
        let fr = op(self.fm());
        if kr != fr {
            panic!("{what}: ovlfuse and the kernel disagree\n  kernel : {kr:?}\n  ovlfuse: {fr:?}");
        }
        fr
    }

    #[track_caller]
    fn compare_views(&self, what: &str) {
        let kv = snapshot(self.km(), XattrSel::User);
        let fv = snapshot(self.fm(), XattrSel::User);
        assert_same_snapshots(
            &format!("merged view ({what})"),
            "kernel",
            &kv,
            "ovlfuse",
            &fv,
        );
    }

    #[track_caller]
    fn compare_uppers(&self, what: &str) {
        let ku = normalized_upper(&self.k.upper);
        let fu = normalized_upper(&self.f.upper);
        assert_same_snapshots(
            &format!("upper directory ({what})"),
            "kernel",
            &ku,
            "ovlfuse",
            &fu,
        );
    }

    /// Compares the merged views, unmounts both (asserting clean unmounts), compares the
    /// upper directories (when asked) and verifies the lower layers are untouched.
    #[track_caller]
    fn finish(self, compare_uppers: bool) {
        self.finish_with(compare_uppers, |_, _| {});
    }

    /// [`Twin::finish`], then `after(kernel stack, ovlfuse stack)` while both are unmounted
    /// but their directories still exist.
    #[track_caller]
    fn finish_with(self, compare_uppers: bool, after: impl FnOnce(&Stack, &Stack)) {
        self.compare_views("at the end");
        self.finish_apart(compare_uppers, after);
    }

    /// [`Twin::finish_with`] for views that differ on purpose (a documented difference):
    /// unmounts both without comparing the merged views.
    #[track_caller]
    fn finish_apart(mut self, compare_uppers: bool, after: impl FnOnce(&Stack, &Stack)) {
        self.fg.take().unwrap().unmount();
        self.kg.take().unwrap().unmount();
        if compare_uppers {
            self.compare_uppers("after unmount");
        }
        self.fcheck.verify();
        self.kcheck.verify();
        after(&self.k, &self.f);
    }
}

/// Snapshot of an upper directory reduced to what both implementations must agree on:
/// user.* xattrs and trusted.overlay.opaque; whiteouts reduced to "char 0/0".
fn normalized_upper(upper: &Path) -> BTreeMap<PathBuf, Node> {
    upper_snapshot(upper, |k| {
        k.starts_with("user.") || k == "trusted.overlay.opaque"
    })
}

fn is_whiteout(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_char_device() && m.rdev() == 0
        }
        Err(_) => false,
    }
}

fn stat_str(p: &Path) -> String {
    match fs::symlink_metadata(p) {
        // Directory size and link count are not part of overlay semantics.
        Ok(m) if m.is_dir() => format!("dir mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid()),
        Ok(m) => format!(
            "mode={:o} uid={} gid={} size={} nlink={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.len(),
            m.nlink()
        ),
        Err(e) => format!("<{}>", describe_err(&e)),
    }
}

fn open_fd(p: &Path, flags: i32, mode: u32) -> io::Result<fs::File> {
    let c = cpath(p);
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { <fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) })
}

fn lseek(f: &fs::File, off: i64, whence: i32) -> io::Result<i64> {
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i64)
    }
}

const OLD_MTIME: (i64, i64) = (1_000_000_000, 123_456_789);

// ---------------------------------------------------------------------------------------
// Helpers several modules use
// ---------------------------------------------------------------------------------------

/// Problems with readdir of `dir`: duplicates, missing . or .., wrong d_type, d_ino != st_ino.
/// Returns (problems, sorted (name, d_type) list without . and ..).
fn readdir_check(dir: &Path) -> (Vec<String>, Vec<(String, u8)>) {
    let mut problems = Vec::new();
    let ents = match read_dir_raw(dir) {
        Ok(e) => e,
        Err(e) => {
            return (
                vec![format!("opendir/readdir {dir:?}: {}", describe_err(&e))],
                vec![],
            )
        }
    };
    let mut seen = BTreeSet::new();
    let mut list = Vec::new();
    for e in &ents {
        let name = e.name.to_string_lossy().into_owned();
        if !seen.insert(name.clone()) {
            problems.push(format!("{name:?} returned more than once"));
            continue;
        }
        if name == ".." {
            continue;
        }
        let p = if name == "." {
            dir.to_path_buf()
        } else {
            dir.join(&name)
        };
        match fs::symlink_metadata(&p) {
            Err(err) => problems.push(format!(
                "{name:?} listed but lstat fails: {}",
                describe_err(&err)
            )),
            Ok(m) => {
                if e.d_type != dtype_of(&m) {
                    problems.push(format!(
                        "{name:?}: d_type {} but lstat says {}",
                        e.d_type,
                        dtype_of(&m)
                    ));
                }
                if e.ino != m.ino() {
                    problems.push(format!("{name:?}: d_ino {} != st_ino {}", e.ino, m.ino()));
                }
            }
        }
        if name != "." {
            list.push((name, e.d_type));
        }
    }
    for must in [".", ".."] {
        if !seen.contains(must) {
            problems.push(format!("{must:?} missing"));
        }
    }
    list.sort();
    (problems, list)
}

fn telldir_all(d: *mut libc::DIR) -> Vec<(String, libc::c_long)> {
    let mut v = Vec::new();
    loop {
        let pos = unsafe { libc::telldir(d) };
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir(d) };
        if e.is_null() {
            let err = io::Error::last_os_error();
            assert_eq!(
                err.raw_os_error().unwrap_or(0),
                0,
                "readdir failed: {}",
                describe_err(&err)
            );
            break;
        }
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        v.push((name, pos));
    }
    v
}

fn next_name(d: *mut libc::DIR) -> Option<String> {
    let e = unsafe { libc::readdir(d) };
    if e.is_null() {
        None
    } else {
        Some(
            unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// `big/` in the top lower layer, holding `n` empty files `entry-000000`, `entry-000001`, ...
fn lower_dir_of_empty_files(st: &Stack, n: usize) {
    let big = st.lowers[0].join("big");
    ok(fs::create_dir(&big), "mkdir big");
    for i in 0..n {
        ok(
            fs::File::create(big.join(format!("entry-{i:06}"))),
            "create a lower file",
        );
    }
}

/// statx of `p` with `flags`, asking for `mask`; asserts that it succeeds.
fn statx_of(p: &Path, flags: i32, mask: u32) -> libc::statx {
    let c = cpath(p);
    // SAFETY: statx fills the zeroed struct it is given; the path is a live C string.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, mask, &mut sx) };
    assert_eq!(
        r,
        0,
        "statx {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
    sx
}

fn sorted_xattrs(p: &Path) -> Result<Vec<String>, String> {
    llistxattr(p)
        .map(|mut v| {
            v.sort();
            v
        })
        .map_err(|e| describe_err(&e))
}

/// One system call for [`run_as`], with its arguments prepared before fork.
enum Op {
    Open(std::ffi::CString, i32),
    Mkdir(std::ffi::CString),
    Unlink(std::ffi::CString),
    Chmod(std::ffi::CString, u32),
    Access(std::ffi::CString, i32),
    Rename(std::ffi::CString, std::ffi::CString),
    UtimesNow(std::ffi::CString),
    Setxattr(std::ffi::CString),
    Umask(u32),
}

/// In a forked child: drops to `uid`/`gid` with supplementary `groups`, or exits 99.
unsafe fn become_or_exit(uid: u32, gid: u32, groups: &[libc::gid_t]) {
    let ok = libc::setgroups(groups.len(), groups.as_ptr()) == 0
        && libc::setresgid(gid, gid, gid) == 0
        && libc::setresuid(uid, uid, uid) == 0;
    if !ok {
        libc::_exit(99);
    }
}

/// Runs `ops` in a forked child with the given credentials; returns "ok" or the errno name
/// of each. The child only makes raw system calls (safe after fork in a threaded process).
fn run_as(uid: u32, gid: u32, ops: &[Op]) -> Vec<String> {
    run_as_in(uid, gid, &[], ops)
}

/// [`run_as`] with supplementary groups.
fn run_as_in(uid: u32, gid: u32, groups: &[libc::gid_t], ops: &[Op]) -> Vec<String> {
    let mut pipe = [0i32; 2];
    assert_eq!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    let xname = c"user.x";
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            become_or_exit(uid, gid, groups);
            for op in ops {
                *libc::__errno_location() = 0;
                let r: i32 = match op {
                    Op::Open(p, fl) => {
                        let fd = libc::open(p.as_ptr(), *fl | libc::O_CLOEXEC, 0o644);
                        if fd >= 0 {
                            libc::close(fd);
                            0
                        } else {
                            -1
                        }
                    }
                    Op::Mkdir(p) => libc::mkdir(p.as_ptr(), 0o755),
                    Op::Unlink(p) => libc::unlink(p.as_ptr()),
                    Op::Chmod(p, m) => libc::chmod(p.as_ptr(), *m),
                    Op::Access(p, m) => libc::access(p.as_ptr(), *m),
                    Op::Rename(a, b) => libc::rename(a.as_ptr(), b.as_ptr()),
                    Op::UtimesNow(p) => {
                        libc::utimensat(libc::AT_FDCWD, p.as_ptr(), std::ptr::null(), 0)
                    }
                    Op::Setxattr(p) => libc::setxattr(
                        p.as_ptr(),
                        xname.as_ptr(),
                        b"1".as_ptr() as *const libc::c_void,
                        1,
                        0,
                    ),
                    Op::Umask(m) => {
                        libc::umask(*m);
                        0
                    }
                };
                let e: i32 = if r == 0 { 0 } else { *libc::__errno_location() };
                libc::write(pipe[1], &e as *const i32 as *const libc::c_void, 4);
            }
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed");
    unsafe { libc::close(pipe[1]) };
    let mut out = Vec::new();
    let mut f = unsafe { <fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(pipe[0]) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed to switch credentials (status {status})"
    );
    for c in buf.chunks(4) {
        let e = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
        out.push(if e == 0 {
            "ok".to_string()
        } else {
            errno_name(e)
        });
    }
    out
}

/// Reads `dir` fully remembering telldir positions, then seeks back to several of them.
fn check_seekdir(dir: &Path) -> Result<usize, String> {
    let c = cpath(dir);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    if d.is_null() {
        return Err(format!(
            "opendir: {}",
            describe_err(&io::Error::last_os_error())
        ));
    }
    let all = telldir_all(d);
    let res = (|| {
        let n = all.len();
        for &i in &[n - 1, 0, n / 2, 1, n / 3, n - 2, 7.min(n - 1), (2 * n) / 3] {
            unsafe { libc::seekdir(d, all[i].1) };
            for j in i..(i + 3).min(n) {
                let got = next_name(d);
                if got.as_deref() != Some(all[j].0.as_str()) {
                    return Err(format!(
                        "after seekdir to #{i} ({:?}): read #{j} gave {got:?}, expected {:?}",
                        all[i].0, all[j].0
                    ));
                }
            }
        }
        Ok(n)
    })();
    unsafe { libc::closedir(d) };
    res
}

/// A POSIX ACL xattr value: (tag, perm, id) entries, sorted by tag then id.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (t, p, i) in entries {
        v.extend(t.to_le_bytes());
        v.extend(p.to_le_bytes());
        v.extend(i.to_le_bytes());
    }
    v
}

/// Builds one single-lower stack per side with `prep`, mounts kernel overlayfs and then
/// ovlfuse on them with the extra mount option `opt` (none if empty), runs `run` on each
/// merged root and returns the results as [kernel, ovlfuse]. Each side is unmounted and its
/// lower layer checked before the next.
fn kernel_then_ovlfuse<R>(
    name: &str,
    opt: &str,
    prep: impl Fn(&Stack),
    run: impl Fn(&Path, bool) -> R,
) -> [R; 2] {
    [true, false].map(|kernel| {
        let sc = Scratch::new(&format!("{name}-{}", if kernel { "k" } else { "f" }));
        let st = Stack::new(&sc, 1);
        prep(&st);
        let lc = LowerCheck::new(&st.lowers);
        let g = match (kernel, opt.is_empty()) {
            (true, true) => mount_kernel(&st),
            (true, false) => mount_kernel_with(&st, opt),
            (false, true) => mount_ovlfuse(&st, &[]),
            (false, false) => mount_ovlfuse(&st, &[opt]),
        };
        let r = run(&st.mnt, kernel);
        g.unmount();
        lc.verify();
        r
    })
}

/// Sets the append-only and immutable flags of `p` through the mount to those in `flags`,
/// keeping its other inode flags, as chattr(1) does (FS_IOC_GETFLAGS, then SETFLAGS).
/// Setting the bare value would also clear flags such as ext4's extents flag, which
/// some kernels' overlayfs refuses with EPERM (after recording the append-only flag).
fn set_inode_flags(p: &Path, flags: u32) -> io::Result<()> {
    const PROTECTION: libc::c_long = 0x30;
    let f = open_fd(p, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
    let mut v: libc::c_long = 0;
    // FS_IOC_GETFLAGS
    if unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut v) } < 0 {
        return Err(io::Error::last_os_error());
    }
    v = (v & !PROTECTION) | flags as libc::c_long;
    // FS_IOC_SETFLAGS
    if unsafe { libc::ioctl(f.as_raw_fd(), 0x4008_6602, &mut v) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Regular files below `dir` (a work directory may keep a whiteout to link new ones to).
fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}
