//! nettop: count packets and bytes per (pid, uid, device, comm) on transmit and receive.
//!
//! Receives are charged either to the task current when the device hands the packet to the
//! stack (`netif_receive_skb`, the seed's semantics) or to the task that reads it off its
//! socket (`--recv-at socket`): TCP at the read that first copies an skb
//! (`skb_copy_datagram_iovec`), UDP where the reader frees the datagram (`consume_skb`,
//! kernels before 6.18) or through a per-socket ledger filled when a datagram is queued
//! (cgroup_skb ingress) and taken by the next read (`sock_recv_length`).
//!
//! Transmits are charged either to the task current when the device sends the packet
//! (`net_dev_xmit`, the seed's semantics) or to the task that last wrote to the packet's
//! socket (`--xmit-at socket`): the writer is noted at each send (in socket storage at
//! `sock_send_length` and `tcp_sendmsg_locked`, or by fentry on `inet_sendmsg`,
//! `inet6_sendmsg` and `inet_sendpage` into a table) and looked up when the device starts
//! sending (`net_dev_start_xmit`, where the skb still holds its socket).
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
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_load_bytes},
    },
    macros::{btf_map, btf_tracepoint, cgroup_skb, fentry, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, FEntryContext, SkBuffContext, TracePointContext},
    EbpfContext,
};
use probes_common::{
    nettop::{
        NetConn, NetCounters, NetKey, NetOffsets, NetRun, RecvLedger, TxWriter, LEDGER_BYTE_BITS,
        NET_LOST_COUNT, NET_LOST_LEDGER, NET_LOST_NEW, NET_LOST_TABLE, NET_LOST_WRITER,
        NET_MAX_ENTRIES, NET_NEW_MAX, NET_SLOTS, NET_TX_WRITERS_MAX,
    },
    IFNAME_LEN,
};
use probes_ebpf::{
    add_or_insert, atomic_add, btf_load, btf_load_str16, cgroup_id, claim, global, release,
};

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
    skb_iif: 0,
    skb_head: 0,
    skb_data: 0,
    skb_end: 0,
    skb_mac_header: 0,
    skb_network_header: 0,
    skb_sk: 0,
    skb_cb: 0,
    shinfo_gso_segs: 0,
    tcp_copied_seq: 0,
    sk_protocol: 0,
    tcp_advmss: 0,
    sk_rx_dst_ifindex: 0,
    sk_family: 0,
    tcp_header_len: 0,
    task_nsproxy: 0,
    nsproxy_net: 0,
    net_inum: 0,
    netdev_ifindex: 0,
    netdev_net: 0,
    by_index: 0,
    socket_sk: 0,
    tcp_noted: 0,
    connections: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
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
/// Packets not counted, by reason (`NET_LOST_*`): runs the hash map had no room for, and
/// datagrams whose socket could not be given a ledger.
#[map]
static NET_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(NET_LOST_COUNT, 0);
/// UDP datagrams queued on a socket and not yet read (see [`RecvLedger`]).
#[btf_map]
static NET_RX_LEDGER: SkStorage<RecvLedger> = SkStorage::new();
/// The last writer of each socket, in the socket's storage (kernels with
/// `sock_send_length`, 6.3 and later).
#[btf_map]
static NET_TX_WRITER: SkStorage<TxWriter> = SkStorage::new();
/// The same, keyed by the `struct sock *`, for the fentry notes (which come before the
/// send, where `sock_send_length` comes after it). Allocated as sockets are written to;
/// an entry goes when its socket is destroyed.
#[map]
static NET_TX_WRITERS: HashMap<u64, TxWriter> =
    HashMap::with_max_entries(NET_TX_WRITERS_MAX, BPF_F_NO_PREALLOC);
const BPF_F_NO_PREALLOC: u32 = 1;
/// With `--connections`: TCP connections established since user space last drained this
/// (each interval), which it marks as new.
#[map]
static NET_NEW_CONNS: HashMap<NetConn, u32> =
    HashMap::with_max_entries(NET_NEW_MAX, BPF_F_NO_PREALLOC);

#[inline(always)]
fn lost(why: u32, packets: u64) {
    if let Some(d) = NET_DROPPED.get_ptr_mut(why) {
        unsafe { atomic_add(d, packets) };
    }
}

/// Adds counts to `key` in the slot's hash map.
#[inline(always)]
fn flush(map: &PerCpuHashMap<NetKey, NetCounters>, key: &NetKey, counts: &NetCounters) {
    let added = add_or_insert(map, key, counts, |c, v| unsafe {
        atomic_add(&raw mut (*c).xmit_packets, v.xmit_packets);
        atomic_add(&raw mut (*c).xmit_bytes, v.xmit_bytes);
        atomic_add(&raw mut (*c).recv_packets, v.recv_packets);
        atomic_add(&raw mut (*c).recv_bytes, v.recv_bytes);
    });
    if !added {
        lost(NET_LOST_TABLE, counts.xmit_packets + counts.recv_packets);
    }
}

#[inline(always)]
fn flush_into(slot: u32, key: &NetKey, counts: &NetCounters) {
    if slot == 0 {
        flush(&NET_COUNTS_0, key, counts);
    } else {
        flush(&NET_COUNTS_1, key, counts);
    }
}

#[inline(always)]
fn add(c: &mut NetCounters, packets: u64, bytes: u64, rx: bool) {
    if rx {
        c.recv_packets += packets;
        c.recv_bytes += bytes;
    } else {
        c.xmit_packets += packets;
        c.xmit_bytes += bytes;
    }
}

/// Where a packet's device comes from: a pointer whose name is read only when a new run
/// starts (BTF), the name itself (classic tracepoint records), or an interface index in
/// the reader's network namespace (socket receives), named by user space.
enum Dev {
    Ptr(*const u8),
    Name([u8; IFNAME_LEN]),
    Index(u32),
}

/// Marks `NetRun::dev_ptr` as an interface index (kernel pointers have their top bits set).
const INDEX_RUN: u64 = 1 << 62;

#[inline(always)]
fn count(dev: Dev, len: u32, rx: bool, conn: &NetConn) {
    count_n(dev, 1, len as u64, rx, conn)
}

#[inline(always)]
fn count_n(dev: Dev, packets: u64, bytes: u64, rx: bool, conn: &NetConn) {
    count_by(dev, packets, bytes, rx, None, conn)
}

/// Counts packets of `conn` (zero without `--connections`) for the current task, or for
/// `by`: the socket's writer.
#[inline(always)]
fn count_by(dev: Dev, packets: u64, bytes: u64, rx: bool, by: Option<&TxWriter>, conn: &NetConn) {
    let slot = match NET_SLOT.get(0) {
        Some(&s) if s < NET_SLOTS => s,
        _ => 0,
    };
    let Some(run) = NET_RUN.get_ptr_mut(slot) else {
        return;
    };
    let busy = unsafe { &raw mut (*run).busy };
    if !unsafe { claim(busy) } {
        // This program preempted another one in the middle of the run: leave the run to
        // it and count this packet on its own.
        if allowed(by) {
            let pid_tgid = pid_tgid_of(by);
            let ident = dev_ident(&dev);
            let mut key = NetKey::default();
            fill_key(&mut key, dev, ident, pid_tgid, by, conn);
            let mut counts = NetCounters::default();
            add(&mut counts, packets, bytes, rx);
            flush_into(slot, &key, &counts);
        }
        return;
    }
    count_in_run(
        unsafe { &mut *run },
        slot,
        dev,
        packets,
        bytes,
        rx,
        by,
        conn,
    );
    unsafe { release(busy) };
}

/// The thread packets are charged to: the socket's writer, or the current task.
#[inline(always)]
fn pid_tgid_of(by: Option<&TxWriter>) -> u64 {
    match by {
        Some(w) => w.pid_tgid,
        None => bpf_get_current_pid_tgid(),
    }
}

/// Whether `--cgroup` lets the packets through: the writer's verdict, noted when it wrote,
/// or the current task's.
#[inline(always)]
fn allowed(by: Option<&TxWriter>) -> bool {
    match by {
        Some(w) => w.allowed == 1,
        None => in_cgroup(),
    }
}

/// Adds to this CPU's run when the packet continues it, or ends it and starts another.
// Inlined: its arguments are the counting path's registers, not a frame.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn count_in_run(
    run: &mut NetRun,
    slot: u32,
    dev: Dev,
    packets: u64,
    bytes: u64,
    rx: bool,
    by: Option<&TxWriter>,
    conn: &NetConn,
) {
    let pid_tgid = pid_tgid_of(by);
    let ident = dev_ident(&dev);
    let same_dev = match &dev {
        Dev::Name(n) => run.dev_ptr == 0 && run.key.dev == *n,
        _ => run.dev_ptr == ident,
    };
    let same_conn = !connections() || run.key.conn == *conn;
    if run.valid == 1 && run.pid_tgid == pid_tgid && same_dev && same_conn {
        add(&mut run.counts, packets, bytes, rx);
        return;
    }
    if run.valid == 1 {
        flush_into(slot, &run.key, &run.counts);
    }
    if !allowed(by) {
        run.valid = 0;
        return;
    }
    fill_key(&mut run.key, dev, ident, pid_tgid, by, conn);
    run.pid_tgid = pid_tgid;
    run.dev_ptr = ident;
    run.valid = 1;
    run.counts = NetCounters::default();
    add(&mut run.counts, packets, bytes, rx);
}

/// What tells one device from another in a run: the device pointer, or its index (marked
/// with [`INDEX_RUN`]) when runs are keyed by index, or 0 for a name.
#[inline(always)]
fn dev_ident(dev: &Dev) -> u64 {
    let by_index = global(&NET_OFFSETS.by_index) == 1;
    match dev {
        Dev::Ptr(p) if by_index => INDEX_RUN | netdev_ifindex(*p) as u64,
        Dev::Ptr(p) => *p as u64,
        Dev::Name(_) => 0,
        Dev::Index(i) => INDEX_RUN | *i as u64,
    }
}

/// Fills `k` with the table key of the packets of `conn` on `dev` (`ident`: its
/// [`dev_ident`]) of the current task, or of `by`: the socket's writer. In place: a key
/// built on the stack and copied would not fit beside the rest.
#[inline(always)]
fn fill_key(
    k: &mut NetKey,
    dev: Dev,
    ident: u64,
    pid_tgid: u64,
    by: Option<&TxWriter>,
    conn: &NetConn,
) {
    let by_index = global(&NET_OFFSETS.by_index) == 1;
    let (name, ifindex, netns) = match dev {
        // The index is the low half of `ident`.
        Dev::Ptr(p) if by_index => (netdev_name(p), ident as u32, netdev_netns(p)),
        Dev::Ptr(p) => (netdev_name(p), 0, 0),
        Dev::Name(n) => (n, 0, 0),
        Dev::Index(i) => ([0; IFNAME_LEN], i, current_netns()),
    };
    match by {
        Some(w) => {
            k.uid = w.uid;
            k.comm = w.comm;
            k.cgroup = w.cgroup;
        }
        None => {
            k.uid = bpf_get_current_uid_gid() as u32;
            k.comm = bpf_get_current_comm().unwrap_or([0; 16]);
            k.cgroup = cgroup_id();
        }
    }
    k.pid = (pid_tgid >> 32) as u32;
    k.dev = name;
    k.ifindex = ifindex;
    k.netns = netns;
    k.conn = *conn;
}

/// Inode number of the current task's network namespace (0 while it exits).
#[inline(always)]
fn current_netns() -> u32 {
    let nsproxy = unsafe { current_task().member(global(&NET_OFFSETS.task_nsproxy)) };
    if nsproxy.is_null() {
        return 0;
    }
    let net = unsafe { nsproxy.member(global(&NET_OFFSETS.nsproxy_net)) };
    if net.is_null() {
        return 0;
    }
    unsafe { net.load(global(&NET_OFFSETS.net_inum)) }
}

/// Inode number of a `struct net *` (0 for NULL).
#[inline(always)]
fn net_inum(net: *const u8) -> u32 {
    if net.is_null() {
        return 0;
    }
    unsafe { btf_load(net, global(&NET_OFFSETS.net_inum)) }
}

/// `dev->ifindex`.
#[inline(always)]
fn netdev_ifindex(dev: *const u8) -> u32 {
    unsafe { btf_load(dev, global(&NET_OFFSETS.netdev_ifindex)) }
}

/// Inode number of the network namespace device `dev` lives in.
#[inline(always)]
fn netdev_netns(dev: *const u8) -> u32 {
    net_inum(unsafe { btf_load(dev, global(&NET_OFFSETS.netdev_net)) })
}

/// A kernel value at `base + off`, through the probe-read helper (for members the
/// verifier cannot type: unions of a pointer and a scalar, memory past a struct's end).
#[inline(always)]
fn read<T: Copy + Default>(base: *const u8, off: u32) -> T {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
        .unwrap_or_default()
}

/// An skb as its device saw it: (wire packets, bytes with every packet's headers from the
/// link layer up). A GRO'd or coalesced skb holds `gso_segs` packets, each of which
/// carried the headers in front of `data`.
#[inline(always)]
fn wire(skb: *const u8) -> (u64, u64) {
    wire_at_least(skb, 1)
}

/// As [`wire`], for an skb known to hold at least `least` packets.
#[inline(always)]
fn wire_at_least(skb: *const u8, least: u64) -> (u64, u64) {
    let o = &NET_OFFSETS;
    let len: u32 = unsafe { btf_load(skb, global(&o.skb_len)) };
    let head: u64 = unsafe { btf_load(skb, global(&o.skb_head)) };
    let data: u64 = unsafe { btf_load(skb, global(&o.skb_data)) };
    let mac: u16 = unsafe { btf_load(skb, global(&o.skb_mac_header)) };
    let end: u32 = unsafe { btf_load(skb, global(&o.skb_end)) };
    let start = head + mac as u64;
    let hdr = if mac != u16::MAX && data >= start && data - start < 256 {
        data - start
    } else {
        0
    };
    let shinfo = (head + end as u64) as *const u8;
    let segs: u16 = read(shinfo, global(&o.shinfo_gso_segs));
    let segs = (segs as u64).max(least);
    (segs, len as u64 + segs * hdr)
}

/// Whether keys carry connections (`--connections`).
#[inline(always)]
fn connections() -> bool {
    global(&NET_OFFSETS.connections) == 1
}

/// No connection: what keys carry without `--connections`.
const NO_CONN: NetConn = NetConn {
    laddr: [0; 16],
    raddr: [0; 16],
    lport: 0,
    rport: 0,
    proto: 0,
    family: 0,
    mixed: 0,
    _pad: 0,
};

/// Fills `c` with the connection of a packet from its IP header and the ports after it,
/// each field read into place by `read(offset from the IP header, destination)` (false:
/// not readable): a probe read of kernel memory, or a load from the skb of a cgroup_skb
/// program. A function of its own (a BPF-to-BPF call) with a small frame: the verifier
/// counts the caller's and its stack together. `tx`: this host sent the packet, so its
/// source is the local end.
#[inline(never)]
fn conn_of_packet(c: &mut NetConn, tx: bool, read: impl Fn(u32, &mut [u8]) -> bool) {
    let mut b = [0u8; 1];
    if !read(0, &mut b) {
        return;
    }
    let (family, proto_at, src, dst, hlen) = match b[0] >> 4 {
        4 => (4, 9, 12, 16, ((b[0] & 0xf) as u32) * 4),
        6 => (6, 6, 8, 24, 40),
        _ => return,
    };
    let (l, r) = if tx { (src, dst) } else { (dst, src) };
    let ok = read(proto_at, &mut b)
        && if family == 4 {
            read(l, &mut c.laddr[..4]) && read(r, &mut c.raddr[..4])
        } else {
            read(l, &mut c.laddr) && read(r, &mut c.raddr)
        };
    if !ok {
        return;
    }
    c.family = family;
    c.proto = b[0];
    let mut p = [0u8; 4];
    if (c.proto as u32 == IPPROTO_TCP || c.proto as u32 == IPPROTO_UDP) && read(hlen, &mut p) {
        let (sport, dport) = (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        );
        (c.lport, c.rport) = if tx { (sport, dport) } else { (dport, sport) };
    }
}

/// [`conn_of_packet`] for a packet whose IP header starts at kernel address `ip`.
#[inline(always)]
fn conn_in_memory(c: &mut NetConn, ip: *const u8, tx: bool) {
    conn_of_packet(c, tx, |at, dst| unsafe {
        bpf_probe_read_kernel_buf(ip.wrapping_add(at as usize), dst).is_ok()
    });
}

/// The connection of an skb being sent or received (none without `--connections`): its
/// IP header is at `skb->head + skb->network_header`.
#[inline(always)]
fn conn_of_skb(c: &mut NetConn, skb: *const u8, tx: bool) {
    if !connections() {
        return;
    }
    let o = &NET_OFFSETS;
    let head: u64 = unsafe { btf_load(skb, global(&o.skb_head)) };
    let net: u16 = unsafe { btf_load(skb, global(&o.skb_network_header)) };
    if net != u16::MAX {
        conn_in_memory(c, (head + net as u64) as *const u8, tx);
    }
}

/// The connection of a TCP or UDP socket (`sk`: a BTF-typed `struct sock *`).
#[inline(always)]
fn conn_of_sock(sk: *const u8, proto: u8) -> NetConn {
    let o = &NET_OFFSETS;
    let sk_family: u16 = unsafe { btf_load(sk, global(&o.sk_family)) };
    let (family, laddr, raddr) = if sk_family == AF_INET6 {
        let l = unsafe { btf_load_str16(sk, global(&o.skc_v6_rcv_saddr)) };
        let r = unsafe { btf_load_str16(sk, global(&o.skc_v6_daddr)) };
        if v4_mapped(&l) && v4_mapped(&r) {
            (
                4,
                addr4([l[12], l[13], l[14], l[15]]),
                addr4([r[12], r[13], r[14], r[15]]),
            )
        } else {
            (6, l, r)
        }
    } else {
        let l: u32 = unsafe { btf_load(sk, global(&o.skc_rcv_saddr)) };
        let r: u32 = unsafe { btf_load(sk, global(&o.skc_daddr)) };
        (4, addr4(l.to_ne_bytes()), addr4(r.to_ne_bytes()))
    };
    let dport: u16 = unsafe { btf_load(sk, global(&o.skc_dport)) };
    let lport: u16 = unsafe { btf_load(sk, global(&o.skc_num)) };
    NetConn {
        laddr,
        raddr,
        lport,
        rport: u16::from_be(dport),
        proto,
        family,
        mixed: 0,
        _pad: 0,
    }
}

/// `::ffff:a.b.c.d`: an IPv4 peer of a dual-stack socket.
#[inline(always)]
fn v4_mapped(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    a[10] == 0xff && a[11] == 0xff
}

/// Four address bytes as a [`NetConn`] address.
#[inline(always)]
fn addr4(b: [u8; 4]) -> [u8; 16] {
    [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

// TP_PROTO(const struct sk_buff *skb, int len): a read copying from a received skb.
// Each copy is charged to the reader: its bytes, and its share of the headers the skb's
// segments carried (shares that add up to exactly the skb's headers over the copies that
// read it); the packets at the copy that reaches the skb's end. A partly read skb may
// still grow (the stack coalesces into the queue's tail) or be collapsed into a new one
// under memory pressure; what was read of it is charged all the same.
// (`copied_seq` is advanced after the copy.)
#[btf_tracepoint(function = "skb_copy_datagram_iovec")]
pub fn stapr_net_rx_tcp(ctx: BtfTracePointContext) -> u32 {
    let o = &NET_OFFSETS;
    let skb: *const u8 = ctx.arg(0);
    let len: i64 = ctx.arg(1);
    let sk: *const u8 = unsafe { btf_load(skb, global(&o.skb_sk)) };
    if sk.is_null() {
        return 0;
    }
    let protocol: u16 = unsafe { btf_load(sk, global(&o.sk_protocol)) };
    if protocol as u32 != IPPROTO_TCP {
        return 0;
    }
    // Past `struct sock`, where the verifier's typed loads do not reach.
    let copied: u32 = read(sk, global(&o.tcp_copied_seq));
    let seq: u32 = unsafe { btf_load(skb, global(&o.skb_cb)) };
    let skb_len: u32 = unsafe { btf_load(skb, global(&o.skb_len)) };
    let (offset, len, skb_len) = (copied.wrapping_sub(seq) as u64, len as u64, skb_len as u64);
    if len == 0 || skb_len == 0 || offset + len > skb_len {
        return 0;
    }
    // The stack may have coalesced segments into this skb without adding them to
    // gso_segs: it holds at least one segment per advertised MSS.
    let mss: u16 = read(sk, global(&o.tcp_advmss));
    let least = if mss > 0 {
        skb_len.div_ceil(mss as u64)
    } else {
        1
    };
    let iif: i32 = unsafe { btf_load(skb, global(&o.skb_iif)) };
    let (iif, segs, wire) = if iif > 0 {
        let (segs, wire) = wire_at_least(skb, least);
        (iif, segs, wire)
    } else {
        // An skb the kernel collapsed while the receive queue was over its budget
        // (tcp_collapse): a fresh one holding the data of several, with no input
        // device and no headers. The socket's own input device and header sizes
        // stand in, with an Ethernet link header.
        let iif: i32 = read(sk, global(&o.sk_rx_dst_ifindex));
        if iif <= 0 {
            return 0;
        }
        let family: u16 = read(sk, global(&o.sk_family));
        let ip = if family == AF_INET6 { 40 } else { 20 };
        let tcp: u16 = read(sk, global(&o.tcp_header_len));
        let tcp = (tcp as u64).max(20);
        (iif, least, skb_len + least * (ETH_HLEN + ip + tcp))
    };
    let headers = wire.saturating_sub(skb_len);
    let end = offset + len;
    let bytes = len + headers * end / skb_len - headers * offset / skb_len;
    let packets = if end == skb_len { segs } else { 0 };
    let conn = if connections() {
        conn_of_sock(sk, IPPROTO_TCP as u8)
    } else {
        NO_CONN
    };
    count_n(Dev::Index(iif as u32), packets, bytes, true, &conn);
    0
}

const AF_INET6: u16 = 10;
const ETH_HLEN: u64 = 14;

// TP_PROTO(struct sk_buff *skb[, void *location]): on kernels before 6.18 the reader
// frees each UDP datagram it took (skb_consume_udp). Such an skb is known by its `dev`
// member: UDP keeps a small non-pointer scratch value there while the datagram is queued.
#[btf_tracepoint(function = "consume_skb")]
pub fn stapr_net_rx_udp(ctx: BtfTracePointContext) -> u32 {
    let o = &NET_OFFSETS;
    let skb: *const u8 = ctx.arg(0);
    let iif: i32 = unsafe { btf_load(skb, global(&o.skb_iif)) };
    if iif <= 0 {
        return 0;
    }
    let scratch: u64 = read(skb, global(&o.skb_dev));
    if scratch == 0 || scratch >> 48 == 0xffff {
        return 0;
    }
    let (packets, bytes) = wire(skb);
    let mut conn = NO_CONN;
    conn_of_skb(&mut conn, skb, false);
    count_n(Dev::Index(iif as u32), packets, bytes, true, &conn);
    0
}

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const MSG_PEEK: i32 = 2;

// Every packet handed to a local socket: UDP datagrams are written into their socket's
// ledger. Always lets the packet through.
#[cgroup_skb(ingress)]
pub fn stapr_net_rx_queue(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let sk = unsafe { bpf_sk_fullsock(sk) };
    if sk.is_null() || unsafe { (*sk).protocol } != IPPROTO_UDP {
        return 1;
    }
    let segs = unsafe { (*skb).gso_segs }.max(1) as u64;
    let get = |flags: u32| unsafe {
        bpf_sk_storage_get(
            &NET_RX_LEDGER as *const _ as *mut _,
            sk as *mut _,
            core::ptr::null_mut(),
            flags as u64,
        )
    } as *mut RecvLedger;
    let mut ledger = get(BPF_SK_STORAGE_GET_F_CREATE);
    if ledger.is_null() {
        // Two datagrams racing to create a socket's ledger: one of them made it.
        ledger = get(0);
    }
    if ledger.is_null() {
        lost(NET_LOST_LEDGER, segs);
        return 1;
    }
    let l = unsafe { &mut *ledger };
    let ifindex = unsafe { (*skb).ifindex };
    if l.link_known == 0 || l.ifindex != ifindex {
        // The skb's data starts at the network header here; the link header lies before
        // it. Read once per socket and device.
        let o = &NET_OFFSETS;
        let base = ctx.as_ptr() as *const u8;
        let mac: u16 = read(base, global(&o.skb_mac_header));
        let net: u16 = read(base, global(&o.skb_network_header));
        l.link = if mac != u16::MAX && net >= mac {
            net - mac
        } else {
            0
        };
        l.link_known = 1;
        l.ifindex = ifindex;
    }
    if connections() {
        // The skb's data starts at its IP header; each field is loaded at its own length
        // (a short datagram's packet may end before 40 bytes).
        let mut conn = NO_CONN;
        conn_of_packet(&mut conn, false, |at, dst| unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr() as *const _,
                at,
                dst.as_mut_ptr() as *mut _,
                dst.len() as u32,
            ) == 0
        });
        let pending = unsafe { core::ptr::read_volatile(&l.pending) };
        if pending == 0 {
            l.conn = conn;
        } else if l.conn.mixed == 0 && l.conn != conn {
            l.conn.mixed = 1;
        }
    }
    let bytes = unsafe { (*skb).len } as u64 + segs * l.link as u64;
    unsafe { atomic_add(&mut l.pending, (segs << LEDGER_BYTE_BITS) + bytes) };
    1
}

// TP_PROTO(struct sock *sk, int ret, int flags): a read returned; it takes what its
// socket's ledger holds.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn stapr_net_rx_read(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let flags: i64 = ctx.arg(2);
    if (ret as i32) < 0 || (flags as i32) & MSG_PEEK != 0 {
        return 0;
    }
    let ledger = unsafe {
        bpf_sk_storage_get(
            &NET_RX_LEDGER as *const _ as *mut _,
            sk,
            core::ptr::null_mut(),
            0,
        )
    } as *mut RecvLedger;
    if ledger.is_null() {
        return 0;
    }
    let l = unsafe { &mut *ledger };
    let pending = unsafe { core::ptr::read_volatile(&l.pending) };
    if pending == 0 {
        return 0;
    }
    // Datagrams queued meanwhile on another CPU stay for the next read.
    unsafe { atomic_add(&mut l.pending, pending.wrapping_neg()) };
    let packets = pending >> LEDGER_BYTE_BITS;
    let bytes = pending & ((1 << LEDGER_BYTE_BITS) - 1);
    let mut conn = l.conn;
    if conn.mixed != 0 {
        // Datagrams from several peers: the remote end is not known.
        conn.raddr = [0; 16];
        conn.rport = 0;
    }
    count_n(Dev::Index(l.ifindex), packets, bytes, true, &conn);
    0
}

/// `dev->name` (IFNAMSIZ = 16 bytes).
#[inline(always)]
fn netdev_name(dev: *const u8) -> [u8; IFNAME_LEN] {
    unsafe { btf_load_str16(dev, global(&NET_OFFSETS.netdev_name)) }
}

// TP_PROTO(struct sk_buff *skb, int rc, struct net_device *dev, unsigned int skb_len)
#[btf_tracepoint(function = "net_dev_xmit")]
pub fn stapr_net_tx(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(2);
    let len: u32 = ctx.arg(3);
    let mut conn = NO_CONN;
    conn_of_skb(&mut conn, skb, true);
    count(Dev::Ptr(dev), len, false, &conn);
    0
}

/// The current task as a socket's writer.
#[inline(always)]
fn writer_now(pid_tgid: u64) -> TxWriter {
    TxWriter {
        pid_tgid,
        cgroup: cgroup_id(),
        uid: bpf_get_current_uid_gid() as u32,
        allowed: in_cgroup() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
fn tx_storage(sk: *mut core::ffi::c_void, flags: u32) -> *mut TxWriter {
    let w = unsafe {
        bpf_sk_storage_get(
            &NET_TX_WRITER as *const _ as *mut _,
            sk,
            core::ptr::null_mut(),
            flags as u64,
        )
    };
    w as *mut TxWriter
}

// TP_PROTO(struct sock *sk, int ret, int flags): a send returned (kernels 6.3 and later;
// sendfile and splice to a socket from 6.5). Notes the writer once per change of thread.
#[btf_tracepoint(function = "sock_send_length")]
pub fn stapr_net_tx_note(ctx: BtfTracePointContext) -> u32 {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    if global(&NET_OFFSETS.tcp_noted) == 1 {
        // TCP sends were noted as they began.
        let protocol: u16 = unsafe { btf_load(sk as *const u8, global(&NET_OFFSETS.sk_protocol)) };
        if protocol as u32 == IPPROTO_TCP {
            return 0;
        }
    }
    note_storage(sk)
}

// TP_PROTO(const struct sock *sk, const struct msghdr *msg, const struct sk_buff *skb,
// int size_goal): a TCP send fills an skb (6.14 and later), before the segments that ACKs
// release during a long first write leave from other contexts.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn stapr_net_tx_note_tcp(ctx: BtfTracePointContext) -> u32 {
    note_storage(ctx.arg(0))
}

// The same note as a second program on the same tracepoint. On kernels that preempt
// tracing programs, a task preempted inside one makes the kernel skip that program for
// every other task on its CPU meanwhile; a server thread whose every note of a write was
// skipped had no writer, and the segments that ACKs released were charged to the client
// that sent the ACK. A task is inside one program at a time, so the other one notes.
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn stapr_net_tx_note_tcp_again(ctx: BtfTracePointContext) -> u32 {
    note_storage(ctx.arg(0))
}

/// Notes the current thread as `sk`'s writer in the socket's storage.
#[inline(always)]
fn note_storage(sk: *mut core::ffi::c_void) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut w = tx_storage(sk, 0);
    if w.is_null() {
        w = tx_storage(sk, BPF_SK_STORAGE_GET_F_CREATE);
    }
    if w.is_null() {
        // Out of memory, or two sends racing to create it: the other one noted it.
        w = tx_storage(sk, 0);
    }
    if w.is_null() {
        lost(NET_LOST_WRITER, 1);
        return 0;
    }
    let w = unsafe { &mut *w };
    if w.pid_tgid != pid_tgid {
        *w = writer_now(pid_tgid);
    }
    0
}

/// Where fentry works: notes the writer of `sock` (a `struct socket *`) before its send,
/// keyed by the socket's `struct sock *`. Hooked on the inet protocol sends, which
/// sendmsg and (before 6.5) sendfile and splice all reach.
#[inline(always)]
fn note_writer(sock: *const u8) -> u32 {
    let sk: u64 = unsafe { btf_load(sock, global(&NET_OFFSETS.socket_sk)) };
    if sk == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(w) = NET_TX_WRITERS.get_ptr_mut(&sk) {
        let w = unsafe { &mut *w };
        if w.pid_tgid != pid_tgid {
            *w = writer_now(pid_tgid);
        }
        return 0;
    }
    if NET_TX_WRITERS
        .insert(&sk, &writer_now(pid_tgid), 0)
        .is_err()
    {
        lost(NET_LOST_WRITER, 1);
    }
    0
}

// int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size): IPv4 sends.
#[fentry(function = "inet_sendmsg")]
pub fn stapr_net_tx_note_inet(ctx: FEntryContext) -> u32 {
    note_writer(ctx.arg(0))
}

// int inet6_sendmsg(struct socket *sock, struct msghdr *msg, size_t size): IPv6 sends.
#[fentry(function = "inet6_sendmsg")]
pub fn stapr_net_tx_note_inet6(ctx: FEntryContext) -> u32 {
    note_writer(ctx.arg(0))
}

// ssize_t inet_sendpage(struct socket *sock, struct page *page, int offset, size_t size,
// int flags): sendfile and splice to an inet socket (kernels before 6.5).
#[fentry(function = "inet_sendpage")]
pub fn stapr_net_tx_note_page(ctx: FEntryContext) -> u32 {
    note_writer(ctx.arg(0))
}

// void sk_destruct(struct sock *sk): the socket is gone, its last packet freed; so is
// its writer. (Not sk_free: TCP calls that at every freed skb to drop a unit of
// sk_wmem_alloc, long before the socket ends.)
#[fentry(function = "sk_destruct")]
pub fn stapr_net_tx_forget(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let _ = NET_TX_WRITERS.remove(&sk);
    0
}

/// A packet the device starts to send, charged to its socket's writer when `writer`
/// finds one (`skb->sk` is still set here: loopback and veth orphan the skb inside the
/// device's transmit), else to the current task.
#[inline(always)]
fn tx_socket(
    ctx: &BtfTracePointContext,
    writer: impl Fn(*mut core::ffi::c_void) -> *const TxWriter,
) {
    let skb: *const u8 = ctx.arg(0);
    let dev: *const u8 = ctx.arg(1);
    let o = &NET_OFFSETS;
    let len: u32 = unsafe { btf_load(skb, global(&o.skb_len)) };
    let sk: *mut core::ffi::c_void = unsafe { btf_load(skb, global(&o.skb_sk)) };
    let w = if sk.is_null() {
        core::ptr::null()
    } else {
        writer(sk)
    };
    let mut conn = NO_CONN;
    conn_of_skb(&mut conn, skb, true);
    count_by(
        Dev::Ptr(dev),
        1,
        len as u64,
        false,
        unsafe { w.as_ref() },
        &conn,
    );
}

// TP_PROTO(const struct sk_buff *skb, const struct net_device *dev)
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn stapr_net_tx_sk(ctx: BtfTracePointContext) -> u32 {
    tx_socket(&ctx, |sk| tx_storage(sk, 0));
    0
}

// The same, with the writers keyed by socket address (noted by fentry).
#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn stapr_net_tx_sk_hash(ctx: BtfTracePointContext) -> u32 {
    tx_socket(&ctx, |sk| {
        match unsafe { NET_TX_WRITERS.get(&(sk as u64)) } {
            Some(w) => w as *const TxWriter,
            None => core::ptr::null(),
        }
    });
    0
}

// TP_PROTO(const struct sock *sk, const int oldstate, const int newstate): with
// `--connections`, a TCP connection established (either end) is noted as new.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn stapr_net_conn_new(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let new: i64 = ctx.arg(2);
    if new as i32 != TCP_ESTABLISHED {
        return 0;
    }
    let protocol: u16 = unsafe { btf_load(sk, global(&NET_OFFSETS.sk_protocol)) };
    if protocol as u32 != IPPROTO_TCP {
        return 0;
    }
    let conn = conn_of_sock(sk, IPPROTO_TCP as u8);
    if NET_NEW_CONNS.insert(&conn, &1, 0).is_err() {
        lost(NET_LOST_NEW, 1);
    }
    0
}

const TCP_ESTABLISHED: i32 = 1;

// TP_PROTO(struct sk_buff *skb)
#[btf_tracepoint(function = "netif_receive_skb")]
pub fn stapr_net_rx(ctx: BtfTracePointContext) -> u32 {
    let skb: *const u8 = ctx.arg(0);
    let len: u32 = unsafe { btf_load(skb, global(&NET_OFFSETS.skb_len)) };
    let dev: *const u8 = unsafe { btf_load(skb, global(&NET_OFFSETS.skb_dev)) };
    // The device has pulled its link header: data is at the IP header.
    let mut conn = NO_CONN;
    if connections() {
        let data: *const u8 = unsafe { btf_load(skb, global(&NET_OFFSETS.skb_data)) };
        conn_in_memory(&mut conn, data, false);
    }
    count(Dev::Ptr(dev), len, true, &conn);
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
    count(Dev::Name(name), len, rx, &NO_CONN);
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
