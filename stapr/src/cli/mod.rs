//! Command-line interface: the command list, one subcommand per report. The flags the
//! reports share are in [`flags`].

pub mod flags;

use clap::{Args, Parser, Subcommand};

use crate::export;
use crate::report::{calltree, disktop, nettop, slowopen};
use flags::OutputArgs;

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

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Doctor(a) => crate::doctor::run(a.output.format),
            Command::Nettop(a) => nettop::run(a.into()),
            Command::Disktop(a) => disktop::run(a.into()),
            Command::Slowopen(a) => slowopen::run(a.into()),
            Command::Calltree(a) => calltree::run(a.into()),
            Command::Export(a) => export::run(a.into()),
        }
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::time::Duration;

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
