//! Pure: a failed call's return value, told by what the function returns, and its name.

use crate::runtime::btf::RetKind;

/// Names of errno values 0..=133 (include/uapi/asm-generic/errno*.h); "" where unused.
const NAMES: [&str; 134] = [
    "",
    "EPERM",
    "ENOENT",
    "ESRCH",
    "EINTR",
    "EIO",
    "ENXIO",
    "E2BIG",
    "ENOEXEC",
    "EBADF",
    "ECHILD",
    "EAGAIN",
    "ENOMEM",
    "EACCES",
    "EFAULT",
    "ENOTBLK",
    "EBUSY",
    "EEXIST",
    "EXDEV",
    "ENODEV",
    "ENOTDIR",
    "EISDIR",
    "EINVAL",
    "ENFILE",
    "EMFILE",
    "ENOTTY",
    "ETXTBSY",
    "EFBIG",
    "ENOSPC",
    "ESPIPE",
    "EROFS",
    "EMLINK",
    "EPIPE",
    "EDOM",
    "ERANGE",
    "EDEADLK",
    "ENAMETOOLONG",
    "ENOLCK",
    "ENOSYS",
    "ENOTEMPTY",
    "ELOOP",
    "",
    "ENOMSG",
    "EIDRM",
    "ECHRNG",
    "EL2NSYNC",
    "EL3HLT",
    "EL3RST",
    "ELNRNG",
    "EUNATCH",
    "ENOCSI",
    "EL2HLT",
    "EBADE",
    "EBADR",
    "EXFULL",
    "ENOANO",
    "EBADRQC",
    "EBADSLT",
    "",
    "EBFONT",
    "ENOSTR",
    "ENODATA",
    "ETIME",
    "ENOSR",
    "ENONET",
    "ENOPKG",
    "EREMOTE",
    "ENOLINK",
    "EADV",
    "ESRMNT",
    "ECOMM",
    "EPROTO",
    "EMULTIHOP",
    "EDOTDOT",
    "EBADMSG",
    "EOVERFLOW",
    "ENOTUNIQ",
    "EBADFD",
    "EREMCHG",
    "ELIBACC",
    "ELIBBAD",
    "ELIBSCN",
    "ELIBMAX",
    "ELIBEXEC",
    "EILSEQ",
    "ERESTART",
    "ESTRPIPE",
    "EUSERS",
    "ENOTSOCK",
    "EDESTADDRREQ",
    "EMSGSIZE",
    "EPROTOTYPE",
    "ENOPROTOOPT",
    "EPROTONOSUPPORT",
    "ESOCKTNOSUPPORT",
    "EOPNOTSUPP",
    "EPFNOSUPPORT",
    "EAFNOSUPPORT",
    "EADDRINUSE",
    "EADDRNOTAVAIL",
    "ENETDOWN",
    "ENETUNREACH",
    "ENETRESET",
    "ECONNABORTED",
    "ECONNRESET",
    "ENOBUFS",
    "EISCONN",
    "ENOTCONN",
    "ESHUTDOWN",
    "ETOOMANYREFS",
    "ETIMEDOUT",
    "ECONNREFUSED",
    "EHOSTDOWN",
    "EHOSTUNREACH",
    "EALREADY",
    "EINPROGRESS",
    "ESTALE",
    "EUCLEAN",
    "ENOTNAM",
    "ENAVAIL",
    "EISNAM",
    "EREMOTEIO",
    "EDQUOT",
    "ENOMEDIUM",
    "EMEDIUMTYPE",
    "ECANCELED",
    "ENOKEY",
    "EKEYEXPIRED",
    "EKEYREVOKED",
    "EKEYREJECTED",
    "EOWNERDEAD",
    "ENOTRECOVERABLE",
    "ERFKILL",
    "EHWPOISON",
];

/// The highest errno a kernel function returns (`MAX_ERRNO`): -4095..=-1 are errors.
const MAX_ERRNO: i64 = 4095;

/// A return value as the function returned it: an `int`'s low half sign-extended (the
/// register's upper half is left to chance), anything else as the register held it.
pub fn value(ret: i64, kind: RetKind) -> i64 {
    match kind {
        RetKind::Int32 => i64::from(ret as i32),
        _ => ret,
    }
}

/// The errno a return value carries, if the call failed: a negative int of -4095..=-1
/// (only the register's low half for an `int`), or an `ERR_PTR`. Void and other returns
/// never fail.
pub fn error(ret: i64, kind: RetKind) -> Option<i64> {
    if matches!(kind, RetKind::Void | RetKind::Other) {
        return None;
    }
    let v = value(ret, kind);
    (-MAX_ERRNO..=-1).contains(&v).then_some(-v)
}

/// `-ENOTEMPTY`, or `-4000` for a number without a name.
pub fn name(errno: i64) -> String {
    let known = usize::try_from(errno)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .filter(|n| !n.is_empty())
        .or_else(|| internal(errno));
    match known {
        Some(n) => format!("-{n}"),
        None => format!("-{errno}"),
    }
}

/// The kernel's own codes above the user-visible ones (include/linux/errno.h).
fn internal(errno: i64) -> Option<&'static str> {
    Some(match errno {
        512 => "ERESTARTSYS",
        513 => "ERESTARTNOINTR",
        514 => "ERESTARTNOHAND",
        515 => "ENOIOCTLCMD",
        516 => "ERESTART_RESTARTBLOCK",
        517 => "EPROBE_DEFER",
        518 => "EOPENSTALE",
        519 => "ENOPARAM",
        521 => "EBADHANDLE",
        522 => "ENOTSYNC",
        523 => "EBADCOOKIE",
        524 => "ENOTSUPP",
        525 => "ETOOSMALL",
        526 => "ESERVERFAULT",
        527 => "EBADTYPE",
        528 => "EJUKEBOX",
        529 => "EIOCBQUEUED",
        530 => "ERECALLCONFLICT",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_by_return_kind() {
        // -ENOTEMPTY in eax, the upper half zero: an int function failed.
        assert_eq!(error(0xffff_ffd9, RetKind::Int32), Some(39));
        assert_eq!(error(-39, RetKind::Int64), Some(39));
        assert_eq!(
            error(0xffff_ffd9, RetKind::Int64),
            None,
            "a large positive long"
        );
        assert_eq!(error(-12, RetKind::Ptr), Some(12), "ERR_PTR(-ENOMEM)");
        assert_eq!(error(0xffff_8880_0000_1000_u64 as i64, RetKind::Ptr), None);
        assert_eq!(error(-2, RetKind::Void), None);
        assert_eq!(error(-5000, RetKind::Int64), None, "below -MAX_ERRNO");
        assert_eq!(error(0, RetKind::Int32), None);
    }

    #[test]
    fn names() {
        assert_eq!(name(39), "-ENOTEMPTY");
        assert_eq!(name(2), "-ENOENT");
        assert_eq!(name(524), "-ENOTSUPP");
        assert_eq!(name(4000), "-4000");
    }
}
