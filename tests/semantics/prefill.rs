//! Small lower files whose data an open hands the kernel (prefill).

use super::*;

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
