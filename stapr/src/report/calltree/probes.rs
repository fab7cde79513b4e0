//! calltree's probes: the methods in their order of preference, one attach call per kind
//! of target (kernel functions, a program's functions) over them, and the attached state.
//! With `attach`, the only part of calltree that touches the kernel.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, RingBuf},
    Ebpf, EbpfLoader,
};
use probes_common::{calltree::CallConfig, CgroupFilter, CGROUP_FILTER};

use super::{
    attach,
    names::{Addrs, Names},
    select::{Func, ProgramFn},
};
use crate::{
    report::{first_working, Facility, MethodSpec, Need},
    runtime::{self, btf::RetKind, object, user_error},
};

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calltree"));

pub const PROG_MULTI: &str = "stapr_ct_multi";
pub const PROG_FENTRY: &str = "stapr_ct_fent";
pub const PROG_FEXIT: &str = "stapr_ct_fexit";
pub const PROGS_KPROBE: [&str; 2] = ["stapr_ct_kent", "stapr_ct_kret"];
pub const PROGS_UPROBE: [&str; 2] = ["stapr_ct_uent", "stapr_ct_uret"];
const CONFIG: &str = "CALL_CONFIG";
const EVENTS: &str = "CALL_EVENTS";
const LOST: &str = "CALL_LOST";

#[cfg(test)]
pub const NAMES: crate::runtime::object::ObjectNames = crate::runtime::object::ObjectNames {
    object: "calltree",
    programs: &[
        PROG_MULTI,
        PROG_FENTRY,
        PROG_FEXIT,
        PROGS_KPROBE[0],
        PROGS_KPROBE[1],
        PROGS_UPROBE[0],
        PROGS_UPROBE[1],
    ],
    maps: &[EVENTS, LOST],
    globals: &[
        (CONFIG, size_of::<CallConfig>()),
        (CGROUP_FILTER, size_of::<CgroupFilter>()),
    ],
};

/// `--attach`: how kernel functions are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// The best this kernel offers: multi, then fentry, then kprobe.
    Auto,
    /// One kprobe.multi link for all entries and one for all returns (Linux 5.18+).
    Multi,
    /// One fentry and one fexit program per function (BPF trampolines).
    Fentry,
    /// One kprobe and one kretprobe per function.
    Kprobe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Multi,
    Fentry,
    Kprobe,
    Uprobe,
}

/// `--attach auto` tries these in order, for kernel functions.
const AUTO: [Method; 3] = [Method::Multi, Method::Fentry, Method::Kprobe];

/// The ways calltree attaches, best first; uprobes trace only `--binary` programs.
pub fn methods() -> Vec<MethodSpec> {
    AUTO.iter()
        .chain(&[Method::Uprobe])
        .map(|m| m.spec())
        .collect()
}

impl Method {
    pub fn describe(self) -> &'static str {
        match self {
            Method::Multi => "kprobe.multi",
            Method::Fentry => "fentry/fexit",
            Method::Kprobe => "kprobe/kretprobe",
            Method::Uprobe => "uprobe/uretprobe",
        }
    }

    fn spec(self) -> MethodSpec {
        const RING: Need = Need::Works(Facility::Ringbuf);
        match self {
            Method::Multi => MethodSpec {
                name: self.describe(),
                needs: &[RING, Need::Works(Facility::KprobeMulti)],
                note: "one link for all functions",
                partial: false,
            },
            Method::Fentry => MethodSpec {
                name: self.describe(),
                needs: &[RING, Need::Btf, Need::Works(Facility::Fentry)],
                note: "one program pair per function",
                partial: false,
            },
            Method::Kprobe => MethodSpec {
                name: self.describe(),
                needs: &[RING, Need::Works(Facility::Kprobes)],
                note: "one probe pair per function",
                partial: false,
            },
            Method::Uprobe => MethodSpec {
                name: "uprobes (--binary only)",
                needs: &[RING, Need::Works(Facility::Uprobes)],
                note: "no kprobes or fentry: kernel functions cannot be traced",
                partial: true,
            },
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
    EbpfLoader::new()
        .override_global(CONFIG, &config.call, true)
        .override_global(CGROUP_FILTER, &config.cgroup, true)
        .load(OBJECT)
        .context("loading the calltree eBPF object")
}

/// Refuses early, in one sentence, on a kernel that can probe no kernel function.
pub fn kernel_functions_possible() -> Result<()> {
    if runtime::kprobe_pmu_present() {
        return Ok(());
    }
    match crate::doctor::fentry_works() {
        Ok(()) => Ok(()),
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

    /// Attaches to kernel functions with `attach` (`Auto`: the first method of [`AUTO`]
    /// that works).
    pub fn attach_kernel(
        config: &Globals,
        funcs: &[Func],
        rets: &[RetKind],
        how: Attach,
        addrs: &Addrs,
    ) -> Result<Self> {
        let order: &[Method] = match how {
            Attach::Auto => &AUTO,
            Attach::Multi => &[Method::Multi],
            Attach::Fentry => &[Method::Fentry],
            Attach::Kprobe => &[Method::Kprobe],
        };
        let t = Instant::now();
        let mut p = first_working("calltree", order, Method::describe, |m| {
            let ebpf = load(config)?;
            match m {
                Method::Multi => attach::multi(ebpf, funcs, rets),
                Method::Fentry => attach::fentry(ebpf, funcs, rets, addrs),
                _ => attach::kprobe(ebpf, funcs, rets, addrs),
            }
        })
        .map_err(|failed| {
            let why: Vec<String> = failed
                .iter()
                .map(|(m, e)| format!("{}: {e:#}", m.describe()))
                .collect();
            user_error(format!(
                "cannot attach to kernel functions here ({}); see `stapr doctor`",
                why.join("; ")
            ))
        })?;
        p.took = t.elapsed();
        Ok(p)
    }

    /// Attaches uprobes and uretprobes to `funcs` of the ELF file `path`.
    pub fn attach_binary(config: &Globals, path: &Path, funcs: &[ProgramFn]) -> Result<Self> {
        let t = Instant::now();
        let mut p = attach::uprobe(load(config)?, path, funcs)?;
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
}
