//! `stapr slowopen`'s command line: its flags, help text and options.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::{probes::Method, Options};
use crate::{
    cli::flags::{min_duration, CgroupArgs, OutputArgs, ProcessArgs},
    runtime::duration,
};

pub const HELP: &str = "\
A file is opened by a successful open, openat, openat2 or creat and tracked per process
(thread group) and fd, so a file opened in one thread and closed in another is one file.
It ends with close, with dup2/dup3 onto its fd [dup2]/[dup3], with close_range [close_range],
with exec when opened O_CLOEXEC [exec], or when the process exits [exit]. The name is the
string the process passed (up to 255 bytes; '...' marks a longer one). Files opened before
stapr started are not tracked; neither is FD_CLOEXEC set later with fcntl. Files still open
when stapr stops are listed once at the end. The threshold is applied in the kernel: only
slow files reach stapr.

--open-min times the open call itself, from its entry to its return, and reports every
open that took at least that long as it returns, marked [slow open] (failed ones with
their error): a stalled NFS server, not a file kept open. Alone it reports only slow
opens; with --min, both. -v adds an OPEN(s) column with each file's open time. Either
attaches entry probes to the open calls as well.

--probe raw-syscalls uses one BTF tracepoint on every syscall's exit (raw_syscalls) instead
of a classic tracepoint per traced call: cheaper per open and close, dearer for every other
syscall on the machine.

EXAMPLES:
    stapr slowopen                  # files held open 1 s or more
    stapr slowopen --min 250ms -v   # a lower threshold, with PID, TID and OPEN(s) columns
    stapr slowopen --open-min 1s    # opens that themselves took 1 s or more
    stapr slowopen -c httpd -d 10m  # only httpd, for ten minutes
    stapr slowopen --cgroup 3f4c2a1b9d8e --containers   # one container's files
";

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Report files held at least this long (1s, 1.5s, 500ms, 250us, 2m) [default: 1s,
    /// none with --open-min alone]
    #[arg(long, value_parser = min_duration, allow_hyphen_values = true)]
    pub min: Option<Duration>,
    /// Report opens that themselves took at least this long, as they return
    #[arg(long, value_parser = min_duration, allow_hyphen_values = true)]
    pub open_min: Option<Duration>,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub cgroups: CgroupArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Stop after this long (default: until Ctrl-C)
    #[arg(short, long, value_parser = duration::positive_secs, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Add PID, TID and OPEN(s) (the open call's own time) columns
    #[arg(short, long)]
    pub verbose: bool,
    /// How syscalls are seen: syscalls (classic tracepoints on each traced call; auto
    /// means this), or raw-syscalls (one BTF tracepoint on every syscall's exit: cheaper
    /// per open and close, dearer for every other syscall)
    #[arg(long, value_enum, default_value = "auto")]
    pub probe: Probe,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            // --open-min alone reports slow opens only.
            min: match (a.min, a.open_min) {
                (Some(m), _) => Some(m),
                (None, Some(_)) => None,
                (None, None) => Some(Duration::from_secs(1)),
            },
            open_min: a.open_min,
            filter: a.who.into(),
            containers: a.cgroups.into(),
            format: a.output.format,
            duration: a.duration,
            verbose: a.verbose,
            method: a.probe.into(),
        }
    }
}

/// `--probe`: how the syscalls are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// The classic syscall tracepoints (what every syscall not traced pays least).
    Auto,
    /// One BTF tracepoint on every syscall's exit (raw_syscalls:sys_exit): cheaper per
    /// open and close, dearer for every other syscall on the machine.
    RawSyscalls,
    /// Classic tracepoints on each traced syscall.
    Syscalls,
}

impl From<Probe> for Option<Method> {
    fn from(p: Probe) -> Self {
        match p {
            Probe::Auto => None,
            Probe::RawSyscalls => Some(Method::RawSyscalls),
            Probe::Syscalls => Some(Method::Syscalls),
        }
    }
}
