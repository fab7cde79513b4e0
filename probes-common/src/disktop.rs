//! disktop: bytes read and written per (process, device), aggregated in the kernel.

use crate::COMM_LEN;

pub const DISK_MAX_ENTRIES: u32 = 10240;
/// Two counter maps alternate, as in nettop (`DISK_SLOT[0]` names the active one).
pub const DISK_SLOTS: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskKey {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The block device, in the kernel's dev_t encoding (major << 20 | minor); for a file
    /// on a network filesystem, the superblock's anonymous device (major 0), which user
    /// space finds in mountinfo.
    pub dev: u32,
    pub comm: [u8; COMM_LEN],
    /// The task's cgroup v2 id (`bpf_get_current_cgroup_id`), taken when its run starts.
    pub cgroup: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Reads and writes (or block requests) counted: the events behind the bytes.
    pub calls: u64,
}

/// The per-CPU run cache: consecutive reads and writes of one thread on one open file
/// add up here and reach the hash only when another file or thread comes along.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskRun {
    pub pid_tgid: u64,
    /// The `struct file *` the fd referred to.
    pub file: u64,
    pub fd: u32,
    /// 1 when the entry holds a run.
    pub valid: u32,
    /// 1 when the file is on neither a block device nor a network filesystem: its bytes
    /// are not counted.
    pub skip: u32,
    /// The program runs that claimed the entry and have not given it back (atomic adds):
    /// 1 while one works on it; another that preempted it (kernels with full or lazy
    /// preemption) finds it claimed and counts into the table directly.
    pub busy: u32,
    pub key: DiskKey,
    pub counts: DiskCounters,
}

/// Threads at once inside sendfile, splice or copy_file_range that disktop follows.
pub const DISK_XFER_ENTRIES: u32 = 10240;

/// A sendfile, splice or copy_file_range in progress on a thread: the descriptor read from
/// and the one written to, noted at syscall entry for its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskXfer {
    pub fd_in: u32,
    pub fd_out: u32,
}

/// The `s_magic` of the network filesystems disktop counts: NFS (v2-v4), SMB2/3 and
/// CIFS, Ceph, 9p, AFS (kAFS's two). FUSE is left out: most FUSE mounts are local.
pub const NETWORK_FS_MAGICS: [u64; 7] = [
    0x6969,      // NFS_SUPER_MAGIC
    0xFE53_4D42, // SMB2_SUPER_MAGIC (smb3)
    0xFF53_4D42, // CIFS_SUPER_MAGIC
    0x00C3_6400, // CEPH_SUPER_MAGIC
    0x0102_1997, // V9FS_MAGIC
    0x5346_414F, // AFS_SUPER_MAGIC
    0x6B41_4653, // AFS_FS_MAGIC
];

/// BTF offsets the syscall-path probes need, set before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskOffsets {
    /// `pt_regs` member holding syscall argument 0 (the fd).
    pub reg_arg0: u32,
    pub task_files: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub inode_sb: u32,
    pub sb_bdev: u32,
    pub bdev_dev: u32,
    /// `super_block.s_magic` and `.s_dev`: a filesystem without a block device is counted
    /// when its magic is a network filesystem's, under its anonymous device number.
    pub sb_magic: u32,
    pub sb_dev: u32,
    /// `--block`: offsets in the block_rq_issue record.
    pub rq_dev: u32,
    pub rq_bytes: u32,
    pub rq_rwbs: u32,
}

const _: () = assert!(core::mem::size_of::<DiskKey>() == 40);
const _: () = assert!(core::mem::size_of::<DiskCounters>() == 24);
const _: () = assert!(core::mem::size_of::<DiskRun>() == 96);
const _: () = assert!(core::mem::size_of::<DiskOffsets>() == 68);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::DiskKey {}
    unsafe impl aya::Pod for super::DiskCounters {}
    unsafe impl aya::Pod for super::DiskRun {}
    unsafe impl aya::Pod for super::DiskOffsets {}
}
