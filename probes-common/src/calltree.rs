//! calltree: one ring-buffer record per function entry and return.

use crate::COMM_LEN;

/// Bytes of the ring buffer the events go through.
pub const CALL_RING_BYTES: u32 = 4 << 20;

/// Threads whose open kernel calls the context-IP kprobe method remembers at once, and
/// how deep per thread (kernels without `bpf_get_func_ip`: a return is matched to the
/// last entry of its thread).
pub const CALL_STACK_THREADS: u32 = 8192;
pub const CALL_STACK_DEPTH: usize = 32;
const _: () = assert!(
    CALL_STACK_DEPTH.is_power_of_two(),
    "the probes mask with it"
);

/// One thread's open calls, innermost last.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallStack {
    pub depth: u32,
    pub _pad: u32,
    pub ids: [u64; CALL_STACK_DEPTH],
}
/// The probes wake user space only once this much is waiting; user space also polls, so
/// a quiet trace still shows within a fraction of a second.
pub const CALL_WAKEUP_BYTES: u32 = 256 << 10;

pub const CALL_ENTRY: u32 = 0;
pub const CALL_RETURN: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallEvent {
    /// bpf_ktime_get_ns().
    pub ts_ns: u64,
    /// The function: the attach cookie, an index into user space's list of functions
    /// (kprobe.multi, uprobes), or its address from `bpf_get_func_ip()` (kprobes,
    /// fentry/fexit), as the method in use decides.
    pub id: u64,
    pub pid: u32,
    pub tid: u32,
    /// `CALL_ENTRY` or `CALL_RETURN`.
    pub kind: u32,
    pub _pad: u32,
    /// A return's value as the return register held it (all 64 bits; an `int` function
    /// leaves the upper half to chance), 0 on entries.
    pub ret: i64,
    pub comm: [u8; COMM_LEN],
    /// The task's cgroup v2 id.
    pub cgroup: u64,
}

/// Set by user space before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallConfig {
    /// stapr's own process: never traced (its reads of the ring would feed the trace).
    pub self_tgid: u32,
    /// 1: only thread group `tgid`.
    pub filter_tgid: u32,
    pub tgid: u32,
    /// > 0: only commands containing the first `comm_len` bytes of `comm`.
    pub comm_len: u32,
    pub comm: [u8; COMM_LEN],
    /// 0xff for each of the first `comm_len` bytes, 0 after: the match needs no branch
    /// per byte.
    pub comm_mask: [u8; COMM_LEN],
    /// 1: only user id `uid`.
    pub filter_uid: u32,
    pub uid: u32,
}

const _: () = assert!(core::mem::size_of::<CallEvent>() == 64);
const _: () = assert!(core::mem::size_of::<CallConfig>() == 56);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::CallEvent {}
    unsafe impl aya::Pod for super::CallConfig {}
}
