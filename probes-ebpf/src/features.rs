//! features: the smallest program of each type, loaded and attached once each by
//! stapr's feature probes (`runtime::features`) to find out what this kernel allows,
//! and one per helper the reports call, loaded only. They do nothing when they run.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_task_btf, bpf_task_pt_regs,
        generated::{bpf_get_attach_cookie, bpf_get_func_ip, bpf_get_func_ret},
    },
    macros::{btf_tracepoint, fentry, fexit, kprobe, raw_tracepoint, tracepoint, uprobe},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        TracePointContext,
    },
    EbpfContext,
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

// One program per helper a report calls: the verifier refuses a helper the kernel does not
// have, or does not offer to that program type, at load. Each is loaded, never attached.

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn stapr_ft_task_btf(_ctx: TracePointContext) -> u32 {
    let task = unsafe { bpf_get_current_task_btf() };
    (!task.is_null()) as u32
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn stapr_ft_pt_regs(_ctx: TracePointContext) -> u32 {
    let task = unsafe { bpf_get_current_task_btf() };
    (unsafe { bpf_task_pt_regs(task) } != 0) as u32
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn stapr_ft_ancestor(_ctx: TracePointContext) -> u32 {
    unsafe { bpf_get_current_ancestor_cgroup_id(1) as u32 }
}

#[kprobe]
pub fn stapr_ft_kfunc_ip(ctx: ProbeContext) -> u32 {
    unsafe { bpf_get_func_ip(ctx.as_ptr()) as u32 }
}

#[kprobe]
pub fn stapr_ft_cookie(ctx: ProbeContext) -> u32 {
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

#[fentry(function = "vfs_read")]
pub fn stapr_ft_ffunc_ip(ctx: FEntryContext) -> u32 {
    unsafe { bpf_get_func_ip(ctx.as_ptr()) as u32 }
}

#[fexit(function = "vfs_read")]
pub fn stapr_ft_func_ret(ctx: FExitContext) -> u32 {
    let mut ret = 0u64;
    let _ = unsafe { bpf_get_func_ret(ctx.as_ptr(), &mut ret) };
    ret as u32
}
