//! Loads and attaches disktop's probes and drains its counters. The only part of disktop
//! that touches the kernel.

use anyhow::{Context as _, Result};
use aya::{programs::FExit, Ebpf};
use probes_common::{
    disktop::{DiskCounters, DiskKey, DiskOffsets, DiskRun},
    CgroupFilter,
};

use crate::{
    report::method::{first_working, last_error, Spec, Way},
    runtime::{
        btf,
        features::{self, Facility, Need},
        object::{attach_tracepoints, program, Object},
        program_error_reason,
        slots::{self, SlotMaps},
        tracefs, user_error,
    },
};

pub static OBJECT: Object = Object {
    name: "disktop",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/disktop")),
    config: Some((OFFSETS, size_of::<DiskOffsets>())),
    programs: &[
        FEXIT_PROGS[0].0,
        FEXIT_PROGS[1].0,
        SYSCALL_PROGS[0].0,
        SYSCALL_PROGS[1].0,
        XFER_EXIT,
        SENDFILE_ENTER,
        SPLICE_ENTER,
        BLOCK_PROG,
    ],
    maps: &[
        MAPS.slot,
        MAPS.counts[0],
        MAPS.counts[1],
        MAPS.runs,
        MAPS.dropped,
    ],
};

/// fexit programs and the functions they go on.
const FEXIT_PROGS: [(&str, &str); 2] = [
    ("stapr_dt_vfs_rd", "vfs_read"),
    ("stapr_dt_vfs_wr", "vfs_write"),
];
/// The syscall-exit programs and the calls each serves.
const SYSCALL_PROGS: [(&str, &[&str]); 2] = [("stapr_dt_read", READS), ("stapr_dt_write", WRITES)];
/// sendfile, splice and copy_file_range, on either method: their file descriptors noted
/// at entry, the bytes counted at exit (a read on the source, a write on the
/// destination). copy_file_range's arguments are splice's. Exits first, so no entry is
/// noted that no exit takes back.
const XFER_EXIT: &str = "stapr_dt_xfer";
const SENDFILE_ENTER: &str = "stapr_dt_sendfile";
const SPLICE_ENTER: &str = "stapr_dt_splice";
const XFER_TRACEPOINTS: [(&str, &str); 6] = [
    (XFER_EXIT, "sys_exit_sendfile64"),
    (XFER_EXIT, "sys_exit_splice"),
    (XFER_EXIT, "sys_exit_copy_file_range"),
    (SENDFILE_ENTER, "sys_enter_sendfile64"),
    (SPLICE_ENTER, "sys_enter_splice"),
    (SPLICE_ENTER, "sys_enter_copy_file_range"),
];
const BLOCK_PROG: &str = "stapr_dt_rq";
const OFFSETS: &str = "DISK_OFFSETS";

const MAPS: SlotMaps = SlotMaps {
    slot: "DISK_SLOT",
    counts: ["DISK_COUNTS_0", "DISK_COUNTS_1"],
    runs: "DISK_RUN",
    dropped: "DISK_DROPPED",
};

/// Syscalls whose return value is bytes moved and whose first argument is the fd.
pub const READS: &[&str] = &["read", "pread64", "readv", "preadv", "preadv2"];
pub const WRITES: &[&str] = &["write", "pwrite64", "writev", "pwritev", "pwritev2"];

/// How reads and writes are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// fexit on vfs_read and vfs_write (BPF trampolines).
    Fexit,
    /// Exit tracepoints of the read and write syscalls.
    Syscalls,
    /// Requests issued to block devices (block:block_rq_issue): `--block`, a different
    /// report of the same table, never chosen for the user.
    Block,
}

impl crate::report::method::Method for Method {
    const WAYS: &'static [Way<Self>] = &[
        Way {
            method: Method::Fexit,
            spec: Spec {
                name: "fexit on vfs_read and vfs_write",
                label: "fexit",
                needs: &[
                    Need::Btf,
                    Need::Works(Facility::Fentry),
                    Need::Works(Facility::Classic),
                ],
                note: "",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::Syscalls,
            spec: Spec {
                name: "syscall exit tracepoints",
                label: "syscalls",
                needs: &[
                    Need::Btf,
                    Need::Works(Facility::Classic),
                    Need::SavedRegs,
                    Need::Works(Facility::TaskBtf),
                    Need::Works(Facility::TaskPtRegs),
                ],
                note: "fexit unavailable",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::Block,
            spec: Spec {
                name: "block layer requests (--block only)",
                label: "block",
                needs: &[Need::Works(Facility::Classic)],
                note: "read/write calls cannot be counted here",
                partial: true,
                auto: false,
            },
        },
    ];
}

pub struct Probes {
    ebpf: Ebpf,
    slot: u32,
    /// Tracepoints this kernel lacks, skipped.
    pub skipped: Vec<String>,
    pub method: Method,
    /// Probes attached.
    pub attached: usize,
}

/// Offsets for the file walk (both read/write paths) and the saved register holding the
/// fd (syscall argument 0).
fn file_offsets(kbtf: &btf::Btf) -> Result<DiskOffsets> {
    let m = |s: &str, f: &str| kbtf.member_offset(s, f);
    Ok(DiskOffsets {
        reg_arg0: kbtf.syscall_arg_offsets()?[0],
        task_files: m("task_struct", "files")?,
        task_real_parent: m("task_struct", "real_parent")?,
        task_tgid: m("task_struct", "tgid")?,
        task_comm: m("task_struct", "comm")?,
        files_fdt: m("files_struct", "fdt")?,
        fdt_max_fds: m("fdtable", "max_fds")?,
        fdt_fd: m("fdtable", "fd")?,
        file_inode: m("file", "f_inode")?,
        inode_sb: m("inode", "i_sb")?,
        sb_bdev: m("super_block", "s_bdev")?,
        bdev_dev: m("block_device", "bd_dev")?,
        sb_magic: m("super_block", "s_magic")?,
        sb_dev: m("super_block", "s_dev")?,
        ..Default::default()
    })
}

impl Probes {
    /// Attaches with the method asked for (None: the first that works, saying on stderr
    /// why one was passed over).
    pub fn attach(choice: Option<Method>, cgroup: CgroupFilter) -> Result<Self> {
        if !features::btf() {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): disktop needs it to find a file's device",
            ));
        }
        let kbtf = btf::Btf::from_sys_fs()?;
        first_working("disktop", choice, |m| Self::attach_with(&kbtf, m, &cgroup))
            .map_err(last_error)
    }

    fn attach_with(kbtf: &btf::Btf, method: Method, cgroup: &CgroupFilter) -> Result<Self> {
        let mut offsets = DiskOffsets {
            task_real_parent: kbtf.member_offset("task_struct", "real_parent")?,
            task_tgid: kbtf.member_offset("task_struct", "tgid")?,
            ..Default::default()
        };
        match method {
            Method::Block => {
                offsets.rq_dev = tracefs::field_offset("block", "block_rq_issue", "dev")?;
                offsets.rq_bytes = tracefs::field_offset("block", "block_rq_issue", "bytes")?;
                offsets.rq_rwbs = tracefs::field_offset("block", "block_rq_issue", "rwbs")?;
            }
            _ => offsets = file_offsets(kbtf)?,
        }
        let mut ebpf = OBJECT.load(&offsets, cgroup)?;
        let xfers = if method == Method::Block {
            (0, Vec::new())
        } else {
            let list: Vec<(&str, &str, &str, bool)> = XFER_TRACEPOINTS
                .iter()
                .map(|(prog, tp)| (*prog, "syscalls", *tp, false))
                .collect();
            attach_tracepoints(&mut ebpf, &list)?
        };
        if method == Method::Fexit {
            let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
            for (prog, func) in FEXIT_PROGS {
                let p: &mut FExit = program(&mut ebpf, prog)?;
                p.load(func, &aya_btf).map_err(|e| {
                    user_error(format!(
                        "this kernel refuses fexit programs (loading one on {func}: {}); use --probe syscalls",
                        program_error_reason(&e)
                    ))
                })?;
                p.attach()
                    .with_context(|| format!("attaching fexit on {func}"))?;
            }
            return Ok(Self {
                ebpf,
                slot: 0,
                skipped: xfers.1,
                method,
                attached: 2 + xfers.0,
            });
        }
        let list: Vec<(&str, &str, String, bool)> = if method == Method::Block {
            vec![(BLOCK_PROG, "block", "block_rq_issue".into(), true)]
        } else {
            SYSCALL_PROGS
                .iter()
                .flat_map(|(prog, calls)| {
                    calls.iter().enumerate().map(move |(i, call)| {
                        (*prog, "syscalls", format!("sys_exit_{call}"), i == 0)
                    })
                })
                .collect()
        };
        let (attached, skipped) = attach_tracepoints(&mut ebpf, &list)?;
        Ok(Self {
            ebpf,
            slot: 0,
            skipped: [xfers.1, skipped].concat(),
            method,
            attached: attached + xfers.0,
        })
    }

    /// What the probes counted since the last call (one element per key and CPU).
    pub fn drain(&mut self) -> Result<Vec<(DiskKey, DiskCounters)>> {
        slots::drain(&mut self.ebpf, &MAPS, &mut self.slot, |r: &DiskRun| {
            (r.valid == 1 && r.skip == 0).then_some((r.key, r.counts))
        })
    }

    /// Probe runs the kernel skipped, since start.
    pub fn skipped(&self) -> u64 {
        crate::runtime::object::skipped_runs(&self.ebpf)
    }

    /// Reads and writes not counted because a counter map was full, since start.
    pub fn lost(&self) -> Result<u64> {
        slots::dropped(&self.ebpf, &MAPS)
    }
}
