//! The `ovlfuse` command: parse the command line, then mount (see `ovlfuse::daemon`).

use ovlfuse::cli::{self, CliAction};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match cli::parse_args(args) {
        Err(msg) => {
            eprintln!("ovlfuse: {msg}");
            ExitCode::from(2)
        }
        Ok(CliAction::Help) => {
            print!("{}", cli::usage("ovlfuse"));
            ExitCode::SUCCESS
        }
        Ok(CliAction::Version) => {
            println!("ovlfuse: version {}", ovlfuse::VERSION);
            println!("FUSE library version: fuser 0.18 (pure Rust, no libfuse)");
            ExitCode::SUCCESS
        }
        Ok(CliAction::Mount(c)) => match ovlfuse::daemon::run(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("ovlfuse: {msg}");
                ExitCode::from(1)
            }
        },
    }
}
