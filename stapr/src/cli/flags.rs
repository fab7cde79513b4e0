//! The flags every report shares (interval, process and cgroup filters, output format)
//! and the value parsers behind bcc-style flags.

use std::time::Duration;

use clap::Args;

use crate::runtime::{self, duration, interval::Every};

/// A threshold (`--min`, `--file-min`): a duration greater than zero, seconds by default.
pub fn min_duration(s: &str) -> Result<Duration, String> {
    duration::positive_secs(s)
}

/// Shortest and longest interval between reports: shorter ones only measure stapr itself,
/// longer ones are a typo.
const INTERVAL_MIN: Duration = Duration::from_millis(100);
const INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);

fn interval(s: &str) -> Result<Duration, String> {
    let d = duration::positive_secs(s)?;
    if d < INTERVAL_MIN {
        return Err(format!("interval '{s}' is too short: at least 100ms"));
    }
    if d > INTERVAL_MAX {
        return Err(format!("interval '{s}' is too long: at most 24h"));
    }
    Ok(d)
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
    #[arg(short, long, default_value = "5", value_parser = interval, allow_hyphen_values = true)]
    pub interval: Duration,
    /// Stop after this many reports
    #[arg(long, value_parser = positive_u64, allow_hyphen_values = true)]
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
    /// Only commands containing this text (1 to 15 bytes, as the kernel keeps them)
    #[arg(short, long, value_parser = comm, allow_hyphen_values = true)]
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

/// The cgroup flags every report takes.
#[derive(Debug, Args)]
pub struct CgroupArgs {
    /// Add a CONTAINER column: the container id (12 hex digits) or systemd unit of each
    /// process's cgroup, "-" for the root cgroup
    #[arg(long)]
    pub containers: bool,
    /// Only processes in this cgroup and below it: a path below the cgroup2 root
    /// (system.slice/nginx.service) or a container id prefix of 6 or more hex digits
    #[arg(long, value_name = "PATH|ID", allow_hyphen_values = true)]
    pub cgroup: Option<String>,
}

impl From<CgroupArgs> for crate::report::containers::Choice {
    fn from(a: CgroupArgs) -> Self {
        crate::report::containers::Choice {
            show: a.containers,
            cgroup: a.cgroup,
        }
    }
}

/// Digits only: `+1` and `-1` are typos, not ids.
fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn id(s: &str) -> Result<u32, String> {
    digits(s)
        .then(|| s.parse::<u32>().ok())
        .flatten()
        .ok_or_else(|| format!("'{s}' is not a valid id (a whole number from 0 to 4294967295)"))
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match digits(s).then(|| s.parse::<u64>().ok()).flatten() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' must be a whole number greater than zero")),
    }
}

/// `-c`: a command name is 1 to 15 bytes (`task_struct.comm`); no longer text can match.
fn comm(s: &str) -> Result<String, String> {
    let max = probes_common::COMM_LEN - 1;
    if s.is_empty() || s.len() > max {
        return Err(format!(
            "'{s}' cannot match: command names are 1 to {max} bytes"
        ));
    }
    Ok(s.to_owned())
}

/// A network device name: 1 to 15 bytes (`IFNAMSIZ`).
pub fn device(s: &str) -> Result<String, String> {
    let max = probes_common::IFNAME_LEN - 1;
    if s.is_empty() || s.len() > max {
        return Err(format!(
            "'{s}' is not a network device name (1 to {max} bytes)"
        ));
    }
    Ok(s.to_owned())
}

pub fn positive_usize(s: &str) -> Result<usize, String> {
    positive_u64(s).map(|n| n as usize)
}
