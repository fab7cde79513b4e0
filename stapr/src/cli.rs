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
    #[command(after_help = nettop::args::HELP)]
    Nettop(nettop::args::Args),
    /// Bytes read and written per process and device (block or network filesystem), every
    /// interval (top 10).
    #[command(after_help = disktop::args::HELP)]
    Disktop(disktop::args::Args),
    /// Files a process held open at least --min, printed as each one is closed; with
    /// --open-min, open calls that themselves took that long.
    #[command(after_help = slowopen::args::HELP)]
    Slowopen(slowopen::args::Args),
    /// Every entry and return of a module's (or a program's) functions, as an indented
    /// per-thread call tree.
    #[command(after_help = calltree::args::HELP)]
    Calltree(calltree::args::Args),
    /// Serve the reports' counters to Prometheus: per-process network and disk counters
    /// and a histogram of file hold times on /metrics.
    #[command(after_help = export::args::HELP)]
    Export(export::args::Args),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

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
        assert_eq!(a.min, Some(Duration::from_micros(250)));
        assert!(a.verbose);
        for flag in ["--min", "--open-min"] {
            for bad in ["abc", "-1s", "1x", "0", "0s"] {
                assert!(
                    Cli::try_parse_from(["stapr", "slowopen", flag, bad]).is_err(),
                    "{flag} {bad}"
                );
            }
        }
        // --open-min alone reports slow opens only; with --min, both.
        let opts = |args: &[&str]| {
            let c = Cli::try_parse_from(["stapr", "slowopen"].iter().chain(args)).unwrap();
            let Command::Slowopen(a) = c.command else {
                panic!()
            };
            crate::report::slowopen::Options::from(a)
        };
        assert_eq!(opts(&[]).min, Some(Duration::from_secs(1)));
        let o = opts(&["--open-min", "1s"]);
        assert_eq!((o.min, o.open_min), (None, Some(Duration::from_secs(1))));
        let o = opts(&["--open-min", "1s", "--min", "2s"]);
        assert_eq!(o.min, Some(Duration::from_secs(2)));
    }

    #[test]
    fn export_defaults_to_loopback() {
        let c = Cli::try_parse_from(["stapr", "export"]).unwrap();
        let Command::Export(a) = c.command else {
            panic!()
        };
        assert_eq!(a.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(a.by, crate::export::By::PID);
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
            &["stapr", "nettop", "-r", "-1"],
            &["stapr", "nettop", "-p", "+1"],
            &["stapr", "nettop", "-i", "1ns"],
            &["stapr", "nettop", "-i", "99999999999999"],
            &["stapr", "nettop", "-c", ""],
            &["stapr", "nettop", "-c", "sixteen-bytes-xx"],
            &["stapr", "nettop", "-d", ""],
            &["stapr", "slowopen", "--min", "0"],
            &["stapr", "slowopen", "--min", "0.1ns"],
            &["stapr", "calltree", "--max-depth", "-2"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }
}
