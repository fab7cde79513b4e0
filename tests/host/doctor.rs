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

    // kprobe.multi: none here; Debian's 5.10 and 6.1 builds lack it (no fprobe), 6.12
    // and 7.x have it on amd64 (6.12's arm64 build has no CONFIG_FPROBE).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let old = release.starts_with("5.10.");
    let multi = in_vm && !old && !release.starts_with("6.1.") && !cfg!(target_arch = "aarch64");
    assert_eq!(
        verdict(&doc, "kprobe.multi"),
        if multi { "works" } else { "fails" },
        "{doc}"
    );
    // uprobe.multi came with 6.6: not in Debian's 5.10 or 6.1.
    let uprobe_multi = !old && !release.starts_with("6.1.");
    assert_eq!(
        verdict(&doc, "uprobe.multi"),
        if uprobe_multi { "works" } else { "fails" },
        "{doc}"
    );
    // Every helper the reports call came between 5.11 and 5.17: Debian's 5.10 has none,
    // every later kernel all (those of fentry/fexit programs only where fentry loads).
    for helper in [
        "bpf_get_current_task_btf",
        "bpf_task_pt_regs",
        "bpf_get_current_ancestor_cgroup_id",
        "bpf_get_func_ip in kprobes",
        "bpf_get_attach_cookie",
    ] {
        let v = if old { "fails" } else { "works" };
        assert_eq!(verdict(&doc, helper), v, "{helper}: {doc}");
    }
    for helper in ["bpf_get_func_ip in fentry", "bpf_get_func_ret"] {
        let v = if in_vm && !old { "works" } else { "fails" };
        assert_eq!(verdict(&doc, helper), v, "{helper}: {doc}");
    }
    let slowopen = &doc["reports"].as_array().unwrap()[1];
    let note = if old {
        "arguments saved by entry probes"
    } else {
        "arguments read from saved registers"
    };
    assert_eq!(slowopen["note"], note, "{doc}");
    let calltree = &doc["reports"].as_array().unwrap()[3];
    assert_eq!(calltree["report"], "calltree");
    let method = match (in_vm, multi) {
        (false, _) => "uprobe.multi (--binary only)",
        (true, true) => "kprobe.multi",
        // 5.10: fentry/fexit programs cannot name their function (no bpf_get_func_ip).
        (true, false) if old => "kprobe/kretprobe",
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

/// For each report, the method doctor plans is the one the report then attaches: both
/// walk the same list, and the start line names the method.
#[test]
fn planned_methods_are_the_ones_the_reports_attach() {
    let _k = kernel_lock();
    let out = run(
        stapr().args(["doctor", "--format", "json"]),
        Duration::from_secs(60),
    );
    let doc: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    let in_vm = std::env::var_os("STAPR_VM").is_some();
    for plan in doc["reports"].as_array().unwrap() {
        let report = plan["report"].as_str().unwrap();
        let Some(method) = plan["method"].as_str() else {
            continue;
        };
        let args: Vec<&str> = match report {
            "nettop" | "disktop" => vec![report, "-i", "1", "--count", "1"],
            "slowopen" => vec![report, "-d", "1"],
            // On the host only --binary is planned; its own tests cover it.
            "calltree" if !in_vm => continue,
            _ => vec![report, "-f", "vfs_fsync", "-d", "1"],
        };
        let out = run(stapr().args(&args), Duration::from_secs(300));
        let start = format!("stapr {report}: {method}");
        assert!(
            out.stderr.lines().any(|l| l.starts_with(&start)),
            "doctor plans {method} for {report}; the report said:\n{}",
            out.stderr
        );
    }
    assert_nothing_attached();
}
