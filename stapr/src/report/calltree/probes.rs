//! calltree's probes: the methods in their order of preference, one attach call per kind
//! of target (kernel functions, a program's functions) over them, and the attached state.
//! With `attach`, the only part of calltree that touches the kernel.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use probes_common::{calltree::CallConfig, CgroupFilter};

use super::{
    attach,
    names::{Addrs, Names},
    select::{Func, ProgramFn},
};
use crate::{
    report::method::{first_working, first_working_of, last_error, Method as _, Spec, Way},
    runtime::{
        btf::RetKind,
        features::{self, Facility, Need},
        object::{self, Object},
        user_error,
    },
};

pub static OBJECT: Object = Object {
    name: "calltree",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calltree")),
    config: Some((CONFIG, size_of::<CallConfig>())),
    programs: &[
        PROG_MULTI,
        PROG_FENTRY,
        PROG_FEXIT,
        PROGS_KPROBE[0],
        PROGS_KPROBE[1],
        PROGS_KPROBE_IP[0],
        PROGS_KPROBE_IP[1],
        PROGS_UPROBE[0],
        PROGS_UPROBE[1],
    ],
    maps: &[EVENTS, LOST, STACKS],
};

pub const PROG_MULTI: &str = "stapr_ct_multi";
pub const PROG_FENTRY: &str = "stapr_ct_fent";
pub const PROG_FEXIT: &str = "stapr_ct_fexit";
pub const PROGS_KPROBE: [&str; 2] = ["stapr_ct_kent", "stapr_ct_kret"];
/// Kernels without `bpf_get_func_ip` (before 5.15): the entry's function from its
/// registers, a return matched to its thread's last open entry.
pub const PROGS_KPROBE_IP: [&str; 2] = ["stapr_ct_kent_ip", "stapr_ct_kret_ip"];
pub const PROGS_UPROBE: [&str; 2] = ["stapr_ct_uent", "stapr_ct_uret"];
const CONFIG: &str = "CALL_CONFIG";
const EVENTS: &str = "CALL_EVENTS";
const LOST: &str = "CALL_LOST";
const STACKS: &str = "CALL_STACKS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One kprobe.multi link for all entries and one for all returns (Linux 5.18+).
    Multi,
    /// One fentry and one fexit program per function (BPF trampolines).
    Fentry,
    /// One kprobe and one kretprobe per function.
    Kprobe,
    /// uprobes and uretprobes on a program's functions (`--binary`), one link for all.
    UprobeMulti,
    /// The same, one probe pair per function.
    Uprobe,
}

const RING: Need = Need::Works(Facility::Ringbuf);

impl crate::report::method::Method for Method {
    /// Kernel functions take the first three, best first; uprobes trace only `--binary`
    /// programs, in one link for every entry and one for every return where the kernel
    /// has uprobe.multi (6.6+), else one probe pair per function.
    const WAYS: &'static [Way<Self>] = &[
        Way {
            method: Method::Multi,
            spec: Spec {
                name: "kprobe.multi",
                label: "multi",
                needs: &[
                    RING,
                    Need::Works(Facility::KprobeMulti),
                    Need::Works(Facility::AttachCookie),
                ],
                note: "one link for all functions",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::Fentry,
            spec: Spec {
                name: "fentry/fexit",
                label: "fentry",
                needs: &[
                    RING,
                    Need::Btf,
                    Need::Works(Facility::Fentry),
                    Need::Works(Facility::FentryFuncIp),
                    Need::Works(Facility::FuncRet),
                ],
                note: "one program pair per function; kprobes when that would take over 2 min",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::Kprobe,
            spec: Spec {
                name: "kprobe/kretprobe",
                label: "kprobe",
                needs: &[
                    RING,
                    Need::Works(Facility::Kprobes),
                    Need::Works(Facility::KprobeFuncIp),
                ],
                note: "one probe pair per function",
                partial: false,
                auto: true,
            },
        },
        // Kernels before bpf_get_func_ip (5.15): the same probes, the function read from
        // the entry's registers and each return matched to its thread's last entry.
        Way {
            method: Method::Kprobe,
            spec: Spec {
                name: "kprobe/kretprobe",
                label: "kprobe",
                needs: &[RING, Need::Works(Facility::Kprobes)],
                note: "one probe pair per function; returns matched to the thread's last entry",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::UprobeMulti,
            spec: Spec {
                name: "uprobe.multi (--binary only)",
                label: "uprobe_multi",
                needs: &[
                    RING,
                    Need::Works(Facility::UprobeMulti),
                    Need::Works(Facility::AttachCookie),
                ],
                note: "no kprobes or fentry: kernel functions cannot be traced",
                partial: true,
                auto: false,
            },
        },
        Way {
            method: Method::Uprobe,
            spec: Spec {
                name: "uprobes (--binary only)",
                label: "uprobe",
                needs: &[
                    RING,
                    Need::Works(Facility::Uprobes),
                    Need::Works(Facility::AttachCookie),
                ],
                note: "no kprobes or fentry: kernel functions cannot be traced",
                partial: true,
                auto: false,
            },
        },
    ];
}

impl Method {
    /// The probe pair, as the start line says it.
    pub fn pair(self) -> &'static str {
        match self {
            Method::Uprobe | Method::UprobeMulti => "uprobe/uretprobe",
            m => m.name(),
        }
    }
}

pub struct Probes {
    /// Holds the maps and the aya-attached programs (kprobes, uprobes).
    ebpf: Ebpf,
    /// Programs and links loaded with bpf(2) directly (kprobe.multi, fentry).
    pub raw: Vec<OwnedFd>,
    pub method: Method,
    /// Functions attached (entry and return).
    pub attached: usize,
    /// Kernel attachments held: links or perf events.
    pub links: usize,
    pub skipped: BTreeMap<String, usize>,
    pub names: Names,
    pub took: Duration,
}

/// The read-only globals set before load: filters and the process to leave out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Globals {
    pub call: CallConfig,
    pub cgroup: CgroupFilter,
}

fn load(config: &Globals) -> Result<Ebpf> {
    OBJECT.load(&config.call, &config.cgroup)
}

/// Refuses early, in one sentence, on a kernel that can probe no kernel function.
pub fn kernel_functions_possible() -> Result<()> {
    if features::kprobe_pmu() {
        return Ok(());
    }
    match features::check(Facility::Fentry) {
        Ok(_) => Ok(()),
        Err(why) => Err(user_error(format!(
            "this kernel has neither kprobes (no kprobe PMU: built without CONFIG_KPROBES) nor fentry ({why}), so no kernel function can be traced here; `stapr doctor` shows what works, and `stapr calltree --binary PATH` traces a program's own functions with uprobes"
        ))),
    }
}

impl Probes {
    pub fn new(ebpf: Ebpf, method: Method, names: Names) -> Self {
        Probes {
            ebpf,
            raw: Vec::new(),
            method,
            attached: 0,
            links: 0,
            skipped: BTreeMap::new(),
            names,
            took: Duration::ZERO,
        }
    }

    /// Attaches to kernel functions with the method asked for (None: the first that
    /// works).
    pub fn attach_kernel(
        config: &Globals,
        funcs: &[Func],
        rets: &[RetKind],
        choice: Option<Method>,
        addrs: &Addrs,
    ) -> Result<Self> {
        let t = Instant::now();
        // Left to choose, fentry/fexit gives way to kprobes where attaching it one
        // function at a time would take too long; asked for by name, it takes its time.
        let budget = (choice.is_none() && attach::kprobes_work()).then_some(attach::ATTACH_BUDGET);
        let mut p = first_working("calltree", choice, |m| {
            let ebpf = load(config)?;
            match m {
                Method::Multi => attach::multi(ebpf, funcs, rets),
                Method::Fentry => attach::fentry(ebpf, funcs, rets, addrs, budget),
                _ => attach::kprobe(ebpf, funcs, rets, addrs),
            }
        })
        .map_err(|failed| {
            let why: Vec<String> = failed
                .iter()
                .map(|(m, e)| format!("{}: {}", m.name(), crate::runtime::one_line(e)))
                .collect();
            user_error(format!(
                "cannot attach to kernel functions here ({}); see `stapr doctor`",
                why.join("; ")
            ))
        })?;
        p.took = t.elapsed();
        Ok(p)
    }

    /// Attaches uprobes and uretprobes to `funcs` of the ELF file `path`: in two
    /// uprobe.multi links where the kernel has them, else one pair per function.
    pub fn attach_binary(config: &Globals, path: &Path, funcs: &[ProgramFn]) -> Result<Self> {
        let t = Instant::now();
        let order: &[Method] = if features::check(Facility::UprobeMulti).is_ok() {
            &[Method::UprobeMulti, Method::Uprobe]
        } else {
            &[Method::Uprobe]
        };
        let mut p = first_working_of("calltree", order, |m| {
            let ebpf = load(config)?;
            match m {
                Method::UprobeMulti => attach::uprobe_multi(ebpf, path, funcs),
                _ => attach::uprobe(ebpf, path, funcs),
            }
        })
        .map_err(last_error)?;
        p.took = t.elapsed();
        Ok(p)
    }

    /// The ring buffer the events arrive in.
    pub fn ring(&mut self) -> Result<RingBuf<MapData>> {
        object::ring(&mut self.ebpf, EVENTS)
    }

    /// Events lost because the ring buffer was full, since start.
    pub fn lost(&self) -> Result<u64> {
        object::per_cpu_sum(&self.ebpf, LOST, 0)
    }

    /// Returns not shown because their entry was not kept (the per-thread table of the
    /// kprobe method without `bpf_get_func_ip` was full or too deep), since start.
    pub fn returns_unkept(&self) -> Result<u64> {
        object::per_cpu_sum(&self.ebpf, LOST, 1)
    }
}
