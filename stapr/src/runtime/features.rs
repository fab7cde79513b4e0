//! Every kernel facility stapr relies on, each a named probe that runs at most once per
//! process (the shape of cilium/ebpf's `FeatureTest`). The reports ask it before they
//! choose a probe method, and `stapr doctor` shows every verdict; neither probes the
//! kernel on its own. Program types are tried by loading and attaching the smallest
//! program of that type (the `features` object), detached as soon as the answer is known.

use std::{path::Path, sync::OnceLock};

use aya::{
    programs::{
        uprobe::UProbeScope, BtfTracePoint, FEntry, FExit, KProbe, RawTracePoint, TracePoint,
        UProbe,
    },
    Ebpf,
};

use super::{bpf_sys, object, program_error_reason};

pub static OBJECT: object::Object = object::Object {
    name: "features",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/features")),
    config: None,
    programs: &[
        PROG_TP,
        PROG_TP_BTF,
        PROG_RAW_TP,
        PROG_KPROBE,
        PROG_FENTRY,
        PROG_UPROBE,
        PROG_TASK_BTF,
        PROG_PT_REGS,
        PROG_ANCESTOR,
        PROG_KFUNC_IP,
        PROG_COOKIE,
        PROG_FFUNC_IP,
        PROG_FUNC_RET,
    ],
    maps: &[],
};

const PROG_TP: &str = "stapr_ft_tp";
const PROG_TP_BTF: &str = "stapr_ft_tpbtf";
const PROG_RAW_TP: &str = "stapr_ft_rawtp";
const PROG_KPROBE: &str = "stapr_ft_kprobe";
const PROG_FENTRY: &str = "stapr_ft_fentry";
const PROG_UPROBE: &str = "stapr_ft_uprobe";
const PROG_TASK_BTF: &str = "stapr_ft_task_btf";
const PROG_PT_REGS: &str = "stapr_ft_pt_regs";
const PROG_ANCESTOR: &str = "stapr_ft_ancestor";
const PROG_KFUNC_IP: &str = "stapr_ft_kfunc_ip";
const PROG_COOKIE: &str = "stapr_ft_cookie";
const PROG_FFUNC_IP: &str = "stapr_ft_ffunc_ip";
const PROG_FUNC_RET: &str = "stapr_ft_func_ret";

/// A kernel facility: a program type or attach kind, tried by loading and attaching a
/// tiny program, or a helper a report calls, tried by loading a tiny program that calls
/// it from the program type the report calls it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Facility {
    Classic,
    TpBtf,
    RawTp,
    Kprobes,
    KprobeMulti,
    Fentry,
    Uprobes,
    UprobeMulti,
    Ringbuf,
    /// `bpf_get_current_task_btf` (5.11)
    TaskBtf,
    /// `bpf_task_pt_regs` (5.15)
    TaskPtRegs,
    /// `bpf_get_current_ancestor_cgroup_id` from tracing programs (5.14)
    AncestorCgroup,
    /// `bpf_get_func_ip` from kprobes (5.15)
    KprobeFuncIp,
    /// `bpf_get_attach_cookie` from kprobes and uprobes (5.15)
    AttachCookie,
    /// `bpf_get_func_ip` from fentry/fexit (5.15)
    FentryFuncIp,
    /// `bpf_get_func_ret` from fexit (5.17)
    FuncRet,
}

impl Facility {
    /// In the order doctor shows them: program types, then helpers.
    pub const ALL: [Facility; 16] = [
        Facility::Classic,
        Facility::TpBtf,
        Facility::RawTp,
        Facility::Kprobes,
        Facility::Fentry,
        Facility::Uprobes,
        Facility::Ringbuf,
        Facility::KprobeMulti,
        Facility::UprobeMulti,
        Facility::TaskBtf,
        Facility::TaskPtRegs,
        Facility::AncestorCgroup,
        Facility::KprobeFuncIp,
        Facility::AttachCookie,
        Facility::FentryFuncIp,
        Facility::FuncRet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Facility::Classic => "classic tracepoints",
            Facility::TpBtf => "BTF tracepoints (tp_btf)",
            Facility::RawTp => "raw tracepoints",
            Facility::Kprobes => "kprobes",
            Facility::KprobeMulti => "kprobe.multi",
            Facility::Fentry => "fentry/fexit",
            Facility::Uprobes => "uprobes",
            Facility::UprobeMulti => "uprobe.multi",
            Facility::Ringbuf => "ring buffer",
            Facility::TaskBtf => "bpf_get_current_task_btf",
            Facility::TaskPtRegs => "bpf_task_pt_regs",
            Facility::AncestorCgroup => "bpf_get_current_ancestor_cgroup_id",
            Facility::KprobeFuncIp => "bpf_get_func_ip in kprobes",
            Facility::AttachCookie => "bpf_get_attach_cookie",
            Facility::FentryFuncIp => "bpf_get_func_ip in fentry",
            Facility::FuncRet => "bpf_get_func_ret",
        }
    }
}

/// What a probe method needs from the kernel or the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Kernel BTF (/sys/kernel/btf/vmlinux).
    Btf,
    /// An architecture whose saved syscall registers stapr knows (x86-64, arm64).
    SavedRegs,
    /// A facility that loads and attaches here.
    Works(Facility),
}

impl Need {
    /// A helper a program calls: where the kernel lacks it the verifier refuses the
    /// program, so a method needing it is passed over before any load.
    pub fn is_helper(self) -> bool {
        matches!(self, Need::Works(f) if f >= Facility::TaskBtf)
    }

    /// Whether this machine meets it (probing the facility on first use).
    pub fn met(self) -> bool {
        match self {
            Need::Btf => btf(),
            Need::SavedRegs => saved_regs(),
            Need::Works(f) => check(f).is_ok(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Need::Btf => "kernel BTF",
            Need::SavedRegs => "x86-64 or arm64",
            Need::Works(f) => f.name(),
        }
    }
}

/// Whether the kernel publishes its BTF; without it stapr uses classic tracepoints.
pub fn btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// Whether stapr knows where this architecture saves a syscall's registers.
pub const fn saved_regs() -> bool {
    cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
}

/// Why kprobes cannot attach when [`kprobe_pmu`] is false.
pub const NO_KPROBE_PMU: &str = "no kprobe PMU (kernel built without CONFIG_KPROBES)";

/// Whether the kernel has the kprobe PMU (CONFIG_KPROBES), which kprobes attach through.
pub fn kprobe_pmu() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// What trying `facility` found: what attached, or why it failed. Tried on first use.
pub fn check(facility: Facility) -> &'static Result<String, String> {
    static TRIED: [OnceLock<Result<String, String>>; Facility::ALL.len()] =
        [const { OnceLock::new() }; Facility::ALL.len()];
    TRIED[facility as usize].get_or_init(|| try_facility(facility))
}

/// The kernel's BTF as aya reads it, parsed once.
fn aya_btf() -> Result<&'static aya::Btf, String> {
    static BTF: OnceLock<Result<aya::Btf, String>> = OnceLock::new();
    BTF.get_or_init(|| {
        if !btf() {
            return Err("needs kernel BTF".into());
        }
        aya::Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn try_facility(facility: Facility) -> Result<String, String> {
    match facility {
        Facility::Ringbuf => bpf_sys::ringbuf_create(4096)
            .map(|_fd| "BPF_MAP_TYPE_RINGBUF created".into())
            .map_err(|e| e.to_string()),
        Facility::KprobeMulti => match check(Facility::Kprobes) {
            Ok(_) => kprobe_multi(),
            Err(_) => Err("needs kprobes".into()),
        },
        Facility::UprobeMulti => match check(Facility::Uprobes) {
            Ok(_) => uprobe_multi(),
            Err(_) => Err("needs uprobes".into()),
        },
        // Helpers of fentry/fexit programs: only where those load.
        Facility::FentryFuncIp | Facility::FuncRet if check(Facility::Fentry).is_err() => {
            Err("needs fentry/fexit".into())
        }
        _ => {
            // Everything attached here is detached when `ebpf` drops.
            let mut ebpf = OBJECT.load_plain().map_err(|e| format!("{e:#}"))?;
            attach_one(&mut ebpf, facility)
        }
    }
}

fn attach_one(ebpf: &mut Ebpf, facility: Facility) -> Result<String, String> {
    let reason = |e: aya::programs::ProgramError| program_error_reason(&e);
    let typed = |e: aya::programs::ProgramError| e.to_string();
    match facility {
        Facility::Classic => {
            let p: &mut TracePoint = prog(ebpf, PROG_TP)?.try_into().map_err(typed)?;
            p.load()
                .and_then(|_| p.attach("sched", "sched_process_exec"))
                .map(|_| "attached to sched:sched_process_exec".into())
                .map_err(reason)
        }
        Facility::TpBtf => {
            let btf = aya_btf()?;
            let p: &mut BtfTracePoint = prog(ebpf, PROG_TP_BTF)?.try_into().map_err(typed)?;
            p.load("sched_process_exec", btf)
                .and_then(|_| p.attach())
                .map(|_| "attached to sched_process_exec".into())
                .map_err(reason)
        }
        Facility::RawTp => {
            let p: &mut RawTracePoint = prog(ebpf, PROG_RAW_TP)?.try_into().map_err(typed)?;
            p.load()
                .and_then(|_| p.attach("sched_process_exec"))
                .map(|_| "attached to sched_process_exec".into())
                .map_err(reason)
        }
        Facility::Kprobes => {
            let p: &mut KProbe = prog(ebpf, PROG_KPROBE)?.try_into().map_err(typed)?;
            p.load()
                .and_then(|_| p.attach("vfs_read", 0))
                .map(|_| "attached to vfs_read".into())
                .map_err(|e| {
                    if kprobe_pmu() {
                        reason(e)
                    } else {
                        NO_KPROBE_PMU.into()
                    }
                })
        }
        Facility::Fentry => {
            let btf = aya_btf()?;
            let p: &mut FEntry = prog(ebpf, PROG_FENTRY)?.try_into().map_err(typed)?;
            p.load("vfs_read", btf)
                .and_then(|_| p.attach())
                .map(|_| "fentry attached to vfs_read".into())
                .map_err(reason)
        }
        Facility::Uprobes => {
            let target = getpid_file()?;
            let p: &mut UProbe = prog(ebpf, PROG_UPROBE)?.try_into().map_err(typed)?;
            p.load()
                .and_then(|_| p.attach("getpid", &target, UProbeScope::AllProcesses))
                .map(|_| format!("attached to getpid in {target}"))
                .map_err(reason)
        }
        Facility::TaskBtf => load_only::<TracePoint>(ebpf, PROG_TASK_BTF, |p| p.load()),
        Facility::TaskPtRegs => load_only::<TracePoint>(ebpf, PROG_PT_REGS, |p| p.load()),
        Facility::AncestorCgroup => load_only::<TracePoint>(ebpf, PROG_ANCESTOR, |p| p.load()),
        Facility::KprobeFuncIp => load_only::<KProbe>(ebpf, PROG_KFUNC_IP, |p| p.load()),
        Facility::AttachCookie => load_only::<KProbe>(ebpf, PROG_COOKIE, |p| p.load()),
        Facility::FentryFuncIp => {
            let btf = aya_btf()?;
            load_only::<FEntry>(ebpf, PROG_FFUNC_IP, |p| p.load("vfs_read", btf))
        }
        Facility::FuncRet => {
            let btf = aya_btf()?;
            load_only::<FExit>(ebpf, PROG_FUNC_RET, |p| p.load("vfs_read", btf))
        }
        Facility::Ringbuf | Facility::KprobeMulti | Facility::UprobeMulti => {
            Err("tried without the features object".into())
        }
    }
}

/// Loads the helper's program: the verifier accepts it only where the kernel offers the
/// helper to that program type.
fn load_only<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &str,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<String, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: 'a,
{
    let p: &mut P = prog(ebpf, name)?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    load(p)
        .map(|_| "accepted by the verifier".into())
        .map_err(|e| helper_refusal(&e))
}

/// Why a helper's program was refused: the kernel's own words for an unknown helper.
fn helper_refusal(e: &aya::programs::ProgramError) -> String {
    let full = format!("{e:#}");
    if full.contains("unknown func") || full.contains("invalid func") {
        return "not offered by this kernel (the verifier: unknown function)".into();
    }
    program_error_reason(e)
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the features object"))
}

/// The file holding getpid (the uprobe target): libc, or, for a statically linked stapr
/// (the arm64 build), stapr's own executable.
fn getpid_file() -> Result<String, String> {
    libc_path()
        .or_else(|| {
            std::fs::read_link("/proc/self/exe")
                .ok()
                .map(|p| p.display().to_string())
        })
        .ok_or_else(|| "neither libc nor stapr's own executable found".into())
}

/// The path of libc as mapped into this process.
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

/// A two-instruction kprobe program (`r0 = 0; exit`) loaded for `attach_type`.
fn nop_kprobe(attach_type: u32) -> Result<std::os::fd::OwnedFd, String> {
    const MOV_R0_0: u64 = 0xb7;
    const EXIT: u64 = 0x95;
    bpf_sys::prog_load(
        &bpf_sys::LoadSpec {
            prog_type: bpf_sys::PROG_TYPE_KPROBE,
            expected_attach_type: attach_type,
            name: "stapr_ft_multi",
            attach_btf_id: 0,
            attach_btf_obj: None,
        },
        &[MOV_R0_0, EXIT],
    )
    .map_err(|e| format!("{e:#}"))
}

/// A kprobe.multi link on vfs_read (BPF_LINK_CREATE); closed on return.
fn kprobe_multi() -> Result<String, String> {
    use std::os::fd::AsFd;
    let prog = nop_kprobe(bpf_sys::ATTACH_TRACE_KPROBE_MULTI)?;
    bpf_sys::kprobe_multi(prog.as_fd(), &["vfs_read".to_owned()], &[0], false)
        .map(|_link| "kprobe.multi link on vfs_read".into())
        .map_err(|e| format!("{e:#}"))
}

/// An uprobe.multi link on getpid; closed on return.
fn uprobe_multi() -> Result<String, String> {
    use std::os::fd::AsFd;
    let target = getpid_file()?;
    let path = Path::new(&target);
    let offset = super::elf::symbol_offset(path, "getpid").map_err(|e| format!("{e:#}"))?;
    let prog = nop_kprobe(bpf_sys::ATTACH_TRACE_UPROBE_MULTI)?;
    bpf_sys::uprobe_multi(prog.as_fd(), path, &[offset], &[0], false)
        .map(|_link| format!("uprobe.multi link on getpid in {target}"))
        .map_err(|e| format!("{e:#}"))
}
