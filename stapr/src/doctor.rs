//! `stapr doctor`: what works on this kernel, found out by loading and attaching the
//! smallest program of each type, and which method each report will use.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::{
    report::{self, method::Spec},
    runtime::{
        self,
        features::{self, Facility, Need},
    },
};

/// A facility's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Works,
    Fails,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tried {
    pub name: &'static str,
    pub verdict: Verdict,
    /// Why it fails, or what was tried.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub report: &'static str,
    /// The method the report will use; None: it cannot run here.
    pub method: Option<String>,
    pub note: String,
    /// The method does the report's whole job (false: nothing, or only a part such as
    /// calltree's `--binary`, works here).
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub kernel: String,
    /// The machine's architecture (x86_64, aarch64).
    pub arch: &'static str,
    pub btf: bool,
    pub lockdown: String,
    pub tracefs: bool,
    pub facilities: Vec<Tried>,
    pub reports: Vec<Plan>,
}

impl Findings {
    fn works(&self, facility: Facility) -> bool {
        self.facilities
            .iter()
            .any(|f| f.name == facility.name() && f.verdict == Verdict::Works)
    }

    /// Every report can do its whole job here.
    pub fn all_runnable(&self) -> bool {
        self.reports.iter().all(|p| p.complete)
    }
}

/// Pure: which method each report will use given the facilities: the first of the
/// report's own list ([`report::Report::ways`], the order its attach code walks) whose
/// needs are all met.
pub fn plan(f: &Findings, saved_regs: bool) -> Vec<Plan> {
    let met = |n: &Need| match *n {
        Need::Btf => f.btf,
        Need::SavedRegs => saved_regs,
        Need::Works(facility) => f.works(facility),
    };
    report::ALL
        .iter()
        .map(|r| {
            let ways: Vec<&Spec> = (r.ways)().into_iter().filter(|w| w.planned()).collect();
            match ways.iter().find(|m| m.needs.iter().all(met)) {
                Some(m) => Plan {
                    report: r.name,
                    method: Some(m.name.to_owned()),
                    note: m.note.to_owned(),
                    complete: !m.partial,
                },
                None => Plan {
                    report: r.name,
                    method: None,
                    note: needs(&ways),
                    complete: false,
                },
            }
        })
        .collect()
}

/// "needs A and B, or C": what any of `ways` would need.
fn needs(ways: &[&Spec]) -> String {
    let mut out: Vec<String> = Vec::new();
    for m in ways {
        let w = m
            .needs
            .iter()
            .map(|n| n.name())
            .collect::<Vec<_>>()
            .join(" and ");
        if !out.contains(&w) {
            out.push(w);
        }
    }
    format!("needs {}", out.join(", or "))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The bracketed word of /sys/kernel/security/lockdown: `none [integrity] confidentiality`.
fn lockdown() -> String {
    let path = "/sys/kernel/security/lockdown";
    if !Path::new(path).exists() {
        runtime::mount_if_missing("securityfs", "/sys/kernel/security");
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let start = s.find('[')?;
            let end = s[start..].find(']')?;
            Some(s[start + 1..start + end].to_owned())
        })
        .unwrap_or_else(|| "unknown (no /sys/kernel/security/lockdown)".into())
}

/// `stapr doctor`: exit 0 when every report can do its whole job here, 1 otherwise.
pub fn run(format: runtime::Format) -> Result<()> {
    let f = examine()?;
    let text = match format {
        runtime::Format::Text => self::text(&f),
        runtime::Format::Json => json(&f),
    };
    runtime::emit(&text)?;
    if !f.all_runnable() {
        std::process::exit(1);
    }
    Ok(())
}

/// Everything `stapr doctor` reports; touches the kernel.
pub fn examine() -> Result<Findings> {
    runtime::prepare()?;
    let facilities = Facility::ALL
        .iter()
        .map(|&facility| {
            let (verdict, detail) = match features::check(facility) {
                Ok(d) => (Verdict::Works, d.clone()),
                Err(d) => (Verdict::Fails, d.clone()),
            };
            Tried {
                name: facility.name(),
                verdict,
                detail,
            }
        })
        .collect();
    let mut f = Findings {
        kernel: kernel_release(),
        arch: std::env::consts::ARCH,
        btf: features::btf(),
        lockdown: lockdown(),
        tracefs: runtime::tracefs::ensure_mounted().is_ok(),
        facilities,
        reports: Vec::new(),
    };
    f.reports = plan(&f, features::saved_regs());
    Ok(f)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Pure: the text screen.
pub fn text(f: &Findings) -> String {
    let mut out = String::new();
    out.push_str(&format!("kernel    {} ({})\n", f.kernel, f.arch));
    out.push_str(&format!("BTF       {}\n", yes_no(f.btf)));
    out.push_str(&format!("lockdown  {}\n", f.lockdown));
    out.push_str(&format!("tracefs   {}\n\n", yes_no(f.tracefs)));
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(80)
        .set_header(["facility", "works", "detail"]);
    for fac in &f.facilities {
        let works = match fac.verdict {
            Verdict::Works => "yes",
            Verdict::Fails => "no",
        };
        t.add_row([fac.name, works, fac.detail.as_str()]);
    }
    out.push_str(&trimmed(&t.to_string()));
    out.push('\n');
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(80)
        .set_header(["report", "method", "note"]);
    for p in &f.reports {
        t.add_row([
            p.report,
            p.method.as_deref().unwrap_or("cannot run"),
            p.note.as_str(),
        ]);
    }
    out.push_str(&trimmed(&t.to_string()));
    for p in f.reports.iter().filter(|p| !p.complete) {
        let works = match &p.method {
            Some(m) => format!("only {m} works"),
            None => "nothing works".to_owned(),
        };
        out.push_str(&format!("\n{}: not fully usable here; {works}\n", p.report));
    }
    out
}

/// comfy-table pads every cell; the screen needs no trailing blanks.
fn trimmed(table: &str) -> String {
    table
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect()
}

/// Pure: the same as one JSON object.
pub fn json(f: &Findings) -> String {
    serde_json::to_string(f).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    use Facility as Fac;

    fn findings(works: &[Fac], btf: bool) -> Findings {
        Findings {
            kernel: "6.18.0".into(),
            arch: "x86_64",
            btf,
            lockdown: "confidentiality".into(),
            tracefs: true,
            facilities: Fac::ALL
                .iter()
                .map(|&f| Tried {
                    name: f.name(),
                    verdict: if works.contains(&f) {
                        Verdict::Works
                    } else {
                        Verdict::Fails
                    },
                    detail: String::new(),
                })
                .collect(),
            reports: Vec::new(),
        }
    }

    fn methods(f: &Findings, x86: bool) -> Vec<Option<String>> {
        plan(f, x86).into_iter().map(|p| p.method).collect()
    }

    /// Every program type and attach kind a Debian kernel has (5.10 on; kprobe.multi and
    /// uprobe.multi aside).
    const PROGRAM_TYPES: [Fac; 7] = [
        Fac::Classic,
        Fac::TpBtf,
        Fac::RawTp,
        Fac::Kprobes,
        Fac::Fentry,
        Fac::Uprobes,
        Fac::Ringbuf,
    ];

    /// The helpers a 5.17 or later kernel offers every program type stapr uses.
    const HELPERS: [Fac; 7] = [
        Fac::TaskBtf,
        Fac::TaskPtRegs,
        Fac::AncestorCgroup,
        Fac::KprobeFuncIp,
        Fac::AttachCookie,
        Fac::FentryFuncIp,
        Fac::FuncRet,
    ];

    #[test]
    fn this_host() {
        // Tracepoints of every kind, uprobes, ring buffer; no kprobes, fentry refused
        // (with it the helpers of fentry programs).
        let f = findings(
            &[
                &[
                    Fac::Classic,
                    Fac::TpBtf,
                    Fac::RawTp,
                    Fac::Uprobes,
                    Fac::Ringbuf,
                ],
                &HELPERS[..5],
            ]
            .concat(),
            true,
        );
        assert_eq!(
            methods(&f, true),
            [
                Some("BTF tracepoints (tp_btf)".to_owned()),
                Some("syscall tracepoints".to_owned()),
                Some("syscall exit tracepoints".to_owned()),
                Some("uprobes (--binary only)".to_owned()),
            ]
        );
        // calltree can trace programs but not kernel functions: not its whole job.
        let p = plan(&f, true);
        assert_eq!(
            p.iter().map(|p| p.complete).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        let mut f = f;
        f.reports = p;
        assert!(!f.all_runnable());
        let mut with_multi = f.clone();
        with_multi
            .facilities
            .iter_mut()
            .filter(|t| t.name == Fac::UprobeMulti.name())
            .for_each(|t| t.verdict = Verdict::Works);
        assert_eq!(
            methods(&with_multi, true)[3].as_deref(),
            Some("uprobe.multi (--binary only)"),
            "one link for all of a program's functions where the kernel has it"
        );
        assert!(text(&f)
            .contains("calltree: not fully usable here; only uprobes (--binary only) works"));
    }

    #[test]
    fn a_debian_kernel() {
        let all = PROGRAM_TYPES;
        let f = findings(&[all.as_slice(), &HELPERS].concat(), true);
        assert_eq!(
            methods(&f, true)[2].as_deref(),
            Some("fexit on vfs_read and vfs_write")
        );
        assert_eq!(methods(&f, true)[3].as_deref(), Some("fentry/fexit"));
        assert!(plan(&f, true).iter().all(|p| p.complete));
        let f = findings(
            &[all.as_slice(), &HELPERS, &[Fac::KprobeMulti]].concat(),
            true,
        );
        assert_eq!(methods(&f, true)[3].as_deref(), Some("kprobe.multi"));
        let f = findings(&[Fac::Classic, Fac::Kprobes, Fac::Ringbuf], false);
        assert_eq!(methods(&f, true)[3].as_deref(), Some("kprobe/kretprobe"));
        assert_eq!(
            plan(&f, true)[1].note,
            "arguments saved by entry probes",
            "no BTF: slowopen's entry probes save open's arguments"
        );
    }

    /// Debian 11's 5.10: every program type, none of the helpers.
    #[test]
    fn a_kernel_without_the_newer_helpers() {
        let f = findings(&PROGRAM_TYPES, true);
        let p = plan(&f, true);
        assert_eq!(
            p.iter().map(|p| p.method.as_deref()).collect::<Vec<_>>(),
            [
                Some("BTF tracepoints (tp_btf)"),
                Some("syscall tracepoints"),
                Some("fexit on vfs_read and vfs_write"),
                Some("kprobe/kretprobe"),
            ]
        );
        assert_eq!(p[1].note, "arguments saved by entry probes");
        assert!(
            p[3].note.contains("the thread's last entry"),
            "{}",
            p[3].note
        );
        assert!(p.iter().all(|p| p.complete));
    }

    #[test]
    fn without_btf_or_tracepoints() {
        let f = findings(&[Fac::Classic, Fac::Ringbuf], false);
        let m = methods(&f, true);
        assert_eq!(m[0].as_deref(), Some("classic tracepoints"));
        // Without BTF disktop only has --block.
        assert_eq!(m[2].as_deref(), Some("block layer requests (--block only)"));
        assert!(!plan(&f, true)[2].complete);
        let f = findings(&[], true);
        let p = plan(&f, true);
        assert!(p.iter().all(|p| p.method.is_none() && !p.complete));
        assert_eq!(
            p[0].note,
            "needs kernel BTF and BTF tracepoints (tp_btf), or classic tracepoints"
        );
        let f = findings(&[Fac::Classic, Fac::Ringbuf], true);
        assert_eq!(
            methods(&f, false)[2].as_deref(),
            Some("block layer requests (--block only)"),
            "the syscall path needs an architecture whose saved registers stapr knows"
        );
    }

    #[test]
    fn json_is_one_object() {
        let mut f = findings(&[Fac::Classic], true);
        f.reports = plan(&f, true);
        let v: serde_json::Value = serde_json::from_str(json(&f).trim()).unwrap();
        assert_eq!(v["facilities"][0]["verdict"], "works");
        // slowopen needs a ring buffer, which this one lacks.
        assert_eq!(v["reports"][1]["method"], serde_json::Value::Null);
        assert_eq!(v["reports"][1]["complete"], false);
        assert_eq!(json(&f).lines().count(), 1);
    }

    #[test]
    fn text_fits_80_columns() {
        let mut f = findings(&[Fac::Classic, Fac::TpBtf], true);
        f.facilities[3].detail =
            "no kprobe PMU (kernel built without CONFIG_KPROBES) and a long tail of words".into();
        f.reports = plan(&f, true);
        for line in text(&f).lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }
}
