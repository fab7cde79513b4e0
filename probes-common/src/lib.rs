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
/// probes compare `bpf_get_current_ancestor_cgroup_id(level)` with `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupFilter {
    /// 0: no filter.
    pub on: u32,
    /// Depth of the cgroup below the cgroup2 root (the root is 0).
    pub level: u32,
    /// The cgroup's id (its directory's inode number on the cgroup2 mount).
    pub id: u64,
}

/// Name of the `CgroupFilter` global in every object.
pub const CGROUP_FILTER: &str = "CGROUP_FILTER";

const _: () = assert!(core::mem::size_of::<CgroupFilter>() == 16);

#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupFilter {}

/// The part of a fixed-size, NUL-padded kernel string before the first NUL.
pub fn c_bytes(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}
