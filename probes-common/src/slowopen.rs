//! slowopen: files held open at least a threshold, matched in the kernel.

use crate::COMM_LEN;

/// Bytes kept of the file name a process passed to open (including the NUL).
pub const NAME_LEN: usize = 256;
/// Capacity of the in-kernel table of open files.
pub const OPEN_MAX_ENTRIES: u32 = 16384;
/// Capacity of the in-kernel table of opens in progress (one per thread inside an open
/// call), filled by the entry probes.
pub const OPEN_ARGS_MAX_ENTRIES: u32 = 8192;

/// `OpenFile::start_ns` of a slot whose fd was closed. Slots stay in the table while their
/// process lives, so reopening the same fd number (what a server does all day) rewrites
/// the slot in place instead of inserting and deleting under the map's bucket lock.
pub const CLOSED: u64 = 0;

/// `OpenFile::flags` bits.
pub const FLAG_CLOEXEC: u32 = 1;
/// The name did not fit in `NAME_LEN` bytes.
pub const FLAG_TRUNCATED: u32 = 2;

/// Why a file stopped being open.
pub const END_CLOSE: u32 = 1;
pub const END_DUP2: u32 = 2;
pub const END_EXEC: u32 = 3;
pub const END_EXIT: u32 = 4;
pub const END_CLOSE_RANGE: u32 = 5;
pub const END_DUP3: u32 = 6;
/// The fd number was opened again while the slot still held an open file: the file ended
/// without a close the probes saw (exec, close_range, or something untraced). Sent with
/// `end_ns` = the reopen time, for user space to match against the notices it has had.
pub const END_UNSEEN: u32 = 7;
/// `--open-min`: the open call itself took at least the threshold. Sent when it returns,
/// with `key.fd` = its return value (a negative errno when it failed) and `end_ns` = the
/// return time; `file.open_ns` holds the open's duration.
pub const END_SLOW_OPEN: u32 = 8;

/// Ring buffer record kinds (the first u32 of every record).
pub const REC_SLOW_FILE: u32 = 1;
pub const REC_NOTICE: u32 = 2;

/// `MISSED` indices.
pub const MISSED_TABLE_FULL: u32 = 0;
pub const MISSED_RINGBUF_FULL: u32 = 1;
/// An entry probe found the table of opens in progress full: that open is not timed
/// (and, where the exit cannot read open's arguments from the registers, not tracked).
pub const MISSED_ARGS_FULL: u32 = 2;
pub const MISSED_COUNT: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpenKey {
    /// Thread group id: a file opened in one thread and closed in another is one file.
    pub tgid: u32,
    pub fd: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFile {
    /// bpf_ktime_get_ns() when the open returned.
    pub start_ns: u64,
    /// How long the open call itself took (entry to return), 0 when not timed.
    pub open_ns: u64,
    /// The thread that opened it.
    pub tid: u32,
    pub uid: u32,
    pub flags: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    pub name: [u8; NAME_LEN],
}

impl Default for OpenFile {
    fn default() -> Self {
        OpenFile {
            start_ns: 0,
            open_ns: 0,
            tid: 0,
            uid: 0,
            flags: 0,
            _pad: 0,
            comm: [0; COMM_LEN],
            name: [0; NAME_LEN],
        }
    }
}

/// A file that was held at least the threshold, sent when it ended: closed, dup2/dup3'd
/// over, or found replaced by a reopen of its fd (`END_UNSEEN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowFile {
    /// `REC_SLOW_FILE`.
    pub kind: u32,
    /// `END_CLOSE`, `END_DUP2`, `END_DUP3`, `END_UNSEEN` or `END_SLOW_OPEN`.
    pub end: u32,
    pub key: OpenKey,
    pub end_ns: u64,
    /// The cgroup v2 id of the task that ended the file (the holder).
    pub cgroup: u64,
    pub file: OpenFile,
}

/// Something only user space can match against the table (it cannot be iterated from a
/// probe): a process that exec'd or exited, or a close_range, for a process that has
/// tracked files.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    /// `REC_NOTICE`.
    pub kind: u32,
    /// `END_EXEC`, `END_EXIT` or `END_CLOSE_RANGE`.
    pub end: u32,
    pub tgid: u32,
    /// close_range's first and last fd.
    pub first_fd: u32,
    pub last_fd: u32,
    /// close_range's flags (CLOSE_RANGE_CLOEXEC marks instead of closing).
    pub range_flags: u32,
    pub time_ns: u64,
    /// The cgroup v2 id of the task the notice is about.
    pub cgroup: u64,
}

/// Arguments of an open in flight, saved at syscall entry for the exit probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenArgs {
    pub filename: u64,
    pub flags: u64,
    /// bpf_ktime_get_ns() at the syscall's entry (0 from the exit-only path).
    pub entry_ns: u64,
}

/// Filters and the threshold, set before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowConfig {
    /// Files held at least this long are reported; `u64::MAX`: none (`--open-min` alone).
    pub min_ns: u64,
    /// Opens that themselves took at least this long are reported as they return; 0: none.
    pub open_min_ns: u64,
    /// Only this thread group when `filter_tgid` is 1.
    pub tgid: u32,
    pub filter_tgid: u32,
    /// Only this uid when `filter_uid` is 1.
    pub uid: u32,
    pub filter_uid: u32,
    /// Offsets for exit detection: `task_struct.signal`, `signal_struct.live`.
    pub task_signal: u32,
    pub signal_live: u32,
    /// stapr's own thread group, never tracked.
    pub self_tgid: u32,
    /// 1: the open exit probes read the syscall's arguments from the task's saved user
    /// registers (`bpf_task_pt_regs`, offsets below), so no entry probe is needed.
    /// 0: entry probes save them in `OPEN_ARGS`.
    pub args_from_regs: u32,
    /// Offsets in `struct pt_regs` of syscall arguments 0..=3 (x86_64: di, si, dx, r10).
    pub reg_arg: [u32; 4],
    /// `task_struct.comm`, read directly when `args_from_regs` is 1.
    pub task_comm: u32,
    /// 1: entry probes run and time every open (`--open-min`, `-v`).
    pub time_opens: u32,
    /// The raw-syscall programs (BTF tracepoints on raw_syscalls:sys_enter/sys_exit):
    /// `struct pt_regs` member holding the syscall number (x86-64 `orig_ax`, arm64
    /// `syscallno`, read as its low 32 bits) and this architecture's numbers of the calls
    /// they handle, indexed by `NR_*` (`NR_NONE` where it has no such call).
    pub reg_nr: u32,
    pub nr: [u32; NR_COUNT],
    pub _pad: u32,
}

/// `SlowConfig::nr` indices.
pub const NR_CLOSE: usize = 0;
pub const NR_OPENAT: usize = 1;
pub const NR_OPEN: usize = 2;
pub const NR_OPENAT2: usize = 3;
pub const NR_CREAT: usize = 4;
pub const NR_DUP2: usize = 5;
pub const NR_DUP3: usize = 6;
pub const NR_CLOSE_RANGE: usize = 7;
pub const NR_COUNT: usize = 8;
/// A syscall this architecture does not have.
pub const NR_NONE: u32 = u32::MAX;

const _: () = assert!(core::mem::size_of::<OpenKey>() == 8);
const _: () = assert!(core::mem::size_of::<OpenFile>() == 32 + COMM_LEN + NAME_LEN);
const _: () = assert!(core::mem::size_of::<SlowFile>() == 32 + core::mem::size_of::<OpenFile>());
const _: () = assert!(core::mem::size_of::<Notice>() == 40);
const _: () = assert!(core::mem::size_of::<OpenArgs>() == 24);
const _: () = assert!(core::mem::size_of::<SlowConfig>() == 112);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::OpenKey {}
    unsafe impl aya::Pod for super::OpenFile {}
    unsafe impl aya::Pod for super::SlowFile {}
    unsafe impl aya::Pod for super::Notice {}
    unsafe impl aya::Pod for super::OpenArgs {}
    unsafe impl aya::Pod for super::SlowConfig {}
}
