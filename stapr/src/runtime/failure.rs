//! What a failure says to the user, in one line: which resource ran out and how to raise
//! it, that the kernel's verifier refused a program (its log saved to a private file), or
//! the chain of contexts. The verifier is named only when it refused.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::{
        ffi::OsStringExt as _,
        fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use aya::programs::ProgramError;

use super::soft_limit;

/// An error as one line: a resource that ran out, or its chain of contexts, where a
/// verifier refused a program one sentence instead of the log (hundreds of lines), which
/// goes to a file the line names.
pub fn one_line(err: &anyhow::Error) -> String {
    if let Some(line) = exhausted(err) {
        return line;
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) = cause.downcast_ref::<ProgramError>()
        {
            if refused_by_verifier(io_error) {
                let saved = save_private("verifier", &verifier_log.to_string())
                    .map(|path| format!("its log is in {}", path.display()))
                    .unwrap_or_else(|e| format!("its log could not be saved: {e}"));
                parts.push(format!(
                    "the kernel's verifier refused the program ({io_error}; {saved})"
                ));
            } else {
                parts.push(format!("the kernel did not load the program ({io_error})"));
            }
            break;
        }
        let text = cause.to_string();
        parts.push(text.lines().next().unwrap_or_default().to_owned());
    }
    parts.join(": ")
}

/// Why loading or attaching a program failed, in one line: the io error of a load without
/// aya's verifier log, or an attach error with its sources.
pub fn program_error_reason(e: &ProgramError) -> String {
    if let ProgramError::LoadError { io_error, .. } = e {
        return io_error.to_string();
    }
    // Attach errors name a file and carry the io error as their source.
    let mut parts = vec![e.to_string().lines().next().unwrap_or_default().to_owned()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}

/// The errors of BPF_PROG_LOAD that come from the verifier's verdict; the others (no
/// descriptor, no memory, no permission) come before it runs.
fn refused_by_verifier(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EINVAL | libc::E2BIG | libc::ENOSPC)
    )
}

/// The line for an error caused by a resource that ran out (open files, locked memory),
/// naming the limit and how to raise it; None for any other error. Such an error ends the
/// command with exit code 2: no other way of attaching would fare better.
pub fn exhausted(err: &anyhow::Error) -> Option<String> {
    err.chain().find_map(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
            match cause.downcast_ref::<ProgramError>() {
                Some(ProgramError::LoadError { io_error, .. }) => Some(io_error),
                _ => None,
            }
        })?;
        resource_line(
            io.raw_os_error()?,
            soft_limit(libc::RLIMIT_NOFILE),
            soft_limit(libc::RLIMIT_MEMLOCK),
        )
    })
}

/// Pure: the line for `errno` given the open-file and locked-memory limits.
fn resource_line(errno: i32, nofile: Option<u64>, memlock: Option<u64>) -> Option<String> {
    let shown = |l: Option<u64>| l.map_or("unlimited".to_owned(), |n| n.to_string());
    match errno {
        libc::EMFILE => Some(format!(
            "too many open files (limit {}): raise it with `ulimit -n` (LimitNOFILE= in a systemd unit); each attached probe holds one",
            shown(nofile)
        )),
        libc::ENFILE => Some(
            "the system's open-file table is full (fs.file-max): close files or raise fs.file-max"
                .to_owned(),
        ),
        // Kernels before 5.11 charge eBPF maps and programs to the locked-memory limit.
        libc::EPERM | libc::ENOMEM if memlock.is_some() => Some(format!(
            "not enough locked memory for eBPF maps (limit {} KiB): raise it with `ulimit -l unlimited` (LimitMEMLOCK=infinity in a systemd unit)",
            shown(memlock.map(|b| b / 1024))
        )),
        libc::ENOMEM => Some(
            "out of memory for eBPF maps (the kernel or this cgroup's memory.max): free memory or raise the cgroup's limit"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Saves `text` (a verifier log) where only this user can read or replace it; returns its
/// path. The file is created new (`O_EXCL`, never through a symlink, mode 0600) in
/// `$XDG_RUNTIME_DIR` when that is a private directory of this user's, else in a fresh
/// private directory under the temporary directory.
pub fn save_private(what: &str, text: &str) -> std::io::Result<PathBuf> {
    let name = format!("stapr-{what}-{}.log", std::process::id());
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    if let Some(dir) = runtime_dir.filter(|d| is_private_dir(d)) {
        if let Ok(path) = write_new(&dir.join(&name), text) {
            return Ok(path);
        }
    }
    let dir = private_dir(&std::env::temp_dir())?;
    write_new(&dir.join(name), text)
}

/// A directory (not a symlink to one) that this user owns and no one else may write to.
fn is_private_dir(dir: &Path) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    dir.is_absolute()
        && std::fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o022 == 0)
}

/// A new directory under `parent` with an unpredictable name, mode 0700 (mkdtemp(3)).
fn private_dir(parent: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let template = parent.join("stapr-XXXXXX");
    let mut bytes = template.as_os_str().as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: a writable NUL-terminated template ending in XXXXXX, which mkdtemp fills.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// Writes `text` to a file that must not exist yet, never following a symlink.
fn write_new(path: &Path, text: &str) -> std::io::Result<PathBuf> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lines_name_the_limit_and_the_fix() {
        let l = resource_line(libc::EMFILE, Some(16), None).unwrap();
        assert!(
            l.starts_with("too many open files (limit 16): raise it with `ulimit -n`"),
            "{l}"
        );
        let l = resource_line(libc::EPERM, None, Some(64 << 10)).unwrap();
        assert!(
            l.contains("locked memory") && l.contains("limit 64 KiB"),
            "{l}"
        );
        // With no locked-memory limit, EPERM is a permission, not a resource.
        assert_eq!(resource_line(libc::EPERM, None, None), None);
        assert!(resource_line(libc::ENOMEM, None, None)
            .unwrap()
            .contains("memory"));
        assert_eq!(resource_line(libc::EACCES, Some(16), Some(1)), None);
    }

    #[test]
    fn an_io_error_deep_in_the_chain_is_found() {
        let err = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EMFILE))
            .context("attaching tracepoint syscalls:sys_exit_splice")
            .context("disktop");
        assert!(exhausted(&err)
            .unwrap()
            .starts_with("too many open files (limit "));
        assert!(one_line(&err).starts_with("too many open files"));
        let other = anyhow::anyhow!("no such tracepoint").context("nettop");
        assert_eq!(exhausted(&other), None);
    }

    #[test]
    fn saved_logs_are_private_and_never_follow_a_symlink() {
        let parent = private_dir(&std::env::temp_dir()).unwrap();
        let meta = std::fs::metadata(&parent).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        // A link planted where the log goes is neither followed nor replaced.
        let target = parent.join("target");
        std::fs::write(&target, "keep").unwrap();
        let planted = parent.join("log");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(write_new(&planted, "log text").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let path = write_new(&parent.join("new.log"), "log text").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(!is_private_dir(&planted));
        assert!(is_private_dir(&parent));
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
