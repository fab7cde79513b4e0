//! Loads and attaches slowopen's probes; reads and edits the in-kernel open-file table.
//! The only part of slowopen that touches the kernel.

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, MapData, RingBuf},
    Ebpf,
};
use probes_common::slowopen::{
    OpenFile, OpenKey, SlowConfig, MISSED_COUNT, NR_CLOSE, NR_CLOSE_RANGE, NR_COUNT, NR_DUP3,
    NR_NONE, NR_OPENAT, NR_OPENAT2,
};
use probes_common::CgroupFilter;

use crate::{
    report::method::{first_working, last_error, Spec, Way},
    runtime::{
        btf,
        features::{self, Facility, Need},
        object::{self, Object},
        user_error,
    },
};

pub static OBJECT: Object = Object {
    name: "slowopen",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/slowopen")),
    config: Some((CONFIG, size_of::<SlowConfig>())),
    programs: &[
        ENTRY[0].0,
        ENTRY[1].0,
        ENTRY[2].0,
        ENTRY[3].0,
        ATTACH[0].0,
        ATTACH[1].0,
        ATTACH[2].0,
        ATTACH[3].0,
        ATTACH[4].0,
        ATTACH[5].0,
        ATTACH[6].0,
        ATTACH[7].0,
        ATTACH[8].0,
        ATTACH[9].0,
        RAW_EXIT.0,
        RAW_ENTER.0,
    ],
    maps: &[EVENTS, OPEN_FILES, MISSED],
};

const CONFIG: &str = "SLOW_CONFIG";
const EVENTS: &str = "EVENTS";
const OPEN_FILES: &str = "OPEN_FILES";
const MISSED: &str = "MISSED";

/// How the syscalls are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One BTF tracepoint on every syscall's exit (raw_syscalls:sys_exit): cheaper per
    /// open and close, dearer for every other syscall on the machine. Only when asked.
    RawSyscalls,
    /// Classic tracepoints on each traced syscall (what every syscall not traced pays
    /// least).
    Syscalls,
}

const RING: Need = Need::Works(Facility::Ringbuf);
const CLASSIC: Need = Need::Works(Facility::Classic);

impl crate::report::method::Method for Method {
    /// The syscall tracepoints have two ways: open's arguments read at its exit from the
    /// saved registers, or kept by entry probes where those cannot be read.
    const WAYS: &'static [Way<Self>] = &[
        Way {
            method: Method::Syscalls,
            spec: Spec {
                name: "syscall tracepoints",
                label: "tracepoint",
                needs: &[
                    CLASSIC,
                    RING,
                    Need::Btf,
                    Need::SavedRegs,
                    Need::Works(Facility::TaskBtf),
                    Need::Works(Facility::TaskPtRegs),
                ],
                note: "arguments read from saved registers",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::Syscalls,
            spec: Spec {
                name: "syscall tracepoints",
                label: "tracepoint",
                needs: &[CLASSIC, RING],
                note: "arguments saved by entry probes",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::RawSyscalls,
            spec: Spec {
                name: "raw syscall tracepoint",
                label: "raw_tracepoint",
                needs: &[
                    CLASSIC,
                    RING,
                    Need::Btf,
                    Need::SavedRegs,
                    Need::Works(Facility::TpBtf),
                    Need::Works(Facility::TaskBtf),
                ],
                note: "one BTF tracepoint on every syscall's exit",
                partial: false,
                auto: false,
            },
        },
    ];
}

/// Entry probes that save open's arguments and entry time, needed where the exit probes
/// cannot read the arguments from the saved registers, or when opens are timed.
const ENTRY: &[(&str, &str, &str, bool)] = &[
    ("stapr_so_e_open", "syscalls", "sys_enter_open", false),
    ("stapr_so_e_at", "syscalls", "sys_enter_openat", true),
    ("stapr_so_e_at2", "syscalls", "sys_enter_openat2", false),
    ("stapr_so_e_creat", "syscalls", "sys_enter_creat", false),
];

/// (program, category, tracepoint, required). Optional ones do not exist everywhere:
/// open, creat and dup2 are absent on arm64; openat2 (5.6) and close_range (5.9) are new.
const ATTACH: &[(&str, &str, &str, bool)] = &[
    ("stapr_so_x_open", "syscalls", "sys_exit_open", false),
    ("stapr_so_x_at", "syscalls", "sys_exit_openat", true),
    ("stapr_so_x_at2", "syscalls", "sys_exit_openat2", false),
    ("stapr_so_x_creat", "syscalls", "sys_exit_creat", false),
    ("stapr_so_close", "syscalls", "sys_enter_close", true),
    ("stapr_so_dup2", "syscalls", "sys_enter_dup2", false),
    ("stapr_so_dup3", "syscalls", "sys_enter_dup3", true),
    (
        "stapr_so_crange",
        "syscalls",
        "sys_enter_close_range",
        false,
    ),
    ("stapr_so_exec", "sched", "sched_process_exec", true),
    ("stapr_so_exit", "sched", "sched_process_exit", true),
];

/// Syscalls only x86-64 has (arm64 and the newer architectures have only the *at forms).
const LEGACY: &[&str] = &["open", "creat", "dup2"];

/// The call a tracepoint of the lists above traces: `sys_exit_openat` -> `openat`,
/// `sched_process_exec` -> `exec`.
fn call_of(tracepoint: &str) -> &str {
    ["sys_enter_", "sys_exit_", "sched_process_"]
        .iter()
        .find_map(|p| tracepoint.strip_prefix(p))
        .unwrap_or(tracepoint)
}

/// Whether this architecture has the call `tracepoint` traces.
fn on_this_arch(tracepoint: &str) -> bool {
    cfg!(target_arch = "x86_64") || !LEGACY.contains(&call_of(tracepoint))
}

/// The raw-syscall programs: the exit of every syscall, and with opens timed its entry.
const RAW_EXIT: (&str, &str) = ("stapr_so_sys_exit", "sys_exit");
const RAW_ENTER: (&str, &str) = ("stapr_so_sys_enter", "sys_enter");
/// What the raw-syscall method attaches as classic tracepoints: exec and exit.
const RAW_CLASSIC: &[(&str, &str, &str, bool)] = &[ATTACH[8], ATTACH[9]];

/// This architecture's numbers of the syscalls the raw-syscall programs handle.
fn syscall_numbers() -> [u32; NR_COUNT] {
    let mut nr = [NR_NONE; NR_COUNT];
    nr[NR_CLOSE] = libc::SYS_close as u32;
    nr[NR_OPENAT] = libc::SYS_openat as u32;
    nr[NR_OPENAT2] = libc::SYS_openat2 as u32;
    nr[NR_DUP3] = libc::SYS_dup3 as u32;
    nr[NR_CLOSE_RANGE] = libc::SYS_close_range as u32;
    #[cfg(target_arch = "x86_64")]
    {
        use probes_common::slowopen::{NR_CREAT, NR_DUP2, NR_OPEN};
        nr[NR_OPEN] = libc::SYS_open as u32;
        nr[NR_CREAT] = libc::SYS_creat as u32;
        nr[NR_DUP2] = libc::SYS_dup2 as u32;
    }
    nr
}

pub struct Probes {
    ebpf: Ebpf,
    pub method: Method,
    /// Tracepoints this kernel lacks, skipped.
    pub skipped: Vec<String>,
    /// The calls traced, in the order of `ATTACH` (`exec` and `exit` last).
    pub traced: Vec<&'static str>,
    /// Classic tracepoints attached (slow to detach).
    pub attached: usize,
    /// BTF tracepoints attached (bpf links: quick to detach).
    pub raw: usize,
}

impl Probes {
    /// Loads the object with `config` (threshold, filters) and attaches every probe with
    /// the method asked for (None: the classic tracepoints); the exit-detection and
    /// register offsets are filled in here from the kernel's BTF.
    pub fn attach(
        mut config: SlowConfig,
        cgroup: CgroupFilter,
        choice: Option<Method>,
    ) -> Result<(Self, RingBuf<MapData>)> {
        if features::btf() {
            let kbtf = btf::Btf::from_sys_fs()?;
            config.task_signal = kbtf.member_offset("task_struct", "signal")?;
            config.signal_live = kbtf.member_offset("signal_struct", "live")?;
            // Where the saved-registers way has what it needs (the architecture's
            // registers known, the helpers that reach them), open's arguments are read
            // there at its exit; otherwise entry probes save them.
            let ways = <Method as crate::report::method::Method>::WAYS;
            let regs_way = ways[0].spec.met();
            if let Some(regs) = kbtf.syscall_arg_offsets().ok().filter(|_| regs_way) {
                config.args_from_regs = 1;
                config.reg_arg = regs;
                config.task_comm = kbtf.member_offset("task_struct", "comm")?;
                config.reg_nr = kbtf.syscall_nr_offset()?;
                config.nr = syscall_numbers();
            }
        }
        first_working("slowopen", choice, |m| match m {
            Method::RawSyscalls if config.args_from_regs == 0 => Err(user_error(
                "--probe raw-syscalls needs kernel BTF (/sys/kernel/btf/vmlinux) on x86-64 or arm64; use --probe syscalls",
            )),
            Method::RawSyscalls => Self::attach_raw(config, cgroup),
            Method::Syscalls => Self::attach_classic(config, cgroup),
        })
        .map_err(last_error)
    }

    fn attach_raw(config: SlowConfig, cgroup: CgroupFilter) -> Result<(Self, RingBuf<MapData>)> {
        let mut ebpf = OBJECT.load(&config, &cgroup)?;
        let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
        let mut raw = vec![RAW_EXIT];
        if config.time_opens == 1 {
            raw.push(RAW_ENTER);
        }
        for &(prog, tp) in &raw {
            object::attach_btf(&mut ebpf, prog, tp, &btf)?;
        }
        let (attached, skipped) = object::attach_tracepoints(&mut ebpf, RAW_CLASSIC)?;
        Self::ready(ebpf, Method::RawSyscalls, skipped, (attached, raw.len()))
    }

    fn attach_classic(
        config: SlowConfig,
        cgroup: CgroupFilter,
    ) -> Result<(Self, RingBuf<MapData>)> {
        let mut ebpf = OBJECT.load(&config, &cgroup)?;
        let mut list = Vec::new();
        if config.args_from_regs == 0 || config.time_opens == 1 {
            list.extend_from_slice(ENTRY);
        }
        list.extend_from_slice(ATTACH);
        list.retain(|(_, _, tp, _)| on_this_arch(tp));
        let (attached, skipped) = object::attach_tracepoints(&mut ebpf, &list)?;
        Self::ready(ebpf, Method::Syscalls, skipped, (attached, 0))
    }

    fn ready(
        mut ebpf: Ebpf,
        method: Method,
        skipped: Vec<String>,
        (attached, raw): (usize, usize),
    ) -> Result<(Self, RingBuf<MapData>)> {
        let events = object::ring(&mut ebpf, EVENTS)?;
        let traced = ATTACH
            .iter()
            .filter(|(_, category, tp, _)| {
                on_this_arch(tp) && !skipped.contains(&format!("{category}:{tp}"))
            })
            .map(|(_, _, tp, _)| call_of(tp))
            .collect();
        Ok((
            Self {
                ebpf,
                method,
                skipped,
                traced,
                attached,
                raw,
            },
            events,
        ))
    }

    fn table(&mut self) -> Result<HashMap<&mut MapData, OpenKey, OpenFile>> {
        Ok(HashMap::try_from(object::map_mut(
            &mut self.ebpf,
            OPEN_FILES,
        )?)?)
    }

    /// A snapshot of the in-kernel table of open files.
    pub fn open_files(&mut self) -> Result<Vec<(OpenKey, OpenFile)>> {
        let table = self.table()?;
        let mut out = Vec::new();
        for item in table.iter() {
            match item {
                Ok(kv) => out.push(kv),
                // An entry closed between the key walk and its lookup.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("reading {OPEN_FILES}")),
            }
        }
        Ok(out)
    }

    /// Deletes entries that still hold the file they held when read (`start_ns`): the
    /// kernel may have reused a slot for a new file since.
    pub fn forget(&mut self, entries: &[(OpenKey, u64)]) -> Result<()> {
        let mut table = self.table()?;
        for (k, start_ns) in entries {
            if table.get(k, 0).is_ok_and(|f| f.start_ns == *start_ns) {
                let _ = table.remove(k);
            }
        }
        Ok(())
    }

    pub fn rewrite(&mut self, entries: &[(OpenKey, OpenFile)]) -> Result<()> {
        let mut table = self.table()?;
        for (k, f) in entries {
            // BPF_EXIST: only if the file is still open.
            let _ = table.insert(k, f, 2);
        }
        Ok(())
    }

    /// Probe runs the kernel skipped, since start.
    pub fn skipped(&self) -> u64 {
        crate::runtime::object::skipped_runs(&self.ebpf)
    }

    /// The loss counters, by their `MISSED_*` index: opens not tracked because the table
    /// was full, records lost to a full ring buffer, opens not timed because the table of
    /// opens in progress was full.
    pub fn lost(&self) -> Result<[u64; MISSED_COUNT as usize]> {
        let mut n = [0; MISSED_COUNT as usize];
        for (i, c) in (0..MISSED_COUNT).zip(n.iter_mut()) {
            *c = object::per_cpu_sum(&self.ebpf, MISSED, i)?;
        }
        Ok(n)
    }
}
