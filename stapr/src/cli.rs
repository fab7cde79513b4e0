//! Command-line interface: one subcommand per report, bcc-style flags.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::report::{disktop, nettop};
use crate::runtime::{self, duration};

#[derive(Debug, Parser)]
#[command(
    name = "stapr",
    version,
    about = "SystemTap-style kernel reports on eBPF: cheap enough to leave running",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What works on this kernel, tried by loading and attaching tiny programs, and the
    /// method each report will use. Exit 0 when every report can run, 1 otherwise.
    Doctor(DoctorArgs),
    /// Packets and KB sent and received, per process and network device, every interval.
    #[command(after_help = NETTOP_HELP)]
    Nettop(NettopArgs),
    /// Bytes read and written per process and block device, every interval (top 10).
    #[command(after_help = DISKTOP_HELP)]
    Disktop(DisktopArgs),
    /// Files a process held open at least --min, printed as each one is closed.
    #[command(after_help = SLOWOPEN_HELP)]
    Slowopen(SlowopenArgs),
}

const DISKTOP_HELP: &str = "\
Counts the bytes that read and write calls return for files on a block device, page-cache
hits included, like SystemTap's disktop. Pipes, sockets, tmpfs, /proc and other files
without a block device are not counted. DEVICE is the kernel's name for the device under
the file's filesystem. Where the kernel allows fexit, the probes sit on vfs_read and
vfs_write: every read(2), write(2), pread64(2) and pwrite64(2) goes through them, and so
does the kernel's own use of those functions; readv/writev-style calls, io_uring, mmap'd
files, sendfile, splice and copy_file_range do not. Elsewhere (this is said at start) they
are the exit tracepoints of read, write, pread64, pwrite64, readv, writev, preadv, pwritev,
preadv2 and pwritev2: io_uring, mmap'd files, sendfile, splice, copy_file_range and aio
are not seen.

--block counts requests issued to the devices instead (block:block_rq_issue): physical
I/O, charged to the task running when the request was issued. Write-back of dirty pages is
issued by the kernel's flusher threads and shows under them, not under the writer.

EXAMPLES:
    stapr disktop                 # every 5 s, top 10 by bytes
    stapr disktop -i 1 -r 20      # every second, top 20
    stapr disktop -c postgres     # only commands containing 'postgres'
    stapr disktop --block         # physical I/O per device
";

const SLOWOPEN_HELP: &str = "\
A file is opened by a successful open, openat, openat2 or creat and tracked per process
(thread group) and fd, so a file opened in one thread and closed in another is one file.
It ends with close, with dup2/dup3 onto its fd [dup2]/[dup3], with close_range [close_range],
with exec when opened O_CLOEXEC [exec], or when the process exits [exit]. The name is the
string the process passed (up to 255 bytes; '...' marks a longer one). Files opened before
stapr started are not tracked; neither is FD_CLOEXEC set later with fcntl. Files still open
when stapr stops are listed once at the end. The threshold is applied in the kernel: only
slow files reach stapr.

EXAMPLES:
    stapr slowopen                  # files held open 1 s or more
    stapr slowopen --min 250ms -v   # a lower threshold, with PID and TID columns
    stapr slowopen -c httpd -d 10m  # only httpd, for ten minutes
";

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DisktopArgs {
    #[command(flatten)]
    pub every: IntervalArgs,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Order rows by bytes (largest first) or pid
    #[arg(short, long, value_enum, default_value = "bytes")]
    pub sort: disktop::SortKey,
    /// Rows per report
    #[arg(short, long, default_value = "10", value_parser = positive_usize)]
    pub rows: usize,
    /// Count requests issued to block devices instead of read/write calls (same as
    /// --probe block)
    #[arg(long)]
    pub block: bool,
    /// How reads and writes are seen
    #[arg(long, value_enum, default_value = "auto")]
    pub probe: disktop::Method,
}

#[derive(Debug, Args)]
pub struct SlowopenArgs {
    /// Report files held at least this long (1s, 1.5s, 500ms, 250us, 2m)
    #[arg(long, default_value = "1s", value_parser = min_duration, allow_hyphen_values = true)]
    pub min: Duration,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Stop after this long (default: until Ctrl-C)
    #[arg(short, long, value_parser = duration::positive_secs)]
    pub duration: Option<Duration>,
    /// Add PID and TID columns
    #[arg(short, long)]
    pub verbose: bool,
}

fn min_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s, "s")
}

const NETTOP_HELP: &str = "\
Transmitted packets are charged to the process that sent them. Received packets are charged
to whatever task was running when the kernel processed them (softirq context), as SystemTap's
netdev.receive did: on loopback that is usually the sender, on a real NIC often an unrelated
task, 'swapper/N' (PID 0) or 'ksoftirqd/N'. KB is bytes/1024, rounded down; bytes are the
skb length the kernel reports (receive lengths exclude the link-layer header).

EXAMPLES:
    stapr nettop                  # every 5 s, all processes, ordered by RECV_PK
    stapr nettop -i 1 --count 10  # every second, ten times
    stapr nettop -p 1234 -d eth0  # only PID 1234 on eth0
    stapr nettop -c httpd -s xmit_kb -r 5
";

#[derive(Debug, Args)]
pub struct NettopArgs {
    #[command(flatten)]
    pub every: IntervalArgs,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Only this network device (e.g. eth0, lo)
    #[arg(short, long)]
    pub dev: Option<String>,
    /// Order rows by this column, largest first (pid: smallest first)
    #[arg(short, long, value_enum, default_value = "recv_pk")]
    pub sort: nettop::SortKey,
    /// Print at most this many rows per report
    #[arg(short, long, value_parser = positive_usize)]
    pub rows: Option<usize>,
    /// Tracepoint flavour to attach with
    #[arg(long, value_enum, default_value = "auto")]
    pub probe: nettop::ProbeKind,
}

/// Output format flag of the reports.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// text, or json: newline-delimited JSON objects with raw numbers
    #[arg(long, value_enum, default_value = "text")]
    pub format: runtime::Format,
}

/// The interval flags of the periodic reports.
#[derive(Debug, Args)]
pub struct IntervalArgs {
    /// Seconds between reports (also 500ms, 2s, 1m...)
    #[arg(short, long, default_value = "5", value_parser = duration::positive_secs)]
    pub interval: Duration,
    /// Stop after this many reports
    #[arg(long, value_parser = positive_u64)]
    pub count: Option<u64>,
}

/// The process filters every report takes.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Only this process (thread group id)
    #[arg(short, long, value_parser = id, allow_hyphen_values = true)]
    pub pid: Option<u32>,
    /// Only this user id
    #[arg(short, long, value_parser = id, allow_hyphen_values = true)]
    pub uid: Option<u32>,
    /// Only commands containing this text
    #[arg(short, long)]
    pub comm: Option<String>,
}

impl ProcessArgs {
    pub fn filter(self) -> crate::report::ProcessFilter {
        crate::report::ProcessFilter {
            pid: self.pid,
            uid: self.uid,
            comm: self.comm,
        }
    }
}

fn id(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .map_err(|_| format!("'{s}' is not a valid id (a whole number from 0 to 4294967295)"))
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' must be a whole number greater than zero")),
    }
}

fn positive_usize(s: &str) -> Result<usize, String> {
    positive_u64(s).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sort_names_match_columns() {
        let c = Cli::try_parse_from(["stapr", "nettop", "-s", "xmit_kb"]).unwrap();
        let Command::Nettop(a) = c.command else {
            panic!()
        };
        assert_eq!(a.sort, nettop::SortKey::XmitKb);
        assert_eq!(a.every.interval, Duration::from_secs(5));
    }

    #[test]
    fn slowopen_min() {
        let c = Cli::try_parse_from(["stapr", "slowopen", "--min", "250us", "-v"]).unwrap();
        let Command::Slowopen(a) = c.command else {
            panic!()
        };
        assert_eq!(a.min, Duration::from_micros(250));
        assert!(a.verbose);
        for bad in ["abc", "-1s", "1x"] {
            assert!(
                Cli::try_parse_from(["stapr", "slowopen", "--min", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        for args in [
            &["stapr", "nettop", "-i", "0"][..],
            &["stapr", "nettop", "-i", "abc"],
            &["stapr", "nettop", "--pid", "-3"],
            &["stapr", "nettop", "--count", "0"],
            &["stapr", "nettop", "-r", "x"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
