//! Mount option parsing: turns the raw `-o` strings into a validated
//! [`Params`].
//!
//! This module owns the option *syntax* — splitting option lists, backslash
//! escapes, quoted values, splitting `lowerdir=` into layers — and the checks
//! that can be made on the text alone (known names, value formats, which
//! options must come together). It deliberately never touches the filesystem:
//! whether the layer paths exist, are directories, overlap or share a
//! filesystem is decided by the mount code, which also resolves relative
//! paths. Keeping this pure lets every rule be unit-tested without a mount.
//!
//! Syntax accepted in each option string:
//! * options are separated by unescaped `,`; empty options are skipped;
//! * `\X` stands for a literal `X` (so `\,`, `\:`, `\\`, `\"`), the same rule
//!   the kernel's overlayfs applies to layer paths;
//! * a value that *starts* with `"` runs to the next unescaped `"` and may
//!   contain commas (`context="a:b:c1,c2"`). The quotes are not part of the
//!   value. A `"` anywhere else is an ordinary character, so plain paths
//!   containing quotes keep working as they do with the kernel.
//! * in `lowerdir=` the layers are separated by unescaped `:` (quoting does
//!   not protect colons: only `\:` does, as with the kernel).

use super::ownership::{parse_mapping, IdRange};
use std::path::{Path, PathBuf};

/// The kernel's overlayfs stacking limit (`OVL_MAX_STACK`); we keep the same
/// so that a layer list accepted here would also be accepted by the kernel.
pub const MAX_LOWER_LAYERS: usize = 500;

/// Kernel mount flags (as understood by FUSE mounts) that we forward.
const KERNEL_FLAGS: &[&str] = &[
    "nodev", "nosuid", "noexec", "dev", "suid", "exec", "sync", "async", "dirsync", "noatime",
    "atime",
];

/// Value-less options that are accepted for compatibility with mount(8),
/// mount.fuse3, libfuse and fuse-overlayfs, but change nothing for us.
pub(crate) const IGNORED_FLAGS: &[&str] = &[
    // mount(8)/fstab bookkeeping that helpers may pass through
    "defaults",
    "auto",
    "noauto",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "loop",
    // propagation flags
    "private",
    "shared",
    "slave",
    "rprivate",
    "rshared",
    "rslave",
    // atime variant that changes nothing for us
    "lazytime",
    // libfuse tuning flags
    "clone_fd",
    "splice_read",
    "splice_write",
    "splice_move",
    "big_writes",
    "kernel_cache",
    "auto_cache",
    "direct_io",
    "hard_remove",
    "use_ino",
    "nonempty",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// In the order given: the leftmost is the highest layer. Unescaped.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Accepted; permissions are always enforced by the kernel anyway.
    pub default_permissions: bool,
    /// `ro` was given (and not overridden by a later `rw`).
    pub read_only: bool,
    pub debug: bool,
    /// Default true; `fsync=0` or `volatile` make it false.
    pub fsync: bool,
    pub volatile: bool,
    /// Kernel mount flags to pass on, in the order given.
    pub kernel_flags: Vec<String>,
    /// Options accepted without effect, as written, so they can be logged.
    pub ignored: Vec<String>,
    /// `userxattr`: overlay xattrs are written as `user.overlay.*`, as rootless kernel
    /// overlayfs writes them, even when the daemon could write `trusted.overlay.*`.
    pub userxattr: bool,
    /// `redirect_dir=on` (the default, unless the mount writes rootless markers): directories
    /// with lower parts may be renamed (a redirect xattr records where their lower parts
    /// are); off, such renames fail with EXDEV.
    pub redirect_dir: bool,
    /// `redirect_dir=` was given (otherwise the default depends on the marker format).
    pub redirect_dir_given: bool,
    /// `remount`: change the flags (ro/rw, nodev, ...) of an existing mount and exit.
    pub remount: bool,
    /// When reads move atime: `relatime` (default), `strictatime`/`atime`, `noatime`.
    pub atime: Atime,
    /// `nodiratime`: reading a directory never moves its atime.
    pub nodiratime: bool,
    /// fuse-overlayfs's container options; see `ownership` for their meaning.
    pub uidmapping: Vec<IdRange>,
    pub gidmapping: Vec<IdRange>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    /// 0 (off), 1 (`security.fuseoverlayfs.override_stat`), 2 (`user.containers.override_stat`).
    pub xattr_permissions: u8,
    /// Directories report a link count of 1.
    pub static_nlink: bool,
    /// No POSIX ACLs: not offered to the kernel, not inherited.
    pub noacl: bool,
    /// `noxattrs=1`: extended attributes are not supported through the mount.
    pub noxattrs: bool,
    /// `timeout=`: how long the kernel may cache names and attributes (seconds).
    pub timeout: Option<std::time::Duration>,
    /// `ino32_t`: inode numbers fit in 32 bits.
    pub ino32: bool,
    /// `threaded=0`: one thread serves requests.
    pub single_threaded: bool,
    /// `uring=on|off|auto`: FUSE over io_uring; `None` (auto) uses it when the kernel
    /// offers it.
    pub uring: Option<bool>,
    /// `uring_idle=auto|1|0`: how the io_uring threads (and pinned /dev/fuse threads)
    /// are scheduled.
    pub uring_priority: crate::uring_priority::Policy,
    /// `follow_caller=1|0`: while one caller makes the requests, /dev/fuse threads move
    /// to its CPU.
    pub follow_caller: bool,
    /// `statahead=auto|on|off`: whether READDIRPLUS shares its stats with helper threads;
    /// `None` when not given.
    pub statahead: Option<super::statahead::Mode>,
    /// `listattrs=auto|on|off`: what READDIRPLUS replies carry for their entries.
    pub listattrs: super::statahead::ListAttrs,
    /// `passthrough=auto|off`: the kernel reads and writes upper files itself where it
    /// lets us (`off`: never).
    pub passthrough: bool,
    /// `writeback=1|0`: without passthrough, the kernel caches writes (FUSE writeback
    /// cache) and sends them in large batches.
    pub writeback: bool,
    /// `btime=1|0`: answer statx's birth time (FUSE_STATX), at one more request per
    /// inode for callers that ask for it.
    pub btime: bool,
    /// `uuid=`: see [`Uuid`].
    pub uuid: Uuid,
}

/// The atime policy of the mount, applied by us to the upper layer (the kernel's FUSE
/// client leaves atime to the filesystem).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Atime {
    #[default]
    Relative,
    Strict,
    Never,
}

/// `uuid=`: whether the upper layer's root keeps the kernel overlay's persistent
/// instance uuid (`overlay.uuid`). ovlfuse cannot show it (FUSE passes no fsid), but
/// writes it as the kernel would, so that the kernel finds the same upper either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uuid {
    /// `null` and `off`: no uuid is kept.
    Null,
    /// Made on the first mount of an upper that has none.
    On,
    /// As `on` for a new upper, one whose root is not yet marked impure; an older upper
    /// without one keeps none (the kernel then reports the upper filesystem's fsid).
    #[default]
    Auto,
}

impl Params {
    /// The atime policy in force: a read-only mount moves no atime, whatever was asked.
    pub fn effective_atime(&self) -> Atime {
        if self.read_only {
            Atime::Never
        } else {
            self.atime
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            lowerdirs: Vec::new(),
            upperdir: None,
            workdir: None,
            fsname: None,
            subtype: None,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            read_only: false,
            debug: false,
            fsync: true,
            volatile: false,
            kernel_flags: Vec::new(),
            ignored: Vec::new(),
            userxattr: false,
            redirect_dir: true,
            redirect_dir_given: false,
            remount: false,
            atime: Atime::Relative,
            nodiratime: false,
            uidmapping: Vec::new(),
            gidmapping: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            xattr_permissions: 0,
            static_nlink: false,
            noacl: false,
            noxattrs: false,
            timeout: None,
            ino32: false,
            single_threaded: false,
            uring: None,
            uring_priority: crate::uring_priority::Policy::Adaptive,
            follow_caller: true,
            statahead: None,
            listattrs: Default::default(),
            passthrough: true,
            writeback: true,
            btime: false,
            uuid: Uuid::Auto,
        }
    }
}

impl Params {
    /// Whether the mount is writable through an upper layer (otherwise it is a
    /// read-only overlay of the lower layers only).
    pub fn has_upper(&self) -> bool {
        self.upperdir.is_some()
    }
}

/// Escapes a path so that it survives as one `lowerdir=`/`upperdir=` value.
///
/// `"` is escaped too, although only a leading one would be misread as an
/// opening quote: escaping all of them keeps the rule simple and the kernel
/// unescapes `\"` the same way. Non-UTF-8 bytes are replaced, since option
/// strings are UTF-8 throughout.
pub fn escape_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | ':' | '"') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Which form of lower layer option has been seen; the kernel refuses to mix
/// the legacy list with the append form, and so do we, because "last wins"
/// and "append" have no sensible combined meaning.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LowerForm {
    List,
    Append,
}

/// The error for a mount that names no lower layer.
pub const LOWERDIR_REQUIRED: &str = "lowerdir= is required";

pub fn parse_options(opts: &[String]) -> Result<Params, String> {
    let mut p = Params::default();
    let mut lower_form = None;
    for s in opts {
        for raw in split_options(s)? {
            if !raw.is_empty() {
                apply_option(&mut p, raw, &mut lower_form)?;
            }
        }
    }

    if p.remount {
        // mount -o remount may repeat the layers or not; they cannot change either way.
        return Ok(p);
    }
    if p.lowerdirs.is_empty() {
        return Err(LOWERDIR_REQUIRED.to_string());
    }
    if p.lowerdirs.len() > MAX_LOWER_LAYERS {
        return Err(format!(
            "lowerdir: too many lower layers ({}, the limit is {})",
            p.lowerdirs.len(),
            MAX_LOWER_LAYERS
        ));
    }
    match (&p.upperdir, &p.workdir) {
        (Some(_), None) => return Err("upperdir= requires workdir= as well".to_string()),
        (None, Some(_)) => return Err("workdir= requires upperdir= as well".to_string()),
        _ => {}
    }
    if p.allow_other && p.allow_root {
        // libfuse refuses this combination too: they grant different sets of users.
        return Err("allow_other and allow_root are mutually exclusive".to_string());
    }
    // Order-independent, as in fuse-overlayfs: volatile always wins over fsync=1.
    if p.volatile {
        p.fsync = false;
    }
    Ok(p)
}

/// Splits one option string on commas that are neither escaped nor inside a
/// quoted value. Returned slices are the options exactly as written.
fn split_options(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen_eq = false;
    let mut at_value_start = false;
    let mut in_quotes = false;
    let mut after_quote = false;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        let value_start = std::mem::replace(&mut at_value_start, false);
        if after_quote && c != ',' {
            let end = s[i..].find(',').map_or(s.len(), |j| i + j);
            return Err(format!(
                "unexpected text after closing quote in mount option \"{}\"",
                &s[start..end]
            ));
        }
        match c {
            '\\' => {
                let Some(_) = chars.next() else {
                    return Err(format!(
                        "trailing backslash in mount option \"{}\"",
                        &s[start..]
                    ));
                };
            }
            '"' if in_quotes => {
                in_quotes = false;
                after_quote = true;
            }
            '"' if value_start => in_quotes = true,
            '=' if !seen_eq => {
                seen_eq = true;
                at_value_start = true;
            }
            ',' if !in_quotes => {
                out.push(&s[start..i]);
                start = i + 1;
                seen_eq = false;
                after_quote = false;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(format!(
            "unterminated quote in mount option \"{}\"",
            &s[start..]
        ));
    }
    out.push(&s[start..]);
    Ok(out)
}

/// Removes the quotes of a quoted value (see [`split_options`]), keeping
/// escapes so that a later split on `:` can still tell `\:` apart.
fn strip_quotes(v: &str) -> &str {
    match v.strip_prefix('"') {
        // split_options guarantees the closing quote ends the value.
        Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
        None => v,
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Decoded value: quotes removed, escapes resolved.
fn decode(v: &str) -> String {
    unescape(strip_quotes(v))
}

/// Splits on `sep` where it is not escaped; pieces keep their escapes.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + sep.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_lowerdir(raw_value: &str) -> Result<Vec<PathBuf>, String> {
    let value = strip_quotes(raw_value);
    if value.is_empty() {
        return Err("lowerdir: empty layer path (no layers given)".to_string());
    }
    let pieces = split_unescaped(value, ':');
    let mut layers = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        if piece.is_empty() {
            // "a::b" names data-only layers to the kernel (Linux 6.5; the layers after
            // "::" serve file data for metacopy files), which a user copying a kernel
            // mount's options should hear plainly.
            if i > 0 && i + 1 < pieces.len() && !pieces[i - 1].is_empty() {
                return Err(format!(
                    "lowerdir: \"::\" in \"{raw_value}\" marks data-only lower layers, which \
                     ovlfuse does not support (it has no metacopy); separate layers with one \":\""
                ));
            }
            return Err(format!(
                "lowerdir: empty layer path (layer {} of \"{}\")",
                i + 1,
                raw_value
            ));
        }
        layers.push(PathBuf::from(unescape(piece)));
    }
    Ok(layers)
}

fn flag(name: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        None => Ok(()),
        Some(_) => Err(format!("mount option \"{name}\" takes no value")),
    }
}

/// The raw value of an option that needs one; an empty value counts as
/// missing unless `allow_empty`.
fn required<'a>(name: &str, value: Option<&'a str>, allow_empty: bool) -> Result<&'a str, String> {
    match value {
        Some(v) if allow_empty || !strip_quotes(v).is_empty() => Ok(v),
        _ => Err(format!("mount option \"{name}\" requires a value")),
    }
}

fn invalid(name: &str, value: &str, expected: &str) -> String {
    format!("invalid value for mount option \"{name}\": \"{value}\" (expected {expected})")
}

/// Checks a value against a fixed set of words.
fn one_of(name: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    let v = decode(value);
    if allowed.contains(&v.as_str()) {
        Ok(())
    } else {
        Err(invalid(name, value, &allowed.join(", ")))
    }
}

/// Kernel overlayfs features we don't implement: "off" (and the listed
/// equivalents) is fine, "on" is refused rather than silently ignored
/// because the caller would get different semantics than asked for.
fn feature_off(name: &str, value: &str, ok: &[&str], valid: &[&str]) -> Result<(), String> {
    let v = decode(value);
    if ok.contains(&v.as_str()) {
        Ok(())
    } else if valid.contains(&v.as_str()) {
        Err(format!("mount option \"{name}={v}\" is not supported"))
    } else {
        Err(invalid(name, value, &valid.join(", ")))
    }
}

fn number_u32(name: &str, value: &str) -> Result<u32, String> {
    decode(value)
        .parse::<u32>()
        .map_err(|_| invalid(name, value, "a non-negative integer"))
}

fn seconds(name: &str, value: &str) -> Result<f64, String> {
    match decode(value).parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(invalid(name, value, "a non-negative number of seconds")),
    }
}

/// fuse-overlayfs's id mapping syntax: `FROM:TO:LEN` triples joined by `:`.
fn id_mapping(name: &str, value: &str) -> Result<Vec<IdRange>, String> {
    parse_mapping(&decode(value)).map_err(|why| {
        format!(
            "{}: {why}",
            invalid(name, value, "FROM:TO:LEN[:FROM:TO:LEN...]")
        )
    })
}

fn apply_option(
    p: &mut Params,
    raw: &str,
    lower_form: &mut Option<LowerForm>,
) -> Result<(), String> {
    let (name, value) = match raw.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (raw, None),
    };
    let mut ignore = false;
    match name {
        "lowerdir" => {
            let v = required(name, value, true)?;
            if *lower_form == Some(LowerForm::Append) {
                return Err("lowerdir= cannot be mixed with lowerdir+=".to_string());
            }
            *lower_form = Some(LowerForm::List);
            // Like the kernel's legacy parsing: a later lowerdir= replaces.
            p.lowerdirs = parse_lowerdir(v)?;
        }
        "lowerdir+" => {
            let v = required(name, value, true)?;
            if *lower_form == Some(LowerForm::List) {
                return Err("lowerdir+= cannot be mixed with lowerdir=".to_string());
            }
            *lower_form = Some(LowerForm::Append);
            // One layer per option, as with the kernel's fsconfig form: a
            // colon here is part of the path.
            let path = decode(v);
            if path.is_empty() {
                return Err("lowerdir+: empty layer path".to_string());
            }
            p.lowerdirs.push(PathBuf::from(path));
        }
        "datadir+" => return Err("datadir+: data-only layers are not supported".to_string()),
        "upperdir" | "workdir" => {
            let path = decode(required(name, value, true)?);
            if path.is_empty() {
                return Err(format!("{name}: empty path"));
            }
            let slot = if name == "upperdir" {
                &mut p.upperdir
            } else {
                &mut p.workdir
            };
            *slot = Some(PathBuf::from(path));
        }
        "fsname" => p.fsname = Some(decode(required(name, value, false)?)),
        "subtype" => p.subtype = Some(decode(required(name, value, false)?)),
        "allow_other" => {
            flag(name, value)?;
            p.allow_other = true;
        }
        "allow_root" => {
            flag(name, value)?;
            p.allow_root = true;
        }
        "default_permissions" => {
            flag(name, value)?;
            p.default_permissions = true;
        }
        "debug" => {
            flag(name, value)?;
            p.debug = true;
        }
        "volatile" => {
            flag(name, value)?;
            p.volatile = true;
        }
        "userxattr" => {
            flag(name, value)?;
            p.userxattr = true;
        }
        "fsync" => {
            let v = required(name, value, false)?;
            match decode(v).as_str() {
                "0" => p.fsync = false,
                "1" => p.fsync = true,
                _ => return Err(invalid(name, v, "0 or 1")),
            }
        }
        "ro" => {
            flag(name, value)?;
            p.read_only = true;
        }
        // The default; only meaningful as undoing an earlier "ro" (mount(8)
        // semantics: the last of ro/rw wins).
        "rw" => {
            flag(name, value)?;
            p.read_only = false;
        }
        "relatime" | "strictatime" | "nodiratime" | "diratime" => {
            flag(name, value)?;
            match name {
                "relatime" => p.atime = Atime::Relative,
                "strictatime" => p.atime = Atime::Strict,
                "nodiratime" => p.nodiratime = true,
                _ => p.nodiratime = false,
            }
        }
        _ if KERNEL_FLAGS.contains(&name) => {
            flag(name, value)?;
            match name {
                "noatime" => p.atime = Atime::Never,
                // mount(8): "atime" undoes noatime, giving the kernel's default (relatime).
                "atime" => p.atime = Atime::Relative,
                _ => {}
            }
            p.kernel_flags.push(name.to_string());
        }
        _ if IGNORED_FLAGS.contains(&name) => {
            flag(name, value)?;
            ignore = true;
        }
        // mount(8) passes "user=NAME" to helpers for user mounts.
        "user" => ignore = true,
        "remount" => {
            flag(name, value)?;
            p.remount = true;
        }
        _ if name.starts_with("x-") => ignore = true,
        "comment" | "plugins" => {
            required(name, value, true)?;
            ignore = true;
        }
        "context" | "fscontext" | "defcontext" | "rootcontext" => {
            required(name, value, false)?;
            ignore = true;
        }
        "redirect_dir" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["on", "follow", "nofollow", "off"])?;
            // Redirects are always followed when read; "on" also writes them.
            p.redirect_dir = v == "on";
            p.redirect_dir_given = true;
        }
        "index" | "metacopy" | "nfs_export" => {
            let v = required(name, value, false)?;
            feature_off(name, v, &["off"], &["on", "off"])?;
            ignore = true;
        }
        "xino" => {
            one_of(name, required(name, value, false)?, &["on", "off", "auto"])?;
            ignore = true;
        }
        "uuid" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["on", "off", "null", "auto"])?;
            p.uuid = match decode(v).as_ref() {
                "on" => Uuid::On,
                "auto" => Uuid::Auto,
                _ => Uuid::Null,
            };
        }
        "uring" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["on", "off", "auto"])?;
            p.uring = match decode(v).as_ref() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            };
        }
        "uring_idle" => {
            use crate::uring_priority::Policy;
            let v = required(name, value, false)?;
            one_of(name, v, &["auto", "1", "0"])?;
            p.uring_priority = match decode(v).as_ref() {
                "1" => Policy::Idle,
                "0" => Policy::Normal,
                _ => Policy::Adaptive,
            };
        }
        "follow_caller" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["1", "0"])?;
            p.follow_caller = decode(v) == "1";
        }
        "statahead" => {
            use super::statahead::Mode;
            let v = required(name, value, false)?;
            one_of(name, v, &["auto", "on", "off"])?;
            p.statahead = Some(match decode(v).as_ref() {
                "on" => Mode::Always,
                "off" => Mode::Off,
                _ => Mode::Auto,
            });
        }
        "listattrs" => {
            use super::statahead::ListAttrs;
            let v = required(name, value, false)?;
            one_of(name, v, &["auto", "on", "off"])?;
            p.listattrs = match decode(v).as_ref() {
                "on" => ListAttrs::On,
                "off" => ListAttrs::Off,
                _ => ListAttrs::Auto,
            };
        }
        "threaded" | "noxattrs" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["0", "1"])?;
            let on = decode(v) == "1";
            match name {
                "threaded" => p.single_threaded = !on,
                _ => p.noxattrs = on,
            }
        }
        // How we always work: inode numbers never need files opened.
        "fast_ino" => {
            one_of(name, required(name, value, false)?, &["0", "1"])?;
            ignore = true;
        }
        "writeback" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["0", "1"])?;
            p.writeback = decode(v) == "1";
        }
        "btime" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["0", "1"])?;
            p.btime = decode(v) == "1";
        }
        "passthrough" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["auto", "off"])?;
            p.passthrough = decode(v) == "auto";
        }
        "xattr_permissions" => {
            let v = required(name, value, false)?;
            one_of(name, v, &["0", "1", "2"])?;
            p.xattr_permissions = decode(v).parse().unwrap_or(0);
        }
        "timeout" => {
            // Huge values (fuse-overlayfs's default is 1e9 s) mean "forever".
            let t = seconds(name, required(name, value, false)?)?;
            p.timeout =
                Some(std::time::Duration::try_from_secs_f64(t).unwrap_or(std::time::Duration::MAX));
        }
        "squash_to_root" => {
            flag(name, value)?;
            p.squash_to_root = true;
        }
        "squash_to_uid" => p.squash_to_uid = Some(number_u32(name, required(name, value, false)?)?),
        "squash_to_gid" => p.squash_to_gid = Some(number_u32(name, required(name, value, false)?)?),
        "static_nlink" | "noacl" | "ino32_t" => {
            flag(name, value)?;
            match name {
                "static_nlink" => p.static_nlink = true,
                "noacl" => p.noacl = true,
                _ => p.ino32 = true,
            }
        }
        // user_id= and group_id= are what the mount table shows for every FUSE mount, so
        // mount(8) passes them back on a remount; the kernel takes ours from the daemon.
        "max_idle_threads" | "max_read" | "max_write" | "blksize" | "user_id" | "group_id" => {
            number_u32(name, required(name, value, false)?)?;
            ignore = true;
        }
        "uidmapping" => p.uidmapping = id_mapping(name, required(name, value, false)?)?,
        "gidmapping" => p.gidmapping = id_mapping(name, required(name, value, false)?)?,
        _ => return Err(format!("unknown mount option \"{raw}\"")),
    }
    if ignore {
        p.ignored.push(raw.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[&str]) -> Result<Params, String> {
        let v: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        parse_options(&v)
    }

    fn ok(opts: &[&str]) -> Params {
        parse(opts).unwrap_or_else(|e| panic!("{opts:?} should parse, got: {e}"))
    }

    fn err(opts: &[&str]) -> String {
        match parse(opts) {
            Ok(p) => panic!("{opts:?} should fail, got {p:?}"),
            Err(e) => e,
        }
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    fn err_contains(opts: &[&str], needles: &[&str]) {
        let e = err(opts);
        for n in needles {
            assert!(
                e.contains(n),
                "error {e:?} for {opts:?} should contain {n:?}"
            );
        }
    }

    // ---- basic shapes ----

    #[test]
    fn single_lower_readonly() {
        let p = ok(&["lowerdir=/l"]);
        assert_eq!(p.lowerdirs, paths(&["/l"]));
        assert!(!p.has_upper());
        assert_eq!(p.upperdir, None);
        assert_eq!(p.workdir, None);
        assert!(p.fsync);
        assert!(!p.read_only);
        assert!(p.kernel_flags.is_empty());
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn full_overlay() {
        let p = ok(&["lowerdir=/l1:/l2,upperdir=/u,workdir=/w"]);
        assert_eq!(p.lowerdirs, paths(&["/l1", "/l2"]));
        assert_eq!(p.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(p.workdir, Some(PathBuf::from("/w")));
        assert!(p.has_upper());
    }

    #[test]
    fn lower_order_is_kept_leftmost_first() {
        let p = ok(&["lowerdir=/top:/mid:/bottom"]);
        assert_eq!(p.lowerdirs, paths(&["/top", "/mid", "/bottom"]));
    }

    #[test]
    fn relative_paths_stay_relative() {
        let p = ok(&["lowerdir=a/b:../c:.,upperdir=up,workdir=./wk"]);
        assert_eq!(p.lowerdirs, paths(&["a/b", "../c", "."]));
        assert_eq!(p.upperdir, Some(PathBuf::from("up")));
        assert_eq!(p.workdir, Some(PathBuf::from("./wk")));
    }

    #[test]
    fn paths_kept_exactly_as_written() {
        let p = ok(&["lowerdir=/a//b/:/c/./d/../e,upperdir=/u/,workdir=/w//"]);
        assert_eq!(p.lowerdirs, paths(&["/a//b/", "/c/./d/../e"]));
        assert_eq!(p.upperdir, Some(PathBuf::from("/u/")));
        assert_eq!(p.workdir, Some(PathBuf::from("/w//")));
    }

    #[test]
    fn options_in_any_order() {
        let p = ok(&["workdir=/w,upperdir=/u,lowerdir=/l"]);
        assert_eq!(p.lowerdirs, paths(&["/l"]));
        assert!(p.has_upper());
    }

    #[test]
    fn multiple_option_strings_accumulate() {
        let p = ok(&[
            "lowerdir=/l",
            "upperdir=/u",
            "workdir=/w,allow_other",
            "fsname=x",
        ]);
        assert_eq!(p.lowerdirs, paths(&["/l"]));
        assert!(p.has_upper());
        assert!(p.allow_other);
        assert_eq!(p.fsname.as_deref(), Some("x"));
    }

    #[test]
    fn later_option_string_overrides_earlier() {
        let p = ok(&[
            "lowerdir=/a,upperdir=/u1,workdir=/w1",
            "upperdir=/u2,workdir=/w2",
        ]);
        assert_eq!(p.upperdir, Some(PathBuf::from("/u2")));
        assert_eq!(p.workdir, Some(PathBuf::from("/w2")));
    }

    #[test]
    fn empty_options_are_skipped() {
        let p = ok(&[",,lowerdir=/l,,", "", ",", "allow_root,"]);
        assert_eq!(p.lowerdirs, paths(&["/l"]));
        assert!(p.allow_root);
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn no_options_at_all() {
        assert_eq!(err(&[]), "lowerdir= is required");
        assert_eq!(err(&[""]), "lowerdir= is required");
    }

    #[test]
    fn lowerdir_required() {
        assert_eq!(err(&["upperdir=/u,workdir=/w"]), "lowerdir= is required");
        assert_eq!(err(&["allow_other"]), "lowerdir= is required");
    }

    // ---- escapes ----

    #[test]
    fn escaped_comma_in_path() {
        let p = ok(&[r"lowerdir=/a\,b,upperdir=/u\,1,workdir=/w"]);
        assert_eq!(p.lowerdirs, paths(&["/a,b"]));
        assert_eq!(p.upperdir, Some(PathBuf::from("/u,1")));
    }

    #[test]
    fn escaped_colon_in_lowerdir() {
        let p = ok(&[r"lowerdir=/a\:b:/c"]);
        assert_eq!(p.lowerdirs, paths(&["/a:b", "/c"]));
    }

    #[test]
    fn escaped_colon_in_upperdir() {
        let p = ok(&[r"lowerdir=/l,upperdir=/u\:x,workdir=/w:y"]);
        assert_eq!(p.upperdir, Some(PathBuf::from("/u:x")));
        // A bare colon is not special outside lowerdir.
        assert_eq!(p.workdir, Some(PathBuf::from("/w:y")));
    }

    #[test]
    fn escaped_backslash() {
        let p = ok(&[r"lowerdir=/a\\:/b\\\:c"]);
        // "\\" is one backslash and then ':' separates; "\\\:" is "\" + ":".
        assert_eq!(p.lowerdirs, paths(&[r"/a\", r"/b\:c"]));
    }

    #[test]
    fn escaped_equals_and_other_chars() {
        let p = ok(&[r"lowerdir=/a\=b:/c\d"]);
        assert_eq!(p.lowerdirs, paths(&["/a=b", "/cd"]));
    }

    #[test]
    fn equals_in_value_is_literal() {
        let p = ok(&["lowerdir=/a=b:/c==d,fsname=x=y"]);
        assert_eq!(p.lowerdirs, paths(&["/a=b", "/c==d"]));
        assert_eq!(p.fsname.as_deref(), Some("x=y"));
    }

    #[test]
    fn trailing_backslash_is_an_error() {
        err_contains(&[r"lowerdir=/a\"], &["trailing backslash", "lowerdir"]);
    }

    #[test]
    fn unicode_paths() {
        let p = ok(&["lowerdir=/données:/日本\\,語,upperdir=/ü,workdir=/w"]);
        assert_eq!(p.lowerdirs, paths(&["/données", "/日本,語"]));
        assert_eq!(p.upperdir, Some(PathBuf::from("/ü")));
    }

    #[test]
    fn escape_path_roundtrip() {
        let tricky = [
            "/plain",
            "/with,comma",
            "/with:colon",
            r"/with\backslash",
            "/with\"quote",
            "\"/leading-quote",
            r"/all\,:\:,,::",
            "rel/path",
            "/sp ace",
        ];
        let joined: Vec<String> = tricky.iter().map(|t| escape_path(Path::new(t))).collect();
        let opt = format!(
            "lowerdir={},upperdir={},workdir={}",
            joined.join(":"),
            escape_path(Path::new("/u,p:p")),
            escape_path(Path::new("\"w\""))
        );
        let p = ok(&[&opt]);
        assert_eq!(p.lowerdirs, paths(&tricky));
        assert_eq!(p.upperdir, Some(PathBuf::from("/u,p:p")));
        assert_eq!(p.workdir, Some(PathBuf::from("\"w\"")));
    }

    #[test]
    fn escape_path_output() {
        assert_eq!(escape_path(Path::new("/a,b:c\\d")), r"/a\,b\:c\\d");
        assert_eq!(escape_path(Path::new("/plain/path")), "/plain/path");
        assert_eq!(escape_path(Path::new("")), "");
        assert_eq!(escape_path(Path::new("\"q")), "\\\"q");
    }

    #[test]
    fn lowerdir_plus_roundtrip_with_escapes() {
        let opt = format!("lowerdir+={}", escape_path(Path::new("/a,b:c")));
        let p = ok(&[&opt]);
        assert_eq!(p.lowerdirs, paths(&["/a,b:c"]));
    }

    // ---- quoting ----

    #[test]
    fn quoted_context_with_commas_is_one_option() {
        let raw = r#"context="system_u:object_r:container_file_t:s0:c1,c2""#;
        let p = ok(&[&format!("lowerdir=/l,{raw},upperdir=/u,workdir=/w")]);
        assert_eq!(p.ignored, vec![raw.to_string()]);
        assert!(p.has_upper());
    }

    #[test]
    fn quoted_context_last_and_first() {
        let raw = r#"context="a:b:c:s0:c1,c2,c3""#;
        assert_eq!(
            ok(&[&format!("{raw},lowerdir=/l")]).ignored,
            vec![raw.to_string()]
        );
        assert_eq!(
            ok(&[&format!("lowerdir=/l,{raw}")]).ignored,
            vec![raw.to_string()]
        );
    }

    #[test]
    fn all_context_variants() {
        let p = ok(&[
            "lowerdir=/l",
            r#"fscontext="a,b",defcontext=x:y,rootcontext="r""#,
        ]);
        assert_eq!(
            p.ignored,
            vec![r#"fscontext="a,b""#, "defcontext=x:y", r#"rootcontext="r""#]
        );
    }

    #[test]
    fn quoted_path_may_contain_commas() {
        let p = ok(&[r#"lowerdir="/a,b:/c",upperdir="/u,v",workdir="/w""#]);
        assert_eq!(p.lowerdirs, paths(&["/a,b", "/c"]));
        assert_eq!(p.upperdir, Some(PathBuf::from("/u,v")));
        assert_eq!(p.workdir, Some(PathBuf::from("/w")));
    }

    #[test]
    fn quoted_value_keeps_escapes() {
        let p = ok(&[r#"lowerdir="/a\:b:/c\"d""#]);
        assert_eq!(p.lowerdirs, paths(&["/a:b", "/c\"d"]));
    }

    #[test]
    fn quote_inside_value_is_literal() {
        let p = ok(&[r#"lowerdir=/it"s:/b,fsname=a"b"#]);
        assert_eq!(p.lowerdirs, paths(&["/it\"s", "/b"]));
        assert_eq!(p.fsname.as_deref(), Some("a\"b"));
    }

    #[test]
    fn unterminated_quote() {
        err_contains(
            &[r#"lowerdir=/l,context="a,b"#],
            &["unterminated quote", "context"],
        );
    }

    #[test]
    fn text_after_closing_quote() {
        err_contains(
            &[r#"lowerdir=/l,context="a"b,debug"#],
            &["after closing quote", "context"],
        );
    }

    #[test]
    fn empty_quoted_value() {
        err_contains(&[r#"lowerdir="""#], &["lowerdir: empty layer path"]);
        err_contains(
            &[r#"lowerdir=/l,upperdir="",workdir=/w"#],
            &["upperdir: empty path"],
        );
        err_contains(
            &[r#"lowerdir=/l,context="""#],
            &["\"context\" requires a value"],
        );
    }

    // ---- lowerdir rules ----

    #[test]
    fn empty_lowerdir() {
        err_contains(&["lowerdir="], &["lowerdir: empty layer path"]);
    }

    #[test]
    fn lowerdir_without_value() {
        assert_eq!(
            err(&["lowerdir"]),
            "mount option \"lowerdir\" requires a value"
        );
    }

    #[test]
    fn double_colon_names_data_only_layers() {
        err_contains(
            &["lowerdir=/a::/b"],
            &["\"::\"", "data-only lower layers", "not support"],
        );
        err_contains(&["lowerdir=/a:/b::/c::/d"], &["data-only lower layers"]);
        // Escaped colons are part of a name.
        let p = ok(&[r"lowerdir=/a\:\:b"]);
        assert_eq!(p.lowerdirs, vec![PathBuf::from("/a::b")]);
    }

    #[test]
    fn leading_and_trailing_colon() {
        err_contains(
            &["lowerdir=:/a"],
            &["lowerdir: empty layer path", "layer 1"],
        );
        err_contains(
            &["lowerdir=/a:"],
            &["lowerdir: empty layer path", "layer 2"],
        );
        err_contains(&["lowerdir=:"], &["lowerdir: empty layer path"]);
    }

    #[test]
    fn repeated_lowerdir_last_wins() {
        let p = ok(&["lowerdir=/a:/b,lowerdir=/c"]);
        assert_eq!(p.lowerdirs, paths(&["/c"]));
        let p = ok(&["lowerdir=/a", "lowerdir=/x:/y"]);
        assert_eq!(p.lowerdirs, paths(&["/x", "/y"]));
    }

    #[test]
    fn lowerdir_plus_appends() {
        let p = ok(&["lowerdir+=/a,lowerdir+=/b", "lowerdir+=/c"]);
        assert_eq!(p.lowerdirs, paths(&["/a", "/b", "/c"]));
    }

    #[test]
    fn lowerdir_plus_keeps_colons() {
        let p = ok(&["lowerdir+=/a:b"]);
        assert_eq!(p.lowerdirs, paths(&["/a:b"]));
    }

    #[test]
    fn lowerdir_plus_empty() {
        err_contains(&["lowerdir+="], &["lowerdir+: empty layer path"]);
        err_contains(&["lowerdir+"], &["\"lowerdir+\" requires a value"]);
    }

    #[test]
    fn lowerdir_forms_do_not_mix() {
        err_contains(&["lowerdir=/a,lowerdir+=/b"], &["lowerdir+=", "lowerdir="]);
        err_contains(
            &["lowerdir+=/a", "lowerdir=/b"],
            &["lowerdir=", "lowerdir+="],
        );
    }

    #[test]
    fn datadir_plus_rejected() {
        err_contains(
            &["lowerdir+=/a,datadir+=/d"],
            &["data-only layers are not supported"],
        );
    }

    #[test]
    fn five_hundred_layers_parse() {
        let layers: Vec<String> = (0..500).map(|i| format!("/layers/l{i}")).collect();
        let p = ok(&[&format!(
            "lowerdir={},upperdir=/u,workdir=/w",
            layers.join(":")
        )]);
        assert_eq!(p.lowerdirs.len(), 500);
        assert_eq!(p.lowerdirs[0], PathBuf::from("/layers/l0"));
        assert_eq!(p.lowerdirs[499], PathBuf::from("/layers/l499"));
    }

    #[test]
    fn five_hundred_escaped_layers_parse() {
        let layers: Vec<String> = (0..500)
            .map(|i| escape_path(Path::new(&format!("/l,{i}:x"))))
            .collect();
        let p = ok(&[&format!("lowerdir={}", layers.join(":"))]);
        assert_eq!(p.lowerdirs.len(), 500);
        assert_eq!(p.lowerdirs[123], PathBuf::from("/l,123:x"));
    }

    #[test]
    fn five_hundred_one_layers_rejected() {
        let layers: Vec<String> = (0..501).map(|i| format!("/l{i}")).collect();
        err_contains(
            &[&format!("lowerdir={}", layers.join(":"))],
            &["too many lower layers", "501", "500"],
        );
    }

    #[test]
    fn five_hundred_one_appended_layers_rejected() {
        let opts: Vec<String> = (0..501).map(|i| format!("lowerdir+=/l{i}")).collect();
        let e = parse_options(&opts).unwrap_err();
        assert!(e.contains("too many lower layers"), "{e}");
        let p = parse_options(&opts[..500]).unwrap();
        assert_eq!(p.lowerdirs.len(), 500);
    }

    // ---- upper/work ----

    #[test]
    fn upper_without_work() {
        err_contains(&["lowerdir=/l,upperdir=/u"], &["upperdir=", "workdir="]);
    }

    #[test]
    fn work_without_upper() {
        err_contains(&["lowerdir=/l,workdir=/w"], &["upperdir=", "workdir="]);
    }

    #[test]
    fn empty_upper_or_work() {
        assert_eq!(
            err(&["lowerdir=/l,upperdir=,workdir=/w"]),
            "upperdir: empty path"
        );
        assert_eq!(
            err(&["lowerdir=/l,upperdir=/u,workdir="]),
            "workdir: empty path"
        );
    }

    #[test]
    fn upper_or_work_without_value() {
        assert_eq!(
            err(&["lowerdir=/l,upperdir,workdir=/w"]),
            "mount option \"upperdir\" requires a value"
        );
        assert_eq!(
            err(&["lowerdir=/l,upperdir=/u,workdir"]),
            "mount option \"workdir\" requires a value"
        );
    }

    #[test]
    fn repeated_upper_last_wins() {
        let p = ok(&["lowerdir=/l,upperdir=/u1,workdir=/w,upperdir=/u2"]);
        assert_eq!(p.upperdir, Some(PathBuf::from("/u2")));
    }

    // ---- flags with effect ----

    #[test]
    fn fuse_flags() {
        let p =
            ok(&["lowerdir=/l,allow_other,default_permissions,debug,fsname=ovl,subtype=ovlfuse"]);
        assert!(p.allow_other);
        assert!(!p.allow_root);
        assert!(p.default_permissions);
        assert!(p.debug);
        assert_eq!(p.fsname.as_deref(), Some("ovl"));
        assert_eq!(p.subtype.as_deref(), Some("ovlfuse"));
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn fsname_may_contain_escaped_comma() {
        let p = ok(&[r"lowerdir=/l,fsname=a\,b:c"]);
        assert_eq!(p.fsname.as_deref(), Some("a,b:c"));
    }

    #[test]
    fn fsname_and_subtype_need_values() {
        assert_eq!(
            err(&["lowerdir=/l,fsname"]),
            "mount option \"fsname\" requires a value"
        );
        assert_eq!(
            err(&["lowerdir=/l,fsname="]),
            "mount option \"fsname\" requires a value"
        );
        assert_eq!(
            err(&["lowerdir=/l,subtype="]),
            "mount option \"subtype\" requires a value"
        );
    }

    #[test]
    fn allow_other_and_allow_root_exclusive() {
        err_contains(
            &["lowerdir=/l,allow_other,allow_root"],
            &["allow_other", "allow_root"],
        );
    }

    #[test]
    fn flags_reject_values() {
        for f in [
            "allow_other",
            "allow_root",
            "default_permissions",
            "debug",
            "volatile",
            "ro",
            "rw",
        ] {
            assert_eq!(
                err(&[&format!("lowerdir=/l,{f}=1")]),
                format!("mount option \"{f}\" takes no value")
            );
        }
        err_contains(&["lowerdir=/l,nodev=1"], &["\"nodev\" takes no value"]);
        err_contains(&["lowerdir=/l,noacl=yes"], &["\"noacl\" takes no value"]);
    }

    #[test]
    fn fsync_values() {
        assert!(ok(&["lowerdir=/l"]).fsync);
        assert!(!ok(&["lowerdir=/l,fsync=0"]).fsync);
        assert!(ok(&["lowerdir=/l,fsync=0,fsync=1"]).fsync);
        err_contains(&["lowerdir=/l,fsync=2"], &["fsync", "\"2\""]);
        err_contains(&["lowerdir=/l,fsync=yes"], &["fsync"]);
        assert_eq!(
            err(&["lowerdir=/l,fsync"]),
            "mount option \"fsync\" requires a value"
        );
    }

    #[test]
    fn volatile_disables_fsync_in_any_order() {
        let p = ok(&["lowerdir=/l,volatile"]);
        assert!(p.volatile);
        assert!(!p.fsync);
        let p = ok(&["lowerdir=/l,volatile,fsync=1"]);
        assert!(p.volatile);
        assert!(!p.fsync);
        let p = ok(&["fsync=1,lowerdir=/l", "volatile"]);
        assert!(!p.fsync);
    }

    #[test]
    fn ro_and_rw() {
        assert!(ok(&["lowerdir=/l,ro"]).read_only);
        assert!(!ok(&["lowerdir=/l,rw"]).read_only);
        assert!(!ok(&["lowerdir=/l,ro,rw"]).read_only);
        assert!(ok(&["rw,lowerdir=/l", "ro"]).read_only);
        let p = ok(&["lowerdir=/l,ro,upperdir=/u,workdir=/w"]);
        assert!(p.read_only && p.has_upper());
        assert!(p.ignored.is_empty() && p.kernel_flags.is_empty());
    }

    // ---- kernel flags ----

    #[test]
    fn kernel_flags_kept_in_order() {
        let p = ok(&[
            "nosuid,lowerdir=/l,nodev",
            "noexec,sync,dirsync,noatime,async,atime,dev,suid,exec",
        ]);
        assert_eq!(
            p.kernel_flags,
            vec![
                "nosuid", "nodev", "noexec", "sync", "dirsync", "noatime", "async", "atime", "dev",
                "suid", "exec"
            ]
        );
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn atime_options_set_the_policy_and_the_last_one_wins() {
        let p = ok(&["lowerdir=/l,relatime,strictatime,nodiratime,lazytime,noatime"]);
        assert_eq!(p.kernel_flags, vec!["noatime"]);
        assert_eq!(p.ignored, vec!["lazytime"]);
        assert_eq!(p.atime, Atime::Never);
        assert!(p.nodiratime);
        let p = ok(&["lowerdir=/l,noatime,strictatime"]);
        assert_eq!(p.atime, Atime::Strict);
        let p = ok(&["lowerdir=/l,noatime,atime,nodiratime,diratime"]);
        assert_eq!(p.atime, Atime::Relative);
        assert!(!p.nodiratime);
        assert_eq!(ok(&["lowerdir=/l"]).atime, Atime::Relative);
    }

    #[test]
    fn mount_fuse3_style() {
        let p = ok(&["rw,lowerdir=/a:/b,upperdir=/u,workdir=/w,dev,suid"]);
        assert_eq!(p.lowerdirs, paths(&["/a", "/b"]));
        assert!(p.has_upper());
        assert!(!p.read_only);
        assert_eq!(p.kernel_flags, vec!["dev", "suid"]);
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn fstab_style() {
        let p = ok(&[
            "defaults,noauto,x-systemd.automount,x-systemd.requires=/mnt,_netdev,nofail,user,users,nouser,lowerdir=/l,comment=systemd.foo",
        ]);
        assert_eq!(
            p.ignored,
            vec![
                "defaults",
                "noauto",
                "x-systemd.automount",
                "x-systemd.requires=/mnt",
                "_netdev",
                "nofail",
                "user",
                "users",
                "nouser",
                "comment=systemd.foo"
            ]
        );
    }

    #[test]
    fn user_with_name_from_mount8() {
        let p = ok(&["lowerdir=/l,user=alice"]);
        assert_eq!(p.ignored, vec!["user=alice"]);
    }

    // ---- ignored options ----

    #[test]
    fn ignored_flags_all_accepted() {
        for f in IGNORED_FLAGS {
            let p = ok(&[&format!("lowerdir=/l,{f}")]);
            assert_eq!(p.ignored, vec![f.to_string()], "{f}");
        }
        let p = ok(&["lowerdir=/l,auto,loop,private,shared,slave,rprivate,rshared,rslave"]);
        assert_eq!(p.ignored.len(), 8);
    }

    #[test]
    fn fuse_overlayfs_options_accepted() {
        let opts = [
            "uidmapping=0:1000:1:1:100000:65536",
            "gidmapping=0:1000:1",
            "squash_to_root",
            "squash_to_uid=1000",
            "squash_to_gid=0",
            "static_nlink",
            "noacl",
            "ino32_t",
            "timeout=1000000",
            "timeout=0.5",
            "threaded=1",
            "fast_ino=0",
            "writeback=1",
            "noxattrs=0",
            "xattr_permissions=2",
            "plugins=",
            "plugins=/usr/lib/p.so",
        ];
        let p = ok(&[&format!("lowerdir=/l,{}", opts.join(","))]);
        assert_eq!(
            p.ignored,
            ["fast_ino=0", "plugins=", "plugins=/usr/lib/p.so"]
        );
        assert!(p.writeback && p.passthrough);
        assert_eq!(p.uidmapping.len(), 2);
        assert_eq!(p.gidmapping[0].shown, 1000);
        assert!(p.squash_to_root && p.static_nlink && p.noacl && p.ino32);
        assert_eq!((p.squash_to_uid, p.squash_to_gid), (Some(1000), Some(0)));
        assert_eq!(p.timeout, Some(std::time::Duration::from_millis(500)));
        assert!(!p.single_threaded && !p.noxattrs);
        assert_eq!(p.xattr_permissions, 2);
        let p = ok(&["lowerdir=/l,threaded=0,noxattrs=1,timeout=1e300,,volatile"]);
        assert!(p.single_threaded && p.noxattrs && !p.fsync);
        assert_eq!(p.timeout, Some(std::time::Duration::MAX));
    }

    #[test]
    fn kernel_overlay_options_accepted() {
        let opts = [
            "index=off",
            "metacopy=off",
            "nfs_export=off",
            "xino=on",
            "xino=off",
            "xino=auto",
        ];
        let p = ok(&[&format!("lowerdir=/l,{}", opts.join(","))]);
        assert_eq!(p.ignored, opts.to_vec());
        assert_eq!(p.uuid, Uuid::Auto);
        for (o, want) in [
            ("uuid=on", Uuid::On),
            ("uuid=off", Uuid::Null),
            ("uuid=null", Uuid::Null),
            ("uuid=auto", Uuid::Auto),
        ] {
            let p = ok(&[&format!("lowerdir=/l,{o}")]);
            assert_eq!((p.uuid, p.ignored.is_empty()), (want, true), "{o}");
        }
    }

    #[test]
    fn userxattr_asks_for_user_overlay_xattrs() {
        assert!(!ok(&["lowerdir=/l"]).userxattr);
        let p = ok(&["lowerdir=/l,userxattr"]);
        assert!(p.userxattr);
        assert!(p.ignored.is_empty());
        err_contains(&["lowerdir=/l,userxattr=1"], &["userxattr"]);
    }

    #[test]
    fn libfuse_options_accepted() {
        let opts = [
            "max_idle_threads=10",
            "clone_fd",
            "splice_read",
            "splice_write",
            "splice_move",
            "big_writes",
            "kernel_cache",
            "auto_cache",
            "direct_io",
            "max_read=131072",
            "hard_remove",
            "use_ino",
            "nonempty",
            "blksize=4096",
            "max_write=1048576",
            "user_id=0",
            "group_id=0",
        ];
        let p = ok(&[&format!("lowerdir=/l,{}", opts.join(","))]);
        assert_eq!(p.ignored, opts.to_vec());
    }

    #[test]
    fn ignored_keep_raw_text() {
        let p = ok(&[r#"lowerdir=/l,x-a=\,b,context="q,r""#]);
        assert_eq!(p.ignored, vec![r"x-a=\,b", r#"context="q,r""#]);
    }

    #[test]
    fn remount_needs_no_layers() {
        let p = ok(&["remount,ro"]);
        assert!(p.remount && p.read_only);
        assert!(ok(&["rw,lowerdir=/l,remount,nodev"]).remount);
    }

    #[test]
    fn redirect_dir_values() {
        assert!(ok(&["lowerdir=/l"]).redirect_dir, "on by default");
        assert!(ok(&["lowerdir=/l,redirect_dir=on"]).redirect_dir);
        for v in ["off", "follow", "nofollow"] {
            assert!(!ok(&[&format!("lowerdir=/l,redirect_dir={v}")]).redirect_dir);
        }
        assert!(!ok(&["lowerdir=/l,redirect_dir=on,redirect_dir=off"]).redirect_dir);
    }

    #[test]
    fn unsupported_features_rejected() {
        for o in ["index=on", "metacopy=on", "nfs_export=on"] {
            let e = err(&[&format!("lowerdir=/l,{o}")]);
            assert!(e.contains("not supported") && e.contains(o), "{o}: {e}");
        }
    }

    #[test]
    fn feature_values_validated() {
        err_contains(
            &["lowerdir=/l,redirect_dir=maybe"],
            &["redirect_dir", "maybe"],
        );
        err_contains(&["lowerdir=/l,index=1"], &["index", "\"1\""]);
        err_contains(&["lowerdir=/l,metacopy=yes"], &["metacopy"]);
        err_contains(&["lowerdir=/l,xino=sometimes"], &["xino"]);
        err_contains(&["lowerdir=/l,uuid=1234"], &["uuid"]);
        err_contains(&["lowerdir=/l,nfs_export=no"], &["nfs_export"]);
        err_contains(&["lowerdir=/l,threaded=2"], &["threaded"]);
        err_contains(&["lowerdir=/l,fast_ino=on"], &["fast_ino"]);
        err_contains(&["lowerdir=/l,writeback=-1"], &["writeback"]);
        err_contains(&["lowerdir=/l,noxattrs=true"], &["noxattrs"]);
        err_contains(&["lowerdir=/l,xattr_permissions=3"], &["xattr_permissions"]);
    }

    #[test]
    fn numeric_values_validated() {
        for name in [
            "squash_to_uid",
            "squash_to_gid",
            "max_idle_threads",
            "max_read",
            "max_write",
            "blksize",
            "user_id",
            "group_id",
        ] {
            for bad in ["abc", "-1", "1.5", "99999999999", "12k"] {
                let e = err(&[&format!("lowerdir=/l,{name}={bad}")]);
                assert!(e.contains(name) && e.contains(bad), "{name}={bad}: {e}");
            }
            assert_eq!(
                err(&[&format!("lowerdir=/l,{name}=")]),
                format!("mount option \"{name}\" requires a value")
            );
            assert_eq!(
                err(&[&format!("lowerdir=/l,{name}")]),
                format!("mount option \"{name}\" requires a value")
            );
        }
    }

    #[test]
    fn timeout_validated() {
        ok(&["lowerdir=/l,timeout=0"]);
        ok(&["lowerdir=/l,timeout=2.5"]);
        for bad in ["-1", "abc", "inf", "NaN", "1s"] {
            err_contains(&[&format!("lowerdir=/l,timeout={bad}")], &["timeout", bad]);
        }
    }

    #[test]
    fn id_mappings_validated() {
        ok(&["lowerdir=/l,uidmapping=0:1000:1"]);
        ok(&["lowerdir=/l,gidmapping=0:1000:1:1:100000:65536"]);
        for bad in [
            "0:1000",
            "0:1000:1:1",
            "a:b:c",
            "0:1000:",
            "0::1",
            "0,1000,1",
        ] {
            err_contains(&[&format!("lowerdir=/l,uidmapping={bad}")], &["uidmapping"]);
            err_contains(&[&format!("lowerdir=/l,gidmapping={bad}")], &["gidmapping"]);
        }
        assert_eq!(
            err(&["lowerdir=/l,uidmapping"]),
            "mount option \"uidmapping\" requires a value"
        );
    }

    #[test]
    fn uring_idle_values() {
        use crate::uring_priority::Policy;
        assert_eq!(ok(&["lowerdir=/l"]).uring_priority, Policy::Adaptive);
        for (v, want) in [
            ("auto", Policy::Adaptive),
            ("1", Policy::Idle),
            ("0", Policy::Normal),
        ] {
            let p = ok(&[&format!("lowerdir=/l,uring_idle={v}")]);
            assert_eq!(p.uring_priority, want, "{v}");
        }
        assert!(err(&["lowerdir=/l,uring_idle=yes"]).contains("uring_idle"));
    }

    #[test]
    fn follow_caller_values() {
        assert!(ok(&["lowerdir=/l"]).follow_caller);
        assert!(ok(&["lowerdir=/l,follow_caller=1"]).follow_caller);
        assert!(!ok(&["lowerdir=/l,follow_caller=0"]).follow_caller);
        assert!(err(&["lowerdir=/l,follow_caller=yes"]).contains("follow_caller"));
    }

    #[test]
    fn statahead_values() {
        use crate::ovl::statahead::Mode;
        assert_eq!(ok(&["lowerdir=/l"]).statahead, None);
        for (v, want) in [
            ("auto", Mode::Auto),
            ("on", Mode::Always),
            ("off", Mode::Off),
        ] {
            let p = ok(&[&format!("lowerdir=/l,statahead={v}")]);
            assert_eq!(p.statahead, Some(want), "{v}");
        }
        assert!(err(&["lowerdir=/l,statahead=1"]).contains("statahead"));
    }

    #[test]
    fn listattrs_values() {
        use crate::ovl::statahead::ListAttrs;
        assert_eq!(ok(&["lowerdir=/l"]).listattrs, ListAttrs::Auto);
        for (v, want) in [
            ("auto", ListAttrs::Auto),
            ("on", ListAttrs::On),
            ("off", ListAttrs::Off),
        ] {
            let p = ok(&[&format!("lowerdir=/l,listattrs={v}")]);
            assert_eq!(p.listattrs, want, "{v}");
        }
        assert!(err(&["lowerdir=/l,listattrs=1"]).contains("listattrs"));
    }

    #[test]
    fn data_path_values() {
        let p = ok(&["lowerdir=/l"]);
        assert!(p.passthrough && p.writeback);
        let p = ok(&["lowerdir=/l,passthrough=off,writeback=0"]);
        assert!(!p.passthrough && !p.writeback);
        let p = ok(&["lowerdir=/l,passthrough=auto,writeback=1"]);
        assert!(p.passthrough && p.writeback);
        assert!(err(&["lowerdir=/l,passthrough=on"]).contains("passthrough"));
        assert!(err(&["lowerdir=/l,writeback=yes"]).contains("writeback"));
        assert!(!ok(&["lowerdir=/l"]).btime);
        assert!(ok(&["lowerdir=/l,btime=1"]).btime);
        assert!(!ok(&["lowerdir=/l,btime=1,btime=0"]).btime);
        assert!(err(&["lowerdir=/l,btime=on"]).contains("btime"));
    }

    #[test]
    fn valued_options_need_values() {
        for name in [
            "context",
            "fscontext",
            "defcontext",
            "rootcontext",
            "redirect_dir",
            "index",
            "metacopy",
            "xino",
            "nfs_export",
            "uuid",
            "timeout",
            "threaded",
            "uring",
            "uring_idle",
            "follow_caller",
            "statahead",
            "listattrs",
            "passthrough",
            "fast_ino",
            "writeback",
            "btime",
            "noxattrs",
            "xattr_permissions",
            "gidmapping",
            "comment",
            "plugins",
        ] {
            assert_eq!(
                err(&[&format!("lowerdir=/l,{name}")]),
                format!("mount option \"{name}\" requires a value"),
                "{name}"
            );
        }
    }

    #[test]
    fn x_options_with_or_without_value() {
        let p = ok(&["lowerdir=/l,x-systemd.automount,x-gvfs-show,x-mount.mkdir=0755"]);
        assert_eq!(
            p.ignored,
            vec!["x-systemd.automount", "x-gvfs-show", "x-mount.mkdir=0755"]
        );
    }

    // ---- unknown options ----

    #[test]
    fn unknown_option_named_exactly() {
        assert_eq!(
            err(&["lowerdri=/a"]),
            "unknown mount option \"lowerdri=/a\""
        );
        assert_eq!(
            err(&["lowerdir=/l,uperdir=/u"]),
            "unknown mount option \"uperdir=/u\""
        );
        assert_eq!(
            err(&["lowerdir=/l,allow-other"]),
            "unknown mount option \"allow-other\""
        );
        assert_eq!(err(&["lowerdir=/l", "foo"]), "unknown mount option \"foo\"");
    }

    #[test]
    fn unknown_option_reported_even_when_lowerdir_missing() {
        assert_eq!(
            err(&["lowerdri=/a"]),
            "unknown mount option \"lowerdri=/a\""
        );
    }

    #[test]
    fn option_names_are_case_sensitive() {
        err_contains(&["LOWERDIR=/l"], &["unknown mount option", "LOWERDIR"]);
        err_contains(&["lowerdir=/l,RO"], &["unknown mount option", "RO"]);
    }

    #[test]
    fn options_are_not_trimmed() {
        err_contains(&["lowerdir=/l, ro"], &["unknown mount option \" ro\""]);
        let p = ok(&["lowerdir= /l "]);
        assert_eq!(p.lowerdirs, paths(&[" /l "]));
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(err(&["bogus,lowerdir="]), "unknown mount option \"bogus\"");
    }

    #[test]
    fn errors_are_lowercase_and_short() {
        let cases: &[&[&str]] = &[
            &["lowerdri=/a"],
            &["lowerdir="],
            &["lowerdir=/l,upperdir=/u"],
            &["upperdir=/u,workdir=/w"],
            &["lowerdir=/l,fsync=9"],
            &["datadir+=/d"],
            &["lowerdir=/l,index=on"],
        ];
        for c in cases {
            let e = err(c);
            let first = e.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{e}");
            assert!(!e.ends_with('.') && !e.contains('\n'), "{e}");
            assert!(e.len() < 200, "{e}");
        }
    }

    // ---- tokenizer internals ----

    #[test]
    fn split_options_keeps_raw() {
        assert_eq!(split_options(r"a,b\,c,d").unwrap(), vec!["a", r"b\,c", "d"]);
        assert_eq!(split_options("").unwrap(), vec![""]);
        assert_eq!(split_options(",").unwrap(), vec!["", ""]);
        assert_eq!(
            split_options(r#"k="x,y",z"#).unwrap(),
            vec![r#"k="x,y""#, "z"]
        );
        // Quotes open only at the start of a value.
        assert_eq!(split_options(r#"k=a"b,c"#).unwrap(), vec![r#"k=a"b"#, "c"]);
        assert_eq!(split_options(r#""k,v""#).unwrap(), vec![r#""k"#, r#"v""#]);
    }

    #[test]
    fn split_unescaped_basic() {
        assert_eq!(
            split_unescaped(r"a:b\:c:\\:d", ':'),
            vec!["a", r"b\:c", r"\\", "d"]
        );
        assert_eq!(split_unescaped("", ':'), vec![""]);
        assert_eq!(split_unescaped("::", ':'), vec!["", "", ""]);
    }

    #[test]
    fn default_params() {
        let p = Params::default();
        assert!(p.fsync && !p.volatile && !p.has_upper() && p.lowerdirs.is_empty());
    }
}
