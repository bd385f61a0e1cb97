//! Prerequisites: the engines and tools the tests need, and the rootless user.

use super::*;

pub(crate) fn have(prog: &str) -> bool {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(prog).exists())
}

/// Whether /bin/busybox is statically linked (no PT_INTERP program header).
pub(crate) fn busybox_static() -> bool {
    let Ok(b) = fs::read("/bin/busybox") else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let u16at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64at(0x20), u16at(0x36), u16at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 > b.len() || u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

/// True when the test can run. Missing engines are a failure (pointing at `.ci/run`),
/// unless OVLFUSE_SKIP_ENGINES=1; a missing /dev/fuse is a loud skip.
pub(crate) fn engines_ready(test: &str, progs: &[&str]) -> bool {
    if !fuse_available() {
        return false;
    }
    let mut missing: Vec<String> = progs
        .iter()
        .filter(|p| !have(p))
        .map(|p| p.to_string())
        .collect();
    if !busybox_static() {
        missing.push("static /bin/busybox (busybox-static)".into());
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("OVLFUSE_SKIP_ENGINES").as_deref() == Ok("1") {
        eprintln!();
        eprintln!("************************************************************");
        eprintln!(
            "*** SKIPPED {test}: OVLFUSE_SKIP_ENGINES=1 and missing: {}",
            missing.join(", ")
        );
        eprintln!("************************************************************");
        eprintln!();
        return false;
    }
    panic!(
        "{test}: missing {}; run .ci/run (it installs podman, buildah, runc, uidmap, \
         busybox-static) or set OVLFUSE_SKIP_ENGINES=1 to skip these tests",
        missing.join(", ")
    );
}

pub(crate) fn sh(cmd: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd);
    run_with_timeout(c, Duration::from_secs(60))
}

#[track_caller]
pub(crate) fn sh_ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(o.status.success(), "`{cmd}` failed:\n{}", show_output(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// uid and gid of the rootless test user, creating it (with subuid/subgid ranges) if needed.
pub(crate) fn rootless_user() -> (u32, u32) {
    let id = |flag: &str| sh(&format!("id {flag} {ROOTLESS_USER}"));
    if !id("-u").status.success() {
        sh_ok(&format!("useradd -m {ROOTLESS_USER}"));
    }
    for f in ["/etc/subuid", "/etc/subgid"] {
        let has = fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{ROOTLESS_USER}:")));
        assert!(
            has,
            "{f} has no range for {ROOTLESS_USER}; `useradd -m {ROOTLESS_USER}` should have added one \
             (or: usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {ROOTLESS_USER})"
        );
    }
    let num = |flag: &str| -> u32 {
        String::from_utf8_lossy(&id(flag).stdout)
            .trim()
            .parse()
            .expect("id output")
    };
    (num("-u"), num("-g"))
}
