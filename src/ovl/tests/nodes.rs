//! Nodes: removed files still held, hard links, forgotten nodes, and the numbers listings
//! show.

use super::*;

#[test]
fn a_removed_lower_file_still_held_keeps_its_attributes() {
    // The kernel may still hold a node whose last name went (an open file, an O_PATH fd,
    // a cwd); it is reached through its lower name, which does not change.
    let f = Fixture::new(1);
    f.write("l0/dir/held", "12345");
    f.write("l0/dir/other", "x");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("dir")).unwrap();
    let (held, before) = ovl.lookup(d.id, OsStr::new("held")).unwrap();
    ovl.unlink(d.id, OsStr::new("held")).unwrap();
    let after = ovl
        .getattr(held.id, None)
        .expect("attributes of the removed file");
    assert_eq!(
        (after.ino, after.size, after.mode),
        (before.ino, 5, before.mode)
    );
    // Not the new file made since under that name.
    let (_, _, fh) = ovl
        .create(&ctx(), d.id, OsStr::new("held"), 0o600, libc::O_WRONLY)
        .unwrap();
    ovl.release(fh);
    assert_eq!(ovl.getattr(held.id, None).unwrap().size, 5);
}

#[test]
fn xattrs_of_a_removed_file_still_held_are_its_own() {
    // Copied up by an open for writing, then removed: the old name now holds a whiteout,
    // and the file's xattrs are reached through its kept fd, not through that name.
    let f = Fixture::new(1);
    f.write("l0/dir/held", "12345");
    let ovl = f.overlay(1);
    let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("dir")).unwrap();
    let (held, _) = ovl.lookup(d.id, OsStr::new("held")).unwrap();
    let fh = ovl.open(&ctx(), held.id, libc::O_RDWR).unwrap();
    ovl.unlink(d.id, OsStr::new("held")).unwrap();
    let name = OsStr::new("user.kept");
    ovl.setxattr(&ctx(), held.id, name, b"v", 0)
        .expect("setxattr of the removed file");
    assert_eq!(ovl.getxattr(held.id, name).unwrap(), b"v");
    assert_eq!(ovl.listxattr(held.id).unwrap(), b"user.kept\0");
    ovl.removexattr(held.id, name).unwrap();
    assert_eq!(ovl.listxattr(held.id).unwrap(), b"");
    ovl.release(fh);
}

#[test]
fn lower_hard_links_show_one_inode_until_a_copy_up_parts_them() {
    let f = Fixture::new(1);
    f.write("l0/a", "x");
    std::fs::hard_link(f.p("l0/a"), f.p("l0/b")).unwrap();
    let ovl = f.overlay(1);
    let (a, aa) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    let (b, ba) = ovl.lookup(ROOT_ID, OsStr::new("b")).unwrap();
    assert_ne!(
        a.id, b.id,
        "kernel overlayfs (index=off) breaks lower links on copy-up"
    );
    assert_eq!(aa.ino, ba.ino);
    assert_eq!(aa.nlink, 2);
    // The directory's listing is built before the copy-up, and must follow it.
    assert_eq!(names(&ovl, ROOT_ID), ["a", "b"]);
    let fh = ovl.open(&ctx(), a.id, libc::O_WRONLY).unwrap();
    ovl.write(&ctx(), fh, 1, b"y", false).unwrap();
    ovl.release(fh);
    assert_eq!(ovl.getattr(a.id, None).unwrap().nlink, 1);
    assert_eq!(ovl.getattr(b.id, None).unwrap().nlink, 2);
    // The copy is another file than b now: it shows the upper file's number, as on the
    // kernel overlay, and b keeps the lower one.
    let upper_ino = std::fs::symlink_metadata(f.p("upper/a")).unwrap().ino();
    let after = ovl.getattr(a.id, None).unwrap().ino;
    assert_ne!(
        after, ba.ino,
        "the copy of a lower hard link keeps its number"
    );
    assert_eq!(after, upper_ino);
    assert_eq!(ovl.getattr(b.id, None).unwrap().ino, ba.ino);
    let listed: Vec<u64> = ovl
        .read_dir(ROOT_ID, 2)
        .unwrap()
        .filter(|(_, e)| &*e.name == OsStr::new("a"))
        .map(|(_, e)| e.ino)
        .collect();
    assert_eq!(listed, vec![after], "the listing shows the copy's number");
}

#[test]
fn upper_hard_links_share_one_node() {
    let f = Fixture::new(1);
    f.write("l0/a", "x");
    let ovl = f.overlay(1);
    let (a, _) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    let (l, la) = ovl.link(&ctx(), a.id, ROOT_ID, OsStr::new("l")).unwrap();
    assert_eq!(a.id, l.id);
    assert_eq!(la.nlink, 2);
    ovl.forget(l.id, 2);
    let (l2, _) = ovl.lookup(ROOT_ID, OsStr::new("l")).unwrap();
    let (a2, _) = ovl.lookup(ROOT_ID, OsStr::new("a")).unwrap();
    assert_eq!(l2.id, a2.id);
}

#[test]
fn forgotten_nodes_leave_the_table() {
    let f = Fixture::new(1);
    for i in 0..50 {
        f.write(&format!("l0/f{i}"), "x");
    }
    let ovl = f.overlay(1);
    let base = ovl.nodes.live_count();
    let ids: Vec<u64> = (0..50)
        .map(|i| {
            ovl.lookup(ROOT_ID, OsStr::new(&format!("f{i}")))
                .unwrap()
                .0
                .id
        })
        .collect();
    assert_eq!(ovl.nodes.live_count(), base + 50);
    for id in ids {
        ovl.forget(id, 1);
    }
    assert_eq!(ovl.nodes.live_count(), base);
}

/// A listing built while some of its names are live shows those objects with the number
/// the kernel has already seen, even when the layer now holds another inode there: found
/// by walking the mount's live names (a listing with more entries than those) and by
/// probing them name by name (a listing with fewer).
#[test]
fn listings_show_live_objects_under_the_number_already_shown() {
    let f = Fixture::new(1);
    for i in 0..40 {
        f.write(&format!("l0/big/f{i}"), "x");
    }
    f.write("l0/small/a", "x");
    let ovl = f.overlay(1);
    let lookup = |dir: u64, name: &str| ovl.lookup(dir, OsStr::new(name)).unwrap();
    let (big, _) = lookup(ROOT_ID, "big");
    let (small, _) = lookup(ROOT_ID, "small");
    let (_, f7) = lookup(big.id, "f7");
    let (_, f8) = lookup(big.id, "f8");
    let (_, a) = lookup(small.id, "a");
    // Each of these names now holds a new inode, made while the old one still existed.
    for rel in ["l0/big/f7", "l0/small/a"] {
        f.write(&format!("{rel}.new"), "y");
        std::fs::rename(f.p(&format!("{rel}.new")), f.p(rel)).unwrap();
    }
    let listed = |dir: u64, name: &str| {
        ovl.read_dir(dir, 2)
            .unwrap()
            .find(|(_, e)| &*e.name == OsStr::new(name))
            .map(|(_, e)| e.ino)
            .unwrap()
    };
    assert_eq!(listed(big.id, "f7"), f7.ino, "walked");
    assert_eq!(listed(big.id, "f8"), f8.ino, "unchanged");
    assert_eq!(listed(small.id, "a"), a.ino, "probed");
    let new_ino = std::fs::metadata(f.p("l0/small/a")).unwrap().ino();
    assert_ne!(new_ino, a.ino, "the layer's own number is another");
}

/// Soak, 2026-12-04: a hard-linked upper file, forgotten by the kernel, then opened and
/// unlinked under one name: a lookup of its other name must find the same node, which
/// the open file holds, not make a second one for the same file, whose attributes the
/// kernel would keep stale while writes went through the first (`stat` of the other name
/// showed the size from before the write).
#[test]
fn the_other_name_of_an_open_unlinked_file_finds_its_node() {
    let f = Fixture::new(1);
    f.write("l0/g", "lower-content\n");
    let ovl = f.overlay(1);
    let (g, _) = ovl.lookup(ROOT_ID, OsStr::new("g")).unwrap();
    ovl.link(&ctx(), g.id, ROOT_ID, OsStr::new("h")).unwrap();
    // The kernel forgets both names' node.
    ovl.forget(g.id, 2);
    let (h, _) = ovl.lookup(ROOT_ID, OsStr::new("h")).unwrap();
    let fh = ovl.open(&ctx(), h.id, libc::O_RDWR).unwrap();
    ovl.unlink(ROOT_ID, OsStr::new("h")).unwrap();
    let (g2, before) = ovl.lookup(ROOT_ID, OsStr::new("g")).unwrap();
    assert_eq!(g2.id, h.id, "the name left leads to the open file's node");
    ovl.write(&ctx(), fh, before.size, b"more", false).unwrap();
    assert_eq!(ovl.getattr(g2.id, None).unwrap().size, before.size + 4);
    ovl.release(fh);
    // A name of a file whose other, removed name nothing holds open gets a node as usual.
    ovl.forget(h.id, 2);
    let (g3, _) = ovl.lookup(ROOT_ID, OsStr::new("g")).unwrap();
    assert_eq!(ovl.getattr(g3.id, None).unwrap().size, before.size + 4);
}
