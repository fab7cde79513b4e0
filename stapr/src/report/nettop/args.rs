//! `stapr nettop`'s command line: its flags, help text and options.

use clap::Args as ClapArgs;

use super::{Filter, Method, Options, RecvAt, SortKey};
use crate::cli::flags::{
    device, positive_usize, CgroupArgs, IntervalArgs, OutputArgs, ProcessArgs,
};

pub const HELP: &str = "\
Transmitted packets are charged to the process that sent them, with the length the device
sent (link-layer header included).

--recv-at socket (the default): a received packet is charged to the process that reads it
off its TCP or UDP socket, on the device it arrived on, counted as the device saw it (link
header included; a coalesced TCP skb counts the wire packets it holds). Packets no process
reads (forwarded, dropped, never read, ICMP, raw/packet sockets, TCP splice and zerocopy
receive) are not charged.
--recv-at device: a received packet is charged to whatever task was running when the device
handed it to the stack (softirq), as SystemTap's netdev.receive did: on loopback usually the
sender, on a NIC often 'swapper/N' (PID 0, select with -p 0) or 'ksoftirqd/N'; lengths then
exclude the link header. It sees every packet, whether or not a process reads it.
KB is bytes/1024, rounded down.

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
    pub probe: Probe,
    /// Charge received packets to the reading process (socket) or to the task current
    /// when the device delivers them (device)
    #[arg(long, value_enum, default_value = "socket")]
    pub recv_at: RecvAt,
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
            probe: a.probe.into(),
            recv_at: a.recv_at,
            containers: a.cgroups.into(),
        }
    }
}

/// `--probe`: which tracepoint flavour carries the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// BTF tracepoints when the kernel allows them, else classic tracepoints.
    Auto,
    /// BTF-typed tracepoints (tp_btf): the cheapest; needs kernel BTF.
    TpBtf,
    /// Classic tracepoints (tracefs): work on any kernel since 4.7.
    Tracepoint,
}

impl From<Probe> for Option<Method> {
    fn from(p: Probe) -> Self {
        match p {
            Probe::Auto => None,
            Probe::TpBtf => Some(Method::TpBtf),
            Probe::Tracepoint => Some(Method::Tracepoint),
        }
    }
}
