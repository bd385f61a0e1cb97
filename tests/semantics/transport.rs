//! Both request transports (/dev/fuse and FUSE over io_uring): which one carries
//! requests, and big reads and writes over each.

use super::*;

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
