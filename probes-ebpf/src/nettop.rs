//! nettop: count packets and bytes per (pid, uid, device, comm) on transmit and receive.
//!
//! Counters live in a per-CPU hash so the hot path needs no atomics; user space sums the
//! CPUs. Two maps alternate (see `NET_SLOT`) so each interval is drained without racing
//! the probes.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use probes_common::{
    nettop::{NetCounters, NetKey, NetOffsets, NET_MAX_ENTRIES},
    IFNAME_LEN,
};
use probes_ebpf::global;

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
#[map]
static NET_SLOT: Array<u32> = Array::with_max_entries(1, 0);
/// Packets that could not be counted because the active map was full.
#[map]
static NET_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(map: &PerCpuHashMap<NetKey, NetCounters>, key: &NetKey, len: u64, rx: bool) {
    if let Some(c) = map.get_ptr_mut(key) {
        // Per-CPU value: no other writer can race with this one.
        let c = unsafe { &mut *c };
        if rx {
            c.recv_packets += 1;
            c.recv_bytes += len;
        } else {
            c.xmit_packets += 1;
            c.xmit_bytes += len;
        }
        return;
    }
    let mut c = NetCounters::default();
    if rx {
        c.recv_packets = 1;
        c.recv_bytes = len;
    } else {
        c.xmit_packets = 1;
        c.xmit_bytes = len;
    }
    if map.insert(key, &c, 0).is_err() {
        if let Some(d) = NET_DROPPED.get_ptr_mut(0) {
            unsafe { *d += 1 };
        }
    }
}

#[inline(always)]
fn count(dev: [u8; IFNAME_LEN], len: u32, rx: bool) {
    let key = NetKey {
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        dev,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let slot = NET_SLOT.get(0).copied().unwrap_or(0);
    if slot == 0 {
        bump(&NET_COUNTS_0, &key, len as u64, rx);
    } else {
        bump(&NET_COUNTS_1, &key, len as u64, rx);
    }
}

#[inline(always)]
fn netdev_name(dev: *const u8) -> [u8; IFNAME_LEN] {
    let mut name = [0u8; IFNAME_LEN];
    let off = global(&NET_OFFSETS.netdev_name) as usize;
    let _ = unsafe { bpf_probe_read_kernel_buf(dev.wrapping_add(off), &mut name) };
    name
}

// TP_PROTO(struct sk_buff *skb, int rc, struct net_device *dev, unsigned int skb_len)
#[btf_tracepoint(function = "net_dev_xmit")]
pub fn stapr_net_tx(ctx: BtfTracePointContext) -> u32 {
    let dev: *const u8 = ctx.arg(2);
    let len: u32 = ctx.arg(3);
    count(netdev_name(dev), len, false);
    0
}

// TP_PROTO(struct sk_buff *skb)
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn stapr_net_rx(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let len_off = global(&NET_OFFSETS.skb_len) as usize;
    let dev_off = global(&NET_OFFSETS.skb_dev) as usize;
    let len = unsafe { bpf_probe_read_kernel(skb.wrapping_add(len_off) as *const u32) };
    let dev = unsafe { bpf_probe_read_kernel(skb.wrapping_add(dev_off) as *const *const u8) };
    if let (Ok(len), Ok(dev)) = (len, dev) {
        count(netdev_name(dev), len, true);
    }
    0
}

/// Classic tracepoint records carry `len` and a `__data_loc` name: a u32 whose low 16
/// bits are the string's offset in the record and whose high 16 bits its length.
#[inline(always)]
fn classic(ctx: &TracePointContext, len_off: u32, name_off: u32, rx: bool) {
    let Ok(len) = (unsafe { ctx.read_at::<u32>(len_off as usize) }) else {
        return;
    };
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(name_off as usize) }) else {
        return;
    };
    let mut name = [0u8; IFNAME_LEN];
    let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    let _ = unsafe { aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, &mut name) };
    count(name, len, rx);
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
