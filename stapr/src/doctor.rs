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

use crate::runtime::{self, kernel_btf_present, program};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/doctor"));

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
}

#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub kernel: String,
    pub btf: bool,
    pub lockdown: String,
    pub tracefs: bool,
    pub facilities: Vec<Facility>,
    pub reports: Vec<Plan>,
}

impl Findings {
    fn works(&self, name: &str) -> bool {
        self.facilities
            .iter()
            .any(|f| f.name == name && f.verdict == Verdict::Works)
    }

    /// Every report can run.
    pub fn all_runnable(&self) -> bool {
        self.reports.iter().all(|p| p.method.is_some())
    }
}

pub const CLASSIC: &str = "classic tracepoints";
pub const TP_BTF: &str = "BTF tracepoints (tp_btf)";
pub const RAW_TP: &str = "raw tracepoints";
pub const KPROBES: &str = "kprobes";
pub const KPROBE_MULTI: &str = "kprobe.multi";
pub const FENTRY: &str = "fentry/fexit";
pub const UPROBES: &str = "uprobes";
pub const RINGBUF: &str = "ring buffer";

/// Pure: which method each report picks given the facilities (the same order of
/// preference the reports apply when they attach).
pub fn plan(f: &Findings, x86_64: bool) -> Vec<Plan> {
    let classic = f.works(CLASSIC);
    let nettop = if f.btf && f.works(TP_BTF) {
        (
            Some(TP_BTF.to_owned()),
            "net:net_dev_xmit, net:netif_receive_skb".to_owned(),
        )
    } else if classic {
        (
            Some(CLASSIC.to_owned()),
            "BTF tracepoints unavailable".to_owned(),
        )
    } else {
        (None, "needs BTF or classic tracepoints".to_owned())
    };
    let slowopen = if classic && f.works(RINGBUF) {
        let args = if f.btf && x86_64 {
            "arguments read from saved registers"
        } else {
            "arguments saved by entry probes"
        };
        (Some("syscall tracepoints".to_owned()), args.to_owned())
    } else {
        (
            None,
            "needs classic tracepoints and a ring buffer".to_owned(),
        )
    };
    let disktop = if !f.btf {
        (None, "needs kernel BTF to find a file's device".to_owned())
    } else if f.works(FENTRY) {
        (
            Some("fexit on vfs_read and vfs_write".to_owned()),
            String::new(),
        )
    } else if classic && x86_64 {
        (
            Some("syscall exit tracepoints".to_owned()),
            "fexit unavailable".to_owned(),
        )
    } else if classic {
        (
            None,
            "only --block works here (the syscall path needs x86-64)".to_owned(),
        )
    } else {
        (None, "needs fexit or classic tracepoints".to_owned())
    };
    let uprobes = f.works(UPROBES) && f.works(RINGBUF);
    let calltree = if !f.works(RINGBUF) {
        (None, "needs a ring buffer".to_owned())
    } else if f.works(KPROBE_MULTI) {
        (
            Some(KPROBE_MULTI.to_owned()),
            "one link for all functions".to_owned(),
        )
    } else if f.btf && f.works(FENTRY) {
        (
            Some(FENTRY.to_owned()),
            "one program pair per function".to_owned(),
        )
    } else if f.works(KPROBES) {
        (
            Some("kprobes".to_owned()),
            "one probe pair per function".to_owned(),
        )
    } else if uprobes {
        (
            Some("uprobes (--binary only)".to_owned()),
            "no kprobes or fentry: kernel functions cannot be traced".to_owned(),
        )
    } else {
        (None, "needs kprobes, fentry or uprobes".to_owned())
    };
    [
        ("nettop", nettop),
        ("slowopen", slowopen),
        ("disktop", disktop),
        ("calltree", calltree),
    ]
    .into_iter()
    .map(|(report, (method, note))| Plan {
        report,
        method,
        note,
    })
    .collect()
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
    let mut push = |name: &'static str, r: std::result::Result<String, String>| {
        let (verdict, detail) = verdict(r);
        out.push(Facility {
            name,
            verdict,
            detail,
        });
    };

    let tp: &mut TracePoint = program(&mut ebpf, "stapr_doc_tp")?;
    push(
        CLASSIC,
        tp.load()
            .and_then(|_| tp.attach("sched", "sched_process_exec").map(|_| ()))
            .map(|_| "attached to sched:sched_process_exec".into())
            .map_err(|e| runtime::program_error_reason(&e)),
    );

    match &aya_btf {
        Some(b) => {
            let p: &mut BtfTracePoint = program(&mut ebpf, "stapr_doc_tpbtf")?;
            push(
                TP_BTF,
                p.load("sched_process_exec", b)
                    .and_then(|_| p.attach().map(|_| ()))
                    .map(|_| "attached to sched_process_exec".into())
                    .map_err(|e| runtime::program_error_reason(&e)),
            );
        }
        None => push(TP_BTF, Err("needs kernel BTF".into())),
    }

    let p: &mut RawTracePoint = program(&mut ebpf, "stapr_doc_rawtp")?;
    push(
        RAW_TP,
        p.load()
            .and_then(|_| p.attach("sched_process_exec").map(|_| ()))
            .map(|_| "attached to sched_process_exec".into())
            .map_err(|e| runtime::program_error_reason(&e)),
    );

    let p: &mut KProbe = program(&mut ebpf, "stapr_doc_kprobe")?;
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
    push(KPROBES, kprobes);

    match &aya_btf {
        Some(b) => push(
            FENTRY,
            fentry_on_vfs_read(&mut ebpf, b).map(|_| "fentry attached to vfs_read".into()),
        ),
        None => push(FENTRY, Err("needs kernel BTF".into())),
    }

    let p: &mut UProbe = program(&mut ebpf, "stapr_doc_uprobe")?;
    push(
        UPROBES,
        match libc_path() {
            Some(libc) => p
                .load()
                .and_then(|_| {
                    p.attach("getpid", &libc, UProbeScope::AllProcesses)
                        .map(|_| ())
                })
                .map(|_| format!("attached to getpid in {libc}"))
                .map_err(|e| runtime::program_error_reason(&e)),
            None => Err("libc not found in /proc/self/maps".into()),
        },
    );

    push(RINGBUF, ring_buffer_works());

    let multi = if kprobes_work {
        kprobe_multi_works()
    } else {
        Err("needs kprobes".into())
    };
    let (verdict, detail) = verdict(multi);
    out.push(Facility {
        name: KPROBE_MULTI,
        verdict,
        detail,
    });
    Ok(out)
}

fn fentry_on_vfs_read(ebpf: &mut Ebpf, btf: &aya::Btf) -> std::result::Result<(), String> {
    let p: &mut FEntry = program(ebpf, "stapr_doc_fentry").map_err(|e| e.to_string())?;
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
        btf,
        lockdown: lockdown(),
        tracefs: Path::new(runtime::tracefs::TRACEFS).join("events").is_dir(),
        facilities: probe_facilities(btf)?,
        reports: Vec::new(),
    };
    f.reports = plan(&f, cfg!(target_arch = "x86_64"));
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
    out.push_str(&format!("kernel    {}\n", f.kernel));
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

    fn findings(works: &[&'static str], btf: bool) -> Findings {
        let all = [
            CLASSIC,
            TP_BTF,
            RAW_TP,
            KPROBES,
            FENTRY,
            UPROBES,
            RINGBUF,
            KPROBE_MULTI,
        ];
        Findings {
            kernel: "6.18.0".into(),
            btf,
            lockdown: "confidentiality".into(),
            tracefs: true,
            facilities: all
                .iter()
                .map(|&name| Facility {
                    name,
                    verdict: if works.contains(&name) {
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
        let f = findings(&[CLASSIC, TP_BTF, RAW_TP, UPROBES, RINGBUF], true);
        assert_eq!(
            methods(&f, true),
            [
                Some(TP_BTF.to_owned()),
                Some("syscall tracepoints".to_owned()),
                Some("syscall exit tracepoints".to_owned()),
                Some("uprobes (--binary only)".to_owned()),
            ]
        );
    }

    #[test]
    fn a_debian_kernel() {
        let f = findings(
            &[CLASSIC, TP_BTF, RAW_TP, KPROBES, FENTRY, UPROBES, RINGBUF],
            true,
        );
        assert_eq!(
            methods(&f, true)[2].as_deref(),
            Some("fexit on vfs_read and vfs_write")
        );
        assert_eq!(methods(&f, true)[3].as_deref(), Some(FENTRY));
        let f = findings(
            &[
                CLASSIC,
                TP_BTF,
                KPROBES,
                KPROBE_MULTI,
                FENTRY,
                UPROBES,
                RINGBUF,
            ],
            true,
        );
        assert_eq!(methods(&f, true)[3].as_deref(), Some(KPROBE_MULTI));
        let f = findings(&[CLASSIC, KPROBES, RINGBUF], false);
        assert_eq!(methods(&f, true)[3].as_deref(), Some("kprobes"));
    }

    #[test]
    fn without_btf_or_tracepoints() {
        let f = findings(&[CLASSIC, RINGBUF], false);
        let m = methods(&f, true);
        assert_eq!(m[0].as_deref(), Some(CLASSIC));
        assert_eq!(m[2], None);
        let f = findings(&[], true);
        assert!(methods(&f, true).iter().all(Option::is_none));
        let f = findings(&[CLASSIC, RINGBUF], true);
        assert_eq!(methods(&f, false)[2], None, "syscall path is x86-64 only");
    }

    #[test]
    fn json_is_one_object() {
        let mut f = findings(&[CLASSIC], true);
        f.reports = plan(&f, true);
        let v: serde_json::Value = serde_json::from_str(json(&f).trim()).unwrap();
        assert_eq!(v["facilities"][0]["verdict"], "works");
        // slowopen needs a ring buffer, which this one lacks.
        assert_eq!(v["reports"][1]["method"], serde_json::Value::Null);
        assert_eq!(json(&f).lines().count(), 1);
    }

    #[test]
    fn text_fits_80_columns() {
        let mut f = findings(&[CLASSIC, TP_BTF], true);
        f.facilities[3].detail =
            "no kprobe PMU (kernel built without CONFIG_KPROBES) and a long tail of words".into();
        f.reports = plan(&f, true);
        for line in text(&f).lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }
}
