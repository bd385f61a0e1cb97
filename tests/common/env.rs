//! The binary under test and the environment the tests read.

use super::*;

/// The `ovlfuse` binary cargo built for these tests.
pub fn ovlfuse_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ovlfuse"))
}

/// False only when /dev/fuse is missing; then says so loudly on stderr.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!();
    eprintln!("************************************************************");
    eprintln!("*** SKIPPED: no /dev/fuse on this machine                ***");
    eprintln!("************************************************************");
    eprintln!();
    false
}
