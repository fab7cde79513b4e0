//! Bad input: one line on stderr and exit code 2, before anything touches the kernel.

use std::{os::unix::process::CommandExt, time::Duration};

use integration_tests::{run, stapr, Outcome};

fn assert_usage_error(out: &Outcome, mentions: &str) {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line: {:?}", out.stderr);
    assert!(lines[0].starts_with("stapr: "), "{:?}", lines[0]);
    assert!(
        lines[0].contains(mentions),
        "{:?} lacks {mentions:?}",
        lines[0]
    );
}

fn stapr_with(args: &[&str]) -> Outcome {
    run(stapr().args(args), Duration::from_secs(20))
}

#[test]
fn zero_interval() {
    assert_usage_error(&stapr_with(&["nettop", "-i", "0"]), "greater than zero");
}

#[test]
fn non_numeric_interval() {
    assert_usage_error(
        &stapr_with(&["nettop", "-i", "abc"]),
        "invalid duration 'abc'",
    );
}

#[test]
fn negative_pid() {
    assert_usage_error(&stapr_with(&["nettop", "--pid", "-3"]), "'-3'");
}

#[test]
fn unknown_sort_key() {
    assert_usage_error(&stapr_with(&["nettop", "-s", "bogus"]), "bogus");
}

#[test]
fn unknown_receive_charging_names_the_two() {
    for report in ["nettop", "export"] {
        let out = stapr_with(&[report, "--recv-at", "softirq"]);
        assert_usage_error(&out, "softirq");
        assert!(
            out.stderr.contains("socket") && out.stderr.contains("device"),
            "{out:?}"
        );
    }
}

#[test]
fn unknown_report() {
    assert_usage_error(&stapr_with(&["nettopp"]), "nettopp");
}

#[test]
fn not_root() {
    let out = run(
        stapr()
            .args(["nettop", "-i", "1", "--count", "1"])
            .uid(65534)
            .gid(65534),
        Duration::from_secs(20),
    );
    assert_usage_error(&out, "needs root (or CAP_BPF and CAP_PERFMON)");
}

#[test]
fn help_and_version_exit_zero() {
    let out = stapr_with(&["nettop", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("softirq"),
        "help must say how receives are charged"
    );
    let out = stapr_with(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("stapr "), "{out:?}");
}

#[test]
fn slowopen_bad_min() {
    assert_usage_error(
        &stapr_with(&["slowopen", "--min", "abc"]),
        "invalid duration 'abc'",
    );
    assert_usage_error(
        &stapr_with(&["slowopen", "--min", "-1s"]),
        "invalid duration '-1s'",
    );
}
