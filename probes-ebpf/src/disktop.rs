//! disktop: bytes returned by reads and writes of files on block devices and network
//! filesystems, per (process, device), counted at syscall exit. The fd is resolved to its file, and the file to the
//! block device under its filesystem, through BTF offsets handed in at load time.
//!
//! Where the kernel allows fexit, `vfs_read`/`vfs_write` are probed instead: the file is
//! then a typed argument and the whole walk is direct loads.
//!
//! `--block` instead counts requests issued to devices (block:block_rq_issue).
#![no_std]
#![no_main]
// Map keys and values are passed by reference: many live in map memory, which the
// helpers accept directly, where passing by value would copy them to the stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_task_pt_regs,
    },
    macros::{fexit, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{FExitContext, TracePointContext},
};
use probes_common::disktop::{
    DiskCounters, DiskKey, DiskOffsets, DiskRun, DiskXfer, DISK_MAX_ENTRIES, DISK_SLOTS,
    DISK_XFER_ENTRIES, NETWORK_FS_MAGICS,
};
use probes_ebpf::{
    add_or_insert, atomic_add, btf_load, cgroup_id, claim, global, release, tp_field, Kptr,
};

probes_ebpf::cgroup_filter!();

#[unsafe(no_mangle)]
static DISK_OFFSETS: DiskOffsets = DiskOffsets {
    reg_arg0: 0,
    task_files: 0,
    task_real_parent: 0,
    task_tgid: 0,
    task_comm: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    inode_sb: 0,
    sb_bdev: 0,
    bdev_dev: 0,
    sb_magic: 0,
    sb_dev: 0,
    rq_dev: 0,
    rq_bytes: 0,
    rq_rwbs: 0,
};

#[map]
static DISK_COUNTS_0: PerCpuHashMap<DiskKey, DiskCounters> =
    PerCpuHashMap::with_max_entries(DISK_MAX_ENTRIES, 0);
#[map]
static DISK_COUNTS_1: PerCpuHashMap<DiskKey, DiskCounters> =
    PerCpuHashMap::with_max_entries(DISK_MAX_ENTRIES, 0);
#[map]
static DISK_SLOT: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static DISK_RUN: PerCpuArray<DiskRun> = PerCpuArray::with_max_entries(DISK_SLOTS, 0);
/// Reads and writes (calls) not counted because the hash map was full (or, for sendfile,
/// splice and copy_file_range, [`DISK_XFER`] was).
#[map]
static DISK_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Per thread (pid_tgid): the descriptors of the sendfile, splice or copy_file_range it
/// is in, from entry to exit.
#[map]
static DISK_XFER: HashMap<u64, DiskXfer> = HashMap::with_max_entries(DISK_XFER_ENTRIES, 0);

const RET: usize = 16;

#[inline(always)]
fn off(field: &u32) -> u32 {
    global(field)
}

fn slot() -> u32 {
    match DISK_SLOT.get(0) {
        Some(&s) if s < DISK_SLOTS => s,
        _ => 0,
    }
}

#[inline(always)]
fn add(map: &PerCpuHashMap<DiskKey, DiskCounters>, key: &DiskKey, c: &DiskCounters) {
    let added = add_or_insert(map, key, c, |v, c| unsafe {
        atomic_add(&raw mut (*v).read_bytes, c.read_bytes);
        atomic_add(&raw mut (*v).write_bytes, c.write_bytes);
        atomic_add(&raw mut (*v).calls, c.calls);
    });
    if !added {
        dropped(c.calls);
    }
}

/// `n` calls not counted: a map was full.
#[inline(always)]
fn dropped(n: u64) {
    if let Some(d) = DISK_DROPPED.get_ptr_mut(0) {
        unsafe { atomic_add(d, n) };
    }
}

#[inline(always)]
fn add_to_slot(slot: u32, key: &DiskKey, c: &DiskCounters) {
    if slot == 0 {
        add(&DISK_COUNTS_0, key, c);
    } else {
        add(&DISK_COUNTS_1, key, c);
    }
}

#[inline(always)]
fn bytes(c: &mut DiskCounters, n: u64, write: bool) {
    c.calls += 1;
    if write {
        c.write_bytes += n;
    } else {
        c.read_bytes += n;
    }
}

/// Reads a kernel pointer at `base + off` (base is a plain address, not BTF-typed).
#[inline(always)]
fn read_ptr(base: u64, off: u32) -> u64 {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const u64) }.unwrap_or(0)
}

/// The file behind `fd` in the task's table, or 0.
#[inline(always)]
fn fd_file(task: Kptr, fd: u32) -> u64 {
    let o = &DISK_OFFSETS;
    let files = unsafe { task.member(off(&o.task_files)) };
    if files.is_null() {
        return 0;
    }
    let fdt = unsafe { files.member(off(&o.files_fdt)) };
    if fdt.is_null() {
        return 0;
    }
    let max: u32 = unsafe { fdt.load(off(&o.fdt_max_fds)) };
    if fd >= max {
        return 0;
    }
    let array: u64 = unsafe { fdt.load(off(&o.fdt_fd)) };
    if array == 0 {
        return 0;
    }
    read_ptr(array, fd * 8)
}

/// The device a superblock without a block device is counted under: its anonymous
/// s_dev when it is a network filesystem's, else 0 (pipes, sockets, tmpfs, proc...).
#[inline(always)]
fn network_dev(magic: u64, s_dev: impl FnOnce() -> u32) -> u32 {
    let mut i = 0;
    while i < NETWORK_FS_MAGICS.len() {
        if magic == NETWORK_FS_MAGICS[i] {
            return s_dev();
        }
        i += 1;
    }
    0
}

/// The device under the file's filesystem (dev_t): its block device, or a network
/// filesystem's anonymous device; 0 when there is neither.
#[inline(always)]
fn file_bdev(file: u64) -> u32 {
    let o = &DISK_OFFSETS;
    let inode = read_ptr(file, off(&o.file_inode));
    if inode == 0 {
        return 0;
    }
    let sb = read_ptr(inode, off(&o.inode_sb));
    if sb == 0 {
        return 0;
    }
    let bdev = read_ptr(sb, off(&o.sb_bdev));
    if bdev == 0 {
        return network_dev(read_ptr(sb, off(&o.sb_magic)), || {
            unsafe { bpf_probe_read_kernel((sb + off(&o.sb_dev) as u64) as *const u32) }
                .unwrap_or(0)
        });
    }
    unsafe { bpf_probe_read_kernel((bdev + off(&o.bdev_dev) as u64) as *const u32) }.unwrap_or(0)
}

/// The thread group id of the task's parent (`real_parent->tgid`), 0 if it has none.
#[inline(always)]
fn ppid(task: Kptr) -> u32 {
    let o = &DISK_OFFSETS;
    let parent = unsafe { task.member(off(&o.task_real_parent)) };
    if parent.is_null() {
        0
    } else {
        unsafe { parent.load(off(&o.task_tgid)) }
    }
}

/// Adds `n` bytes moved on `file` (through `fd`, 0 on the fexit path) to the CPU's run,
/// starting a new run when the thread or file changed. `dev_of` finds the file's block
/// device (0: none) and runs only when a run starts.
#[inline(always)]
fn count(task: Kptr, file: u64, fd: u32, n: u64, write: bool, dev_of: impl FnOnce() -> u32) {
    let slot = slot();
    let Some(run) = DISK_RUN.get_ptr_mut(slot) else {
        return;
    };
    let busy = unsafe { &raw mut (*run).busy };
    if !unsafe { claim(busy) } {
        // This program preempted another one in the middle of the run: leave the run to
        // it and count this call on its own.
        let dev = if in_cgroup() { dev_of() } else { 0 };
        if dev != 0 {
            let mut c = DiskCounters::default();
            bytes(&mut c, n, write);
            add_to_slot(slot, &new_key(task, bpf_get_current_pid_tgid(), dev), &c);
        }
        return;
    }
    count_in_run(unsafe { &mut *run }, slot, task, file, fd, n, write, dev_of);
    unsafe { release(busy) };
}

/// Adds to this CPU's run when the call continues it, or ends it and starts another.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn count_in_run(
    run: &mut DiskRun,
    slot: u32,
    task: Kptr,
    file: u64,
    fd: u32,
    n: u64,
    write: bool,
    dev_of: impl FnOnce() -> u32,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if run.valid == 1 && run.pid_tgid == pid_tgid && run.fd == fd && run.file == file {
        if run.skip == 0 {
            bytes(&mut run.counts, n, write);
        }
        return;
    }
    if run.valid == 1 && run.skip == 0 {
        add_to_slot(slot, &run.key, &run.counts);
    }
    run.pid_tgid = pid_tgid;
    run.file = file;
    run.fd = fd;
    run.valid = 1;
    run.counts = DiskCounters::default();
    // Outside --cgroup, or pipes, sockets, tmpfs, proc, FUSE...: remember the verdict for
    // the rest of the run.
    let dev = if in_cgroup() { dev_of() } else { 0 };
    if dev == 0 {
        run.skip = 1;
        return;
    }
    run.skip = 0;
    run.key = new_key(task, pid_tgid, dev);
    bytes(&mut run.counts, n, write);
}

/// The table key of the current task's calls on device `dev`.
#[inline(always)]
fn new_key(task: Kptr, pid_tgid: u64, dev: u32) -> DiskKey {
    DiskKey {
        pid: (pid_tgid >> 32) as u32,
        ppid: ppid(task),
        uid: bpf_get_current_uid_gid() as u32,
        dev,
        comm: unsafe { task.str16(off(&DISK_OFFSETS.task_comm)) },
        cgroup: cgroup_id(),
    }
}

#[inline(always)]
fn syscall_exit(ctx: &TracePointContext, write: bool) {
    let ret: i64 = tp_field(ctx, RET);
    if ret <= 0 {
        return;
    }
    // This method needs bpf_get_current_task_btf and bpf_task_pt_regs: the task is typed.
    let task = current_task();
    let regs = unsafe { bpf_task_pt_regs(task.raw() as *mut _) } as *const u8;
    let fd: u64 = unsafe { btf_load(regs, off(&DISK_OFFSETS.reg_arg0)) };
    let fd = fd as u32;
    count_fd(task, fd, ret as u64, write);
}

/// Counts `n` bytes moved through `fd` of the current task, if it is a file.
#[inline(always)]
fn count_fd(task: Kptr, fd: u32, n: u64, write: bool) {
    let file = fd_file(task, fd);
    if file != 0 {
        count(task, file, fd, n, write, || file_bdev(file));
    }
}

/// Offset of syscall argument `i` in a classic `sys_enter_*` tracepoint's record.
const fn arg(i: usize) -> usize {
    16 + 8 * i
}

/// Notes a sendfile, splice or copy_file_range's descriptors for its exit.
#[inline(always)]
fn xfer_enter(ctx: &TracePointContext, fd_in: usize, fd_out: usize) {
    let x = DiskXfer {
        fd_in: tp_field::<u64>(ctx, arg(fd_in)) as u32,
        fd_out: tp_field::<u64>(ctx, arg(fd_out)) as u32,
    };
    if DISK_XFER
        .insert(&bpf_get_current_pid_tgid(), &x, 0)
        .is_err()
    {
        dropped(1);
    }
}

/// fexit path: the file is a typed argument, so the whole walk to the device is direct
/// loads. `vfs_read(file, buf, count, pos)` / `vfs_write(...)`, return value last.
#[inline(always)]
fn vfs_exit(ctx: &FExitContext, write: bool) {
    let ret: i64 = ctx.arg(4);
    if ret <= 0 {
        return;
    }
    let file: *const u8 = ctx.arg(0);
    if file.is_null() {
        return;
    }
    count(current_task(), file as u64, 0, ret as u64, write, || {
        let o = &DISK_OFFSETS;
        let inode: *const u8 = unsafe { btf_load(file, off(&o.file_inode)) };
        if inode.is_null() {
            return 0;
        }
        let sb: *const u8 = unsafe { btf_load(inode, off(&o.inode_sb)) };
        if sb.is_null() {
            return 0;
        }
        let bdev: *const u8 = unsafe { btf_load(sb, off(&o.sb_bdev)) };
        if bdev.is_null() {
            let magic: u64 = unsafe { btf_load(sb, off(&o.sb_magic)) };
            return network_dev(magic, || unsafe { btf_load(sb, off(&o.sb_dev)) });
        }
        unsafe { btf_load(bdev, off(&o.bdev_dev)) }
    });
}

#[fexit(function = "vfs_read")]
pub fn stapr_dt_vfs_rd(ctx: FExitContext) -> i32 {
    vfs_exit(&ctx, false);
    0
}

#[fexit(function = "vfs_write")]
pub fn stapr_dt_vfs_wr(ctx: FExitContext) -> i32 {
    vfs_exit(&ctx, true);
    0
}

/// sys_exit of read, pread64, readv, preadv, preadv2 (argument 0 is the fd).
#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn stapr_dt_read(ctx: TracePointContext) -> u32 {
    syscall_exit(&ctx, false);
    0
}

/// sys_exit of write, pwrite64, writev, pwritev, pwritev2.
#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn stapr_dt_write(ctx: TracePointContext) -> u32 {
    syscall_exit(&ctx, true);
    0
}

/// sendfile(out_fd, in_fd, ...) entry.
#[tracepoint(category = "syscalls", name = "sys_enter_sendfile64")]
pub fn stapr_dt_sendfile(ctx: TracePointContext) -> u32 {
    xfer_enter(&ctx, 1, 0);
    0
}

/// splice(fd_in, off_in, fd_out, ...) and copy_file_range(fd_in, off_in, fd_out, ...) entry.
#[tracepoint(category = "syscalls", name = "sys_enter_splice")]
pub fn stapr_dt_splice(ctx: TracePointContext) -> u32 {
    xfer_enter(&ctx, 0, 2);
    0
}

/// The exit of those three: the bytes moved are a read on the source and a write on the
/// destination, each counted where it is a file (a pipe's or socket's side is not).
#[tracepoint(category = "syscalls", name = "sys_exit_sendfile64")]
pub fn stapr_dt_xfer(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(x) = (unsafe { DISK_XFER.get(&id) }).copied() else {
        return 0;
    };
    let _ = DISK_XFER.remove(&id);
    let ret: i64 = tp_field(&ctx, RET);
    if ret > 0 {
        let task = current_task();
        count_fd(task, x.fd_in, ret as u64, false);
        count_fd(task, x.fd_out, ret as u64, true);
    }
    0
}

/// `--block`: a request issued to a device, charged to the task issuing it.
#[tracepoint(category = "block", name = "block_rq_issue")]
pub fn stapr_dt_rq(ctx: TracePointContext) -> u32 {
    let o = &DISK_OFFSETS;
    let Ok(dev) = (unsafe { ctx.read_at::<u32>(off(&o.rq_dev) as usize) }) else {
        return 0;
    };
    let Ok(n) = (unsafe { ctx.read_at::<u32>(off(&o.rq_bytes) as usize) }) else {
        return 0;
    };
    let Ok(rwbs) = (unsafe { ctx.read_at::<u8>(off(&o.rq_rwbs) as usize) }) else {
        return 0;
    };
    // rwbs starts with R(ead), W(rite), D(iscard), F(lush)...
    let write = match rwbs {
        b'R' => false,
        b'W' => true,
        _ => return 0,
    };
    if n == 0 || !in_cgroup() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = DiskKey {
        pid: (pid_tgid >> 32) as u32,
        ppid: ppid(current_task()),
        uid: bpf_get_current_uid_gid() as u32,
        dev,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cgroup: cgroup_id(),
    };
    let mut c = DiskCounters::default();
    bytes(&mut c, n as u64, write);
    add_to_slot(slot(), &key, &c);
    0
}
