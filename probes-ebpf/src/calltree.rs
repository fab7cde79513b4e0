//! calltree: a record per function entry and return, in one ring buffer so each thread's
//! events stay in order. The tree itself is built in user space.
//!
//! One body, several attach flavours: kprobe.multi (cookie = function index << 1 | return),
//! kprobe/kretprobe and fentry/fexit (function address), uprobe/uretprobe (cookie = index).
//! Returns carry the function's return value: the return register (kprobe.multi,
//! kretprobe, uretprobe) or `bpf_get_func_ret()` (fexit).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        generated::{bpf_get_attach_cookie, bpf_get_func_ip, bpf_get_func_ret},
    },
    macros::{fentry, fexit, kprobe, kretprobe, map, uprobe, uretprobe},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
    EbpfContext,
};
use probes_common::{
    calltree::{
        CallConfig, CallEvent, CallStack, CALL_ENTRY, CALL_RETURN, CALL_RING_BYTES,
        CALL_STACK_DEPTH, CALL_STACK_THREADS, CALL_WAKEUP_BYTES,
    },
    COMM_LEN,
};
use probes_ebpf::{cgroup_id, global};

probes_ebpf::cgroup_filter!();

#[unsafe(no_mangle)]
static CALL_CONFIG: CallConfig = CallConfig {
    self_tgid: 0,
    filter_tgid: 0,
    tgid: 0,
    comm_len: 0,
    comm: [0; COMM_LEN],
    comm_mask: [0; COMM_LEN],
    filter_uid: 0,
    uid: 0,
};

#[map]
static CALL_EVENTS: RingBuf = RingBuf::with_byte_size(CALL_RING_BYTES, 0);
/// Events lost: [0] the ring buffer was full, [1] a return whose entry was not kept
/// (the context-IP method's table or depth full).
#[map]
static CALL_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);
/// The context-IP method's open calls per thread.
#[map]
static CALL_STACKS: HashMap<u32, CallStack> = HashMap::with_max_entries(CALL_STACK_THREADS, 0);
/// An empty stack to insert from (too large for the BPF stack); never written.
#[map]
static CALL_STACK_EMPTY: Array<CallStack> = Array::with_max_entries(1, 0);

#[inline(always)]
fn lost(why: u32) {
    if let Some(c) = CALL_LOST.get_ptr_mut(why) {
        unsafe { *c += 1 };
    }
}

/// Whether `comm` contains the first `len` bytes of `want` (`mask` has 0xff for each of
/// them). Each start offset compares all bytes without a branch (xor, and, or), so the
/// verifier walks one path per offset whatever the length: a loop that stops at the
/// first differing byte made it explore every prefix of every offset.
#[inline(always)]
fn contains(
    comm: &[u8; COMM_LEN],
    want: &[u8; COMM_LEN],
    mask: &[u8; COMM_LEN],
    len: usize,
) -> bool {
    let mut start = 0;
    while start < COMM_LEN {
        let mut diff = 0u8;
        let mut i = 0;
        while start + i < COMM_LEN {
            diff |= (comm[start + i] ^ want[i]) & mask[i];
            i += 1;
        }
        if diff == 0 && start + len <= COMM_LEN {
            return true;
        }
        start += 1;
    }
    false
}

#[inline(always)]
fn emit(id: u64, kind: u32, ret: i64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let cfg = global(&CALL_CONFIG);
    if tgid == cfg.self_tgid || (cfg.filter_tgid != 0 && tgid != cfg.tgid) {
        return 0;
    }
    if cfg.filter_uid != 0 && bpf_get_current_uid_gid() as u32 != cfg.uid {
        return 0;
    }
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let len = cfg.comm_len as usize;
    if len > 0 && (len > COMM_LEN || !contains(&comm, &cfg.comm, &cfg.comm_mask, len)) {
        return 0;
    }
    if !in_cgroup() {
        return 0;
    }
    match CALL_EVENTS.reserve::<CallEvent>(0) {
        Some(mut slot) => {
            slot.write(CallEvent {
                ts_ns: unsafe { bpf_ktime_get_ns() },
                id,
                pid: tgid,
                tid: pid_tgid as u32,
                kind,
                _pad: 0,
                ret,
                comm,
                cgroup: cgroup_id(),
            });
            // Batch wake-ups: user space polls for the rest.
            let waiting = CALL_EVENTS.query(0);
            let flags = if waiting >= CALL_WAKEUP_BYTES as u64 {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            slot.submit(flags as u64);
        }
        None => lost(0),
    }
    0
}

#[kprobe]
pub fn stapr_ct_multi(ctx: ProbeContext) -> u32 {
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = (cookie & 1) as u32;
    // The same program serves returns: there the return register holds the value.
    let ret = if kind == CALL_RETURN {
        RetProbeContext::new(ctx.as_ptr()).ret::<i64>()
    } else {
        0
    };
    emit(cookie >> 1, kind, ret)
}

#[kprobe]
pub fn stapr_ct_kent(ctx: ProbeContext) -> u32 {
    emit(unsafe { bpf_get_func_ip(ctx.as_ptr()) }, CALL_ENTRY, 0)
}

#[kretprobe]
pub fn stapr_ct_kret(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<i64>();
    emit(unsafe { bpf_get_func_ip(ctx.as_ptr()) }, CALL_RETURN, ret)
}

// The function named here is a placeholder: user space loads one copy per traced function
// with that function's BTF id.
#[fentry(function = "vfs_read")]
pub fn stapr_ct_fent(ctx: FEntryContext) -> u32 {
    emit(unsafe { bpf_get_func_ip(ctx.as_ptr()) }, CALL_ENTRY, 0)
}

#[fexit(function = "vfs_read")]
pub fn stapr_ct_fexit(ctx: FExitContext) -> u32 {
    let mut ret = 0u64;
    // Fails (and leaves 0) only for a function that returns nothing.
    let _ = unsafe { bpf_get_func_ret(ctx.as_ptr(), &mut ret) };
    emit(
        unsafe { bpf_get_func_ip(ctx.as_ptr()) },
        CALL_RETURN,
        ret as i64,
    )
}

#[uprobe]
pub fn stapr_ct_uent(ctx: ProbeContext) -> u32 {
    emit(
        unsafe { bpf_get_attach_cookie(ctx.as_ptr()) },
        CALL_ENTRY,
        0,
    )
}

#[uretprobe]
pub fn stapr_ct_uret(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<i64>();
    emit(
        unsafe { bpf_get_attach_cookie(ctx.as_ptr()) },
        CALL_RETURN,
        ret,
    )
}

/// The probed function's address from a kprobe's registers: the saved instruction
/// pointer, which x86-64 leaves one byte past it (after the breakpoint, or as the ftrace
/// handler sets it), arm64 on it.
#[inline(always)]
fn entry_ip(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // user_pt_regs { regs[31], sp, pc, pstate }
        unsafe { *(ctx.as_ptr() as *const u64).add(32) }
    }
    #[cfg(not(bpf_target_arch = "aarch64"))]
    {
        let regs = ctx.as_ptr() as *const aya_ebpf::bindings::pt_regs;
        unsafe { (*regs).rip }.wrapping_sub(1)
    }
}

/// Entry of the context-IP method (kernels without `bpf_get_func_ip`, before 5.15): the
/// function comes from the registers, and is kept for its return.
#[kprobe]
pub fn stapr_ct_kent_ip(ctx: ProbeContext) -> u32 {
    let ip = entry_ip(&ctx);
    let tid = bpf_get_current_pid_tgid() as u32;
    let stack = match CALL_STACKS.get_ptr_mut(tid) {
        Some(s) => s,
        None => {
            let Some(empty) = CALL_STACK_EMPTY.get(0) else {
                return emit(ip, CALL_ENTRY, 0);
            };
            if CALL_STACKS.insert(tid, empty, 0).is_err() {
                return emit(ip, CALL_ENTRY, 0);
            }
            match CALL_STACKS.get_ptr_mut(tid) {
                Some(s) => s,
                None => return emit(ip, CALL_ENTRY, 0),
            }
        }
    };
    // Raw accesses, the index masked: bounds the verifier can follow.
    let depth = unsafe { (*stack).depth };
    if depth < CALL_STACK_DEPTH as u32 {
        let d = (depth & (CALL_STACK_DEPTH as u32 - 1)) as usize;
        unsafe { (*stack).ids[d] = ip };
    }
    unsafe { (*stack).depth = depth.wrapping_add(1) };
    emit(ip, CALL_ENTRY, 0)
}

/// Return of the context-IP method: a kretprobe's registers name no function, but a
/// thread's returns come in the reverse order of its entries.
#[kretprobe]
pub fn stapr_ct_kret_ip(ctx: RetProbeContext) -> u32 {
    let ret = ctx.ret::<i64>();
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(stack) = CALL_STACKS.get_ptr_mut(tid) else {
        lost(1);
        return 0;
    };
    let depth = unsafe { (*stack).depth };
    if depth == 0 {
        lost(1);
        return 0;
    }
    unsafe { (*stack).depth = depth - 1 };
    // Read back as it is stored: the bound checked below is then the index's own (the
    // compiler otherwise checks `depth` and indexes with `depth - 1`, which the verifier
    // cannot follow).
    let depth = unsafe { core::ptr::read_volatile(&(*stack).depth) };
    let mut ip = 0;
    if depth < CALL_STACK_DEPTH as u32 {
        let d = (depth & (CALL_STACK_DEPTH as u32 - 1)) as usize;
        ip = unsafe { (*stack).ids[d] };
    }
    if depth == 0 {
        let _ = CALL_STACKS.remove(tid);
    }
    if ip == 0 {
        lost(1);
        return 0;
    }
    emit(ip, CALL_RETURN, ret)
}
