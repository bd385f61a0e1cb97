//! Overlay semantics on real mounts, compared with the kernel's overlayfs where natural.
//!
//! Most tests build identical layers twice ("twins"), mount kernel overlayfs on one copy and
//! ovlfuse on the other, run the same operations on both, and compare the results (values
//! and errno names), the merged views and the upper directories left behind.

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
// Lookup, whiteouts, opaque directories
// ---------------------------------------------------------------------------------------

#[test]
fn lookup_precedence_upper_then_lower0_then_lower1() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-precedence",
        &[
            &[
                E::File("x", b"lower0"),
                E::File("y", b"lower0"),
                E::File("d/a", b"l0"),
                E::Symlink("s", "lower0"),
            ],
            &[
                E::File("x", b"lower1"),
                E::File("y", b"lower1"),
                E::File("z", b"lower1"),
                E::File("d/a", b"l1"),
                E::File("d/b", b"l1"),
                E::Symlink("s", "lower1"),
            ],
        ],
        &[
            E::File("x", b"upper"),
            E::File("d/c", b"up"),
            E::Mode("d", 0o700),
        ],
    );
    for root in [t.km(), t.fm()] {
        assert_eq!(read_str(&root.join("x")), "upper", "{root:?}: upper wins");
        assert_eq!(
            read_str(&root.join("y")),
            "lower0",
            "{root:?}: lower0 wins over lower1"
        );
        assert_eq!(read_str(&root.join("z")), "lower1");
        assert_eq!(read_str(&root.join("d/a")), "l0");
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["a".into(), "b".into(), "c".into()]),
            "{root:?}: merged d"
        );
        assert_eq!(
            fs::read_link(root.join("s")).ok(),
            Some(PathBuf::from("lower0"))
        );
        assert_eq!(
            fs::metadata(root.join("d")).map(|m| m.mode() & 0o7777).ok(),
            Some(0o700),
            "{root:?}: dir attrs come from upper"
        );
    }
    t.both("lookup of a missing name", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("nope")))
    });
    t.both("lookup through a file", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("x/sub")))
    });
    t.finish(true);
}

#[test]
fn whiteouts_hide_lower_entries() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-whiteout",
        &[
            &[
                E::Whiteout("gone1"),
                E::File("d/keep", b"k"),
                E::Whiteout("d/gone2"),
            ],
            &[
                E::File("gone0", b"x"),
                E::File("gone1", b"x"),
                E::File("d/gone2", b"x"),
                E::File("dir/inner", b"x"),
                E::File("kept", b"k"),
            ],
        ],
        &[E::Whiteout("gone0"), E::Whiteout("dir")],
    );
    for root in [t.km(), t.fm()] {
        for n in ["gone0", "gone1", "d/gone2", "dir", "dir/inner"] {
            let r = fs::symlink_metadata(root.join(n));
            assert!(
                matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOENT)),
                "{root:?}: {n} must be hidden by a whiteout (ENOENT), got {}",
                outcome(&r.map(|m| m.mode()))
            );
        }
        assert_eq!(
            names_or_err(root),
            Ok(vec!["d".into(), "kept".into()]),
            "{root:?}: root listing"
        );
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["keep".into()]),
            "{root:?}: d listing"
        );
    }
    t.both("create over an upper whiteout", |r| {
        outcome_unit(&fs::write(r.join("gone0"), b"new"))
    });
    t.both("mkdir over an upper whiteout of a dir", |r| {
        outcome_unit(&fs::create_dir(r.join("dir")))
    });
    t.both("list the new dir", |r| names_or_err(&r.join("dir")));
    t.finish(true);
}

#[test]
fn opaque_directories_hide_lower_contents() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-opaque",
        &[
            &[
                E::Opaque("o0"),
                E::File("o0/mine", b"m"),
                E::File("u/l0", b"x"),
            ],
            &[
                E::File("o0/hidden", b"h"),
                E::File("u/hidden", b"h"),
                E::File("u/deep/er", b"h"),
                E::File("plain/l1", b"p"),
            ],
        ],
        &[
            E::Opaque("u"),
            E::File("u/new", b"n"),
            E::File("plain/up", b"u"),
        ],
    );
    for root in [t.km(), t.fm()] {
        assert_eq!(
            names_or_err(&root.join("u")),
            Ok(vec!["new".into()]),
            "{root:?}: upper opaque dir"
        );
        assert_eq!(
            names_or_err(&root.join("o0")),
            Ok(vec!["mine".into()]),
            "{root:?}: lower0 opaque dir"
        );
        assert_eq!(
            names_or_err(&root.join("plain")),
            Ok(vec!["l1".into(), "up".into()]),
            "{root:?}: non-opaque dir merges"
        );
        expect_errno(
            fs::symlink_metadata(root.join("u/hidden")),
            libc::ENOENT,
            "lookup below an opaque dir",
        );
        expect_errno(
            fs::symlink_metadata(root.join("u/deep/er")),
            libc::ENOENT,
            "lookup below an opaque dir",
        );
    }
    t.finish(true);
}

#[test]
fn xattr_whiteouts_in_lower_match_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin_over_xattr_whiteouts("sem-xattr-whiteout");
    for root in [t.km(), t.fm()] {
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["g".into(), "mine".into()]),
            "{root:?}: d"
        );
        expect_errno(
            fs::symlink_metadata(root.join("d/f")),
            libc::ENOENT,
            "xattr whiteout",
        );
    }
    t.finish(true);
}

/// A documented difference (README): an empty file tagged `overlay.whiteout` in a directory
/// not marked `opaque=x` is no whiteout by overlayfs.rst, and ovlfuse shows it. The kernel
/// (6.18) lists it too, but its lookup answers ENOENT. Should a kernel agree with ovlfuse,
/// this test fails and the README entry goes.
#[test]
fn a_whiteout_xattr_outside_a_marked_directory_is_a_plain_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-xattr-whiteout-unmarked",
        &[
            &[E::File("d/a", b"a")],
            &[
                E::File("d/tagged", b""),
                E::Xattr("d/tagged", "trusted.overlay.whiteout", b"y"),
            ],
        ],
        &[],
    );
    for root in [t.km(), t.fm()] {
        assert_eq!(
            names_or_err(&root.join("d")),
            Ok(vec!["a".into(), "tagged".into()]),
            "{root:?}: d"
        );
    }
    assert!(fs::symlink_metadata(t.fm().join("d/tagged")).is_ok_and(|m| m.len() == 0));
    expect_errno(
        fs::symlink_metadata(t.km().join("d/tagged")),
        libc::ENOENT,
        "kernel lookup of a tagged file in an unmarked directory",
    );
    t.finish_apart(true, |_, _| {});
}

/// Kernel >= 6.7: a zero-size file with trusted.overlay.whiteout inside a directory with
/// trusted.overlay.opaque=x is a whiteout; the "x" directory itself is not opaque. Here
/// `d/f` in the upper lower layer hides the `d/f` below it.
fn twin_over_xattr_whiteouts(name: &str) -> Twin {
    twin(
        name,
        &[
            &[
                E::Dir("d"),
                E::Xattr("d", "trusted.overlay.opaque", b"x"),
                E::File("d/f", b""),
                E::Xattr("d/f", "trusted.overlay.whiteout", b"y"),
                E::File("d/mine", b"m"),
            ],
            &[E::File("d/f", b"hidden"), E::File("d/g", b"g")],
        ],
        &[],
    )
}

/// A directory emptied through the mount, whose lower part still holds an xattr whiteout,
/// lists empty and can be removed, and the kernel reads the upper that leaves. The kernel
/// overlay (6.18) lists it empty too but refuses the rmdir with ENOTEMPTY, where it removes
/// the same directory over a char 0/0 whiteout (README, "Differences").
#[test]
fn directory_emptied_over_xattr_whiteouts_can_be_removed() {
    if !fuse_available() {
        return;
    }
    let t = twin_over_xattr_whiteouts("sem-xattr-whiteout-rmdir");
    for name in ["d/g", "d/mine"] {
        t.both(&format!("unlink {name}"), |m| {
            fs::remove_file(m.join(name)).map_err(|e| e.raw_os_error())
        });
    }
    assert_eq!(
        t.both_ret("listing of the emptied d", |m| names_or_err(&m.join("d"))),
        Ok(vec![])
    );
    expect_errno(
        fs::remove_dir(t.km().join("d")),
        libc::ENOTEMPTY,
        "kernel rmdir of d (if the kernel now removes it, drop the README difference)",
    );
    fs::remove_dir(t.fm().join("d")).expect("ovlfuse rmdir of the emptied d");
    expect_errno(
        fs::symlink_metadata(t.fm().join("d")),
        libc::ENOENT,
        "d after rmdir",
    );
    assert!(
        is_whiteout(&t.f.upper.join("d")),
        "no whiteout for d in the upper"
    );
    t.finish_apart(false, |_, f| {
        let kg = mount_kernel(f);
        expect_errno(
            fs::symlink_metadata(f.mnt.join("d")),
            libc::ENOENT,
            "d through the kernel on ovlfuse's upper",
        );
        assert_eq!(names_or_err(&f.mnt), Ok(vec![]), "root through the kernel");
        kg.unmount();
    });
}

#[test]
fn oci_whiteouts_in_lower_are_honoured() {
    if !fuse_available() {
        return;
    }
    // The kernel does not read these; assert the expected view directly.
    let sc = Scratch::new("sem-oci-whiteouts");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File(".wh.f", b""),
            E::File("d/.wh..wh..opq", b""),
            E::File("d/new", b"n"),
            E::File("e/.wh.x", b""),
            E::File("e/mine", b"m"),
            E::File(".wh.gone_dir", b""),
        ],
    );
    build(
        &st.lowers[1],
        &[
            E::File("f", b"hidden"),
            E::File("g", b"g"),
            E::File("d/old", b"old"),
            E::File("d/sub/deep", b"deep"),
            E::File("e/x", b"x"),
            E::File("e/y", b"y"),
            E::File("gone_dir/z", b"z"),
        ],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    assert_eq!(
        names_or_err(m),
        Ok(vec!["d".into(), "e".into(), "g".into()]),
        "root: .wh.f hides f, .wh.gone_dir hides a dir, .wh.* names are not shown"
    );
    assert_eq!(
        names_or_err(&m.join("d")),
        Ok(vec!["new".into()]),
        "d has .wh..wh..opq: lower1's d/old and d/sub are hidden"
    );
    assert_eq!(
        names_or_err(&m.join("e")),
        Ok(vec!["mine".into(), "y".into()]),
        "e/.wh.x hides e/x"
    );
    expect_errno(
        fs::symlink_metadata(m.join("f")),
        libc::ENOENT,
        "f whited out by .wh.f",
    );
    expect_errno(
        fs::symlink_metadata(m.join(".wh.f")),
        libc::ENOENT,
        "the .wh.f marker itself",
    );
    expect_errno(
        fs::symlink_metadata(m.join("d/old")),
        libc::ENOENT,
        "d/old below an OCI-opaque dir",
    );
    expect_errno(
        fs::symlink_metadata(m.join("d/.wh..wh..opq")),
        libc::ENOENT,
        "the opaque marker itself",
    );
    expect_errno(
        fs::symlink_metadata(m.join("gone_dir/z")),
        libc::ENOENT,
        "gone_dir/z",
    );
    // Creating a name hidden by an OCI whiteout works and shows only the new entry.
    ok(
        fs::write(m.join("f"), b"fresh"),
        "create f over an OCI whiteout",
    );
    assert_eq!(read_str(&m.join("f")), "fresh");
    ok(
        fs::create_dir(m.join("gone_dir")),
        "mkdir over an OCI whiteout of a dir",
    );
    assert_eq!(
        names_or_err(&m.join("gone_dir")),
        Ok(vec![]),
        "a new dir over a whiteout must be empty"
    );
    g.unmount();
    lc.verify();
}

#[test]
fn user_overlay_opaque_in_lower_is_honoured() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-user-opaque");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::Dir("d"),
            E::Xattr("d", "user.overlay.opaque", b"y"),
            E::File("d/mine", b"m"),
        ],
    );
    build(
        &st.lowers[1],
        &[E::File("d/hidden", b"h"), E::File("other", b"o")],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(
        names_or_err(&st.mnt.join("d")),
        Ok(vec!["mine".into()]),
        "user.overlay.opaque=y hides the lower contents"
    );
    assert_eq!(names_or_err(&st.mnt), Ok(vec!["d".into(), "other".into()]));
    g.unmount();
    lc.verify();
}

// ---------------------------------------------------------------------------------------
// readdir
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

#[test]
fn readdir_merges_names_once_with_right_types_and_inodes() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-readdir",
        &[
            &[
                E::File("x", b"file over dir"),
                E::File("dir1/y", b"y"),
                E::File("both", b"l0"),
                E::Symlink("sym0", "x"),
                E::Dir("x2"),
                E::File("dir1/both", b"l0"),
            ],
            &[
                E::Dir("x/inner"),
                E::File("x2", b"dir over file"),
                E::File("a", b"a"),
                E::File("both", b"l1"),
                E::File("dir1/x", b"x"),
                E::File("dir1/both", b"l1"),
                E::Symlink("sym", "a"),
                E::Fifo("fifo"),
                E::File("hid", b"h"),
                E::File("dir1/hid", b"h"),
                E::Hardlink("a", "a_link"),
            ],
        ],
        &[
            E::File("c", b"c"),
            E::Whiteout("hid"),
            E::Whiteout("dir1/hid"),
            E::File("dir1/z", b"z"),
            E::Dir("u"),
            E::File("both", b"up"),
        ],
    );
    for d in [".", "dir1", "x2", "u"] {
        let (kp, kl) = readdir_check(&t.km().join(d));
        let (fp, fl) = readdir_check(&t.fm().join(d));
        if !kp.is_empty() {
            // The kernel (samefs, xino=off) does not always report d_ino == st_ino for
            // merged subdirectories; ovlfuse promises it does.
            eprintln!("note: kernel readdir of {d}: {kp:?}");
        }
        assert!(
            fp.is_empty(),
            "ovlfuse readdir of {d} has problems:\n  {}",
            fp.join("\n  ")
        );
        assert_eq!(
            fl, kl,
            "readdir of {d}: ovlfuse (left) vs kernel (right) (name, d_type)"
        );
    }
    // Readdir after changes in the same directory stream's lifetime.
    t.both("unlink + create + readdir", |r| {
        let a = outcome_unit(&fs::remove_file(r.join("both")));
        let b = outcome_unit(&fs::write(r.join("fresh"), b"f"));
        (a, b, readdir_check(r))
    });
    t.finish(true);
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

#[test]
fn readdir_of_100k_entries_and_telldir_seekdir() {
    if !fuse_available() {
        return;
    }
    const N: usize = 100_000;
    let sc = Scratch::new("sem-readdir-100k");
    let st = Stack::new(&sc, 1);
    lower_dir_of_empty_files(&st, N);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let dir = st.mnt.join("big");
    let c = cpath(&dir);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(
        !d.is_null(),
        "opendir: {}",
        describe_err(&io::Error::last_os_error())
    );
    let all = telldir_all(d);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (n, _) in &all {
        *counts.entry(n.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| format!("{n} x{c}"))
        .take(20)
        .collect();
    assert!(dups.is_empty(), "names returned more than once: {dups:?}");
    let missing: Vec<String> = (0..N)
        .map(|i| format!("entry-{i:06}"))
        .filter(|n| !counts.contains_key(n.as_str()))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "{} entries read; missing e.g. {missing:?}",
        all.len()
    );
    assert!(
        counts.contains_key(".") && counts.contains_key(".."),
        ". or .. missing"
    );
    assert_eq!(all.len(), N + 2, "entry count");
    // seekdir back to remembered positions, in scrambled order.
    let idx = [
        all.len() - 1,
        1,
        0,
        77_777,
        4095,
        2,
        50_000,
        99_999,
        1000,
        33_333,
        65_536,
    ];
    for &i in &idx {
        unsafe { libc::seekdir(d, all[i].1) };
        for j in i..(i + 5).min(all.len()) {
            let got = next_name(d);
            assert_eq!(
                got.as_deref(),
                Some(all[j].0.as_str()),
                "after seekdir to the position of entry #{i} ({:?}), read #{j}",
                all[i].0
            );
        }
        if i == all.len() - 1 {
            assert_eq!(next_name(d), None, "end of directory after the last entry");
        }
    }
    unsafe { libc::rewinddir(d) };
    assert_eq!(
        next_name(d).as_deref(),
        Some(all[0].0.as_str()),
        "first entry after rewinddir"
    );
    // A second, independent stream sees the same sequence.
    let d2 = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d2.is_null());
    let again: Vec<String> = telldir_all(d2).into_iter().map(|(n, _)| n).collect();
    let first: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    assert!(
        again == first,
        "a second full readdir returned a different sequence ({} vs {} names)",
        again.len(),
        first.len()
    );
    unsafe {
        libc::closedir(d);
        libc::closedir(d2);
    }
    g.unmount();
    lc.verify();
}

/// Reads one getdents64 batch of at most `buf_len` bytes: (name, d_off) pairs.
fn getdents_batch(fd: i32, buf_len: usize) -> io::Result<Vec<(String, i64)>> {
    let mut buf = vec![0u8; buf_len];
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < n as usize {
        // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
        let off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
        let reclen = u16::from_ne_bytes(buf[at + 16..at + 18].try_into().unwrap()) as usize;
        let name = &buf[at + 19..at + reclen];
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        out.push((String::from_utf8_lossy(&name[..end]).into_owned(), off));
        at += reclen;
    }
    Ok(out)
}

#[test]
fn readdir_resumed_on_a_new_descriptor_lists_unchanged_entries_once_while_others_change() {
    if !fuse_available() {
        return;
    }
    // Readdir keeps no per-open state: an offset is a cookie that stays valid while the
    // directory changes, even on another descriptor (as NFS and telldir users need). The
    // guarantee is POSIX's: an entry present all along is listed exactly once; one added
    // or removed meanwhile may or may not be. `strictatime` keeps OPENDIR in use, the
    // default skips it; both must hold it.
    for opts in [&[][..], &["strictatime"][..]] {
        const N: usize = 3000;
        let sc = Scratch::new("sem-readdir-cookies");
        let st = Stack::new(&sc, 1);
        lower_dir_of_empty_files(&st, N);
        // Part of the directory is in the upper layer too, so the listing is merged.
        ok(fs::create_dir(st.upper.join("big")), "mkdir upper big");
        for i in 0..300 {
            ok(
                fs::File::create(st.upper.join(format!("big/up-{i:04}"))),
                "create an upper file",
            );
        }
        let lc = LowerCheck::new(&st.lowers);
        let g = mount_ovlfuse(&st, opts);
        let dir = st.mnt.join("big");
        let open = || ok(fs::File::open(&dir), "open big");
        let (mut listed, mut removed) = (Vec::<String>::new(), BTreeSet::<String>::new());
        let (mut f, mut round) = (open(), 0usize);
        loop {
            let batch = ok(getdents_batch(f.as_raw_fd(), 700), "getdents64");
            let Some(&(_, last_off)) = batch.last() else {
                break;
            };
            listed.extend(batch.into_iter().map(|(n, _)| n));
            // Between batches: add a name, remove a lower one from the far end (usually
            // not listed yet), remove an upper one listed early, remove a name added before.
            ok(fs::File::create(dir.join(format!("new-{round}"))), "create");
            for gone in [
                format!("entry-{:06}", N - 1 - round),
                format!("up-{:04}", round % 300),
            ] {
                if removed.insert(gone.clone()) {
                    ok(fs::remove_file(dir.join(&gone)), "unlink");
                }
            }
            if round % 3 == 2 {
                let gone = format!("new-{}", round / 3);
                removed.insert(gone.clone());
                ok(fs::remove_file(dir.join(&gone)), "unlink a new file");
            }
            // Go on through a fresh descriptor from the last offset seen.
            f = open();
            let at = unsafe { libc::lseek(f.as_raw_fd(), last_off, libc::SEEK_SET) };
            assert_eq!(at, last_off, "lseek to d_off {last_off} ({opts:?})");
            round += 1;
        }
        assert!(
            round > 20,
            "only {round} batches: the test needs many ({opts:?})"
        );
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &listed {
            *counts.entry(n.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
        assert!(
            twice.is_empty(),
            "listed more than once ({opts:?}): {twice:?}"
        );
        let stayed = (0..N)
            .map(|i| format!("entry-{i:06}"))
            .chain((0..300).map(|i| format!("up-{i:04}")))
            .chain([".".to_string(), "..".to_string()])
            .filter(|n| !removed.contains(n));
        let missing: Vec<String> = stayed
            .filter(|n| !counts.contains_key(n.as_str()))
            .collect();
        assert!(missing.is_empty(), "never listed ({opts:?}): {missing:?}");
        // A full listing afterwards agrees with what the directory now holds.
        let mut now: Vec<String> = ok(fs::read_dir(&dir), "read_dir")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        now.sort();
        let expect_len = N + 300 + round - removed.len();
        assert_eq!(
            now.len(),
            expect_len,
            "entries after the changes ({opts:?})"
        );
        assert!(
            now.iter().all(|n| !removed.contains(n)),
            "a removed name is listed"
        );
        drop(f);
        g.unmount();
        lc.verify();
    }
}

/// fsync and fdatasync of directories, with no OPENDIR behind the descriptor (the kernel
/// then sends FSYNCDIR without a handle): upper, merged, lower-only and root directories,
/// after a change in them, agree with the kernel overlay.
#[test]
fn fsync_of_directories_matches_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-fsyncdir",
        &[&[
            E::Dir("lower_only"),
            E::Dir("merged"),
            E::File("merged/a", b"a"),
        ]],
        &[
            E::Dir("upper_only"),
            E::Dir("merged"),
            E::File("merged/b", b"b"),
        ],
    );
    for d in ["upper_only", "merged", "lower_only", "."] {
        t.both(&format!("fsync and fdatasync of {d}"), |m| {
            let dir = m.join(d);
            let made = fs::write(dir.join(format!("new-in-{}", d.len())), b"x");
            let f = fs::File::open(&dir);
            let synced = f
                .as_ref()
                .map(|f| (outcome_unit(&f.sync_all()), outcome_unit(&f.sync_data())));
            (outcome_unit(&made), synced.map_err(|e| e.raw_os_error()))
        });
    }
    t.compare_views("after the fsyncs");
    t.finish(true);
}

// ---------------------------------------------------------------------------------------
// Copy-up
// ---------------------------------------------------------------------------------------

fn copy_up_lowers() -> Vec<E<'static>> {
    vec![
        E::File("f", b"0123456789 lower contents"),
        E::Xattr("f", "user.foo", b"bar"),
        E::Xattr("f", "user.empty", b""),
        E::Owner("f", 1234, 5678),
        E::Mode("f", 0o2640),
        E::File("dir/sub/g", b"nested lower file"),
        E::Owner("dir/sub/g", 42, 43),
        E::Mode("dir/sub/g", 0o604),
        E::Xattr("dir/sub/g", "user.g", b"1"),
        E::Owner("dir", 11, 22),
        E::Mode("dir", 0o750),
        E::Xattr("dir", "user.dirattr", b"d"),
        E::Mode("dir/sub", 0o711),
        E::File("dir/sibling", b"s"),
    ]
}

/// Builds the copy-up layers, sets old mtimes, runs `op` on f and dir/sub/g on both mounts
/// and compares everything; `mtime_kept` says whether the op must keep the lower mtime.
fn copy_up_case(name: &str, mtime_kept: bool, op: impl Fn(&Path) -> io::Result<()>) {
    let lowers = copy_up_lowers();
    let t = twin_with(name, &[&lowers[..]], &[], |st| {
        for p in ["f", "dir/sub/g"] {
            set_times(&st.lowers[0].join(p), OLD_MTIME, OLD_MTIME).unwrap();
        }
    });
    for p in ["f", "dir/sub/g"] {
        t.both(&format!("{name} on {p}"), |r| outcome_unit(&op(&r.join(p))));
        t.both(&format!("contents of {p} after {name}"), |r| {
            read_str(&r.join(p))
        });
        t.both(&format!("stat of {p} after {name}"), |r| {
            stat_str(&r.join(p))
        });
        t.both(&format!("mtime kept after {name} of {p}?"), |r| {
            let m = mtime_of(&r.join(p)).unwrap();
            if mtime_kept {
                format!("{m:?}")
            } else {
                format!("changed: {}", m != OLD_MTIME)
            }
        });
        if mtime_kept {
            let m = mtime_of(&t.fm().join(p)).unwrap();
            assert_eq!(
                m, OLD_MTIME,
                "{name} of {p} must keep the lower file's mtime across copy-up"
            );
        }
    }
    for p in ["dir", "dir/sub"] {
        t.both(&format!("stat of parent {p} after copy-up"), |r| {
            stat_str(&r.join(p))
        });
    }
    // Something was copied up, with the right attributes.
    for p in ["f", "dir/sub/g"] {
        let up = t.f.upper.join(p);
        assert!(
            fs::symlink_metadata(&up)
                .map(|m| m.is_file())
                .unwrap_or(false),
            "{name}: {p} not copied up to {up:?}"
        );
    }
    t.finish(true);
}

#[test]
fn copy_up_on_write() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-write", false, |p| write_at(p, 3, b"XYZ"));
}

#[test]
fn copy_up_on_append() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-append", false, |p| {
        fs::OpenOptions::new()
            .append(true)
            .open(p)?
            .write_all(b"+tail")
    });
}

#[test]
fn copy_up_on_chmod() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-chmod", true, |p| {
        fs::set_permissions(p, fs::Permissions::from_mode(0o4751))
    });
}

#[test]
fn copy_up_on_chown() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-chown", true, |p| lchown(p, 4321, 8765));
}

#[test]
fn copy_up_on_utimes() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-utimes", true, |p| {
        // Setting the same old mtime explicitly; the atime changes.
        set_times(p, (7, 7), OLD_MTIME)
    });
    copy_up_case("sem-cu-utimes2", false, |p| {
        set_times(p, (7, 7), (2_000_000_000, 5))
    });
}

#[test]
fn copy_up_on_setxattr() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-setxattr", true, |p| {
        lsetxattr(p, "user.new", b"value")
    });
    copy_up_case("sem-cu-removexattr", true, |p| {
        lremovexattr(p, "user.foo").or_else(|_| lremovexattr(p, "user.g"))
    });
}

#[test]
fn copy_up_on_truncate() {
    if !fuse_available() {
        return;
    }
    copy_up_case("sem-cu-truncate", false, |p| {
        fs::OpenOptions::new().write(true).open(p)?.set_len(4)
    });
    copy_up_case("sem-cu-truncate-path", false, |p| {
        let c = cpath(p);
        cvt(unsafe { libc::truncate(c.as_ptr(), 100) }).map(|_| ())
    });
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

/// statx's birth time (with the basic attributes, as stat(1) asks), None where the
/// filesystem keeps none.
fn birth_time(p: &Path) -> Option<(i64, u32)> {
    let stx = statx_of(
        p,
        libc::AT_SYMLINK_NOFOLLOW,
        libc::STATX_BASIC_STATS | libc::STATX_BTIME,
    );
    (stx.stx_mask & libc::STATX_BTIME != 0).then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec))
}

/// With btime=1, as on the kernel overlay, statx shows the birth time of the copy it
/// reports on: the lower file's until a copy-up, then the upper copy's. Without it, none
/// (README, Differences), and Rust's metadata() (statx of every field) costs no request
/// after a listing.
#[test]
fn birth_time_is_that_of_the_copy_shown() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-btime");
    let st = Stack::new(&sc, 1);
    let kst = Stack::new_at(&sc.dir("k"), 0);
    let low = &st.lowers[0];
    fs::write(low.join("f"), b"f").unwrap();
    fs::write(low.join("g"), b"g").unwrap();
    fs::create_dir(low.join("d")).unwrap();
    assert!(
        birth_time(&low.join("f")).is_some(),
        "the scratch filesystem keeps no birth times"
    );
    // apart from the lower files' by more than the clock's granularity
    std::thread::sleep(std::time::Duration::from_millis(20));
    let lc = LowerCheck::new(&st.lowers);
    let kst = Stack {
        lowers: st.lowers.clone(),
        ..kst
    };
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(
        birth_time(&st.mnt.join("f")),
        None,
        "a birth time without btime=1"
    );
    g.unmount();
    let kg = mount_kernel(&kst);
    let g = mount_ovlfuse(&st, &["btime=1"]);
    for (who, root, upper) in [
        ("kernel", &kst.mnt, &kst.upper),
        ("ovlfuse", &st.mnt, &st.upper),
    ] {
        for name in ["f", "g", "d"] {
            assert_eq!(
                birth_time(&root.join(name)),
                birth_time(&low.join(name)),
                "{who}: {name} before any copy-up"
            );
        }
        ok(
            fs::set_permissions(root.join("g"), fs::Permissions::from_mode(0o600)),
            &format!("{who}: chmod"),
        );
        ok(
            fs::write(root.join("d/new"), b"n"),
            &format!("{who}: create in d"),
        );
        for name in ["g", "d", "d/new"] {
            let shown = birth_time(&root.join(name));
            assert_eq!(
                shown,
                birth_time(&upper.join(name)),
                "{who}: {name} after copy-up"
            );
            assert_ne!(shown, birth_time(&low.join("f")), "{who}: {name}");
        }
        assert_eq!(
            birth_time(&root.join("f")),
            birth_time(&low.join("f")),
            "{who}: f"
        );
        assert_eq!(birth_time(root), birth_time(upper), "{who}: the root");
    }
    g.unmount();
    kg.unmount();
    lc.verify();
}

#[test]
fn copy_up_of_sparse_file_keeps_holes() {
    if !fuse_available() {
        return;
    }
    const GIB: u64 = 1 << 30;
    let sc = Scratch::new("sem-cu-sparse");
    let st = Stack::new(&sc, 1);
    let kst = Stack::new_at(&sc.dir("k"), 0);
    let lf = st.lowers[0].join("sparse");
    {
        let f = fs::File::create(&lf).unwrap();
        f.set_len(GIB).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", GIB / 2).unwrap();
        f.write_all_at(b"tail", GIB - 4).unwrap();
    }
    let lower_blocks = fs::metadata(&lf).unwrap().blocks();
    assert!(
        lower_blocks < 2048,
        "the lower file is not sparse on this file system ({lower_blocks} blocks)"
    );
    let lc = LowerCheck::new(&st.lowers);
    let kst = Stack {
        lowers: st.lowers.clone(),
        ..kst
    };
    let kg = mount_kernel(&kst);
    let g = mount_ovlfuse(&st, &[]);
    for (who, root, upper) in [
        ("kernel", &kst.mnt, &kst.upper),
        ("ovlfuse", &st.mnt, &st.upper),
    ] {
        ok(
            fs::set_permissions(root.join("sparse"), fs::Permissions::from_mode(0o600)),
            &format!("{who}: chmod"),
        );
        let m = ok(
            fs::metadata(upper.join("sparse")),
            &format!("{who}: copied-up file in upper"),
        );
        assert_eq!(m.len(), GIB, "{who}: size after copy-up");
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert!(
            m.blocks() < 8192,
            "{who}: copy-up of a 1 GiB sparse file allocated {} KiB; holes must be kept",
            m.blocks() / 2
        );
        let f = ok(fs::File::open(root.join("sparse")), "open");
        let mut buf = [0u8; 6];
        f.read_exact_at(&mut buf, GIB / 2).unwrap();
        assert_eq!(&buf, b"middle", "{who}: data in the middle");
        f.read_exact_at(&mut buf[..4], GIB - 4).unwrap();
        assert_eq!(&buf[..4], b"tail", "{who}: data at the end");
        f.read_exact_at(&mut buf, GIB / 4).unwrap();
        assert_eq!(buf, [0u8; 6], "{who}: a hole reads as zeros");
    }
    // Through the mount, the holes are where the lower file had them (the kernel overlay
    // copies 1 MiB chunks, so its first hole starts at 1 MiB: README, Differences). Not
    // with the writeback cache, where the kernel answers these lseeks itself.
    if data_path_opt().is_some() {
        g.unmount();
        kg.unmount();
        lc.verify();
        return;
    }
    use std::os::fd::AsRawFd;
    let seek =
        |f: &fs::File, off: u64, whence| unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    let f = ok(fs::File::open(st.mnt.join("sparse")), "open");
    let lower = fs::File::open(&lf).unwrap();
    let hole = seek(&lower, 0, libc::SEEK_HOLE);
    assert!(
        hole > 0 && hole < (1 << 20),
        "the lower's first hole at {hole}"
    );
    assert_eq!(
        seek(&f, 0, libc::SEEK_HOLE),
        hole,
        "first hole, through ovlfuse"
    );
    assert_eq!(
        seek(&f, hole as u64, libc::SEEK_DATA),
        seek(&lower, hole as u64, libc::SEEK_DATA),
        "next data after the first hole, through ovlfuse"
    );
    drop(f);
    g.unmount();
    kg.unmount();
    lc.verify();
}

#[test]
fn copy_up_of_fifo_keeps_fifo() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-cu-fifo",
        &[&[E::Fifo("p"), E::Owner("p", 5, 6), E::Fifo("q")]],
        &[],
    );
    t.both("chmod fifo", |r| {
        outcome_unit(&fs::set_permissions(
            r.join("p"),
            fs::Permissions::from_mode(0o600),
        ))
    });
    t.both("chown fifo", |r| outcome_unit(&lchown(&r.join("q"), 7, 8)));
    t.both("setxattr on fifo", |r| {
        outcome_unit(&lsetxattr(&r.join("q"), "user.x", b"1"))
    });
    t.both("stat fifo", |r| stat_str(&r.join("p")));
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(t.f.upper.join("p"))
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false),
        "upper p must be a fifo"
    );
    t.finish(true);
}

#[test]
fn unlink_of_lower_file_leaves_only_a_whiteout() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-unlink-wh",
        &[&[
            E::File("f", b"data"),
            E::File("d/g", b"g"),
            E::File("d/h", b"h"),
            E::Symlink("s", "f"),
        ]],
        &[E::File("u", b"upper only")],
    );
    t.both("unlink lower file", |r| {
        outcome_unit(&fs::remove_file(r.join("f")))
    });
    t.both("unlink nested lower file", |r| {
        outcome_unit(&fs::remove_file(r.join("d/g")))
    });
    t.both("unlink lower symlink", |r| {
        outcome_unit(&fs::remove_file(r.join("s")))
    });
    t.both("unlink upper-only file", |r| {
        outcome_unit(&fs::remove_file(r.join("u")))
    });
    t.both("lookup after unlink", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("f")))
    });
    t.both("readdir d", |r| names_or_err(&r.join("d")));
    t.both("unlink again", |r| {
        outcome_unit(&fs::remove_file(r.join("f")))
    });
    for p in ["f", "d/g", "s"] {
        assert!(
            is_whiteout(&t.f.upper.join(p)),
            "upper/{p} must be a char 0/0 whiteout: {}",
            stat_str(&t.f.upper.join(p))
        );
    }
    assert!(
        fs::symlink_metadata(t.f.upper.join("u")).is_err(),
        "upper-only file must be gone, not whited out"
    );
    assert!(
        fs::symlink_metadata(t.f.upper.join("d/h")).is_err(),
        "d/h must not be copied up"
    );
    t.finish(true);
}

#[test]
fn o_trunc_open_of_lower_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-otrunc",
        &[&[
            E::File("f", b"long lower contents"),
            E::Mode("f", 0o640),
            E::Owner("f", 3, 4),
        ]],
        &[],
    );
    t.both("open O_TRUNC and write", |r| {
        let res = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(r.join("f"))
            .and_then(|mut f| f.write_all(b"new"));
        (
            outcome_unit(&res),
            read_str(&r.join("f")),
            stat_str(&r.join("f")),
        )
    });
    t.both("open O_RDWR|O_TRUNC again", |r| {
        outcome_unit(&open_fd(&r.join("f"), libc::O_RDWR | libc::O_TRUNC, 0))
    });
    t.finish(true);
}

// ---------------------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------------------

#[test]
fn rmdir_of_nonempty_merged_dir_and_of_emptied_dir() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rmdir",
        &[
            &[E::File("d/a", b"a")],
            &[E::File("d/b", b"b"), E::Dir("e")],
        ],
        &[E::File("d/c", b"c"), E::Whiteout("d/zz")],
    );
    t.both("rmdir non-empty merged dir", |r| {
        outcome_unit(&fs::remove_dir(r.join("d")))
    });
    t.both("rmdir a file", |r| {
        outcome_unit(&fs::remove_dir(r.join("d/a")))
    });
    for n in ["a", "b", "c"] {
        t.both(&format!("unlink d/{n}"), |r| {
            outcome_unit(&fs::remove_file(r.join("d").join(n)))
        });
    }
    t.both("rmdir emptied dir (only whiteouts left)", |r| {
        outcome_unit(&fs::remove_dir(r.join("d")))
    });
    t.both("lookup removed dir", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("d")))
    });
    t.both("rmdir empty lower dir", |r| {
        outcome_unit(&fs::remove_dir(r.join("e")))
    });
    t.both("rmdir missing", |r| {
        outcome_unit(&fs::remove_dir(r.join("e")))
    });
    assert!(
        is_whiteout(&t.f.upper.join("d")),
        "upper/d must be a whiteout after rmdir"
    );
    assert!(
        is_whiteout(&t.f.upper.join("e")),
        "upper/e must be a whiteout after rmdir"
    );
    t.finish(true);
}

#[test]
fn rmdir_then_mkdir_gives_empty_opaque_dir_and_new_dirs_are_not_opaque() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-mkdir-opaque",
        &[&[
            E::File("d/a", b"a"),
            E::File("d/sub/x", b"x"),
            E::File("wf", b"file"),
        ]],
        &[],
    );
    t.both("rm -r d", |r| {
        vec![
            outcome_unit(&fs::remove_file(r.join("d/a"))),
            outcome_unit(&fs::remove_file(r.join("d/sub/x"))),
            outcome_unit(&fs::remove_dir(r.join("d/sub"))),
            outcome_unit(&fs::remove_dir(r.join("d"))),
            outcome_unit(&fs::create_dir(r.join("d"))),
        ]
    });
    t.both("readdir recreated d", |r| names_or_err(&r.join("d")));
    t.both("lookup old child", |r| {
        outcome_unit(&fs::symlink_metadata(r.join("d/a")))
    });
    t.both("mkdir brand-new", |r| {
        outcome_unit(&fs::create_dir(r.join("brandnew")))
    });
    t.both("unlink file, mkdir same name", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("wf"))),
            outcome_unit(&fs::create_dir(r.join("wf"))),
            names_or_err(&r.join("wf")),
        )
    });
    let opaque = |p: &Path| {
        outcome(
            &lgetxattr(p, "trusted.overlay.opaque")
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        )
    };
    assert_eq!(
        opaque(&t.f.upper.join("d")),
        "ok: \"y\"",
        "recreated d must be opaque in upper"
    );
    assert_eq!(
        opaque(&t.f.upper.join("brandnew")),
        opaque(&t.k.upper.join("brandnew")),
        "brand-new dir opaque marker vs kernel"
    );
    // With redirect_dir=on (the default of both here) a new directory in a merged parent
    // is marked opaque too; the root of this stack is merged.
    assert_eq!(
        opaque(&t.f.upper.join("brandnew")),
        "ok: \"y\"",
        "a new dir in a merged parent is opaque with redirect_dir=on"
    );
    t.both("opaque marker is not listed through the mount", |r| {
        sorted_xattrs(&r.join("d")).map(|v| {
            v.into_iter()
                .filter(|n| n.starts_with("trusted.overlay."))
                .collect::<Vec<_>>()
        })
    });
    t.finish(true);
}

#[test]
fn create_over_whiteout() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-create-over-wh",
        &[&[
            E::File("w", b"lower"),
            E::File("v", b"lower v"),
            E::Dir("dd"),
        ]],
        &[E::Whiteout("w")],
    );
    t.both("create over upper whiteout", |r| {
        outcome_unit(&fs::write(r.join("w"), b"new w"))
    });
    t.both("unlink + create", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("v"))),
            outcome_unit(&fs::write(r.join("v"), b"new v")),
        )
    });
    t.both("symlink over whiteout", |r| {
        (
            outcome_unit(&fs::remove_dir(r.join("dd"))),
            outcome_unit(&std::os::unix::fs::symlink("w", r.join("dd"))),
        )
    });
    t.both("exclusive create over whiteout", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("w"))),
            outcome_unit(
                &fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(r.join("w")),
            ),
        )
    });
    assert!(
        fs::symlink_metadata(t.f.upper.join("v"))
            .map(|m| m.is_file())
            .unwrap_or(false),
        "upper/v must be a regular file"
    );
    t.finish(true);
}

// ---------------------------------------------------------------------------------------
// Rename
// ---------------------------------------------------------------------------------------

fn rename_lowers() -> Vec<E<'static>> {
    vec![
        E::File("a", b"lower a"),
        E::File("b", b"lower b"),
        E::File("d/x", b"d/x"),
        E::Dir("empty"),
        E::Symlink("s", "a"),
    ]
}

#[test]
fn rename_lower_file_to_new_name() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-rename-new", &[&rename_lowers()[..]], &[]);
    t.both("rename a -> a2", |r| {
        outcome_unit(&fs::rename(r.join("a"), r.join("a2")))
    });
    t.both("rename into merged subdir", |r| {
        outcome_unit(&fs::rename(r.join("b"), r.join("d/b")))
    });
    t.both("rename symlink", |r| {
        outcome_unit(&fs::rename(r.join("s"), r.join("d/s")))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            names_or_err(&r.join("d")),
            read_str(&r.join("a2")),
            read_str(&r.join("d/b")),
        )
    });
    assert!(
        is_whiteout(&t.f.upper.join("a")),
        "old name a must be whited out in upper"
    );
    t.finish(true);
}

#[test]
fn rename_over_existing() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-over",
        &[&rename_lowers()[..]],
        &[E::File("c", b"upper c")],
    );
    t.both("rename lower a over lower b", |r| {
        outcome_unit(&fs::rename(r.join("a"), r.join("b")))
    });
    t.both("rename upper c over whited-out a", |r| {
        outcome_unit(&fs::rename(r.join("c"), r.join("a")))
    });
    t.both("rename file over dir", |r| {
        outcome_unit(&fs::rename(r.join("a"), r.join("empty")))
    });
    t.both("rename file over itself", |r| {
        outcome_unit(&fs::rename(r.join("b"), r.join("b")))
    });
    t.both("rename missing", |r| {
        outcome_unit(&fs::rename(r.join("nope"), r.join("b")))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            read_str(&r.join("a")),
            read_str(&r.join("b")),
        )
    });
    t.finish(true);
}

#[test]
fn rename_noreplace() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-noreplace",
        &[&rename_lowers()[..]],
        &[E::File("c", b"upper c")],
    );
    t.both("NOREPLACE onto lower name", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("b"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("NOREPLACE onto upper name", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("c"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("unlink b", |r| outcome_unit(&fs::remove_file(r.join("b"))));
    t.both("NOREPLACE onto whited-out name", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("b"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("NOREPLACE onto new name", |r| {
        outcome_unit(&renameat2(
            &r.join("c"),
            &r.join("c2"),
            libc::RENAME_NOREPLACE,
        ))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            read_str(&r.join("b")),
            read_str(&r.join("c2")),
        )
    });
    t.finish(true);
}

#[test]
fn rename_exchange() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-exchange",
        &[&rename_lowers()[..]],
        &[E::File("c", b"upper c")],
    );
    t.both("EXCHANGE lower a with upper c", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("c"),
            libc::RENAME_EXCHANGE,
        ))
    });
    t.both("after exchange", |r| {
        (read_str(&r.join("a")), read_str(&r.join("c")))
    });
    t.both("EXCHANGE two lower files", |r| {
        outcome_unit(&renameat2(
            &r.join("b"),
            &r.join("d/x"),
            libc::RENAME_EXCHANGE,
        ))
    });
    t.both("after exchange 2", |r| {
        (read_str(&r.join("b")), read_str(&r.join("d/x")))
    });
    t.both("EXCHANGE with missing", |r| {
        outcome_unit(&renameat2(
            &r.join("a"),
            &r.join("nope"),
            libc::RENAME_EXCHANGE,
        ))
    });
    t.finish(true);
}

#[test]
fn rename_of_upper_only_directory() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rename-updir",
        &[&rename_lowers()[..]],
        &[E::File("u/x", b"x"), E::File("u/sub/y", b"y")],
    );
    t.both("mkdir + populate new dir", |r| {
        (
            outcome_unit(&fs::create_dir(r.join("n"))),
            outcome_unit(&fs::write(r.join("n/f"), b"f")),
        )
    });
    t.both("rename new dir", |r| {
        outcome_unit(&fs::rename(r.join("n"), r.join("n2")))
    });
    t.both("rename upper-only dir into merged dir", |r| {
        outcome_unit(&fs::rename(r.join("u"), r.join("d/u")))
    });
    t.both("view", |r| {
        (
            names_or_err(r),
            names_or_err(&r.join("n2")),
            names_or_err(&r.join("d/u/sub")),
        )
    });
    t.finish(true);
}

#[test]
fn rename_of_merged_directory_exdev_or_correct() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-rename-merged-dir");
    let st = Stack::new(&sc, 2);
    build(&st.lowers[0], &[E::File("d/x", b"x")]);
    build(&st.lowers[1], &[E::File("d/y", b"y"), E::Dir("pure")]);
    build(&st.upper, &[E::File("d/z", b"z")]);
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    for (from, to, kids) in [("d", "e", vec!["x", "y", "z"]), ("pure", "pure2", vec![])] {
        let r = fs::rename(m.join(from), m.join(to));
        match &r {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                assert_eq!(
                    names_or_err(&m.join(from)),
                    Ok(kids.iter().map(|s| s.to_string()).collect()),
                    "after EXDEV, {from} unchanged"
                );
                expect_errno(
                    fs::symlink_metadata(m.join(to)),
                    libc::ENOENT,
                    "EXDEV rename target",
                );
            }
            Ok(()) => {
                assert_eq!(
                    names_or_err(&m.join(to)),
                    Ok(kids.iter().map(|s| s.to_string()).collect()),
                    "after rename, {to} has all entries"
                );
                expect_errno(
                    fs::symlink_metadata(m.join(from)),
                    libc::ENOENT,
                    "renamed-away dir",
                );
                for k in &kids {
                    expect_errno(
                        fs::symlink_metadata(m.join(from).join(k)),
                        libc::ENOENT,
                        "child of the renamed-away dir",
                    );
                }
            }
            Err(e) => panic!(
                "rename of a merged dir {from} -> {to}: expected success or EXDEV, got {}",
                describe_err(e)
            ),
        }
    }
    let view = snapshot(m, XattrSel::User);
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    assert_same_snapshots(
        "view before and after remount",
        "before",
        &view,
        "after",
        &snapshot(m, XattrSel::User),
    );
    g.unmount();
    lc.verify();
}

// ---------------------------------------------------------------------------------------
// Links, special files, names
// ---------------------------------------------------------------------------------------

fn ino_nlink(p: &Path) -> Result<(u64, u64), String> {
    fs::symlink_metadata(p)
        .map(|m| (m.ino(), m.nlink()))
        .map_err(|e| describe_err(&e))
}

#[test]
fn hard_link_of_lower_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-link",
        &[&[E::File("a", b"lower a"), E::File("d/b", b"b")]],
        &[],
    );
    t.both("link a -> a2", |r| {
        outcome_unit(&fs::hard_link(r.join("a"), r.join("a2")))
    });
    t.both("link into subdir", |r| {
        outcome_unit(&fs::hard_link(r.join("a"), r.join("d/a3")))
    });
    t.both("link over existing", |r| {
        outcome_unit(&fs::hard_link(r.join("a"), r.join("d/b")))
    });
    for root in [t.km(), t.fm()] {
        let (i1, n1) = ino_nlink(&root.join("a")).unwrap();
        let (i2, n2) = ino_nlink(&root.join("a2")).unwrap();
        let (i3, n3) = ino_nlink(&root.join("d/a3")).unwrap();
        assert!(
            i1 == i2 && i2 == i3,
            "{root:?}: st_ino differs across hard-linked names: {i1} {i2} {i3}"
        );
        assert!(
            n1 == 3 && n2 == 3 && n3 == 3,
            "{root:?}: st_nlink should be 3 on all names: {n1} {n2} {n3}"
        );
    }
    t.both("write through one name, read through the other", |r| {
        (
            outcome_unit(&write_at(&r.join("a2"), 0, b"LINKED")),
            read_str(&r.join("a")),
            read_str(&r.join("d/a3")),
        )
    });
    t.both("unlink one name", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("a"))),
            ino_nlink(&r.join("a2")).map(|x| x.1),
        )
    });
    t.finish(true);
}

#[test]
fn lower_hard_linked_pair_shows_nlink_2_and_one_inode() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-lower-links",
        &[&[
            E::File("a", b"pair"),
            E::Hardlink("a", "sub/b"),
            E::File("single", b"s"),
        ]],
        &[],
    );
    t.both("nlink of the pair", |r| {
        (
            ino_nlink(&r.join("a")).map(|x| x.1),
            ino_nlink(&r.join("sub/b")).map(|x| x.1),
        )
    });
    for root in [t.km(), t.fm()] {
        let (i1, _) = ino_nlink(&root.join("a")).unwrap();
        let (i2, _) = ino_nlink(&root.join("sub/b")).unwrap();
        assert_eq!(
            i1, i2,
            "{root:?}: a lower hard-linked pair must show one st_ino"
        );
    }
    // With index=off the kernel copies up only the name written to (the link is broken).
    t.both("write through one name of the pair", |r| {
        let w = fs::OpenOptions::new()
            .append(true)
            .open(r.join("a"))
            .and_then(|mut f| f.write_all(b"+more"));
        (
            outcome_unit(&w),
            read_str(&r.join("a")),
            read_str(&r.join("sub/b")),
            ino_nlink(&r.join("a")).map(|x| x.1),
            ino_nlink(&r.join("sub/b")).map(|x| x.1),
        )
    });
    t.finish(true);
}

#[test]
fn symlinks_and_readlink() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-symlink",
        &[&[
            E::Symlink("ls", "target/of/lower"),
            E::Symlink("abs", "/etc/hostname"),
            E::File("f", b"f"),
        ]],
        &[],
    );
    t.both("readlink lower symlink", |r| {
        outcome(&fs::read_link(r.join("ls")))
    });
    t.both("create symlink", |r| {
        outcome_unit(&std::os::unix::fs::symlink("f", r.join("new")))
    });
    t.both("create long symlink", |r| {
        outcome_unit(&std::os::unix::fs::symlink(
            "x".repeat(4000),
            r.join("long"),
        ))
    });
    t.both("readlink new", |r| {
        (
            outcome(&fs::read_link(r.join("new"))),
            read_str(&r.join("new")),
        )
    });
    t.both("readlink long", |r| {
        outcome(&fs::read_link(r.join("long")).map(|p| p.as_os_str().len()))
    });
    t.both("readlink of a file", |r| {
        outcome(&fs::read_link(r.join("f")))
    });
    t.both("lchown lower symlink (copy-up)", |r| {
        outcome_unit(&lchown(&r.join("ls"), 9, 9))
    });
    t.both("symlink over existing", |r| {
        outcome_unit(&std::os::unix::fs::symlink("f", r.join("ls")))
    });
    t.finish(true);
}

#[test]
fn mknod_fifo_char_block_socket() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-mknod", &[&[E::File("f", b"f")]], &[]);
    t.both("mkfifo", |r| outcome_unit(&mkfifo(&r.join("fifo"), 0o640)));
    t.both("mknod char 1:3", |r| {
        outcome_unit(&mknod(&r.join("chr"), libc::S_IFCHR | 0o600, makedev(1, 3)))
    });
    t.both("mknod block 7:0", |r| {
        outcome_unit(&mknod(&r.join("blk"), libc::S_IFBLK | 0o600, makedev(7, 0)))
    });
    t.both("mknod regular", |r| {
        outcome_unit(&mknod(&r.join("reg"), libc::S_IFREG | 0o644, 0))
    });
    t.both("bind a unix socket", |r| {
        outcome_unit(&std::os::unix::net::UnixListener::bind(r.join("sock")))
    });
    t.both("mknod over existing", |r| {
        outcome_unit(&mkfifo(&r.join("f"), 0o644))
    });
    t.both("stat all", |r| {
        ["fifo", "chr", "blk", "reg", "sock"].map(|n| stat_str(&r.join(n)))
    });
    t.both("rdev", |r| {
        ["chr", "blk"].map(|n| fs::symlink_metadata(r.join(n)).map(|m| m.rdev()).ok())
    });
    t.finish(true);
}

#[test]
fn names_of_255_bytes_work_and_256_is_enametoolong() {
    if !fuse_available() {
        return;
    }
    let n255 = "n".repeat(255);
    let l255 = "l".repeat(255);
    let d255 = "d".repeat(255);
    let n256 = "x".repeat(256);
    let inner = format!("{d255}/inner");
    let lower_entries = [E::File(&l255, b"lower long"), E::File(&inner, b"i")];
    let t = twin("sem-names", &[&lower_entries], &[]);
    t.both("create 255", |r| {
        outcome_unit(&fs::write(r.join(&n255), b"long"))
    });
    t.both("stat 255", |r| stat_str(&r.join(&n255)));
    t.both("readdir lists 255", names_or_err);
    t.both("rename 255 -> 255", |r| {
        outcome_unit(&fs::rename(r.join(&n255), r.join(n255.replace('n', "m"))))
    });
    t.both("unlink lower 255", |r| {
        outcome_unit(&fs::remove_file(r.join(&l255)))
    });
    t.both("write in 255 dir", |r| {
        outcome_unit(&fs::write(r.join(&d255).join(&n255), b"x"))
    });
    t.both("create 256", |r| {
        outcome_unit(&fs::write(r.join(&n256), b"x"))
    });
    t.both("stat 256", |r| {
        outcome_unit(&fs::symlink_metadata(r.join(&n256)))
    });
    t.both("mkdir 256", |r| {
        outcome_unit(&fs::create_dir(r.join(&n256)))
    });
    t.both("symlink 256", |r| {
        outcome_unit(&std::os::unix::fs::symlink("x", r.join(&n256)))
    });
    t.both("rename to 256", |r| {
        outcome_unit(&fs::rename(r.join(n255.replace('n', "m")), r.join(&n256)))
    });
    expect_errno(
        fs::write(t.fm().join(&n256), b"x"),
        libc::ENAMETOOLONG,
        "ovlfuse: create with a 256-byte name",
    );
    assert!(
        is_whiteout(&t.f.upper.join(&l255)),
        "whiteout of a 255-byte name must keep the name"
    );
    t.both("unlink 255", |r| {
        outcome_unit(&fs::remove_file(r.join(n255.replace('n', "m"))))
    });
    t.finish(true);
}

// ---------------------------------------------------------------------------------------
// Extended attributes
// ---------------------------------------------------------------------------------------

fn sorted_xattrs(p: &Path) -> Result<Vec<String>, String> {
    llistxattr(p)
        .map(|mut v| {
            v.sort();
            v
        })
        .map_err(|e| describe_err(&e))
}

#[test]
fn user_xattrs_set_get_list_remove() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-xattr-user",
        &[&[
            E::File("f", b"f"),
            E::Xattr("f", "user.old", b"old"),
            E::Dir("d"),
            E::Xattr("d", "user.dold", b"1"),
            E::Symlink("s", "f"),
        ]],
        &[E::File("u", b"u")],
    );
    t.both("get lower xattr", |r| {
        outcome(&lgetxattr(&r.join("f"), "user.old"))
    });
    t.both("set on lower file", |r| {
        outcome_unit(&lsetxattr(&r.join("f"), "user.new", b"v1"))
    });
    t.both("replace", |r| {
        outcome_unit(&lsetxattr(&r.join("f"), "user.new", b"v2-longer"))
    });
    t.both("get", |r| outcome(&lgetxattr(&r.join("f"), "user.new")));
    t.both("list", |r| sorted_xattrs(&r.join("f")));
    t.both("remove lower-origin xattr", |r| {
        outcome_unit(&lremovexattr(&r.join("f"), "user.old"))
    });
    t.both("get removed", |r| {
        outcome(&lgetxattr(&r.join("f"), "user.old"))
    });
    t.both("remove missing", |r| {
        outcome_unit(&lremovexattr(&r.join("f"), "user.nope"))
    });
    t.both("list after remove", |r| sorted_xattrs(&r.join("f")));
    t.both("set on lower dir", |r| {
        outcome_unit(&lsetxattr(&r.join("d"), "user.dnew", b"2"))
    });
    t.both("list dir", |r| sorted_xattrs(&r.join("d")));
    t.both("set on upper file", |r| {
        outcome_unit(&lsetxattr(&r.join("u"), "user.u", &[0, 1, 2, 255]))
    });
    t.both("binary value", |r| {
        outcome(&lgetxattr(&r.join("u"), "user.u"))
    });
    t.both("user xattr on symlink", |r| {
        outcome_unit(&lsetxattr(&r.join("s"), "user.x", b"1"))
    });
    t.both("big value", |r| {
        (
            outcome_unit(&lsetxattr(&r.join("u"), "user.big", &vec![b'z'; 3000])),
            outcome(&lgetxattr(&r.join("u"), "user.big").map(|v| v.len())),
        )
    });
    t.both("missing file", |r| {
        outcome(&lgetxattr(&r.join("nope"), "user.x"))
    });
    t.finish(true);
}

#[test]
fn private_overlay_xattrs_never_show_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-xattr-private",
        &[&[
            E::File("f", b"f"),
            E::Xattr("f", "trusted.overlay.test", b"lower private"),
            E::Xattr("f", "user.visible", b"1"),
            E::Opaque("lo"),
            E::File("lo/x", b"x"),
            E::Dir("d"),
            E::Xattr("d", "trusted.overlay.test", b"p"),
        ]],
        &[
            E::Opaque("uo"),
            E::File("uf", b"u"),
            E::Xattr("uf", "trusted.overlay.test", b"upper private"),
            E::Xattr("uf", "trusted.other", b"t"),
        ],
    );
    let paths = ["f", "lo", "d", "uo", "uf", ""];
    // listxattr first (the main promise), then getxattr of private names.
    let lists = t.both_ret("listxattr of every entry", |r| {
        paths.map(|p| (p, sorted_xattrs(&r.join(p))))
    });
    for (p, names) in &lists {
        if let Ok(names) = names {
            assert!(
                !names.iter().any(|n| n.starts_with("trusted.overlay.")),
                "{p:?} lists private xattrs: {names:?}"
            );
        }
    }
    t.both("getxattr of private names", |r| {
        let mut v = Vec::new();
        for p in paths {
            for n in [
                "trusted.overlay.test",
                "trusted.overlay.opaque",
                "trusted.overlay.origin",
            ] {
                v.push(format!("{p:?} {n}: {}", outcome(&lgetxattr(&r.join(p), n))));
            }
        }
        v
    });
    t.both("copy-up keeps user xattrs, hides private", |r| {
        (
            outcome_unit(&fs::set_permissions(
                r.join("f"),
                fs::Permissions::from_mode(0o600),
            )),
            sorted_xattrs(&r.join("f")),
        )
    });
    t.finish(false);
}

// ---------------------------------------------------------------------------------------
// File operations
// ---------------------------------------------------------------------------------------

#[test]
fn statfs_reports_the_upper_file_system() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-statfs");
    let st = Stack::new(&sc, 1);
    build(&st.lowers[0], &[E::File("f", b"f")]);
    let g = mount_ovlfuse(&st, &[]);
    let s = ok(statvfs(&st.mnt), "statvfs of the mount");
    let u = ok(statvfs(&st.upper), "statvfs of upper");
    assert!(
        s.f_bsize > 0 && s.f_frsize > 0,
        "statvfs block sizes are zero"
    );
    assert_eq!(s.f_namemax, 255, "f_namemax");
    assert_eq!(
        s.f_blocks as u128 * s.f_frsize as u128,
        u.f_blocks as u128 * u.f_frsize as u128,
        "total size must be the upper file system's"
    );
    let fsv = ok(statvfs(&st.mnt.join("f")), "statvfs of a file in the mount");
    assert_eq!(fsv.f_blocks, s.f_blocks);
    g.unmount();
    // Read-only view works too.
    let g = mount_ovlfuse_ro(&st.lowers, &st.mnt, &[]);
    let s = ok(statvfs(&st.mnt), "statvfs of a read-only view");
    assert!(s.f_bsize > 0);
    g.unmount();
}

/// `name_to_handle_at(2)` as on the kernel overlay without `nfs_export`: a plain call fails
/// with EOPNOTSUPP, so no one is handed a handle that `open_by_handle_at` could resolve only
/// while the kernel still caches the inode; a handle that only identifies the file
/// (`AT_HANDLE_FID`, what fanotify reports) is given, and cannot be opened.
#[test]
fn file_handles_identify_files_but_do_not_open_them_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-file-handles",
        &[&[E::Dir("d"), E::File("d/f", b"lower"), E::File("g", b"g")]],
        &[],
    );
    t.both("copy up g", |r| {
        outcome_unit(&fs::OpenOptions::new().append(true).open(r.join("g")))
    });
    t.both("create n", |r| {
        outcome_unit(&fs::write(r.join("n"), b"new"))
    });
    for name in ["", "d", "d/f", "g", "n"] {
        t.both(&format!("name_to_handle_at {name:?}"), |r| {
            outcome_unit(&name_to_handle(&r.join(name), 0))
        });
        t.both(
            &format!("AT_HANDLE_FID then open_by_handle_at {name:?}"),
            |r| {
                let fid = name_to_handle(&r.join(name), AT_HANDLE_FID);
                let opened = match &fid {
                    Ok(h) => outcome_unit(&open_by_handle(r, h)),
                    Err(_) => "no handle".to_string(),
                };
                (outcome_unit(&fid), opened)
            },
        );
    }
    t.finish(true);
}

/// `AT_HANDLE_FID` in <fcntl.h> (Linux 6.5).
const AT_HANDLE_FID: i32 = 0x200;

/// A `struct file_handle` (handle_bytes, handle_type, then up to MAX_HANDLE_SZ bytes) for
/// `p`, from `name_to_handle_at(2)` with `flags`.
fn name_to_handle(p: &Path, flags: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut mount_id: libc::c_int = 0;
    // SAFETY: buf is a struct file_handle with room for the 128 bytes it announces; the
    // path is a C string and mount_id a live local.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

/// `open_by_handle_at(2)` of `handle` on the mount at `mnt`, read-only.
fn open_by_handle(mnt: &Path, handle: &[u8]) -> io::Result<fs::File> {
    let m = fs::File::open(mnt)?;
    // SAFETY: handle is a struct file_handle filled in by name_to_handle_at.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            handle.as_ptr(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us and owned by no one else.
    Ok(unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

#[test]
fn fallocate_matches_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-fallocate", &[&[E::File("f", &[b'a'; 20000])]], &[]);
    t.both("fallocate new file", |r| {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(r.join("new"))
            .unwrap();
        let a = cvt(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) });
        let b = cvt(unsafe {
            libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20)
        });
        let m = f.metadata().unwrap();
        (
            outcome_unit(&a),
            outcome_unit(&b),
            m.len(),
            m.blocks() >= 2048,
        )
    });
    t.both("punch hole in lower file", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("f"))
            .unwrap();
        let a = cvt(unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4096,
                8192,
            )
        });
        let mut buf = vec![0u8; 20000];
        f.read_exact_at(&mut buf, 0).unwrap();
        let zeros = buf.iter().filter(|b| **b == 0).count();
        (outcome_unit(&a), f.metadata().unwrap().len(), zeros)
    });
    t.both("extend lower file", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("f"))
            .unwrap();
        let a = cvt(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 65536) });
        (outcome_unit(&a), f.metadata().unwrap().len())
    });
    t.finish(true);
}

#[test]
fn seek_data_and_seek_hole() {
    if !fuse_available() {
        return;
    }
    const MIB: u64 = 1 << 20;
    // Not under the writeback cache, where the kernel answers these from its own size (no
    // holes; see README and `seek_data_finds_data_not_yet_written_back`).
    let opts = &["passthrough=auto"];
    let t = twin_with_opts(
        "sem-seek",
        &[&[E::File("placeholder", b"p")]],
        &[],
        opts,
        |st| {
            // A sparse lower file: data at 0 and 1 MiB, size 3 MiB.
            let f = fs::File::create(st.lowers[0].join("sparse")).unwrap();
            f.set_len(3 * MIB).unwrap();
            f.write_all_at(&[b'x'; 4096], 0).unwrap();
            f.write_all_at(&[b'y'; 4096], MIB).unwrap();
        },
    );
    let probe = |r: &Path, name: &str| -> Vec<String> {
        let f = match fs::File::open(r.join(name)) {
            Ok(f) => f,
            Err(e) => return vec![describe_err(&e)],
        };
        let mut v = Vec::new();
        for (off, wh) in [
            (0, libc::SEEK_DATA),
            (0, libc::SEEK_HOLE),
            (4096, libc::SEEK_DATA),
            (MIB as i64, libc::SEEK_HOLE),
            (MIB as i64 + 4096, libc::SEEK_DATA),
            (3 * MIB as i64, libc::SEEK_DATA),
            (3 * MIB as i64 + 1, libc::SEEK_HOLE),
        ] {
            v.push(format!(
                "{off} {}: {}",
                if wh == libc::SEEK_DATA {
                    "DATA"
                } else {
                    "HOLE"
                },
                outcome(&lseek(&f, off, wh))
            ));
        }
        v
    };
    t.both("SEEK_DATA/SEEK_HOLE on a lower sparse file", |r| {
        probe(r, "sparse")
    });
    t.both("write a sparse file through the mount", |r| {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(r.join("new"))
            .unwrap();
        f.write_all_at(&[b'x'; 4096], 0).unwrap();
        f.write_all_at(&[b'y'; 4096], MIB).unwrap();
        f.set_len(3 * MIB).unwrap();
        f.sync_all().unwrap();
        "ok"
    });
    t.both("SEEK_DATA/SEEK_HOLE on a new sparse file", |r| {
        probe(r, "new")
    });
    // Copy-up may allocate holes at a coarser granularity (the kernel copies 1 MiB chunks),
    // so after copy-up only check that SEEK_DATA/SEEK_HOLE stay consistent with the data.
    t.both("copy-up (chmod) then probe", |r| {
        let ch = outcome_unit(&fs::set_permissions(
            r.join("sparse"),
            fs::Permissions::from_mode(0o600),
        ));
        let f = fs::File::open(r.join("sparse")).unwrap();
        // Every offset holding data must be reported as data.
        let is_data = |off: i64| outcome(&lseek(&f, off, libc::SEEK_DATA).map(|d| d == off));
        let hole_after_data =
            outcome(&lseek(&f, MIB as i64, libc::SEEK_HOLE).map(|h| h >= MIB as i64 + 4096));
        let past = lseek(&f, 3 * MIB as i64, libc::SEEK_DATA);
        (
            ch,
            is_data(0),
            is_data(4095),
            is_data(MIB as i64),
            is_data(MIB as i64 + 4095),
            hole_after_data,
            outcome_unit(&past),
        )
    });
    t.finish(true);
}

#[test]
fn copy_file_range_between_files() {
    if !fuse_available() {
        return;
    }
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let t = twin(
        "sem-cfr",
        &[&[E::File("src", &data)]],
        &[E::File("up", b"upper data")],
    );
    let cfr = |from: &Path, to: &Path, off_in: i64, off_out: i64, len: usize| -> String {
        let src = match fs::File::open(from) {
            Ok(f) => f,
            Err(e) => return describe_err(&e),
        };
        let dst = match fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(to)
        {
            Ok(f) => f,
            Err(e) => return describe_err(&e),
        };
        let (mut oi, mut oo) = (off_in as libc::loff_t, off_out as libc::loff_t);
        let mut left = len;
        while left > 0 {
            let n = unsafe {
                libc::copy_file_range(src.as_raw_fd(), &mut oi, dst.as_raw_fd(), &mut oo, left, 0)
            };
            if n < 0 {
                return format!(
                    "copy_file_range: {}",
                    describe_err(&io::Error::last_os_error())
                );
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
        }
        format!("copied {}", len - left)
    };
    t.both("lower -> new", |r| {
        (
            cfr(&r.join("src"), &r.join("dst"), 0, 0, 100_000),
            read_str(&r.join("dst")).len(),
        )
    });
    t.both("contents equal", |r| {
        fs::read(r.join("dst")).ok() == fs::read(r.join("src")).ok()
    });
    t.both("middle of lower -> lower (copy-up dst)", |r| {
        cfr(&r.join("src"), &r.join("src2"), 5000, 100, 3000)
    });
    t.both("upper -> lower file", |r| {
        cfr(&r.join("up"), &r.join("src"), 0, 99_990, 10)
    });
    t.both("contents", |r| {
        (
            read_str(&r.join("src")).len(),
            fs::read(r.join("src")).map(|v| v[99_990..].to_vec()).ok(),
        )
    });
    t.finish(true);
}

#[test]
fn flock_and_fcntl_locks() {
    if !fuse_available() {
        return;
    }
    // Each step locks its own file: tests run in parallel threads, and a child another thread
    // forks holds copies of our descriptors until it execs or exits, which can keep a flock or
    // OFD lock of an already closed descriptor alive for a moment.
    let t = twin(
        "sem-locks",
        &[&[
            E::File("f", b"lock me"),
            E::File("f_ofd", b"lock me"),
            E::File("f_posix", b"lock me"),
        ]],
        &[
            E::File("u", b"upper"),
            E::File("u_ofd", b"upper"),
            E::File("u_posix", b"upper"),
        ],
    );
    for name in ["f", "u"] {
        let ofd_name = format!("{name}_ofd");
        let posix_name = format!("{name}_posix");
        t.both(&format!("flock on {name}"), |r| {
            let f1 = fs::File::open(r.join(name)).unwrap();
            let f2 = fs::File::open(r.join(name)).unwrap();
            let a = cvt(unsafe { libc::flock(f1.as_raw_fd(), libc::LOCK_EX) });
            let b = cvt(unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) });
            let c = cvt(unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) });
            let d = cvt(unsafe { libc::flock(f1.as_raw_fd(), libc::LOCK_UN) });
            let e = cvt(unsafe { libc::flock(f2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) });
            [a, b, c, d, e].map(|x| outcome_unit(&x))
        });
        t.both(&format!("OFD locks on {name}"), |r| {
            let f1 = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join(&ofd_name))
                .unwrap();
            let f2 = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join(&ofd_name))
                .unwrap();
            let lk = |ty: i32, start: i64, len: i64| libc::flock {
                l_type: ty as i16,
                l_whence: libc::SEEK_SET as i16,
                l_start: start,
                l_len: len,
                l_pid: 0,
            };
            let mut l1 = lk(libc::F_WRLCK, 0, 10);
            let a = cvt(unsafe { libc::fcntl(f1.as_raw_fd(), libc::F_OFD_SETLK, &mut l1) });
            let mut l2 = lk(libc::F_WRLCK, 5, 1);
            let b = cvt(unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_SETLK, &mut l2) });
            let mut l3 = lk(libc::F_RDLCK, 0, 100);
            let c = cvt(unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_GETLK, &mut l3) });
            let mut l4 = lk(libc::F_WRLCK, 10, 5);
            let d = cvt(unsafe { libc::fcntl(f2.as_raw_fd(), libc::F_OFD_SETLK, &mut l4) });
            (
                [a, b, c, d].map(|x| outcome_unit(&x)),
                (l3.l_type as i32 == libc::F_WRLCK, l3.l_start, l3.l_len),
            )
        });
        t.both(
            &format!("POSIX locks on {name} seen from a child process"),
            |r| {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(r.join(&posix_name))
                    .unwrap();
                let mut l = libc::flock {
                    l_type: libc::F_WRLCK as i16,
                    l_whence: libc::SEEK_SET as i16,
                    l_start: 0,
                    l_len: 0,
                    l_pid: 0,
                };
                let a = cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &mut l) });
                let fd = f.as_raw_fd();
                let parent = std::process::id() as i32;
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    // Child: only async-signal-safe calls.
                    let mut q = libc::flock {
                        l_type: libc::F_RDLCK as i16,
                        l_whence: libc::SEEK_SET as i16,
                        l_start: 0,
                        l_len: 1,
                        l_pid: 0,
                    };
                    let mut code = 0;
                    if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut q) } != 0 {
                        code |= 1;
                    } else if !(q.l_type as i32 == libc::F_WRLCK && q.l_pid == parent) {
                        code |= 2;
                    }
                    let mut w = libc::flock {
                        l_type: libc::F_WRLCK as i16,
                        l_whence: libc::SEEK_SET as i16,
                        l_start: 0,
                        l_len: 1,
                        l_pid: 0,
                    };
                    let rr = unsafe { libc::fcntl(fd, libc::F_SETLK, &mut w) };
                    if rr == 0 {
                        code |= 4;
                    }
                    unsafe { libc::_exit(code) };
                }
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -1
                };
                (outcome_unit(&a), code)
            },
        );
    }
    t.finish(true);
}

#[test]
fn o_append_writes_at_end() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-append",
        &[&[E::File("f", b"abc")]],
        &[E::File("u", b"123")],
    );
    for name in ["f", "u", "new"] {
        t.both(&format!("O_APPEND on {name}"), |r| {
            let f = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(r.join(name))
                .unwrap();
            let a = (&f).write_all(b"def");
            let b = f.write_at(b"ghi", 0); // O_APPEND: pwrite appends on Linux
            (outcome_unit(&a), outcome(&b), read_str(&r.join(name)))
        });
    }
    t.both("O_APPEND read+write with seek", |r| {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(r.join("f"))
            .unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"X").unwrap();
        let pos = f.stream_position().unwrap();
        let mut s = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut s).unwrap();
        (pos, s)
    });
    t.finish(true);
}

struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }
    fn buf(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn o_direct_write_and_read() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-odirect", &[&[E::File("f", &[b'l'; 8192])]], &[]);
    for name in ["new", "f"] {
        t.both(&format!("O_DIRECT on {name}"), |r| {
            let mut w = Aligned::new(8192);
            for (i, b) in w.buf().iter_mut().enumerate() {
                *b = b'A' + (i % 26) as u8;
            }
            let f = match open_fd(
                &r.join(name),
                libc::O_RDWR | libc::O_CREAT | libc::O_DIRECT,
                0o644,
            ) {
                Ok(f) => f,
                Err(e) => return format!("open O_DIRECT: {}", describe_err(&e)),
            };
            let n =
                unsafe { libc::pwrite(f.as_raw_fd(), w.ptr as *const libc::c_void, 4096, 4096) };
            if n != 4096 {
                return format!(
                    "pwrite O_DIRECT: {n} {}",
                    describe_err(&io::Error::last_os_error())
                );
            }
            let mut rb = Aligned::new(8192);
            let n = unsafe { libc::pread(f.as_raw_fd(), rb.ptr as *mut libc::c_void, 8192, 0) };
            if n < 0 {
                return format!(
                    "pread O_DIRECT: {}",
                    describe_err(&io::Error::last_os_error())
                );
            }
            let got = rb.buf()[..n as usize].to_vec();
            drop(f);
            let via_normal = fs::read(r.join(name)).unwrap_or_default();
            format!(
                "read {n}; direct read == normal read: {}; second half ok: {}; first half: {:?}",
                got == via_normal,
                via_normal.len() == 8192 && via_normal[4096..] == w.buf()[..4096],
                via_normal.first()
            )
        });
    }
    t.finish(true);
}

#[test]
fn mmap_shared_write_reaches_the_file() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-mmap",
        &[&[E::File("f", &[b'a'; 8192])]],
        &[E::File("u", &[b'u'; 4096])],
    );
    for name in ["f", "u"] {
        t.both(&format!("mmap MAP_SHARED write on {name}"), |r| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join(name))
                .unwrap();
            let len = f.metadata().unwrap().len() as usize;
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return format!("mmap: {}", describe_err(&io::Error::last_os_error()));
            }
            unsafe {
                std::ptr::copy_nonoverlapping(b"HELLO".as_ptr(), (p as *mut u8).add(100), 5);
            }
            let ms = cvt(unsafe { libc::msync(p, len, libc::MS_SYNC) });
            unsafe { libc::munmap(p, len) };
            drop(f);
            let v = fs::read(r.join(name)).unwrap_or_default();
            format!(
                "msync {}; new fd sees HELLO: {}",
                outcome_unit(&ms),
                v.get(100..105) == Some(b"HELLO")
            )
        });
    }
    t.finish_with(true, |k, f| {
        for (who, u) in [("ovlfuse", &f.upper), ("kernel", &k.upper)] {
            for name in ["f", "u"] {
                let v = fs::read(u.join(name))
                    .unwrap_or_else(|e| panic!("{who}: read upper/{name}: {}", describe_err(&e)));
                assert_eq!(
                    v.get(100..105),
                    Some(&b"HELLO"[..]),
                    "{who}: upper/{name} after unmount lacks the mmap write"
                );
            }
        }
    });
}

#[test]
fn read_only_fd_opened_before_copy_up() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-ro-fd",
        &[&[E::File("f", b"original lower data"), E::File("g", b"gggg")]],
        &[],
    );
    t.both("ro fd, then write through another fd", |r| {
        let ro = fs::File::open(r.join("f")).unwrap();
        let mut b = [0u8; 8];
        ro.read_exact_at(&mut b, 0).unwrap();
        let w = write_at(&r.join("f"), 0, b"CHANGED");
        let mut after = vec![0u8; 40];
        let n = ro.read_at(&mut after, 0).unwrap_or(0);
        after.truncate(n);
        (
            outcome_unit(&w),
            String::from_utf8_lossy(&after).into_owned(),
            ro.metadata().map(|m| m.len()).ok(),
        )
    });
    t.both("ro fd, then truncate by path", |r| {
        let ro = fs::File::open(r.join("g")).unwrap();
        let tr = fs::OpenOptions::new()
            .write(true)
            .open(r.join("g"))
            .and_then(|f| f.set_len(2));
        let mut after = vec![0u8; 40];
        let n = ro.read_at(&mut after, 0).unwrap_or(0);
        after.truncate(n);
        (
            outcome_unit(&tr),
            String::from_utf8_lossy(&after).into_owned(),
            ro.metadata().map(|m| m.len()).ok(),
        )
    });
    t.finish(true);
}

/// A mapping of a lower file (shared, or private and not written to), made through a
/// descriptor opened before a write elsewhere copies the file up. The kernel overlay maps the lower file itself and keeps
/// it mapped: the mapping goes on showing the lower data, while read(2) on the same
/// descriptor shows the copy's (overlayfs.rst, "Non-standard behavior"). Through FUSE a
/// file has one page cache whatever layer holds it, and the copy-up drops the pages of the
/// lower data: the mapping shows the copy's data, as read(2) does (README, "Differences").
#[test]
fn a_mapping_made_before_a_copy_up_shows_the_lower_data_on_the_kernel_and_the_copy_here() {
    if !fuse_available() {
        return;
    }
    const BIG: usize = 200_000;
    let t = twin(
        "sem-map-before-copy-up",
        &[&[
            E::File("small", b"AAAAAAAA"),
            E::File("big", &[b'B'; BIG]),
            E::File("private", b"PPPPPPPP"),
        ]],
        &[],
    );
    let run = |r: &Path| -> Vec<String> {
        let mut seen = Vec::new();
        for (name, kind) in [
            ("small", libc::MAP_SHARED),
            ("big", libc::MAP_SHARED),
            ("private", libc::MAP_PRIVATE),
        ] {
            let ro = ok(fs::File::open(r.join(name)), "open read-only");
            let len = ok(ro.metadata(), "fstat").len() as usize;
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    kind,
                    ro.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(
                map,
                libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            let mapped = || unsafe { std::slice::from_raw_parts(map as *const u8, 4) }.to_vec();
            let first = mapped();
            ok(
                write_at(&r.join(name), 0, b"ZZZZ"),
                "write through another descriptor",
            );
            let mut read = [0u8; 4];
            ok(ro.read_exact_at(&mut read, 0), "pread");
            let after = mapped();
            unsafe { libc::munmap(map, len) };
            seen.push(format!(
                "{name}: mapped {} then {}, read {}",
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(&after),
                String::from_utf8_lossy(&read),
            ));
        }
        seen
    };
    let kernel = run(t.km());
    let ours = run(t.fm());
    assert_eq!(
        kernel,
        [
            "small: mapped AAAA then AAAA, read ZZZZ",
            "big: mapped BBBB then BBBB, read ZZZZ",
            "private: mapped PPPP then PPPP, read ZZZZ"
        ],
        "the kernel overlay's mapping no longer shows the lower data: update the README"
    );
    assert_eq!(
        ours,
        [
            "small: mapped AAAA then ZZZZ, read ZZZZ",
            "big: mapped BBBB then ZZZZ, read ZZZZ",
            "private: mapped PPPP then ZZZZ, read ZZZZ"
        ],
        "ovlfuse: a mapping and read(2) through one descriptor disagree after a copy-up"
    );
    t.finish(true);
}

// ---------------------------------------------------------------------------------------
// Inode numbers and cross-implementation compatibility
// ---------------------------------------------------------------------------------------

#[test]
fn st_ino_stable_across_copy_up_and_remount() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-ino");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File("f", b"f"),
            E::File("d/g", b"g"),
            E::Symlink("s", "f"),
        ],
    );
    build(
        &st.lowers[1],
        &[E::File("d/h", b"h"), E::File("low1", b"l")],
    );
    build(&st.upper, &[E::File("u", b"u")]);
    let lc = LowerCheck::new(&st.lowers);
    let names = ["", "f", "d", "d/g", "d/h", "s", "low1", "u"];
    let inos = |m: &Path| -> Vec<(String, u64)> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    ok(fs::symlink_metadata(m.join(n)), &format!("stat {n}")).ino(),
                )
            })
            .collect()
    };
    let g = mount_ovlfuse(&st, &[]);
    let before = inos(&st.mnt);
    // Copy up everything.
    ok(
        fs::set_permissions(st.mnt.join("f"), fs::Permissions::from_mode(0o600)),
        "chmod f",
    );
    ok(write_at(&st.mnt.join("d/g"), 0, b"G"), "write d/g");
    ok(
        lsetxattr(&st.mnt.join("d/h"), "user.x", b"1"),
        "setxattr d/h",
    );
    ok(lchown(&st.mnt.join("s"), 1, 1), "lchown s");
    ok(
        fs::OpenOptions::new()
            .append(true)
            .open(st.mnt.join("low1"))
            .and_then(|mut f| f.write_all(b"+")),
        "append low1",
    );
    ok(fs::write(st.mnt.join("new"), b"n"), "create new");
    let new_ino = fs::symlink_metadata(st.mnt.join("new")).unwrap().ino();
    let after = inos(&st.mnt);
    assert_eq!(after, before, "st_ino changed across copy-up (name, ino)");
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    let remounted = inos(&st.mnt);
    assert_eq!(remounted, before, "st_ino changed across unmount/remount");
    assert_eq!(
        fs::symlink_metadata(st.mnt.join("new")).unwrap().ino(),
        new_ino,
        "st_ino of a new file changed across remount"
    );
    // Distinct files have distinct inode numbers.
    let mut uniq: Vec<u64> = remounted.iter().map(|x| x.1).collect();
    uniq.push(new_ino);
    let n = uniq.len();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        n,
        "distinct files share an st_ino: {remounted:?} new={new_ino}"
    );
    g.unmount();
    lc.verify();
}

fn cross_lowers() -> Vec<E<'static>> {
    vec![
        E::File("del", b"deleted"),
        E::File("deldir/a", b"a"),
        E::File("deldir/b", b"b"),
        E::File("redo/old", b"old"),
        E::File("perm", b"p"),
        E::File("own", b"o"),
        E::File("x", b"x"),
        E::File("xr", b"xr"),
        E::Xattr("xr", "user.old", b"1"),
        E::File("tr", b"truncate me"),
        E::File("ap", b"append"),
        E::File("mv", b"moved"),
        E::File("sub/a", b"sub a"),
        E::File("sub/keep", b"k"),
        E::Fifo("fifo"),
        E::Symlink("lnk", "x"),
        E::Dir("emptydir"),
    ]
}

fn cross_ops(r: &Path) {
    let long = "q".repeat(255);
    ok(fs::write(r.join("new"), b"new file"), "create");
    ok(fs::create_dir(r.join("nd")), "mkdir");
    ok(fs::write(r.join("nd/x"), b"nested"), "create nested");
    ok(fs::remove_file(r.join("del")), "unlink lower");
    ok(fs::remove_file(r.join("deldir/a")), "unlink deldir/a");
    ok(fs::remove_file(r.join("deldir/b")), "unlink deldir/b");
    ok(fs::remove_dir(r.join("deldir")), "rmdir deldir");
    ok(fs::remove_file(r.join("redo/old")), "unlink redo/old");
    ok(fs::remove_dir(r.join("redo")), "rmdir redo");
    ok(fs::create_dir(r.join("redo")), "mkdir redo");
    ok(
        fs::write(r.join("redo/fresh"), b"fresh"),
        "create redo/fresh",
    );
    ok(
        fs::set_permissions(r.join("perm"), fs::Permissions::from_mode(0o600)),
        "chmod",
    );
    ok(lchown(&r.join("own"), 77, 88), "chown");
    ok(lsetxattr(&r.join("x"), "user.added", b"v"), "setxattr");
    ok(lremovexattr(&r.join("xr"), "user.old"), "removexattr");
    ok(std::os::unix::fs::symlink("new", r.join("sl")), "symlink");
    ok(
        fs::OpenOptions::new()
            .write(true)
            .open(r.join("tr"))
            .and_then(|f| f.set_len(1)),
        "truncate",
    );
    ok(
        fs::OpenOptions::new()
            .append(true)
            .open(r.join("ap"))
            .and_then(|mut f| f.write_all(b"+more")),
        "append",
    );
    ok(fs::rename(r.join("mv"), r.join("mv2")), "rename");
    ok(fs::hard_link(r.join("new"), r.join("newlink")), "link");
    ok(mkfifo(&r.join("ff"), 0o600), "mkfifo");
    ok(fs::remove_file(r.join("sub/a")), "unlink sub/a");
    ok(fs::write(r.join("sub/a"), b"recreated"), "recreate sub/a");
    ok(
        mknod(&r.join("cdev"), libc::S_IFCHR | 0o600, makedev(1, 7)),
        "mknod",
    );
    ok(fs::write(r.join(&long), b"long name"), "create 255");
    ok(fs::remove_file(r.join("fifo")), "unlink lower fifo");
    ok(fs::remove_file(r.join("lnk")), "unlink lower symlink");
    ok(fs::remove_dir(r.join("emptydir")), "rmdir empty lower dir");
    ok(fs::create_dir(r.join("emptydir")), "mkdir emptydir again");
    ok(
        fs::hard_link(r.join("perm"), r.join("sub/permlink")),
        "link a copied-up lower file",
    );
    ok(
        fs::hard_link(r.join("own"), r.join("ownlink")),
        "link a lower file",
    );
}

/// One implementation writes, then both read the resulting upper directory.
fn cross_check(name: &str, writer_is_ovlfuse: bool) {
    let sc = Scratch::new(name);
    let st = Stack::new(&sc, 2);
    build(&st.lowers[0], &cross_lowers());
    build(
        &st.lowers[1],
        &[
            E::File("sub/low1", b"l1"),
            E::File("redo/older", b"older"),
            E::File("deldir/c", b"c"),
        ],
    );
    let lc = LowerCheck::new(&st.lowers);
    // Remove deldir/c first too, so that rmdir deldir can succeed.
    let writer_view = {
        let g = if writer_is_ovlfuse {
            mount_ovlfuse(&st, &[])
        } else {
            mount_kernel(&st)
        };
        ok(fs::remove_file(st.mnt.join("deldir/c")), "unlink deldir/c");
        ok(
            fs::remove_file(st.mnt.join("redo/older")),
            "unlink redo/older",
        );
        cross_ops(&st.mnt);
        let v = snapshot(&st.mnt, XattrSel::User);
        g.unmount();
        v
    };
    let (writer, reader) = if writer_is_ovlfuse {
        ("ovlfuse", "kernel")
    } else {
        ("kernel", "ovlfuse")
    };
    // The other implementation, fresh workdir and mount point, same lowers and upper.
    let other = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work2"),
        mnt: sc.dir("mnt2"),
    };
    let g = if writer_is_ovlfuse {
        mount_kernel(&other)
    } else {
        mount_ovlfuse(&other, &[])
    };
    let reader_view = snapshot(&other.mnt, XattrSel::User);
    g.unmount();
    assert_same_snapshots(
        &format!("{writer} wrote the upper, {reader} reads it"),
        &format!("{writer} (writer)"),
        &writer_view,
        &format!("{reader} (reader)"),
        &reader_view,
    );
    // And the writer itself sees the same after a remount.
    let same = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work3"),
        mnt: sc.dir("mnt3"),
    };
    let g = if writer_is_ovlfuse {
        mount_ovlfuse(&same, &[])
    } else {
        mount_kernel(&same)
    };
    let again = snapshot(&same.mnt, XattrSel::User);
    g.unmount();
    assert_same_snapshots(
        &format!("{writer} remounted"),
        "before",
        &writer_view,
        "after remount",
        &again,
    );
    lc.verify();
}

#[test]
fn kernel_reads_what_ovlfuse_wrote() {
    if !fuse_available() {
        return;
    }
    cross_check("sem-cross-fuse-writes", true);
}

#[test]
fn ovlfuse_reads_what_kernel_wrote() {
    if !fuse_available() {
        return;
    }
    cross_check("sem-cross-kernel-writes", false);
}

#[test]
fn same_operations_give_same_views_and_uppers() {
    if !fuse_available() {
        return;
    }
    let lowers = cross_lowers();
    let t = twin(
        "sem-ops-compare",
        &[
            &lowers[..],
            &[
                E::File("sub/low1", b"l1"),
                E::File("redo/older", b"older"),
                E::File("deldir/c", b"c"),
            ],
        ],
        &[],
    );
    t.both("prepare", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("deldir/c"))),
            outcome_unit(&fs::remove_file(r.join("redo/older"))),
        )
    });
    cross_ops(t.km());
    cross_ops(t.fm());
    t.compare_views("after the same operations");
    t.finish(true);
}

// ---------------------------------------------------------------------------------------
// Permissions, concurrency, odd file lifetimes
// ---------------------------------------------------------------------------------------

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

/// Runs `ops` in a forked child with the given credentials; returns "ok" or the errno name
/// of each. The child only makes raw system calls (safe after fork in a threaded process).
/// In a forked child: drops to `uid`/`gid` with supplementary `groups`, or exits 99.
unsafe fn become_or_exit(uid: u32, gid: u32, groups: &[libc::gid_t]) {
    let ok = libc::setgroups(groups.len(), groups.as_ptr()) == 0
        && libc::setresgid(gid, gid, gid) == 0
        && libc::setresuid(uid, uid, uid) == 0;
    if !ok {
        libc::_exit(99);
    }
}

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

#[test]
fn permission_checks_for_an_unprivileged_user() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    let t = twin(
        "sem-perms",
        &[&[
            E::File("secret", b"s"),
            E::Mode("secret", 0o600),
            E::File("public", b"p"),
            E::Mode("public", 0o644),
            E::File("mine", b"m"),
            E::Owner("mine", NOBODY, NOBODY),
            E::Mode("mine", 0o600),
            E::Dir("pub"),
            E::Mode("pub", 0o777),
            E::File("sticky/rootfile", b"r"),
            E::Mode("sticky/rootfile", 0o666),
            E::Mode("sticky", 0o1777),
            E::File("world", b"w"),
            E::Mode("world", 0o666),
            E::File("closed/x", b"x"),
            E::Mode("closed", 0o700),
            E::File("exec", b"#!/bin/sh\n"),
            E::Mode("exec", 0o755),
        ]],
        &[],
    );
    let ops = |r: &Path| -> Vec<Op> {
        let c = |n: &str| cpath(&r.join(n));
        vec![
            Op::Open(c("secret"), libc::O_RDONLY),
            Op::Open(c("public"), libc::O_RDONLY),
            Op::Open(c("public"), libc::O_WRONLY),
            Op::Mkdir(c("newdir")),
            Op::Open(c("pub/new"), libc::O_CREAT | libc::O_WRONLY),
            Op::Unlink(c("sticky/rootfile")),
            Op::Chmod(c("public"), 0o666),
            Op::Open(c("mine"), libc::O_RDWR),
            Op::Chmod(c("mine"), 0o640),
            Op::Open(c("world"), libc::O_WRONLY | libc::O_TRUNC),
            Op::Access(c("exec"), libc::X_OK),
            Op::Access(c("public"), libc::X_OK),
            Op::Access(c("public"), libc::W_OK),
            Op::Open(c("closed/x"), libc::O_RDONLY),
            Op::Rename(c("public"), c("pub/p")),
            Op::Mkdir(c("pub/d")),
            Op::UtimesNow(c("world")),
            Op::UtimesNow(c("public")),
            Op::Setxattr(c("public")),
            Op::Setxattr(c("mine")),
            Op::Unlink(c("pub/new")),
        ]
    };
    let labels = [
        "open secret 0600 RDONLY",
        "open public 0644 RDONLY",
        "open public 0644 WRONLY",
        "mkdir in root-owned 0755 dir",
        "create in 0777 dir",
        "unlink root's file in sticky dir",
        "chmod root's file",
        "open own 0600 file RDWR (copy-up)",
        "chmod own file",
        "open 0666 file O_TRUNC (copy-up)",
        "access X_OK on 0755",
        "access X_OK on 0644",
        "access W_OK on 0644",
        "open below a 0700 root dir",
        "rename out of root-owned dir",
        "mkdir in 0777 dir",
        "utimes(NULL) on 0666 file",
        "utimes(NULL) on 0644 root file",
        "setxattr user.x on root's 0644 file",
        "setxattr user.x on own file",
        "unlink own new file",
    ];
    let res = t.both_ret("operations as uid/gid 65534", |r| {
        let res = run_as(NOBODY, NOBODY, &ops(r));
        labels
            .iter()
            .zip(res)
            .map(|(l, r)| format!("{l}: {r}"))
            .collect::<Vec<_>>()
    });
    // Both agree; make sure they agree on the obvious answers too.
    let eacces = errno_name(libc::EACCES);
    let eperm = errno_name(libc::EPERM);
    for (i, want) in [
        (0, eacces.as_str()),
        (1, "ok"),
        (2, &eacces),
        (3, &eacces),
        (4, "ok"),
        (5, &eperm),
        (6, &eperm),
        (7, "ok"),
        (13, &eacces),
    ] {
        assert_eq!(
            res[i],
            format!("{}: {want}", labels[i]),
            "unprivileged user, both implementations"
        );
    }
    t.both("owner of files created by the unprivileged user", |r| {
        stat_str(&r.join("pub/d"))
    });
    t.finish(true);
}

#[test]
fn concurrent_copy_up_of_one_file_and_of_siblings() {
    if !fuse_available() {
        return;
    }
    let lower: Vec<E> = vec![
        E::File("f", &[b'l'; 8 * 4096]),
        E::File("d/f0", b"0"),
        E::File("d/f1", b"1"),
        E::File("d/f2", b"2"),
        E::File("d/f3", b"3"),
        E::File("d/f4", b"4"),
        E::File("d/f5", b"5"),
        E::File("d/f6", b"6"),
        E::File("d/f7", b"7"),
    ];
    let t = twin("sem-concurrent", &[&lower[..]], &[]);
    t.both("8 threads write one lower file", |r| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hs: Vec<_> = (0..8u8)
            .map(|i| {
                let p = r.join("f");
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let f = fs::OpenOptions::new().write(true).open(&p)?;
                    f.write_all_at(&[b'A' + i; 4096], i as u64 * 4096)
                })
            })
            .collect();
        let res: Vec<String> = hs
            .into_iter()
            .map(|h| outcome_unit(&h.join().unwrap()))
            .collect();
        let data = fs::read(r.join("f")).unwrap_or_default();
        let chunks: Vec<String> = data
            .chunks(4096)
            .map(|c| {
                if c.iter().all(|b| *b == c[0]) {
                    (c[0] as char).to_string()
                } else {
                    "mixed".into()
                }
            })
            .collect();
        (res, chunks)
    });
    t.both("8 threads copy up siblings in one lower dir", |r| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let p = r.join(format!("d/f{i}"));
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    lsetxattr(&p, "user.t", format!("{i}").as_bytes())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| outcome_unit(&h.join().unwrap()))
            .collect::<Vec<_>>()
    });
    t.finish(true);
}

#[test]
fn large_file_roundtrip_and_copy_up() {
    if !fuse_available() {
        return;
    }
    let mut x: u64 = 0x1234_5678;
    let big: Vec<u8> = (0..(6 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t = twin("sem-large", &[&[E::File("lowbig", &big)]], &[]);
    t.both("write 6 MiB through the mount and read it back", |r| {
        let w = fs::write(r.join("newbig"), &big);
        let back = fs::read(r.join("newbig")).map(|v| v == big);
        (outcome_unit(&w), outcome(&back))
    });
    t.both("append to a 6 MiB lower file", |r| {
        let a = fs::OpenOptions::new()
            .append(true)
            .open(r.join("lowbig"))
            .and_then(|mut f| f.write_all(b"END"));
        let back = fs::read(r.join("lowbig"))
            .map(|v| v.len() == big.len() + 3 && v[..big.len()] == big[..] && v.ends_with(b"END"));
        (outcome_unit(&a), outcome(&back))
    });
    t.finish(true);
}

/// Each xattr call and inode-flags ioctl through the descriptor of a removed file, one
/// result per step.
fn fd_attr_steps(fd: i32) -> Vec<String> {
    let name = |n: &str| std::ffi::CString::new(n).unwrap();
    let get = |n: &str| {
        let mut buf = [0u8; 64];
        let r = cvt(unsafe {
            libc::fgetxattr(fd, name(n).as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        });
        match r {
            Ok(len) => format!("{n}={:?}", String::from_utf8_lossy(&buf[..len as usize])),
            Err(e) => format!("{n}: {}", outcome_unit::<()>(&Err(e))),
        }
    };
    let list = || {
        let mut buf = [0u8; 256];
        match cvt(unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) }) {
            Ok(len) => {
                let mut names: Vec<_> = buf[..len as usize]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| String::from_utf8_lossy(n).into_owned())
                    .collect();
                names.sort();
                format!("list {names:?}")
            }
            Err(e) => format!("list: {}", outcome_unit::<()>(&Err(e))),
        }
    };
    let set =
        cvt(unsafe { libc::fsetxattr(fd, name("user.fd").as_ptr(), b"1".as_ptr().cast(), 1, 0) });
    let mut out = vec![format!("set {}", outcome_unit(&set))];
    out.extend([get("user.fd"), get("user.low"), list()]);
    let rm = cvt(unsafe { libc::fremovexattr(fd, name("user.fd").as_ptr()) });
    out.extend([format!("remove {}", outcome_unit(&rm)), list()]);
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    const FS_NOATIME_FL: libc::c_long = 0x80;
    let get_flags = || {
        let mut v: libc::c_long = 0;
        cvt(unsafe { libc::ioctl(fd, FS_IOC_GETFLAGS as _, &mut v) }).map(|_| v)
    };
    let shown = |r: io::Result<libc::c_long>| match r {
        Ok(v) => format!("noatime {}", v & FS_NOATIME_FL != 0),
        Err(e) => format!("flags: {}", outcome_unit::<()>(&Err(e))),
    };
    let before = get_flags();
    let set = before
        .as_ref()
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0)))
        .and_then(|v| {
            let mut v = v | FS_NOATIME_FL;
            cvt(unsafe { libc::ioctl(fd, FS_IOC_SETFLAGS as _, &mut v) })
        });
    out.extend([
        shown(before),
        format!("set noatime {}", outcome_unit(&set)),
        shown(get_flags()),
    ]);
    out
}

/// Extended attributes and inode flags read and written through the descriptor of a
/// removed file or directory reach it, as on the kernel overlay, whether it was a lower
/// file copied up by its open, an upper file or directory, or a lower file or directory
/// never copied up (which a write cannot copy up any more: EEXIST, ENOTDIR). They once
/// reached whatever held the old name: a whiteout (EPERM, an empty list, ENXIO for the
/// ioctls) or nothing (ENOENT).
#[test]
fn xattrs_and_flags_through_a_descriptor_of_a_removed_file_match_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-fd-xattr-removed",
        &[&[
            E::File("ro", b"r"),
            E::Xattr("ro", "user.low", b"l"),
            E::File("rw", b"w"),
            E::Xattr("rw", "user.low", b"l"),
            E::Dir("dl"),
            E::Xattr("dl", "user.low", b"l"),
        ]],
        &[E::File("up", b"u"), E::Dir("du")],
    );
    let dir = libc::O_RDONLY | libc::O_DIRECTORY;
    for (name, flags) in [
        ("ro", libc::O_RDONLY),
        ("rw", libc::O_RDWR),
        ("up", libc::O_RDWR),
        ("dl", dir),
        ("du", dir),
    ] {
        t.both(
            &format!("xattrs through a descriptor of removed {name}"),
            |r| {
                let f = open_fd(&r.join(name), flags, 0).unwrap();
                let un = if flags == dir {
                    fs::remove_dir(r.join(name))
                } else {
                    fs::remove_file(r.join(name))
                };
                let mut steps = vec![format!("remove {}", outcome_unit(&un))];
                steps.extend(fd_attr_steps(f.as_raw_fd()));
                steps
            },
        );
    }
    t.finish(true);
}

#[test]
fn open_files_survive_unlink_and_rename() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-open-unlink",
        &[&[E::File("f", b"lower data"), E::File("g", b"gg")]],
        &[E::File("u", b"upper data")],
    );
    t.both("read a lower file after unlinking it", |r| {
        let mut f = fs::File::open(r.join("f")).unwrap();
        let un = fs::remove_file(r.join("f"));
        let mut s = String::new();
        let rd = f.read_to_string(&mut s);
        (
            outcome_unit(&un),
            outcome_unit(&rd),
            s,
            f.metadata().map(|m| m.len()).ok(),
        )
    });
    t.both("write+read an upper file after unlinking it", |r| {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("u"))
            .unwrap();
        let un = fs::remove_file(r.join("u"));
        let w = f.write_all(b"UPPER");
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        let rd = f.read_to_string(&mut s);
        (outcome_unit(&un), outcome_unit(&w), outcome_unit(&rd), s)
    });
    t.both("fd follows a file in a renamed upper dir", |r| {
        let mk = fs::create_dir(r.join("n")).and_then(|_| fs::write(r.join("n/f"), b"nf"));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("n/f"))
            .unwrap();
        let rn = fs::rename(r.join("n"), r.join("n2"));
        let w = f.write_all_at(b"NF", 0);
        drop(f);
        (
            outcome_unit(&mk),
            outcome_unit(&rn),
            outcome_unit(&w),
            read_str(&r.join("n2/f")),
            names_or_err(&r.join("n2")),
        )
    });
    t.both("fd follows a renamed file", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("g"))
            .unwrap();
        let rn = fs::rename(r.join("g"), r.join("g2"));
        let w = f.write_all_at(b"G", 0);
        drop(f);
        (outcome_unit(&rn), outcome_unit(&w), read_str(&r.join("g2")))
    });
    t.finish(true);
}

#[test]
fn directory_attribute_changes_copy_up_the_directory() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-dir-attrs",
        &[&[
            E::File("d/x", b"x"),
            E::File("e/y", b"y"),
            E::File("g/z", b"z"),
            E::Xattr("g", "user.g", b"1"),
        ]],
        &[],
        |st| set_times(&st.lowers[0].join("e"), OLD_MTIME, OLD_MTIME).unwrap(),
    );
    t.both("chmod lower dir", |r| {
        outcome_unit(&fs::set_permissions(
            r.join("d"),
            fs::Permissions::from_mode(0o711),
        ))
    });
    t.both("chown lower dir", |r| {
        outcome_unit(&lchown(&r.join("g"), 5, 6))
    });
    t.both("mtime of a lower dir after chown of another", |r| {
        outcome(&mtime_of(&r.join("e")))
    });
    t.both("utimes lower dir", |r| {
        outcome_unit(&set_times(&r.join("e"), (1, 0), (1_500_000_000, 0)))
    });
    t.both("stat", |r| ["d", "e", "g"].map(|n| stat_str(&r.join(n))));
    t.both("mtime after utimes", |r| outcome(&mtime_of(&r.join("e"))));
    t.both("contents still merged", |r| {
        ["d", "e", "g"].map(|n| names_or_err(&r.join(n)))
    });
    t.finish(true);
}

#[test]
fn o_tmpfile_matches_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-tmpfile", &[&[E::Dir("d"), E::File("d/x", b"x")]], &[]);
    t.both("O_TMPFILE in a merged dir", |r| {
        let f = open_fd(&r.join("d"), libc::O_TMPFILE | libc::O_RDWR, 0o600);
        match f {
            Err(e) => vec![format!(
                "open: {}",
                errno_name(e.raw_os_error().unwrap_or(0))
            )],
            Ok(f) => {
                let w = f.write_all_at(b"tmp", 0);
                let l = link_open_file(f.as_raw_fd(), &r.join("d/linked"));
                vec![
                    "open: ok".into(),
                    outcome_unit(&w),
                    outcome_unit(&l),
                    read_str(&r.join("d/linked")),
                ]
            }
        }
    });
    t.finish(true);
}

/// O_TMPFILE's other cases, against the kernel: a file opened with O_EXCL cannot be given
/// a name; the link count goes from 0 to 1 when one is given; a name over a lower file's
/// whiteout; the umask and the set-group-ID rules of a new file; a closed unnamed file
/// leaves nothing in the upper layer or the workdir; a file in a lower-only directory
/// copies that directory up (and only that).
#[test]
fn o_tmpfile_corner_cases_match_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-tmpfile-corners",
        &[&[
            E::Dir("d"),
            E::File("d/x", b"x"),
            E::Dir("d/sub"),
            E::File("gone", b"lower"),
            E::Dir("g"),
        ]],
        &[],
    );
    let link = |f: &fs::File, to: &Path| outcome_unit(&link_open_file(f.as_raw_fd(), to));
    let nlink = |f: &fs::File| {
        f.metadata()
            .map(|m| m.nlink())
            .map_err(|e| errno_name(e.raw_os_error().unwrap_or(0)))
    };
    t.both("O_EXCL: never named", |r| {
        let f = open_fd(
            &r.join("d"),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_EXCL,
            0o600,
        )
        .expect("O_TMPFILE|O_EXCL");
        (
            nlink(&f),
            link(&f, &r.join("d/excl")),
            stat_str(&r.join("d/excl")),
        )
    });
    t.both("named over a whiteout, link count 0 then 1", |r| {
        let _ = fs::remove_file(r.join("gone"));
        let f = open_fd(r, libc::O_TMPFILE | libc::O_WRONLY, 0o644).expect("O_TMPFILE");
        let before = nlink(&f);
        let w = outcome_unit(&f.write_all_at(b"new", 0));
        let l = link(&f, &r.join("gone"));
        let same = fs::symlink_metadata(r.join("gone")).map(|m| m.ino()).ok()
            == f.metadata().map(|m| m.ino()).ok();
        (
            before,
            w,
            l,
            nlink(&f),
            same,
            read_str(&r.join("gone")),
            stat_str(&r.join("gone")),
        )
    });
    t.both("umask and set-group-ID", |r| {
        let old = unsafe { libc::umask(0o027) };
        let f = open_fd(&r.join("d/sub"), libc::O_TMPFILE | libc::O_RDWR, 0o2777);
        unsafe { libc::umask(old) };
        let f = f.expect("O_TMPFILE");
        let mode = f.metadata().map(|m| m.mode()).ok();
        (
            mode,
            link(&f, &r.join("d/sub/m")),
            stat_str(&r.join("d/sub/m")),
        )
    });
    t.both("closed without a name", |r| {
        let f = open_fd(&r.join("g"), libc::O_TMPFILE | libc::O_RDWR, 0o600).expect("O_TMPFILE");
        let w = outcome_unit(&f.write_all_at(&[7u8; 100_000], 0));
        drop(f);
        (w, names_or_err(&r.join("g")))
    });
    t.compare_views("after the unnamed files");
    t.finish_with(true, |_, f| {
        // The closed unnamed file's space is freed, and nothing of it is left behind.
        let left: Vec<_> = fs::read_dir(f.upper.join("g")).unwrap().collect();
        assert!(left.is_empty(), "upper g holds {left:?}");
        // (The shared whiteout that removals link to stays, as on the kernel.)
        let work: Vec<_> = fs::read_dir(f.work.join("work"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            work.iter().all(|n| n == "#whiteout"),
            "the workdir holds {work:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// More corner cases: cross-layer hard links, big merged dirs, odd names, ACLs, offsets
// ---------------------------------------------------------------------------------------

#[test]
fn hard_links_across_lower_layers() {
    if !fuse_available() {
        return;
    }
    // Container layers are often deduplicated with hard links between layers.
    let t = twin_with(
        "sem-xlayer-links",
        &[
            &[E::Dir("d0")],
            &[
                E::File("b", b"shared inode"),
                E::File("x", b"same name, same inode"),
                E::Dir("d1"),
            ],
        ],
        &[],
        |st| {
            fs::hard_link(st.lowers[1].join("b"), st.lowers[0].join("a")).unwrap();
            fs::hard_link(st.lowers[1].join("x"), st.lowers[0].join("x")).unwrap();
            fs::hard_link(st.lowers[1].join("b"), st.lowers[0].join("d0/c")).unwrap();
        },
    );
    t.both("view", |r| {
        (
            names_or_err(r),
            read_str(&r.join("a")),
            read_str(&r.join("b")),
            read_str(&r.join("x")),
            stat_str(&r.join("a")),
        )
    });
    t.both("stat b, then write through a", |r| {
        let _ = fs::symlink_metadata(r.join("b"));
        let _ = fs::symlink_metadata(r.join("d0/c"));
        let w = fs::OpenOptions::new()
            .append(true)
            .open(r.join("a"))
            .and_then(|mut f| f.write_all(b"+a"));
        (
            outcome_unit(&w),
            read_str(&r.join("a")),
            read_str(&r.join("b")),
            read_str(&r.join("d0/c")),
        )
    });
    t.both("unlink b, the other names stay", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("b"))),
            read_str(&r.join("a")),
            read_str(&r.join("d0/c")),
            outcome_unit(&fs::symlink_metadata(r.join("b"))),
        )
    });
    t.both("chmod d0/c", |r| {
        (
            outcome_unit(&fs::set_permissions(
                r.join("d0/c"),
                fs::Permissions::from_mode(0o600),
            )),
            stat_str(&r.join("d0/c")),
            read_str(&r.join("a")),
        )
    });
    t.finish(true);
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

#[test]
fn readdir_of_large_merged_dir_with_whiteouts_and_seekdir() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-readdir-merged-big",
        &[&[E::Dir("big")], &[E::Dir("big")]],
        &[E::Dir("big")],
        |st| {
            for i in 0..6000 {
                fs::write(st.lowers[1].join(format!("big/a{i:05}")), b"").unwrap();
            }
            for i in 3000..6000 {
                fs::write(st.lowers[0].join(format!("big/a{i:05}")), b"l0").unwrap();
            }
            for i in 0..2000 {
                fs::write(st.lowers[0].join(format!("big/b{i:05}")), b"").unwrap();
            }
            for i in (0..6000).step_by(7) {
                mknod(&st.upper.join(format!("big/a{i:05}")), libc::S_IFCHR, 0).unwrap();
            }
            for i in 0..1000 {
                fs::write(st.upper.join(format!("big/c{i:05}")), b"").unwrap();
            }
        },
    );
    t.both("names of the merged dir", |r| {
        let (problems, list) = readdir_check(&r.join("big"));
        (
            list.len(),
            problems
                .iter()
                .filter(|p| p.contains("more than once") || p.contains("lstat"))
                .cloned()
                .collect::<Vec<_>>(),
            list,
        )
    });
    t.both("telldir/seekdir", |r| check_seekdir(&r.join("big")));
    t.both("rm -rf while iterating", |r| {
        (
            outcome_unit(&fs::remove_dir_all(r.join("big"))),
            outcome_unit(&fs::symlink_metadata(r.join("big"))),
        )
    });
    t.finish(true);
}

/// READDIRPLUS with its stats shared with helper threads (`statahead=on`, used by
/// default when the layers' caches are cold) gives the same listing and attributes as the
/// kernel, before and after changes to the directory.
#[test]
fn listing_with_stat_ahead_matches_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin_with_opts(
        "sem-statahead",
        &[&[E::Dir("d")], &[E::Dir("d")]],
        &[E::Dir("d")],
        &["statahead=on"],
        |st| {
            let (l0, l1, up) = (
                st.lowers[0].join("d"),
                st.lowers[1].join("d"),
                st.upper.join("d"),
            );
            for i in 0..300 {
                fs::write(l1.join(format!("f{i:03}")), vec![b'x'; i]).unwrap();
            }
            for i in (0..300).step_by(3) {
                fs::write(l0.join(format!("f{i:03}")), b"l0").unwrap();
                chmod_nofollow_dir(&l0.join(format!("f{i:03}")), 0o600 + (i as u32 % 8)).unwrap();
            }
            for i in 0..40 {
                std::os::unix::fs::symlink(format!("f{i:03}"), l0.join(format!("s{i:02}")))
                    .unwrap();
                fs::create_dir(l1.join(format!("dir{i:02}"))).unwrap();
                fs::write(l1.join(format!("dir{i:02}/in")), b"in").unwrap();
                mkfifo(&l1.join(format!("p{i:02}")), 0o640).unwrap();
            }
            for i in (0..300).step_by(11) {
                mknod(&up.join(format!("f{i:03}")), libc::S_IFCHR, 0).unwrap();
            }
            for i in 0..50 {
                fs::write(up.join(format!("u{i:02}")), b"upper").unwrap();
            }
        },
    );
    let pid =
        t.fg.as_ref()
            .and_then(|g| g.pid())
            .expect("ovlfuse daemon pid");
    let list = |r: &Path| {
        let (problems, list) = readdir_check(&r.join("d"));
        let stats: Vec<String> = list
            .iter()
            .map(|(n, _)| stat_str(&r.join("d").join(n)))
            .collect();
        (problems, list, stats)
    };
    let (_, first, _) = t.both_ret("listing and stats", list);
    assert_eq!(first.len(), 300 - 28 + 40 * 3 + 50, "entries listed");
    t.both("changes", |r| {
        let d = r.join("d");
        let mut out = Vec::new();
        for i in (1..300).step_by(5) {
            out.push(outcome_unit(&fs::remove_file(d.join(format!("f{i:03}")))));
        }
        for i in 0..30 {
            out.push(outcome_unit(&fs::write(d.join(format!("new{i:02}")), b"n")));
        }
        for i in 0..20 {
            out.push(outcome_unit(&fs::rename(
                d.join(format!("f{:03}", 2 + i * 5)),
                d.join(format!("moved{i:02}")),
            )));
        }
        out.push(outcome_unit(&fs::remove_dir_all(d.join("dir07"))));
        out
    });
    t.both("listing and stats after the changes", list);
    let helpers: Vec<String> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("daemon threads")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("ovl-statahead"))
        .collect();
    assert!(
        !helpers.is_empty(),
        "no stat-ahead threads in the daemon with statahead=on"
    );
    t.finish(true);
}

#[test]
fn recursive_removal_of_a_merged_tree() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-rm-rf",
        &[
            &[
                E::File("tree/a/1", b"1"),
                E::File("tree/a/b/2", b"2"),
                E::Symlink("tree/l", "a"),
                E::Fifo("tree/a/p"),
            ],
            &[
                E::File("tree/a/3", b"3"),
                E::File("tree/c/d/e/4", b"4"),
                E::Opaque("tree/c/d"),
                E::File("tree/a/b/5", b"5"),
            ],
        ],
        &[
            E::File("tree/a/6", b"6"),
            E::Whiteout("tree/a/3"),
            E::Dir("tree/u/v"),
        ],
    );
    t.both("rm -rf tree", |r| {
        outcome_unit(&fs::remove_dir_all(r.join("tree")))
    });
    t.both("gone", |r| {
        (
            outcome_unit(&fs::symlink_metadata(r.join("tree"))),
            names_or_err(r),
        )
    });
    t.both("mkdir tree again is empty", |r| {
        (
            outcome_unit(&fs::create_dir(r.join("tree"))),
            names_or_err(&r.join("tree")),
        )
    });
    t.finish(true);
}

#[test]
fn odd_file_names() {
    if !fuse_available() {
        return;
    }
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let raw: Vec<&[u8]> = vec![
        b"sp ace",
        b"new\nline",
        b"tab\there",
        b"-dash",
        b"back\\slash",
        b"co:lon",
        b"com,ma",
        b"\xff\xfe-not-utf8",
        "ünïcödé".as_bytes(),
        b".hidden",
        b"...",
        b"wh.not-a-whiteout",
        b"*?[glob]",
        b"'quote\"",
    ];
    let t = twin_with("sem-odd-names", &[&[E::Dir("d")]], &[], |st| {
        for n in &raw {
            fs::write(st.lowers[0].join("d").join(OsStr::from_bytes(n)), n).unwrap();
        }
    });
    let list = |r: &Path, d: &str| -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = read_dir_raw(&r.join(d))
            .map(|es| {
                es.into_iter()
                    .map(|e| e.name.as_bytes().to_vec())
                    .filter(|n| n != b"." && n != b"..")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    t.both("lower names listed", |r| list(r, "d"));
    t.both("create the same names in a new dir", |r| {
        let mk = fs::create_dir(r.join("n"));
        let res: Vec<String> = raw
            .iter()
            .map(|n| outcome_unit(&fs::write(r.join("n").join(OsStr::from_bytes(n)), n)))
            .collect();
        (outcome_unit(&mk), res, list(r, "n"))
    });
    t.both("read, rename and unlink lower odd names", |r| {
        raw.iter()
            .map(|n| {
                let p = r.join("d").join(OsStr::from_bytes(n));
                let content = fs::read(&p).map(|c| c == *n);
                let q = r
                    .join("d")
                    .join(OsStr::from_bytes(&[n, &b".renamed"[..]].concat()));
                let rn = fs::rename(&p, &q);
                let un = fs::remove_file(&q);
                format!(
                    "{} {} {}",
                    outcome(&content),
                    outcome_unit(&rn),
                    outcome_unit(&un)
                )
            })
            .collect::<Vec<_>>()
    });
    t.finish(true);
}

#[test]
fn dot_wh_names_cannot_be_created_through_the_mount() {
    if !fuse_available() {
        return;
    }
    // A documented difference from the kernel (README): ovlfuse reads `.wh.NAME` in layers as
    // OCI whiteouts, so it refuses to create such names (EPERM) instead of writing a file that
    // would read back as a whiteout. The kernel would create plain files.
    let sc = Scratch::new("sem-dot-wh");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[
            E::File("foo", b"lower foo"),
            E::Dir("d"),
            E::File("d/bar", b"bar"),
        ],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    expect_errno(
        fs::write(m.join(".wh.foo"), b"x"),
        libc::EPERM,
        "create .wh.foo",
    );
    expect_errno(
        fs::write(m.join("d/.wh..wh..opq"), b"x"),
        libc::EPERM,
        "create d/.wh..wh..opq",
    );
    expect_errno(
        fs::create_dir(m.join(".wh.dir")),
        libc::EPERM,
        "mkdir .wh.dir",
    );
    expect_errno(
        std::os::unix::fs::symlink("foo", m.join(".wh.sym")),
        libc::EPERM,
        "symlink .wh.sym",
    );
    expect_errno(
        fs::rename(m.join("foo"), m.join(".wh.foo2")),
        libc::EPERM,
        "rename to .wh.foo2",
    );
    expect_errno(
        fs::hard_link(m.join("foo"), m.join(".wh.foo3")),
        libc::EPERM,
        "link to .wh.foo3",
    );
    assert_eq!(read_str(&m.join("foo")), "lower foo");
    assert_eq!(names_or_err(m), Ok(vec!["d".into(), "foo".into()]));
    assert_eq!(names_or_err(&m.join("d")), Ok(vec!["bar".into()]));
    g.unmount();
    assert_eq!(
        names_or_err(&st.upper),
        Ok(vec![]),
        "nothing may have been written to upper"
    );
    lc.verify();
}

#[test]
fn paths_through_symlinked_directories() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-symlinked-dirs",
        &[&[
            E::File("real/f", b"real f"),
            E::Symlink("link", "real"),
            E::Symlink("loop1", "loop2"),
            E::Symlink("loop2", "loop1"),
            E::Symlink("dangling", "nowhere"),
        ]],
        &[],
    );
    t.both("read through a symlinked dir", |r| {
        read_str(&r.join("link/f"))
    });
    t.both("write through a symlinked dir", |r| {
        (
            outcome_unit(&write_at(&r.join("link/f"), 0, b"R")),
            read_str(&r.join("real/f")),
        )
    });
    t.both("create through a symlinked dir", |r| {
        (
            outcome_unit(&fs::write(r.join("link/new"), b"n")),
            names_or_err(&r.join("real")),
        )
    });
    t.both("symlink loop", |r| {
        outcome_unit(&fs::metadata(r.join("loop1")))
    });
    t.both("dangling", |r| {
        (
            outcome_unit(&fs::metadata(r.join("dangling"))),
            outcome_unit(&fs::write(r.join("dangling"), b"d")),
        )
    });
    t.both("view after creating through dangling symlink", |r| {
        (names_or_err(r), read_str(&r.join("nowhere")))
    });
    t.finish(true);
}

#[test]
fn offsets_beyond_4_gib() {
    if !fuse_available() {
        return;
    }
    const G5: u64 = 5 << 30;
    let t = twin("sem-5gib", &[&[E::File("low", b"lower")]], &[]);
    t.both("pwrite at 5 GiB in a new file", |r| {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(r.join("huge"))
            .unwrap();
        let w = f.write_all_at(b"FAR", G5);
        let mut b = [0u8; 3];
        let rd = f.read_exact_at(&mut b, G5);
        (
            outcome_unit(&w),
            outcome_unit(&rd),
            b,
            f.metadata().map(|m| m.len()).ok(),
        )
    });
    t.both("extend a lower file to 5 GiB and write at the end", |r| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(r.join("low"))
            .unwrap();
        let e = f.set_len(G5);
        let w = f.write_all_at(b"END", G5 - 3);
        let mut b = [0u8; 5];
        let rd = f.read_exact_at(&mut b, 0);
        (
            outcome_unit(&e),
            outcome_unit(&w),
            outcome_unit(&rd),
            b,
            fs::metadata(r.join("low")).map(|m| m.len()).ok(),
        )
    });
    t.both("sizes", |r| ["huge", "low"].map(|n| stat_str(&r.join(n))));
    t.both("remove the big files", |r| {
        (
            outcome_unit(&fs::remove_file(r.join("huge"))),
            outcome_unit(&fs::remove_file(r.join("low"))),
        )
    });
    t.finish(true);
}

#[test]
fn fsync_and_fdatasync_on_files_and_directories() {
    if !fuse_available() {
        return;
    }
    let t = twin("sem-fsync", &[&[E::File("f", b"f"), E::Dir("d")]], &[]);
    t.both("fsync", |r| {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(r.join("f"))
            .unwrap();
        let a = (&f).write_all(b"F").and_then(|_| f.sync_all());
        let b = f.sync_data();
        let ro = fs::File::open(r.join("f")).unwrap().sync_all();
        let d = fs::File::open(r.join("d")).and_then(|d| d.sync_all());
        let root = fs::File::open(r).and_then(|d| d.sync_all());
        [a, b, ro, d, root].map(|x| outcome_unit(&x))
    });
    t.finish(true);
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

#[test]
fn a_default_acl_on_the_workdir_reaches_no_copy() {
    if !fuse_available() {
        return;
    }
    // default: user::rwx group::r-x other::rwx. Copies are built in workdir/work; had they
    // inherited it, a copied-up directory would pass `other::rwx` on to what is made in it.
    let t = twin_with(
        "sem-workdir-acl",
        &[&[
            E::File("f", b"f"),
            E::Mode("f", 0o600),
            E::File("d/x", b"x"),
            E::Mode("d", 0o755),
        ]],
        &[],
        |st| {
            let dflt = acl(&[(1, 7, u32::MAX), (4, 5, u32::MAX), (0x20, 7, u32::MAX)]);
            lsetxattr(&st.work, "system.posix_acl_default", &dflt).unwrap();
        },
    );
    t.both("copy-ups and new objects", |r| {
        let made = [
            outcome_unit(&write_at(&r.join("f"), 1, b"+")),
            outcome_unit(&fs::create_dir(r.join("d/new"))),
            outcome_unit(&fs::write(r.join("d/newfile"), b"n")),
        ];
        let shown = ["f", "d", "d/new", "d/newfile"].map(|p| {
            let p = r.join(p);
            (
                stat_str(&p),
                outcome(&lgetxattr(&p, "system.posix_acl_access")),
                outcome(&lgetxattr(&p, "system.posix_acl_default")),
            )
        });
        (made, shown)
    });
    t.finish_with(true, |k, f| {
        for st in [k, f] {
            let w = st.work.join("work");
            assert_eq!(
                outcome(&lgetxattr(&w, "system.posix_acl_default")),
                "err: ENODATA (61)",
                "{w:?} keeps no default ACL"
            );
        }
        let mode = |st: &Stack| fs::metadata(st.work.join("work")).unwrap().mode() & 0o7777;
        assert_eq!(
            mode(f),
            mode(k),
            "mode of work/work: ovlfuse (left), kernel (right)"
        );
    });
}

#[test]
fn posix_acls_are_visible_copied_up_and_enforced() {
    if !fuse_available() {
        return;
    }
    const U: u32 = u32::MAX;
    const NOBODY: u32 = 65534;
    // user::rw- user:65534:r-- group::--- mask::r-- other::---
    let file_acl = acl(&[
        (1, 6, U),
        (2, 4, NOBODY),
        (4, 0, U),
        (0x10, 4, U),
        (0x20, 0, U),
    ]);
    // default: user::rwx user:65534:rwx group::r-x mask::rwx other::---
    let dir_default = acl(&[
        (1, 7, U),
        (2, 7, NOBODY),
        (4, 5, U),
        (0x10, 7, U),
        (0x20, 0, U),
    ]);
    let fa = file_acl.clone();
    let dd = dir_default.clone();
    let t = twin_with(
        "sem-acl",
        &[&[
            E::File("acl", b"acl protected"),
            E::Mode("acl", 0o640),
            E::Dir("dd"),
            E::Mode("dd", 0o770),
        ]],
        &[],
        move |st| {
            lsetxattr(&st.lowers[0].join("acl"), "system.posix_acl_access", &fa)
                .expect("ext4 without ACL support?");
            lsetxattr(&st.lowers[0].join("dd"), "system.posix_acl_default", &dd).unwrap();
            lsetxattr(
                &st.lowers[0].join("dd"),
                "system.posix_acl_access",
                &acl(&[
                    (1, 7, U),
                    (2, 7, NOBODY),
                    (4, 7, U),
                    (0x10, 7, U),
                    (0x20, 0, U),
                ]),
            )
            .unwrap();
        },
    );
    t.both("getxattr access ACL through the mount", |r| {
        outcome(&lgetxattr(&r.join("acl"), "system.posix_acl_access"))
    });
    t.both("getxattr default ACL of a dir", |r| {
        outcome(&lgetxattr(&r.join("dd"), "system.posix_acl_default"))
    });
    t.both("ACL grants the named user read access", |r| {
        run_as(
            NOBODY,
            NOBODY,
            &[
                Op::Open(cpath(&r.join("acl")), libc::O_RDONLY),
                Op::Open(cpath(&r.join("acl")), libc::O_WRONLY),
                Op::Open(cpath(&r.join("dd/new")), libc::O_CREAT | libc::O_WRONLY),
            ],
        )
    });
    t.both("new file inherits the default ACL", |r| {
        outcome(&lgetxattr(&r.join("dd/new"), "system.posix_acl_access"))
    });
    t.both("copy-up keeps the ACL", |r| {
        (
            outcome_unit(&lsetxattr(&r.join("acl"), "user.x", b"1")),
            outcome(&lgetxattr(&r.join("acl"), "system.posix_acl_access")),
        )
    });
    t.finish_with(true, |k, f| {
        for (who, st) in [("kernel", k), ("ovlfuse", f)] {
            assert_eq!(
                lgetxattr(&st.upper.join("acl"), "system.posix_acl_access")
                    .ok()
                    .as_deref(),
                Some(&file_acl[..]),
                "{who}: ACL of the copied-up file in upper"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Error codes, attribute freshness, node lifetime
// ---------------------------------------------------------------------------------------

fn lsetxattr_flags(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (cp, cn) = (cpath(p), std::ffi::CString::new(name).unwrap());
    cvt(unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
    .map(|_| ())
}

#[test]
fn error_codes_match_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-errno",
        &[&[
            E::File("f", b"file"),
            E::File("d/x", b"x"),
            E::Dir("e"),
            E::Symlink("s", "f"),
            E::Fifo("p"),
            E::Xattr("f", "user.have", b"1"),
        ]],
        &[E::File("u/y", b"y"), E::Dir("v"), E::File("w/z", b"z")],
    );
    t.both("error matrix", |r| {
        let j = |p: &str| r.join(p);
        let mut v: Vec<(&str, String)> = Vec::new();
        v.push((
            "mkdir over lower file",
            outcome_unit(&fs::create_dir(j("f"))),
        ));
        v.push((
            "mkdir over lower dir",
            outcome_unit(&fs::create_dir(j("d"))),
        ));
        v.push(("rmdir a file", outcome_unit(&fs::remove_dir(j("f")))));
        v.push(("unlink a dir", outcome_unit(&fs::remove_file(j("d")))));
        v.push((
            "open dir O_WRONLY",
            outcome_unit(&open_fd(&j("d"), libc::O_WRONLY, 0)),
        ));
        v.push((
            "open file O_DIRECTORY",
            outcome_unit(&open_fd(&j("f"), libc::O_RDONLY | libc::O_DIRECTORY, 0)),
        ));
        v.push((
            "open missing",
            outcome_unit(&open_fd(&j("missing"), libc::O_RDONLY, 0)),
        ));
        v.push((
            "O_CREAT|O_EXCL on lower file",
            outcome_unit(&open_fd(
                &j("f"),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            )),
        ));
        v.push((
            "O_CREAT|O_EXCL on lower symlink",
            outcome_unit(&open_fd(
                &j("s"),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            )),
        ));
        v.push((
            "O_NOFOLLOW on symlink",
            outcome_unit(&open_fd(&j("s"), libc::O_RDONLY | libc::O_NOFOLLOW, 0)),
        ));
        v.push((
            "rename dir over file",
            outcome_unit(&fs::rename(j("v"), j("f"))),
        ));
        v.push((
            "rename file over non-empty dir",
            outcome_unit(&fs::rename(j("f"), j("u"))),
        ));
        v.push((
            "rename dir over non-empty dir",
            outcome_unit(&fs::rename(j("v"), j("w"))),
        ));
        v.push((
            "rename dir into itself",
            outcome_unit(&fs::rename(j("u"), j("u/sub"))),
        ));
        v.push((
            "rename below a file",
            outcome_unit(&fs::rename(j("e"), j("f/x"))),
        ));
        v.push(("link a dir", outcome_unit(&fs::hard_link(j("d"), j("d2")))));
        v.push((
            "link onto existing",
            outcome_unit(&fs::hard_link(j("f"), j("s"))),
        ));
        v.push((
            "symlink onto existing",
            outcome_unit(&std::os::unix::fs::symlink("x", j("d"))),
        ));
        v.push(("readlink of dir", outcome_unit(&fs::read_link(j("d")))));
        v.push((
            "lookup below a file",
            outcome_unit(&fs::symlink_metadata(j("f/x"))),
        ));
        v.push((
            "rmdir non-empty upper dir",
            outcome_unit(&fs::remove_dir(j("u"))),
        ));
        v.push((
            "unlink missing",
            outcome_unit(&fs::remove_file(j("missing"))),
        ));
        v.push((
            "getxattr missing",
            outcome_unit(&lgetxattr(&j("f"), "user.nope")),
        ));
        v.push((
            "setxattr XATTR_CREATE existing",
            outcome_unit(&lsetxattr_flags(
                &j("f"),
                "user.have",
                b"2",
                libc::XATTR_CREATE,
            )),
        ));
        v.push((
            "setxattr XATTR_REPLACE missing",
            outcome_unit(&lsetxattr_flags(
                &j("f"),
                "user.nope",
                b"2",
                libc::XATTR_REPLACE,
            )),
        ));
        v.push((
            "setxattr bad namespace",
            outcome_unit(&lsetxattr(&j("f"), "bogus.x", b"1")),
        ));
        v.push(("mknod over existing", outcome_unit(&mkfifo(&j("f"), 0o644))));
        v.push((
            "truncate a dir",
            outcome_unit(&{
                let c = cpath(&j("d"));
                cvt(unsafe { libc::truncate(c.as_ptr(), 0) })
            }),
        ));
        let fr = fs::File::open(j("f")).unwrap();
        v.push(("write to O_RDONLY fd", outcome_unit(&(&fr).write(b"x"))));
        v.push(("ftruncate O_RDONLY fd", outcome_unit(&fr.set_len(0))));
        let dfd = fs::File::open(j("d")).unwrap();
        v.push(("read a dir fd", outcome_unit(&(&dfd).read(&mut [0u8; 8]))));
        let pf = open_fd(&j("p"), libc::O_RDWR | libc::O_NONBLOCK, 0);
        v.push(("open fifo O_RDWR", outcome_unit(&pf)));
        if let Ok(pf) = &pf {
            v.push(("lseek on fifo", outcome_unit(&lseek(pf, 0, libc::SEEK_SET))));
            let mut w: &fs::File = pf;
            let wr = w.write_all(b"via fifo");
            let mut b = [0u8; 8];
            let rd = w
                .read_exact(&mut b)
                .map(|_| String::from_utf8_lossy(&b).into_owned());
            v.push((
                "fifo write+read",
                format!("{} {}", outcome_unit(&wr), outcome(&rd)),
            ));
        }
        v.push(("rmdir mount root", outcome_unit(&fs::remove_dir(r))));
        v.into_iter()
            .map(|(a, b)| format!("{a}: {b}"))
            .collect::<Vec<_>>()
    });
    // Not comparing uppers: the kernel marks a pure-upper dir opaque before a dir rename
    // into a merged parent even when the rename then fails (ENOTDIR/ENOTEMPTY), an invisible
    // side effect ovlfuse need not copy.
    t.finish(false);
}

#[test]
fn attributes_follow_writes_and_changes() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-attr-fresh",
        &[&[E::File("f", b"0123456789"), E::File("g", b"g")]],
        &[],
        |st| {
            set_times(&st.lowers[0].join("f"), OLD_MTIME, OLD_MTIME).unwrap();
        },
    );
    t.both(
        "size and mtime seen by path while the writer keeps the fd open",
        |r| {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join("f"))
                .unwrap();
            f.write_all_at(&[b'x'; 100], 50).unwrap();
            let s1 = fs::metadata(r.join("f"))
                .map(|m| (m.len(), (m.mtime(), m.mtime_nsec()) != OLD_MTIME))
                .ok();
            f.set_len(20).unwrap();
            let s2 = fs::metadata(r.join("f")).map(|m| m.len()).ok();
            let fst = f.metadata().map(|m| m.len()).ok();
            (s1, s2, fst)
        },
    );
    t.both("ctime moves on chmod", |r| {
        let before = fs::metadata(r.join("g")).unwrap();
        let c0 = (before.ctime(), before.ctime_nsec());
        std::thread::sleep(std::time::Duration::from_millis(20)); // let the clock tick, not synchronization
        fs::set_permissions(r.join("g"), fs::Permissions::from_mode(0o600)).unwrap();
        let after = fs::metadata(r.join("g")).unwrap();
        (
            (after.ctime(), after.ctime_nsec()) > c0,
            after.mode() & 0o7777,
        )
    });
    t.both("utimensat UTIME_OMIT / UTIME_NOW", |r| {
        let c = cpath(&r.join("g"));
        let ts = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: 1_234_567_890,
                tv_nsec: 5,
            },
        ];
        let a = cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) });
        let m = mtime_of(&r.join("g")).ok();
        let ts2 = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        ];
        let b = cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts2.as_ptr(), 0) });
        (
            outcome_unit(&a),
            m,
            outcome_unit(&b),
            mtime_of(&r.join("g")).ok(),
        )
    });
    t.both("dir mtime changes when an entry is created", |r| {
        let d0 = mtime_of(r).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20)); // let the clock tick
        fs::write(r.join("new"), b"n").unwrap();
        mtime_of(r).unwrap() > d0
    });
    t.finish(true);
}

fn drop_kernel_caches() {
    // 2 = dentries and inodes: the FUSE client forgets its nodes (FUSE_FORGET).
    fs::write("/proc/sys/vm/drop_caches", b"2")
        .expect("write /proc/sys/vm/drop_caches (needs root)");
}

/// Held by each test that drops the kernel's caches. Dropping them makes every mount
/// forget its nodes, so one such test running beside another would skew what the other
/// measures (the memory test's RSS before its own drop).
static CACHE_DROPPERS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[test]
fn forgotten_nodes_come_back_with_the_same_identity() {
    if !fuse_available() {
        return;
    }
    let _alone = CACHE_DROPPERS.lock();
    let sc = Scratch::new("sem-forget");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File("a", b"a"),
            E::File("d/b", b"b"),
            E::Hardlink("a", "d/a2"),
            E::Symlink("s", "a"),
        ],
    );
    build(
        &st.lowers[1],
        &[E::File("d/c", b"c"), E::File("low1", b"l")],
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    ok(fs::write(m.join("new"), b"new"), "create");
    ok(write_at(&m.join("d/c"), 0, b"C"), "copy-up d/c");
    ok(fs::rename(m.join("low1"), m.join("d/low1")), "rename");
    let held = ok(fs::File::open(m.join("d/b")), "open d/b");
    ok(fs::remove_file(m.join("d/b")), "unlink an open file");
    let names = ["", "a", "d", "d/a2", "s", "d/c", "d/low1", "new"];
    let before: Vec<(u64, u64, String)> = names
        .iter()
        .map(|n| {
            let md = ok(fs::symlink_metadata(m.join(n)), n);
            (
                md.ino(),
                md.nlink(),
                if md.is_file() {
                    read_str(&m.join(n))
                } else {
                    String::new()
                },
            )
        })
        .collect();
    let view = snapshot(m, XattrSel::User);
    for round in 0..3 {
        drop_kernel_caches();
        let after: Vec<(u64, u64, String)> = names
            .iter()
            .map(|n| {
                let md = ok(
                    fs::symlink_metadata(m.join(n)),
                    &format!("round {round}: stat {n} after drop_caches"),
                );
                (
                    md.ino(),
                    md.nlink(),
                    if md.is_file() {
                        read_str(&m.join(n))
                    } else {
                        String::new()
                    },
                )
            })
            .collect();
        assert_eq!(after, before, "round {round}: (ino, nlink, contents) of {names:?} changed after the kernel forgot its nodes");
        assert_same_snapshots(
            &format!("round {round}: view after drop_caches"),
            "before",
            &view,
            "after",
            &snapshot(m, XattrSel::User),
        );
        let mut s = String::new();
        (&held).read_to_string(&mut s).ok();
        let _ = s;
        let mut b = [0u8; 1];
        ok(
            held.read_at(&mut b, 0),
            "read an unlinked open file after drop_caches",
        );
        assert_eq!(&b, b"b");
    }
    drop(held);
    g.unmount();
    lc.verify();
}

/// The daemon's open descriptors.
fn open_fds(pid: u32) -> usize {
    ok(
        fs::read_dir(format!("/proc/{pid}/fd")),
        "list the daemon's fds",
    )
    .count()
}

/// Over io_uring, FORGETs still come on /dev/fuse, where the daemon lets them pile up
/// for a moment before it takes them (issue 6: one wake-up per batch, not per FORGET).
/// They must still all be taken: each removed file's node holds a descriptor to it until
/// its FORGET, so the daemon's descriptors must fall back once the files are gone.
#[test]
fn removed_files_are_forgotten_while_requests_come_over_io_uring() {
    if !fuse_uring_available() {
        return;
    }
    const FILES: usize = 300;
    let sc = Scratch::new("sem-uring-forget");
    let st = Stack::new(&sc, 1);
    lower_dir_of_empty_files(&st, FILES);
    let g = mount_ovlfuse(&st, &["uring=on"]);
    let pid = g.pid().expect("the daemon's pid");
    let m = &st.mnt;
    // The daemon returns once the mount exists; the ring threads start while it answers
    // INIT, which the first request waits for, and name themselves once running.
    ok(fs::metadata(m), "stat the mount");
    let rings = || {
        ok(
            fs::read_dir(format!("/proc/{pid}/task")),
            "list the daemon's threads",
        )
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.starts_with("ring"))
        .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rings() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        rings() > 0,
        "uring=on, yet the daemon has no io_uring threads 10 s after its first answer"
    );
    ok(fs::create_dir(m.join("new")), "mkdir new");
    ok(fs::read_dir(m.join("big")), "list big");
    let before = open_fds(pid);
    for i in 0..FILES {
        ok(fs::write(m.join(format!("new/{i}")), b"x"), "create");
    }
    for i in 0..FILES {
        ok(
            fs::remove_file(m.join(format!("new/{i}"))),
            "unlink an upper file",
        );
        ok(
            fs::remove_file(m.join(format!("big/entry-{i:06}"))),
            "unlink a lower file",
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // A few more may stay open: the directories' fds kept for later requests (`big` now
    // has an upper copy too).
    let slack = 8;
    let mut now = open_fds(pid);
    while now > before + slack && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        now = open_fds(pid);
    }
    assert!(
        now <= before + slack,
        "10 s after removing {} files the daemon still holds {now} fds ({before} before): \
         their FORGETs were not taken",
        2 * FILES
    );
    assert_eq!(ok(fs::read_dir(m.join("new")), "list new").count(), 0);
    assert_eq!(ok(fs::read_dir(m.join("big")), "list big").count(), 0);
    g.unmount();
}

/// The number on the `key:` line of /proc/PID/FILE (a trailing "kB" dropped).
fn proc_number(pid: u32, file: &str, key: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/{file}: {}", describe_err(&e)));
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/{file}"))
}

fn rss_kib(pid: u32) -> u64 {
    proc_number(pid, "status", "VmRSS")
}

/// Memory stays bounded across FORGETs (issue 6): each cycle looks up every file of a
/// 30k-entry lower directory (a node each), creates and removes 1000 files, then has the
/// kernel forget its inodes. The daemon must give the nodes' memory back each time, and
/// not creep up from cycle to cycle.
#[test]
fn daemon_memory_stays_bounded_over_forget_cycles() {
    if !fuse_available() {
        return;
    }
    const FILES: usize = 30_000;
    let _alone = CACHE_DROPPERS.lock();
    let sc = Scratch::new("sem-soak");
    let st = Stack::new(&sc, 1);
    lower_dir_of_empty_files(&st, FILES);
    let g = mount_ovlfuse(&st, &[]);
    let pid = g.pid().expect("the daemon's pid (for its RSS)");
    let m = &st.mnt;
    let (mut after_work, mut after_forget) = (Vec::new(), Vec::new());
    for cycle in 0..6 {
        let mut n = 0;
        for e in ok(fs::read_dir(m.join("big")), "readdir big") {
            ok(fs::symlink_metadata(ok(e, "dirent").path()), "stat a file");
            n += 1;
        }
        assert_eq!(n, FILES, "cycle {cycle}: entries of big");
        let t = m.join(format!("new{cycle}"));
        ok(fs::create_dir(&t), "mkdir");
        for i in 0..1000 {
            ok(fs::File::create(t.join(i.to_string())), "create");
        }
        ok(fs::remove_dir_all(&t), "rm -r");
        after_work.push(rss_kib(pid));
        drop_kernel_caches();
        // The kernel queues its FORGETs; give the daemon a moment to take them.
        std::thread::sleep(std::time::Duration::from_millis(700));
        after_forget.push(rss_kib(pid));
    }
    g.unmount();
    eprintln!("RSS KiB after work {after_work:?}, after forget {after_forget:?}");
    assert!(
        after_forget[0] + 2048 < after_work[0],
        "forgetting {FILES} nodes gave back less than 2 MiB: {} KiB after the work, \
         {} KiB after the forget",
        after_work[0],
        after_forget[0]
    );
    let worst = after_forget[1..].iter().max().copied().unwrap_or(0);
    assert!(
        worst <= after_forget[0] + 3072,
        "RSS after a forget crept up by more than 3 MiB over {} cycles: {after_forget:?}",
        after_forget.len()
    );
}

/// Bytes the process has read with read(2)-like calls (`rchar` in /proc/PID/io); FUSE
/// requests it takes from /dev/fuse count too, but they are small.
fn rchar(pid: u32) -> u64 {
    proc_number(pid, "io", "rchar")
}

/// On a read-only overlay nothing is ever copied up, so lower files are opened with FUSE
/// passthrough (issue 6: data rows): the kernel reads them itself, through read(2), pread
/// and mmap alike, and the daemon reads none of their bytes. Needs root and a kernel with
/// FUSE passthrough (6.9 or later), as this machine has.
#[test]
fn read_only_mount_reads_lower_files_in_the_kernel() {
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 4 << 20;
    let sc = Scratch::new("sem-ro-passthrough");
    let st = Stack::new(&sc, 2);
    let mut data = vec![0u8; SIZE];
    let mut x: u32 = 12345;
    for b in data.iter_mut() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    ok(
        fs::write(st.lowers[1].join("data"), &data),
        "write lower file",
    );
    // Passthrough as the daemon decides, whatever OVLFUSE_TEST_DATA asks of other mounts.
    let g = mount_ovlfuse_ro(&st.lowers, &st.mnt, &["passthrough=auto"]);
    let pid = g.pid().expect("the daemon's pid (for its read counter)");
    let before = rchar(pid);
    let f = st.mnt.join("data");
    assert!(
        ok(fs::read(&f), "read through the mount") == data,
        "read(2) content"
    );
    let h = ok(fs::File::open(&f), "open");
    let mut buf = vec![0u8; 4096];
    ok(h.read_exact_at(&mut buf, 3 << 20), "pread");
    assert_eq!(buf, data[3 << 20..(3 << 20) + 4096], "pread content");
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            h.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        map,
        libc::MAP_FAILED,
        "mmap: {}",
        io::Error::last_os_error()
    );
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, SIZE) } == &data[..];
    unsafe { libc::munmap(map, SIZE) };
    assert!(mapped, "mmap content");
    drop(h);
    let daemon_read = rchar(pid) - before;
    g.unmount();
    assert!(
        daemon_read < 1 << 20,
        "the daemon read {daemon_read} bytes while a {SIZE}-byte lower file was read through \
         a read-only mount: its reads did not go through FUSE passthrough (is the kernel \
         older than 6.9, or built without CONFIG_FUSE_PASSTHROUGH?)"
    );
}

/// Write calls the process has made (`syscw` in /proc/PID/io): our pwrites to the layers,
/// and our replies where they go to /dev/fuse.
fn write_calls(pid: u32) -> u64 {
    proc_number(pid, "io", "syscw")
}

/// Without passthrough (a daemon that is not root in the initial user namespace, or
/// `passthrough=off`), the kernel caches writes (FUSE writeback cache): 2000 writes of
/// 4 KiB reach the daemon as a few large ones, and after fsync the upper file holds them.
/// With `writeback=0` each write is a request of its own, which shows the count measures
/// what it should.
#[test]
fn small_writes_reach_the_daemon_in_batches_without_passthrough() {
    if !fuse_available() {
        return;
    }
    const N: usize = 2000;
    let data: Vec<u8> = (0..N * 4096).map(|i| (i % 253) as u8).collect();
    let mut calls = Vec::new();
    for writeback in ["writeback=1", "writeback=0"] {
        let sc = Scratch::new(&format!("sem-{}", writeback.replace('=', "")));
        let st = Stack::new(&sc, 1);
        let g = mount_ovlfuse(&st, &["passthrough=off", writeback]);
        let pid = g.pid().expect("the daemon's pid (for its write counter)");
        let mut f = ok(fs::File::create(st.mnt.join("f")), "create f");
        let before = write_calls(pid);
        for chunk in data.chunks(4096) {
            ok(f.write_all(chunk), "write 4 KiB");
        }
        ok(f.sync_all(), "fsync");
        calls.push(write_calls(pid) - before);
        drop(f);
        assert!(
            ok(fs::read(st.upper.join("f")), "read the upper file") == data,
            "{writeback}: the upper file does not hold what was written"
        );
        g.unmount();
    }
    assert!(
        calls[0] < (N / 10) as u64,
        "with the writeback cache the daemon made {} write calls for {N} writes of 4 KiB",
        calls[0]
    );
    assert!(
        calls[1] >= N as u64,
        "with writeback=0 the daemon made only {} write calls for {N} writes",
        calls[1]
    );
}

/// A listing given with names only (`listattrs=off`; by default, that of a big directory
/// whose entries the layers' caches lack) shows what one with attributes shows: the same
/// names and types, and as each entry's d_ino the st_ino a stat of it then gives; over
/// /dev/fuse and over io_uring alike. Which one went out shows when a lower file changes
/// behind the mount's back after the listing: a stat then gives the attributes the listing
/// left in the kernel's cache, or what the lookup it needs finds.
#[test]
fn listings_with_names_only_show_what_listings_with_attributes_show() {
    if !fuse_available() {
        return;
    }
    const N: usize = 300;
    let mut shown = Vec::new();
    let mut runs = vec![
        (["uring=off", "listattrs=on"], false),
        (["uring=off", "listattrs=off"], true),
    ];
    if fuse_uring_available() {
        runs.push((["uring=on", "listattrs=on"], false));
        runs.push((["uring=on", "listattrs=off"], true));
    }
    for (opts, names_only) in runs {
        let what = opts.join(",");
        let sc = Scratch::new(&format!("sem-names-only-{}", shown.len()));
        let st = Stack::new(&sc, 1);
        let d = st.lowers[0].join("d");
        ok(fs::create_dir_all(d.join("sub")), "mkdir lower d/sub");
        ok(std::os::unix::fs::symlink("f1", d.join("link")), "symlink");
        for i in 0..N {
            ok(
                fs::write(d.join(format!("f{i}")), vec![b'x'; i]),
                "write a lower file",
            );
        }
        ok(
            fs::set_permissions(d.join("f7"), fs::Permissions::from_mode(0o640)),
            "chmod",
        );
        let g = mount_ovlfuse(&st, &opts);
        let md = st.mnt.join("d");
        // Copied up with a new name, so that the listing merges two layers.
        ok(fs::write(md.join("new"), b"upper"), "create d/new");
        let mut list = Vec::new();
        for e in ok(fs::read_dir(&md), "list d") {
            let e = ok(e, "read a listing line");
            let kind = ok(e.file_type(), "d_type");
            list.push((e.file_name().to_string_lossy().into_owned(), e.ino(), kind));
        }
        ok(
            fs::set_permissions(d.join("f7"), fs::Permissions::from_mode(0o600)),
            "chmod lower",
        );
        for (name, ino, kind) in &list {
            let m = ok(fs::symlink_metadata(md.join(name)), "lstat a listed name");
            assert_eq!(m.ino(), *ino, "{what}: d_ino of {name} is not its st_ino");
            assert_eq!(m.file_type(), *kind, "{what}: d_type of {name}");
            if let Some(i) = name.strip_prefix('f').and_then(|i| i.parse::<u64>().ok()) {
                assert_eq!(m.len(), i, "{what}: size of {name}");
            }
            if name == "f7" {
                let want = if names_only { 0o600 } else { 0o640 };
                assert_eq!(
                    m.mode() & 0o7777,
                    want,
                    "{what}: mode of f7 after its listing"
                );
            }
        }
        g.unmount();
        let mut names: Vec<_> = list
            .into_iter()
            .map(|(n, _, k)| (n, format!("{k:?}")))
            .collect();
        names.sort();
        assert_eq!(names.len(), N + 3, "{what}: names listed");
        shown.push(names);
    }
    for (i, names) in shown.iter().enumerate().skip(1) {
        assert_eq!(
            &shown[0], names,
            "names and types: listattrs=on and off, over /dev/fuse and io_uring (run {i})"
        );
    }
}

/// With the writeback cache the kernel keeps a file's times and moves them for a
/// truncate(2) by path only where the size changes. A truncate of a lower file to the size
/// it has must then leave its copy's mtime as the mount shows it, so that the next mount
/// shows the same (it used to show the time of the truncate there, and the old one
/// here). A truncate that changes the size moves the mtime on both.
#[test]
fn truncate_to_its_own_size_keeps_the_shown_mtime_with_the_writeback_cache() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-truncate-same-size-wb");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[
            E::File("same", b"0123456789"),
            E::File("other", b"0123456789"),
        ],
    );
    let old = (1_100_000_000, 0);
    for name in ["same", "other"] {
        ok(
            set_times(&st.lowers[0].join(name), old, old),
            "set lower times",
        );
    }
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    let truncate = |name: &str, size: i64| {
        let c = cpath(&st.mnt.join(name));
        ok(cvt(unsafe { libc::truncate(c.as_ptr(), size) }), "truncate");
    };
    truncate("same", 10);
    truncate("other", 4);
    let shown = ok(mtime_of(&st.mnt.join("same")), "mtime in the mount");
    assert_eq!(
        shown, old,
        "the mount shows the truncated file's mtime as it was"
    );
    let stored = ok(mtime_of(&st.upper.join("same")), "mtime of the upper copy");
    assert_eq!(
        stored, shown,
        "the upper copy keeps the mtime the mount shows"
    );
    let other = ok(
        mtime_of(&st.mnt.join("other")),
        "mtime of the shortened file",
    );
    assert!(
        other.0 > old.0,
        "shortening a file moves its mtime: {other:?}"
    );
    assert_eq!(
        ok(
            mtime_of(&st.upper.join("other")),
            "upper mtime of the shortened file"
        ),
        other
    );
    g.unmount();
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    assert_eq!(
        ok(mtime_of(&st.mnt.join("same")), "mtime after a remount"),
        shown,
        "the next mount shows what this one showed"
    );
    g.unmount();
}

/// SEEK_DATA and SEEK_HOLE never report a hole over data the kernel still caches: with
/// the writeback cache the upper file lacks it until write-back, so the kernel answers
/// these itself from the size it keeps (all data). Without that, a sparse-aware copy (`cp`)
/// of a file just written would skip its data.
#[test]
fn seek_data_finds_data_not_yet_written_back() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-seek-data-wb");
    let st = Stack::new(&sc, 1);
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    let f = ok(
        fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(st.mnt.join("sparse")),
        "create sparse",
    );
    ok(f.write_all_at(b"data", 1 << 20), "pwrite at 1 MiB");
    let seek = |off: i64, whence: i32| {
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let data = ok(
        seek(1 << 20, libc::SEEK_DATA),
        "SEEK_DATA at the written offset",
    );
    assert!(data <= 1 << 20, "SEEK_DATA from 1 MiB went to {data}");
    let hole = ok(
        seek(1 << 20, libc::SEEK_HOLE),
        "SEEK_HOLE at the written offset",
    );
    assert!(
        hole >= (1 << 20) + 4,
        "SEEK_HOLE from 1 MiB found a hole at {hole}"
    );
    drop(f);
    g.unmount();
}

/// With the writeback cache a write(2) succeeds once its data is in the page cache. When
/// the write-back then finds the upper filesystem full, the error is not lost: fsync
/// reports ENOSPC, and so does the next write(2) while the disk is full (the kernel overlay
/// fails the write that finds the disk full). Once there is room again, writes and fsync
/// succeed, even where a write-back failed once more after the last report. The upper
/// layer is a tmpfs with room enough for cached writes when the file is opened, filled
/// from outside the overlay while it is open.
#[test]
fn failed_write_back_to_a_full_upper_layer_is_reported() {
    if !fuse_available() {
        return;
    }
    const MIB: usize = 1 << 20;
    let sc = Scratch::new("sem-writeback-full");
    let layer_fs = sc.dir("fs");
    let _tmpfs = mount_tmpfs_with(&layer_fs, "size=1100m");
    let st = Stack {
        lowers: vec![sc.dir("lower")],
        upper: layer_fs.join("upper"),
        work: layer_fs.join("work"),
        mnt: sc.dir("mnt"),
    };
    fs::create_dir(&st.upper).unwrap();
    fs::create_dir(&st.work).unwrap();
    let g = mount_ovlfuse(&st, &["passthrough=off"]);
    let mut f = ok(fs::File::create(st.mnt.join("f")), "create f");
    ok(f.write_all(b"first"), "first write");
    ok(f.sync_all(), "first fsync");

    // Leave about 1 MiB free.
    let filler = ok(fs::File::create(layer_fs.join("filler")), "create filler");
    let free_bytes = || {
        let v = ok(statvfs(&layer_fs), "statvfs");
        v.f_bavail * v.f_frsize
    };
    let free = free_bytes();
    let r = unsafe { libc::fallocate(filler.as_raw_fd(), 0, 0, (free - MIB as u64) as i64) };
    assert_eq!(r, 0, "fallocate filler: {}", io::Error::last_os_error());

    let chunk = vec![5u8; MIB / 4];
    let mut write_err = None;
    for _ in 0..32 {
        if let Err(e) = f.write_all(&chunk) {
            write_err = Some(e);
            break;
        }
    }
    let sync = f.sync_all();
    match write_err {
        Some(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "failed write: {e}"),
        None => {
            let e = sync.expect_err("8 MiB written into 1 MiB of room, and fsync succeeded");
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fsync: {e}");
            let e = f
                .write_all(&chunk)
                .expect_err("a write after the failed write-back succeeded");
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOSPC),
                "write after fsync: {e}"
            );
        }
    }

    // A write cached while the disk is still full (one may first report a write-back
    // that failed meanwhile), whose fsync fails again: the first write after room comes
    // back must not report that write-back a second time.
    let mut cached = f.write_all(&chunk);
    if cached.is_err() {
        cached = f.write_all(&chunk);
    }
    ok(cached, "a write cached while the disk is full");
    let e = f
        .sync_all()
        .expect_err("fsync of a write cached while the disk is full");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "fsync while full: {e}"
    );

    drop(filler);
    ok(fs::remove_file(layer_fs.join("filler")), "remove filler");
    // The space comes back when the last descriptor of the filler goes: a child that another
    // test thread forks holds a copy of this one until it execs, which under load can take
    // a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while free_bytes() < 512 * MIB as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "the filler's space did not come back within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ok(f.write_all(b"again"), "write once there is room");
    ok(f.sync_all(), "fsync once there is room");
    drop(f);
    g.unmount();
}

#[test]
fn readdir_while_another_thread_modifies_the_directory() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-readdir-race");
    let st = Stack::new(&sc, 1);
    fs::create_dir(st.lowers[0].join("d")).unwrap();
    for i in 0..500 {
        fs::write(st.lowers[0].join(format!("d/l{i:03}")), b"").unwrap();
    }
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let d = st.mnt.join("d");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let d = d.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 20_000 {
                let i = n % 500;
                fs::write(d.join(format!("u{i:03}")), b"u")
                    .map_err(|e| format!("create u{i:03}: {}", describe_err(&e)))?;
                if i % 2 == 0 {
                    fs::remove_file(d.join(format!("l{i:03}")))
                        .or_else(|e| {
                            if e.raw_os_error() == Some(libc::ENOENT) {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })
                        .map_err(|e| format!("unlink l{i:03}: {}", describe_err(&e)))?;
                }
                fs::remove_file(d.join(format!("u{i:03}")))
                    .map_err(|e| format!("unlink u{i:03}: {}", describe_err(&e)))?;
                n += 1;
            }
            Ok(n)
        })
    };
    // Entries that exist throughout (odd l's) must be seen exactly once in every listing.
    let stable: Vec<String> = (0..500)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("l{i:03}"))
        .collect();
    for round in 0..40 {
        let ents = match read_dir_raw(&d) {
            Ok(e) => e,
            Err(e) => panic!(
                "round {round}: readdir failed during concurrent changes: {}",
                describe_err(&e)
            ),
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in &ents {
            *counts
                .entry(e.name.to_string_lossy().into_owned())
                .or_default() += 1;
        }
        let dups: Vec<_> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, _)| n.clone())
            .collect();
        assert!(
            dups.is_empty(),
            "round {round}: names listed twice while the dir changed: {dups:?}"
        );
        let missing: Vec<&String> = stable
            .iter()
            .filter(|n| !counts.contains_key(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: entries that never changed are missing: {missing:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("writer thread: {e}"));
    assert!(n > 0);
    let listing = ok(names(&d), "final readdir");
    // Odd lower entries stay; even ones were removed unless the writer stopped before them.
    let want: Vec<String> = (0..500)
        .filter(|i| i % 2 == 1 || *i >= n)
        .map(|i| format!("l{i:03}"))
        .collect();
    assert_eq!(
        listing, want,
        "final listing: only the odd lower entries remain"
    );
    g.unmount();
    lc.verify();
}

// ---------------------------------------------------------------------------------------
// Layers on other file systems, read-only lowers
// ---------------------------------------------------------------------------------------

fn cross_fs_ops(r: &Path) -> Vec<String> {
    vec![
        outcome_unit(&write_at(&r.join("f"), 2, b"XY")),
        outcome_unit(&fs::set_permissions(
            r.join("g"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&lsetxattr(&r.join("d/h"), "user.k", b"v")),
        outcome_unit(&fs::remove_file(r.join("d/i"))),
        outcome_unit(&fs::write(r.join("d/new"), b"new")),
        outcome_unit(&fs::hard_link(r.join("f"), r.join("flink"))),
        outcome_unit(&fs::rename(r.join("g"), r.join("d/g"))),
        read_str(&r.join("f")),
    ]
}

/// A kernel stack ("k") and an ovlfuse stack ("f"), each with one lower layer built from
/// `lowers` and its upper and work directories on a filesystem of their own, mounted by
/// `mount` at `<who>/<fs>`.
fn stacks_with_upper_on(
    sc: &Scratch,
    lowers: &[E],
    fs_name: &str,
    mount: fn(&Path) -> MountGuard,
) -> (Vec<Stack>, Vec<MountGuard>) {
    let mut stacks = Vec::new();
    let mut guards = Vec::new();
    for who in ["k", "f"] {
        let l = sc.dir(who).join("lower0");
        fs::create_dir(&l).unwrap();
        build(&l, lowers);
        let t = sc.dir(&format!("{who}/{fs_name}"));
        guards.push(mount(&t));
        let st = Stack {
            lowers: vec![l],
            upper: t.join("upper"),
            work: t.join("work"),
            mnt: sc.dir(&format!("{who}/mnt")),
        };
        fs::create_dir(&st.upper).unwrap();
        fs::create_dir(&st.work).unwrap();
        stacks.push(st);
    }
    (stacks, guards)
}

#[test]
fn upper_on_a_different_file_system_than_the_lowers() {
    if !fuse_available() {
        return;
    }
    // Lower on ext4 (/tmp), upper and work on a tmpfs: copy-up crosses file systems.
    let sc = Scratch::new("sem-cross-fs");
    let lowers: Vec<E> = vec![
        E::File("f", b"lower f"),
        E::File("g", b"g"),
        E::File("d/h", b"h"),
        E::File("d/i", b"i"),
        E::Xattr("f", "user.a", b"1"),
    ];
    let (stacks, guards) = stacks_with_upper_on(&sc, &lowers, "tmpfs", mount_tmpfs);
    let lc = LowerCheck::new(&[stacks[0].lowers[0].clone(), stacks[1].lowers[0].clone()]);
    let kg = mount_kernel(&stacks[0]);
    let fg = mount_ovlfuse(&stacks[1], &[]);
    let ino_f = fs::symlink_metadata(stacks[1].mnt.join("f")).unwrap().ino();
    let kr = cross_fs_ops(&stacks[0].mnt);
    let fr = cross_fs_ops(&stacks[1].mnt);
    assert_eq!(
        fr, kr,
        "operations with the upper on another file system: ovlfuse (left) vs kernel (right)"
    );
    assert_eq!(
        fs::symlink_metadata(stacks[1].mnt.join("f")).unwrap().ino(),
        ino_f,
        "ovlfuse: st_ino changed across a cross-fs copy-up"
    );
    assert_same_snapshots(
        "merged views, upper on tmpfs",
        "kernel",
        &snapshot(&stacks[0].mnt, XattrSel::User),
        "ovlfuse",
        &snapshot(&stacks[1].mnt, XattrSel::User),
    );
    fg.unmount();
    kg.unmount();
    assert_same_snapshots(
        "upper directories on tmpfs",
        "kernel",
        &normalized_upper(&stacks[0].upper),
        "ovlfuse",
        &normalized_upper(&stacks[1].upper),
    );
    lc.verify();
    drop(guards);
}

/// A lower file on tmpfs whose xattr names take 73 KiB: more than listxattr(2) returns
/// (upper on tmpfs too).
/// The kernel overlay copies it up (its listing is in-kernel); ovlfuse cannot list the
/// names, so the copy-up fails with E2BIG and nothing changes (README, "Differences").
/// Checked against the kernel so that a change on either side shows.
#[test]
fn a_lower_file_with_more_xattr_names_than_listxattr_returns_is_not_copied_up() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-xattr-names");
    let mut guards = Vec::new();
    let mut results = Vec::new();
    for side in ["kernel", "ovlfuse"] {
        // The upper on tmpfs as well: ext4 holds a few KiB of xattrs, and the kernel's
        // copy-up to it fails with ENOSPC.
        let mut st = Stack::new_at(&sc.dir(side), 1);
        guards.push(mount_tmpfs(&st.lowers[0]));
        let upfs = sc.dir(&format!("{side}-upperfs"));
        guards.push(mount_tmpfs(&upfs));
        st.move_upper_to(&upfs);
        fs::write(st.lowers[0].join("f"), b"f").unwrap();
        for i in 0..300 {
            let name = format!("user.{i:03}{}", "n".repeat(240));
            lsetxattr(&st.lowers[0].join("f"), &name, b"1").unwrap();
        }
        let g = match side {
            "kernel" => mount_kernel(&st),
            _ => mount_ovlfuse(&st, &[]),
        };
        let chmod = fs::set_permissions(st.mnt.join("f"), fs::Permissions::from_mode(0o600));
        let mode = fs::symlink_metadata(st.mnt.join("f")).unwrap().mode() & 0o777;
        results.push((
            chmod.map_err(|e| e.raw_os_error()),
            mode,
            st.upper.join("f").exists(),
        ));
        g.unmount();
    }
    assert_eq!(
        results[0],
        (Ok(()), 0o600, true),
        "setup: the kernel overlay should copy the file up"
    );
    assert_eq!(
        results[1],
        (Err(Some(libc::E2BIG)), 0o644, false),
        "ovlfuse: E2BIG, the mode unchanged, no copy in the upper"
    );
    drop(guards);
}

/// Whiteouts, an opaque directory, a merged-directory rename and attributes in the
/// overlay's own xattr namespace, for [`userxattr_as_root_writes_what_a_userxattr_kernel_writes`].
fn userxattr_ops(r: &Path) -> Vec<String> {
    vec![
        outcome_unit(&fs::remove_file(r.join("d/x"))),
        outcome_unit(&fs::remove_dir_all(r.join("tree"))),
        outcome_unit(&fs::create_dir(r.join("tree"))),
        outcome_unit(&fs::write(r.join("tree/n"), b"n")),
        outcome_unit(&fs::rename(r.join("moved"), r.join("moved2"))),
        outcome_unit(&lsetxattr(&r.join("f"), "user.overlay.mine", b"1")),
        outcome(&lgetxattr(&r.join("f"), "user.overlay.mine")),
        outcome_unit(&lsetxattr(&r.join("f"), "trusted.overlay.t", b"2")),
        // In the upper filesystem's order, which the two uppers need not share.
        outcome(&llistxattr(&r.join("f")).map(|mut v| {
            v.sort();
            v
        })),
        format!("{:?}", names_or_err(r)),
    ]
}

/// An upper's overlay xattrs, less those that only say where a copy came from (each
/// overlay writes its own form) and the kernel's mount uuid.
fn upper_without_origins(upper: &Path) -> BTreeMap<PathBuf, Node> {
    upper_snapshot(upper, |k| !k.contains(".origin") && !k.ends_with(".uuid"))
}

#[test]
fn userxattr_as_root_writes_what_a_userxattr_kernel_writes() {
    if !fuse_available() {
        return;
    }
    // As root, `userxattr` makes the kernel write user.overlay.* (so that a rootless mount
    // can take the upper over) and turns its redirects off; ovlfuse must write the same.
    let sc = Scratch::new("sem-userxattr");
    let lower: &[E] = &[
        E::File("f", b"f"),
        E::File("d/x", b"x"),
        E::File("tree/a", b"a"),
        E::File("moved/c", b"c"),
    ];
    let k = Stack::new_at(&sc.dir("k"), 1);
    let f = Stack::new_at(&sc.dir("f"), 1);
    build(&k.lowers[0], lower);
    build(&f.lowers[0], lower);
    let lc = LowerCheck::new(&[k.lowers[0].clone(), f.lowers[0].clone()]);
    let kg = mount_kernel_plain(&k, "userxattr");
    let fg = mount_ovlfuse(&f, &["userxattr"]);
    assert_eq!(
        userxattr_ops(&f.mnt),
        userxattr_ops(&k.mnt),
        "with userxattr: ovlfuse (left) vs kernel (right)"
    );
    let kview = snapshot(&k.mnt, XattrSel::User);
    assert_same_snapshots(
        "merged views with userxattr",
        "kernel",
        &kview,
        "ovlfuse",
        &snapshot(&f.mnt, XattrSel::User),
    );
    fg.unmount();
    kg.unmount();
    let fu = upper_without_origins(&f.upper);
    assert_same_snapshots(
        "uppers written with userxattr",
        "kernel",
        &upper_without_origins(&k.upper),
        "ovlfuse",
        &fu,
    );
    assert_eq!(
        fu.get(Path::new("tree"))
            .map(|n| n.xattrs.contains_key("user.overlay.opaque")),
        Some(true),
        "the directory made over a removed one is opaque by user.overlay.opaque: {}",
        show_snapshot(&fu)
    );

    // The kernel with userxattr mounts ovlfuse's upper and shows what it showed of its own.
    let swapped = Stack {
        lowers: f.lowers.clone(),
        upper: f.upper.clone(),
        work: f.work.clone(),
        mnt: sc.dir("swap-mnt"),
    };
    let kg = mount_kernel_plain(&swapped, "userxattr");
    assert_same_snapshots(
        "the kernel (userxattr) on ovlfuse's upper",
        "kernel on its own upper",
        &kview,
        "kernel on ovlfuse's",
        &snapshot(&swapped.mnt, XattrSel::User),
    );
    kg.unmount();
    lc.verify();
}

/// Operations that need no overlay xattr in the upper layer: the kernel overlay does them
/// on an upper that takes none.
fn no_xattr_upper_ops(r: &Path) -> Vec<String> {
    vec![
        outcome_unit(&fs::create_dir(r.join("newdir"))),
        outcome_unit(&fs::create_dir(r.join("d/sub"))),
        outcome_unit(&write_at(&r.join("f"), 7, b"+more")),
        outcome_unit(&fs::set_permissions(
            r.join("g"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&fs::remove_file(r.join("d/h"))),
        outcome_unit(&fs::remove_dir(r.join("empty"))),
        outcome_unit(&fs::hard_link(r.join("g"), r.join("glink"))),
        outcome_unit(&std::os::unix::fs::symlink("f", r.join("sl"))),
        outcome_unit(&fs::write(r.join("d/new"), b"new")),
        read_str(&r.join("f")),
        format!("{:?}", names_or_err(r)),
        format!("{:?}", names_or_err(&r.join("d"))),
    ]
}

#[test]
fn upper_that_takes_no_xattrs_works_and_falls_back_where_the_kernel_cannot() {
    if !fuse_available() {
        return;
    }
    // Upper and work on a ramfs, which takes no xattrs at all (neither do NFSv3 and some
    // FUSE filesystems): no opaque mark, no redirect.
    let sc = Scratch::new("sem-no-xattr-upper");
    let lowers: Vec<E> = vec![
        E::File("f", b"lower f"),
        E::File("g", b"g"),
        E::File("d/h", b"h"),
        E::Dir("empty"),
        E::File("tree/a", b"a"),
        E::File("tree/sub/b", b"b"),
        E::File("moved/c", b"c"),
    ];
    let (stacks, guards) = stacks_with_upper_on(&sc, &lowers, "ramfs", mount_ramfs);
    let (k, f) = (&stacks[0], &stacks[1]);
    let lc = LowerCheck::new(&[k.lowers[0].clone(), f.lowers[0].clone()]);
    let kg = mount_kernel(k);
    let fg = mount_ovlfuse(f, &[]);
    assert_eq!(
        no_xattr_upper_ops(&f.mnt),
        no_xattr_upper_ops(&k.mnt),
        "operations on an upper without xattrs: ovlfuse (left) vs kernel (right)"
    );
    assert_same_snapshots(
        "merged views, upper on ramfs",
        "kernel",
        &snapshot(&k.mnt, XattrSel::User),
        "ovlfuse",
        &snapshot(&f.mnt, XattrSel::User),
    );

    // Where the kernel needs an xattr it fails (rm -rf of a lower tree: EIO, having removed
    // part of it; a rename of a lower directory: EIO). ovlfuse removes the tree, marks a
    // directory made in its place opaque with the OCI marker, and refuses the rename with
    // EXDEV (redirect_dir falls back to off), so that mv copies.
    let m = &f.mnt;
    fs::remove_dir_all(m.join("tree")).expect("rm -rf of a lower tree");
    fs::create_dir(m.join("tree")).expect("mkdir where a lower directory was removed");
    fs::write(m.join("tree/new"), b"n").unwrap();
    assert_eq!(names_or_err(&m.join("tree")), Ok(vec!["new".to_string()]));
    fs::remove_dir(m.join("empty")).expect_err("removed above");
    fs::create_dir(m.join("empty")).expect("mkdir over a removed empty lower directory");
    expect_errno(
        fs::rename(m.join("moved"), m.join("moved2")),
        libc::EXDEV,
        "rename of a lower directory without redirects",
    );
    fg.unmount();
    kg.unmount();
    assert!(
        f.upper.join("tree/.wh..wh..opq").exists(),
        "the directory made over a removed one carries the OCI opaque marker"
    );
    // A new daemon reads the marker: the removed lower entries stay hidden.
    let fg = mount_ovlfuse(f, &[]);
    assert_eq!(
        names_or_err(&f.mnt.join("tree")),
        Ok(vec!["new".to_string()])
    );
    assert_eq!(names_or_err(&f.mnt.join("empty")), Ok(vec![]));
    assert_eq!(read_str(&f.mnt.join("moved/c")), "c");
    fg.unmount();
    lc.verify();
    drop(guards);
}

#[test]
fn read_only_lower_file_system_is_fine() {
    if !fuse_available() {
        return;
    }
    // A lower layer on a read-only mount (ro bind mount of itself): nothing may need to
    // write there, copy-up included.
    let sc = Scratch::new("sem-ro-lower");
    let st = Stack::new(&sc, 2);
    build(
        &st.lowers[0],
        &[
            E::File("f", b"ro lower"),
            E::File("d/g", b"g"),
            E::Fifo("p"),
            E::Symlink("s", "f"),
        ],
    );
    build(&st.lowers[1], &[E::File("d/h", b"h")]);
    let mut binds = Vec::new();
    for l in &st.lowers {
        let o = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(l)
            .arg(l)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "bind mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        binds.push(MountGuard::adopt_kernel(l));
        let o = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(l)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "remount ro: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    expect_errno(
        fs::write(st.lowers[0].join("probe"), b"x"),
        libc::EROFS,
        "the lower is really read-only",
    );
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    let m = &st.mnt;
    assert_eq!(read_str(&m.join("f")), "ro lower");
    ok(
        write_at(&m.join("f"), 0, b"RW"),
        "copy-up from a read-only lower",
    );
    ok(
        fs::set_permissions(m.join("p"), fs::Permissions::from_mode(0o600)),
        "copy-up of a fifo",
    );
    ok(lchown(&m.join("s"), 3, 3), "copy-up of a symlink");
    ok(
        fs::remove_file(m.join("d/h")),
        "whiteout over the second lower",
    );
    ok(fs::write(m.join("d/new"), b"n"), "create in a merged dir");
    assert_eq!(read_str(&m.join("f")), "RW lower");
    assert_eq!(
        names_or_err(&m.join("d")),
        Ok(vec!["g".into(), "new".into()])
    );
    g.unmount();
    lc.verify();
    drop(binds);
}

#[test]
fn setgid_directories_and_umask_for_new_files() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    let t = twin(
        "sem-setgid-umask",
        &[&[
            E::Dir("sg"),
            E::Owner("sg", 0, 4242),
            E::Mode("sg", 0o2777),
            E::Dir("plain"),
            E::Mode("plain", 0o777),
        ]],
        &[],
    );
    t.both("create as nobody with umask 027", |r| {
        let c = |n: &str| cpath(&r.join(n));
        run_as(
            NOBODY,
            NOBODY,
            &[
                Op::Umask(0o027),
                Op::Open(c("sg/f"), libc::O_CREAT | libc::O_WRONLY),
                Op::Mkdir(c("sg/d")),
                Op::Open(c("plain/f"), libc::O_CREAT | libc::O_WRONLY),
                Op::Mkdir(c("plain/d")),
            ],
        )
    });
    t.both("resulting owners and modes", |r| {
        ["sg/f", "sg/d", "plain/f", "plain/d"].map(|n| stat_str(&r.join(n)))
    });
    t.finish(true);
}

/// A chmod keeps set-group-ID only for a member of the file's group, and a supplementary
/// group counts (we read it from /proc: FUSE does not pass it).
#[test]
fn chmod_keeps_setgid_for_members_of_the_group_only() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    let t = twin(
        "sem-setgid-groups",
        &[&[
            E::File("member", b"m"),
            E::Owner("member", NOBODY, 4242),
            E::File("outsider", b"o"),
            E::Owner("outsider", NOBODY, 4242),
        ]],
        &[],
    );
    t.both("chmod 2755 as nobody, in group 4242 or not", |r| {
        let c = |n: &str| cpath(&r.join(n));
        let mut res = run_as_in(NOBODY, NOBODY, &[4242], &[Op::Chmod(c("member"), 0o2755)]);
        res.extend(run_as(NOBODY, NOBODY, &[Op::Chmod(c("outsider"), 0o2755)]));
        res
    });
    let modes = t.both_ret("resulting modes", |r| {
        ["member", "outsider"].map(|n| fs::metadata(r.join(n)).unwrap().mode() & 0o7777)
    });
    assert_eq!(
        modes,
        [0o2755, 0o755],
        "member keeps the bit, outsider loses it"
    );
    t.finish(true);
}

#[test]
fn attribute_changes_through_a_read_only_descriptor() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-fd-attrs",
        &[&[
            E::File("f", b"lower f"),
            E::File("g", b"lower g"),
            E::File("h", b"lower h"),
        ]],
        &[],
    );
    t.both(
        "fchmod/fchown/futimens/fsetxattr on an O_RDONLY fd of a lower file",
        |r| {
            let f = fs::File::open(r.join("f")).unwrap();
            let fd = f.as_raw_fd();
            let a = cvt(unsafe { libc::fchmod(fd, 0o604) });
            let b = cvt(unsafe { libc::fchown(fd, 21, 22) });
            let ts = [
                libc::timespec {
                    tv_sec: 11,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 1_111_111_111,
                    tv_nsec: 0,
                },
            ];
            let c = cvt(unsafe { libc::futimens(fd, ts.as_ptr()) });
            let name = c"user.viafd";
            let d = cvt(unsafe {
                libc::fsetxattr(
                    fd,
                    name.as_ptr(),
                    b"v".as_ptr() as *const libc::c_void,
                    1,
                    0,
                )
            });
            let mut buf = String::new();
            let rd = (&f).read_to_string(&mut buf);
            let fst = f
                .metadata()
                .map(|m| (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()))
                .ok();
            (
                [a, b, c, d].map(|x| outcome_unit(&x)),
                outcome_unit(&rd),
                buf,
                fst,
                stat_str(&r.join("f")),
                mtime_of(&r.join("f")).ok(),
                outcome(&lgetxattr(&r.join("f"), "user.viafd")),
            )
        },
    );
    t.both(
        "ftruncate on an O_RDWR fd, then read through an older O_RDONLY fd",
        |r| {
            let old = fs::File::open(r.join("g")).unwrap();
            let rw = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(r.join("g"))
                .unwrap();
            let tr = rw.set_len(3);
            let mut b = Vec::new();
            let rd = (&old).read_to_end(&mut b);
            (
                outcome_unit(&tr),
                outcome_unit(&rd),
                String::from_utf8_lossy(&b).into_owned(),
                old.metadata().map(|m| m.len()).ok(),
            )
        },
    );
    t.both(
        "unlink then recreate the name while an fd holds the old file",
        |r| {
            let old = fs::File::open(r.join("h")).unwrap();
            let un = fs::remove_file(r.join("h"));
            let cr = fs::write(r.join("h"), b"new h");
            let mut b = String::new();
            let rd = (&old).read_to_string(&mut b);
            let same = old.metadata().ok().map(|m| m.ino())
                == fs::metadata(r.join("h")).ok().map(|m| m.ino());
            (
                outcome_unit(&un),
                outcome_unit(&cr),
                outcome_unit(&rd),
                b,
                read_str(&r.join("h")),
                same,
            )
        },
    );
    t.finish(true);
}

#[test]
fn readdir_of_many_long_names() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-long-names",
        &[&[E::Dir("d")], &[E::Dir("d")]],
        &[E::Dir("d")],
        |st| {
            for i in 0..1500 {
                let base = format!("{i:04}-{}", "n".repeat(200 + i % 50));
                let layer = match i % 3 {
                    0 => &st.lowers[0],
                    1 => &st.lowers[1],
                    _ => &st.upper,
                };
                fs::write(layer.join("d").join(&base), b"").unwrap();
                if i % 5 == 0 {
                    fs::write(st.lowers[1].join("d").join(&base), b"dup").unwrap_or(());
                }
            }
        },
    );
    t.both("names", |r| {
        names_or_err(&r.join("d")).map(|v| (v.len(), v))
    });
    t.both("seekdir", |r| check_seekdir(&r.join("d")));
    t.finish(true);
}

#[test]
fn inode_flags_ioctl_matches_kernel() {
    if !fuse_available() {
        return;
    }
    // lsattr/chattr go through FS_IOC_GETFLAGS/SETFLAGS; kernel overlayfs forwards them.
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x80086601;
    let t = twin(
        "sem-ioctl-flags",
        &[&[E::File("f", b"f"), E::Dir("d")]],
        &[E::File("u", b"u")],
    );
    t.both("FS_IOC_GETFLAGS", |r| {
        ["f", "d", "u"].map(|n| {
            let f = fs::File::open(r.join(n)).unwrap();
            let mut flags: libc::c_long = 0;
            let rr = cvt(unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) });
            format!(
                "{n}: {} {:#x}",
                outcome_unit(&rr),
                if rr.is_ok() { flags } else { 0 }
            )
        })
    });
    t.finish(true);
}

/// An empty set-group-ID upper file (read through the kernel's page cache, not
/// passthrough) whose next read moves its atime is opened for direct I/O, so that the read
/// reaches the daemon: a shared mapping of it still works, sees what is written to the file
/// afterwards, and the read moves the atime as on the kernel overlay.
#[test]
fn a_shared_mapping_of_an_empty_set_id_file_opened_read_only_sees_later_writes() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-empty-direct-mmap",
        &[&[E::File("l", b"lower")]],
        &[E::File("g", b""), E::Mode("g", 0o2755)],
    );
    let seen = t.both_ret("map, write, read", |r| {
        let g = r.join("g");
        let old = (1_000_000_000, 0);
        set_times(&g, old, (1_000_000_001, 0)).unwrap();
        let f = fs::File::open(&g).unwrap();
        // SAFETY: a fresh shared read-only mapping of an open file, touched only after the
        // file has grown over its first bytes, and unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return format!("mmap: {}", describe_err(&io::Error::last_os_error()));
        }
        let mut empty = Vec::new();
        let n = (&f).read_to_end(&mut empty).unwrap();
        let atime_moved = fs::metadata(&g).unwrap().atime() != old.0;
        fs::OpenOptions::new()
            .append(true)
            .open(&g)
            .unwrap()
            .write_all(b"hello")
            .unwrap();
        let mut seen = [0u8; 5];
        // SAFETY: the file now holds these 5 bytes, within the mapping.
        unsafe { std::ptr::copy_nonoverlapping(map as *const u8, seen.as_mut_ptr(), 5) };
        let mut read = Vec::new();
        (&f).read_to_end(&mut read).unwrap();
        unsafe { libc::munmap(map, 4096) };
        format!(
            "read {n} while empty, atime moved {atime_moved}; mapped {:?}, read {:?}",
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&read)
        )
    });
    assert_eq!(
        seen,
        "read 0 while empty, atime moved true; mapped \"hello\", read \"hello\""
    );
    t.finish(true);
}

/// openat() relative to a directory fd.
fn openat(dir: &fs::File, name: &str, flags: i32, mode: u32) -> io::Result<fs::File> {
    let c = std::ffi::CString::new(name).unwrap();
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(unsafe { <fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) })
    }
}

const DEEP_LEVELS: usize = 24;

fn deep_name(i: usize) -> String {
    format!("{i:02}{}", "d".repeat(198))
}

#[test]
fn paths_longer_than_path_max() {
    if !fuse_available() {
        return;
    }
    // 24 levels of 200-byte names: the tree is ~4.8 KiB deep, beyond PATH_MAX, so it can
    // only be walked with *at() calls. Kernel overlayfs has no depth limit.
    let t = twin_with("sem-deep", &[&[E::Dir("top")]], &[], |st| {
        let mut d = fs::File::open(st.lowers[0].join("top")).unwrap();
        for i in 0..DEEP_LEVELS {
            let n = std::ffi::CString::new(deep_name(i)).unwrap();
            assert_eq!(
                unsafe { libc::mkdirat(d.as_raw_fd(), n.as_ptr(), 0o755) },
                0,
                "mkdirat level {i}"
            );
            d = openat(&d, &deep_name(i), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        }
        let mut f = openat(&d, "leaf", libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
        f.write_all(b"deep lower leaf").unwrap();
        openat(&d, "other", libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
    });
    t.both("walk, copy up, create and remove at the bottom", |r| {
        let mut d = fs::File::open(r.join("top")).unwrap();
        for i in 0..DEEP_LEVELS {
            d = match openat(&d, &deep_name(i), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(x) => x,
                Err(e) => return vec![format!("walk level {i}: {}", describe_err(&e))],
            };
        }
        let mut v = Vec::new();
        let leaf = openat(&d, "leaf", libc::O_RDWR, 0);
        v.push(format!("open leaf O_RDWR: {}", outcome_unit(&leaf)));
        if let Ok(mut leaf) = leaf {
            v.push(format!("write: {}", outcome_unit(&leaf.write_all(b"DEEP"))));
            let mut s = String::new();
            leaf.seek(SeekFrom::Start(0)).unwrap();
            let rd = leaf.read_to_string(&mut s);
            v.push(format!("read: {} {s:?}", outcome_unit(&rd)));
        }
        let n = std::ffi::CString::new("newdir").unwrap();
        v.push(format!(
            "mkdirat: {}",
            outcome_unit(&cvt(unsafe {
                libc::mkdirat(d.as_raw_fd(), n.as_ptr(), 0o755)
            }))
        ));
        let o = std::ffi::CString::new("other").unwrap();
        v.push(format!(
            "unlinkat other: {}",
            outcome_unit(&cvt(unsafe {
                libc::unlinkat(d.as_raw_fd(), o.as_ptr(), 0)
            }))
        ));
        // readdir of the bottom directory through /proc/self/fd (a short path).
        let pfd = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd()));
        v.push(format!("names: {:?}", names_or_err(&pfd)));
        v
    });
    t.finish(true);
}

/// Copies of lower objects of every kind of mode and owner: those the daemon's new objects
/// already come out as are made with their mode and get no chown or chmod, the others get
/// both (set-ID and sticky bits, other owners). Either way each copy has its original's
/// mode, owner and times, as on the kernel overlay.
#[test]
fn copies_of_every_mode_and_owner_match_the_kernel() {
    if !fuse_available() {
        return;
    }
    let modes = [
        0o000, 0o444, 0o555, 0o600, 0o644, 0o700, 0o755, 0o777, 0o1777, 0o2755, 0o4755, 0o6711,
    ];
    let owners = [(0, 0), (0, 4242), (4242, 0), (4242, 4242)];
    let mut names = Vec::new();
    for m in modes {
        for (u, g) in owners {
            names.push((
                format!("d{m:o}-{u}-{g}"),
                format!("f{m:o}-{u}-{g}"),
                m,
                u,
                g,
            ));
        }
    }
    let mut lower = Vec::new();
    for (d, f, m, u, g) in &names {
        lower.push(E::File(f, b"data"));
        lower.push(E::Dir(d));
        // Owner first: chown(2) clears set-ID bits.
        lower.extend([E::Owner(f, *u, *g), E::Owner(d, *u, *g)]);
        lower.extend([E::Mode(f, *m), E::Mode(d, *m)]);
    }
    lower.push(E::File("t", b"truncated"));
    let t = twin("sem-copy-modes", &[&lower], &[]);
    // A new xattr copies each one up and changes neither its mode nor its times; O_TRUNC
    // copies a file without its data.
    t.both("copy-ups", |r| {
        let mut out: Vec<String> = names
            .iter()
            .flat_map(|(d, f, ..)| [d, f])
            .map(|n| outcome_unit(&lsetxattr(&r.join(n), "user.copied", b"y")))
            .collect();
        out.push(outcome_unit(&open_fd(
            &r.join("t"),
            libc::O_WRONLY | libc::O_TRUNC,
            0,
        )));
        out
    });
    t.compare_views("after the copy-ups");
    t.finish_with(true, |k, f| {
        for st in [k, f] {
            for (d, f, ..) in &names {
                for n in [d, f] {
                    assert_eq!(
                        mtime_of(&st.upper.join(n)).unwrap(),
                        mtime_of(&st.lowers[0].join(n)).unwrap(),
                        "{n} in {:?}: the copy keeps its mtime",
                        st.upper
                    );
                }
            }
        }
    });
}

#[test]
fn setuid_bits_and_file_capabilities_follow_kernel_rules() {
    if !fuse_available() {
        return;
    }
    const NOBODY: u32 = 65534;
    // security.capability v2: magic|effective, permitted = CAP_NET_RAW (13).
    let mut cap = Vec::new();
    cap.extend(0x0200_0001u32.to_le_bytes());
    cap.extend((1u32 << 13).to_le_bytes());
    cap.extend(0u32.to_le_bytes());
    cap.extend(0u32.to_le_bytes());
    cap.extend(0u32.to_le_bytes());
    let c2 = cap.clone();
    let t = twin_with(
        "sem-privs",
        &[&[
            E::File("ping", b"\x7fELF fake ping"),
            E::Mode("ping", 0o755),
            E::File("ping2", b"\x7fELF fake ping 2"),
            E::Mode("ping2", 0o755),
            E::File("suid", b"suid"),
            E::Mode("suid", 0o4755),
            E::File("sgid", b"sgid"),
            E::Mode("sgid", 0o2755),
            E::File("opensuid", b"world writable suid"),
            E::Mode("opensuid", 0o4777),
            E::File("latersuid", b"made setuid while open"),
            E::Mode("latersuid", 0o777),
            E::File("capsuid", b"setuid with a capability"),
            E::Mode("capsuid", 0o6755),
            E::File("capsuid2", b"setuid with a capability, chowned"),
            E::Mode("capsuid2", 0o6755),
            E::File("suid2", b"setuid, chowned"),
            E::Mode("suid2", 0o4755),
        ]],
        &[],
        move |st| {
            for n in ["ping", "ping2", "capsuid", "capsuid2"] {
                lsetxattr(&st.lowers[0].join(n), "security.capability", &c2).unwrap();
            }
        },
    );
    t.both("file capability visible", |r| {
        outcome(&lgetxattr(&r.join("ping"), "security.capability"))
    });
    t.both("copy-up keeps the capability", |r| {
        (
            outcome_unit(&lsetxattr(&r.join("ping"), "user.x", b"1")),
            outcome(&lgetxattr(&r.join("ping"), "security.capability")),
        )
    });
    t.both("write drops the capability", |r| {
        (
            outcome_unit(&write_at(&r.join("ping2"), 0, b"X")),
            outcome(&lgetxattr(&r.join("ping2"), "security.capability")),
        )
    });
    // Both reach ovlfuse as the same requests: a REMOVEXATTR, then an empty SETATTR.
    t.both(
        "a write by root drops the capability and keeps set-ID bits",
        |r| {
            (
                outcome_unit(&write_at(&r.join("capsuid"), 0, b"X")),
                outcome(&lgetxattr(&r.join("capsuid"), "security.capability")),
                stat_str(&r.join("capsuid")),
            )
        },
    );
    t.both(
        "chown(-1, -1) by root drops the capability and set-ID bits",
        |r| {
            let f = std::fs::File::open(r.join("suid2")).unwrap();
            (
                outcome_unit(&lchown(&r.join("capsuid2"), u32::MAX, u32::MAX)),
                outcome(&lgetxattr(&r.join("capsuid2"), "security.capability")),
                stat_str(&r.join("capsuid2")),
                unsafe { libc::fchown(f.as_raw_fd(), u32::MAX, u32::MAX) },
                stat_str(&r.join("suid2")),
            )
        },
    );
    t.both("chown clears setuid/setgid", |r| {
        (
            outcome_unit(&lchown(&r.join("suid"), 1, 1)),
            outcome_unit(&lchown(&r.join("sgid"), 2, 2)),
            stat_str(&r.join("suid")),
            stat_str(&r.join("sgid")),
        )
    });
    t.both("an unprivileged write clears setuid", |r| {
        (
            run_as(
                NOBODY,
                NOBODY,
                &[Op::Open(
                    cpath(&r.join("opensuid")),
                    libc::O_WRONLY | libc::O_APPEND,
                )],
            ),
            {
                // run_as only opens; write as nobody too:
                let c = cpath(&r.join("opensuid"));
                let mut pipe = [0i32; 2];
                unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    unsafe {
                        become_or_exit(NOBODY, NOBODY, &[]);
                        let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                        let ok = fd >= 0
                            && libc::write(fd, b"+".as_ptr() as *const libc::c_void, 1) == 1;
                        libc::_exit(if ok { 0 } else { 1 });
                    }
                }
                let mut status = 0;
                unsafe {
                    libc::close(pipe[0]);
                    libc::close(pipe[1]);
                    libc::waitpid(pid, &mut status, 0);
                }
                (libc::WEXITSTATUS(status), stat_str(&r.join("opensuid")))
            },
        )
    });
    t.both(
        "a file made setuid while open for writing loses the bit on an unprivileged write",
        |r| {
            // Opened before the chmod, the file may be written through the upper file
            // directly (FUSE passthrough); the write must still clear the bit.
            let c = cpath(&r.join("latersuid"));
            let (mut opened, mut go) = ([0i32; 2], [0i32; 2]);
            unsafe {
                libc::pipe2(opened.as_mut_ptr(), libc::O_CLOEXEC);
                libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC);
            }
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe {
                    become_or_exit(NOBODY, NOBODY, &[]);
                    let fd = libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
                    let mut b = [0u8; 1];
                    libc::write(opened[1], b.as_ptr() as *const libc::c_void, 1);
                    libc::read(go[0], b.as_mut_ptr() as *mut libc::c_void, 1);
                    let ok =
                        fd >= 0 && libc::write(fd, b"+".as_ptr() as *const libc::c_void, 1) == 1;
                    libc::_exit(if ok { 0 } else { 1 });
                }
            }
            let mut b = [0u8; 1];
            let mut status = 0;
            let chmod = unsafe {
                libc::read(opened[0], b.as_mut_ptr() as *mut libc::c_void, 1);
                let res = libc::chmod(c.as_ptr(), 0o4777);
                libc::write(go[1], b.as_ptr() as *const libc::c_void, 1);
                libc::waitpid(pid, &mut status, 0);
                for fd in opened.iter().chain(go.iter()) {
                    libc::close(*fd);
                }
                res
            };
            (
                chmod,
                libc::WEXITSTATUS(status),
                stat_str(&r.join("latersuid")),
            )
        },
    );
    t.finish(true);
}

#[test]
fn copy_up_keeps_xattrs_of_every_namespace() {
    if !fuse_available() {
        return;
    }
    let t = twin_with(
        "sem-xattr-ns",
        &[&[E::File("f", b"f"), E::Dir("d"), E::File("d/g", b"g")]],
        &[],
        |st| {
            for p in ["f", "d"] {
                let p = st.lowers[0].join(p);
                lsetxattr(&p, "user.u", b"1").unwrap();
                lsetxattr(&p, "trusted.app", b"2").unwrap();
                lsetxattr(&p, "security.test", b"3").unwrap();
            }
        },
    );
    let names_of = |r: &Path, p: &str| -> Vec<String> {
        let mut v: Vec<String> = llistxattr(&r.join(p))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| !n.starts_with("trusted.overlay."))
            .collect();
        v.sort();
        v.into_iter()
            .map(|n| {
                format!(
                    "{n}={}",
                    outcome(
                        &lgetxattr(&r.join(p), &n)
                            .map(|v| String::from_utf8_lossy(&v).into_owned())
                    )
                )
            })
            .collect()
    };
    t.both("xattrs before copy-up", |r| {
        (names_of(r, "f"), names_of(r, "d"))
    });
    t.both("copy up f (chmod) and d (create inside)", |r| {
        (
            outcome_unit(&fs::set_permissions(
                r.join("f"),
                fs::Permissions::from_mode(0o600),
            )),
            outcome_unit(&fs::write(r.join("d/new"), b"n")),
            names_of(r, "f"),
            names_of(r, "d"),
        )
    });
    t.finish(true);
}

#[test]
fn overlay_prefixed_xattrs_set_through_the_mount_are_escaped() {
    if !fuse_available() {
        return;
    }
    // Kernel >= 6.7 stores trusted.overlay.X set by a user as trusted.overlay.overlay.X in the
    // upper layer and shows it back as trusted.overlay.X (nested overlays rely on this).
    let t = twin(
        "sem-xattr-escape",
        &[&[E::File("f", b"f")]],
        &[E::File("u", b"u")],
    );
    for p in ["f", "u"] {
        t.both(
            &format!("set/get/list/remove trusted.overlay.foo on {p}"),
            |r| {
                let q = r.join(p);
                let s = lsetxattr(&q, "trusted.overlay.foo", b"bar");
                let g = lgetxattr(&q, "trusted.overlay.foo");
                let l = sorted_xattrs(&q);
                let s2 = lsetxattr(&q, "trusted.overlay.opaque", b"y");
                let l2 = sorted_xattrs(&q);
                let rm = lremovexattr(&q, "trusted.overlay.opaque");
                (
                    outcome_unit(&s),
                    outcome(&g),
                    l,
                    outcome_unit(&s2),
                    l2,
                    outcome_unit(&rm),
                )
            },
        );
    }
    t.finish_with(true, |k, f| {
        for p in ["f", "u"] {
            let raw = |st: &Stack| {
                let mut v: Vec<String> = llistxattr(&st.upper.join(p))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.starts_with("trusted.overlay.overlay."))
                    .collect();
                v.sort();
                v
            };
            assert_eq!(
                raw(f),
                raw(k),
                "escaped names stored in upper/{p}: ovlfuse (left) vs kernel (right)"
            );
        }
    });
}

#[test]
fn executing_binaries_from_the_mount() {
    if !fuse_available() {
        return;
    }
    let cat = fs::read("/bin/cat").expect("read /bin/cat");
    let t = twin_with(
        "sem-exec",
        &[&[
            E::File("script", b"#!/bin/sh\necho script-ran \"$1\"\n"),
            E::Mode("script", 0o755),
        ]],
        &[],
        move |st| {
            fs::write(st.lowers[0].join("cat"), &cat).unwrap();
            fs::set_permissions(st.lowers[0].join("cat"), fs::Permissions::from_mode(0o755))
                .unwrap();
        },
    );
    t.both("run a lower script and a lower binary", |r| {
        let s = std::process::Command::new(r.join("script"))
            .arg("x")
            .output();
        let c = std::process::Command::new(r.join("cat"))
            .arg(r.join("script"))
            .output();
        (
            s.as_ref()
                .map(|o| {
                    (
                        o.status.code(),
                        String::from_utf8_lossy(&o.stdout).into_owned(),
                    )
                })
                .map_err(describe_err),
            c.as_ref()
                .map(|o| (o.status.code(), o.stdout.len()))
                .map_err(describe_err),
        )
    });
    t.both("writing a running binary is ETXTBSY", |r| {
        let mut child = std::process::Command::new(r.join("cat"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // cat blocks on its stdin: the binary is being executed until we close it.
        let w = fs::OpenOptions::new().write(true).open(r.join("cat"));
        drop(child.stdin.take());
        let st = child.wait().map(|s| s.code());
        (outcome_unit(&w), outcome(&st))
    });
    t.both("copy up (chmod) then run", |r| {
        let ch = fs::set_permissions(r.join("script"), fs::Permissions::from_mode(0o700));
        let s = std::process::Command::new(r.join("script"))
            .arg("y")
            .output();
        (
            outcome_unit(&ch),
            s.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .map_err(|e| describe_err(&e)),
        )
    });
    t.finish(true);
}

#[test]
fn redirects_written_by_a_kernel_with_redirect_dir_on_are_followed() {
    if !fuse_available() {
        return;
    }
    // With redirect_always_follow=Y (this kernel's default) overlayfs follows
    // trusted.overlay.redirect even when mounted redirect_dir=off; layers written by a
    // redirect_dir=on mount (a renamed merged dir) must read the same through ovlfuse.
    let follow = fs::read_to_string("/sys/module/overlay/parameters/redirect_always_follow")
        .unwrap_or_default();
    let sc = Scratch::new("sem-redirect");
    let st = Stack::new(&sc, 1);
    build(
        &st.lowers[0],
        &[
            E::File("d/x", b"x"),
            E::File("d/sub/y", b"y"),
            E::File("keep", b"k"),
        ],
    );
    build(&st.upper, &[E::File("d/z", b"z")]);
    let lc = LowerCheck::new(&st.lowers);
    // Kernel with redirect_dir=on renames the merged dir.
    let o = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "{},redirect_dir=on,index=off,metacopy=off",
            st.full_opts()
        ))
        .arg(&st.mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mount redirect_dir=on: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let g = MountGuard::adopt_kernel(&st.mnt);
    ok(
        fs::rename(st.mnt.join("d"), st.mnt.join("e")),
        "kernel rename of a merged dir with redirect_dir=on",
    );
    let written = snapshot(&st.mnt, XattrSel::User);
    g.unmount();
    assert!(
        lgetxattr(&st.upper.join("e"), "trusted.overlay.redirect").is_ok(),
        "the kernel wrote no redirect; test setup is wrong"
    );
    // The kernel in this test's configuration (redirect_dir=off) reads it back...
    let k2 = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work2"),
        mnt: sc.dir("mnt2"),
    };
    let kg = mount_kernel(&k2);
    let kernel_view = snapshot(&k2.mnt, XattrSel::User);
    kg.unmount();
    if follow.trim() == "Y" {
        assert_same_snapshots(
            "kernel redirect_dir=off view of the redirect_dir=on upper",
            "as written",
            &written,
            "kernel re-read",
            &kernel_view,
        );
    }
    // ...and so must ovlfuse.
    let f2 = Stack {
        lowers: st.lowers.clone(),
        upper: st.upper.clone(),
        work: sc.dir("work3"),
        mnt: sc.dir("mnt3"),
    };
    let fg = mount_ovlfuse(&f2, &[]);
    let fuse_view = snapshot(&f2.mnt, XattrSel::User);
    fg.unmount();
    assert_same_snapshots(
        "view of an upper with a kernel redirect",
        "kernel",
        &kernel_view,
        "ovlfuse",
        &fuse_view,
    );
    lc.verify();
}

#[test]
fn lowers_on_different_file_systems_with_colliding_inode_numbers() {
    if !fuse_available() {
        return;
    }
    // Two fresh tmpfs instances hand out the same inode numbers (2, 3, ...). One FUSE mount
    // has a single st_dev, so ovlfuse must keep the objects apart (and their st_ino distinct),
    // where the kernel uses a different st_dev per layer.
    let sc = Scratch::new("sem-ino-collide");
    let mut guards = Vec::new();
    let mut stacks = Vec::new();
    for who in ["k", "f"] {
        let l0 = sc.dir(&format!("{who}/lower0"));
        let l1 = sc.dir(&format!("{who}/lower1"));
        guards.push(mount_tmpfs(&l0));
        guards.push(mount_tmpfs(&l1));
        // Same creation order in both: a/b get one number, d/e the next, d/x and e/y the next.
        fs::write(l0.join("a"), b"file a in lower0").unwrap();
        fs::write(l1.join("b"), b"file b in lower1").unwrap();
        fs::create_dir(l0.join("d")).unwrap();
        fs::create_dir(l1.join("e")).unwrap();
        fs::write(l0.join("d/x"), b"x in lower0").unwrap();
        fs::write(l1.join("e/y"), b"y in lower1").unwrap();
        let st = Stack {
            lowers: vec![l0, l1],
            upper: sc.dir(&format!("{who}/upper")),
            work: sc.dir(&format!("{who}/work")),
            mnt: sc.dir(&format!("{who}/mnt")),
        };
        stacks.push(st);
    }
    let (k, f) = (&stacks[0], &stacks[1]);
    assert_eq!(
        fs::metadata(f.lowers[0].join("a")).unwrap().ino(),
        fs::metadata(f.lowers[1].join("b")).unwrap().ino(),
        "setup: tmpfs did not produce colliding inode numbers"
    );
    let lc = LowerCheck::new(&[k.lowers.clone(), f.lowers.clone()].concat());
    let kg = mount_kernel(k);
    let fg = mount_ovlfuse(f, &[]);
    let view = |r: &Path| -> Vec<String> {
        ["a", "b", "d/x", "e/y"]
            .iter()
            .map(|n| format!("{n}: {}", read_str(&r.join(n))))
            .chain(
                ["d", "e"]
                    .iter()
                    .map(|n| format!("{n}: {:?}", names_or_err(&r.join(n)))),
            )
            .collect()
    };
    let kv = view(&k.mnt);
    let fv = view(&f.mnt);
    assert_eq!(
        fv, kv,
        "contents with colliding lower inode numbers: ovlfuse (left) vs kernel (right)"
    );
    let inos: Vec<(String, u64)> = ["a", "b", "d", "e", "d/x", "e/y"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                fs::symlink_metadata(f.mnt.join(n)).unwrap().ino(),
            )
        })
        .collect();
    let mut u: Vec<u64> = inos.iter().map(|x| x.1).collect();
    u.sort();
    u.dedup();
    assert_eq!(
        u.len(),
        inos.len(),
        "ovlfuse shows one st_ino for different files: {inos:?}"
    );
    // Copy-up and writes must reach the right object.
    for r in [&k.mnt, &f.mnt] {
        write_at(&r.join("b"), 0, b"FILE").unwrap();
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert_eq!(
        view(&f.mnt),
        view(&k.mnt),
        "after copy-up: ovlfuse (left) vs kernel (right)"
    );
    let (fr, kr) = (readdir_check(&f.mnt), readdir_check(&k.mnt));
    assert!(fr.0.is_empty(), "ovlfuse readdir problems: {:?}", fr.0);
    assert_eq!(fr.1, kr.1);
    fg.unmount();
    kg.unmount();
    lc.verify();
    drop(guards);
}

/// open(O_TRUNC) racing a truncate of the same file by another process: whichever comes
/// last, the size the mount shows is the upper file's. With the writeback cache and the
/// kernel's atomic O_TRUNC, the kernel set its own size to 0 after the truncate had
/// reached the upper file (README, Differences), in about one race in four.
#[test]
fn o_trunc_open_racing_a_truncate_leaves_one_size() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-otrunc-race");
    let st = Stack::new(&sc, 1);
    ok(
        fs::write(st.upper.join("f"), vec![b'u'; 1140]),
        "write upper f",
    );
    let g = mount_ovlfuse(&st, &[]);
    let (shown, on_disk) = (st.mnt.join("f"), st.upper.join("f"));
    let mut apart = Vec::new();
    for round in 0..200 {
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                ok(
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&shown)
                        .and_then(|f| f.set_len(10000)),
                    "ftruncate through another open file",
                );
            });
            barrier.wait();
            ok(
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&shown),
                "open O_TRUNC",
            );
        });
        let (a, b) = (
            ok(fs::metadata(&shown), "stat through the mount").len(),
            ok(fs::metadata(&on_disk), "stat the upper file").len(),
        );
        if a != b {
            apart.push(format!(
                "round {round}: the mount shows {a} bytes, the upper file has {b}"
            ));
        }
    }
    g.unmount();
    assert!(apart.is_empty(), "{}", apart.join("\n"));
}

#[test]
fn parallel_creates_renames_and_unlinks_in_one_directory() {
    if !fuse_available() {
        return;
    }
    let t = twin_with("sem-parallel-dir", &[&[E::Dir("d")]], &[], |st| {
        for i in 0..400 {
            fs::write(st.lowers[0].join(format!("d/l{i:03}")), format!("{i}")).unwrap();
        }
    });
    t.both("8 threads work on one merged directory", |r| {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let hs: Vec<_> = (0..8usize)
            .map(|t| {
                let d = r.join("d");
                let b = barrier.clone();
                std::thread::spawn(move || -> Vec<String> {
                    b.wait();
                    let mut errs = Vec::new();
                    for i in (t..400).step_by(8) {
                        let res = (|| -> io::Result<()> {
                            fs::write(d.join(format!("n{i:03}")), format!("new {i}"))?;
                            fs::rename(d.join(format!("l{i:03}")), d.join(format!("m{i:03}")))?;
                            if i % 3 == 0 {
                                fs::remove_file(d.join(format!("m{i:03}")))?;
                            }
                            if i % 5 == 0 {
                                fs::remove_file(d.join(format!("n{i:03}")))?;
                            }
                            Ok(())
                        })();
                        if let Err(e) = res {
                            errs.push(format!("{i}: {}", describe_err(&e)));
                        }
                    }
                    errs
                })
            })
            .collect();
        let errs: Vec<String> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (
            errs,
            names_or_err(&r.join("d")),
            readdir_check(&r.join("d"))
                .0
                .iter()
                .filter(|p| p.contains("more than once"))
                .count(),
        )
    });
    t.finish(true);
}

/// What a process does with a directory, and a file in it, that another process keeps
/// moving: stat, create, open and list attributes through a descriptor of the directory.
/// The kernel does not hold a moving directory's lock across these requests (xfstests
/// generic/707 creates files in one while `mv` moves it), so they must not depend on the
/// name the directory had when the request started. Returns the failures.
fn use_a_moving_directory(r: &Path) -> Vec<String> {
    let done = std::sync::atomic::AtomicBool::new(false);
    let (a, b) = (r.join("a"), r.join("b"));
    let dir = ok(
        fs::File::open(a.join("d")),
        "open the directory that will move",
    );
    let dfd = dir.as_raw_fd();
    std::thread::scope(|s| {
        let mover = s.spawn(|| {
            let mut errs = Vec::new();
            // Within a parent and across parents: the kernel holds the directory's lock for
            // the second kind only.
            let steps = [
                (a.join("d"), a.join("e")),
                (a.join("e"), b.join("d")),
                (b.join("d"), b.join("e")),
                (b.join("e"), a.join("d")),
            ];
            for i in 0..4000 {
                let (from, to) = &steps[i % 4];
                if let Err(e) = fs::rename(from, to) {
                    errs.push(format!("rename {i}: {}", describe_err(&e)));
                    break;
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            errs
        });
        let mut errs = Vec::new();
        let mut i = 0u64;
        while !done.load(std::sync::atomic::Ordering::SeqCst) && errs.len() < 10 {
            let name = cpath(Path::new(&format!("n{}", i % 64)));
            i += 1;
            // A create marks the directory's attributes stale; the stat after it asks.
            let fd = unsafe {
                libc::openat(
                    dfd,
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                errs.push(format!(
                    "create: {}",
                    describe_err(&io::Error::last_os_error())
                ));
                continue;
            }
            unsafe { libc::close(fd) };
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let empty = c"";
            if unsafe { libc::fstatat(dfd, empty.as_ptr(), &mut st, libc::AT_EMPTY_PATH) } != 0 {
                errs.push(format!(
                    "stat: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let f = c"f";
            let fd = unsafe { libc::openat(dfd, f.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                errs.push(format!(
                    "open f: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            } else {
                let mut buf = [0u8; 256];
                if unsafe { libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len()) } < 0 {
                    errs.push(format!(
                        "listxattr f: {}",
                        describe_err(&io::Error::last_os_error())
                    ));
                }
                unsafe { libc::close(fd) };
            }
            if unsafe { libc::unlinkat(dfd, name.as_ptr(), 0) } != 0 {
                errs.push(format!(
                    "unlink: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let mode = if i % 2 == 0 { 0o755 } else { 0o775 };
            if unsafe { libc::fchmod(dfd, mode) } != 0 {
                errs.push(format!(
                    "chmod: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let (k, v) = (c"user.k", i.to_string());
            if unsafe { libc::fsetxattr(dfd, k.as_ptr(), v.as_ptr().cast(), v.len(), 0) } != 0 {
                errs.push(format!(
                    "setxattr: {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
            let mut buf = [0u8; 32];
            let n = unsafe { libc::fgetxattr(dfd, k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 || &buf[..n as usize] != v.as_bytes() {
                errs.push(format!(
                    "getxattr: {n} {}",
                    describe_err(&io::Error::last_os_error())
                ));
            }
        }
        errs.extend(mover.join().unwrap());
        // The loop ran a different number of times on each mount; end alike.
        let end = c"end";
        let set = unsafe {
            libc::fchmod(dfd, 0o750)
                | libc::fsetxattr(dfd, c"user.k".as_ptr(), end.as_ptr().cast(), 3, 0)
        };
        if set != 0 {
            errs.push(format!(
                "final chmod, setxattr: {}",
                describe_err(&io::Error::last_os_error())
            ));
        }
        errs
    })
}

#[test]
fn requests_about_a_directory_being_moved_do_not_fail() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-moving-dir",
        &[&[E::Dir("a/d"), E::File("a/d/f", b"f"), E::Dir("b")]],
        &[],
    );
    t.both("stat, create, open while the directory moves", |r| {
        // Upper copies first, so the race is with renames alone, as in generic/707.
        fs::write(r.join("a/d/f"), b"upper f").unwrap();
        use_a_moving_directory(r)
    });
    t.finish(true);
}

#[test]
fn posix_acl_changes_and_inheritance() {
    if !fuse_available() {
        return;
    }
    const U: u32 = u32::MAX;
    const NOBODY: u32 = 65534;
    let dflt = acl(&[
        (1, 7, U),
        (2, 5, NOBODY),
        (4, 5, U),
        (0x10, 7, U),
        (0x20, 0, U),
    ]);
    let d2 = dflt.clone();
    let t = twin_with(
        "sem-acl2",
        &[&[
            E::File("f", b"f"),
            E::Mode("f", 0o644),
            E::Dir("dd"),
            E::Mode("dd", 0o777),
            E::File("dd/old", b"old"),
            E::Dir("dd/olddir"),
            E::File("g", b"g"),
            E::Mode("g", 0o600),
        ]],
        &[],
        move |st| lsetxattr(&st.lowers[0].join("dd"), "system.posix_acl_default", &d2).unwrap(),
    );
    let get = |p: &Path, n: &str| outcome(&lgetxattr(p, n));
    t.both(
        "set an access ACL through the mount (copy-up), mode follows the mask",
        |r| {
            let s = lsetxattr(
                &r.join("f"),
                "system.posix_acl_access",
                &acl(&[
                    (1, 6, U),
                    (2, 6, NOBODY),
                    (4, 4, U),
                    (0x10, 6, U),
                    (0x20, 4, U),
                ]),
            );
            (
                outcome_unit(&s),
                stat_str(&r.join("f")),
                get(&r.join("f"), "system.posix_acl_access"),
            )
        },
    );
    t.both("chmod rewrites the ACL mask", |r| {
        let c = fs::set_permissions(r.join("f"), fs::Permissions::from_mode(0o640));
        (
            outcome_unit(&c),
            stat_str(&r.join("f")),
            get(&r.join("f"), "system.posix_acl_access"),
        )
    });
    t.both("remove the ACL", |r| {
        (
            outcome_unit(&lremovexattr(&r.join("f"), "system.posix_acl_access")),
            stat_str(&r.join("f")),
        )
    });
    t.both(
        "files and dirs created under a default ACL, umask 077 ignored",
        |r| {
            let c = |n: &str| cpath(&r.join(n));
            let res = run_as(
                NOBODY,
                NOBODY,
                &[
                    Op::Umask(0o077),
                    Op::Open(c("dd/file"), libc::O_CREAT | libc::O_WRONLY),
                    Op::Mkdir(c("dd/sub")),
                ],
            );
            (
                res,
                stat_str(&r.join("dd/file")),
                stat_str(&r.join("dd/sub")),
                get(&r.join("dd/file"), "system.posix_acl_access"),
                get(&r.join("dd/sub"), "system.posix_acl_default"),
                get(&r.join("dd/sub"), "system.posix_acl_access"),
            )
        },
    );
    // Over a whiteout the object is built elsewhere and swapped in: it must still take the
    // default ACL of the directory it lands in (the kernel overlay sets the ACLs it computes).
    t.both(
        "created again over whiteouts under a default ACL, umask 077 ignored",
        |r| {
            let c = |n: &str| cpath(&r.join(n));
            let removed = (
                outcome_unit(&fs::remove_file(r.join("dd/old"))),
                outcome_unit(&fs::remove_dir(r.join("dd/olddir"))),
            );
            let res = run_as(
                NOBODY,
                NOBODY,
                &[
                    Op::Umask(0o077),
                    Op::Open(c("dd/old"), libc::O_CREAT | libc::O_WRONLY),
                    Op::Mkdir(c("dd/olddir")),
                ],
            );
            (
                removed,
                res,
                stat_str(&r.join("dd/old")),
                stat_str(&r.join("dd/olddir")),
                get(&r.join("dd/old"), "system.posix_acl_access"),
                get(&r.join("dd/olddir"), "system.posix_acl_default"),
                get(&r.join("dd/olddir"), "system.posix_acl_access"),
            )
        },
    );
    t.both("umask 027 applies where there is no default ACL", |r| {
        let res = run_as(
            NOBODY,
            NOBODY,
            &[
                Op::Umask(0o027),
                Op::Open(
                    cpath(&r.join("dd/sub/../../newfile_denied")),
                    libc::O_CREAT | libc::O_WRONLY,
                ),
            ],
        );
        (
            res,
            outcome_unit(&fs::symlink_metadata(r.join("newfile_denied"))),
        )
    });
    t.finish(true);
}

fn read_some(d: *mut libc::DIR, n: usize, out: &mut Vec<String>) -> bool {
    for _ in 0..n {
        match next_name(d) {
            Some(x) => out.push(x),
            None => return false,
        }
    }
    true
}

#[test]
fn many_open_directory_streams_read_interleaved() {
    if !fuse_available() {
        return;
    }
    // More open merged directories, and more entries in open listings, than ovlfuse keeps
    // cached (8192 directories / 400k entries): every stream must still list its directory
    // exactly once, whatever was evicted while it was half-read.
    const DIRS: usize = 9000;
    const BIG: usize = 60_000;
    let sc = Scratch::new("sem-many-streams");
    let st = Stack::new(&sc, 2);
    for i in 0..DIRS {
        fs::create_dir(st.lowers[0].join(format!("d{i:04}"))).unwrap();
        fs::create_dir(st.lowers[1].join(format!("d{i:04}"))).unwrap();
        fs::write(st.lowers[0].join(format!("d{i:04}/a")), b"").unwrap();
        fs::write(st.lowers[1].join(format!("d{i:04}/b")), b"").unwrap();
    }
    for l in 0..2 {
        fs::create_dir(st.lowers[l].join("big")).unwrap();
        for i in 0..BIG {
            fs::write(st.lowers[l].join(format!("big/l{l}-{i:05}")), b"").unwrap();
        }
    }
    let lc = LowerCheck::new(&st.lowers);
    let g = mount_ovlfuse(&st, &[]);
    // Part 1: 9000 merged directories open at once, read in two rounds.
    let mut streams = Vec::new();
    for i in 0..DIRS {
        let c = cpath(&st.mnt.join(format!("d{i:04}")));
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir d{i:04}: {}",
            describe_err(&io::Error::last_os_error())
        );
        let mut got = Vec::new();
        read_some(d, 2, &mut got);
        streams.push((d, got));
    }
    let mut bad = Vec::new();
    for (i, (d, got)) in streams.iter_mut().enumerate() {
        while read_some(*d, 1, got) {}
        got.sort();
        if *got != [".", "..", "a", "b"] {
            bad.push(format!("d{i:04}: {got:?}"));
        }
        unsafe { libc::closedir(*d) };
    }
    assert!(
        bad.is_empty(),
        "{} of {DIRS} interleaved listings wrong, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    // Part 2: four streams over one 120k-entry merged directory, read in turns.
    let c = cpath(&st.mnt.join("big"));
    let mut big: Vec<(*mut libc::DIR, Vec<String>, bool)> = (0..4)
        .map(|_| {
            let d = unsafe { libc::opendir(c.as_ptr()) };
            assert!(!d.is_null());
            (d, Vec::new(), true)
        })
        .collect();
    while big.iter().any(|b| b.2) {
        for (k, b) in big.iter_mut().enumerate() {
            if b.2 {
                b.2 = read_some(b.0, 5000 + 777 * k, &mut b.1);
            }
        }
    }
    for (k, (d, names, _)) in big.iter_mut().enumerate() {
        unsafe { libc::closedir(*d) };
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "stream {k}: duplicates in the big listing");
        assert_eq!(n, 2 * BIG + 2, "stream {k}: entry count of the big listing");
    }
    g.unmount();
    lc.verify();
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

/// Reads `p` through a fresh open and says whether its atime moved.
fn read_moves_atime(p: &Path) -> bool {
    let before = fs::symlink_metadata(p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let mut buf = Vec::new();
    fs::File::open(p).unwrap().read_to_end(&mut buf).unwrap();
    let after = fs::symlink_metadata(p).unwrap();
    (after.atime(), after.atime_nsec()) != (before.atime(), before.atime_nsec())
}

/// rm -rf of a merged directory: the view and upper match the kernel's, and once the
/// daemon has exited its work directory holds nothing but the shared whiteout: the old
/// upper copy of the removed directory, with a whiteout per lower entry, is moved there
/// to be deleted.
#[test]
fn removed_merged_directories_leave_nothing_in_the_workdir() {
    if !fuse_available() {
        return;
    }
    let files: Vec<String> = (0..600).map(|i| format!("d/sub/f{i}")).collect();
    let mut lower: Vec<E> = files.iter().map(|f| E::File(f, b"l")).collect();
    lower.push(E::File("d/top", b"t"));
    let t = twin("sem-reap", &[&lower], &[E::File("d/upper-only", b"u")]);
    t.both("rm -rf d", |m| {
        fs::remove_dir_all(m.join("d")).map_err(|e| e.kind())
    });
    t.both("d is gone", |m| fs::symlink_metadata(m.join("d")).is_err());
    t.both("mkdir d again", |m| {
        fs::create_dir(m.join("d")).map_err(|e| e.kind())
    });
    t.both("d is empty", |m| {
        ok(fs::read_dir(m.join("d")), "list d").count()
    });
    t.finish_with(true, |_, f| {
        let left: Vec<String> = ok(fs::read_dir(f.work.join("work")), "list work/work")
            .map(|e| ok(e, "dirent").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "#whiteout")
            .collect();
        assert!(
            left.is_empty(),
            "ovlfuse left {left:?} in its work directory after the unmount"
        );
    });
}

/// (mtime, ctime) of `p` in nanoseconds, asked of statx for those two only: a stat asking
/// for atime too would refresh attributes the kernel marked stale for its own reasons.
fn times_ns(p: &Path) -> (i128, i128) {
    let sx = statx_of(
        p,
        libc::AT_STATX_SYNC_AS_STAT,
        libc::STATX_MTIME | libc::STATX_CTIME,
    );
    let ns = |t: libc::statx_timestamp| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    (ns(sx.stx_mtime), ns(sx.stx_ctime))
}

/// A write through a shared mapping moves the file's mtime and ctime, seen by stat while
/// mapped and after, as on the kernel overlay: with FUSE passthrough the kernel writes
/// the mapped upper file by itself and no request tells us, so ovlfuse must not let the
/// kernel keep the old times (xfstests generic/080 and generic/215 found this).
#[test]
fn mapped_writes_move_mtime_and_ctime_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let page = vec![b'p'; 4096];
    let t = twin(
        "sem-mmap-times",
        &[&[E::File("low", &page)]],
        &[E::File("up", &page)],
    );
    for name in ["up", "low"] {
        t.both(&format!("times of {name} after a mapped write"), |m| {
            let f = m.join(name);
            let file = ok(
                fs::OpenOptions::new().read(true).write(true).open(&f),
                "open read-write",
            );
            // SAFETY: a fresh shared mapping of one page of a file at least that long,
            // written through and unmapped here, with no other reference to it.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED, "mmap {}", f.display());
                // Taken while open and mapped, so the kernel may hold on to these.
                let before = times_ns(&f);
                // Past the filesystem clock's granularity.
                std::thread::sleep(std::time::Duration::from_millis(50));
                *(p as *mut u8) = b'M';
                let during = times_ns(&f);
                assert_eq!(libc::munmap(p, 4096), 0);
                drop(file);
                let after = times_ns(&f);
                let moved = |t: (i128, i128)| (t.0 > before.0, t.1 > before.1);
                (moved(during), moved(after), fs::read(&f).ok().map(|d| d[0]))
            }
        });
    }
    t.finish(false);
}

#[test]
fn atime_mount_options_behave_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    // For each policy: a file whose atime is older than its mtime is read twice. relatime
    // moves atime on the first read only, strictatime on both, noatime on neither; a
    // read-only mount never. The file is a whole page, so the second read can be served
    // from the kernel's page cache unless ovlfuse asks it to drop it.
    let cases: [(&str, [bool; 2]); 4] = [
        ("relatime", [true, false]),
        ("strictatime", [true, true]),
        ("noatime", [false, false]),
        ("ro,strictatime", [false, false]),
    ];
    for (opt, want) in cases {
        let prep = |st: &Stack| {
            fs::write(st.lowers[0].join("low"), vec![b'l'; 4096]).unwrap();
            fs::write(st.upper.join("f"), vec![b'x'; 4096]).unwrap();
            // atime 1000 s, mtime 2000 s after the epoch: older than mtime.
            set_times(&st.upper.join("f"), (1000, 0), (2000, 0)).unwrap();
        };
        let got = kernel_then_ovlfuse("sem-atime", opt, prep, |m, kernel| {
            let f = m.join("f");
            let moved = [read_moves_atime(&f), read_moves_atime(&f)];
            // Lower files never move, whatever the policy.
            assert!(
                !read_moves_atime(&m.join("low")),
                "lower atime moved (kernel: {kernel}, {opt})"
            );
            moved
        });
        assert_eq!(got[0], want, "kernel overlayfs with {opt}");
        assert_eq!(got[1], want, "ovlfuse with {opt} (kernel: {:?})", got[0]);
    }
}

/// Lists directory `p` through a fresh open and says whether its atime moved, and whether
/// its ctime did.
fn listing_moves_times(p: &Path) -> (bool, bool) {
    let before = fs::symlink_metadata(p).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let n = fs::read_dir(p).unwrap().count();
    assert!(n > 0, "{p:?} lists empty");
    let after = fs::symlink_metadata(p).unwrap();
    (
        (after.atime(), after.atime_nsec()) != (before.atime(), before.atime_nsec()),
        (after.ctime(), after.ctime_nsec()) != (before.ctime(), before.ctime_nsec()),
    )
}

#[test]
fn listing_moves_directory_atimes_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    // xfstests overlay/039. An upper directory and a merged one, their atimes older than
    // their mtimes, each listed twice: relatime moves the atime on the first listing only,
    // strictatime on both, noatime and nodiratime on neither, a read-only mount never; no
    // listing moves a ctime or a lower directory's atime.
    let cases: [(&str, [(bool, bool); 2]); 5] = [
        ("relatime", [(true, false), (false, false)]),
        ("strictatime", [(true, false), (true, false)]),
        ("noatime", [(false, false), (false, false)]),
        ("relatime,nodiratime", [(false, false), (false, false)]),
        ("ro,strictatime", [(false, false), (false, false)]),
    ];
    for (opt, want) in cases {
        let prep = |st: &Stack| {
            build(
                &st.lowers[0],
                &[E::File("m/a", b"a"), E::File("low/x", b"x")],
            );
            build(&st.upper, &[E::File("d/f", b"f"), E::File("m/b", b"b")]);
            for dir in ["d", "m"] {
                set_times(&st.upper.join(dir), (1000, 0), (2000, 0)).unwrap();
            }
        };
        let got = kernel_then_ovlfuse("sem-diratime", opt, prep, |m, kernel| {
            let low = listing_moves_times(&m.join("low"));
            assert_eq!(
                low,
                (false, false),
                "lower directory (kernel: {kernel}, {opt})"
            );
            ["d", "m"].map(|d| {
                let p = m.join(d);
                [listing_moves_times(&p), listing_moves_times(&p)]
            })
        });
        assert_eq!(got[0], [want; 2], "kernel overlayfs with {opt}");
        assert_eq!(
            got[1], [want; 2],
            "ovlfuse with {opt} (kernel: {:?})",
            got[0]
        );
    }
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

/// Clears the append-only and immutable flags of the given lower paths when dropped, then
/// removes the scratch directories holding them, which their own cleanup could not.
struct Unprotect(std::cell::RefCell<Vec<PathBuf>>);

impl Drop for Unprotect {
    fn drop(&mut self) {
        for p in self.0.borrow().iter() {
            let _ = set_inode_flags(p, 0);
            let Ok(rel) = p.strip_prefix(TEST_ROOT) else {
                continue;
            };
            if let Some(top) = rel.components().next() {
                let top = Path::new(TEST_ROOT).join(top);
                if mounts_below(&top, true).is_empty() {
                    let _ = fs::remove_dir_all(&top);
                }
            }
        }
    }
}

/// Changes to objects of a lower layer that carry the immutable or append-only attribute
/// (set in the layer itself), for [`lower_immutable_and_append_only_objects_as_on_the_kernel`].
fn protected_lower_ops(m: &Path) -> Vec<String> {
    let p = |n: &str| m.join(n);
    let open = |n: &str, flags: i32| outcome_unit(&open_fd(&p(n), flags, 0o644));
    vec![
        open("ifile", libc::O_WRONLY),
        open("ifile", libc::O_RDONLY),
        open("afile", libc::O_WRONLY),
        open("afile", libc::O_WRONLY | libc::O_APPEND | libc::O_TRUNC),
        outcome_unit(
            &fs::OpenOptions::new()
                .write(true)
                .open(p("ifile"))
                .and_then(|f| f.set_len(0)),
        ),
        outcome_unit(&cvt(unsafe {
            libc::truncate(cpath(&p("afile")).as_ptr(), 0)
        })),
        outcome_unit(&fs::set_permissions(
            p("ifile"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&fs::set_permissions(
            p("afile"),
            fs::Permissions::from_mode(0o600),
        )),
        outcome_unit(&set_times(&p("afile"), (1, 0), (1, 0))),
        outcome_unit(&lsetxattr(&p("ifile"), "user.x", b"1")),
        outcome_unit(&lsetxattr(&p("afile"), "user.x", b"1")),
        outcome_unit(&lremovexattr(&p("afile"), "user.x")),
        outcome_unit(&fs::hard_link(p("ifile"), p("ilink"))),
        outcome_unit(&fs::hard_link(p("afile"), p("alink"))),
        outcome_unit(&fs::remove_file(p("ifile"))),
        outcome_unit(&fs::remove_file(p("afile"))),
        outcome_unit(&fs::rename(p("ifile"), p("i2"))),
        outcome_unit(&fs::rename(p("plain"), p("ifile"))),
        open("idir/new", libc::O_WRONLY | libc::O_CREAT),
        open("idir/f", libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL),
        outcome_unit(&fs::create_dir(p("idir/d"))),
        outcome_unit(&fs::remove_file(p("idir/f"))),
        outcome_unit(&fs::rename(p("plain"), p("idir/x"))),
        outcome_unit(&fs::remove_file(p("adir/f"))),
        outcome_unit(&fs::remove_dir(p("adir/sub"))),
        outcome_unit(&fs::rename(p("adir/f"), p("adir/g"))),
        // What they allow: appending (which copies the file up), new entries in an
        // append-only directory (which copies it up); after that, the copies refuse the
        // same changes.
        outcome_unit(
            &fs::OpenOptions::new()
                .append(true)
                .open(p("afile"))
                .and_then(|mut f| f.write_all(b"+")),
        ),
        open("adir/new", libc::O_WRONLY | libc::O_CREAT),
        open("afile", libc::O_WRONLY),
        outcome_unit(&fs::remove_file(p("adir/f"))),
        outcome_unit(&fs::remove_file(p("adir/new"))),
        read_str(&p("afile")),
        format!("{:?}", names_or_err(&p("adir"))),
    ]
}

#[test]
fn lower_immutable_and_append_only_objects_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    const SYNC: u32 = 0x08;
    const NOATIME: u32 = 0x80;
    // xfstests overlay/075 and 078: the attributes of lower objects hold through the
    // overlay, and a copy keeps them (the kernel in its protattr xattr).
    let protected = Unprotect(Default::default());
    let t = twin_with(
        "sem-lower-iflags",
        &[&[
            E::File("ifile", b"i"),
            E::File("afile", b"a"),
            E::File("plain", b"p"),
            E::File("idir/f", b"f"),
            E::File("adir/f", b"f"),
            E::Dir("adir/sub"),
            E::File("sfile", b"s"),
        ]],
        &[],
        |st| {
            set_inode_flags(&st.lowers[0].join("sfile"), SYNC | NOATIME).unwrap();
            for (n, f) in [
                ("ifile", IMMUTABLE),
                ("idir", IMMUTABLE),
                ("afile", APPEND),
                ("adir", APPEND),
            ] {
                let path = st.lowers[0].join(n);
                protected.0.borrow_mut().push(path.clone());
                set_inode_flags(&path, f).expect("chattr in a lower layer on ext4");
            }
        },
    );
    t.both("changes to protected lower objects", protected_lower_ops);
    let flags_of = |r: &Path| {
        ["ifile", "afile", "idir", "adir"]
            .map(|n| {
                open_fd(&r.join(n), libc::O_RDONLY | libc::O_NONBLOCK, 0).and_then(|f| {
                    let mut v: libc::c_long = 0;
                    cvt(unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut v) })
                        .map(|_| v & (IMMUTABLE | APPEND) as libc::c_long)
                })
            })
            .map(|r| outcome(&r))
    };
    t.both("lsattr through the mount", flags_of);
    t.both("a copy keeps sync and no-atime", |r| {
        let chmod = fs::set_permissions(r.join("sfile"), fs::Permissions::from_mode(0o600));
        let flags = open_fd(&r.join("sfile"), libc::O_RDONLY, 0).and_then(|f| {
            let mut v: libc::c_long = 0;
            cvt(unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut v) })
                .map(|_| v & (SYNC | NOATIME) as libc::c_long)
        });
        (outcome_unit(&chmod), outcome(&flags))
    });
    t.finish_with(true, |k, f| {
        // The copies keep them across a remount, in the same attribute.
        for (who, st) in [("kernel", k), ("ovlfuse", f)] {
            for n in ["afile", "adir"] {
                assert_eq!(
                    outcome(&lgetxattr(&st.upper.join(n), "trusted.overlay.protattr")),
                    "ok: [97]",
                    "{who}: the copy of {n} records append-only"
                );
            }
        }
        let kg = mount_kernel(k);
        let fg = mount_ovlfuse(f, &[]);
        let again = |r: &Path| {
            (
                outcome_unit(&open_fd(&r.join("afile"), libc::O_WRONLY, 0)),
                outcome_unit(&fs::remove_file(r.join("adir/f"))),
                outcome_unit(&open_fd(
                    &r.join("adir/new2"),
                    libc::O_WRONLY | libc::O_CREAT,
                    0o644,
                )),
                flags_of(r),
            )
        };
        assert_eq!(
            again(&f.mnt),
            again(&k.mnt),
            "after a remount: ovlfuse (left), kernel (right)"
        );
        fg.unmount();
        kg.unmount();
    });
    drop(protected);
}

/// A file the kernel overlay copied up keeps, under ovlfuse, the inode number the kernel
/// shows for it: the lower file's, which ovlfuse reads from the kernel's origin record (a
/// file handle of the lower file), in a stat and in a listing. A lower file with hard
/// links gets no such record from the kernel, and both show the copy's own number.
#[test]
fn a_file_the_kernel_copied_up_keeps_its_inode_number_under_ovlfuse() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-kernel-origin",
        &[&[
            E::File("d/g", b"g"),
            E::File("f", b"f"),
            E::Hardlink("f", "hl"),
            E::File("plain", b"p"),
        ]],
        &[],
    );
    t.both("copy-ups", |r| {
        ["d/g", "f"].map(|n| {
            outcome_unit(&fs::set_permissions(
                r.join(n),
                fs::Permissions::from_mode(0o600),
            ))
        })
    });
    t.finish_with(true, |k, _| {
        let inos = |m: &Path| {
            let stat = ["d/g", "f", "hl", "plain", "d"]
                .map(|n| fs::symlink_metadata(m.join(n)).map(|md| md.ino()).unwrap());
            let mut listed: Vec<(String, u64)> = fs::read_dir(m.join("d"))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name().to_string_lossy().into_owned(), e.ino())
                })
                .collect();
            listed.sort();
            (stat, listed)
        };
        // The kernel's upper, seen by the kernel and then by ovlfuse.
        let kg = mount_kernel(k);
        let want = inos(&k.mnt);
        kg.unmount();
        let fg = mount_ovlfuse(k, &[]);
        let got = inos(&k.mnt);
        fg.unmount();
        assert_eq!(
            got, want,
            "ovlfuse (left) and the kernel (right) on the kernel's upper"
        );
        let lower_g = fs::symlink_metadata(k.lowers[0].join("d/g")).unwrap().ino();
        assert_eq!(
            want.0[0], lower_g,
            "the kernel shows the lower number of d/g"
        );
    });
}

/// A lower layer that holds the upper and work directories (as `lowerdir=/` does with an
/// upper anywhere): the kernel overlay mounts it, shows the rest of that layer, and fails
/// a lookup that reaches the upper, work or `work/work` directory through it (ELOOP: its
/// trap inodes), also on a redirect's path. ovlfuse used to refuse such a mount ("upperdir
/// is inside lowerdir").
#[test]
fn a_lower_layer_holding_the_upper_is_mounted_and_its_traps_refused_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-lower-holds-upper");
    let mut seen = Vec::new();
    for side in ["kernel", "ovlfuse"] {
        let base = sc.dir(side);
        let mut st = Stack::new_at(&base, 1);
        build(&base, &[E::File("keep", b"k"), E::File("gone", b"g")]);
        build(&st.upper, &[E::Dir("sub"), E::Dir("moved")]);
        ok(
            lsetxattr(
                &st.upper.join("moved"),
                "trusted.overlay.redirect",
                b"/upper/sub",
            ),
            "redirect into the upper through the lower",
        );
        st.lowers = vec![base.clone()];
        let g = if side == "kernel" {
            mount_kernel(&st)
        } else {
            mount_ovlfuse(&st, &[])
        };
        let m = &st.mnt;
        let mut view = vec![format!("root lists {}", outcome(&names(m)))];
        for n in [
            "keep",
            "lower0",
            "mnt",
            "upper",
            "work",
            "work/work",
            "moved",
        ] {
            view.push(format!(
                "{n}: {}",
                outcome(&fs::symlink_metadata(m.join(n)).map(|md| md.is_dir()))
            ));
        }
        view.push(format!(
            "rm gone: {}",
            outcome(&fs::remove_file(m.join("gone")))
        ));
        view.push(format!(
            "write: {}",
            outcome(&fs::write(m.join("new"), b"n"))
        ));
        view.push(format!("root lists {}", outcome(&names(m))));
        g.unmount();
        view.push(format!("upper holds {}", outcome(&names(&st.upper))));
        seen.push(view);
    }
    assert_eq!(seen[0], seen[1], "kernel, then ovlfuse");
}

/// The kernel overlay's first mount of a new upper stores an instance uuid on the upper's
/// root (`overlay.uuid`, 16 random bytes); with `uuid=auto` (the default) an upper whose
/// root is already marked impure gets none, `uuid=on` writes one anyway, `uuid=null` and
/// `uuid=off` never do, and one that is there is kept. ovlfuse writes and keeps it in the
/// same cases, under the same prefix, so the kernel finds the same upper whichever of the
/// two mounted it first.
#[test]
fn the_upper_gets_the_kernels_instance_uuid_in_the_same_cases() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-instance-uuid");
    let kept = [7u8; 16];
    // What is on the upper root before the mount: an overlay xattr and its value.
    type Mark<'a> = Option<(&'a str, &'a [u8])>;
    // (case, mount option, userxattr, mark)
    let cases: [(&str, &str, bool, Mark); 7] = [
        ("new upper", "", false, None),
        ("impure root", "", false, Some(("impure", b"y"))),
        (
            "impure root, uuid=on",
            "uuid=on",
            false,
            Some(("impure", b"y")),
        ),
        ("uuid=null", "uuid=null", false, None),
        ("uuid=off", "uuid=off", false, None),
        ("uuid kept", "", false, Some(("uuid", &kept))),
        ("new upper, userxattr", "", true, None),
    ];
    for (case, opt, userxattr, before) in cases {
        let prefix = if userxattr {
            "user.overlay."
        } else {
            "trusted.overlay."
        };
        let mut seen = Vec::new();
        for side in ["kernel", "ovlfuse"] {
            let st = Stack::new_at(&sc.dir(&format!("{case}-{side}")), 1);
            if let Some((name, value)) = before {
                ok(
                    lsetxattr(&st.upper, &format!("{prefix}{name}"), value),
                    "mark the upper root",
                );
            }
            let mut opts: Vec<&str> = Vec::new();
            opts.extend((!opt.is_empty()).then_some(opt));
            opts.extend(userxattr.then_some("userxattr"));
            let g = if side == "kernel" {
                let extra = opts.join(",");
                if userxattr {
                    mount_kernel_plain(&st, &extra)
                } else if extra.is_empty() {
                    mount_kernel(&st)
                } else {
                    mount_kernel_with(&st, &extra)
                }
            } else {
                mount_ovlfuse(&st, &opts)
            };
            g.unmount();
            let other = if userxattr { "trusted" } else { "user" };
            assert!(
                lgetxattr(&st.upper, &format!("{other}.overlay.uuid")).is_err(),
                "{case}: {side} stored a uuid under the other prefix"
            );
            seen.push(match lgetxattr(&st.upper, &format!("{prefix}uuid")) {
                Err(e) => format!("none ({})", describe_err(&e)),
                Ok(v) if v == kept => "the one there before".to_string(),
                Ok(v) if v.len() == 16 && v[6] >> 4 == 4 && v[8] >> 6 == 2 => {
                    "a new random one".to_string()
                }
                Ok(v) => format!("an odd one: {v:02x?}"),
            });
        }
        assert_eq!(seen[0], seen[1], "{case}: kernel, then ovlfuse");
    }
}

/// The other way round: ovlfuse writes the kernel's origin record on what it copies up
/// (byte for byte as the kernel's copy-up does, lower filesystem uuid included), so a
/// kernel overlay mounting ovlfuse's upper shows the lower object's inode number for such
/// copies, in `stat` (and in listings, where all layers share a filesystem), as for its
/// own. A lower object with hard links gets no record on either. Once with the lower on the
/// scratch filesystem and once on a tmpfs, whose uuid the records carry.
#[test]
fn what_ovlfuse_copied_up_keeps_its_inode_number_under_the_kernel() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-origin-for-kernel");
    let names = ["d/g", "f", "h1", "h2", "sl", "fifo", "dd", "d"];
    let copied = ["d/g", "f", "h1", "sl", "fifo", "dd"];
    for on_tmpfs in [false, true] {
        let base = sc.dir(if on_tmpfs { "tmpfs" } else { "scratch" });
        let k = Stack::new_at(&base.join("k"), 1);
        let mut f = Stack::new_at(&base.join("f"), 1);
        let _t = on_tmpfs.then(|| mount_tmpfs(&k.lowers[0]));
        f.lowers = k.lowers.clone();
        build(
            &k.lowers[0],
            &[
                E::File("d/g", b"g"),
                E::File("f", b"f"),
                E::File("h1", b"h"),
                E::Hardlink("h1", "h2"),
                E::Symlink("sl", "f"),
                E::Fifo("fifo"),
                E::Dir("dd"),
            ],
        );
        let copy_up = |m: &Path| {
            for n in copied {
                ok(lchown(&m.join(n), 0, 0), &format!("lchown {n}"));
            }
        };
        let kg = mount_kernel(&k);
        copy_up(&k.mnt);
        kg.unmount();
        let fg = mount_ovlfuse(&f, &[]);
        copy_up(&f.mnt);
        fg.unmount();
        let record =
            |upper: &Path, n: &str| outcome(&lgetxattr(&upper.join(n), "trusted.overlay.origin"));
        for n in copied {
            assert_eq!(
                record(&f.upper, n),
                record(&k.upper, n),
                "origin record of {n} (lower on tmpfs: {on_tmpfs}): ovlfuse's (left), the kernel's (right)"
            );
        }
        assert!(
            record(&k.upper, "h1").contains("ENODATA"),
            "setup: the kernel records no origin for a file with hard links"
        );
        let inos = |st: &Stack| {
            let g = mount_kernel(st);
            let stat: Vec<(&str, u64)> = names
                .iter()
                .filter(|&&n| n != "h1")
                .map(|&n| (n, fs::symlink_metadata(st.mnt.join(n)).unwrap().ino()))
                .collect();
            // With layers on two filesystems (and no xino), the kernel lists every upper
            // entry with the upper inode's number, whatever its stat shows.
            let mut listed: Vec<(String, u64)> = Vec::new();
            for dir in ["", "d"].into_iter().filter(|_| !on_tmpfs) {
                for e in fs::read_dir(st.mnt.join(dir)).unwrap() {
                    let e = e.unwrap();
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n != "h1" {
                        listed.push((format!("{dir}/{n}"), e.ino()));
                    }
                }
            }
            listed.sort();
            g.unmount();
            (stat, listed)
        };
        let theirs = inos(&k);
        let lower_g = fs::symlink_metadata(k.lowers[0].join("d/g")).unwrap().ino();
        assert_eq!(
            theirs.0[0],
            ("d/g", lower_g),
            "setup: the kernel shows the lower number of its copy of d/g"
        );
        assert_eq!(
            inos(&f),
            theirs,
            "the kernel on ovlfuse's upper (left) and on its own (right), lower on tmpfs: {on_tmpfs}"
        );
    }
}

/// A directory listed, then moved to another parent, lists the new parent's number as
/// `..`: the kernel's FUSE client keeps its cached listing across the rename (nothing in
/// the directory changed), so ovlfuse must drop it. Random seed 200132055.
#[test]
fn dot_dot_of_a_directory_moved_elsewhere_is_its_new_parent() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-moved-dotdot",
        &[&[E::Dir("a"), E::Dir("c"), E::Dir("low/sub")]],
        &[],
    );
    t.both("moves after a listing", |r| {
        let dotdot = |dir: &str| {
            let listed = read_dir_raw(&r.join(dir))
                .unwrap()
                .into_iter()
                .find(|e| e.name == "..")
                .map(|e| e.ino);
            let parent = Path::new(dir).parent().unwrap();
            listed == Some(fs::metadata(r.join(parent)).unwrap().ino())
        };
        fs::create_dir(r.join("a/b")).unwrap();
        let before = (dotdot("a/b"), dotdot("low/sub"));
        fs::rename(r.join("a/b"), r.join("c/x")).unwrap();
        fs::rename(r.join("low/sub"), r.join("c/y")).unwrap();
        (before, dotdot("c/x"), dotdot("c/y"))
    });
    t.finish(true);
}

/// Names that show one inode number, each group sorted.
type NameGroups = Vec<Vec<String>>;

/// Names grouped by the inode number they show, in `stat` and in a listing of `root`, with
/// each name's link count: which names one would take for links of one file.
fn inode_groups(root: &Path) -> (NameGroups, NameGroups, Vec<(String, u64)>) {
    let group = |pairs: Vec<(String, u64)>| {
        let mut by: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (n, ino) in pairs {
            by.entry(ino).or_default().push(n);
        }
        let mut g: Vec<Vec<String>> = by.into_values().collect();
        g.iter_mut().for_each(|v| v.sort());
        g.sort();
        g
    };
    let names = names(root).unwrap();
    let stat: Vec<(String, fs::Metadata)> = names
        .iter()
        .map(|n| (n.clone(), fs::symlink_metadata(root.join(n)).unwrap()))
        .collect();
    let listed = fs::read_dir(root)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.ino())
        })
        .collect();
    (
        group(stat.iter().map(|(n, m)| (n.clone(), m.ino())).collect()),
        group(listed),
        stat.iter().map(|(n, m)| (n.clone(), m.nlink())).collect(),
    )
}

/// A copy-up breaks a lower hard link: the copy is another file than the link's other
/// names, so it must not show their inode number, or tar, rsync -H and du would take two
/// files with different data for one. The kernel overlay (index=off) gives the copy its
/// own number, in the mount that copied it and after a remount; so must ovlfuse.
#[test]
fn a_copied_up_lower_hard_link_is_another_inode_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let t = twin(
        "sem-broken-link",
        &[&[
            E::File("h1", b"h"),
            E::Hardlink("h1", "h2"),
            E::File("k1", b"k"),
            E::Hardlink("k1", "k2"),
            E::Hardlink("k1", "k3"),
            E::File("plain", b"p"),
        ]],
        &[],
    );
    t.both("before any copy-up", inode_groups);
    t.both("copy-ups of one name of each", |r| {
        let chmod = fs::set_permissions(r.join("h1"), fs::Permissions::from_mode(0o600));
        let write = fs::OpenOptions::new()
            .append(true)
            .open(r.join("k2"))
            .and_then(|mut f| f.write_all(b"more"));
        (outcome_unit(&chmod), outcome_unit(&write), inode_groups(r))
    });
    t.both("a link to the copy", |r| {
        (
            outcome_unit(&fs::hard_link(r.join("k2"), r.join("k4"))),
            inode_groups(r),
        )
    });
    t.finish_with(true, |k, f| {
        let kg = mount_kernel(k);
        let want = inode_groups(&k.mnt);
        kg.unmount();
        let fg = mount_ovlfuse(f, &[]);
        let got = inode_groups(&f.mnt);
        fg.unmount();
        assert_eq!(
            got, want,
            "after a remount: ovlfuse (left), the kernel (right)"
        );
    });
}

/// A kernel overlay mounted with `metacopy=on` copies up only the metadata of a file whose
/// owner or mode changes: the copy (marked `overlay.metacopy`) holds no data, which stays
/// in the lower file. ovlfuse, like the kernel overlay with `metacopy=off`, does not follow
/// such copies, and must not serve the copy's empty blocks as the file's data. Both refuse
/// to open them and to change them with EPERM; the kernel refuses their lookup already, so
/// there `stat` fails too (README).
#[test]
fn metadata_only_copies_are_refused_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let stub = [0u8; 3000];
    let t = twin(
        "sem-metacopy",
        &[&[
            E::File("stub", &stub),
            E::Xattr("stub", "trusted.overlay.metacopy", b""),
            E::File("ustub", b"the data the upper stub stands for"),
            E::File("plain", b"plain"),
        ]],
        &[
            E::File("ustub", &stub),
            E::Xattr("ustub", "trusted.overlay.metacopy", b""),
        ],
    );
    t.both("opening and changing metadata-only copies", |r| {
        let open = |n: &str, flags: i32| outcome_unit(&open_fd(&r.join(n), flags, 0));
        (
            open("stub", libc::O_RDONLY),
            open("stub", libc::O_WRONLY),
            open("ustub", libc::O_RDONLY),
            outcome_unit(&fs::set_permissions(
                r.join("stub"),
                fs::Permissions::from_mode(0o600),
            )),
            read_str(&r.join("plain")),
        )
    });
    expect_errno(
        fs::symlink_metadata(t.km().join("stub")),
        libc::EPERM,
        "kernel lookup of a metadata-only copy",
    );
    assert!(fs::symlink_metadata(t.fm().join("stub")).is_ok_and(|m| m.len() == 3000));
    t.finish_apart(true, |_, _| {});
}

/// Times set through a descriptor of a directory removed while it was open stay set. The
/// kernel overlay empties a merged directory before its rmdir answers; ovlfuse removes the
/// whiteouts it held afterwards, on a thread of its own, and each of those removals moved
/// the directory's mtime: a futimens made meanwhile was overwritten by "now" (found by the
/// random differential test over io_uring, seed 200122934). With thousands of whiteouts
/// the futimens reliably lands before that thread is done.
#[test]
fn times_set_on_a_directory_removed_while_open_hold_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const N: usize = 4000;
    let t = twin_with("sem-removed-dir-times", &[&[E::Dir("d")]], &[], |st| {
        for i in 0..N {
            fs::write(st.lowers[0].join(format!("d/f{i:04}")), b"").unwrap();
        }
    });
    t.both(
        "futimens through a descriptor of a removed merged directory",
        |r| {
            let d = fs::File::open(r.join("d")).unwrap();
            for i in 0..N {
                fs::remove_file(r.join(format!("d/f{i:04}"))).unwrap();
            }
            let rm = fs::remove_dir(r.join("d"));
            let ts = [
                libc::timespec {
                    tv_sec: 1_000_000_123,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 1_111_111_111,
                    tv_nsec: 5,
                },
            ];
            let set = cvt(unsafe { libc::futimens(d.as_raw_fd(), ts.as_ptr()) });
            let times = d.metadata().map(|m| (m.atime(), m.mtime(), m.mtime_nsec()));
            (outcome_unit(&rm), outcome_unit(&set), outcome(&times))
        },
    );
    t.finish(true);
}

#[test]
fn attributes_set_on_an_open_file_hold_for_its_descriptor_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    // xfstests generic/553: a descriptor opened before chattr +i may still write, but not
    // allocate; one opened before chattr +a may not truncate, punch or copy data in (which
    // needs O_APPEND's EBADF). For an upper file and for a lower one (copied up by the
    // chattr).
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    let t = twin(
        "sem-iflags-open",
        &[&[E::File("low", b"lower data"), E::File("src", b"source")]],
        &[E::File("up", b"upper data")],
    );
    t.both("through descriptors opened before the attribute", |r| {
        let mut out = Vec::new();
        for (name, flag) in [("up", IMMUTABLE), ("low", IMMUTABLE), ("up", APPEND)] {
            let p = r.join(name);
            let flags = if flag == APPEND {
                libc::O_WRONLY | libc::O_APPEND
            } else {
                libc::O_RDWR
            };
            let f = open_fd(&p, flags, 0).unwrap();
            let src = open_fd(&r.join("src"), libc::O_RDONLY, 0).unwrap();
            let fd = f.as_raw_fd();
            out.push(outcome_unit(&set_inode_flags(&p, flag)));
            out.push(outcome_unit(&f.write_at(b"X", 1)));
            // ftruncate, hole punching and copy_file_range through a descriptor of a file
            // made immutable are left to the append-only case: without passthrough, the
            // kernel's FUSE client keeps the flag it set through the mount and refuses them
            // itself (EPERM, EIO) before ovlfuse sees a request (README, "Differences").
            if flag == APPEND {
                out.push(outcome_unit(&cvt(unsafe { libc::ftruncate(fd, 4) })));
                let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                out.push(outcome_unit(&cvt(unsafe {
                    libc::fallocate(fd, punch, 0, 1)
                })));
                let (mut off_in, mut off_out): (libc::loff_t, libc::loff_t) = (0, 0);
                out.push(outcome_unit(&cvt(unsafe {
                    libc::copy_file_range(src.as_raw_fd(), &mut off_in, fd, &mut off_out, 3, 0)
                })));
            }
            out.push(outcome_unit(&cvt(unsafe {
                libc::fallocate(fd, 0, 0, 8192)
            })));
            out.push(outcome_unit(&set_inode_flags(&p, 0)));
            let data = read_str(&p);
            out.push(format!(
                "{} bytes: {:?}",
                data.len(),
                &data[..data.len().min(8)]
            ));
        }
        out
    });
    t.finish(true);
}

/// ftruncate through a descriptor opened before `chattr +i`: the VFS checks only
/// append-only there, so the kernel overlay extends the file. With the writeback cache the
/// kernel sends the truncate's times along with the size; ovlfuse refused those as a
/// change of times to an immutable file (EPERM; random seed 200067009).
#[test]
fn ftruncate_through_a_descriptor_opened_before_chattr_i_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const IMMUTABLE: u32 = 0x10;
    let mut shown = Vec::new();
    for (who, opts) in [
        ("kernel", None),
        ("ovlfuse", Some(&[][..])),
        ("ovlfuse passthrough=off", Some(&["passthrough=off"][..])),
    ] {
        let sc = Scratch::new("sem-ftruncate-after-chattr-i");
        let st = Stack::new(&sc, 1);
        build(&st.lowers[0], &[E::File("f", b"12345678")]);
        let lc = LowerCheck::new(&st.lowers);
        let g = match opts {
            None => mount_kernel(&st),
            Some(o) => mount_ovlfuse(&st, o),
        };
        let f = ok(
            fs::OpenOptions::new().append(true).open(st.mnt.join("f")),
            "open O_WRONLY|O_APPEND",
        );
        ok(set_inode_flags(&st.mnt.join("f"), IMMUTABLE), "chattr +i");
        let r = outcome_unit(&f.set_len(100));
        let size = ok(fs::metadata(st.mnt.join("f")), "stat").len();
        drop(f);
        ok(set_inode_flags(&st.mnt.join("f"), 0), "chattr -i");
        g.unmount();
        lc.verify();
        shown.push((who, r, size));
    }
    for (who, r, size) in &shown[1..] {
        assert_eq!(
            (r, size),
            (&shown[0].1, &shown[0].2),
            "{who}: ftruncate and size, against the kernel overlay's"
        );
    }
    assert_eq!(shown[0].2, 100, "the kernel overlay extends the file");
}

#[test]
fn append_only_and_immutable_files_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    const IMMUTABLE: u32 = 0x10;
    const APPEND: u32 = 0x20;
    let prep = |st: &Stack| {
        fs::write(st.lowers[0].join("log"), b"one\n").unwrap();
        fs::create_dir_all(st.lowers[0].join("frozen/sub")).unwrap();
        fs::write(st.lowers[0].join("frozen/sub/f"), b"x").unwrap();
        fs::write(st.lowers[0].join("frozen/g"), b"x").unwrap();
    };
    let results = kernel_then_ovlfuse("sem-iflags", "", prep, |m, _| {
        let mut r = Vec::new();
        r.push(outcome_unit(&set_inode_flags(&m.join("log"), APPEND)));
        r.push(outcome_unit(&open_fd(&m.join("log"), libc::O_WRONLY, 0)));
        r.push(outcome_unit(&open_fd(
            &m.join("log"),
            libc::O_RDWR | libc::O_TRUNC,
            0,
        )));
        let app = open_fd(&m.join("log"), libc::O_WRONLY | libc::O_APPEND, 0);
        r.push(outcome_unit(&app));
        if let Ok(mut a) = app {
            r.push(outcome_unit(&a.write_all(b"two\n")));
        }
        r.push(format!("{:?}", fs::read(m.join("log")).ok()));
        r.push(outcome_unit(&fs::remove_file(m.join("log"))));
        r.push(outcome_unit(&set_inode_flags(&m.join("frozen"), IMMUTABLE)));
        r.push(outcome_unit(&fs::remove_dir(m.join("frozen/sub"))));
        r.push(outcome_unit(&fs::remove_file(m.join("frozen/g"))));
        // (rmdir of a file there is EPERM on the kernel but ENOTDIR on any FUSE mount: the
        // VFS checks the type before the request reaches ovlfuse; see README.)
        r.push(outcome_unit(&fs::write(m.join("frozen/new"), b"")));
        // An append-only file takes a change of its times to now (touch), not to a given
        // time (with the writeback cache, the kernel sends the former as a given time).
        let log =
            std::ffi::CString::new(m.join("log").into_os_string().into_encoded_bytes()).unwrap();
        let given = [libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 0,
        }; 2];
        for times in [std::ptr::null(), given.as_ptr()] {
            let rc = unsafe { libc::utimensat(libc::AT_FDCWD, log.as_ptr(), times, 0) };
            r.push(outcome_unit(&if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }));
        }
        // Clear the flags so that everything can be removed again.
        r.push(outcome_unit(&set_inode_flags(&m.join("frozen"), 0)));
        r.push(outcome_unit(&set_inode_flags(&m.join("log"), 0)));
        r.push(outcome_unit(&fs::remove_file(m.join("log"))));
        r
    });
    assert_eq!(
        results[1], results[0],
        "ovlfuse (left) vs kernel overlayfs (right)"
    );
    // And what the kernel says is what the VFS promises.
    assert_eq!(results[0][1], "err: EPERM (1)", "{:?}", results[0]);
    assert_eq!(results[0][8], "err: EPERM (1)", "{:?}", results[0]);
}

/// Per kind of daemon thread (name without its digits): how often its threads were
/// switched out (voluntarily or not) and how many read system calls they made. A
/// /dev/fuse thread makes one read per request it takes, whatever the timing; a ring
/// thread takes requests through io_uring_enter, which is no read.
#[derive(Default, Debug, Clone, Copy)]
struct ThreadCounts {
    switches: u64,
    reads: u64,
}

fn counts_by_thread_kind(pid: u32) -> BTreeMap<String, ThreadCounts> {
    let mut out: BTreeMap<String, ThreadCounts> = BTreeMap::new();
    for t in ok(fs::read_dir(format!("/proc/{pid}/task")), "daemon threads") {
        let dir = ok(t, "task").path();
        let (status, io) = match (
            fs::read_to_string(dir.join("status")),
            fs::read_to_string(dir.join("io")),
        ) {
            (Ok(s), Ok(i)) => (s, i),
            _ => continue, // the thread just exited
        };
        let field = |text: &str, k: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or_default()
            .trim();
        let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        let c = out.entry(kind.to_string()).or_default();
        c.switches += field(&status, "voluntary_ctxt_switches:")
            + field(&status, "nonvoluntary_ctxt_switches:");
        c.reads += field(&io, "syscr:");
    }
    out
}

/// With `uring=on`, and the kernel offering FUSE over io_uring, requests are served by
/// the ring threads (`ringQ.T`, one queue per CPU) and not by the /dev/fuse threads;
/// with `uring=off` no ring thread exists and /dev/fuse carries them.
#[test]
fn requests_travel_over_io_uring_when_asked_and_offered() {
    if !fuse_uring_available() {
        return;
    }
    const CALLS: u64 = 2000;
    // uring_idle=1: the default (auto) may move a thread to normal priority when the
    // tests running beside this one keep the CPUs busy (tests/uring_load.rs covers it).
    for (opt, ring) in [("uring=on,uring_idle=1", true), ("uring=off", false)] {
        let sc = Scratch::new("sem-uring");
        let st = Stack::new(&sc, 1);
        ok(fs::write(st.lowers[0].join("f"), b"x"), "lower file");
        let g = mount_ovlfuse(&st, &[opt]);
        let pid = g.pid().expect("the daemon's pid");
        let f = st.mnt.join("f");
        // Settle the lookup first; each getxattr of a missing name is then one request.
        ok(fs::metadata(&f), "stat");
        let before = counts_by_thread_kind(pid);
        for _ in 0..CALLS {
            expect_errno(lgetxattr(&f, "user.absent"), libc::ENODATA, "getxattr");
        }
        let after = counts_by_thread_kind(pid);
        let delta = |k: &str| {
            let (a, b) = (
                after.get(k).copied().unwrap_or_default(),
                before.get(k).copied().unwrap_or_default(),
            );
            ThreadCounts {
                switches: a.switches - b.switches,
                reads: a.reads - b.reads,
            }
        };
        if ring {
            // Idle-class (SCHED_IDLE, policy 5), so that the caller keeps its CPU.
            let policies = ring_thread_policies(pid);
            assert!(
                !policies.is_empty() && policies.iter().all(|&p| p == 5),
                "{opt}: scheduling policies of the ring threads: {policies:?}"
            );
        }
        let (on_ring, on_dev) = (delta("ring"), delta("ovl-dev-"));
        if ring {
            // Each request wakes a ring thread from its wait or preempts it for the
            // caller; /dev/fuse threads read (next to) nothing.
            assert!(
                on_ring.switches >= CALLS / 2 && on_dev.reads < CALLS / 10,
                "{opt}: {CALLS} requests: ring threads {on_ring:?}, /dev/fuse threads \
                 {on_dev:?}; threads: {after:?}"
            );
        } else {
            assert!(
                !after.contains_key("ring") && on_dev.reads >= CALLS,
                "{opt}: {CALLS} requests: /dev/fuse threads {on_dev:?}; threads: {after:?}"
            );
        }
        // The same answers either way, from a file only the lower layer holds.
        assert_eq!(ok(fs::read(&f), "read"), b"x", "{opt}");
        drop(g);
    }
}

/// Two names of one lower file show one inode: the lower file's st_ino and link count,
/// as on the kernel overlay, through a lookup and through a listing, on read-only and
/// read-write mounts. (Over io_uring, a swapped entry/attribute lifetime once showed
/// the daemon's internal node id as st_ino for one of the names.)
#[test]
fn hard_links_in_a_lower_layer_show_the_lower_inode_through_every_name() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-lower-links");
    let st = Stack::new(&sc, 1);
    let d = st.lowers[0].join("data");
    ok(fs::create_dir(&d), "mkdir");
    ok(fs::write(d.join("hard"), b"content"), "write");
    ok(fs::hard_link(d.join("hard"), d.join("moved")), "link");
    let want = ok(fs::metadata(d.join("hard")), "lower stat");
    for ro in [true, false] {
        // On a fresh mount each: names found by lookup, then by a listing (READDIRPLUS).
        // (Not by dropping the kernel's caches, which would disturb tests running beside
        // this one.)
        for pass in ["lookup", "listing"] {
            let g = if ro {
                mount_ovlfuse_ro(&st.lowers, &st.mnt, &[])
            } else {
                mount_ovlfuse(&st, &[])
            };
            let m = st.mnt.join("data");
            if pass == "listing" {
                let listed: Vec<_> = ok(fs::read_dir(&m), "readdir")
                    .map(|e| {
                        let e = e.unwrap();
                        (e.file_name(), e.ino())
                    })
                    .collect();
                assert_eq!(listed.len(), 2, "ro={ro}: entries of data");
                for (name, d_ino) in &listed {
                    assert_eq!(*d_ino, want.ino(), "ro={ro}: d_ino of data/{name:?}");
                }
            }
            for name in ["hard", "moved"] {
                let md = ok(fs::symlink_metadata(m.join(name)), "stat");
                assert_eq!(
                    (md.ino(), md.nlink()),
                    (want.ino(), want.nlink()),
                    "ro={ro}, {pass}: st_ino and st_nlink of data/{name}"
                );
            }
            drop(g);
        }
    }
}

/// A full upper layer (a 16 MiB tmpfs, filled up, under a 12 MiB lower file), on ovlfuse
/// and on the kernel overlay: the same calls fail with the same errors (ENOSPC), and
/// nothing is lost. A write that runs out of space keeps what it wrote; a failed copy-up
/// leaves the file readable whole from its lower layer and no half copy in the upper or
/// work directory; once space is freed the copy-up succeeds.
#[test]
fn full_upper_layer_fails_like_the_kernel_and_loses_nothing() {
    if !fuse_available() {
        return;
    }
    const MIB: usize = 1 << 20;
    let sc = Scratch::new("sem-full-upper");
    let lower = sc.dir("lower");
    let big: Vec<u8> = (0..12 * MIB).map(|i| (i % 251) as u8).collect();
    fs::write(lower.join("big"), &big).unwrap();
    fs::write(lower.join("small"), b"small").unwrap();
    let lc = LowerCheck::new(std::slice::from_ref(&lower));
    let mut outcomes: Vec<Vec<String>> = Vec::new();
    for who in ["kernel", "ovlfuse"] {
        let layer_fs = sc.dir(&format!("{who}-fs"));
        let _tmpfs = mount_tmpfs_with(&layer_fs, "size=16m");
        let st = Stack {
            lowers: vec![lower.clone()],
            upper: layer_fs.join("upper"),
            work: layer_fs.join("work"),
            mnt: sc.dir(&format!("{who}-mnt")),
        };
        fs::create_dir(&st.upper).unwrap();
        fs::create_dir(&st.work).unwrap();
        let g = if who == "kernel" {
            mount_kernel(&st)
        } else {
            mount_ovlfuse(&st, &[])
        };
        let m = &st.mnt;
        let mut seen = Vec::new();

        // A new file written until the space runs out keeps what was written.
        let mut f = ok(
            fs::File::create(m.join("fill")),
            &format!("{who}: create fill"),
        );
        let chunk = vec![7u8; MIB / 4];
        let mut written = 0usize;
        let err = loop {
            match f.write(&chunk) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(
                written < 32 * MIB,
                "{who}: wrote {written} bytes into 16 MiB"
            );
        };
        seen.push(format!("write until full: {}", describe_err(&err)));
        drop(f);
        let kept = ok(fs::read(m.join("fill")), &format!("{who}: read fill"));
        assert_eq!(
            kept.len(),
            written,
            "{who}: size of the file that filled the layer"
        );
        assert!(
            kept.iter().all(|&b| b == 7),
            "{who}: contents of the full file"
        );

        // Copy-ups with no space for the data.
        let append = fs::OpenOptions::new().append(true).open(m.join("big"));
        seen.push(format!("open big for append: {}", outcome_unit(&append)));
        drop(append);
        assert_eq!(
            ok(fs::read(m.join("big")), &format!("{who}: read big")),
            big,
            "{who}: big must still read whole after the failed copy-up"
        );
        assert!(
            !st.upper.join("big").exists(),
            "{who}: a half copy of big is in the upper layer"
        );
        // The kernel keeps its own `work` and `index` directories there; no file data.
        let mut stray = Vec::new();
        walk_files(&st.work, &mut stray);
        assert!(
            stray.is_empty(),
            "{who}: left in the work directory: {stray:?}"
        );
        let more = fs::OpenOptions::new().append(true).open(m.join("small"));
        let more = more.and_then(|mut f| f.write_all(b"er"));
        seen.push(format!("append to small: {}", outcome_unit(&more)));
        let small = ok(fs::read(m.join("small")), &format!("{who}: read small"));
        assert!(
            small == b"small" || small == b"smaller",
            "{who}: small reads {small:?}"
        );

        // Space back: the copy-up goes through and keeps the lower data. Over FUSE the
        // blocks are freed when the kernel's asynchronous RELEASE of `fill` arrives (see
        // the README): wait for them, within a bound generous enough for a loaded CI
        // machine (it takes milliseconds).
        ok(fs::remove_file(m.join("fill")), &format!("{who}: rm fill"));
        let t0 = std::time::Instant::now();
        while ok(statvfs(&layer_fs), "statvfs").f_bfree == 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "{who}: the deleted file's space did not come back within 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut a = ok(
            fs::OpenOptions::new().append(true).open(m.join("big")),
            &format!("{who}: append once space is free"),
        );
        ok(a.write_all(b"end"), &format!("{who}: append"));
        drop(a);
        let now = fs::read(m.join("big")).unwrap();
        assert_eq!(now.len(), big.len() + 3, "{who}: size after the copy-up");
        assert!(
            now[..big.len()] == big[..] && &now[big.len()..] == b"end",
            "{who}: contents after the copy-up"
        );
        g.unmount();
        outcomes.push(seen);
    }
    assert_eq!(
        outcomes[1], outcomes[0],
        "ovlfuse (left) and the kernel overlay (right) disagree on a full upper layer"
    );
    lc.verify();
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

/// xfstests overlay/038: an upper directory is marked impure when a copied-up file moves
/// into it from another directory (not when an upper-only file does), readdir then shows
/// the copy's own inode number, and once the last such entry is gone the next listing
/// drops the mark; a directory that still holds a copy keeps it.
#[test]
fn impure_marks_come_and_go_as_on_the_kernel() {
    if !fuse_available() {
        return;
    }
    let got = kernel_then_ovlfuse(
        "sem-impure",
        "",
        |st: &Stack| {
            build(
                &st.lowers[0],
                &[
                    E::File("f1", b"1"),
                    E::File("f2", b"2"),
                    E::File("f3", b"3"),
                    E::Dir("t"),
                ],
            )
        },
        |m, kernel| {
            let upper = m.parent().unwrap().join("upper");
            let marked = |d: &str| lgetxattr(&upper.join(d), "trusted.overlay.impure").is_ok();
            // Each listed name's d_ino against its st_ino.
            let inos_agree = |d: &str| {
                read_dir_raw(&m.join(d))
                    .unwrap()
                    .iter()
                    .filter(|e| e.name != "." && e.name != "..")
                    .all(|e| fs::symlink_metadata(m.join(d).join(&e.name)).unwrap().ino() == e.ino)
            };
            let mut steps = Vec::new();
            let mut note = |what: &str, d: &str| {
                let agree = inos_agree(d);
                steps.push(format!("{what}: marked {} d_ino {agree}", marked(d)));
                assert!(
                    agree,
                    "{what}: d_ino differs from st_ino (kernel: {kernel})"
                );
            };
            for d in ["a", "b", "plain"] {
                fs::create_dir_all(m.join(format!("t/{d}/sub"))).unwrap();
            }
            note("new directory", "t/a");
            fs::write(m.join("t/u"), b"u").unwrap();
            fs::rename(m.join("t/u"), m.join("t/plain/u")).unwrap();
            fs::rename(m.join("t/plain/u"), m.join("t/plain/v")).unwrap();
            note("an upper-only file moved in", "t/plain");
            fs::rename(m.join("f1"), m.join("t/a/f1")).unwrap();
            note("a lower file moved in", "t/a");
            fs::rename(m.join("f2"), m.join("t/b/f2")).unwrap();
            fs::rename(m.join("f3"), m.join("t/b/f3")).unwrap();
            note("two lower files moved in", "t/b");
            fs::remove_file(m.join("t/a/f1")).unwrap();
            fs::remove_dir(m.join("t/a/sub")).unwrap();
            note("its only copy removed, listed", "t/a");
            fs::remove_file(m.join("t/b/f2")).unwrap();
            note("one of two copies removed, listed", "t/b");
            fs::rename(m.join("t/b/f3"), m.join("t/f3")).unwrap();
            note("the other moved out, listed", "t/b");
            steps
        },
    );
    let want = [
        "new directory: marked false d_ino true",
        "an upper-only file moved in: marked false d_ino true",
        "a lower file moved in: marked true d_ino true",
        "two lower files moved in: marked true d_ino true",
        "its only copy removed, listed: marked false d_ino true",
        "one of two copies removed, listed: marked true d_ino true",
        "the other moved out, listed: marked false d_ino true",
    ];
    assert_eq!(got[0], want, "kernel overlayfs");
    assert_eq!(got[1], got[0], "ovlfuse against the kernel");
}

// ---------------------------------------------------------------------------------------
// Deep trees
// ---------------------------------------------------------------------------------------

/// Removes trees with rm(1) when dropped: std's `remove_dir_all` (the scratch directories'
/// cleanup) recurses once per level, which a very deep tree could overflow.
struct RmRf(Vec<PathBuf>);

impl Drop for RmRf {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("rm").arg("-rf").arg(p).status();
        }
    }
}

/// `levels` nested directories `d` below `at`, walked or made one level at a time (the
/// path would pass PATH_MAX); the deepest one, open.
fn deep_chain(at: &Path, levels: usize, make: bool) -> io::Result<fs::File> {
    let mut dir = fs::File::open(at)?;
    for _ in 0..levels {
        let fd = dir.as_raw_fd();
        if make {
            cvt(unsafe { libc::mkdirat(fd, c"d".as_ptr(), 0o755) })?;
        }
        let next = cvt(unsafe {
            libc::openat(
                fd,
                c"d".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        dir = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(next) };
    }
    Ok(dir)
}

/// The sorted names in open directory `dir`.
fn names_in(dir: &fs::File) -> Result<Vec<String>, String> {
    names_or_err(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())))
}

/// A file in open directory `dir`, opened with `flags`.
fn open_in(dir: &fs::File, name: &str, flags: i32) -> io::Result<fs::File> {
    let name = std::ffi::CString::new(name).expect("no NUL");
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            0o644,
        )
    })?;
    Ok(unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// A lower tree deeper than a thread's stack allowed recursion over, and than the 4096
/// levels ovlfuse once refused with ELOOP: walked, its bottom file copied up (with every
/// directory above it), changed there, and removed with rm -rf, as on the kernel overlay.
#[test]
fn deep_trees_match_kernel() {
    if !fuse_available() {
        return;
    }
    const LEVELS: usize = 4200;
    let ks = Scratch::new("sem-deep-kernel");
    let fsc = Scratch::new("sem-deep-ovlfuse");
    let _rm = RmRf(vec![ks.root.clone(), fsc.root.clone()]);
    let (k, f) = (Stack::new(&ks, 1), Stack::new(&fsc, 1));
    for st in [&k, &f] {
        let bottom = deep_chain(&st.lowers[0], LEVELS, true).expect("build the deep lower");
        let mut file = open_in(&bottom, "f", libc::O_CREAT | libc::O_WRONLY).expect("f");
        file.write_all(b"bottom").expect("write f");
    }
    let kg = mount_kernel(&k);
    let fg = mount_ovlfuse(&f, &[]);
    let ops = |m: &Path| {
        let mut out = Vec::new();
        let bottom = match deep_chain(m, LEVELS, false) {
            Ok(b) => b,
            Err(e) => return vec![format!("walk: {}", describe_err(&e))],
        };
        out.push(format!("listing {:?}", names_in(&bottom)));
        let append = open_in(&bottom, "f", libc::O_WRONLY | libc::O_APPEND)
            .and_then(|mut a| a.write_all(b" changed"));
        out.push(format!("append {}", outcome_unit(&append)));
        let mut text = String::new();
        let read =
            open_in(&bottom, "f", libc::O_RDONLY).and_then(|mut r| r.read_to_string(&mut text));
        out.push(format!("read {} {text:?}", outcome_unit(&read)));
        let fd = bottom.as_raw_fd();
        let mkdir = cvt(unsafe { libc::mkdirat(fd, c"new".as_ptr(), 0o755) });
        let rename = cvt(unsafe { libc::renameat(fd, c"f".as_ptr(), fd, c"g".as_ptr()) });
        out.push(format!(
            "mkdir {} rename {}",
            outcome_unit(&mkdir),
            outcome_unit(&rename)
        ));
        out.push(format!("listing {:?}", names_in(&bottom)));
        // Half way up, reached afresh.
        let middle = deep_chain(m, LEVELS / 2, false).map(|d| names_in(&d));
        out.push(format!("middle {}", outcome(&middle)));
        drop(bottom);
        let rm = std::process::Command::new("rm")
            .arg("-rf")
            .arg(m.join("d"))
            .status();
        out.push(format!(
            "rm -rf {:?}",
            rm.map(|s| s.success()).map_err(|e| e.to_string())
        ));
        out.push(format!("top {:?}", names_or_err(m)));
        out
    };
    let (kr, fr) = (ops(&k.mnt), ops(&f.mnt));
    assert_eq!(
        kr, fr,
        "deep tree: kernel (left) and ovlfuse (right) disagree"
    );
    assert!(
        kr.iter().any(|l| l == "read ok \"bottom changed\""),
        "the copy-up should have kept the data: {kr:?}"
    );
    fg.unmount();
    kg.unmount();
    for st in [&k, &f] {
        let bottom = deep_chain(&st.lowers[0], LEVELS, false).expect("lower still whole");
        let mut text = String::new();
        open_in(&bottom, "f", libc::O_RDONLY)
            .and_then(|mut r| r.read_to_string(&mut text))
            .expect("read the lower f");
        assert_eq!(
            text, "bottom",
            "lower layer changed under {:?}",
            st.lowers[0]
        );
        let wh = fs::symlink_metadata(st.upper.join("d"))
            .map(|m| (m.file_type().is_char_device(), m.rdev()));
        assert_eq!(
            outcome(&wh),
            "ok: (true, 0)",
            "a whiteout for d in {:?}",
            st.upper
        );
    }
}

// ---------------------------------------------------------------------------------------
// Small lower files whose data an open hands the kernel (prefill)
// ---------------------------------------------------------------------------------------

/// Data of `len` bytes that differs at every offset that matters (page edges, the tail).
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 12) as u8)
        })
        .collect()
}

/// Small lower files (whose data ovlfuse hands the kernel's page cache at their first
/// open) read as on the kernel overlay: sizes around page edges and the 64 KiB limit, a
/// file opened read-only and then copied up and written through another descriptor (read
/// through the first before or only after that), a fresh open after such a write, a
/// truncate, a mapping, a rename over an open file, and a file opened by two callers at
/// once.
#[test]
fn small_lower_files_read_as_on_kernel() {
    if !fuse_available() {
        return;
    }
    let sizes = [1usize, 4095, 4096, 4097, 65535, 65536, 65537];
    let t = twin_with(
        "sem-prefill",
        &[&[
            E::File("a", b"old content a"),
            E::File("b", b"old content b"),
            E::File("c", b"old content c"),
            E::File("d", b"old content d"),
            E::File("e", b"old content e"),
            E::File("f", b"old content f"),
            E::File("g", b"other g"),
            E::File("shared", b"read by two at once"),
        ]],
        &[],
        |st| {
            for (i, n) in sizes.iter().enumerate() {
                fs::write(st.lowers[0].join(format!("s{n}")), patterned(*n, i as u8))
                    .expect("write a sized lower file");
            }
        },
    );
    let pread = |f: &fs::File| {
        let mut buf = [0u8; 64];
        f.read_at(&mut buf, 0)
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
            .map_err(|e| describe_err(&e))
    };
    let open_rw = |p: &Path| fs::OpenOptions::new().read(true).write(true).open(p);
    for (i, n) in sizes.iter().enumerate() {
        t.both(&format!("read {n} bytes"), |r| {
            fs::read(r.join(format!("s{n}")))
                .map(|d| d == patterned(*n, i as u8))
                .map_err(|e| describe_err(&e))
        });
    }
    t.both("written through another fd, read only after", |r| {
        let ro = fs::File::open(r.join("a")).expect("open a");
        let w = open_rw(&r.join("a")).and_then(|w| w.write_all_at(b"NEW", 0));
        (outcome_unit(&w), pread(&ro))
    });
    t.both("read, then written through another fd, read again", |r| {
        let ro = fs::File::open(r.join("b")).expect("open b");
        let before = pread(&ro);
        let w = open_rw(&r.join("b")).and_then(|w| w.write_all_at(b"NEW", 0));
        (before, outcome_unit(&w), pread(&ro))
    });
    t.both("a fresh open after a write through a closed fd", |r| {
        drop(fs::File::open(r.join("c")).expect("open c"));
        let w = open_rw(&r.join("c")).and_then(|w| w.write_all_at(b"NEW", 0));
        (
            outcome_unit(&w),
            fs::read_to_string(r.join("c")).map_err(|e| describe_err(&e)),
        )
    });
    t.both("truncated by path while open", |r| {
        let ro = fs::File::open(r.join("d")).expect("open d");
        let tr = fs::OpenOptions::new()
            .write(true)
            .open(r.join("d"))
            .and_then(|f| f.set_len(2));
        (outcome_unit(&tr), pread(&ro))
    });
    t.both("mapped", |r| {
        let f = fs::File::open(r.join("e")).expect("open e");
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return format!("mmap: {}", describe_err(&io::Error::last_os_error()));
        }
        let v = unsafe { std::slice::from_raw_parts(p as *const u8, 8) }.to_vec();
        unsafe { libc::munmap(p, 8) };
        String::from_utf8_lossy(&v).into_owned()
    });
    t.both("renamed over while open", |r| {
        let old = fs::File::open(r.join("f")).expect("open f");
        let mv = fs::rename(r.join("g"), r.join("f"));
        (
            outcome_unit(&mv),
            pread(&old),
            fs::read_to_string(r.join("f")).map_err(|e| describe_err(&e)),
        )
    });
    t.both("opened and read by two callers at once", |r| {
        let p = r.join("shared");
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|_| fs::read(&p).map(|d| d.len()).map_err(|e| describe_err(&e)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect::<Vec<_>>()
    });
    t.finish(true);
}

/// A process killed while its open of a big lower file for writing copies the file up is
/// gone at once, with no copy left in the upper layer, as on the kernel overlay (whose
/// copy loop stops on a fatal signal); the next write copies the file up whole. Before,
/// the killed process stayed in the kernel until the copy was done.
///
/// The upper is a tmpfs of its own, so that its use shows the copy under way: the kill
/// comes once 32 MiB of the 1 GiB are copied.
#[test]
fn a_writer_killed_during_copy_up_leaves_no_copy() {
    if !fuse_available() {
        return;
    }
    const SIZE: u64 = 1 << 30;
    let sc = Scratch::new("sem-killed-copy-up");
    let big = sc.path("big");
    {
        let mut f = fs::File::create(&big).unwrap();
        let chunk = vec![0x5au8; 8 << 20];
        for _ in 0..SIZE / chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
    }
    let mut outcomes = Vec::new();
    // With one serving thread (threaded=0) no thread is free to read the INTERRUPT: the
    // copy loop looks at the caller itself every 64 MiB.
    for side in ["kernel", "ovlfuse", "threaded=0"] {
        let mut st = Stack::new_at(&sc.dir(side), 1);
        fs::hard_link(&big, st.lowers[0].join("big")).unwrap();
        let upfs = sc.dir(&format!("{side}-upperfs"));
        let _t = mount_tmpfs_with(&upfs, "size=3g");
        st.move_upper_to(&upfs);
        let g = match side {
            "kernel" => mount_kernel(&st),
            "ovlfuse" => mount_ovlfuse(&st, &[]),
            opt => mount_ovlfuse(&st, &[opt]),
        };
        let used = || {
            let s = statvfs(&upfs).unwrap();
            (s.f_blocks - s.f_bfree) as u64 * s.f_frsize as u64
        };
        let before = used();
        let target = st.mnt.join("big");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf x >> \"$1\"")
            .arg("sh")
            .arg(&target)
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while used() < before + (32 << 20) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{side}: the copy-up never started"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{side}: the writer ended before its copy-up was seen under way"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // What is left once the writer is gone (and the copy it started given up).
        let left = st.upper.join("big").exists();
        let size = fs::metadata(&target).unwrap().len();
        // The next write copies the file up whole.
        let mut f = fs::OpenOptions::new().append(true).open(&target).unwrap();
        f.write_all(b"y").unwrap();
        drop(f);
        let after = fs::metadata(st.upper.join("big")).map(|m| m.len());
        let mut tail = [0u8; 2];
        fs::File::open(&target)
            .unwrap()
            .read_exact_at(&mut tail, SIZE - 1)
            .unwrap();
        outcomes.push((
            std::os::unix::process::ExitStatusExt::signal(&status),
            left,
            size,
            after.ok(),
            tail,
        ));
        g.unmount();
    }
    let want = (
        Some(libc::SIGKILL),
        false,
        SIZE,
        Some(SIZE + 1),
        [0x5a, b'y'],
    );
    assert_eq!(outcomes[0], want, "setup: the kernel overlay");
    assert_eq!(
        outcomes[1], want,
        "ovlfuse (left) vs what the kernel overlay did (right)"
    );
    assert_eq!(
        outcomes[2], want,
        "ovlfuse with threaded=0 (left) vs the kernel overlay (right)"
    );
}

/// Big reads give the layer's bytes over both transports: read-ahead of a lower file
/// (never passthrough on a read-write mount) and of an upper file without passthrough,
/// and direct reads at odd offsets, up to and across the end of the file. Over /dev/fuse
/// replies of more than 64 KiB are spliced from the file into the pipe and on to the
/// kernel (`fuse_splice`); where the file ends first they go the usual way.
#[test]
fn big_reads_give_the_layers_bytes_over_both_transports() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-big-reads");
    let st = Stack::new(&sc, 1);
    // Ends inside a page; no run of it repeats at a page's distance.
    let len = (3 << 20) + 4097;
    let data: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    ok(
        fs::write(st.lowers[0].join("lower"), &data),
        "write the lower file",
    );
    ok(
        fs::write(st.upper.join("upper"), &data),
        "write the upper file",
    );
    let uring = uring_opt_or_note("big reads");
    for transport in ["uring=off", uring] {
        let g = mount_ovlfuse(&st, &[transport, "passthrough=off"]);
        for name in ["lower", "upper"] {
            let p = st.mnt.join(name);
            let what = format!("{name} over {transport}");
            let got = ok(fs::read(&p), &format!("read {what}"));
            assert!(got == data, "{what}: a whole read gave other bytes");
            let f = ok(
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&p),
                &format!("open {what} O_DIRECT"),
            );
            for (off, want) in [
                (0, 1 << 20),
                (4095, 1 << 20),
                (12_345, 300_001),
                (len - 100_000, 200_000),
                (len + 1, 100_000),
            ] {
                let mut buf = vec![0u8; want];
                let n = ok(
                    f.read_at(&mut buf, off as u64),
                    &format!("{what}: pread of {want} at {off}"),
                );
                let expect = &data[off.min(len)..(off + want).min(len)];
                assert_eq!(n, expect.len(), "{what}: pread of {want} at {off}");
                assert!(
                    buf[..n] == *expect,
                    "{what}: pread of {want} at {off} gave other bytes"
                );
            }
        }
        g.unmount();
    }
}

/// Big writes without passthrough (a plain user's or rootless daemon) give the upper file
/// the bytes written: through the writeback cache (the kernel's write-back, up to
/// max_write a request) and without it (each write(2) a request), at odd offsets and
/// lengths, into a new file and into a copied-up lower one, and with O_DIRECT, with stats
/// between the writes; over both transports.
#[test]
fn big_writes_without_passthrough_give_the_upper_file_the_bytes() {
    if !fuse_available() {
        return;
    }
    let sc = Scratch::new("sem-big-writes");
    let st = Stack::new(&sc, 1);
    let pattern = |len: usize, seed: u64| -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((i + seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    };
    let lower_len = (2 << 20) + 777;
    ok(
        fs::write(st.lowers[0].join("lower"), pattern(lower_len, 1)),
        "write the lower file",
    );
    let uring = uring_opt_or_note("big writes");
    for opts in [
        ["uring=off", "writeback=1"],
        ["uring=off", "writeback=0"],
        [uring, "writeback=1"],
        [uring, "writeback=0"],
    ] {
        let opts = [opts[0], opts[1], "passthrough=off"];
        let what = opts.join(",");
        let g = mount_ovlfuse(&st, &opts);
        // A new file, in 1 MiB writes and one that ends inside a page, a stat between.
        let fresh = st.mnt.join("fresh");
        let data = pattern((5 << 20) + 4097, 2);
        {
            let mut f = ok(fs::File::create(&fresh), &format!("{what}: create"));
            for (i, chunk) in data.chunks(1 << 20).enumerate() {
                ok(f.write_all(chunk), &format!("{what}: write {i}"));
                ok(
                    fs::metadata(&fresh),
                    &format!("{what}: stat after write {i}"),
                );
            }
            ok(f.sync_all(), &format!("{what}: fsync"));
        }
        let got = ok(
            fs::read(st.upper.join("fresh")),
            &format!("{what}: read upper"),
        );
        assert!(got == data, "{what}: the new upper file holds other bytes");

        // The lower file, copied up, written at odd offsets, past its end too.
        let mut want = pattern(lower_len, 1);
        {
            let f = ok(
                fs::OpenOptions::new()
                    .write(true)
                    .open(st.mnt.join("lower")),
                &format!("{what}: open lower"),
            );
            for (off, len, seed) in [
                (4095, 300_001, 3),
                (1 << 20, 1 << 20, 4),
                (lower_len - 100_000, 250_000, 5),
                (10, 70_000, 6),
            ] {
                let chunk = pattern(len, seed);
                ok(
                    f.write_all_at(&chunk, off as u64),
                    &format!("{what}: pwrite {len} at {off}"),
                );
                if want.len() < off + len {
                    want.resize(off + len, 0);
                }
                want[off..off + len].copy_from_slice(&chunk);
            }
            ok(f.sync_all(), &format!("{what}: fsync lower"));
        }
        let got = ok(
            fs::read(st.upper.join("lower")),
            &format!("{what}: read copy"),
        );
        assert_eq!(got.len(), want.len(), "{what}: the copy's length");
        assert!(got == want, "{what}: the copied-up file holds other bytes");
        let got = ok(
            fs::read(st.mnt.join("lower")),
            &format!("{what}: read merged"),
        );
        assert!(got == want, "{what}: the mount shows other bytes");

        // O_DIRECT: aligned buffers, 1 MiB at a time.
        let direct = st.mnt.join("direct");
        let ddata = pattern(3 << 20, 7);
        {
            let f = ok(
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&direct),
                &format!("{what}: open O_DIRECT"),
            );
            let layout = std::alloc::Layout::from_size_align(1 << 20, 4096).unwrap();
            // SAFETY: a fresh allocation of a non-zero size, freed below.
            let raw = unsafe { std::alloc::alloc(layout) };
            assert!(!raw.is_null());
            // SAFETY: `raw` holds 1 MiB, ours alone until dealloc.
            let buf = unsafe { std::slice::from_raw_parts_mut(raw, 1 << 20) };
            for (i, chunk) in ddata.chunks(1 << 20).enumerate() {
                buf.copy_from_slice(chunk);
                ok(
                    f.write_all_at(buf, (i << 20) as u64),
                    &format!("{what}: O_DIRECT write {i}"),
                );
            }
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(raw, layout) };
        }
        let got = ok(
            fs::read(st.upper.join("direct")),
            &format!("{what}: read direct"),
        );
        assert!(got == ddata, "{what}: the O_DIRECT file holds other bytes");
        g.unmount();
        for name in ["fresh", "lower", "direct"] {
            ok(fs::remove_file(st.upper.join(name)), "remove an upper file");
        }
    }
}
