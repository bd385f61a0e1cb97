//! Command-line parsing for the `ovlfuse` binary.
//!
//! Owns the argv shapes we accept and the `--help` text. It accepts both the
//! fuse-overlayfs form (`ovlfuse -o OPTS MOUNTPOINT`) and the form mount.fuse3
//! uses when `mount -t fuse.ovlfuse` runs us (`ovlfuse SOURCE MOUNTPOINT -o
//! OPTS`). The `-o` strings are passed on untouched: their syntax belongs to
//! `ovl::params`, which needs all of them at once to apply "last one wins".
//!
//! Note that `-o debug` is a mount option, seen only by `ovl::params`; like
//! libfuse, the caller should treat it as implying foreground as well.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// Each `-o` argument as given, in order; not split on commas.
    pub options: Vec<String>,
    /// The mount(8) "device" argument. Kept only for logging: an overlay has
    /// no source device.
    pub source: Option<String>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub debug: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliAction {
    Mount(Cli),
    Help,
    Version,
}

const HINT: &str = "usage: ovlfuse [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR] [SOURCE] MOUNTPOINT (see --help)";

/// Parses the arguments after argv[0].
///
/// Flags and positionals may be interleaved (mount.fuse3 puts `-o` last).
/// Short flags may be bundled (`-fd`); an `o` in a bundle takes the rest of
/// the bundle or, if nothing follows it, the next argument, as getopt does.
/// The first of `-h`/`-V` wins over anything after it, so `--help` works
/// even on an otherwise incomplete command line.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<CliAction, String> {
    let mut args = args.into_iter();
    let mut options = Vec::new();
    let mut positionals: Vec<OsString> = Vec::new();
    let mut foreground = false;
    let mut debug = false;
    let mut flags_done = false;

    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        // A lone "-" is conventionally an operand, not a flag.
        if flags_done || bytes.len() < 2 || bytes[0] != b'-' {
            positionals.push(arg);
            continue;
        }
        let Some(s) = arg.to_str() else {
            return Err(format!("unknown option {:?}", arg));
        };
        if s == "--" {
            flags_done = true;
            continue;
        }
        if let Some(long) = s.strip_prefix("--") {
            match long {
                "help" => return Ok(CliAction::Help),
                "version" => return Ok(CliAction::Version),
                // fuse-overlayfs spells -d this way.
                "debug" => {
                    debug = true;
                    foreground = true;
                }
                _ => return Err(format!("unknown option \"{s}\"\n{HINT}")),
            }
            continue;
        }
        for (i, c) in s[1..].char_indices() {
            match c {
                'f' => foreground = true,
                // As in libfuse, debug output is only useful with the
                // process attached to the terminal.
                'd' => {
                    debug = true;
                    foreground = true;
                }
                // We always run multi-threaded; accepted for libfuse
                // compatibility.
                's' => {}
                'h' => return Ok(CliAction::Help),
                'V' => return Ok(CliAction::Version),
                'o' => {
                    let rest = &s[1 + i + 1..];
                    if rest.is_empty() {
                        let v = args
                            .next()
                            .ok_or_else(|| "option \"-o\" requires an argument".to_string())?;
                        options.push(option_string(&v)?);
                    } else {
                        options.push(rest.to_string());
                    }
                    break;
                }
                _ => return Err(format!("unknown option \"-{c}\"\n{HINT}")),
            }
        }
    }

    let (source, mountpoint) = match positionals.len() {
        0 => return Err(format!("missing mountpoint\n{HINT}")),
        1 => (None, positionals.pop().unwrap()),
        2 => {
            let mp = positionals.pop().unwrap();
            let src = positionals.pop().unwrap();
            (Some(src.to_string_lossy().into_owned()), mp)
        }
        _ => {
            let extra: Vec<String> = positionals[2..]
                .iter()
                .map(|a| format!("\"{}\"", a.to_string_lossy()))
                .collect();
            return Err(format!("too many arguments: {}\n{HINT}", extra.join(" ")));
        }
    };
    if mountpoint.is_empty() {
        return Err("mountpoint is empty".to_string());
    }
    Ok(CliAction::Mount(Cli {
        options,
        source,
        mountpoint: PathBuf::from(mountpoint),
        foreground,
        debug,
    }))
}

/// Option strings must be UTF-8 because they are parsed as text; refusing
/// here beats silently mangling a path.
fn option_string(v: &OsStr) -> Result<String, String> {
    v.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("option string {v:?} is not valid UTF-8"))
}

pub fn usage(prog: &str) -> String {
    format!(
        "\
usage: {prog} [-f] [-d] [-s] -o OPTIONS [SOURCE] MOUNTPOINT
       {prog} -h | --help
       {prog} -V | --version

Mount a union (overlay) of directories at MOUNTPOINT.
SOURCE (given by mount(8)/mount.fuse3) names the mount in the mount table. When the
options name no lowerdir and SOURCE is an absolute path to a directory holding lower/
(and upper/ with work/), those directories are the layers.
Options may come before or after the operands; repeated -o accumulate.

Flags:
  -o OPTIONS        comma-separated mount options (see below); also -oOPTIONS
  -f                stay in the foreground (log to stderr; in the background the
                    daemon logs to the system log, /dev/log, where there is one)
  -d, --debug       log debug messages, among them a line per request answered
                    (implies -f); RUST_LOG sets the log filter
  -s                single-threaded (accepted and ignored)
  -h, --help        print this help and exit
  -V, --version     print the version and exit
  --                end of flags; everything after is an operand

Overlay options:
  lowerdir=DIR[:DIR...]  read-only layers, leftmost on top (required)
  lowerdir+=DIR          append one lower layer (instead of lowerdir=)
  upperdir=DIR           writable layer; needs workdir=
  workdir=DIR            scratch directory on the upper filesystem; needs upperdir=
  volatile               never sync the upper layer (implies fsync=0); as kernel
                         overlayfs does, leave workdir/work/incompat/volatile, which
                         makes every later mount fail until it is removed (container
                         engines remove it before each mount)
  fsync=0|1              sync copy-ups, fsync and, at unmount, the upper layer (default 1)
  redirect_dir=on        rename directories that have lower parts, recording where their
                         lower parts are in overlay.redirect (default as root of the
                         initial user namespace without userxattr; elsewhere off, as
                         rootless kernel overlayfs has no redirects; always off on an
                         upper filesystem that takes no xattrs)
  redirect_dir=off|follow|nofollow  such renames fail with EXDEV, as on a kernel built
                         without redirects; existing redirects are still followed
  index=off              accepted; \"on\" is not supported
  metacopy=off           accepted; \"on\" is not supported
  nfs_export=off         accepted; \"on\" is not supported
  xino=on|off|auto       accepted and ignored
  uuid=auto|on|null|off  the kernel overlay's instance uuid on the upper's root, written
                         where the kernel would write it (auto: on a new upper; on: on
                         any upper without one; null, off: never). FUSE shows no fsid
  userxattr              write overlay xattrs as user.overlay.* (what rootless kernel
                         overlayfs reads) even as root; redirect_dir then defaults to off

FUSE options:
  allow_other            let other users access the mount
  allow_root             let root access the mount (not with allow_other)
  default_permissions    accepted; permissions are always checked
  debug                  log debug messages, as -d
  fsname=NAME            file system name shown in the mount table
  subtype=NAME           the mount table then shows the type as fuse.NAME; with
                         subtype=ovlfuse, mount(8) finds ovlfuse for a remount without -t
  max_read=N, max_write=N, blksize=N, max_idle_threads=N  accepted and ignored
  user_id=N, group_id=N  accepted and ignored (the mount table shows them, and mount(8)
                         passes them back on a remount)
  clone_fd, splice_read, splice_write, splice_move, big_writes, kernel_cache,
  auto_cache, direct_io, hard_remove, use_ino, nonempty    accepted and ignored

Mount flags:
  ro                     read-only mount
  rw                     read-write mount (default)
  remount                change the flags (ro, rw, nodev, ...) of the live mount at
                         MOUNTPOINT and exit; no layers needed (a mount without an
                         upper layer stays read-only); when it becomes read-only,
                         the daemon then writes the upper layer back
  nodev, nosuid, noexec, dev, suid, exec, sync, async, dirsync
                         passed to the kernel mount
  relatime (default), strictatime, noatime, atime, nodiratime
                         when reads through the mount move the upper files' atimes
                         (lower layers' never move); a read-only mount moves none
  lazytime               accepted and ignored

Container options (as fuse-overlayfs spells them):
  uidmapping=D:S:N[:D:S:N...], gidmapping=...
                         ids D..D+N-1 stored in the layers show as S..S+N-1; other ids
                         show (and are stored) as the overflow id (65534); a leading
                         colon is fine
  squash_to_root         every file shows as owned by 0:0; chown never fails
  squash_to_uid=N, squash_to_gid=N  every file shows with owner N / group N
  xattr_permissions=1|2  keep owner, group, mode and special-file type in the xattr
                         security.fuseoverlayfs.override_stat (1) or
                         user.containers.override_stat (2) instead of the inode; layers
                         whose root carries one of these are always read this way
  noacl                  no POSIX ACLs
  noxattrs=1             no extended attributes through the mount
  static_nlink           directories report a link count of 1
  ino32_t                inode numbers fit in 32 bits
  timeout=SECONDS        how long the kernel caches names and attributes (default 3600)
  threaded=0|1           0 serves requests on one thread, over /dev/fuse (default 1:
                         several; with io_uring, one or more per CPU)
  uring=auto|on|off      serve requests over io_uring, one queue per CPU (Linux
                         6.14+), when the kernel offers it: default auto uses it
                         where /sys/module/fuse/parameters/enable_uring is Y; on
                         also warns when it is not; off always uses /dev/fuse
  uring_idle=auto|1|0    auto (default): the io_uring threads (and /dev/fuse
                         threads pinned by follow_caller) are idle-class
                         (SCHED_IDLE), so a caller keeps its CPU, and move to normal
                         priority while they wait for a CPU; 1: always idle-class;
                         0: always normal priority
  follow_caller=1|0      1 (default): while requests over /dev/fuse come from one
                         caller, the threads serving them move to its CPU and turn
                         idle-class (a wake-up on another CPU costs most of a round
                         trip on a small VM); 0: they run where the scheduler puts
                         them
  listattrs=auto|on|off  what listings (READDIRPLUS) carry for each
                         entry: auto (default): its attributes, except in a
                         directory of 4096 entries or more whose first stats show
                         the layers' caches cold: names only, as the kernel's own
                         listing (callers that stat the entries look them up,
                         which warms the rest on the stat-ahead threads); on:
                         always; off: never
  statahead=auto|on|off  idle-class helper threads (one per CPU besides one) stat
                         entries ahead: those of a cold listing whose names are
                         being looked up, and those of a reply with attributes:
                         auto (default) when its first stats show the layers'
                         caches cold, on: every reply of 32 entries or more; off:
                         never (also with threaded=0)
  passthrough=auto|off   auto (default): when run by root outside any user
                         namespace (kernel 6.9+), the kernel reads and writes upper
                         files itself (FUSE passthrough); off: data goes through us
  writeback=1|0          without passthrough (a plain user, root of a user
                         namespace, or passthrough=off) the kernel caches writes
                         and sends them in batches of up to 1 MiB (FUSE writeback
                         cache; default 1); 0: each write(2) is a request
  btime=0|1              1: statx shows birth times (of the copy shown, as on the
                         kernel overlay); costs a request per file for the first
                         statx that asks for one (Rust's metadata() does). Default
                         0: none shown
  fast_ino=0|1, plugins=LIST  accepted and ignored

Accepted and ignored (mount(8), fstab and SELinux):
  defaults, auto, noauto, user, nouser, users, _netdev, nofail, loop,
  private, shared, slave, rprivate, rshared, rslave, comment=TEXT, x-*,
  context=CTX, fscontext=CTX, defcontext=CTX, rootcontext=CTX

Option syntax: \\, is a literal comma, \\: a literal colon (in lowerdir=,
where : separates layers), \\\\ a backslash. A value in double quotes may
contain commas: context=\"system_u:object_r:container_file_t:s0:c1,c2\".

Example:
  {prog} -o lowerdir=/lower1:/lower2,upperdir=/upper,workdir=/work /merged
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn parse(args: &[&str]) -> Result<CliAction, String> {
        parse_args(args.iter().map(OsString::from))
    }

    fn mount(args: &[&str]) -> Cli {
        match parse(args) {
            Ok(CliAction::Mount(c)) => c,
            other => panic!("{args:?} should mount, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e,
            other => panic!("{args:?} should fail, got {other:?}"),
        }
    }

    #[test]
    fn fuse_overlayfs_form() {
        let c = mount(&["-o", "lowerdir=L1:L2,upperdir=U,workdir=W", "/mnt"]);
        assert_eq!(c.options, vec!["lowerdir=L1:L2,upperdir=U,workdir=W"]);
        assert_eq!(c.source, None);
        assert_eq!(c.mountpoint, PathBuf::from("/mnt"));
        assert!(!c.foreground);
        assert!(!c.debug);
    }

    #[test]
    fn mount_fuse3_form() {
        let c = mount(&["overlay", "/mnt", "-o", "rw,lowerdir=/a,dev,suid"]);
        assert_eq!(c.source.as_deref(), Some("overlay"));
        assert_eq!(c.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(c.options, vec!["rw,lowerdir=/a,dev,suid"]);
    }

    #[test]
    fn options_between_operands() {
        let c = mount(&["src", "-o", "lowerdir=/a", "/mnt"]);
        assert_eq!(c.source.as_deref(), Some("src"));
        assert_eq!(c.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(c.options, vec!["lowerdir=/a"]);
    }

    #[test]
    fn repeated_o_accumulate_in_order() {
        let c = mount(&["-o", "a", "/mnt", "-o", "b,c", "-od"]);
        assert_eq!(c.options, vec!["a", "b,c", "d"]);
        assert!(!c.debug, "-od is the option string \"d\", not -d");
    }

    #[test]
    fn attached_o() {
        let c = mount(&["-olowerdir=/a,upperdir=/u", "/mnt"]);
        assert_eq!(c.options, vec!["lowerdir=/a,upperdir=/u"]);
    }

    #[test]
    fn o_argument_taken_verbatim() {
        // Even if it looks like a flag, as getopt does.
        let c = mount(&["-o", "-f", "/mnt"]);
        assert_eq!(c.options, vec!["-f"]);
        assert!(!c.foreground);
        let c = mount(&["-o", "", "/mnt"]);
        assert_eq!(c.options, vec![""]);
        let c = mount(&["-o", r"lowerdir=/a\,b", "/mnt"]);
        assert_eq!(c.options, vec![r"lowerdir=/a\,b"]);
    }

    #[test]
    fn o_missing_argument() {
        let e = err(&["/mnt", "-o"]);
        assert!(
            e.contains("-o") && e.contains("requires an argument"),
            "{e}"
        );
        let e = err(&["/mnt", "-fo"]);
        assert!(e.contains("-o"), "{e}");
    }

    #[test]
    fn foreground_and_debug() {
        let c = mount(&["-f", "/mnt"]);
        assert!(c.foreground && !c.debug);
        let c = mount(&["-d", "/mnt"]);
        assert!(c.foreground && c.debug);
        let c = mount(&["--debug", "/mnt"]);
        assert!(c.foreground && c.debug);
        let c = mount(&["/mnt", "-s"]);
        assert!(!c.foreground && !c.debug);
    }

    #[test]
    fn bundled_flags() {
        let c = mount(&["-fs", "/mnt"]);
        assert!(c.foreground && !c.debug);
        let c = mount(&["-dfo", "lowerdir=/a", "/mnt"]);
        assert!(c.debug && c.foreground);
        assert_eq!(c.options, vec!["lowerdir=/a"]);
        let c = mount(&["-folowerdir=/b", "/mnt"]);
        assert!(c.foreground);
        assert_eq!(c.options, vec!["lowerdir=/b"]);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["-h"]), Ok(CliAction::Help));
        assert_eq!(parse(&["--help"]), Ok(CliAction::Help));
        assert_eq!(parse(&["-V"]), Ok(CliAction::Version));
        assert_eq!(parse(&["--version"]), Ok(CliAction::Version));
        // Help needs no mountpoint and wins over what follows.
        assert_eq!(
            parse(&["-o", "x", "--help", "a", "b", "c"]),
            Ok(CliAction::Help)
        );
        assert_eq!(parse(&["/mnt", "-V", "--bogus"]), Ok(CliAction::Version));
        assert_eq!(parse(&["-fh"]), Ok(CliAction::Help));
        assert_eq!(parse(&["-h", "-V"]), Ok(CliAction::Help));
    }

    #[test]
    fn help_after_double_dash_is_operand() {
        let c = mount(&["-o", "x", "--", "--help"]);
        assert_eq!(c.mountpoint, PathBuf::from("--help"));
    }

    #[test]
    fn double_dash_ends_flags() {
        let c = mount(&["-o", "lowerdir=/a", "--", "-src", "-mnt"]);
        assert_eq!(c.source.as_deref(), Some("-src"));
        assert_eq!(c.mountpoint, PathBuf::from("-mnt"));
        let c = mount(&["--", "-f"]);
        assert!(!c.foreground);
        assert_eq!(c.mountpoint, PathBuf::from("-f"));
    }

    #[test]
    fn lone_dash_is_operand() {
        let c = mount(&["-", "/mnt"]);
        assert_eq!(c.source.as_deref(), Some("-"));
    }

    #[test]
    fn unknown_flags_named() {
        let e = err(&["-x", "/mnt"]);
        assert!(e.starts_with("unknown option \"-x\""), "{e}");
        let e = err(&["-fz", "/mnt"]);
        assert!(e.starts_with("unknown option \"-z\""), "{e}");
        let e = err(&["--foreground", "/mnt"]);
        assert!(e.starts_with("unknown option \"--foreground\""), "{e}");
        let e = err(&["/mnt", "--opt=1"]);
        assert!(e.contains("\"--opt=1\""), "{e}");
        assert!(e.contains("usage:"), "{e}");
    }

    #[test]
    fn unknown_flag_before_help_is_an_error() {
        let e = err(&["-q", "--help"]);
        assert!(e.contains("-q"), "{e}");
    }

    #[test]
    fn zero_operands() {
        let e = err(&[]);
        assert!(e.starts_with("missing mountpoint"), "{e}");
        assert!(e.contains("usage:"), "{e}");
        let e = err(&["-o", "lowerdir=/a", "-f"]);
        assert!(e.starts_with("missing mountpoint"), "{e}");
    }

    #[test]
    fn too_many_operands() {
        let e = err(&["a", "b", "c"]);
        assert!(e.starts_with("too many arguments: \"c\""), "{e}");
        assert!(e.contains("usage:"), "{e}");
        let e = err(&["a", "b", "c", "-f", "d"]);
        assert!(e.contains("\"c\" \"d\""), "{e}");
    }

    #[test]
    fn empty_mountpoint() {
        assert_eq!(err(&["-o", "lowerdir=/a", ""]), "mountpoint is empty");
    }

    #[test]
    fn relative_mountpoint_kept() {
        let c = mount(&["-o", "lowerdir=a", "merged/"]);
        assert_eq!(c.mountpoint, PathBuf::from("merged/"));
    }

    #[test]
    fn non_utf8_operands_kept() {
        let mp = OsString::from_vec(b"/mnt/\xff\xfe".to_vec());
        let src = OsString::from_vec(b"s\xffrc".to_vec());
        let r = parse_args(vec![
            OsString::from("-o"),
            OsString::from("lowerdir=/a"),
            src,
            mp.clone(),
        ]);
        match r {
            Ok(CliAction::Mount(c)) => {
                assert_eq!(c.mountpoint, PathBuf::from(mp));
                assert_eq!(c.source.as_deref(), Some("s\u{fffd}rc"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_utf8_option_string_rejected() {
        let r = parse_args(vec![
            OsString::from("-o"),
            OsString::from_vec(b"lowerdir=/\xff".to_vec()),
            OsString::from("/mnt"),
        ]);
        let e = r.unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        let r = parse_args(vec![
            OsString::from_vec(b"-\xff".to_vec()),
            OsString::from("/mnt"),
        ]);
        assert!(r.unwrap_err().contains("unknown option"));
    }

    #[test]
    fn flags_after_operands() {
        let c = mount(&["src", "/mnt", "-o", "lowerdir=/a", "-f", "-d", "-s"]);
        assert!(c.foreground && c.debug);
        assert_eq!(c.source.as_deref(), Some("src"));
    }

    #[test]
    fn usage_mentions_everything() {
        let u = usage("ovlfuse");
        assert!(u.starts_with("usage: ovlfuse "), "{u}");
        for needle in [
            "-o OPTIONS",
            "-f",
            "-d, --debug",
            "-s",
            "-h, --help",
            "-V, --version",
            "--",
            "lowerdir=",
            "lowerdir+=",
            "upperdir=",
            "workdir=",
            "volatile",
            "fsync=0|1",
            "redirect_dir=",
            "index=off",
            "metacopy=off",
            "nfs_export=off",
            "xino=",
            "uuid=",
            "userxattr",
            "allow_other",
            "allow_root",
            "default_permissions",
            "debug",
            "fsname=",
            "subtype=",
            "max_read=",
            "max_write=",
            "blksize=",
            "max_idle_threads=",
            "user_id=N, group_id=N",
            "ro ",
            "rw ",
            "nodev",
            "nosuid",
            "noexec",
            "dev,",
            "suid,",
            "exec,",
            "sync,",
            "async,",
            "dirsync",
            "noatime",
            "atime",
            "relatime",
            "strictatime",
            "nodiratime",
            "lazytime",
            "uidmapping=",
            "gidmapping=",
            "squash_to_root",
            "squash_to_uid=",
            "squash_to_gid=",
            "xattr_permissions=",
            "noxattrs=",
            "noacl",
            "static_nlink",
            "ino32_t",
            "timeout=",
            "threaded=",
            "uring=",
            "uring_idle=",
            "follow_caller=",
            "statahead=",
            "listattrs=",
            "passthrough=",
            "fast_ino=",
            "writeback=",
            "btime=0|1",
            "plugins=",
            "defaults",
            "auto,",
            "user,",
            "comment=",
            "x-*",
            "context=",
            "fscontext=",
            "defcontext=",
            "rootcontext=",
            r"\,",
            r"\:",
            r"\\",
        ] {
            assert!(u.contains(needle), "usage lacks {needle:?}");
        }
        // Every option accepted without effect is listed too.
        for flag in crate::ovl::params::IGNORED_FLAGS {
            assert!(u.contains(flag), "usage lacks {flag:?}");
        }
        assert!(usage("/usr/bin/foo").contains("usage: /usr/bin/foo [-f]"));
    }

    #[test]
    fn usage_lines_fit_terminal() {
        for line in usage("ovlfuse").lines() {
            assert!(line.chars().count() <= 100, "too long: {line:?}");
        }
    }
}
