//! Types that cross the kernel/user boundary, defined once for both sides.
//!
//! Every type is `#[repr(C)]`, `Copy`, and laid out without implicit padding so the eBPF
//! object and the CLI agree byte for byte.
#![no_std]

pub mod calltree;
pub mod disktop;
pub mod nettop;
pub mod slowopen;

/// Length of `task_struct::comm`, including the terminating NUL.
pub const COMM_LEN: usize = 16;
/// Length of `net_device::name` (`IFNAMSIZ`), including the terminating NUL.
pub const IFNAME_LEN: usize = 16;

/// `--cgroup`: count only tasks in one cgroup v2 and its descendants. Every object has a
/// read-only global `CGROUP_FILTER` of this type, set by user space before load; the
/// probes compare `bpf_get_current_ancestor_cgroup_id(level)` with `id`, or, on kernels
/// whose tracing programs lack that helper (before 5.14), read the same id from the
/// task's cgroup (`current->cgroups->dfl_cgrp->ancestor_ids[level]`, at the offsets
/// below).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupFilter {
    /// 0: no filter.
    pub on: u32,
    /// Depth of the cgroup below the cgroup2 root (the root is 0).
    pub level: u32,
    /// The cgroup's id (its directory's inode number on the cgroup2 mount).
    pub id: u64,
    /// 1: read the ancestor from the task's cgroup, not through the helper.
    pub walk: u32,
    /// `task_struct.cgroups`
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`
    pub cset_dfl_cgrp: u32,
    /// `cgroup.level`
    pub cgrp_level: u32,
    /// `cgroup.ancestor_ids`
    pub cgrp_ancestor_ids: u32,
    pub _pad: u32,
}

impl CgroupFilter {
    /// No filter: what the objects are built with.
    pub const OFF: CgroupFilter = CgroupFilter {
        on: 0,
        level: 0,
        id: 0,
        walk: 0,
        task_cgroups: 0,
        cset_dfl_cgrp: 0,
        cgrp_level: 0,
        cgrp_ancestor_ids: 0,
        _pad: 0,
    };
}

/// Name of the `CgroupFilter` global in every object.
pub const CGROUP_FILTER: &str = "CGROUP_FILTER";

const _: () = assert!(core::mem::size_of::<CgroupFilter>() == 40);

/// Helpers the kernel offers that change how a probe reads the kernel: the read-only
/// global `HELPERS` of every report's object, set by user space from the feature
/// probes before load. The verifier drops the branch a frozen value rules out, so a
/// program never calls a helper this kernel does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Helpers {
    /// 1: `bpf_get_current_task_btf` (5.11), whose members are direct loads; 0:
    /// `bpf_get_current_task` and the probe-read helper.
    pub task_btf: u32,
    pub _pad: u32,
}

/// The name of the [`Helpers`] global.
pub const HELPERS: &str = "HELPERS";

#[cfg(feature = "user")]
unsafe impl aya::Pod for Helpers {}

#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupFilter {}

/// The part of a fixed-size, NUL-padded kernel string before the first NUL.
pub fn c_bytes(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}
