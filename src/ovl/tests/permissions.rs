//! Set-id bits, default ACLs and setgid directories, as the VFS would leave them.

use super::*;

#[test]
fn chmod_by_a_non_member_cannot_set_setgid() {
    let f = Fixture::new(1);
    f.write("l0/f", "x");
    std::os::unix::fs::chown(f.p("l0/f"), Some(1000), Some(4242)).unwrap();
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let user = Ctx {
        uid: 1000,
        gid: 1000,
        pid: std::process::id(),
        umask: 0,
    };
    let set = crate::ovl::SetAttr {
        mode: Some(0o2755),
        ..Default::default()
    };
    let a = ovl.setattr(&user, n.id, &set).unwrap();
    assert_eq!(
        a.mode & 0o7777,
        0o755,
        "set-group-ID dropped for a caller outside group 4242"
    );
    let a = ovl.setattr(&ctx(), n.id, &set).unwrap();
    assert_eq!(a.mode & 0o7777, 0o2755, "root may set it");
}

fn user(uid: u32, gid: u32) -> Ctx {
    Ctx {
        uid,
        gid,
        pid: std::process::id(),
        umask: 0,
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn writes_by_unprivileged_callers_clear_set_id_bits_as_the_vfs_does() {
    let f = Fixture::new(1);
    for name in ["plain", "grpexec", "member"] {
        f.write(&format!("l0/{name}"), "data");
        std::os::unix::fs::chown(f.p(&format!("l0/{name}")), Some(0), Some(4242)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    let set = |n: &str, m: u32| {
        std::fs::set_permissions(f.p(n), std::fs::Permissions::from_mode(m)).unwrap()
    };
    set("l0/plain", 0o6666);
    set("l0/grpexec", 0o2676);
    set("l0/member", 0o2666);
    let ovl = f.overlay(1);
    let write_as = |who: &Ctx, name: &str| {
        let (n, _) = ovl.lookup(ROOT_ID, OsStr::new(name)).unwrap();
        let fh = ovl.open(who, n.id, libc::O_WRONLY).unwrap();
        assert_eq!(ovl.write(who, fh, 0, b"x", false).unwrap(), 1);
        ovl.release(fh);
    };
    // Outside the file's group: set-user-ID and set-group-ID both go.
    write_as(&user(1000, 1000), "plain");
    assert_eq!(mode_of(&f.p("upper/plain")), 0o666);
    // Group-executable: set-group-ID goes whoever writes (unless privileged).
    write_as(&user(1000, 4242), "grpexec");
    assert_eq!(mode_of(&f.p("upper/grpexec")), 0o676);
    // A member of the group writing a non-group-executable file keeps it.
    write_as(&user(1000, 4242), "member");
    assert_eq!(mode_of(&f.p("upper/member")), 0o2666);
    // Root keeps everything.
    std::fs::set_permissions(f.p("upper/plain"), std::fs::Permissions::from_mode(0o6666)).unwrap();
    write_as(&ctx(), "plain");
    assert_eq!(mode_of(&f.p("upper/plain")), 0o6666);
    // So does truncation on open.
    std::fs::set_permissions(f.p("upper/plain"), std::fs::Permissions::from_mode(0o6666)).unwrap();
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("plain")).unwrap();
    let fh = ovl
        .open(&user(1000, 1000), n.id, libc::O_WRONLY | libc::O_TRUNC)
        .unwrap();
    ovl.release(fh);
    assert_eq!(mode_of(&f.p("upper/plain")), 0o666, "O_TRUNC");
    // fallocate and hole punching count as writes (xfstests generic/683, 684).
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("plain")).unwrap();
    for mode in [0, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE] {
        std::fs::set_permissions(f.p("upper/plain"), std::fs::Permissions::from_mode(0o6666))
            .unwrap();
        let who = user(1000, 1000);
        let fh = ovl.open(&who, n.id, libc::O_WRONLY).unwrap();
        ovl.fallocate(&who, fh, 0, 4096, mode).unwrap();
        ovl.release(fh);
        assert_eq!(
            mode_of(&f.p("upper/plain")),
            0o666,
            "fallocate mode {mode:#x}"
        );
    }
}

/// A POSIX ACL xattr value: version 2, then (tag, perm, id) entries.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn mkdir_in_a_setgid_directory_keeps_what_the_default_acl_allows() {
    let f = Fixture::new(1);
    std::fs::create_dir_all(f.p("upper/d")).unwrap();
    std::os::unix::fs::chown(f.p("upper/d"), Some(100), Some(100)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.p("upper/d"), std::fs::Permissions::from_mode(0o2755)).unwrap();
    // user::rwx user:101:rwx group::r-x mask::rwx other::r-x
    let acl = acl_value(&[
        (0x01, 7, u32::MAX),
        (0x02, 7, 101),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ]);
    let d = std::fs::File::open(f.p("upper/d")).unwrap();
    if crate::sys::xattr::set_on_dir(d.as_fd(), "system.posix_acl_default", &acl).is_err() {
        eprintln!("SKIPPED: the filesystem under /tmp has no POSIX ACLs");
        return;
    }
    let ovl = f.overlay(1);
    let (dn, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
    let (_, a) = ovl
        .mkdir(&user(100, 101), dn.id, OsStr::new("sub"), 0o777)
        .unwrap();
    assert_eq!(
        a.mode & 0o7777,
        0o2775,
        "other bits come from the default ACL"
    );
    assert_eq!(mode_of(&f.p("upper/d/sub")), 0o2775);
}

#[test]
fn setting_an_access_acl_outside_the_group_drops_setgid() {
    let f = Fixture::new(1);
    f.write("l0/f", "x");
    std::os::unix::fs::chown(f.p("l0/f"), Some(100), Some(100)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(f.p("l0/f"), std::fs::Permissions::from_mode(0o2755)).unwrap();
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    // u::rwx g::rwx o::rwx
    let acl = acl_value(&[
        (0x01, 7, u32::MAX),
        (0x04, 7, u32::MAX),
        (0x20, 7, u32::MAX),
    ]);
    let name = OsStr::new("system.posix_acl_access");
    // A member of group 100 keeps it...
    ovl.setxattr(&user(100, 100), n.id, name, &acl, 0).unwrap();
    assert_eq!(mode_of(&f.p("upper/f")), 0o2777);
    // ...the owner outside it does not.
    std::fs::set_permissions(f.p("upper/f"), std::fs::Permissions::from_mode(0o2755)).unwrap();
    ovl.setxattr(&user(100, 101), n.id, name, &acl, 0).unwrap();
    assert_eq!(mode_of(&f.p("upper/f")), 0o777);
}
