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
        Command::Nettop(a) => nettop::run(a.into()),
        Command::Disktop(a) => disktop::run(a.into()),
        Command::Slowopen(a) => slowopen::run(a.into()),
        Command::Calltree(a) => calltree::run(a.into()),
        Command::Export(a) => export::run(a.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(&err),
    }
}

/// Exit 0 when every report can do its whole job here, 1 otherwise.
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
