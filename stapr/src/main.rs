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
/// start: a 100 KB argument must not come back as a 100 KB line. A quote opens after a
/// non-alphanumeric character and closes before one, so an apostrophe inside a word
/// (the kernel's verifier) is text.
fn shorten(line: &str) -> String {
    let cut = |s: &str, max: usize| -> String {
        if s.chars().count() > max {
            let head: String = s.chars().take(max).collect();
            format!("{head}...")
        } else {
            s.to_owned()
        }
    };
    let words = |s: &str| {
        s.split(' ')
            .map(|w| cut(w, WORD_MAX))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let alnum = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let quote = |s: &str, from: usize, opening: bool| {
        s[from..]
            .char_indices()
            .filter(|&(_, c)| c == '\'')
            .map(|(i, _)| from + i)
            .find(|&i| {
                // A quote is one byte: i + 1 is the next character's start.
                let around = if opening {
                    s[..i].chars().next_back()
                } else {
                    s[i + 1..].chars().next()
                };
                !alnum(around)
            })
    };
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = quote(rest, 0, true) {
        let Some(close) = quote(rest, open + 1, false) else {
            break;
        };
        out.push_str(&words(&rest[..open]));
        out.push('\'');
        out.push_str(&cut(&rest[open + 1..close], QUOTED_MAX));
        out.push('\'');
        rest = &rest[close + 1..];
    }
    out.push_str(&words(rest));
    out
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
        // Apostrophes inside words are not quotes: the line stays whole.
        let whole = "loading BTF tracepoint net_dev_start_xmit: the kernel's verifier refused the program (Permission denied; its log is in /tmp/stapr-x/verifier.log)";
        assert_eq!(super::shorten(whole), whole);
        let long = "x".repeat(50);
        assert_eq!(
            super::shorten(&format!("a packet's '{long}' isn't known")),
            format!("a packet's '{}...' isn't known", "x".repeat(40))
        );
        let accented = "invalid value 'é' for '--min <MIN>': invalid duration 'é'";
        assert_eq!(super::shorten(accented), accented);
        let path = format!("/{}", "p".repeat(10_000));
        let line = super::shorten(&format!("cannot read {path}: No such file"));
        assert_eq!(
            line,
            format!("cannot read {}... No such file", &path[..100])
        );
    }
}
