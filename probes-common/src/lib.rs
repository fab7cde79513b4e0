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

/// The part of a fixed-size, NUL-padded kernel string before the first NUL.
pub fn c_bytes(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}
