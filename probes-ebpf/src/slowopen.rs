//! slowopen: remember every successful open by (tgid, fd) and, when the fd is closed,
//! send the file to user space only if it was held at least the threshold.
//!
//! Syscall tracepoint records: a common header, `int __syscall_nr` at 8, then the
//! arguments as 8-byte values from offset 16 (sys_enter) or `long ret` at 16 (sys_exit).
#![no_std]
#![no_main]
// Map keys and values are passed by reference: many live in map memory, which the
// helpers accept directly, where passing by value would copy them to the stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes, bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use probes_common::slowopen::{
    Notice, OpenArgs, OpenFile, OpenKey, SlowConfig, SlowFile, CLOSED, END_CLOSE, END_CLOSE_RANGE,
    END_DUP2, END_DUP3, END_EXEC, END_EXIT, END_SLOW_OPEN, END_UNSEEN, FLAG_CLOEXEC,
    FLAG_TRUNCATED, MISSED_ARGS_FULL, MISSED_COUNT, MISSED_RINGBUF_FULL, MISSED_TABLE_FULL,
    NAME_LEN, NR_CLOSE, NR_CLOSE_RANGE, NR_COUNT, NR_CREAT, NR_DUP2, NR_DUP3, NR_NONE, NR_OPEN,
    NR_OPENAT, NR_OPENAT2, OPEN_ARGS_MAX_ENTRIES, OPEN_MAX_ENTRIES, REC_NOTICE, REC_SLOW_FILE,
};
use probes_common::COMM_LEN;
use probes_ebpf::{btf_load, btf_load_str16, cgroup_id, global, tp_field};

probes_ebpf::cgroup_filter!();

#[unsafe(no_mangle)]
static SLOW_CONFIG: SlowConfig = SlowConfig {
    min_ns: 1_000_000_000,
    open_min_ns: 0,
    tgid: 0,
    filter_tgid: 0,
    uid: 0,
    filter_uid: 0,
    task_signal: 0,
    signal_live: 0,
    self_tgid: 0,
    args_from_regs: 0,
    reg_arg: [0; 4],
    task_comm: 0,
    time_opens: 0,
    reg_nr: 0,
    nr: [NR_NONE; NR_COUNT],
    _pad: 0,
};

const O_CLOEXEC: u64 = 0o2000000;
/// `O_CREAT | O_WRONLY | O_TRUNC`, what creat(2) means.
const CREAT_FLAGS: u64 = 0o1101;
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

#[map]
static OPEN_FILES: HashMap<OpenKey, OpenFile> = HashMap::with_max_entries(OPEN_MAX_ENTRIES, 0);
/// Opens in flight, by thread id: their arguments and entry time (only when entry probes
/// run: arguments not readable from registers, or opens timed).
#[map]
static OPEN_ARGS: HashMap<u32, OpenArgs> = HashMap::with_max_entries(OPEN_ARGS_MAX_ENTRIES, 0);
/// Thread groups that have tracked files: only their exec, exit and close_range reach
/// user space.
#[map]
static TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(OPEN_MAX_ENTRIES, 0);
/// Where a new entry is built before it is copied into OPEN_FILES (too big for the stack).
#[map]
static SCRATCH: PerCpuArray<OpenFile> = PerCpuArray::with_max_entries(1, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Opens not tracked because the table was full; records lost because the ring was full;
/// opens not timed because OPEN_ARGS was full.
#[map]
static MISSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(MISSED_COUNT, 0);

#[inline(always)]
fn missed(i: u32) {
    if let Some(c) = MISSED.get_ptr_mut(i) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, off: usize) -> u64 {
    tp_field(ctx, off)
}

#[path = "slowopen/entry.rs"]
mod entry;
#[path = "slowopen/raw.rs"]
mod raw;

use entry::save_args;

/// The current task's saved user registers (classic tracepoints are not given them).
#[inline(always)]
fn task_regs() -> *const u8 {
    let task = unsafe { bpf_get_current_task_btf() };
    unsafe { bpf_task_pt_regs(task) as *const u8 }
}

/// Where an open's flags are.
#[derive(Clone, Copy)]
enum Flags {
    /// In syscall argument N.
    Arg(usize),
    /// In the `struct open_how` (first field: `__u64 flags`) that argument N points to.
    OpenHow(usize),
    /// creat(2): fixed.
    Creat,
}

/// An open's flags, from the registers it entered the syscall with.
#[inline(always)]
fn flags_of(regs: *const u8, flags: Flags) -> u64 {
    match flags {
        Flags::Arg(n) => reg(regs, n),
        Flags::OpenHow(n) => {
            unsafe { bpf_probe_read_user(reg(regs, n) as *const u64) }.unwrap_or(0)
        }
        Flags::Creat => CREAT_FLAGS,
    }
}

/// Syscall argument `n` (0..=3) from the saved user registers.
#[inline(always)]
fn reg(regs: *const u8, n: usize) -> u64 {
    let off = match n {
        0 => global(&SLOW_CONFIG.reg_arg[0]),
        1 => global(&SLOW_CONFIG.reg_arg[1]),
        2 => global(&SLOW_CONFIG.reg_arg[2]),
        _ => global(&SLOW_CONFIG.reg_arg[3]),
    };
    unsafe { btf_load(regs, off) }
}

/// An open returned `ret`; `regs` gives the registers the task entered the syscall with.
#[inline(always)]
fn open_exit(ret: i64, regs: impl FnOnce() -> *const u8, name_arg: usize, flags: Flags) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let from_regs = global(&SLOW_CONFIG.args_from_regs) == 1;
    let timed = global(&SLOW_CONFIG.time_opens) == 1;
    // What the entry probe saved, when entry probes run (explicitly zeroed: an Option
    // here leaves the verifier an uninitialised register on the None path).
    let mut saved = OpenArgs::default();
    let mut have_saved = false;
    if timed || !from_regs {
        let tid = pid_tgid as u32;
        if let Some(a) = unsafe { OPEN_ARGS.get(&tid) } {
            saved = *a;
            have_saved = true;
            let _ = OPEN_ARGS.remove(&tid);
        }
    }
    if ret < 0 && !timed {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let open_ns = if have_saved && saved.entry_ns != 0 {
        now.wrapping_sub(saved.entry_ns)
    } else {
        0
    };
    let open_min = global(&SLOW_CONFIG.open_min_ns);
    let slow_open = open_min != 0 && open_ns >= open_min;
    let held = global(&SLOW_CONFIG.min_ns) != u64::MAX;
    if (ret < 0 || !held) && !slow_open {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let uid = bpf_get_current_uid_gid() as u32;
    if !wanted(tgid, uid) {
        return;
    }
    let comm = if from_regs {
        // Direct loads instead of bpf_get_current_comm()'s string copy. Only the methods
        // that read saved registers take this path (and need the helper, 5.11); the
        // verifier drops it for the others, where `from_regs` is a frozen 0.
        let task = unsafe { bpf_get_current_task_btf() };
        unsafe { btf_load_str16(task as *const u8, global(&SLOW_CONFIG.task_comm)) }
    } else {
        bpf_get_current_comm().unwrap_or([0; 16])
    };
    let args = if have_saved {
        saved
    } else if from_regs {
        // The registers the process entered the syscall with are still saved: read
        // the arguments here instead of paying for an entry probe and a map round trip.
        let regs = regs();
        OpenArgs {
            filename: reg(regs, name_arg),
            flags: flags_of(regs, flags),
            entry_ns: 0,
        }
    } else {
        return;
    };
    let key = OpenKey {
        tgid,
        fd: ret as u32,
    };
    let f = if ret >= 0 && held {
        track(key, pid_tgid, uid, &args, comm, now, open_ns)
    } else {
        // A slow open that failed, or one whose file is not tracked: built aside.
        match SCRATCH.get_ptr_mut(0) {
            Some(f) => {
                let f = unsafe { &mut *f };
                fill(f, pid_tgid, uid, &args, comm, open_ns);
                f.start_ns = now;
                Some(f as *mut OpenFile)
            }
            None => None,
        }
    };
    if slow_open {
        if let Some(f) = f {
            report(key, unsafe { &*f }, now, END_SLOW_OPEN);
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn stapr_so_x_open(ctx: TracePointContext) -> u32 {
    open_exit(arg(&ctx, RET) as i64, task_regs, 0, Flags::Arg(1));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn stapr_so_x_at(ctx: TracePointContext) -> u32 {
    open_exit(arg(&ctx, RET) as i64, task_regs, 1, Flags::Arg(2));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn stapr_so_x_at2(ctx: TracePointContext) -> u32 {
    open_exit(arg(&ctx, RET) as i64, task_regs, 1, Flags::OpenHow(2));
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn stapr_so_x_creat(ctx: TracePointContext) -> u32 {
    open_exit(arg(&ctx, RET) as i64, task_regs, 0, Flags::Creat);
    0
}

/// Whether the process is one the filters keep (never stapr itself).
#[inline(always)]
fn wanted(tgid: u32, uid: u32) -> bool {
    tgid != global(&SLOW_CONFIG.self_tgid)
        && (global(&SLOW_CONFIG.filter_tgid) == 0 || tgid == global(&SLOW_CONFIG.tgid))
        && (global(&SLOW_CONFIG.filter_uid) == 0 || uid == global(&SLOW_CONFIG.uid))
        && in_cgroup()
}

/// Everything of an entry but its start time.
#[inline(always)]
fn fill(
    f: &mut OpenFile,
    pid_tgid: u64,
    uid: u32,
    args: &OpenArgs,
    comm: [u8; COMM_LEN],
    open_ns: u64,
) {
    f.tid = pid_tgid as u32;
    f.uid = uid;
    f.open_ns = open_ns;
    f.flags = if args.flags & O_CLOEXEC != 0 {
        FLAG_CLOEXEC
    } else {
        0
    };
    f.comm = comm;
    let src = args.filename as *const u8;
    match unsafe { bpf_probe_read_user_str_bytes(src, &mut f.name) } {
        Ok(s) if s.len() == NAME_LEN - 1 => {
            // The buffer is full: truncated unless the name ends exactly here.
            let next = unsafe { bpf_probe_read_user(src.wrapping_add(NAME_LEN - 1)) };
            if next.unwrap_or(0u8) != 0 {
                f.flags |= FLAG_TRUNCATED;
            }
        }
        Ok(_) => {}
        Err(_) => f.name[0] = 0,
    }
}

/// Starts tracking the file an open returned; the entry it now has (None when it could
/// not get one).
#[inline(always)]
fn track(
    key: OpenKey,
    pid_tgid: u64,
    uid: u32,
    args: &OpenArgs,
    comm: [u8; COMM_LEN],
    now: u64,
    open_ns: u64,
) -> Option<*mut OpenFile> {
    // Reuse the process's slot for this fd number if it has one (no lock, no copy);
    // otherwise build the entry in per-CPU scratch space and insert it.
    let existing = OPEN_FILES.get_ptr_mut(&key);
    let f = match existing {
        Some(f) => f,
        None => SCRATCH.get_ptr_mut(0)?,
    };
    let fr = unsafe { &mut *f };
    if existing.is_some()
        && fr.start_ns != CLOSED
        && now.wrapping_sub(fr.start_ns) >= global(&SLOW_CONFIG.min_ns)
    {
        // The previous file on this fd ended unseen and may have been slow.
        report(key, fr, now, END_UNSEEN);
    }
    fill(fr, pid_tgid, uid, args, comm, open_ns);
    // Last: a slot with a start time is an open file.
    fr.start_ns = now;
    if existing.is_some() {
        // A reused slot: the process is already in TGIDS (pids are not reused within
        // the moment user space takes to free an exited process's slots).
        return Some(f);
    }
    if OPEN_FILES.insert(&key, fr, 0).is_err() {
        missed(MISSED_TABLE_FULL);
        return Some(f);
    }
    let tgid = key.tgid;
    if unsafe { TGIDS.get(&tgid) }.is_none() {
        let _ = TGIDS.insert(&tgid, &1, 0);
    }
    Some(f)
}

/// The fd stops referring to the tracked file: report it if it was slow and mark the
/// slot closed (it stays for the next open of the same fd number).
#[inline(always)]
fn end(tgid: u32, fd: u32, how: u32) {
    let key = OpenKey { tgid, fd };
    let Some(file) = OPEN_FILES.get_ptr_mut(&key) else {
        return;
    };
    let file = unsafe { &mut *file };
    if file.start_ns == CLOSED {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(file.start_ns) >= global(&SLOW_CONFIG.min_ns) {
        report(key, file, now, how);
    }
    file.start_ns = CLOSED;
}

#[inline(always)]
fn report(key: OpenKey, file: &OpenFile, end_ns: u64, how: u32) {
    match EVENTS.reserve::<SlowFile>(0) {
        Some(mut slot) => {
            let rec = slot.as_mut_ptr();
            unsafe {
                (*rec).kind = REC_SLOW_FILE;
                (*rec).end = how;
                (*rec).key = key;
                (*rec).end_ns = end_ns;
                (*rec).cgroup = cgroup_id();
                (*rec).file = *file;
            }
            slot.submit(0);
        }
        None => missed(MISSED_RINGBUF_FULL),
    }
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn stapr_so_close(ctx: TracePointContext) -> u32 {
    end(current_tgid(), arg(&ctx, ARG0) as u32, END_CLOSE);
    0
}

#[inline(always)]
fn dup_onto(ctx: &TracePointContext, how: u32) {
    dup_fds(arg(ctx, ARG0) as u32, arg(ctx, ARG1) as u32, how);
}

/// dup2/dup3(old, new): the file on `new` ends; dup2(fd, fd) closes nothing.
#[inline(always)]
fn dup_fds(old: u32, new: u32, how: u32) {
    if old != new {
        end(current_tgid(), new, how);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup2")]
pub fn stapr_so_dup2(ctx: TracePointContext) -> u32 {
    dup_onto(&ctx, END_DUP2);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_dup3")]
pub fn stapr_so_dup3(ctx: TracePointContext) -> u32 {
    dup_onto(&ctx, END_DUP3);
    0
}

#[inline(always)]
fn notice(tgid: u32, how: u32, first_fd: u32, last_fd: u32, range_flags: u32) {
    let n = Notice {
        kind: REC_NOTICE,
        end: how,
        tgid,
        first_fd,
        last_fd,
        range_flags,
        time_ns: unsafe { bpf_ktime_get_ns() },
        cgroup: cgroup_id(),
    };
    if EVENTS.output::<Notice>(&n, 0).is_err() {
        missed(MISSED_RINGBUF_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_close_range")]
pub fn stapr_so_crange(ctx: TracePointContext) -> u32 {
    close_range(arg(&ctx, ARG0), arg(&ctx, ARG1), arg(&ctx, ARG2));
    0
}

/// close_range(first, last, flags) of a process with tracked files: a notice.
#[inline(always)]
fn close_range(first: u64, last: u64, flags: u64) {
    let tgid = current_tgid();
    if unsafe { TGIDS.get(&tgid) }.is_some() {
        notice(
            tgid,
            END_CLOSE_RANGE,
            first as u32,
            last as u32,
            flags as u32,
        );
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn stapr_so_exec(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if unsafe { TGIDS.get(&tgid) }.is_some() {
        notice(tgid, END_EXEC, 0, 0, 0);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn stapr_so_exit(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if unsafe { TGIDS.get(&tgid) }.is_none() {
        return 0;
    }
    // Without BTF offsets, the group leader's exit stands for the process's.
    if global(&SLOW_CONFIG.task_signal) == 0 {
        if bpf_get_current_pid_tgid() as u32 == tgid {
            notice(tgid, END_EXIT, 0, 0, 0);
            let _ = TGIDS.remove(&tgid);
        }
        return 0;
    }
    // do_exit() decrements signal->live before this tracepoint: 0 means the last thread
    // of the group is leaving and its files are about to be closed.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal = unsafe {
        bpf_probe_read_kernel(
            task.wrapping_add(global(&SLOW_CONFIG.task_signal) as usize) as *const *const u8
        )
    };
    let Ok(signal) = signal else {
        return 0;
    };
    let live = unsafe {
        bpf_probe_read_kernel(
            signal.wrapping_add(global(&SLOW_CONFIG.signal_live) as usize) as *const i32,
        )
    };
    if live == Ok(0) {
        notice(tgid, END_EXIT, 0, 0, 0);
        let _ = TGIDS.remove(&tgid);
    }
    0
}
