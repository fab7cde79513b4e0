//! Helpers shared by the eBPF objects (one binary per report).
#![no_std]
// The bpfel target has no `AtomicU64::fetch_add`; the intrinsic lowers to the BPF atomic add.
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

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

/// Adds `v` to `*dst` atomically (memory other CPUs write too, unlike per-CPU values).
///
/// # Safety
/// `dst` must point to map memory.
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{atomic_xadd, AtomicOrdering};
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(dst)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Adds `v` to `*dst` atomically (32 bits; see [`atomic_add`]).
///
/// # Safety
/// `dst` must point to map memory.
#[inline(always)]
pub unsafe fn atomic_add32(dst: *mut u32, v: u32) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::{atomic_xadd, AtomicOrdering};
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(dst, v) };
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU32::from_ptr(dst)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Takes a per-CPU entry for this program run: true when no other run holds it. On
/// kernels that preempt tracing programs, another program can start on this CPU between
/// any two instructions of this one, so a plain test-then-set could let two runs hold
/// the entry (each then overwrites half of the other's update). An atomic add without
/// fetch exists on every kernel (BPF_XADD): after its own add, a run that reads 1 is the
/// only one that added and has not yet given back; one that reads more gives back at once
/// and leaves the entry alone. [`release`] ends a successful claim.
///
/// # Safety
/// `busy` must point to map memory that only `claim` and `release` change.
#[inline(always)]
pub unsafe fn claim(busy: *mut u32) -> bool {
    unsafe {
        atomic_add32(busy, 1);
        if busy.read_volatile() == 1 {
            return true;
        }
        atomic_add32(busy, u32::MAX);
    }
    false
}

/// Gives back an entry taken with [`claim`].
///
/// # Safety
/// As for [`claim`], after a claim that returned true.
#[inline(always)]
pub unsafe fn release(busy: *mut u32) {
    unsafe { atomic_add32(busy, u32::MAX) };
}

/// `-EEXIST` from a map insert that must not replace an entry.
const EEXIST: i32 = 17;

/// Adds `v` to the value of `key` in a per-CPU hash map (`add`: atomic adds field by field),
/// or inserts it. The insert never replaces an entry, and the adds are atomic: on kernels
/// that preempt tracing programs (full or lazy preemption), another program on this CPU
/// may add to the same value while this one is preempted. False when the map is full.
#[inline(always)]
pub fn add_or_insert<K, V>(
    map: &aya_ebpf::maps::PerCpuHashMap<K, V>,
    key: &K,
    v: &V,
    add: impl Fn(*mut V, &V),
) -> bool {
    if let Some(p) = map.get_ptr_mut(key) {
        add(p, v);
        return true;
    }
    match map.insert(key, v, aya_ebpf::bindings::BPF_NOEXIST as u64) {
        Ok(()) => true,
        // Made by a program that ran in between: add to it.
        Err(e) if e == -EEXIST => match map.get_ptr_mut(key) {
            Some(p) => {
                add(p, v);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

/// A load from a BTF-typed kernel pointer (tp_btf arguments, `bpf_task_pt_regs()`). The
/// verifier knows the pointee's type, checks the offset (a constant: it comes from frozen
/// .rodata) against it, and turns the load into a fault-safe direct access: no
/// probe-read helper call.
///
/// # Safety
/// `base` must be a BTF-typed pointer the verifier tracks and `off` a member offset.
#[inline(always)]
pub unsafe fn btf_load<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) }
}

/// A 16-byte string member (`task_struct.comm`, `net_device.name`) of a BTF-typed
/// pointer, read as two 8-byte direct loads instead of a string-copy helper.
///
/// # Safety
/// As for [`btf_load`]; `off` and `off + 8` must lie within the member.
#[inline(always)]
pub unsafe fn btf_load_str16(base: *const u8, off: u32) -> [u8; 16] {
    let (lo, hi): (u64, u64) = unsafe { (btf_load(base, off), btf_load(base, off + 8)) };
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&lo.to_ne_bytes());
    s[8..].copy_from_slice(&hi.to_ne_bytes());
    s
}

/// A field of a classic tracepoint record, loaded directly from the context: the verifier
/// allows reads of the record at offsets fixed in the instruction (so `off` must be a
/// compile-time constant), which saves a probe-read helper call.
#[inline(always)]
pub fn tp_field<T: Copy>(ctx: &aya_ebpf::programs::TracePointContext, off: usize) -> T {
    use aya_ebpf::EbpfContext;
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

/// Whether the current task passes `--cgroup` (`filter.on == 0`: every task does): its
/// ancestor at the filter's depth is the filter's cgroup.
#[inline(always)]
pub fn cgroup_allowed(filter: &probes_common::CgroupFilter) -> bool {
    let f = global(filter);
    if f.on == 0 {
        return true;
    }
    if f.walk == 0 {
        return unsafe { aya_ebpf::helpers::bpf_get_current_ancestor_cgroup_id(f.level as i32) }
            == f.id;
    }
    // Kernels before 5.14: the same id, read from the task's default-hierarchy cgroup.
    let task = Kptr::current_task(false);
    let cgroup = unsafe { task.member(f.task_cgroups).member(f.cset_dfl_cgrp) };
    if cgroup.is_null() {
        return false;
    }
    let level: i32 = unsafe { cgroup.load(f.cgrp_level) };
    if level < f.level as i32 || f.level > 4096 {
        return false;
    }
    let id: u64 = unsafe { cgroup.load(f.cgrp_ancestor_ids + f.level * 8) };
    id == f.id
}

/// The current task's cgroup v2 id.
#[inline(always)]
pub fn cgroup_id() -> u64 {
    unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() }
}

/// A kernel pointer and how its members are read: direct loads where the verifier knows
/// its type (`bpf_get_current_task_btf`, 5.11, and the pointers loaded from it), the
/// probe-read helper where it does not (`bpf_get_current_task` on older kernels).
#[derive(Clone, Copy)]
pub struct Kptr {
    ptr: *const u8,
    typed: bool,
}

impl Kptr {
    /// The current task, typed when `typed` (a frozen global: the verifier drops the
    /// other branch, and with it the helper this kernel may not have).
    #[inline(always)]
    pub fn current_task(typed: bool) -> Self {
        let ptr = if typed {
            unsafe { aya_ebpf::helpers::bpf_get_current_task_btf() as *const u8 }
        } else {
            unsafe { aya_ebpf::helpers::bpf_get_current_task() as *const u8 }
        };
        Kptr { ptr, typed }
    }

    /// The raw pointer (for [`btf_load`] callers that know it is typed).
    #[inline(always)]
    pub fn raw(self) -> *const u8 {
        self.ptr
    }

    #[inline(always)]
    pub fn is_null(self) -> bool {
        self.ptr.is_null()
    }

    /// The member at `off`.
    ///
    /// # Safety
    /// `off` must be a member offset of the pointee's type.
    #[inline(always)]
    pub unsafe fn load<T: Copy + Default>(self, off: u32) -> T {
        if self.typed {
            unsafe { btf_load(self.ptr, off) }
        } else {
            unsafe {
                aya_ebpf::helpers::bpf_probe_read_kernel(
                    self.ptr.wrapping_add(off as usize) as *const T
                )
            }
            .unwrap_or_default()
        }
    }

    /// The pointer member at `off`, read the same way.
    ///
    /// # Safety
    /// As for [`Kptr::load`].
    #[inline(always)]
    pub unsafe fn member(self, off: u32) -> Kptr {
        let ptr: *const u8 = if self.typed {
            unsafe { btf_load(self.ptr, off) }
        } else {
            let v: u64 = unsafe { self.load(off) };
            v as *const u8
        };
        Kptr {
            ptr,
            typed: self.typed,
        }
    }

    /// A 16-byte string member, as [`btf_load_str16`].
    ///
    /// # Safety
    /// As for [`Kptr::load`].
    #[inline(always)]
    pub unsafe fn str16(self, off: u32) -> [u8; 16] {
        if self.typed {
            unsafe { btf_load_str16(self.ptr, off) }
        } else {
            let (lo, hi): (u64, u64) = unsafe { (self.load(off), self.load(off + 8)) };
            let mut s = [0u8; 16];
            s[..8].copy_from_slice(&lo.to_ne_bytes());
            s[8..].copy_from_slice(&hi.to_ne_bytes());
            s
        }
    }
}

/// Declares the object's `CGROUP_FILTER` global (see [`probes_common::CgroupFilter`])
/// and `in_cgroup()`, which checks the current task against it; and its `HELPERS`
/// global (see [`probes_common::Helpers`]) with `current_task()`, typed where the
/// kernel allows.
#[macro_export]
macro_rules! cgroup_filter {
    () => {
        #[unsafe(no_mangle)]
        static HELPERS: probes_common::Helpers = probes_common::Helpers {
            task_btf: 0,
            _pad: 0,
        };

        #[inline(always)]
        #[allow(dead_code)]
        fn current_task() -> $crate::Kptr {
            $crate::Kptr::current_task($crate::global(&HELPERS).task_btf == 1)
        }

        #[unsafe(no_mangle)]
        static CGROUP_FILTER: probes_common::CgroupFilter = probes_common::CgroupFilter::OFF;

        #[inline(always)]
        fn in_cgroup() -> bool {
            $crate::cgroup_allowed(&CGROUP_FILTER)
        }
    };
}
