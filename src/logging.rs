//! Where the daemon's log records go: stderr while the command runs in the foreground or
//! has not returned yet, then, once it goes on in the background with its stderr on
//! /dev/null, the system log (`/dev/log`, facility daemon) where there is one, so that
//! warnings of a background mount (a write-back that found the disk full, say) are kept.
//! `RUST_LOG` filters them as before.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

/// The system log's socket, once the daemon writes there.
static SYSLOG: OnceLock<UnixDatagram> = OnceLock::new();

/// Where the system log listens (syslog(3) writes there too).
const SYSLOG_SOCKET: &str = "/dev/log";

/// Sets up logging: `debug` logs every request unless `RUST_LOG` says otherwise.
pub fn init(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let env = env_logger::Env::default().default_filter_or(default);
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| match SYSLOG.get() {
            Some(_) => writeln!(
                buf,
                "<{}>ovlfuse[{}]: {} {}: {}",
                FACILITY_DAEMON | severity(record.level()),
                std::process::id(),
                record.level(),
                record.target(),
                record.args()
            ),
            None => writeln!(
                buf,
                "[{} {:5} {}] {}",
                buf.timestamp_micros(),
                record.level(),
                record.target(),
                record.args()
            ),
        })
        .target(env_logger::Target::Pipe(Box::new(Sink)))
        .try_init();
}

/// From now on, records go to the system log, when it has a socket; otherwise they are
/// dropped with the stderr they went to.
pub fn to_syslog() {
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    if sock.connect(SYSLOG_SOCKET).is_ok() && sock.set_nonblocking(true).is_ok() {
        let _ = SYSLOG.set(sock);
    }
}

const FACILITY_DAEMON: u8 = 3 << 3;

fn severity(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// env_logger hands each record over in one write.
struct Sink;

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match SYSLOG.get() {
            Some(sock) => {
                // One datagram per record; a full or gone log loses the record, and must
                // not hold up a request.
                let _ = sock.send(b.strip_suffix(b"\n").unwrap_or(b));
                Ok(b.len())
            }
            None => io::stderr().write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Whether a warning that a request can bring on again and again (a broken mark in a
/// layer, met by every lookup of it) may be logged now: at most one a second for each
/// `last` (its time, seconds since the epoch), as the kernel's `pr_warn_ratelimited`
/// keeps its log readable. The rest can go to the debug log.
pub fn may_warn(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let before = last.load(Ordering::Relaxed);
    now != before
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::may_warn;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_repeating_warning_is_logged_once_a_second() {
        let secs = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let last = AtomicU64::new(0);
        let before = secs();
        let (first, second) = (may_warn(&last), may_warn(&last));
        assert!(first, "the first warning");
        if secs() == before {
            assert!(!second, "a second one within the same second");
        }
    }
}
