//! Seeded random differential test: ovlfuse against kernel overlayfs.
//!
//! For every seed a random (but deterministic) set of lower layers is built twice, kernel
//! overlayfs is mounted on one copy and ovlfuse on the other, and the same random sequence of
//! system calls is applied to both mounts.  Every step's result (value or errno) must be
//! identical; afterwards the merged trees, the upper directories on disk, and "cross mounts"
//! (kernel over ovlfuse's upper, ovlfuse over the kernel's upper) are compared, with the
//! inode flags chattr sets of their files and directories, and the lower layers are checked
//! to be untouched.  A step where the two part in a way the README
//! documents (`documented_divergence`, `protection_checked_late`) ends its case there:
//! counted and listed, not failed.
//!
//! Environment:
//! * `OVLFUSE_DIFF_SEEDS`      number of seeds for `random_sequences` (default 150)
//! * `OVLFUSE_DIFF_BASE_SEED`  first seed (default `DEFAULT_BASE_SEED`)
//! * `OVLFUSE_DIFF_FAIL_FAST`  stop `random_sequences` at the first failing seed
//! * `OVLFUSE_SEED`            the seed the `replay` test runs
//! * `OVLFUSE_MINIMIZE=0`      skip shrinking a failing replay to a minimal sequence
//! * `OVLFUSE_REPLAY_TRIES=n`  run the replayed seed up to n times (timing-dependent bugs)
//! * `OVLFUSE_DIFF_MAX_OPS=n`  sequences of n/2..n operations (default 80)
//! * `OVLFUSE_DIFF_DROP_CACHES=1` drop dentries/inodes before every step (ovlfuse gets FORGETs)
//! * `OVLFUSE_DIFF_NO_LOWER_HARDLINKS=1` no hard links in the generated layers
//! * `OVLFUSE_DIFF_STATS=1`    print per-operation result counts
//! * `OVLFUSE_DIFF_SKIP_OPS=a,b` never generate operations of these kinds
//! * `OVLFUSE_DIFF_NO_ATIME=1` leave atimes out of stat results
//! * `OVLFUSE_DIFF_STRICT=1`   also generate the kinds whose difference ovlfuse documents as
//!   deliberate (DOCUMENTED_DIFFERENCES)
//! * `OVLFUSE_DIFF_USERXATTR=1` mount both sides with `userxattr` (overlay xattrs in
//!   user.overlay.*, no redirects: how rootless podman's layers are written), opaque lower
//!   directories marked so, and the overlay names among the xattrs set through the mount
//!   taken from user.overlay.* (`random_sequences_userxattr` always runs this way, with
//!   `OVLFUSE_DIFF_USERXATTR_SEEDS` seeds, default 100)
//!
//! A mismatch report names the seed, the step, the operation and both results.  Seeds are
//! reproducible for a given version of this test (changing the generator in `layers.rs` or
//! `ops.rs` changes them).
//!
//! Replay one seed: `OVLFUSE_SEED=<n> cargo test --test differential replay -- --nocapture`

#[path = "../common/mod.rs"]
mod common;

use common::{LowerCheck, Node, Scratch, Stack, XattrSel, E};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod case;
mod exec;
mod hand_written;
mod layers;
mod ops;
mod regressions;
mod rng;
mod shrink;

use case::*;
use exec::*;
use hand_written::*;
use layers::*;
use ops::*;
use rng::*;
use shrink::*;

const DEFAULT_BASE_SEED: u64 = 0x0F5E_ED00;
const DEFAULT_SEEDS: u64 = 150;
/// How often `random_sequences` reruns a failing seed to tell deterministic from flaky.
const RERUNS: usize = 3;
/// How long one operation on the ovlfuse mount may take before we call it a hang
/// (OVLFUSE_DIFF_OP_TIMEOUT=seconds to change).
fn op_timeout() -> Duration {
    Duration::from_secs(env_u64("OVLFUSE_DIFF_OP_TIMEOUT").unwrap_or(20))
}
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Errors no operation here may give, whatever ran beside it: they mean the daemon lost
/// track of something (or of the connection).
const NEVER_ERRNOS: &[i32] = &[
    libc::EIO,
    libc::ESTALE,
    libc::EFAULT,
    libc::ENOMEM,
    libc::EUCLEAN,
    libc::EDEADLK,
    libc::ENOTCONN,
    libc::ECONNABORTED,
    libc::EOVERFLOW,
];

/// One seed of `concurrent_sequences`: Err says what went wrong, and what each thread ran.
fn run_concurrent(seed: u64, threads: usize) -> Result<(), String> {
    let mut shown_ops = String::new();
    run_concurrent_ops(seed, threads, &mut shown_ops).map_err(|e| format!("{e}\n{shown_ops}"))
}

fn run_concurrent_ops(seed: u64, threads: usize, shown_ops: &mut String) -> Result<(), String> {
    // mmap stores are left out: a truncate beside one would fault the test itself.
    let case = gen_case_with(seed, 60 * threads as u64, &["mmap_write_held"]);
    let s = Scratch::new(&format!("conc-{seed}"));
    let f = Stack::new(&s, case.layers.len());
    for (i, layer) in case.layers.iter().enumerate() {
        build_layer(&f.lowers[i], layer);
    }
    let lc = LowerCheck::new(&f.lowers);
    let g = mount_ovlfuse_side(&f);
    let root = g.path().to_path_buf();
    // Operation i goes to thread i % threads, each with descriptor slots of its own.
    let mut shares: Vec<Vec<Op>> = vec![Vec::new(); threads];
    for (i, op) in case.ops.iter().enumerate() {
        shares[i % threads].push(op.clone());
    }
    *shown_ops = format!("{:?}\n", case.layers);
    for (t, ops) in shares.iter().enumerate() {
        for op in ops {
            shown_ops.push_str(&format!("  thread {t}: {op}\n"));
        }
    }
    // OVLFUSE_DIFF_CONC_DROP=1: one more thread drops the kernel's dentry and inode
    // caches every few milliseconds meanwhile, so that FORGETs race the lookups. Not by
    // default: other tests of the binary, running beside this one, would see their atimes
    // move differently.
    let dropping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
        std::env::var("OVLFUSE_DIFF_CONC_DROP").is_ok_and(|v| v != "0"),
    ));
    let dropper = {
        let dropping = dropping.clone();
        std::thread::spawn(move || {
            while dropping.load(Ordering::Relaxed) {
                drop_caches();
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let r2 = root.clone();
    let ran = with_timeout(Duration::from_secs(120), move || {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let hs: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(t, ops)| {
                let (root, b) = (r2.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut held = Held::new();
                    let mut bad = Vec::new();
                    b.wait();
                    for op in &ops {
                        if let Err(e) = exec(op, &root, &mut held) {
                            if NEVER_ERRNOS.contains(&e) {
                                bad.push(format!("thread {t}: {op}: {}", errno_name(e)));
                            }
                        }
                    }
                    held.close_all();
                    bad
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["a thread panicked".into()])
            })
            .collect::<Vec<String>>()
    });
    dropping.store(false, Ordering::Relaxed);
    let _ = dropper.join();
    let bad = match ran {
        Ok(bad) => bad,
        Err(why) => {
            if let Some(pid) = g.pid() {
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            g.forget();
            return Err(format!(
                "seed {seed}: {}",
                why.unwrap_or_else(|| "the operations hung for 120 s".into())
            ));
        }
    };
    if !bad.is_empty() {
        return Err(format!("seed {seed}: {}", bad.join("; ")));
    }
    let shown = snapshot_timeout(&root, XattrSel::User).map_err(|e| format!("seed {seed}: {e}"))?;
    // For the report: what the mount shows once the kernel has let go of what it cached
    // (a difference that goes away is a stale kernel cache, one that stays the daemon's).
    drop_caches();
    let recached =
        snapshot_timeout(&root, XattrSel::User).map_err(|e| format!("seed {seed}: {e}"))?;
    g.unmount();
    for (who, kernel) in [
        ("the kernel overlay", true),
        ("ovlfuse mounted again", false),
    ] {
        let sx = Scratch::new(&format!("conc-{seed}-x{}", kernel as u8));
        let st = fresh_stack_over(&sx, &f.lowers, &f.upper);
        let g = if kernel {
            mount_kernel_side(&st)
        } else {
            mount_ovlfuse_side(&st)
        };
        let snap = snapshot_timeout(g.path(), XattrSel::User).map_err(|e| format!("{e}"))?;
        g.unmount();
        let d = common::diff_snapshots(&snap, &shown);
        if !d.is_empty() {
            let again = common::diff_snapshots(&snap, &recached);
            return Err(format!(
                "seed {seed}: {who} over the upper layer ovlfuse left (left) vs what ovlfuse \
                 showed at the end (right):\n  {}\n  after the kernel dropped its caches: {}",
                d.join("\n  "),
                if again.is_empty() {
                    "the same as the upper layer".to_string()
                } else {
                    again.join("; ")
                }
            ));
        }
    }
    lc.verify();
    Ok(())
}

/// Several threads run one random case's operations at once on one mount. The kernel
/// cannot be compared step by step (the interleaving is not repeatable); what must hold is
/// that nothing hangs or fails with an errno of `NEVER_ERRNOS`, and that the kernel
/// overlay, and ovlfuse mounted again, over the upper layer left show exactly the tree
/// ovlfuse showed at the end. OVLFUSE_DIFF_CONC_SEEDS / _BASE_SEED / _THREADS: more.
#[test]
fn concurrent_sequences() {
    if !common::fuse_available() {
        return;
    }
    run_concurrent_sequences(64);
}

/// `concurrent_sequences` in userxattr mode (see `random_sequences_userxattr`), 32 seeds
/// unless OVLFUSE_DIFF_CONC_SEEDS says otherwise.
#[test]
fn concurrent_sequences_userxattr() {
    if !common::fuse_available() {
        return;
    }
    USERXATTR_HERE.with(|c| c.set(true));
    run_concurrent_sequences(32);
}

/// Runs `default_n` (or OVLFUSE_DIFF_CONC_SEEDS) concurrent seeds on this thread; panics
/// listing the failures.
fn run_concurrent_sequences(default_n: u64) {
    let n = env_u64("OVLFUSE_DIFF_CONC_SEEDS").unwrap_or(default_n);
    let base = env_u64("OVLFUSE_DIFF_CONC_BASE_SEED").unwrap_or(0x0C0C_0000);
    let threads = env_u64("OVLFUSE_DIFF_CONC_THREADS").unwrap_or(4).max(2) as usize;
    let failures: Vec<String> = (base..base + n)
        .filter_map(|seed| {
            std::panic::catch_unwind(|| run_concurrent(seed, threads))
                .unwrap_or_else(|p| Err(format!("seed {seed}: {}", panic_msg(p))))
                .err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} concurrent seeds from {base} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn random_sequences() {
    if !common::fuse_available() {
        return;
    }
    let n = env_u64("OVLFUSE_DIFF_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let base = env_u64("OVLFUSE_DIFF_BASE_SEED").unwrap_or(DEFAULT_BASE_SEED);
    run_random_sequences("random_sequences", n, base);
}

/// `random_sequences` in userxattr mode (rootless podman's format: user.overlay.* xattrs,
/// no redirects), whatever OVLFUSE_DIFF_USERXATTR says; OVLFUSE_DIFF_USERXATTR_SEEDS seeds
/// (default 100) from OVLFUSE_DIFF_BASE_SEED.
#[test]
fn random_sequences_userxattr() {
    if !common::fuse_available() {
        return;
    }
    let n = env_u64("OVLFUSE_DIFF_USERXATTR_SEEDS").unwrap_or(100);
    let base = env_u64("OVLFUSE_DIFF_BASE_SEED").unwrap_or(DEFAULT_BASE_SEED);
    USERXATTR_HERE.with(|c| c.set(true));
    run_random_sequences("random_sequences_userxattr", n, base);
}

/// Runs seeds `base..base + n` on this thread; panics with a summary if any differ.
fn run_random_sequences(test: &str, n: u64, base: u64) {
    let fail_fast = std::env::var("OVLFUSE_DIFF_FAIL_FAST")
        .map(|v| v != "0")
        .unwrap_or(false);
    let start = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut by_kind: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut errs: BTreeMap<String, usize> = BTreeMap::new();
    let mut documented = Vec::new();
    for seed in base..base + n {
        let case = gen_case(seed);
        let res = run_case_caught(&case, false);
        if let Ok(o) = &res {
            if let Some(why) = o.documented {
                documented.push((seed, why));
            }
            for (op, r) in case.ops.iter().zip(&o.kernel) {
                let e = by_kind.entry(op.kind()).or_default();
                e.0 += 1;
                e.1 += r.is_ok() as usize;
                if std::env::var("OVLFUSE_DIFF_STATS").is_ok() {
                    *errs
                        .entry(format!("{} {}", op.kind(), shape(r)))
                        .or_insert(0usize) += 1;
                }
            }
        }
        if let Err(f) = res {
            // Rerun to tell deterministic differences from timing-dependent ones.
            let sig = f.signature();
            let again = (0..RERUNS)
                .filter(|_| reproduces(&case, &sig).is_some())
                .count();
            let msg = report(&case, &f);
            eprintln!(
                "{}\n  (same kind of difference on {}/{} reruns)",
                msg, again, RERUNS
            );
            failures.push((seed, f, again));
            if fail_fast {
                break;
            }
        }
    }
    eprintln!(
        "{test}: {} seeds from {} in {:?}, {} failing",
        n,
        base,
        start.elapsed(),
        failures.len()
    );
    let stats: Vec<String> = by_kind
        .iter()
        .map(|(k, (all, ok))| format!("{} {}/{}", k, ok, all))
        .collect();
    eprintln!(
        "  ops succeeding on the kernel (passing seeds): {}",
        stats.join(", ")
    );
    if !errs.is_empty() {
        eprintln!("  results: {:?}", errs);
    }
    for (seed, why) in &documented {
        eprintln!(
            "  seed {} ended early at a difference the README documents: {}",
            seed, why
        );
    }
    if !failures.is_empty() {
        let mut groups: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (seed, f, again) in &failures {
            let flaky = if *again < RERUNS { " (flaky)" } else { "" };
            groups
                .entry(format!("{}{}", f.signature(), flaky))
                .or_default()
                .push(*seed);
        }
        let mut s = format!(
            "{} of {} seeds differ from kernel overlayfs.\nBy kind of first difference:\n",
            failures.len(),
            n
        );
        for (sig, seeds) in &groups {
            s += &format!("  {:<50} seeds {:?}\n", sig, seeds);
        }
        s += "Details:\n";
        for (seed, f, again) in &failures {
            s += &format!(
                "  seed {}: {}\n    (reproduced on {}/{} reruns)\n    replay: {}\n",
                seed,
                f.to_string().replace('\n', "\n  "),
                again,
                RERUNS,
                replay_command(*seed)
            );
        }
        panic!("{}", s);
    }
}

#[test]
fn replay() {
    if !common::fuse_available() {
        return;
    }
    let Some(seed) = env_u64("OVLFUSE_SEED") else {
        println!("replay: set OVLFUSE_SEED=<n> to replay one seed, e.g.");
        println!("  OVLFUSE_SEED=123 cargo test --test differential replay -- --nocapture");
        println!("  (OVLFUSE_MINIMIZE=0 skips shrinking the failing case;");
        println!("   OVLFUSE_REPLAY_TRIES=n runs it up to n times to catch a timing-dependent difference)");
        return;
    };
    let case = gen_case(seed);
    println!("{}", case);
    // OVLFUSE_REPLAY_TRIES=n: run up to n times (quietly after the first) to catch a
    // timing-dependent difference.
    let tries = env_u64("OVLFUSE_REPLAY_TRIES").unwrap_or(1).max(1);
    let mut res = run_case_caught(&case, true);
    for t in 1..tries {
        if res.is_err() {
            break;
        }
        res = run_case_caught(&case, false);
        if res.is_err() {
            println!("seed {}: difference on try {}", seed, t + 1);
        }
    }
    match res {
        Ok(Outcome {
            documented: Some(why),
            ..
        }) => println!("seed {seed}: ended early at a difference the README documents: {why}"),
        Ok(_) => println!("seed {}: no difference in {} tries", seed, tries),
        Err(f) => {
            println!("{}", report(&case, &f));
            let minimize = std::env::var("OVLFUSE_MINIMIZE")
                .map(|v| v != "0")
                .unwrap_or(true);
            if minimize {
                let (min, mf) = shrink(&case, &f);
                println!("minimized:\n  {}\n{}", mf, min);
                panic!("seed {}: {}\nminimized:\n  {}\n{}", seed, f, mf, min);
            }
            panic!("{}", report(&case, &f));
        }
    }
}
