//! Merged listings: rebuilt from every layer, names-only replies, impure marks.

use super::*;

/// A listing dropped (to keep within the budget) and built again reads each layer from
/// its start again, through a second open of the directory cached by the first build,
/// whether the directory is in one layer or merged from several; whiteouts and OCI
/// markers stay hidden.
#[test]
fn a_listing_built_again_reads_every_layer_from_its_start() {
    let f = Fixture::new(2);
    for n in ["a", "b", "gone"] {
        f.write(&format!("l0/one/{n}"), "x");
    }
    f.write("l0/one/.wh.b", "");
    f.write("l0/both/a", "x");
    f.write("l1/both/b", "x");
    f.write("l1/both/c", "x");
    whiteout(&f.p("l0/both/c"));
    let ovl = f.overlay(2);
    for (dir, want) in [("one", ["a", "b", "gone"]), ("both", ["a", "b", "gone"])] {
        let (d, _) = ovl.lookup(ROOT_ID, OsStr::new(dir)).unwrap();
        let want: Vec<&str> = want
            .into_iter()
            .filter(|n| dir == "one" || *n != "gone")
            .collect();
        assert_eq!(names(&ovl, d.id), want, "{dir}: first build");
        d.set_merged(None);
        assert_eq!(names(&ovl, d.id), want, "{dir}: built again");
    }
}

#[test]
fn replies_carry_names_only_as_configured_and_lookups_then_warm_the_listing() {
    use crate::ovl::statahead::{ListAttrs, Mode, NAMES_ONLY_FROM};
    let f = Fixture::new(1);
    for i in 0..100 {
        f.write(&format!("l0/d/f{i}"), "data");
    }
    for listattrs in [ListAttrs::On, ListAttrs::Off, ListAttrs::Auto] {
        let ovl = f.overlay_with(
            1,
            Config {
                fsync: false,
                listattrs,
                // No helper threads: the statahead tests count those of this process.
                // The listing's state still says when they would have been handed it.
                statahead: Mode::Off,
                ..Config::default()
            },
        );
        let (d, _) = ovl.lookup(ROOT_ID, OsStr::new("d")).unwrap();
        let lines: Vec<_> = ovl.read_dir(d.id, 0).unwrap().collect();
        assert_eq!(lines.len(), 102, "{listattrs:?}: 100 names and the dots");
        let attrs = ovl.listed_lookups(d.id).unwrap().with_attributes(&lines, 0);
        // A directory this small keeps its attributes under `auto`, cold or not.
        const { assert!(100 < NAMES_ONLY_FROM) };
        assert_eq!(attrs, listattrs != ListAttrs::Off, "{listattrs:?}");
        let m = d.merged().expect("the listing read");
        for (_, l) in lines.iter().skip(2) {
            let (n, a) = ovl.lookup(d.id, &l.name).unwrap();
            assert_eq!((a.ino, a.mode & libc::S_IFMT), (l.ino, l.kind));
            assert_eq!(a.size, 4);
            ovl.forget(n.id, 1);
        }
        assert_eq!(
            m.warming(),
            listattrs == ListAttrs::Off,
            "{listattrs:?}: lookups after a names-only reply warm the rest of the listing"
        );
    }
}

/// A copy moved into an upper-only directory marks it impure; once the copy is gone, the
/// directory's next listing drops the mark, but not on a mount made `ro`.
#[test]
fn impure_mark_dropped_by_the_listing_after_the_last_copy_goes_unless_read_only() {
    for read_only in [false, true] {
        let f = Fixture::new(1);
        f.write("l0/f", "F");
        std::fs::create_dir_all(f.p("upper/pure")).unwrap();
        let ovl = f.overlay_with(
            1,
            Config {
                fsync: false,
                read_only,
                ..Config::default()
            },
        );
        let mark = format!("{}impure", ovl.layers.xattr_prefix);
        let marked = || {
            let d = std::fs::File::open(f.p("upper/pure")).unwrap();
            crate::sys::xattr::get_on_dir(d.as_fd(), &mark).is_ok()
        };
        let (pure, _) = ovl.lookup(ROOT_ID, OsStr::new("pure")).unwrap();
        let (file, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
        assert!(
            !marked(),
            "ro={read_only}: an upper-only directory starts pure"
        );
        ovl.rename(ROOT_ID, OsStr::new("f"), pure.id, OsStr::new("f"), 0)
            .unwrap();
        assert!(marked(), "ro={read_only}: a copy moved in marks it");
        // Its listing reports the copy under the lower inode number it keeps.
        let listed: Vec<u64> = ovl
            .read_dir(pure.id, 2)
            .unwrap()
            .map(|(_, e)| e.ino)
            .collect();
        assert_eq!(listed, vec![file.ino()], "ro={read_only}");
        ovl.unlink(pure.id, OsStr::new("f")).unwrap();
        assert_eq!(names(&ovl, pure.id), Vec::<String>::new());
        assert_eq!(marked(), read_only, "ro={read_only}: after the listing");
    }
}
