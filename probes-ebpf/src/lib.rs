//! Helpers shared by the eBPF objects (one binary per report).
#![no_std]

/// eBPF programs cannot unwind; the verifier rejects any path that could reach this.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Reads a read-only global set by user space before load. `read_volatile` keeps the
/// compiler from folding the default value into the code.
#[inline(always)]
pub fn global<T: Copy>(value: &T) -> T {
    unsafe { core::ptr::read_volatile(value) }
}
