//! Counting the FUSE requests a mount receives, by opcode, through the kernel's
//! fuse_request_send tracepoint in a tracefs instance of the test's own (so that tests
//! running at once count apart), filtered to the mount's connection.

use super::*;

const TRACEFS: &str = "/sys/kernel/tracing";

pub struct RequestCounter {
    instance: PathBuf,
}

impl RequestCounter {
    /// Starts counting the requests of the FUSE mount at `mnt`.
    pub fn new(mnt: &Path) -> RequestCounter {
        if !Path::new(TRACEFS).join("instances").is_dir() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "nodev", TRACEFS])
                .status();
        }
        let dev = fs::metadata(mnt)
            .unwrap_or_else(|e| panic!("stat {}: {e}", mnt.display()))
            .dev();
        // The tracepoint gives the kernel's encoding of the device number.
        let conn = (libc::major(dev) << 20) | libc::minor(dev);
        let instance = Path::new(TRACEFS).join("instances").join(format!(
            "ovlfuse-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&instance).unwrap_or_else(|e| {
            panic!(
                "tracefs instance {}: {e} (the request counts need tracefs)",
                instance.display()
            )
        });
        let counter = RequestCounter { instance };
        let event = counter.instance.join("events/fuse/fuse_request_send");
        assert!(
            event.is_dir(),
            "this kernel has no fuse_request_send tracepoint ({})",
            event.display()
        );
        fs::write(event.join("filter"), format!("connection == {conn}")).unwrap();
        fs::write(event.join("enable"), "1").unwrap();
        counter
    }

    /// The requests sent since `new`, by opcode name (`FUSE_GETXATTR`, ...).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let text = fs::read_to_string(self.instance.join("trace")).unwrap();
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(op) = line
                .split_once("(FUSE_")
                .and_then(|(_, rest)| rest.split_once(')'))
            {
                *out.entry(format!("FUSE_{}", op.0)).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn count(&self, opcode: &str) -> u64 {
        self.counts().get(opcode).copied().unwrap_or(0)
    }

    /// The requests sent since `new` or the last `take`, and a fresh start.
    pub fn take(&self) -> BTreeMap<String, u64> {
        let counts = self.counts();
        fs::write(self.instance.join("trace"), "").unwrap();
        counts
    }
}

impl Drop for RequestCounter {
    fn drop(&mut self) {
        let _ = fs::write(
            self.instance.join("events/fuse/fuse_request_send/enable"),
            "0",
        );
        // The kernel answers EBUSY while anything holds one of the instance's files open;
        // with tests running beside it, that happened in about one run in five, and
        // never for longer than a retry.
        for _ in 0..100 {
            match fs::remove_dir(&self.instance) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => {
                    eprintln!("remove {}: {e}", self.instance.display());
                    return;
                }
                Ok(()) => return,
            }
        }
        eprintln!("tracefs instance {} stays busy", self.instance.display());
    }
}
