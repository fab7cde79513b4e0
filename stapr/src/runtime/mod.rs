//! What every report shares: privilege and resource checks, tracefs, the interval loop with
//! signal handling, and the error type that becomes exit code 2.

pub mod bpf_sys;
pub mod btf;
pub mod cgroup;
pub mod detach;
pub mod duration;
pub mod elf;
pub mod failure;
pub mod features;
pub mod interval;
pub mod object;
pub mod out;
pub mod ring;
pub mod shown;
pub mod slots;
pub mod source;
pub mod tracefs;

use std::{future::Future, io::Write, time::Duration};

use anyhow::{Context as _, Result};

pub use failure::{one_line, program_error_reason};

/// An error the user can fix (bad input, missing privilege, missing kernel facility):
/// printed as one line, exit code 2.
#[derive(Debug)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

pub fn user_error(msg: impl Into<String>) -> anyhow::Error {
    UserError(msg.into()).into()
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities from /proc/self/status (`CapEff:` is a hex bit mask).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn has_bpf_privileges(caps: u64) -> bool {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Whether this process may attach programs to cgroups (cgroup_skb and friends).
pub fn may_attach_to_cgroups() -> bool {
    effective_caps() & (1u64 << CAP_NET_ADMIN) != 0
}

/// Everything a report needs before it loads probes. Runs before any other work so an
/// unprivileged user gets one line and exit 2, not a failed syscall.
pub fn prepare() -> Result<()> {
    if !has_bpf_privileges(effective_caps()) {
        return Err(user_error(
            "needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo",
        ));
    }
    raise_limit(libc::RLIMIT_MEMLOCK, libc::RLIM_INFINITY).context("raising RLIMIT_MEMLOCK")?;
    // Every attached probe holds a file descriptor; calltree holds hundreds.
    raise_limit(libc::RLIMIT_NOFILE, 65536).context("raising RLIMIT_NOFILE")?;
    catch_stop_signals();
    Ok(())
}

/// Mounts a pseudo filesystem (securityfs, tracefs...) at `target` if nothing is there;
/// best effort, for information that is only nice to have.
pub fn mount_if_missing(fstype: &str, target: &str) {
    let _ = mount(fstype, target);
}

/// mount(2) of a pseudo filesystem (no source device) at `target`.
pub fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let src = std::ffi::CString::new("none").map_err(invalid)?;
    let fs = std::ffi::CString::new(fstype).map_err(invalid)?;
    let dir = std::ffi::CString::new(target).map_err(invalid)?;
    // SAFETY: valid NUL-terminated strings; data may be NULL.
    let rc = unsafe { libc::mount(src.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The process's current limit of `resource`.
fn limit(resource: libc::__rlimit_resource_t) -> std::io::Result<libc::rlimit> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `cur` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cur)
}

/// The soft limit of `resource` (None: unlimited, or unknown).
pub fn soft_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    limit(resource)
        .ok()
        .map(|l| l.rlim_cur)
        .filter(|&cur| cur != libc::RLIM_INFINITY)
}

fn raise_limit(resource: libc::__rlimit_resource_t, want: libc::rlim_t) -> std::io::Result<()> {
    let cur = limit(resource)?;
    if cur.rlim_cur == libc::RLIM_INFINITY || cur.rlim_cur >= want {
        return Ok(());
    }
    // Root may raise the hard limit; others are held to it.
    let max = if cur.rlim_max == libc::RLIM_INFINITY || cur.rlim_max >= want {
        cur.rlim_max
    } else {
        want
    };
    let mut new = libc::rlimit {
        rlim_cur: want,
        rlim_max: max,
    };
    // SAFETY: `new` is a valid rlimit.
    if unsafe { libc::setrlimit(resource, &new) } == 0 {
        return Ok(());
    }
    new.rlim_cur = cur.rlim_max;
    new.rlim_max = cur.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(resource, &new) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Set by the handler `prepare()` installs: a stop signal that arrived after the report
/// said it was ready but before its loop started listening.
static EARLY_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_early_stop(_: libc::c_int) {
    EARLY_STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The signals that end a report, its last output printed: Ctrl-C, a service manager's
/// stop, and the hangup an ssh session's drop sends (stapr has no configuration to reload
/// on it, as daemons do).
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Catches the stop signals from now on, so a stop request never kills a report between
/// its readiness line and its loop (`signalled()` takes over from here).
fn catch_stop_signals() {
    for sig in STOP_SIGNALS {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = note_early_stop as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Resolves when SIGINT, SIGTERM or SIGHUP arrives (or arrived since `prepare()`).
pub async fn signalled() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |sig: libc::c_int| {
        signal(SignalKind::from_raw(sig))
            .with_context(|| format!("installing the handler of signal {sig}"))
    };
    let [int, term, hup] = STOP_SIGNALS;
    let (mut int, mut term, mut hup) = (listen(int)?, listen(term)?, listen(hup)?);
    if EARLY_STOP.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(());
    }
    tokio::select! {
        _ = int.recv() => Ok(()),
        _ = term.recv() => Ok(()),
        _ = hup.recv() => Ok(()),
    }
}

/// Why a report stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// `--duration` ran out.
    Duration,
    /// stdout's reader went away: nothing more is printed.
    ReaderGone,
}

/// Resolves on a stop signal, after `duration` when given, and (for reports that print
/// to stdout) once stdout's reader is gone.
pub async fn stopped(duration: Option<Duration>, watch_reader: bool) -> Result<Stop> {
    let elapsed = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let gone = async {
        if watch_reader {
            out::gone().await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        r = signalled() => r.map(|()| Stop::Signal),
        _ = elapsed => Ok(Stop::Duration),
        _ = gone => Ok(Stop::ReaderGone),
    }
}

/// A duration in ns as the probes take it (saturating; no duration overflows in practice).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A length in seconds to the millisecond, as JSON's `interval_s` says it.
pub fn seconds(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs a report's async body on a single-threaded runtime: the reports are I/O bound and
/// one thread keeps stapr's own footprint small.
pub fn block_on<T, F: Future<Output = Result<T>>>(body: F) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(body)
}

/// Output format of every report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// SystemTap's text layout.
    #[default]
    Text,
    /// Newline-delimited JSON: one object per row, raw numbers.
    Json,
}

/// Now, as RFC 3339 UTC with milliseconds, for JSON records.
pub fn utc_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Writes one report's text to stdout and flushes it, so a pipe sees each interval whole.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_rules() {
        assert!(has_bpf_privileges(u64::MAX));
        assert!(has_bpf_privileges(1 << CAP_SYS_ADMIN));
        assert!(has_bpf_privileges((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_bpf_privileges(1 << CAP_BPF));
        assert!(!has_bpf_privileges(1 << CAP_PERFMON));
        assert!(!has_bpf_privileges(0));
    }
}
