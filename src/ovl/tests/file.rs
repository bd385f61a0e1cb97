//! File data: the writeback cache's flags and offsets, write-back in chunks, reads that
//! must wait for the disk.

use super::*;

#[test]
fn write_cache_flags_allow_write_back_through_any_writable_file() {
    use crate::ovl::file::write_cache_flags;
    let (f, cached) = write_cache_flags(libc::O_WRONLY | libc::O_APPEND, true);
    assert_eq!(f, libc::O_RDWR | libc::O_NOATIME);
    assert!(cached);
    let (f, cached) = write_cache_flags(libc::O_RDWR | libc::O_APPEND | libc::O_SYNC, true);
    assert_eq!(f, libc::O_RDWR | libc::O_SYNC);
    assert!(cached);
    // Short of space: direct I/O, but still no O_APPEND (another open may be cached).
    let (f, cached) = write_cache_flags(libc::O_WRONLY | libc::O_APPEND, false);
    assert_eq!(f, libc::O_WRONLY);
    assert!(!cached);
    // Fallbacks for files that refuse: no O_NOATIME, then direct, then as asked.
    let (rw, wo, ap, na) = (
        libc::O_RDWR,
        libc::O_WRONLY,
        libc::O_APPEND,
        libc::O_NOATIME,
    );
    assert_eq!(
        crate::ovl::file::write_cache_opens(wo | ap, true),
        [(rw | na, true), (rw, true), (wo, false), (wo | ap, false)]
    );
    assert_eq!(crate::ovl::file::write_cache_opens(rw, true), [(rw, true)]);
    assert_eq!(
        crate::ovl::file::write_cache_opens(rw, false),
        [(rw, false)]
    );
}

#[test]
fn with_the_write_cache_an_append_open_writes_at_the_offsets_it_is_given() {
    let f = Fixture::new(1);
    f.write("l0/f", "0123456789");
    let ovl = f.overlay(1);
    ovl.set_write_cache();
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("f")).unwrap();
    let fh = ovl
        .open(&ctx(), n.id, libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    let h = ovl.file_handle(fh).unwrap();
    let fl = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&*h.fd()), libc::F_GETFL) };
    assert_eq!(fl & libc::O_APPEND, 0, "real file opened with O_APPEND");
    assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR, "real file not readable");
    // A write-back of the page at offset 0 overwrites it, where O_APPEND would append.
    ovl.write(&ctx(), fh, 2, b"ab", true).unwrap();
    let mut buf = [0u8; 16];
    let n_read = ovl.read_into(fh, 0, &mut buf, None).unwrap();
    assert_eq!(&buf[..n_read], b"01ab456789");
    ovl.release(fh);
    assert_eq!(std::fs::read(f.p("upper/f")).unwrap(), b"01ab456789");
}

/// With the kernel's write cache, the disk writes of an upper file start as each 8 MiB of
/// it is written back, not at the fsync; a file that stays under 8 MiB is left to the
/// upper filesystem's own write-back.
///
/// A `sync` by another process while the test runs writes back what it expects to stay
/// dirty (seen once in a session whose test suites ran beside it): such a run is tried
/// again, up to three times in all.
#[test]
fn written_back_data_starts_its_disk_writes_chunk_by_chunk() {
    let f = Fixture::new(1);
    let upper = std::fs::File::open(f.p("upper")).unwrap();
    if fs::fstatfs(upper.as_fd()).unwrap().f_type == libc::TMPFS_MAGIC {
        eprintln!("SKIPPED: the upper layer is on tmpfs, which has no disk writes to start");
        return;
    }
    let ovl = f.overlay(1);
    ovl.set_write_cache();
    let mut failures = Vec::new();
    for attempt in 0..3 {
        let name = format!("big{attempt}");
        f.write(&format!("upper/{name}"), "");
        match chunked_write_back(&ovl, &name) {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("three runs failed: {failures:?}");
}

/// One run of `written_back_data_starts_its_disk_writes_chunk_by_chunk` on upper file
/// `name`: what differs from what it expects, if anything.
fn chunked_write_back(ovl: &Overlay, name: &str) -> Result<(), String> {
    let (node, _) = ovl.lookup(ROOT_ID, OsStr::new(name)).unwrap();
    let fh = ovl.open(&ctx(), node.id, libc::O_RDWR).unwrap();
    let fd = ovl.file_handle(fh).unwrap().fd();
    let dirty = |off: u64, len: u64| fs::dirty_pages(fd.as_fd(), off, len).unwrap();
    let (chunk, piece) = (crate::ovl::copy_up::WRITEBACK_CHUNK as u64, 1u64 << 20);
    let data = vec![7u8; piece as usize];
    let check = |what: &str, got: u64, want: u64| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: {got} dirty pages, expected {want}"))
        }
    };
    // Write-backs come in pieces of up to 1 MiB: a chunk short of its last piece stays
    // dirty.
    let mut off = 0;
    while off + piece < chunk {
        ovl.write(&ctx(), fh, off, &data, true).unwrap();
        off += piece;
    }
    let res = check("under one chunk", dirty(0, chunk), (chunk - piece) / 4096)
        .and_then(|()| {
            // The piece that completes the first chunk, then one into the second.
            ovl.write(&ctx(), fh, off, &data, true).unwrap();
            check(
                "the completed chunk's disk writes started",
                dirty(0, chunk),
                0,
            )
        })
        .and_then(|()| {
            ovl.write(&ctx(), fh, chunk, &data, true).unwrap();
            check("the next chunk waits", dirty(chunk, chunk), piece / 4096)
        });
    ovl.release(fh);
    res
}

/// A read told of waits takes what the page cache holds without waiting, says once that
/// it will wait before the rest comes from the disk, and reads what a plain read reads.
#[test]
fn a_read_that_must_wait_for_the_disk_says_so_once_and_reads_the_same() {
    const MIB: usize = 1 << 20;
    let f = Fixture::new(1);
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(f.p("l0/big"), &data).unwrap();
    let file = std::fs::File::open(f.p("l0/big")).unwrap();
    file.sync_all().unwrap();
    // Clean pages go: the first half stays cached, the second must come from the disk.
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: an advice on an open fd of ours; no memory is passed.
    let dropped = unsafe { libc::posix_fadvise(raw, 2 * MIB as i64, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(dropped, 0);
    // Whether this filesystem can tell (tmpfs never waits): probe the last page, where
    // any readahead the probe starts is past what the read below first waits for.
    let waits = fs::pread_cached(file.as_fd(), &mut [0u8; 4096], (4 * MIB - 4096) as u64)
        == Err(Errno::EAGAIN);
    if !waits {
        eprintln!(
            "NOTE: /tmp's filesystem serves every read from memory; only the bytes are checked"
        );
    }
    let ovl = f.overlay(1);
    let (n, _) = ovl.lookup(ROOT_ID, OsStr::new("big")).unwrap();
    let fh = ovl.open(&ctx(), n.id, libc::O_RDONLY).unwrap();
    let mut buf = vec![0u8; 4 * MIB + 4096];
    for (round, expect_calls) in [(1, usize::from(waits)), (2, 0)] {
        let mut calls = 0;
        let mut said = || calls += 1;
        let got = ovl.read_into(fh, 0, &mut buf, Some(&mut said)).unwrap();
        assert_eq!(got, data.len(), "round {round}");
        assert!(buf[..got] == data[..], "round {round}: bytes differ");
        assert_eq!(calls, expect_calls, "round {round}: calls before waiting");
    }
    let mut calls = 0;
    let mut said = || calls += 1;
    assert_eq!(
        ovl.read_into(fh, 4 * MIB as u64, &mut buf, Some(&mut said)),
        Ok(0)
    );
    assert_eq!(calls, 0, "a read at the end waits for nothing");
    ovl.release(fh);
}
