//! Process helpers for the tasks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command to completion; fails with its name when it fails.
pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{} failed ({st})", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None when it cannot run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    status(Command::new(cargo).args(args).current_dir(workspace_root()))
}

#[derive(Debug, Default)]
pub struct TestTotals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Adds up a `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
fn add_result(line: &str, t: &mut TestTotals) {
    let Some(rest) = line.strip_prefix("test result: ") else {
        return;
    };
    for part in rest.split(';') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let n = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match words.last() {
            Some(&"passed") => t.passed += n(words.len() - 2),
            Some(&"failed") => t.failed += n(words.len() - 2),
            Some(&"ignored") => t.ignored += n(words.len() - 2),
            _ => {}
        }
    }
}

/// Runs `cargo test ...`, passing its output through, and totals its result lines. A
/// failing run still returns its totals when it printed any.
pub fn cargo_test(args: &[&str]) -> Result<TestTotals> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let mut totals = TestTotals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut all = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        add_result(&line, &mut totals);
        all.push_str(&line);
        all.push('\n');
    }
    let st = child.wait().context("waiting for cargo test")?;
    let log = crate::runs::keep("host-tests.log", &all).unwrap_or_default();
    crate::runs::record_libtest("host", &all, &log);
    if !st.success() && totals.failed == 0 {
        bail!("cargo test failed ({st})");
    }
    Ok(totals)
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `program args` as root: directly when we are root, through sudo otherwise.
pub fn exec_as_root(program: &Path, args: &[String]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new(program)
    } else if output("sudo", &["-V"]).is_some() {
        let mut c = Command::new("sudo");
        c.arg("--").arg(program);
        c
    } else {
        bail!(
            "stapr needs root and sudo is not installed: run `{} {}` as root",
            program.display(),
            args.join(" ")
        );
    };
    let st = cmd.args(args).status().context("starting stapr")?;
    std::process::exit(st.code().unwrap_or(1));
}

/// `cargo install` puts bpf-linker in $CARGO_HOME/bin; the eBPF build finds it on PATH.
pub fn cargo_bin_on_path() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    let Some(bin) = home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)));
    if let Ok(joined) = joined {
        // SAFETY: called at start-up, before any thread is spawned.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

/// stapr's cache outside the source tree (bpf-linker's LLVM prefix, Debian kernels):
/// `$XDG_CACHE_HOME/stapr`, else `$HOME/.cache/stapr`, else the user's home from passwd.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Path::new(&x).join("stapr");
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if is_root() {
                PathBuf::from("/root")
            } else {
                PathBuf::from("/tmp")
            }
        });
    home.join(".cache/stapr")
}
