//! `stapr nettop`'s command line: its flags, help text and options.

use clap::Args as ClapArgs;

use super::{Filter, Options, ProbeKind, SortKey};
use crate::cli::{device, positive_usize, CgroupArgs, IntervalArgs, OutputArgs, ProcessArgs};

pub const HELP: &str = "\
Transmitted packets are charged to the process that sent them. Received packets are charged
to whatever task was running when the kernel processed them (softirq context), as SystemTap's
netdev.receive did: on loopback that is usually the sender, on a real NIC often an unrelated
task, 'swapper/N' (PID 0) or 'ksoftirqd/N'. KB is bytes/1024, rounded down; bytes are the
skb length the kernel reports (receive lengths exclude the link-layer header).
-p 0 selects the idle tasks (swapper/N), which softirq work such as receiving is often
charged to.

EXAMPLES:
    stapr nettop                  # every 5 s, all processes, ordered by RECV_PK
    stapr nettop -i 1 --count 10  # every second, ten times
    stapr nettop -p 1234 -d eth0  # only PID 1234 on eth0
    stapr nettop -c httpd -s xmit_kb -r 5
    stapr nettop --containers     # which container or unit each row belongs to
    stapr nettop --cgroup system.slice/nginx.service
";

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub every: IntervalArgs,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub cgroups: CgroupArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Only this network device (e.g. eth0, lo)
    #[arg(short, long, value_parser = device, allow_hyphen_values = true)]
    pub dev: Option<String>,
    /// Order rows by this column, largest first (pid: smallest first)
    #[arg(short, long, value_enum, default_value = "recv_pk")]
    pub sort: SortKey,
    /// Print at most this many rows per report
    #[arg(short, long, value_parser = positive_usize, allow_hyphen_values = true)]
    pub rows: Option<usize>,
    /// Tracepoint flavour to attach with
    #[arg(long, value_enum, default_value = "auto")]
    pub probe: ProbeKind,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            every: a.every.into(),
            filter: Filter {
                who: a.who.into(),
                dev: a.dev,
            },
            format: a.output.format,
            sort: a.sort,
            rows: a.rows,
            probe: a.probe,
            containers: a.cgroups.into(),
        }
    }
}
