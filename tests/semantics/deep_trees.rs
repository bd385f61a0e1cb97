//! Trees deeper than PATH_MAX allows a path for.

use super::*;

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
