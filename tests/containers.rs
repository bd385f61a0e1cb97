//! Rootless and container use, on real mounts: unprivileged mounts (fusermount3, and
//! mount(2) as root of a user namespace) checked against rootless kernel overlayfs on the
//! same operations, upper layers exchanged between the two, fuse-overlayfs's options
//! (id mapping, squashing, xattr_permissions), stores in fuse-overlayfs's format, a
//! bubblewrap dev container, and overlays stacked on overlays.
//!
//! The unprivileged tests run as the user `ovltest` (created with subordinate ids if
//! missing) and make /dev/fuse usable by all, as udev would.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

const USER: &str = "ovltest";

/// Makes sure the test user exists with subordinate id ranges, and that /dev/fuse is open
/// to users; returns the user's uid and gid.
fn test_user() -> (u32, u32) {
    static SETUP: Once = Once::new();
    SETUP.call_once(|| {
        if Command::new("id")
            .arg(USER)
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            let o = Command::new("useradd")
                .args(["-m", USER])
                .output()
                .expect("useradd");
            assert!(o.status.success(), "useradd {USER}: {o:?}");
        }
        for f in ["/etc/subuid", "/etc/subgid"] {
            let have = fs::read_to_string(f).unwrap_or_default();
            if !have.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
                let mut s = have;
                s.push_str(&format!("{USER}:500000:65536\n"));
                fs::write(f, s).unwrap_or_else(|e| panic!("writing {f}: {e}"));
            }
        }
        // No udev here: /dev/fuse may be 0600. udev's rule makes it 0666.
        let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666));
    });
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, USER]).output().expect("id");
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// The first subordinate uid of the test user.
fn subuid_base() -> u32 {
    let s = fs::read_to_string("/etc/subuid").expect("/etc/subuid");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{USER}:")))
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("subuid range of the test user")
}

/// Gives the test user a directory tree.
fn chown_user(p: &Path) {
    let (uid, gid) = test_user();
    let o = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(p)
        .output()
        .expect("chown");
    assert!(o.status.success(), "chown -R {p:?}: {o:?}");
}

/// Kills ovlfuse daemons started inside a private mount namespace under `dir` that the
/// script failed to unmount (their mounts are invisible from here).
struct NsDaemonReaper(PathBuf);

impl Drop for NsDaemonReaper {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("ovlfuse") && cmd.contains(&needle) {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}

/// Runs a shell script as the test user, inside `unshare --map-root-user --map-auto -m`
/// when `userns`; `$OVLFUSE` is the binary. Panics with the output unless it exits 0.
fn run_as_user(dir: &Path, userns: bool, script: &str) -> String {
    test_user();
    let bin = ovlfuse_bin();
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", USER, "--"]);
    if userns {
        cmd.args(["unshare", "--map-root-user", "--map-auto", "-m"]);
    }
    let full = format!(
        "set -eu\ncd '{}'\nOVLFUSE='{}'\n{script}",
        dir.display(),
        bin.display()
    );
    cmd.args(["sh", "-c", &full]);
    let o = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        o.status.success(),
        "script as {USER} failed:\n{script}\n{}",
        show_output(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Shell functions shared by the scripts: a canonical listing of a tree (type, mode,
/// owner, size of non-directories, link target, content hash), and an unmount trap.
const SH_TREE: &str = r#"
tree() { ( cd "$1"
  find . -mindepth 1 -type d -printf '%p %y %m %U:%G\n'
  find . -mindepth 1 ! -type d -printf '%p %y %m %U:%G %s %l\n'
  find . -type f -exec md5sum {} + ) | sort; }
cleanup() { for m in m1 m2 m3 m4; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
"#;

/// One set of changes, applied the same way to each mount.
const SH_OPS: &str = r#"
ops() { m=$1
  echo new > $m/new
  rm $m/a
  rm -r $m/d && mkdir $m/d && echo n > $m/d/n
  echo more >> $m/ro && chmod 640 $m/ro
  rm $m/e/z && mkdir $m/e/sub
  mv $m/b $m/b2
  ln -s target $m/sl
  chown 1000:1000 $m/new
  mkfifo $m/fifo
  mv $m/e $m/e_moved
  echo r > $m/tmp && mv $m/tmp $m/ro_replaced
  rm $m/ro_gone
}
"#;

/// A lower layer with something for every operation in SH_OPS; files owned by the user
/// (root in its namespace) or by its subordinate id 1000, some read-only.
fn rootless_lower(s: &Scratch) -> PathBuf {
    let l = s.dir("l");
    build(
        &l,
        &[
            E::File("a", b"a"),
            E::File("b", b"b"),
            E::File("d/x", b"x"),
            E::File("d/y", b"y"),
            E::File("e/z", b"z"),
            E::File("e/keep", b"keep"),
            E::File("ro", b"read-only\n"),
            E::Mode("ro", 0o444),
            E::File("ro_replaced", b"old\n"),
            E::Mode("ro_replaced", 0o444),
            E::File("ro_gone", b"gone\n"),
            E::Mode("ro_gone", 0o444),
        ],
    );
    chown_user(&s.root);
    let sub = subuid_base() + 999; // id 1000 inside the namespace
    build(
        &l,
        &[
            E::Owner("ro", sub, sub),
            E::Owner("ro_replaced", sub, sub),
            E::Owner("ro_gone", sub, sub),
            E::Owner("e", sub, sub),
        ],
    );
    l
}

#[test]
fn userns_mount_matches_rootless_kernel_overlay_and_shares_uppers() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-userns");
    let _reaper = NsDaemonReaper(s.root.clone());
    for d in ["u1", "w1", "u2", "w2", "w3", "w4", "m1", "m2", "m3", "m4"] {
        s.dir(d);
    }
    rootless_lower(&s);
    let out = run_as_user(
        &s.root,
        true,
        &format!(
            r#"{SH_TREE}{SH_OPS}
$OVLFUSE -o lowerdir=l,upperdir=u1,workdir=w1 m1
ops m1; tree m1 > t1; umount m1
mount -t overlay overlay -o lowerdir=l,upperdir=u2,workdir=w2,userxattr m2
ops m2; tree m2 > t2; umount m2
# Each reads the other's upper layer.
mount -t overlay overlay -o lowerdir=l,upperdir=u1,workdir=w3,userxattr m3
tree m3 > t3; umount m3
$OVLFUSE -o lowerdir=l,upperdir=u2,workdir=w4 m4
tree m4 > t4; umount m4
echo "whiteout: $(stat -c '%F %t:%T' u1/a)"
echo "opaque: $(getfattr --only-values -n user.overlay.opaque u1/d)"
echo "trusted: $(getfattr -d -m trusted. -R u1 2>/dev/null | grep -c trusted || true)"
"#
        ),
    );
    let read = |n: &str| fs::read_to_string(s.path(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    let (t1, t2, t3, t4) = (read("t1"), read("t2"), read("t3"), read("t4"));
    assert!(
        t1.contains("./ro f 640 1000:1000 15"),
        "copy-up of a 0444 file of another id:\n{t1}"
    );
    assert!(
        t1.contains("./new f 644 1000:1000"),
        "chown to a mapped id:\n{t1}"
    );
    assert_eq!(
        t1, t2,
        "ovlfuse (left) and rootless kernel overlayfs (right) differ"
    );
    assert_eq!(
        t3, t1,
        "kernel overlayfs reading ovlfuse's upper differs from ovlfuse"
    );
    assert_eq!(
        t4, t2,
        "ovlfuse reading the kernel's upper differs from the kernel"
    );
    assert!(
        out.contains("whiteout: character special file 0:0"),
        "{out}"
    );
    assert!(out.contains("opaque: y"), "{out}");
    assert!(
        out.contains("trusted: 0"),
        "no trusted.* xattrs in a userns:\n{out}"
    );
}

#[test]
fn plain_user_mounts_through_fusermount3_in_the_rootless_format() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-plain");
    let (uid, _) = test_user();
    let l = s.dir("l");
    build(
        &l,
        &[
            E::File("a", b"a"),
            E::File("d/x", b"x"),
            E::File("keep", b"k"),
        ],
    );
    for d in ["u", "w", "m", "k/u", "k/w", "k/m"] {
        s.dir(d);
    }
    chown_user(&s.root);
    let fuse_conf_allows = fs::read_to_string("/etc/fuse.conf")
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "user_allow_other");
    let out = run_as_user(
        &s.root,
        false,
        r#"
$OVLFUSE -o lowerdir=l,upperdir=u,workdir=w m
grep " $(pwd)/m " /proc/self/mountinfo | cut -d' ' -f9-
rm m/a; rm -r m/d; mkdir m/d; echo new > m/d/new
echo "listing: $(ls m | tr '\n' ' ')"
fusermount3 -u m
echo "whiteout: $(stat -c '%F %t:%T %u' u/a)"
echo "opaque: $(getfattr --only-values -n user.overlay.opaque u/d)"
if $OVLFUSE -o lowerdir=l,upperdir=u,workdir=w,allow_other m 2>err; then
  echo "allow_other: mounted"; fusermount3 -u m
else echo "allow_other: refused: $(cat err)"; fi
"#,
    );
    assert!(out.contains("fuse"), "mount table line:\n{out}");
    assert!(out.contains("listing: d keep"), "{out}");
    assert!(
        out.contains(&format!("whiteout: character special file 0:0 {uid}")),
        "{out}"
    );
    assert!(out.contains("opaque: y"), "{out}");
    if fuse_conf_allows {
        assert!(out.contains("allow_other: mounted"), "{out}");
    } else {
        assert!(
            out.contains("allow_other: refused") && out.contains("user_allow_other"),
            "allow_other without user_allow_other must be refused with a clear message:\n{out}"
        );
    }
    // The kernel, rootless format (userxattr), reads the upper the user wrote.
    let st = Stack {
        lowers: vec![l],
        upper: s.path("u"),
        work: s.path("k/w"),
        mnt: s.path("k/m"),
    };
    let g = mount_kernel_plain(&st, "userxattr");
    assert_eq!(names(&st.mnt).unwrap(), ["d", "keep"]);
    assert_eq!(names(&st.mnt.join("d")).unwrap(), ["new"]);
    g.unmount();
}

#[test]
fn bubblewrap_dev_container_writes_as_its_root() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-bwrap");
    let (uid, gid) = test_user();
    let l = s.dir("l");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox (Debian package busybox-static, installed by .ci/run)");
    fs::create_dir_all(l.join("bin")).unwrap();
    fs::copy(busybox, l.join("bin/busybox")).unwrap();
    for a in [
        "sh", "cat", "rm", "mkdir", "rmdir", "chmod", "ls", "touch", "echo", "stat",
    ] {
        std::os::unix::fs::symlink("busybox", l.join("bin").join(a)).unwrap();
    }
    build(
        &l,
        &[
            E::File("etc/conf", b"lower\n"),
            E::Mode("etc/conf", 0o444),
            E::File("etc/shadow", b"secret\n"),
            E::Mode("etc/shadow", 0o400),
            E::Dir("usr/lib"),
            E::Mode("usr/lib", 0o555),
            E::Dir("proc"),
            E::Dir("dev"),
        ],
    );
    for d in ["u", "w", "m"] {
        s.dir(d);
    }
    chown_user(&s.root);
    let opts = format!("lowerdir=l,upperdir=u,workdir=w,squash_to_uid={uid},squash_to_gid={gid},xattr_permissions=2");
    let out = run_as_user(
        &s.root,
        false,
        &format!(
            r#"
$OVLFUSE -o {opts} m
trap 'fusermount3 -u m' EXIT
bwrap --unshare-user --uid 0 --gid 0 --cap-add ALL --bind m / --proc /proc --dev /dev /bin/sh -c '
set -e
echo more >> /etc/conf; echo "conf: $(cat /etc/conf | tr "\n" " ")"
echo "shadow: $(cat /etc/shadow)"
echo lib > /usr/lib/new.so; echo "lib: $(stat -c "%a %u" /usr/lib) $(cat /usr/lib/new.so)"
mkdir /root; echo hi > /root/f; chmod 000 /root/f; echo "f: $(cat /root/f) $(stat -c %a /root/f)"
mkdir /d; touch /d/x; chmod 000 /d; rm /d/x; rmdir /d
rm /etc/conf; echo "etc: $(ls /etc | tr "\n" " ")"
'
"#
        ),
    );
    assert!(out.contains("conf: lower more"), "{out}");
    assert!(out.contains("shadow: secret"), "{out}");
    assert!(out.contains("lib: 555 0 lib"), "{out}");
    assert!(out.contains("f: hi 0"), "{out}");
    assert!(out.contains("etc: shadow"), "{out}");
    // The modes it asked for are kept in the xattr; the user owns every real file.
    let f = s.path("u/root/f");
    assert_eq!(
        lgetxattr(&f, "user.containers.override_stat").unwrap(),
        format!("{uid}:{gid}:0").as_bytes()
    );
    assert_eq!(fs::metadata(&f).unwrap().uid(), uid);
}

// ---------------------------------------------------------------------------------------
// fuse-overlayfs's options, as root
// ---------------------------------------------------------------------------------------

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {p:?}: {e}"));
    (m.uid(), m.gid())
}

#[test]
fn uid_and_gid_mappings_translate_both_ways() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-map");
    let st = Stack::new(&s, 1);
    build(
        &st.lowers[0],
        &[
            E::File("zero", b"0"),
            E::File("five", b"5"),
            E::Owner("five", 5, 7),
            E::File("far", b"far"),
            E::Owner("far", 500, 500),
        ],
    );
    // Disk 0..9 shows as 1000..1009; disk 10..19 as 2000..2009 (uids only).
    let g = mount_ovlfuse(
        &st,
        &["uidmapping=:0:1000:10:10:2000:10", "gidmapping=0:3000:10"],
    );
    let m = &st.mnt;
    assert_eq!(owner(&m.join("zero")), (1000, 3000));
    assert_eq!(owner(&m.join("five")), (1005, 3007));
    assert_eq!(
        owner(&m.join("far")),
        (65534, 65534),
        "unmapped ids show as the overflow id"
    );
    fs::write(m.join("new"), b"n").unwrap();
    ok(lchown(&m.join("new"), 2003, 3004), "chown to mapped ids");
    assert_eq!(owner(&m.join("new")), (2003, 3004));
    assert_eq!(owner(&st.upper.join("new")), (13, 4), "stored as disk ids");
    ok(lchown(&m.join("zero"), 1001, 3001), "chown of a lower file");
    assert_eq!(owner(&st.upper.join("zero")), (1, 1));
    ok(lchown(&m.join("five"), 42, 42), "chown to an unmapped id");
    assert_eq!(
        owner(&st.upper.join("five")),
        (65534, 65534),
        "stored as the overflow id"
    );
    // ACL entries name ids too.
    let o = Command::new("setfacl")
        .args(["-m", "u:1003:r"])
        .arg(m.join("new"))
        .output()
        .unwrap();
    assert!(o.status.success(), "setfacl: {o:?}");
    let disk = lgetxattr(&st.upper.join("new"), "system.posix_acl_access").unwrap();
    // A 4-byte header, then 8-byte entries {tag, perm, id}; ACL_USER is tag 2.
    let entries: Vec<&[u8]> = disk[4..].chunks(8).collect();
    assert!(
        entries
            .iter()
            .any(|e| e[..2] == [2, 0] && e[4..8] == 3u32.to_le_bytes()),
        "ACL_USER entry for disk id 3: {disk:?}"
    );
    let o = Command::new("getfacl")
        .args(["-n", "-c"])
        .arg(m.join("new"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("user:1003:r--"),
        "{o:?}"
    );
    g.unmount();
}

#[test]
fn squash_shows_one_owner_and_chown_never_fails() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-squash");
    let st = Stack::new(&s, 1);
    build(
        &st.lowers[0],
        &[E::File("f", b"f"), E::Owner("f", 5, 6), E::Dir("d")],
    );
    let g = mount_ovlfuse(&st, &["squash_to_root"]);
    assert_eq!(owner(&st.mnt.join("f")), (0, 0));
    g.unmount();
    let g = mount_ovlfuse(&st, &["squash_to_root", "squash_to_uid=77"]);
    assert_eq!(
        owner(&st.mnt.join("f")),
        (77, 0),
        "squash_to_uid wins for the uid only"
    );
    assert_eq!(owner(&st.mnt.join("d")), (77, 0));
    ok(lchown(&st.mnt.join("f"), 9, 9), "chown on a squashed mount");
    assert_eq!(owner(&st.mnt.join("f")), (77, 0));
    assert_eq!(
        owner(&st.upper.join("f")),
        (9, 9),
        "the chown itself is stored"
    );
    g.unmount();
}

#[test]
fn xattr_permissions_keep_owner_mode_and_type_in_an_xattr() {
    if !fuse_available() {
        return;
    }
    for (opt, attr) in [
        ("1", "security.fuseoverlayfs.override_stat"),
        ("2", "user.containers.override_stat"),
    ] {
        let s = Scratch::new("ctr-xperm");
        let st = Stack::new(&s, 1);
        build(
            &st.lowers[0],
            &[
                E::File("low", b"l"),
                E::Owner("low", 5, 6),
                E::Mode("low", 0o640),
            ],
        );
        let g = mount_ovlfuse(&st, &[&format!("xattr_permissions={opt}")]);
        let m = &st.mnt;
        fs::write(m.join("f"), b"f").unwrap();
        ok(lchown(&m.join("f"), 77, 88), "chown");
        fs::set_permissions(m.join("f"), fs::Permissions::from_mode(0o4750)).unwrap();
        ok(
            mknod(&m.join("dev"), libc::S_IFCHR | 0o644, makedev(4, 1)),
            "mknod",
        );
        ok(lchown(&m.join("low"), 9, 9), "chown of a lower file");
        // A file made with O_TMPFILE and named afterwards keeps its owner and mode there too.
        let tmp = unsafe {
            libc::open(
                cpath(m).as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
                0o2751 as libc::c_uint,
            )
        };
        let tmp = ok(cvt(tmp), "O_TMPFILE");
        let linked = link_open_file(tmp, &m.join("tmp"));
        unsafe { libc::close(tmp) };
        ok(linked, "linkat of the O_TMPFILE file");
        let mt = fs::metadata(m.join("tmp")).unwrap();
        assert_eq!((mt.uid(), mt.gid(), mt.mode() & 0o7777), (0, 0, 0o2751));
        assert_eq!(lgetxattr(&st.upper.join("tmp"), attr).unwrap(), b"0:0:2751");
        let md = fs::metadata(m.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (77, 88, 0o4750));
        let dv = fs::symlink_metadata(m.join("dev")).unwrap();
        assert_eq!(
            (dv.mode() & libc::S_IFMT, dv.rdev()),
            (libc::S_IFCHR, makedev(4, 1))
        );
        assert_eq!(
            fs::symlink_metadata(m.join("low")).unwrap().mode() & 0o777,
            0o640
        );
        // The inodes are left alone; the xattr holds it all, hidden from the mount.
        assert_eq!(owner(&st.upper.join("f")), (0, 0));
        assert_eq!(lgetxattr(&st.upper.join("f"), attr).unwrap(), b"77:88:4750");
        assert_eq!(
            lgetxattr(&st.upper.join("dev"), attr).unwrap(),
            b"0:0:644:char-4-1"
        );
        assert!(fs::symlink_metadata(st.upper.join("dev"))
            .unwrap()
            .is_file());
        assert_eq!(lgetxattr(&st.upper.join("low"), attr).unwrap(), b"9:9:640");
        assert!(!llistxattr(&m.join("f")).unwrap().iter().any(|n| n == attr));
        expect_errno(
            lsetxattr(&m.join("f"), attr, b"0:0:4777"),
            libc::EPERM,
            "forging the override",
        );
        g.unmount();
        // The layer root carries the marker: a mount without the option reads it the same.
        let g = mount_ovlfuse(&st, &[]);
        let md = fs::metadata(st.mnt.join("f")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (77, 88, 0o4750));
        g.unmount();
    }
}

#[test]
fn fuse_overlayfs_store_markers_are_read() {
    if !fuse_available() {
        return;
    }
    // What fuse-overlayfs leaves where it cannot make whiteout devices or trusted xattrs:
    // `.wh.NAME` files, `.wh..wh..opq` files, user.fuseoverlayfs.opaque, and owners in
    // user.containers.override_stat (marked on the layer root).
    let s = Scratch::new("ctr-fovl-store");
    let st = Stack::new(&s, 1);
    build(
        &st.lowers[0],
        &[
            E::File("gone", b"g"),
            E::File("d1/old", b"o"),
            E::File("d2/old", b"o"),
            E::File("kept", b"k"),
        ],
    );
    build(
        &st.upper,
        &[
            E::File(".wh.gone", b""),
            E::File("d1/.wh..wh..opq", b""),
            E::File("d1/new", b"n"),
            E::Dir("d2"),
            E::Xattr("d2", "user.fuseoverlayfs.opaque", b"y"),
            E::Xattr(".", "user.containers.override_stat", b"0:0:755"),
            E::File("owned", b"x"),
            E::Xattr("owned", "user.containers.override_stat", b"12:34:600"),
        ],
    );
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(names(&st.mnt).unwrap(), ["d1", "d2", "kept", "owned"]);
    assert_eq!(names(&st.mnt.join("d1")).unwrap(), ["new"]);
    assert_eq!(names(&st.mnt.join("d2")).unwrap(), Vec::<String>::new());
    let md = fs::metadata(st.mnt.join("owned")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777), (12, 34, 0o600));
    g.unmount();
}

const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

/// Mounts `st` with the real fuse-overlayfs.
fn mount_fuse_overlayfs(st: &Stack) -> MountGuard {
    let mut c = Command::new(FUSE_OVERLAYFS);
    c.arg("-o").arg(st.full_opts()).arg(&st.mnt);
    let o = run_with_timeout(c, Duration::from_secs(30));
    assert!(
        o.status.success(),
        "fuse-overlayfs mount: {}",
        show_output(&o)
    );
    MountGuard::adopt_fuse(&st.mnt)
}

#[test]
fn fuse_overlayfs_and_ovlfuse_read_each_others_uppers() {
    if !fuse_available() {
        return;
    }
    assert!(
        Path::new(FUSE_OVERLAYFS).exists(),
        "{FUSE_OVERLAYFS} missing: .ci/run installs the Debian package fuse-overlayfs"
    );
    let ops = |m: &Path| {
        fs::remove_file(m.join("a")).unwrap();
        fs::remove_dir_all(m.join("d")).unwrap();
        fs::create_dir(m.join("d")).unwrap();
        fs::write(m.join("d/n"), b"n").unwrap();
        fs::write(m.join("new"), b"new").unwrap();
        ok(lchown(&m.join("new"), 7, 8), "chown");
    };
    let lower = |s: &Scratch| {
        let st = Stack::new(s, 1);
        build(
            &st.lowers[0],
            &[E::File("a", b"a"), E::File("d/x", b"x"), E::File("b", b"b")],
        );
        st
    };
    let check = |m: &Path| {
        assert_eq!(names(m).unwrap(), ["b", "d", "new"]);
        assert_eq!(names(&m.join("d")).unwrap(), ["n"]);
        assert_eq!(owner(&m.join("new")), (7, 8));
    };
    // fuse-overlayfs writes, ovlfuse reads.
    let s = Scratch::new("ctr-fovl-a");
    let st = lower(&s);
    let g = mount_fuse_overlayfs(&st);
    ops(&st.mnt);
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    check(&st.mnt);
    g.unmount();
    // ovlfuse writes, fuse-overlayfs reads.
    let s = Scratch::new("ctr-fovl-b");
    let st = lower(&s);
    let g = mount_ovlfuse(&st, &[]);
    ops(&st.mnt);
    g.unmount();
    let g = mount_fuse_overlayfs(&st);
    check(&st.mnt);
    g.unmount();
}

// ---------------------------------------------------------------------------------------
// Overlays on overlays
// ---------------------------------------------------------------------------------------

/// Changes made through the top overlay, checked on it and in its upper layer.
fn exercise_nested(st: &Stack) {
    let m = &st.mnt;
    assert_eq!(fs::read(m.join("base")).unwrap(), b"base");
    fs::write(m.join("base"), b"changed").unwrap();
    fs::remove_file(m.join("gone")).unwrap();
    fs::remove_dir_all(m.join("d")).unwrap();
    fs::create_dir(m.join("d")).unwrap();
    assert_eq!(names(m).unwrap(), ["base", "d"]);
    assert_eq!(names(&m.join("d")).unwrap(), Vec::<String>::new());
    assert_eq!(fs::read(st.upper.join("base")).unwrap(), b"changed");
}

fn nested_base(s: &Scratch) -> Stack {
    let inner = Stack::new_at(&s.dir("inner"), 1);
    build(
        &inner.lowers[0],
        &[
            E::File("base", b"base"),
            E::File("gone", b"g"),
            E::File("d/x", b"x"),
        ],
    );
    inner
}

/// ovlfuse over a lower layer that is itself an overlay, mounted by `mount_inner`.
fn nested_on_lower(s: &Scratch, mount_inner: impl Fn(&Stack) -> MountGuard) {
    let inner = nested_base(s);
    let gi = mount_inner(&inner);
    let outer = Stack {
        lowers: vec![inner.mnt.clone()],
        ..Stack::new_at(&s.dir("outer"), 0)
    };
    let go = mount_ovlfuse(&outer, &[]);
    exercise_nested(&outer);
    go.unmount();
    gi.unmount();
}

#[test]
fn lower_layer_on_a_kernel_overlay_mount() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-nest-kernel");
    nested_on_lower(&s, mount_kernel);
}

#[test]
fn lower_layer_on_an_ovlfuse_mount() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-nest-lower");
    nested_on_lower(&s, |st| mount_ovlfuse(st, &[]));
}

#[test]
fn ovlfuse_with_its_upper_on_an_ovlfuse_mount() {
    if !fuse_available() {
        return;
    }
    // The inner overlay refuses whiteout devices (as kernel overlayfs does), so the outer
    // one writes xattr whiteouts; the inner one stores its overlay.* xattrs escaped.
    let s = Scratch::new("ctr-nest-upper");
    let base = Stack::new_at(&s.dir("base"), 1);
    let gb = mount_ovlfuse(&base, &[]);
    let outer = Stack {
        lowers: vec![s.dir("outer-lower")],
        upper: base.mnt.join("up"),
        work: base.mnt.join("work"),
        mnt: s.dir("outer-mnt"),
    };
    build(
        &outer.lowers[0],
        &[
            E::File("base", b"base"),
            E::File("gone", b"g"),
            E::File("d/x", b"x"),
        ],
    );
    fs::create_dir(&outer.upper).unwrap();
    fs::create_dir(&outer.work).unwrap();
    let go = mount_ovlfuse(&outer, &[]);
    exercise_nested(&outer);
    go.unmount();
    assert!(lgetxattr(&outer.upper.join("gone"), "trusted.overlay.whiteout").is_ok());
    assert_eq!(
        lgetxattr(&outer.upper, "trusted.overlay.opaque").unwrap(),
        b"x"
    );
    // Mounted again, the state written through the inner overlay is read back.
    let go = mount_ovlfuse(&outer, &[]);
    assert_eq!(names(&outer.mnt).unwrap(), ["base", "d"]);
    assert_eq!(names(&outer.mnt.join("d")).unwrap(), Vec::<String>::new());
    go.unmount();
    gb.unmount();
}

// ---------------------------------------------------------------------------------------
// The other fuse-overlayfs options
// ---------------------------------------------------------------------------------------

#[test]
fn ino32_t_keeps_inode_numbers_in_32_bits() {
    if !fuse_available() {
        return;
    }
    // A lower on tmpfs and an upper on /tmp: two filesystems, so inode numbers carry the
    // layer's filesystem in their high bits (beyond 32 bits, unless ino32_t).
    let s = Scratch::new("ctr-ino32");
    let st = Stack::new(&s, 1);
    let _t = mount_tmpfs(&st.lowers[0]);
    build(&st.lowers[0], &[E::File("low", b"l"), E::Dir("d")]);
    fs::write(st.upper.join("up"), b"u").unwrap();
    let inos = |m: &Path| -> Vec<u64> {
        ["low", "d", "up"]
            .iter()
            .map(|n| fs::symlink_metadata(m.join(n)).unwrap().ino())
            .collect()
    };
    let g = mount_ovlfuse(&st, &[]);
    let wide = inos(&st.mnt);
    g.unmount();
    assert!(
        wide.iter().any(|&i| i >= 1 << 32),
        "two filesystems use high bits: {wide:?}"
    );
    let g = mount_ovlfuse(&st, &["ino32_t"]);
    let narrow = inos(&st.mnt);
    assert!(narrow.iter().all(|&i| i < 1 << 32), "ino32_t: {narrow:?}");
    let mut u = narrow.clone();
    u.sort();
    u.dedup();
    assert_eq!(u.len(), narrow.len(), "still distinct: {narrow:?}");
    g.unmount();
}

#[test]
fn static_nlink_noacl_noxattrs_and_timeout_do_what_they_say() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-opts");
    let st = Stack::new(&s, 1);
    build(
        &st.lowers[0],
        &[E::Dir("d/a"), E::Dir("d/b"), E::File("f", b"12345")],
    );
    let g = mount_ovlfuse(&st, &["static_nlink"]);
    assert_eq!(fs::metadata(st.mnt.join("d")).unwrap().nlink(), 1);
    g.unmount();
    let g = mount_ovlfuse(&st, &[]);
    assert_eq!(
        fs::metadata(st.mnt.join("d")).unwrap().nlink(),
        4,
        "a lower-only directory's own count"
    );
    g.unmount();

    let g = mount_ovlfuse(&st, &["noacl"]);
    let o = Command::new("setfacl")
        .args(["-m", "u:1:r"])
        .arg(st.mnt.join("f"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "setfacl on a noacl mount: {o:?}");
    ok(
        lsetxattr(&st.mnt.join("f"), "user.x", b"1"),
        "other xattrs still work",
    );
    g.unmount();

    let g = mount_ovlfuse(&st, &["noxattrs=1"]);
    expect_errno(
        lsetxattr(&st.mnt.join("f"), "user.y", b"1"),
        libc::EOPNOTSUPP,
        "setxattr, noxattrs=1",
    );
    expect_errno(
        lgetxattr(&st.mnt.join("f"), "user.x"),
        libc::EOPNOTSUPP,
        "getxattr, noxattrs=1",
    );
    g.unmount();

    // timeout=0: nothing is cached by the kernel, so a change made in the upper layer
    // behind the mount's back shows at once; with the default it may not.
    fs::write(st.upper.join("g"), b"1").unwrap();
    let g = mount_ovlfuse(&st, &["timeout=0"]);
    assert_eq!(fs::metadata(st.mnt.join("g")).unwrap().len(), 1);
    fs::write(st.upper.join("g"), b"1234567").unwrap();
    assert_eq!(fs::metadata(st.mnt.join("g")).unwrap().len(), 7);
    g.unmount();
}

/// `noxattrs=1` refuses xattr calls with ENOSYS, after which the kernel answers them
/// with EOPNOTSUPP itself: the requests of each kind stop after the first, including the
/// security.capability reads a new file's first write and a chown make. And the kernel
/// then finds no ACL where its permission checks look for one: when the daemon answered
/// EOPNOTSUPP itself, reading a file root had given to another owner failed with it.
#[test]
fn noxattrs_lets_the_kernel_refuse_xattr_calls_without_asking_the_daemon() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-noxattrs-requests");
    let st = Stack::new(&s, 1);
    build(&st.lowers[0], &[E::File("f", b"12345")]);
    let f = st.mnt.join("f");

    // On a default mount each call reaches the daemon: the counter sees them.
    let g = mount_ovlfuse(&st, &[]);
    let rc = RequestCounter::new(&st.mnt);
    for _ in 0..3 {
        expect_errno(
            lgetxattr(&f, "user.none"),
            libc::ENODATA,
            "getxattr of no such name",
        );
    }
    let n = rc.count("FUSE_GETXATTR");
    assert!(
        n >= 3,
        "three getxattr calls, {n} GETXATTR requests: {:?}",
        rc.counts()
    );
    drop(rc);
    g.unmount();

    let g = mount_ovlfuse(&st, &["noxattrs=1"]);
    let rc = RequestCounter::new(&st.mnt);
    for _ in 0..3 {
        expect_errno(
            lgetxattr(&f, "user.x"),
            libc::EOPNOTSUPP,
            "getxattr, noxattrs=1",
        );
        expect_errno(
            lsetxattr(&f, "user.y", b"1"),
            libc::EOPNOTSUPP,
            "setxattr, noxattrs=1",
        );
        expect_errno(llistxattr(&f), libc::EOPNOTSUPP, "listxattr, noxattrs=1");
        expect_errno(
            lremovexattr(&f, "user.y"),
            libc::EOPNOTSUPP,
            "removexattr, noxattrs=1",
        );
    }
    let new = st.mnt.join("new");
    fs::write(&new, b"data").unwrap();
    std::os::unix::fs::chown(&new, Some(1), Some(1)).unwrap();
    assert_eq!(
        fs::read(&new).expect("root reads a file it gave to another owner"),
        b"data"
    );
    let counts = rc.counts();
    for op in [
        "FUSE_GETXATTR",
        "FUSE_SETXATTR",
        "FUSE_LISTXATTR",
        "FUSE_REMOVEXATTR",
    ] {
        let n = counts.get(op).copied().unwrap_or(0);
        assert!(
            n <= 1,
            "{op}: {n} requests on a noxattrs=1 mount: {counts:?}"
        );
    }
    assert!(
        counts.contains_key("FUSE_CREATE"),
        "the counter saw the create: {counts:?}"
    );
    drop(rc);
    g.unmount();
}

#[test]
fn threaded_0_serves_on_one_thread() {
    if !fuse_available() {
        return;
    }
    let s = Scratch::new("ctr-threads");
    let st = Stack::new(&s, 1);
    build(&st.lowers[0], &[E::File("f", b"f")]);
    // The /dev/fuse serving threads, once there are at least `want` (the session starts
    // them just after the mount appears), or after 5 s.
    let serving = |g: &MountGuard, want: usize| -> usize {
        let pid = g.pid().expect("daemon pid");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|c| c.starts_with("ovl-dev-"))
                .count();
            if n >= want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let g = mount_ovlfuse(&st, &["uring=off"]);
    assert_eq!(fs::read(st.mnt.join("f")).unwrap(), b"f");
    let many = serving(&g, 2);
    let first = g.pid().expect("daemon pid");
    g.unmount();
    // The next daemon serves the same mount point; wait until this one is gone, so that
    // it is not taken for the next.
    assert!(
        wait_pid_exit(first, Duration::from_secs(10)),
        "the first daemon did not exit"
    );
    let g = mount_ovlfuse(&st, &["threaded=0"]);
    assert_eq!(fs::read(st.mnt.join("f")).unwrap(), b"f");
    // Give a second thread, were there one, the time the default's took to appear. And
    // a helper thread the first request starts (`ovl-follow`) carries its creator's name
    // (`ovl-dev-0`) until it names itself, so it can be counted once right after the read.
    std::thread::sleep(Duration::from_millis(100));
    let counts: Vec<usize> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            serving(&g, 1)
        })
        .collect();
    g.unmount();
    assert!(many >= 2, "the default serves /dev/fuse on {many} threads");
    assert_eq!(
        counts,
        vec![1; 5],
        "threaded=0 serves /dev/fuse on one thread"
    );
}
