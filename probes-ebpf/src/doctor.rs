//! doctor: the smallest program of each type, loaded and attached once by `stapr doctor`
//! to find out what this kernel allows. They do nothing when they run.
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
pub fn stapr_doc_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn stapr_doc_tpbtf(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn stapr_doc_rawtp(_ctx: RawTracePointContext) -> i32 {
    0
}

#[kprobe]
pub fn stapr_doc_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[fentry(function = "vfs_read")]
pub fn stapr_doc_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[uprobe]
pub fn stapr_doc_uprobe(_ctx: ProbeContext) -> u32 {
    0
}
