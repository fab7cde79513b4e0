//! nettop: per (process, uid, device, command) packet counters, aggregated in the kernel.

use crate::{COMM_LEN, IFNAME_LEN};

/// Capacity of each counter map; when it is full, events are counted in `NET_DROPPED`.
pub const NET_MAX_ENTRIES: u32 = 10240;

/// Index of the counter map the probes write into (0 or 1), stored in `NET_SLOT[0]`.
/// User space flips it each interval and drains the other map, so no packet is counted
/// twice or lost between the read and the reset.
pub const NET_SLOTS: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetKey {
    /// Thread group id (what `ps` calls the PID) of the task current when the packet passed.
    pub pid: u32,
    pub uid: u32,
    pub dev: [u8; IFNAME_LEN],
    pub comm: [u8; COMM_LEN],
    /// The task's cgroup v2 id (`bpf_get_current_cgroup_id`), taken when its run starts.
    pub cgroup: u64,
    /// With `--recv-at socket`: the interface index and the inode number of its network
    /// namespace (the reader's for receives, the device's for transmits), which user space
    /// turns into the name (`dev` is empty in runs a receive started). Zero otherwise.
    pub ifindex: u32,
    pub netns: u32,
    /// With `--connections`: the connection the packets belong to. Zero otherwise.
    pub conn: NetConn,
}

/// A packet's connection, from this host's side: protocol, local and remote address and
/// port. IPv4 addresses fill the first 4 bytes (IPv4-mapped IPv6 addresses are stored as
/// IPv4). All zero for a packet that is not IP, or whose headers could not be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetConn {
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Ports in host byte order (0 for protocols without ports).
    pub lport: u16,
    pub rport: u16,
    /// `IPPROTO_*` (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// 4, 6, or 0 when unknown.
    pub family: u8,
    /// 1 for a UDP socket's received datagrams that came from several peers and were read
    /// together (see [`RecvLedger::conn`]): the remote address is not known.
    pub mixed: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub xmit_packets: u64,
    pub xmit_bytes: u64,
    pub recv_packets: u64,
    pub recv_bytes: u64,
}

/// The per-CPU run cache: the key and counts of the last (thread, device) seen on a CPU.
/// Packets come in runs (a send burst, a NAPI poll), so most events only bump these
/// counters and never touch the hash map; a different thread or device flushes the run
/// into the hash. One entry per slot; user space drains the idle slot's entries too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRun {
    /// `bpf_get_current_pid_tgid()` of the run's thread.
    pub pid_tgid: u64,
    /// The device's `struct net_device *` (BTF flavour) or 0 (classic: the name decides).
    pub dev_ptr: u64,
    /// 1 when the entry holds a run.
    pub valid: u32,
    /// The program runs that claimed the entry and have not given it back (atomic adds):
    /// 1 while one works on it. On kernels that preempt tracing programs (full or lazy
    /// preemption: Debian's 7.x) another program on the same CPU can start meanwhile; its
    /// claim finds the entry busy and it counts into the table directly.
    pub busy: u32,
    pub key: NetKey,
    pub counts: NetCounters,
}

/// Offsets the probes need, found by user space at load time and written into read-only
/// globals before the object is loaded (the role libbpf's CO-RE relocations play in C).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOffsets {
    /// BTF flavour: `offsetof(struct sk_buff, len)`.
    pub skb_len: u32,
    /// BTF flavour: `offsetof(struct sk_buff, dev)`.
    pub skb_dev: u32,
    /// BTF flavour: `offsetof(struct net_device, name)`.
    pub netdev_name: u32,
    /// Classic flavour: offset of `len` in the net_dev_xmit record.
    pub xmit_len: u32,
    /// Classic flavour: offset of the `__data_loc char[] name` field in net_dev_xmit.
    pub xmit_name: u32,
    /// Classic flavour: offset of `len` in the netif_receive_skb record.
    pub recv_len: u32,
    /// Classic flavour: offset of the `__data_loc char[] name` field in netif_receive_skb.
    pub recv_name: u32,
    /// Socket receive (`struct sk_buff`): `skb_iif`, `head`, `data`, `end`, `mac_header`,
    /// `network_header`, `sk`, `cb` (where `tcp_skb_cb.seq` starts).
    pub skb_iif: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_end: u32,
    pub skb_mac_header: u32,
    pub skb_network_header: u32,
    pub skb_sk: u32,
    pub skb_cb: u32,
    /// `offsetof(struct skb_shared_info, gso_segs)`.
    pub shinfo_gso_segs: u32,
    /// `offsetof(struct tcp_sock, copied_seq)`, `offsetof(struct sock, sk_protocol)`.
    pub tcp_copied_seq: u32,
    pub sk_protocol: u32,
    /// `offsetof(struct tcp_sock, advmss)`: the largest segment the peer may send.
    pub tcp_advmss: u32,
    /// For a TCP skb the kernel collapsed under memory pressure (a fresh skb with the
    /// data only: no input device, no headers): the socket's input device
    /// (`sock.sk_rx_dst_ifindex`, `inet_sock.rx_dst_ifindex` before 5.17), its address
    /// family (`sock.__sk_common.skc_family`) and TCP header length with options
    /// (`tcp_sock.tcp_header_len`).
    pub sk_rx_dst_ifindex: u32,
    pub sk_family: u32,
    pub tcp_header_len: u32,
    /// `task_struct.nsproxy`, `nsproxy.net_ns`, `net.ns.inum` (one offset from `net`).
    pub task_nsproxy: u32,
    pub nsproxy_net: u32,
    pub net_inum: u32,
    /// `net_device.ifindex` and `net_device.nd_net` (where its `struct net *` is).
    pub netdev_ifindex: u32,
    pub netdev_net: u32,
    /// 1 with `--recv-at socket`: a run is one thread on one interface index, so that
    /// transmits (device pointer) and socket receives (index) on a device share it.
    pub by_index: u32,
    /// `offsetof(struct socket, sk)` (`--xmit-at socket` on kernels before 6.3).
    pub socket_sk: u32,
    /// 1 when TCP writers are noted as their sends begin (`tcp:tcp_sendmsg_locked`): the
    /// note at the end of a send (`sock:sock_send_length`) then leaves TCP sockets alone.
    pub tcp_noted: u32,
    /// 1 with `--connections`: keys carry each packet's connection ([`NetConn`]).
    pub connections: u32,
    /// `struct sock_common` members (at the start of `struct sock`): the IPv4 remote and
    /// local addresses, the remote port (network order) and local port (host order), the
    /// IPv6 remote and local addresses.
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub _pad: u32,
}

/// What arrived on a UDP socket and was not yet read (`--recv-at socket` on 6.18 and
/// later, where the reader no longer frees the datagram): kept in the socket's own storage, added to
/// when a datagram is queued, taken by the next read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvLedger {
    /// Packets (top 24 bits) and bytes (low 40 bits) queued and not yet read, in one word
    /// so that queueing and reading each take one atomic add. A socket's receive queue is
    /// bounded by its rcvbuf (at most 2 GiB of buffers), far below either limit.
    pub pending: u64,
    /// Interface index of the last datagram queued, and the length of its link header
    /// (kept: the next datagram from the same device reuses it).
    pub ifindex: u32,
    pub link: u16,
    /// 1 once `link` is known for `ifindex`.
    pub link_known: u16,
    /// With `--connections`: the connection of the datagrams pending, from their headers;
    /// `mixed` set once datagrams from two peers are pending together.
    pub conn: NetConn,
}

/// The task that last wrote to a socket (`--xmit-at socket`): its transmitted packets are
/// charged to it, wherever the device sends them from. Noted after each send (kernels
/// 6.3 and later: in the socket's own storage) or before it (earlier kernels: in
/// `NET_TX_WRITERS`, keyed by the socket's address, forgotten when the socket is freed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxWriter {
    pub pid_tgid: u64,
    pub cgroup: u64,
    pub uid: u32,
    /// 1 when the writer passed the `--cgroup` filter when it was noted.
    pub allowed: u32,
    pub comm: [u8; COMM_LEN],
}

/// Capacity of `NET_TX_WRITERS` (kernels before 6.3): sockets written to and not yet freed.
pub const NET_TX_WRITERS_MAX: u32 = 65536;

const _: () = assert!(core::mem::size_of::<NetKey>() == 96);
const _: () = assert!(core::mem::size_of::<TxWriter>() == 40);
const _: () = assert!(core::mem::size_of::<NetConn>() == 40);
const _: () = assert!(core::mem::size_of::<NetCounters>() == 32);
const _: () = assert!(core::mem::size_of::<NetRun>() == 152);
const _: () = assert!(core::mem::size_of::<NetOffsets>() == 152);
const _: () = assert!(core::mem::size_of::<RecvLedger>() == 56);

/// Indexes of nettop's loss counters: packets of runs the hash map had no room for,
/// datagrams whose socket could not be given a ledger (its storage could not be made), and
/// sends whose writer could not be noted (its packets go to the task current at transmit).
pub const NET_LOST_TABLE: u32 = 0;
pub const NET_LOST_LEDGER: u32 = 1;
pub const NET_LOST_WRITER: u32 = 2;
/// Connections established that the table of new connections had no room for: they are
/// not marked new.
pub const NET_LOST_NEW: u32 = 3;
pub const NET_LOST_COUNT: u32 = 4;

/// Capacity of `NET_NEW_CONNS`: TCP connections established since user space last
/// drained it (each interval).
pub const NET_NEW_MAX: u32 = 16384;

/// Bits of [`RecvLedger::pending`] that hold bytes.
pub const LEDGER_BYTE_BITS: u32 = 40;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::NetKey {}
    unsafe impl aya::Pod for super::NetCounters {}
    unsafe impl aya::Pod for super::NetOffsets {}
    unsafe impl aya::Pod for super::NetRun {}
    unsafe impl aya::Pod for super::RecvLedger {}
    unsafe impl aya::Pod for super::TxWriter {}
    unsafe impl aya::Pod for super::NetConn {}
}
