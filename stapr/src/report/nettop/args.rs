//! `stapr nettop`'s command line: its flags, help text and options.

use clap::Args as ClapArgs;

use super::{Charge, Filter, Method, Options, SortKey};
use crate::cli::flags::{
    device, positive_usize, CgroupArgs, IntervalArgs, OutputArgs, ProcessArgs,
};

pub const HELP: &str = "\
--xmit-at socket (the default): a transmitted packet is charged to the process that last
wrote to its socket (TCP, UDP, IPv4 and IPv6), on the device that sent it, with the length
the device sent (link header included), even when the device sends it from a softirq, a
timer or another process's context (TCP segments released by the peer's ACK, retransmits).
Packets without a socket (forwarded, ARP, ICMP errors, and packets a veth pair handed on
from another namespace) are charged to the task running when the device sent them.
--xmit-at device: every transmit is charged to the task running when the device sent it,
as SystemTap's netdev.transmit did.

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

--connections: a row per process and connection, with PROTO (tcp, udp, icmp...), LOCAL and
REMOTE (address:port, [IPv6]:port) and NEW ('new' for a TCP connection whose handshake
completed in the interval, or another protocol's flow the process had no row for in the
last 60 intervals; '-' otherwise). UDP without a connected peer gets a row per remote
address. Packets that are not IP show '-' for all three. On kernels from 6.18, UDP
datagrams from several peers that a socket had queued when one read took them show
REMOTE '*'.

EXAMPLES:
    stapr nettop                  # every 5 s, all processes, ordered by RECV_PK
    stapr nettop -i 1 --count 10  # every second, ten times
    stapr nettop -p 1234 -d eth0  # only PID 1234 on eth0
    stapr nettop -c httpd -s xmit_kb -r 5
    stapr nettop --containers     # which container or unit each row belongs to
    stapr nettop --cgroup system.slice/nginx.service
    stapr nettop --connections -c nginx   # nginx's connections, new ones marked
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
    /// Charge received packets to the process that reads them off their socket (socket) or
    /// to the task running when the device delivers them (device)
    #[arg(long, value_enum, default_value = "socket")]
    pub recv_at: Charge,
    /// Charge transmitted packets to the process that last wrote to their socket (socket)
    /// or to the task running when the device sends them (device)
    #[arg(long, value_enum, default_value = "socket")]
    pub xmit_at: Charge,
    /// A row per process and connection: protocol, local and remote address and port, and
    /// whether the connection is new in the interval
    #[arg(long)]
    pub connections: bool,
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
            xmit_at: a.xmit_at,
            containers: a.cgroups.into(),
            connections: a.connections,
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
