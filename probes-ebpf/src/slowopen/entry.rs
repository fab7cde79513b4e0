//! Entry probes of the open calls: they keep each open's arguments and entry time, where
//! the exit cannot read the arguments from the saved registers, or when opens are timed.

use super::*;

#[inline(always)]
pub(super) fn save_args(filename: u64, flags: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let entry_ns = unsafe { bpf_ktime_get_ns() };
    let args = OpenArgs {
        filename,
        flags,
        entry_ns,
    };
    if OPEN_ARGS.insert(&tid, &args, 0).is_err() {
        missed(MISSED_ARGS_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_open")]
pub fn stapr_so_e_open(ctx: TracePointContext) -> u32 {
    save_args(arg(&ctx, ARG0), arg(&ctx, ARG1));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat")]
pub fn stapr_so_e_at(ctx: TracePointContext) -> u32 {
    save_args(arg(&ctx, ARG1), arg(&ctx, ARG2));
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_openat2")]
pub fn stapr_so_e_at2(ctx: TracePointContext) -> u32 {
    // struct open_how { __u64 flags; __u64 mode; __u64 resolve; }
    let how = arg(&ctx, ARG2) as *const u64;
    let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
    save_args(arg(&ctx, ARG1), flags);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_creat")]
pub fn stapr_so_e_creat(ctx: TracePointContext) -> u32 {
    save_args(arg(&ctx, ARG0), CREAT_FLAGS);
    0
}
