//! `stapr doctor`: what works on this kernel, found out by loading and attaching the
//! smallest program of each type, and which method each report will use.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::{
    programs::{
        uprobe::UProbeScope, BtfTracePoint, FEntry, KProbe, RawTracePoint, TracePoint, UProbe,
    },
    Ebpf,
};
use serde::Serialize;

use crate::{
    report::{Facility as Fac, MethodSpec, Need, Report},
    runtime::{self, kernel_btf_present, object::program},
};

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/doctor"));

const PROG_TP: &str = "stapr_doc_tp";
const PROG_TP_BTF: &str = "stapr_doc_tpbtf";
const PROG_RAW_TP: &str = "stapr_doc_rawtp";
const PROG_KPROBE: &str = "stapr_doc_kprobe";
const PROG_FENTRY: &str = "stapr_doc_fentry";
const PROG_UPROBE: &str = "stapr_doc_uprobe";

#[cfg(test)]
pub const NAMES: crate::runtime::object::ObjectNames = crate::runtime::object::ObjectNames {
    object: "doctor",
    programs: &[
        PROG_TP,
        PROG_TP_BTF,
        PROG_RAW_TP,
        PROG_KPROBE,
        PROG_FENTRY,
        PROG_UPROBE,
    ],
    maps: &[],
    globals: &[],
};

/// A facility's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Works,
    Fails,
}

#[derive(Debug, Clone, Serialize)]
pub struct Facility {
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
    pub facilities: Vec<Facility>,
    pub reports: Vec<Plan>,
}

impl Findings {
    fn works(&self, facility: Fac) -> bool {
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
/// report's own list ([`Report::methods`], the order its attach code walks) whose needs
/// are all met.
pub fn plan(f: &Findings, saved_regs: bool) -> Vec<Plan> {
    let met = |n: &Need| match *n {
        Need::Btf => f.btf,
        Need::SavedRegs => saved_regs,
        Need::Works(facility) => f.works(facility),
    };
    Report::ALL
        .iter()
        .map(|&r| {
            let methods = r.methods();
            match methods.iter().find(|m| m.needs.iter().all(met)) {
                Some(m) => Plan {
                    report: r.name(),
                    method: Some(m.name.to_owned()),
                    note: m.note.to_owned(),
                    complete: !m.partial,
                },
                None => Plan {
                    report: r.name(),
                    method: None,
                    note: needs(&methods),
                    complete: false,
                },
            }
        })
        .collect()
}

/// "needs A and B, or C": what any of `methods` would need.
fn needs(methods: &[MethodSpec]) -> String {
    let mut ways: Vec<String> = Vec::new();
    for m in methods {
        let w = m
            .needs
            .iter()
            .map(|n| n.name())
            .collect::<Vec<_>>()
            .join(" and ");
        if !ways.contains(&w) {
            ways.push(w);
        }
    }
    format!("needs {}", ways.join(", or "))
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

fn verdict(r: std::result::Result<String, String>) -> (Verdict, String) {
    match r {
        Ok(d) => (Verdict::Works, d),
        Err(d) => (Verdict::Fails, d),
    }
}

/// A one-page BPF_MAP_TYPE_RINGBUF, closed at once.
fn ring_buffer_works() -> std::result::Result<String, String> {
    runtime::bpf_sys::ringbuf_create(4096)
        .map(|_fd| "BPF_MAP_TYPE_RINGBUF created".into())
        .map_err(|e| e.to_string())
}

/// The path of libc as mapped into this process (uprobe target).
fn libc_path() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))
        })
        .map(str::to_owned)
}

/// Loads and attaches one program of each type; everything is detached when it returns.
fn probe_facilities(btf: bool) -> Result<Vec<Facility>> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the doctor eBPF object")?;
    let aya_btf = if btf {
        Some(aya::Btf::from_sys_fs().context("reading kernel BTF")?)
    } else {
        None
    };
    let mut out = Vec::new();
    let mut push = |facility: Fac, r: std::result::Result<String, String>| {
        let (verdict, detail) = verdict(r);
        out.push(Facility {
            name: facility.name(),
            verdict,
            detail,
        });
    };

    let tp: &mut TracePoint = program(&mut ebpf, PROG_TP)?;
    push(
        Fac::Classic,
        tp.load()
            .and_then(|_| tp.attach("sched", "sched_process_exec").map(|_| ()))
            .map(|_| "attached to sched:sched_process_exec".into())
            .map_err(|e| runtime::program_error_reason(&e)),
    );

    match &aya_btf {
        Some(b) => {
            let p: &mut BtfTracePoint = program(&mut ebpf, PROG_TP_BTF)?;
            push(
                Fac::TpBtf,
                p.load("sched_process_exec", b)
                    .and_then(|_| p.attach().map(|_| ()))
                    .map(|_| "attached to sched_process_exec".into())
                    .map_err(|e| runtime::program_error_reason(&e)),
            );
        }
        None => push(Fac::TpBtf, Err("needs kernel BTF".into())),
    }

    let p: &mut RawTracePoint = program(&mut ebpf, PROG_RAW_TP)?;
    push(
        Fac::RawTp,
        p.load()
            .and_then(|_| p.attach("sched_process_exec").map(|_| ()))
            .map(|_| "attached to sched_process_exec".into())
            .map_err(|e| runtime::program_error_reason(&e)),
    );

    let p: &mut KProbe = program(&mut ebpf, PROG_KPROBE)?;
    let kprobes = p
        .load()
        .and_then(|_| p.attach("vfs_read", 0).map(|_| ()))
        .map(|_| "attached to vfs_read".into())
        .map_err(|e| {
            if runtime::kprobe_pmu_present() {
                runtime::program_error_reason(&e)
            } else {
                runtime::NO_KPROBE_PMU.into()
            }
        });
    let kprobes_work = kprobes.is_ok();
    push(Fac::Kprobes, kprobes);

    match &aya_btf {
        Some(b) => push(
            Fac::Fentry,
            fentry_on_vfs_read(&mut ebpf, b).map(|_| "fentry attached to vfs_read".into()),
        ),
        None => push(Fac::Fentry, Err("needs kernel BTF".into())),
    }

    let p: &mut UProbe = program(&mut ebpf, PROG_UPROBE)?;
    push(
        Fac::Uprobes,
        // A statically linked stapr (the arm64 build) carries getpid itself.
        match libc_path().or_else(|| {
            std::fs::read_link("/proc/self/exe")
                .ok()
                .map(|p| p.display().to_string())
        }) {
            Some(libc) => p
                .load()
                .and_then(|_| {
                    p.attach("getpid", &libc, UProbeScope::AllProcesses)
                        .map(|_| ())
                })
                .map(|_| format!("attached to getpid in {libc}"))
                .map_err(|e| runtime::program_error_reason(&e)),
            None => Err("neither libc nor stapr's own executable found".into()),
        },
    );

    push(Fac::Ringbuf, ring_buffer_works());

    let multi = if kprobes_work {
        kprobe_multi_works()
    } else {
        Err("needs kprobes".into())
    };
    push(Fac::KprobeMulti, multi);
    Ok(out)
}

fn fentry_on_vfs_read(ebpf: &mut Ebpf, btf: &aya::Btf) -> std::result::Result<(), String> {
    let p: &mut FEntry = program(ebpf, PROG_FENTRY).map_err(|e| e.to_string())?;
    p.load("vfs_read", btf)
        .and_then(|_| p.attach().map(|_| ()))
        .map_err(|e| runtime::program_error_reason(&e))
}

/// Whether an fentry program loads and attaches (to vfs_read); detached on return.
pub fn fentry_works() -> std::result::Result<(), String> {
    if !kernel_btf_present() {
        return Err("needs kernel BTF".into());
    }
    let mut ebpf = Ebpf::load(OBJECT).map_err(|e| format!("loading the doctor object: {e}"))?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF: {e}"))?;
    fentry_on_vfs_read(&mut ebpf, &btf)
}

/// A two-instruction kprobe program (`r0 = 0; exit`) loaded for kprobe.multi and linked
/// to vfs_read with BPF_LINK_CREATE; closed on return.
fn kprobe_multi_works() -> std::result::Result<String, String> {
    use crate::runtime::bpf_sys;
    const MOV_R0_0: u64 = 0xb7;
    const EXIT: u64 = 0x95;
    let prog = bpf_sys::prog_load(
        &bpf_sys::LoadSpec {
            prog_type: bpf_sys::PROG_TYPE_KPROBE,
            expected_attach_type: bpf_sys::ATTACH_TRACE_KPROBE_MULTI,
            name: "stapr_doc_multi",
            attach_btf_id: 0,
            attach_btf_obj: None,
        },
        &[MOV_R0_0, EXIT],
    )
    .map_err(|e| format!("{e:#}"))?;
    use std::os::fd::AsFd;
    bpf_sys::kprobe_multi(prog.as_fd(), &["vfs_read".to_owned()], &[0], false)
        .map(|_link| "kprobe.multi link on vfs_read".into())
        .map_err(|e| format!("{e:#}"))
}

/// Everything `stapr doctor` reports; touches the kernel.
pub fn examine() -> Result<Findings> {
    runtime::prepare()?;
    let btf = kernel_btf_present();
    let mut f = Findings {
        kernel: kernel_release(),
        arch: std::env::consts::ARCH,
        btf,
        lockdown: lockdown(),
        tracefs: runtime::tracefs::ensure_mounted().is_ok(),
        facilities: probe_facilities(btf)?,
        reports: Vec::new(),
    };
    f.reports = plan(
        &f,
        cfg!(any(target_arch = "x86_64", target_arch = "aarch64")),
    );
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

    fn findings(works: &[Fac], btf: bool) -> Findings {
        Findings {
            kernel: "6.18.0".into(),
            arch: "x86_64",
            btf,
            lockdown: "confidentiality".into(),
            tracefs: true,
            facilities: Fac::ALL
                .iter()
                .map(|&f| Facility {
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

    #[test]
    fn this_host() {
        // Tracepoints of every kind, uprobes, ring buffer; no kprobes, fentry refused.
        let f = findings(
            &[
                Fac::Classic,
                Fac::TpBtf,
                Fac::RawTp,
                Fac::Uprobes,
                Fac::Ringbuf,
            ],
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
        assert!(text(&f)
            .contains("calltree: not fully usable here; only uprobes (--binary only) works"));
    }

    #[test]
    fn a_debian_kernel() {
        let all = [
            Fac::Classic,
            Fac::TpBtf,
            Fac::RawTp,
            Fac::Kprobes,
            Fac::Fentry,
            Fac::Uprobes,
            Fac::Ringbuf,
        ];
        let f = findings(&all, true);
        assert_eq!(
            methods(&f, true)[2].as_deref(),
            Some("fexit on vfs_read and vfs_write")
        );
        assert_eq!(methods(&f, true)[3].as_deref(), Some("fentry/fexit"));
        assert!(plan(&f, true).iter().all(|p| p.complete));
        let f = findings(&[all.as_slice(), &[Fac::KprobeMulti]].concat(), true);
        assert_eq!(methods(&f, true)[3].as_deref(), Some("kprobe.multi"));
        let f = findings(&[Fac::Classic, Fac::Kprobes, Fac::Ringbuf], false);
        assert_eq!(methods(&f, true)[3].as_deref(), Some("kprobe/kretprobe"));
        assert_eq!(
            plan(&f, true)[1].note,
            "arguments saved by entry probes",
            "no BTF: slowopen's entry probes save open's arguments"
        );
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
