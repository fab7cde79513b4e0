//! stapr: SystemTap-style tracing for Linux on eBPF.

mod cli;
mod doctor;
mod export;
mod report;
mod runtime;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

use crate::{
    cli::{Cli, Command},
    report::{calltree, disktop, nettop, slowopen},
    runtime::UserError,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_failure(err),
    };
    let result = match cli.command {
        Command::Doctor(a) => run_doctor(a.output.format),
        Command::Nettop(a) => nettop::run(nettop::Options {
            interval: a.every.interval,
            count: a.every.count,
            filter: nettop::Filter {
                who: a.who.filter(),
                dev: a.dev,
            },
            format: a.output.format,
            sort: a.sort,
            rows: a.rows,
            probe: a.probe,
        }),
        Command::Disktop(a) => disktop::run(disktop::Options {
            interval: a.every.interval,
            count: a.every.count,
            filter: a.who.filter(),
            format: a.output.format,
            sort: a.sort,
            rows: a.rows,
            method: if a.block {
                disktop::Method::Block
            } else {
                a.probe
            },
        }),
        Command::Slowopen(a) => slowopen::run(slowopen::Options {
            min: a.min,
            filter: a.who.filter(),
            format: a.output.format,
            duration: a.duration,
            verbose: a.verbose,
        }),
        Command::Calltree(a) => calltree::run(calltree::Options {
            module: a.module,
            funcs: a.funcs,
            binary: a.binary,
            attach: a.attach,
            filter: a.who.filter(),
            max_depth: a.max_depth,
            duration: a.duration,
            format: a.output.format,
            timings: a.timings,
            detach_in_foreground: a.detach_in_foreground,
            bench_format: a.bench_format,
        }),
        Command::Export(a) => export::run(export::Options {
            listen: a.listen,
            by: a.by,
            forget_after: a.forget_after,
            file_min: a.file_min,
            duration: a.duration,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(&err),
    }
}

/// Exit 0 when every report can run here, 1 otherwise.
fn run_doctor(format: runtime::Format) -> anyhow::Result<()> {
    let f = doctor::examine()?;
    let text = match format {
        runtime::Format::Text => doctor::text(&f),
        runtime::Format::Json => doctor::json(&f),
    };
    runtime::emit(&text)?;
    if !f.all_runnable() {
        std::process::exit(1);
    }
    Ok(())
}

/// clap's errors span several lines (usage, tips); the user gets the first one only.
fn usage_failure(err: clap::Error) -> ExitCode {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(2)
        }
        _ => {
            let text = err.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            let line = line.strip_prefix("error: ").unwrap_or(line);
            // For a bad choice, the choices belong on the same line.
            let choices = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("[possible values: "))
                .map(|v| format!(" (one of: {}", v.trim_end_matches(']')))
                .unwrap_or_default();
            let tail = if choices.is_empty() {
                " (see stapr --help)".to_owned()
            } else {
                choices + ")"
            };
            eprintln!("stapr: {line}{tail}");
            ExitCode::from(2)
        }
    }
}

fn failure(err: &anyhow::Error) -> ExitCode {
    // A reader that went away (`stapr nettop | head`) is not an error.
    if err
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    {
        return ExitCode::SUCCESS;
    }
    if let Some(user) = err.downcast_ref::<UserError>() {
        eprintln!("stapr: {user}");
        return ExitCode::from(2);
    }
    eprintln!("stapr: error: {err:#}");
    ExitCode::FAILURE
}
