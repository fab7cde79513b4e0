//! Every `cargo xtask test` keeps its logs outside the clone, under
//! `~/.cache/stapr/runs/<UTC time>/` (the last [`KEPT`] runs): the whole output
//! (`output.log`), the host tests' output, each kernel line's console, and each failed
//! test's own output. When the command fails, its last lines list every failure, one
//! line each: where it ran, the test, the first line of its message, and its log.
//!
//! The command runs as a child of itself (`STAPR_RUN_DIR` set) whose output is copied to
//! the terminal and to `output.log`; the parent prints the list last, so nothing pushes
//! it out of a CI log's tail.

use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context as _, Result};

/// How many runs' logs are kept.
const KEPT: usize = 5;
/// Set for the child that runs the tests: the run's directory.
const ENV: &str = "STAPR_RUN_DIR";
/// Where the child records each failure, one tab-separated line each.
const FAILURES: &str = "failures.tsv";

/// One failed test (or a kernel line that failed as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `host`, or the kernel line's name.
    pub place: String,
    /// The test (`calltree::a_runaway_tree...`), or `-` for a whole line.
    pub test: String,
    /// The first line of its panic or assertion message, or the line's verdict.
    pub message: String,
    /// Its full log.
    pub log: PathBuf,
}

/// The directory of the run in progress (in the child that runs the tests).
pub fn current() -> Option<PathBuf> {
    std::env::var_os(ENV).map(PathBuf::from)
}

/// Runs `cargo xtask test ARGS` as a child whose output is kept, and ends with the list
/// of failures. In the child itself, runs `body`.
pub fn supervise(body: impl FnOnce() -> Result<()>) -> Result<()> {
    if current().is_some() {
        return body();
    }
    let root = crate::util::cache_dir().join("runs");
    let dir = root.join(run_name());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    prune(&root, KEPT);
    let log = std::fs::File::create(dir.join("output.log"))?;
    let log = Arc::new(Mutex::new(log));
    let exe = std::env::current_exe().context("finding xtask's own binary")?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV, &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the test run")?;
    let last_word = Arc::new(Mutex::new(String::new()));
    let copy = |from: Box<dyn Read + Send>, to_err: bool| {
        let log = log.clone();
        let last_word = last_word.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(from).split(b'\n').map_while(Result::ok) {
                let mut line = line;
                if let Some(w) = line.strip_prefix(b"xtask: ") {
                    *last_word.lock().unwrap_or_else(|e| e.into_inner()) =
                        String::from_utf8_lossy(w).into_owned();
                }
                line.push(b'\n');
                if to_err {
                    let _ = std::io::stderr().write_all(&line);
                } else {
                    let _ = std::io::stdout().write_all(&line);
                }
                let _ = log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_all(&line);
            }
        })
    };
    let out = copy(Box::new(child.stdout.take().context("stdout")?), false);
    let err = copy(Box::new(child.stderr.take().context("stderr")?), true);
    let status = child.wait().context("waiting for the test run")?;
    let _ = (out.join(), err.join());
    let _ = std::io::stdout().flush();
    let mut failures = read_failures(&dir.join(FAILURES));
    if status.success() {
        println!("xtask: this run's logs: {}", dir.display());
        return Ok(());
    }
    if failures.is_empty() {
        // Formatting, a lint or a build: the child's own last word says which.
        let word = last_word.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !word.is_empty() {
            failures.push(Failure {
                place: "xtask".into(),
                test: "-".into(),
                message: word,
                log: dir.join("output.log"),
            });
        }
    }
    bail!("{}", summary(&failures, &dir, &status.to_string()))
}

/// The closing list: one line per failure, then where the logs are.
fn summary(failures: &[Failure], dir: &Path, status: &str) -> String {
    let mut s = if failures.is_empty() {
        format!("the test command failed ({status}) before any test failed: see the output above")
    } else {
        format!(
            "{} {} failed:",
            failures.len(),
            if failures.len() == 1 {
                "test or kernel line"
            } else {
                "tests or kernel lines"
            }
        )
    };
    // The list fits a 40-line tail.
    for f in failures.iter().take(SHOWN) {
        s += &format!(
            "\n  FAILED {} {}: {} [log: {}]",
            f.place,
            f.test,
            f.message,
            f.log.display()
        );
    }
    if failures.len() > SHOWN {
        s += &format!(
            "\n  and {} more: {}",
            failures.len() - SHOWN,
            dir.join(FAILURES).display()
        );
    }
    s += &format!("\nxtask: this run's logs: {}", dir.display());
    s
}

/// Failures listed at most in the closing list.
const SHOWN: usize = 34;

/// Notes a failure for the closing list (in the child; nothing outside a run).
pub fn record(f: &Failure) {
    let Some(dir) = current() else {
        return;
    };
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{}\n",
        clean(&f.place),
        clean(&f.test),
        clean(&f.message),
        f.log.display()
    );
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(FAILURES))
    {
        let _ = file.write_all(line.as_bytes());
    }
}

fn read_failures(path: &Path) -> Vec<Failure> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            Some(Failure {
                place: f.next()?.to_owned(),
                test: f.next()?.to_owned(),
                message: f.next()?.to_owned(),
                log: PathBuf::from(f.next()?),
            })
        })
        .collect()
}

/// Records each failed test of libtest's output `text`, run at `place` (`host`, a kernel
/// line), for the closing list: its own section kept as `<place>-<test>.log`, else
/// `whole` as its log. Returns the failures found.
pub fn record_libtest(place: &str, text: &str, whole: &Path) -> Vec<TestFailure> {
    let failed = libtest_failures(text);
    for f in &failed {
        let own = keep(&format!("{place}-{}.log", f.name), &f.section);
        record(&Failure {
            place: place.into(),
            test: f.name.clone(),
            message: f.message.clone(),
            log: own.unwrap_or_else(|| whole.into()),
        });
    }
    failed
}

/// Keeps `text` as `name` in the run's directory; returns its path there (or None
/// outside a run).
pub fn keep(name: &str, text: &str) -> Option<PathBuf> {
    let path = current()?.join(name.replace(['/', ' '], "_"));
    std::fs::write(&path, text).ok()?;
    Some(path)
}

/// Keeps a copy of the file `from` as `name`; the copy's path, else `from`'s own.
pub fn keep_file(name: &str, from: &Path) -> PathBuf {
    std::fs::read(from)
        .ok()
        .and_then(|b| keep(name, &String::from_utf8_lossy(&b)))
        .unwrap_or_else(|| from.to_path_buf())
}

/// Removes all but the newest `kept` runs (their names sort by time).
fn prune(root: &Path, kept: usize) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut runs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    runs.sort();
    // The new run is among them.
    let old = runs.len().saturating_sub(kept);
    for r in &runs[..old] {
        let _ = std::fs::remove_dir_all(r);
    }
}

/// `2026-12-07T08-01-02Z`: UTC now, as a directory name that sorts by time.
fn run_name() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H-%M-%SZ").to_string()
}

/// A failed test in libtest's output: its name, the first line of its message, and its
/// whole section (`---- name stdout ----` up to the next section or the list of
/// failures).
#[derive(Debug, PartialEq, Eq)]
pub struct TestFailure {
    pub name: String,
    pub message: String,
    pub section: String,
}

/// The failure sections of libtest's output (lines as printed; a prefix before
/// `---- ` such as a console's is not expected).
pub fn libtest_failures(text: &str) -> Vec<TestFailure> {
    let mut found: Vec<TestFailure> = Vec::new();
    let mut open = false;
    let mut after_panic = false;
    for l in text.lines() {
        // A serial console ends its lines with CR LF.
        let l = l.trim_end_matches('\r');
        if let Some(name) = l
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            found.push(TestFailure {
                name: name.to_owned(),
                message: String::new(),
                section: String::new(),
            });
            open = true;
            after_panic = false;
        } else if l == "failures:" || l.starts_with("test result:") {
            open = false;
        }
        if !open {
            continue;
        }
        let f = found.last_mut().expect("a section is open");
        f.section.push_str(l);
        f.section.push('\n');
        if f.message.is_empty() {
            if let Some((_, at)) = l.split_once(" panicked at ") {
                // `thread 'x' (12) panicked at tests/host/a.rs:10:5:` and the message on
                // the next line, or all on one line in older toolchains.
                let (place, rest) = match at.split_once(": ") {
                    Some((p, r)) => (p, r.trim()),
                    None => (at.trim_end_matches(':'), ""),
                };
                if rest.is_empty() {
                    f.message = format!("panicked at {place}:");
                    after_panic = true;
                } else {
                    f.message = format!("panicked at {place}: {rest}");
                }
            }
        } else if after_panic && !l.trim().is_empty() {
            f.message = format!("{} {}", f.message, l.trim());
            after_panic = false;
        }
    }
    for f in &mut found {
        if f.message.is_empty() {
            f.message = "failed (no panic message: see its log)".into();
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBTEST: &str = "\
running 2 tests
test a ... ok
test b_fails ... FAILED

failures:

---- b_fails stdout ----
max RSS 3 KiB

thread 'b_fails' (420) panicked at tests/host/calltree.rs:937:5:
assertion `left == right` failed: sender
  left: 499
 right: 500

---- c_fails stdout ----
thread 'c_fails' panicked at tests/host/x.rs:1:2: all on one line
note: run with `RUST_BACKTRACE=1`

failures:
    b_fails
    c_fails

test result: FAILED. 1 passed; 2 failed; 0 ignored
";

    #[test]
    fn failures_name_themselves_with_their_first_message_line() {
        let f = libtest_failures(LIBTEST);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "b_fails");
        assert_eq!(
            f[0].message,
            "panicked at tests/host/calltree.rs:937:5: assertion `left == right` failed: sender"
        );
        assert!(f[0]
            .section
            .starts_with("---- b_fails stdout ----\nmax RSS"));
        assert!(f[0].section.contains("right: 500"));
        assert_eq!(f[1].name, "c_fails");
        assert_eq!(
            f[1].message,
            "panicked at tests/host/x.rs:1:2: all on one line"
        );
    }

    #[test]
    fn the_summary_lists_each_failure_on_one_line_and_ends_with_the_logs() {
        let f = Failure {
            place: "debian-6.12".into(),
            test: "disktop::stalled".into(),
            message: "panicked at a.rs:1:1: left 0".into(),
            log: "/r/debian-6.12-stalled.log".into(),
        };
        let s = summary(&[f.clone(), f], Path::new("/r"), "exit status: 1");
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            "  FAILED debian-6.12 disktop::stalled: panicked at a.rs:1:1: left 0 [log: /r/debian-6.12-stalled.log]"
        );
        assert_eq!(lines[3], "xtask: this run's logs: /r");
    }

    #[test]
    fn run_names_sort_by_time() {
        assert_eq!(run_name().len(), "2026-12-07T08-01-02Z".len());
        assert!(run_name().starts_with("20"));
    }
}
