//! The raw-syscall method's programs (`--probe raw-syscalls`).

use super::*;

/// This architecture's number of syscall `i` (`NR_*`).
#[inline(always)]
fn nr(i: usize) -> u32 {
    match i {
        NR_CLOSE => global(&SLOW_CONFIG.nr[NR_CLOSE]),
        NR_OPENAT => global(&SLOW_CONFIG.nr[NR_OPENAT]),
        NR_OPEN => global(&SLOW_CONFIG.nr[NR_OPEN]),
        NR_OPENAT2 => global(&SLOW_CONFIG.nr[NR_OPENAT2]),
        NR_CREAT => global(&SLOW_CONFIG.nr[NR_CREAT]),
        NR_DUP2 => global(&SLOW_CONFIG.nr[NR_DUP2]),
        NR_DUP3 => global(&SLOW_CONFIG.nr[NR_DUP3]),
        NR_CLOSE_RANGE => global(&SLOW_CONFIG.nr[NR_CLOSE_RANGE]),
        _ => NR_NONE,
    }
}

/// The raw-syscall method: one BTF tracepoint on every syscall's exit instead of a classic
/// tracepoint per call. Each syscall of every process runs it, so the calls it does not
/// handle return after one load and a few compares; the ones it handles skip the classic
/// tracepoints' record building. Arguments come from the saved registers it is given.
#[btf_tracepoint(function = "sys_exit")]
pub fn stapr_so_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let n: u32 = unsafe { btf_load(regs, global(&SLOW_CONFIG.reg_nr)) };
    if n == nr(NR_CLOSE) {
        end(current_tgid(), reg(regs, 0) as u32, END_CLOSE);
    } else if n == nr(NR_OPENAT) {
        open_exit(ret, || regs, 1, Flags::Arg(2));
    } else if n == nr(NR_OPEN) {
        open_exit(ret, || regs, 0, Flags::Arg(1));
    } else if n == nr(NR_OPENAT2) {
        open_exit(ret, || regs, 1, Flags::OpenHow(2));
    } else if n == nr(NR_CREAT) {
        open_exit(ret, || regs, 0, Flags::Creat);
    } else if n == nr(NR_DUP2) || n == nr(NR_DUP3) {
        // At the exit: a failed dup replaced nothing.
        if ret >= 0 {
            let how = if n == nr(NR_DUP2) { END_DUP2 } else { END_DUP3 };
            dup_fds(reg(regs, 0) as u32, reg(regs, 1) as u32, how);
        }
    } else if n == nr(NR_CLOSE_RANGE) {
        close_range(reg(regs, 0), reg(regs, 1), reg(regs, 2));
    }
    0
}

/// With the raw-syscall method and opens timed: each open's entry time.
#[btf_tracepoint(function = "sys_enter")]
pub fn stapr_so_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    let n = id as u32;
    if n == nr(NR_OPENAT) {
        save_args(reg(regs, 1), flags_of(regs, Flags::Arg(2)));
    } else if n == nr(NR_OPENAT2) {
        save_args(reg(regs, 1), flags_of(regs, Flags::OpenHow(2)));
    } else if n == nr(NR_OPEN) {
        save_args(reg(regs, 0), flags_of(regs, Flags::Arg(1)));
    } else if n == nr(NR_CREAT) {
        save_args(reg(regs, 0), flags_of(regs, Flags::Creat));
    }
    0
}
