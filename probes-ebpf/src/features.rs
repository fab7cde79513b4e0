//! features: the smallest program of each type, loaded and attached once each by
//! stapr's feature probes (`runtime::features`) to find out what this kernel allows.
//! They do nothing when they run.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, raw_tracepoint, tracepoint, uprobe},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
    },
};
use probes_ebpf as _;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn stapr_ft_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn stapr_ft_tpbtf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn stapr_ft_rawtp(_ctx: RawTracePointContext) -> i32 {
    0
}

#[kprobe]
pub fn stapr_ft_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "vfs_read")]
pub fn stapr_ft_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[uprobe]
pub fn stapr_ft_uprobe(_ctx: ProbeContext) -> u32 {
    0
}
