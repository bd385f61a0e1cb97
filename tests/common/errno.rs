//! errno helpers: names for error numbers, and results written as "ok" or the errno name.

use super::*;

/// "ENOENT (2)" for 2, and so on.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN/EWOULDBLOCK",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::EDOM => "EDOM",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP/ENOTSUP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::EBADMSG => "EBADMSG",
        libc::EUCLEAN => "EUCLEAN",
        _ => "E?",
    };
    format!("{n} ({e})")
}

/// An io::Error with its errno spelled out.
pub fn describe_err(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{} [{}]", errno_name(n), e),
        None => e.to_string(),
    }
}

/// A comparable, printable outcome of an operation: "ok: VALUE" or "err: ENOENT (2)".
pub fn outcome<T: fmt::Debug>(r: &io::Result<T>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("err: {}", errno_name(n)),
            None => format!("err: {e}"),
        },
    }
}

/// Like [`outcome`] but ignores the success value ("ok" / "err: ENOENT (2)").
pub fn outcome_unit<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("err: {}", errno_name(n)),
            None => format!("err: {e}"),
        },
    }
}

/// Asserts that `r` failed with errno `want`.
#[track_caller]
pub fn expect_errno<T: fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected {}, but it succeeded ({v:?})",
            errno_name(want)
        ),
        Err(e) if e.raw_os_error() == Some(want) => {}
        Err(e) => panic!(
            "{what}: expected {}, got {}",
            errno_name(want),
            describe_err(&e)
        ),
    }
}

/// Unwraps `r`, panicking with the errno name and `what`.
#[track_caller]
pub fn ok<T>(r: io::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: failed with {}", describe_err(&e)),
    }
}

/// Turns a libc return value (-1 = error) into an io::Result.
pub fn cvt<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
