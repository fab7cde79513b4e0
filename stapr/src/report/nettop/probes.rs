//! Loads and attaches nettop's probes; drains the in-kernel counters. The only part of
//! nettop that touches the kernel.

use anyhow::{Context as _, Result};
use aya::{
    programs::{cgroup_skb::CgroupSkbAttachType, CgroupAttachMode, CgroupSkb, TracePoint},
    Ebpf,
};
use probes_common::{
    nettop::{NetCounters, NetKey, NetOffsets, NetRun, NET_LOST_LEDGER},
    CgroupFilter,
};

use super::ifnames::IfNames;
use crate::{
    report::method::{first_working, last_error, Spec, Way},
    runtime::{
        btf,
        features::{self, Facility, Need},
        object::{self, attach_btf, program, Object},
        slots::{self, SlotMaps},
        tracefs, user_error,
    },
};

pub static OBJECT: Object = Object {
    name: "nettop",
    bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettop")),
    config: Some((OFFSETS, size_of::<NetOffsets>())),
    programs: &[
        BTF_PROGS[0].0,
        BTF_PROGS[1].0,
        CLASSIC_PROGS[0].0,
        CLASSIC_PROGS[1].0,
        RX_TCP.0,
        RX_UDP_FREE.0,
        RX_UDP_READ.0,
        RX_UDP_QUEUE,
    ],
    maps: &[
        MAPS.slot,
        MAPS.counts[0],
        MAPS.counts[1],
        MAPS.runs,
        MAPS.dropped,
    ],
};

/// (transmit, receive) programs of each flavour.
const BTF_PROGS: [(&str, &str); 2] = [
    ("stapr_net_tx", "net_dev_xmit"),
    ("stapr_net_rx", "netif_receive_skb"),
];
const CLASSIC_PROGS: [(&str, &str); 2] = [
    ("stapr_net_tx_tp", "net_dev_xmit"),
    ("stapr_net_rx_tp", "netif_receive_skb"),
];
/// Receives charged to the reading socket: TCP reads, and UDP through the reader's free
/// (kernels before 6.18) or through the socket ledger (6.18 and later).
const RX_TCP: (&str, &str) = ("stapr_net_rx_tcp", "skb_copy_datagram_iovec");
const RX_UDP_FREE: (&str, &str) = ("stapr_net_rx_udp", "consume_skb");
const RX_UDP_READ: (&str, &str) = ("stapr_net_rx_read", "sock_recv_length");
const RX_UDP_QUEUE: &str = "stapr_net_rx_queue";
const OFFSETS: &str = "NET_OFFSETS";

/// Which tracepoint flavour carries the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// BTF-typed tracepoints (tp_btf): the cheapest; needs kernel BTF.
    TpBtf,
    /// Classic tracepoints (tracefs): work on any kernel since 4.7.
    Tracepoint,
}

impl crate::report::method::Method for Method {
    const WAYS: &'static [Way<Self>] = &[
        Way {
            method: Method::TpBtf,
            spec: Spec {
                name: "BTF tracepoints (tp_btf)",
                label: "tp_btf",
                needs: &[Need::Btf, Need::Works(Facility::TpBtf)],
                note: "net:net_dev_xmit + socket receives",
                partial: false,
                auto: true,
            },
        },
        Way {
            method: Method::Tracepoint,
            spec: Spec {
                name: "classic tracepoints",
                label: "tracepoint",
                needs: &[Need::Works(Facility::Classic)],
                note: "BTF tracepoints unavailable",
                partial: false,
                auto: true,
            },
        },
    ];
}

/// Which task a received packet is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvAt {
    /// The task that reads it off its socket, on the device it arrived on.
    Socket,
    /// The task current when the device hands it to the stack (SystemTap's netdev.receive).
    Device,
}

impl RecvAt {
    /// The tracepoints a report attaches to, for its start line.
    pub fn describe(self, udp_ledger: bool) -> &'static str {
        match (self, udp_ledger) {
            (RecvAt::Device, _) => "net:net_dev_xmit and net:netif_receive_skb",
            (RecvAt::Socket, true) => {
                "net:net_dev_xmit, skb:skb_copy_datagram_iovec, sock:sock_recv_length and cgroup_skb ingress"
            }
            (RecvAt::Socket, false) => {
                "net:net_dev_xmit, skb:skb_copy_datagram_iovec and skb:consume_skb"
            }
        }
    }
}

pub struct Probes {
    ebpf: Ebpf,
    /// The map the probes write into now (0 or 1).
    slot: u32,
    pub method: Method,
    pub recv_at: RecvAt,
    /// UDP receives go through the socket ledger (sock:sock_recv_length) rather than the
    /// reader's free.
    pub udp_ledger: bool,
    /// Programs attached.
    pub attached: usize,
    names: IfNames,
}

const MAPS: SlotMaps = SlotMaps {
    slot: "NET_SLOT",
    counts: ["NET_COUNTS_0", "NET_COUNTS_1"],
    runs: "NET_RUN",
    dropped: "NET_DROPPED",
};

impl Probes {
    /// Attaches to net:net_dev_xmit and net:netif_receive_skb with the flavour asked for
    /// (None: the first that works, saying on stderr why one was passed over).
    pub fn attach(choice: Option<Method>, recv_at: RecvAt, cgroup: CgroupFilter) -> Result<Self> {
        let socket = match recv_at {
            RecvAt::Socket => Some(SocketReceive::find()?),
            RecvAt::Device => None,
        };
        first_working("nettop", choice, |m| {
            Self::attach_with(m, socket.as_ref(), &cgroup)
        })
        .map_err(last_error)
    }

    fn attach_with(
        method: Method,
        socket: Option<&SocketReceive>,
        cgroup: &CgroupFilter,
    ) -> Result<Self> {
        let classic = method == Method::Tracepoint;
        if !classic && !features::btf() {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): BTF tracepoints need it; use --probe tracepoint",
            ));
        }
        let mut offsets = match socket {
            Some(s) => s.offsets,
            None => NetOffsets::default(),
        };
        if classic {
            offsets.xmit_len = tracefs::field_offset("net", "net_dev_xmit", "len")?;
            offsets.xmit_name = tracefs::field_offset("net", "net_dev_xmit", "name")?;
            offsets.recv_len = tracefs::field_offset("net", "netif_receive_skb", "len")?;
            offsets.recv_name = tracefs::field_offset("net", "netif_receive_skb", "name")?;
        }
        // Socket receives come with the device offsets already (SocketReceive::find).
        if !classic && socket.is_none() {
            device_offsets(&btf::Btf::from_sys_fs()?, &mut offsets)?;
        }
        let mut ebpf = OBJECT.load(&offsets, cgroup)?;
        let progs = if classic { CLASSIC_PROGS } else { BTF_PROGS };
        let tx_rx = match socket {
            Some(_) => &progs[..1],
            None => &progs[..],
        };
        let aya_btf = (!classic || socket.is_some())
            .then(|| aya::Btf::from_sys_fs().context("reading kernel BTF"))
            .transpose()?;
        for &(prog, tp) in tx_rx {
            match &aya_btf {
                Some(kbtf) if !classic => attach_btf(&mut ebpf, prog, tp, kbtf)?,
                _ => {
                    let p: &mut TracePoint = program(&mut ebpf, prog)?;
                    p.load()
                        .with_context(|| format!("loading tracepoint net:{tp}"))?;
                    p.attach("net", tp)
                        .with_context(|| format!("attaching tracepoint net:{tp}"))?;
                }
            }
        }
        let mut udp_ledger = false;
        let mut attached = tx_rx.len();
        if let (Some(s), Some(kbtf)) = (socket, &aya_btf) {
            attach_btf(&mut ebpf, RX_TCP.0, RX_TCP.1, kbtf)?;
            udp_ledger = s.ledger;
            attached += if s.ledger { 3 } else { 2 };
            if s.ledger {
                attach_btf(&mut ebpf, RX_UDP_READ.0, RX_UDP_READ.1, kbtf)?;
                let root = std::fs::File::open(&s.cgroup_root).with_context(|| {
                    format!("opening the cgroup2 root {}", s.cgroup_root.display())
                })?;
                let p: &mut CgroupSkb = program(&mut ebpf, RX_UDP_QUEUE)?;
                p.load().context("loading the cgroup_skb ingress program")?;
                // A link: other programs on the root keep running (flags must be 0 for links).
                p.attach(root, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
                    .context("attaching the cgroup_skb ingress program to the cgroup2 root")?;
            } else {
                attach_btf(&mut ebpf, RX_UDP_FREE.0, RX_UDP_FREE.1, kbtf)?;
            }
        }
        Ok(Self {
            ebpf,
            slot: 0,
            method,
            recv_at: if socket.is_some() {
                RecvAt::Socket
            } else {
                RecvAt::Device
            },
            udp_ledger,
            attached,
            names: IfNames::new(),
        })
    }

    /// What the probes counted since the last call (one element per key and CPU).
    /// Receives charged to sockets come with an interface index; they leave here with the
    /// device's name, so they add up with the transmits on that device.
    pub fn drain(&mut self) -> Result<Vec<(NetKey, NetCounters)>> {
        let mut got = slots::drain(&mut self.ebpf, &MAPS, &mut self.slot, |r: &NetRun| {
            (r.valid == 1).then_some((r.key, r.counts))
        })?;
        for (k, _) in &mut got {
            if k.ifindex != 0 {
                k.dev = self.names.name(k.netns, k.ifindex, k.pid);
                k.ifindex = 0;
                k.netns = 0;
            }
        }
        Ok(got)
    }

    /// Attachments slow to detach (classic tracepoints).
    pub fn slow_attachments(&self) -> usize {
        match (self.method, self.recv_at) {
            (Method::Tracepoint, RecvAt::Device) => 2,
            (Method::Tracepoint, RecvAt::Socket) => 1,
            _ => 0,
        }
    }

    /// Probe runs the kernel skipped, since start.
    pub fn skipped(&self) -> u64 {
        crate::runtime::object::skipped_runs(&self.ebpf)
    }

    /// Packets not counted, since start: because a counter map was full, and because a
    /// socket's ledger could not be made.
    pub fn lost(&self) -> Result<(u64, u64)> {
        Ok((
            slots::dropped(&self.ebpf, &MAPS)?,
            object::per_cpu_sum(&self.ebpf, MAPS.dropped, NET_LOST_LEDGER)?,
        ))
    }
}

/// What charging receives to the reading socket needs from this kernel.
struct SocketReceive {
    offsets: NetOffsets,
    /// UDP through the socket ledger (6.18 and later: the reader no longer frees).
    ledger: bool,
    cgroup_root: std::path::PathBuf,
}

impl SocketReceive {
    fn find() -> Result<Self> {
        if !features::btf() {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): charging receives to the reading socket needs it; use --recv-at device",
            ));
        }
        let b = btf::Btf::from_sys_fs()?;
        let m = |s: &str, f: &str| b.member_offset(s, f);
        let mut offsets = NetOffsets {
            skb_iif: m("sk_buff", "skb_iif")?,
            skb_head: m("sk_buff", "head")?,
            skb_data: m("sk_buff", "data")?,
            skb_end: m("sk_buff", "end")?,
            skb_mac_header: m("sk_buff", "mac_header")?,
            skb_network_header: m("sk_buff", "network_header")?,
            skb_sk: m("sk_buff", "sk")?,
            skb_cb: m("sk_buff", "cb")?,
            shinfo_gso_segs: m("skb_shared_info", "gso_segs")?,
            tcp_copied_seq: m("tcp_sock", "copied_seq")?,
            sk_protocol: m("sock", "sk_protocol")?,
            tcp_advmss: m("tcp_sock", "advmss")?,
            task_nsproxy: m("task_struct", "nsproxy")?,
            nsproxy_net: m("nsproxy", "net_ns")?,
            net_inum: m("net", "ns")? + m("ns_common", "inum")?,
            netdev_ifindex: m("net_device", "ifindex")?,
            netdev_net: m("net_device", "nd_net")?,
            by_index: 1,
            ..Default::default()
        };
        device_offsets(&b, &mut offsets)?;
        // Kernels before 6.18 free each UDP datagram in the reader's context; 6.18 defers
        // that free to the CPU that allocated the skb (the same release gave udp_sock its
        // per-NUMA producer queues, which is what tells the two apart here).
        let ledger = b.member_offset("udp_sock", "udp_prod_queue").is_ok()
            && b.has_tracepoint("sock_recv_length");
        if ledger && !crate::runtime::may_attach_to_cgroups() {
            return Err(user_error(
                "charging UDP receives to the reading socket attaches a cgroup_skb program, which needs CAP_NET_ADMIN: run as root, add CAP_NET_ADMIN, or use --recv-at device",
            ));
        }
        let cgroup_root = if ledger {
            crate::runtime::cgroup::root()?
        } else {
            Default::default()
        };
        Ok(SocketReceive {
            offsets,
            ledger,
            cgroup_root,
        })
    }
}

/// What the BTF transmit and receive programs read: the skb's length and device, the
/// device's name.
fn device_offsets(b: &btf::Btf, o: &mut NetOffsets) -> Result<()> {
    o.skb_len = b.member_offset("sk_buff", "len")?;
    o.skb_dev = b.member_offset("sk_buff", "dev")?;
    o.netdev_name = b.member_offset("net_device", "name")?;
    Ok(())
}
