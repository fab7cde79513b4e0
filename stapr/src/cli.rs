//! Command-line interface: one subcommand per report, bcc-style flags.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::export;
use crate::report::{calltree, disktop, nettop, slowopen};
use crate::runtime::{self, duration, interval::Every};

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
    /// method each report will use. Exit 0 when every report can do its whole job here,
    /// 1 otherwise (the screen says which part still works).
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
    /// Every entry and return of a module's (or a program's) functions, as an indented
    /// per-thread call tree.
    #[command(after_help = CALLTREE_HELP)]
    Calltree(CalltreeArgs),
    /// Serve the reports' counters to Prometheus: per-process network and disk counters
    /// and a histogram of file hold times on /metrics.
    #[command(after_help = EXPORT_HELP)]
    Export(ExportArgs),
}

const CALLTREE_HELP: &str = "\
Each line is SystemTap's thread_indent: microseconds since the thread's outermost traced
call, command(thread id), then '->' on entry or '<-' on return, indented one space per
level. A return whose entry was not seen (the call was running when tracing began) prints
at depth 1. Kernel functions are probed with kprobe.multi where the kernel has it, else
fentry/fexit, else kprobe/kretprobe (--attach forces one); functions that cannot be
probed (notrace, __init, ambiguous names, refused by the kernel) are skipped and counted.
--binary traces the functions of a program or library with uprobes instead, in every
process that runs it. On exit output stops at once; many probes are detached by a
background process after the prompt returns.

EXAMPLES:
    stapr calltree --module ext4              # while `ls` runs on an ext4 mount
    stapr calltree --func 'vfs_*' -c ls       # kernel functions by name, only ls
    stapr calltree --module nfs --max-depth 3 -d 10s
    stapr calltree --binary /usr/sbin/nginx --func 'ngx_http_*' -p 1234
";

#[derive(Debug, Args)]
pub struct CalltreeArgs {
    /// Every traceable function of this kernel module
    #[arg(short, long)]
    pub module: Option<String>,
    /// Functions whose names match this glob (repeatable): kernel functions, or with
    /// --binary the program's
    #[arg(short, long = "func", value_name = "GLOB")]
    pub funcs: Vec<String>,
    /// Trace functions of this ELF program or library with uprobes
    #[arg(short, long, value_name = "PATH")]
    pub binary: Option<std::path::PathBuf>,
    /// How kernel functions are probed
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: calltree::Attach,
    #[command(flatten)]
    pub who: ProcessArgs,
    /// Print calls only down to this depth
    #[arg(long, value_parser = positive_usize)]
    pub max_depth: Option<usize>,
    /// Stop after this long (default: until Ctrl-C)
    #[arg(short, long, value_parser = duration::positive_secs)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// (benchmarks) print attach, stop-to-exit and detach times on stderr
    #[arg(long, hide = true)]
    pub timings: bool,
    /// (benchmarks) detach before exiting instead of in the background
    #[arg(long, hide = true)]
    pub detach_in_foreground: bool,
}

impl From<CalltreeArgs> for calltree::Options {
    fn from(a: CalltreeArgs) -> Self {
        calltree::Options {
            module: a.module,
            funcs: a.funcs,
            binary: a.binary,
            attach: a.attach,
            filter: a.who.into(),
            max_depth: a.max_depth,
            duration: a.duration,
            format: a.output.format,
            timings: a.timings,
            detach_in_foreground: a.detach_in_foreground,
        }
    }
}

const EXPORT_HELP: &str = "\
Runs nettop's, disktop's and slowopen's probes together (a report this kernel cannot run is
left out, and said so at start) and serves, in Prometheus' text format:
    stapr_net_packets_total, stapr_net_bytes_total  {pid, comm, uid, dev, direction}
    stapr_disk_bytes_total                          {pid, comm, uid, dev, direction}
    stapr_file_open_seconds (histogram)             {comm}
    stapr_events_total, stapr_events_lost_total, stapr_probes_attached, stapr_series
Counters are drained from the kernel at every scrape. The series of a process that exited
are dropped --forget-after later; --by comm leaves the pid label out, for large fleets.
It listens on loopback unless told otherwise: widen --listen on purpose.

EXAMPLES:
    stapr export                            # http://127.0.0.1:9464/metrics
    stapr export --listen 0.0.0.0:9464      # for a Prometheus on another node
    stapr export --by comm --forget-after 1m
";

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Address and port to serve /metrics on
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = socket_addr)]
    pub listen: std::net::SocketAddr,
    /// Label traffic series by pid (with comm and uid), or by comm only
    #[arg(long, value_enum, default_value = "pid")]
    pub by: export::By,
    /// Drop the series of a process this long after it exited (--by comm: after this long
    /// without traffic)
    #[arg(long, default_value = "5m", value_parser = duration::positive_secs)]
    pub forget_after: Duration,
    /// Files held open at least this long enter stapr_file_open_seconds
    #[arg(long, default_value = "10ms", value_parser = min_duration, allow_hyphen_values = true)]
    pub file_min: Duration,
    /// Stop after this long (default: until Ctrl-C or SIGTERM)
    #[arg(short, long, value_parser = duration::positive_secs)]
    pub duration: Option<Duration>,
}

impl From<ExportArgs> for export::Options {
    fn from(a: ExportArgs) -> Self {
        export::Options {
            listen: a.listen,
            by: a.by,
            forget_after: a.forget_after,
            file_min: a.file_min,
            duration: a.duration,
        }
    }
}

fn socket_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        format!(
            "'{s}' is not an address and port (examples: 127.0.0.1:9464, [::1]:9464, 0.0.0.0:9464)"
        )
    })
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

impl From<DisktopArgs> for disktop::Options {
    fn from(a: DisktopArgs) -> Self {
        disktop::Options {
            every: a.every.into(),
            filter: a.who.into(),
            format: a.output.format,
            sort: a.sort,
            rows: a.rows,
            method: if a.block {
                disktop::Method::Block
            } else {
                a.probe
            },
        }
    }
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

impl From<SlowopenArgs> for slowopen::Options {
    fn from(a: SlowopenArgs) -> Self {
        slowopen::Options {
            min: a.min,
            filter: a.who.into(),
            format: a.output.format,
            duration: a.duration,
            verbose: a.verbose,
        }
    }
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

impl From<NettopArgs> for nettop::Options {
    fn from(a: NettopArgs) -> Self {
        nettop::Options {
            every: a.every.into(),
            filter: nettop::Filter {
                who: a.who.into(),
                dev: a.dev,
            },
            format: a.output.format,
            sort: a.sort,
            rows: a.rows,
            probe: a.probe,
        }
    }
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

impl From<IntervalArgs> for Every {
    fn from(a: IntervalArgs) -> Self {
        Every {
            interval: a.interval,
            count: a.count,
        }
    }
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

impl From<ProcessArgs> for crate::report::ProcessFilter {
    fn from(a: ProcessArgs) -> Self {
        crate::report::ProcessFilter {
            pid: a.pid,
            uid: a.uid,
            comm: a.comm,
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
    fn export_defaults_to_loopback() {
        let c = Cli::try_parse_from(["stapr", "export"]).unwrap();
        let Command::Export(a) = c.command else {
            panic!()
        };
        assert_eq!(a.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(a.by, crate::export::By::Pid);
        assert_eq!(a.forget_after, Duration::from_secs(300));
        for bad in [
            &["--listen", "localhost"][..],
            &["--by", "host"],
            &["--forget-after", "0"],
        ] {
            let args = ["stapr", "export"].into_iter().chain(bad.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
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
