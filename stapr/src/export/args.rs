//! `stapr export`'s command line: its flags, help text and options.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::{By, Options};
use crate::{cli::flags::min_duration, runtime::duration};

pub const HELP: &str = "\
Runs nettop's, disktop's and slowopen's probes together (a report this kernel cannot run is
left out, and said so at start) and serves, in Prometheus' text format:
    stapr_net_packets_total, stapr_net_bytes_total  {pid, comm, uid, dev, direction}
    stapr_disk_bytes_total                          {pid, comm, uid, dev, direction}
    stapr_file_open_seconds (histogram)             {comm}
    (--by container adds a container label: the container id or systemd unit)
    stapr_events_total, stapr_events_lost_total, stapr_probes_attached, stapr_series
Counters are drained from the kernel at every scrape. The series of a process that exited
are dropped --forget-after later; --by comm leaves the pid label out, for large fleets.
It listens on loopback unless told otherwise: widen --listen on purpose.

EXAMPLES:
    stapr export                            # http://127.0.0.1:9464/metrics
    stapr export --listen 0.0.0.0:9464      # for a Prometheus on another node
    stapr export --by comm --forget-after 1m
    stapr export --by comm,container        # per command and container
";

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Address and port to serve /metrics on
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = socket_addr)]
    pub listen: std::net::SocketAddr,
    /// Label series by pid (with comm and uid), comm (with uid), container, or a comma
    /// list: comm,container
    #[arg(long, default_value = "pid", value_parser = By::parse, allow_hyphen_values = true)]
    pub by: By,
    /// Drop the series of a process this long after it exited (--by comm: after this long
    /// without traffic)
    #[arg(long, default_value = "5m", value_parser = duration::positive_secs, allow_hyphen_values = true)]
    pub forget_after: Duration,
    /// Files held open at least this long enter stapr_file_open_seconds
    #[arg(long, default_value = "10ms", value_parser = min_duration, allow_hyphen_values = true)]
    pub file_min: Duration,
    /// Connections served at once; past it, the oldest that has sent no request yet is
    /// closed (as Prometheus' --web.max-connections)
    #[arg(long = "web.max-connections", value_name = "N", default_value = "512", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Stop after this long (default: until Ctrl-C, SIGTERM or SIGHUP)
    #[arg(short, long, value_parser = duration::positive_secs, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Charge received packets (direction="receive") to the process that reads them off
    /// their socket (socket) or to the task running when the device delivers them
    /// (device); see `stapr nettop --help`
    #[arg(long, value_enum, default_value = "socket")]
    pub recv_at: crate::report::nettop::Charge,
    /// Charge transmitted packets (direction="transmit") to the process that last wrote
    /// to their socket (socket) or to the task running when the device sends them
    /// (device); see `stapr nettop --help`
    #[arg(long, value_enum, default_value = "socket")]
    pub xmit_at: crate::report::nettop::Charge,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            listen: a.listen,
            max_connections: a.max_connections as usize,
            by: a.by,
            forget_after: a.forget_after,
            file_min: a.file_min,
            duration: a.duration,
            recv_at: a.recv_at,
            xmit_at: a.xmit_at,
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
