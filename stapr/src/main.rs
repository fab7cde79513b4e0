//! stapr: SystemTap-style tracing for Linux on eBPF.

mod cli;
mod doctor;
mod export;
mod metrics;
mod report;
mod runtime;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

use crate::{cli::Cli, runtime::UserError};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_failure(err),
    };
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure(&err),
    }
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
            eprintln!("stapr: {}{tail}", shorten(line));
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
        eprintln!("stapr: {}", shorten(&user.to_string()));
        return ExitCode::from(2);
    }
    if let Some(line) = runtime::failure::exhausted(err) {
        eprintln!("stapr: {line}");
        return ExitCode::from(2);
    }
    eprintln!("stapr: error: {}", shorten(&runtime::one_line(err)));
    ExitCode::FAILURE
}

/// The longest quoted value an error line repeats whole, and the longest other word (a
/// path, say).
const QUOTED_MAX: usize = 40;
const WORD_MAX: usize = 100;

/// An error line with each long quoted value ('...') and each very long word cut to its
/// start: a 100 KB argument must not come back as a 100 KB line.
fn shorten(line: &str) -> String {
    let cut = |s: &str, max: usize| -> String {
        if s.chars().count() > max {
            let head: String = s.chars().take(max).collect();
            format!("{head}...")
        } else {
            s.to_owned()
        }
    };
    line.split('\'')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                cut(part, QUOTED_MAX)
            } else {
                part.split(' ')
                    .map(|w| cut(w, WORD_MAX))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        })
        .collect::<Vec<_>>()
        .join("'")
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(100_000);
        let line = super::shorten(&format!(
            "'{long}' cannot match: command names are 1 to 15 bytes"
        ));
        assert_eq!(
            line,
            format!(
                "'{}...' cannot match: command names are 1 to 15 bytes",
                "x".repeat(40)
            )
        );
        assert_eq!(
            super::shorten("invalid value 'abc' for '--min'"),
            "invalid value 'abc' for '--min'"
        );
        let path = format!("/{}", "p".repeat(10_000));
        let line = super::shorten(&format!("cannot read {path}: No such file"));
        assert_eq!(
            line,
            format!("cannot read {}... No such file", &path[..100])
        );
    }
}
