//! `stapr doctor` against the running kernel: its verdicts must match what this kernel is
//! known to allow. On the development host: tracepoints yes, kprobes absent, fentry
//! refused. Inside the Debian VMs (STAPR_VM=1, set by the harness's init): kprobes and
//! fentry work.

use std::{path::Path, time::Duration};

use integration_tests::{assert_nothing_attached, kernel_lock, run, stapr};
use serde_json::Value;

fn verdict(doc: &Value, facility: &str) -> String {
    doc["facilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == facility)
        .unwrap_or_else(|| panic!("{facility} missing: {doc}"))["verdict"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn verdicts_match_this_kernel() {
    let _k = kernel_lock();
    let out = run(
        stapr().args(["doctor", "--format", "json"]),
        Duration::from_secs(60),
    );
    // On the host calltree cannot trace kernel functions (no kprobes, fentry refused):
    // doctor says so with exit 1. The Debian kernels run every report whole.
    let in_vm = std::env::var_os("STAPR_VM").is_some();
    assert_eq!(
        out.status.code(),
        Some(if in_vm { 0 } else { 1 }),
        "{out:?}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object: {}", out.stdout);
    let doc: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(doc["btf"], true);
    assert_eq!(doc["arch"], std::env::consts::ARCH, "{doc}");
    for f in [
        "classic tracepoints",
        "BTF tracepoints (tp_btf)",
        "raw tracepoints",
        "uprobes",
        "ring buffer",
    ] {
        assert_eq!(verdict(&doc, f), "works", "{f}: {doc}");
    }
    // Independent evidence for kprobes: the kprobe PMU exists exactly when they work.
    let pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(
        verdict(&doc, "kprobes"),
        if pmu { "works" } else { "fails" },
        "{doc}"
    );
    let expected = if in_vm { "works" } else { "fails" };
    assert_eq!(verdict(&doc, "kprobes"), expected, "{doc}");
    assert_eq!(verdict(&doc, "fentry/fexit"), expected, "{doc}");
    let disktop = &doc["reports"].as_array().unwrap()[2];
    assert_eq!(disktop["report"], "disktop");
    let method = if in_vm {
        "fexit on vfs_read and vfs_write"
    } else {
        "syscall exit tracepoints"
    };
    assert_eq!(disktop["method"], method, "{doc}");

    // kprobe.multi: none here; Debian's 6.1 builds lack it (no fprobe), 6.12 has it on
    // amd64 (its arm64 build has no CONFIG_FPROBE).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let multi = in_vm && !release.starts_with("6.1.") && !cfg!(target_arch = "aarch64");
    assert_eq!(
        verdict(&doc, "kprobe.multi"),
        if multi { "works" } else { "fails" },
        "{doc}"
    );
    // uprobe.multi came with 6.6: not in Debian's 6.1.
    let uprobe_multi = !release.starts_with("6.1.");
    assert_eq!(
        verdict(&doc, "uprobe.multi"),
        if uprobe_multi { "works" } else { "fails" },
        "{doc}"
    );
    let calltree = &doc["reports"].as_array().unwrap()[3];
    assert_eq!(calltree["report"], "calltree");
    let method = match (in_vm, multi) {
        (false, _) => "uprobe.multi (--binary only)",
        (true, true) => "kprobe.multi",
        (true, false) => "fentry/fexit",
    };
    assert_eq!(calltree["method"], method, "{doc}");
    assert_eq!(calltree["complete"], in_vm, "{doc}");
    assert_nothing_attached();
}

#[test]
fn text_screen_names_every_facility_and_report() {
    let _k = kernel_lock();
    let out = run(stapr().arg("doctor"), Duration::from_secs(60));
    let in_vm = std::env::var_os("STAPR_VM").is_some();
    assert_eq!(
        out.status.code(),
        Some(if in_vm { 0 } else { 1 }),
        "{out:?}"
    );
    if !in_vm {
        assert!(
            out.stdout.contains(
                "calltree: not fully usable here; only uprobe.multi (--binary only) works"
            ),
            "{}",
            out.stdout
        );
    }
    for word in [
        "kernel",
        "BTF",
        "lockdown",
        "tracefs",
        "kprobes",
        "fentry/fexit",
        "uprobes",
        "ring buffer",
        "nettop",
        "slowopen",
        "disktop",
        "kprobe.multi",
        "uprobe.multi",
        "calltree",
    ] {
        assert!(out.stdout.contains(word), "{word} missing:\n{}", out.stdout);
    }
    for line in out.stdout.lines() {
        assert!(
            line.chars().count() <= 80 && !line.ends_with(' '),
            "{line:?}"
        );
    }
    assert_nothing_attached();
}
