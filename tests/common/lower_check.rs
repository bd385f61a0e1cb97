//! Lower layers must never change: `LowerCheck` snapshots them and compares on drop.

use super::*;

/// Snapshots (all xattrs; times are not part of a snapshot) of lower layers, to verify
/// later that nothing in them changed.
pub struct LowerCheck {
    pub(crate) layers: Vec<(PathBuf, BTreeMap<PathBuf, Node>)>,
    pub(crate) verified: std::cell::Cell<bool>,
}

impl LowerCheck {
    pub fn new(lowers: &[PathBuf]) -> LowerCheck {
        LowerCheck {
            layers: lowers
                .iter()
                .map(|l| (l.clone(), snapshot(l, XattrSel::All)))
                .collect(),
            verified: std::cell::Cell::new(false),
        }
    }

    pub(crate) fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (dir, before) in &self.layers {
            let now = snapshot(dir, XattrSel::All);
            let d = diff_snapshots(before, &now);
            if !d.is_empty() {
                out.push(format!(
                    "lower layer {dir:?} was modified ({} differences; first = before):",
                    d.len()
                ));
                out.extend(d.into_iter().take(40).map(|s| format!("    {s}")));
            }
        }
        out
    }

    /// Panics listing every difference from the state at creation.
    #[track_caller]
    pub fn verify(&self) {
        let d = self.differences();
        self.verified.set(true);
        if !d.is_empty() {
            panic!("{}", d.join("\n"));
        }
    }
}

impl Drop for LowerCheck {
    fn drop(&mut self) {
        if self.verified.get() {
            return;
        }
        self.verified.set(true);
        let d = self.differences();
        if !d.is_empty() {
            if std::thread::panicking() {
                eprintln!("(while panicking) {}", d.join("\n"));
            } else {
                panic!("{}", d.join("\n"));
            }
        }
    }
}

/// What /proc says of one thread of a daemon.
#[derive(Debug)]
pub struct DaemonThread {
    pub tid: u32,
    /// 0 normal, 5 idle-class (SCHED_IDLE).
    pub policy: u32,
    pub voluntary_switches: u64,
    /// The CPUs it may run on.
    pub cpus: Vec<usize>,
}

/// The threads of daemon `pid` whose names start with `prefix`.
pub fn daemon_threads(pid: u32, prefix: &str) -> Vec<DaemonThread> {
    let mut out = Vec::new();
    for t in ok(fs::read_dir(format!("/proc/{pid}/task")), "daemon threads") {
        let dir = ok(t, "task").path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let tid = dir
            .file_name()
            .and_then(|n| n.to_str()?.parse().ok())
            .unwrap_or(0);
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|p| p.parse().ok())
            .unwrap_or(u32::MAX);
        let status = fs::read_to_string(dir.join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push(DaemonThread {
            tid,
            policy,
            voluntary_switches: field("voluntary_ctxt_switches:").parse().unwrap_or(0),
            cpus: cpu_list(&field("Cpus_allowed_list:")),
        });
    }
    out
}

/// "0-2,5" -> [0, 1, 2, 5]
pub fn cpu_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

/// (thread id, scheduling policy, voluntary context switches) of each io_uring
/// thread (`ringQ.T`) of daemon `pid`; policy 0 is normal, 5 idle-class (SCHED_IDLE): a
/// ring thread sleeps once per request it waits for.
pub fn ring_threads(pid: u32) -> Vec<(u32, u32, u64)> {
    daemon_threads(pid, "ring")
        .into_iter()
        .map(|t| (t.tid, t.policy, t.voluntary_switches))
        .collect()
}

/// The scheduling policy of each io_uring thread of daemon `pid` (see `ring_threads`).
pub fn ring_thread_policies(pid: u32) -> Vec<u32> {
    ring_threads(pid).into_iter().map(|(_, p, _)| p).collect()
}
