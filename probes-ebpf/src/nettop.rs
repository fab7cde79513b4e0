//! nettop: count packets and bytes per (pid, uid, device, comm) on transmit and receive.
//!
//! Counters live in per-CPU maps so the hot path needs no atomics; user space sums the
//! CPUs. Consecutive packets of one thread on one device are added up in a per-CPU run
//! cache (`NET_RUN`) and reach the hash map only when the run ends. Two slots alternate
//! (see `NET_SLOT`) so user space drains one while the probes fill the other.
#![no_std]
#![no_main]
// Map keys and values are passed by reference: many live in map memory, which the
// helpers accept directly, where passing by value would copy them to the stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use probes_common::{
    nettop::{NetCounters, NetKey, NetOffsets, NetRun, NET_MAX_ENTRIES, NET_SLOTS},
    IFNAME_LEN,
};
use probes_ebpf::{btf_load, btf_load_str16, cgroup_id, global};

probes_ebpf::cgroup_filter!();

#[unsafe(no_mangle)]
static NET_OFFSETS: NetOffsets = NetOffsets {
    skb_len: 0,
    skb_dev: 0,
    netdev_name: 0,
    xmit_len: 0,
    xmit_name: 0,
    recv_len: 0,
    recv_name: 0,
    _pad: 0,
};

#[map]
static NET_COUNTS_0: PerCpuHashMap<NetKey, NetCounters> =
    PerCpuHashMap::with_max_entries(NET_MAX_ENTRIES, 0);
#[map]
static NET_COUNTS_1: PerCpuHashMap<NetKey, NetCounters> =
    PerCpuHashMap::with_max_entries(NET_MAX_ENTRIES, 0);
/// Index 0 holds the slot the probes write into.
#[map]
static NET_SLOT: Array<u32> = Array::with_max_entries(1, 0);
/// The current run on each CPU, one entry per slot.
#[map]
static NET_RUN: PerCpuArray<NetRun> = PerCpuArray::with_max_entries(NET_SLOTS, 0);
/// Runs that could not be counted because the hash map was full (packets, summed).
#[map]
static NET_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Adds a finished run to the slot's hash map.
#[inline(always)]
fn flush(map: &PerCpuHashMap<NetKey, NetCounters>, run: &NetRun) {
    if let Some(c) = map.get_ptr_mut(&run.key) {
        // Per-CPU value: no other writer can race with this one.
        let c = unsafe { &mut *c };
        c.xmit_packets += run.counts.xmit_packets;
        c.xmit_bytes += run.counts.xmit_bytes;
        c.recv_packets += run.counts.recv_packets;
        c.recv_bytes += run.counts.recv_bytes;
    } else if map.insert(&run.key, &run.counts, 0).is_err() {
        if let Some(d) = NET_DROPPED.get_ptr_mut(0) {
            unsafe { *d += run.counts.xmit_packets + run.counts.recv_packets };
        }
    }
}

#[inline(always)]
fn add(c: &mut NetCounters, len: u64, rx: bool) {
    if rx {
        c.recv_packets += 1;
        c.recv_bytes += len;
    } else {
        c.xmit_packets += 1;
        c.xmit_bytes += len;
    }
}

/// Where a packet's device comes from: a pointer whose name is read only when a new run
/// starts (BTF), or the name itself (classic tracepoint records).
enum Dev {
    Ptr(*const u8),
    Name([u8; IFNAME_LEN]),
}

#[inline(always)]
fn count(dev: Dev, len: u32, rx: bool) {
    let slot = match NET_SLOT.get(0) {
        Some(&s) if s < NET_SLOTS => s,
        _ => 0,
    };
    let Some(run) = NET_RUN.get_ptr_mut(slot) else {
        return;
    };
    let run = unsafe { &mut *run };
    let pid_tgid = bpf_get_current_pid_tgid();
    let same_dev = match &dev {
        Dev::Ptr(p) => run.dev_ptr == *p as u64,
        Dev::Name(n) => run.dev_ptr == 0 && run.key.dev == *n,
    };
    if run.valid == 1 && run.pid_tgid == pid_tgid && same_dev {
        add(&mut run.counts, len as u64, rx);
        return;
    }
    if run.valid == 1 {
        if slot == 0 {
            flush(&NET_COUNTS_0, run);
        } else {
            flush(&NET_COUNTS_1, run);
        }
    }
    if !in_cgroup() {
        run.valid = 0;
        return;
    }
    let (dev_ptr, name) = match dev {
        Dev::Ptr(p) => (p as u64, netdev_name(p)),
        Dev::Name(n) => (0, n),
    };
    run.pid_tgid = pid_tgid;
    run.dev_ptr = dev_ptr;
    run.valid = 1;
    run.key = NetKey {
        pid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        dev: name,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cgroup: cgroup_id(),
    };
    run.counts = NetCounters::default();
    add(&mut run.counts, len as u64, rx);
}

/// `dev->name` (IFNAMSIZ = 16 bytes).
#[inline(always)]
fn netdev_name(dev: *const u8) -> [u8; IFNAME_LEN] {
    unsafe { btf_load_str16(dev, global(&NET_OFFSETS.netdev_name)) }
}

// TP_PROTO(struct sk_buff *skb, int rc, struct net_device *dev, unsigned int skb_len)
#[btf_tracepoint(function = "net_dev_xmit")]
pub fn stapr_net_tx(ctx: BtfTracePointContext) -> u32 {
    let dev: *const u8 = ctx.arg(2);
    let len: u32 = ctx.arg(3);
    count(Dev::Ptr(dev), len, false);
    0
}

// TP_PROTO(struct sk_buff *skb)
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn stapr_net_rx(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let len: u32 = unsafe { btf_load(skb, global(&NET_OFFSETS.skb_len)) };
    let dev: *const u8 = unsafe { btf_load(skb, global(&NET_OFFSETS.skb_dev)) };
    count(Dev::Ptr(dev), len, true);
    0
}

/// Classic tracepoint records carry `len` and a `__data_loc` name: a u32 whose low 16
/// bits are the string's offset in the record and whose high 16 bits its length.
#[inline(always)]
fn classic(ctx: &TracePointContext, len_off: u32, name_off: u32, rx: bool) {
    // The offsets come from tracefs at load time; the verifier allows direct context
    // loads only at offsets fixed in the instruction, so these go through a helper.
    let Ok(len) = (unsafe { ctx.read_at::<u32>(len_off as usize) }) else {
        return;
    };
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(name_off as usize) }) else {
        return;
    };
    let mut name = [0u8; IFNAME_LEN];
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, &mut name) };
    count(Dev::Name(name), len, rx);
}

#[tracepoint(category = "net", name = "net_dev_xmit")]
pub fn stapr_net_tx_tp(ctx: TracePointContext) -> u32 {
    classic(
        &ctx,
        global(&NET_OFFSETS.xmit_len),
        global(&NET_OFFSETS.xmit_name),
        false,
    );
    0
}

#[tracepoint(category = "net", name = "netif_receive_skb")]
pub fn stapr_net_rx_tp(ctx: TracePointContext) -> u32 {
    classic(
        &ctx,
        global(&NET_OFFSETS.recv_len),
        global(&NET_OFFSETS.recv_name),
        true,
    );
    0
}
