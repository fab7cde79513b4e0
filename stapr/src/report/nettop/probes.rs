//! Loads and attaches nettop's probes; drains the in-kernel counters. The only part of
//! nettop that touches the kernel.

use anyhow::{Context as _, Result};
use aya::{
    programs::{cgroup_skb::CgroupSkbAttachType, CgroupAttachMode, CgroupSkb, FEntry, TracePoint},
    Ebpf,
};
use probes_common::{
    nettop::{
        NetConn, NetCounters, NetKey, NetOffsets, NetRun, NET_LOST_LEDGER, NET_LOST_NEW,
        NET_LOST_WRITER,
    },
    CgroupFilter,
};

use super::ifnames::IfNames;
use crate::{
    report::method::{first_working, first_working_of, last_error, Spec, Way},
    runtime::{
        btf,
        features::{self, Facility, Need},
        object::{self, attach_btf, program, Object},
        program_error_reason,
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
        TX_SOCKET.0,
        TX_SOCKET_HASH,
        TX_NOTE.0,
        TX_NOTE_TCP[0].0,
        TX_NOTE_TCP[1].0,
        TX_NOTE_FENTRY[0].0,
        TX_NOTE_FENTRY[1].0,
        TX_NOTE_PAGE.0,
        TX_FORGET.0,
        CONN_NEW.0,
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
/// Transmits charged to the socket's last writer: counted where the device starts
/// sending, the writer noted in the socket's storage (at each send's end, and at a TCP
/// send's start where that tracepoint exists) or by fentry on the inet sends (sendmsg,
/// and sendpage: sendfile and splice before 6.5) into a table that forgets it when the
/// socket is destroyed (sk_destruct).
const TX_SOCKET: (&str, &str) = ("stapr_net_tx_sk", "net_dev_start_xmit");
const TX_SOCKET_HASH: &str = "stapr_net_tx_sk_hash";
const TX_NOTE: (&str, &str) = ("stapr_net_tx_note", "sock_send_length");
/// Where it exists (6.14 and later): TCP writers noted as the send begins, by two programs
/// (a task preempted inside one makes the kernel skip it for the others on its CPU).
const TX_NOTE_TCP: [(&str, &str); 2] = [
    ("stapr_net_tx_note_tcp", "tcp_sendmsg_locked"),
    ("stapr_net_tx_note_tcp_again", "tcp_sendmsg_locked"),
];
const TX_NOTE_FENTRY: [(&str, &str); 2] = [
    ("stapr_net_tx_note_inet", "inet_sendmsg"),
    ("stapr_net_tx_note_inet6", "inet6_sendmsg"),
];
const TX_NOTE_PAGE: (&str, &str) = ("stapr_net_tx_note_page", "inet_sendpage");
const TX_FORGET: (&str, &str) = ("stapr_net_tx_forget", "sk_destruct");
/// With `--connections`: TCP connections established, marked new in their interval.
const CONN_NEW: (&str, &str) = ("stapr_net_conn_new", "inet_sock_set_state");
const NEW_CONNS: &str = "NET_NEW_CONNS";
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
                note: "socket transmits and receives",
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

/// Which task a packet is charged to (`--recv-at`, `--xmit-at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Charge {
    /// The process that reads it off (receive) or last wrote to (transmit) its socket, on
    /// the device it passed
    Socket,
    /// The task running when the device handles it (SystemTap's netdev.receive and
    /// netdev.transmit)
    Device,
}

/// Where the writers of `--xmit-at socket` are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// In each socket's storage, noted at sock:sock_send_length (6.3) and, with
    /// `tcp_first`, as TCP sends begin, at tcp:tcp_sendmsg_locked (6.14).
    Storage { tcp_first: bool },
    /// In a table keyed by socket, noted by fentry on the inet sends.
    Table,
}

/// The hooks a report attaches, for its start line.
fn describe(xmit: Option<Writers>, recv_at: Charge, udp_ledger: bool) -> String {
    let tx = match xmit {
        None => "net:net_dev_xmit",
        Some(Writers::Storage { tcp_first: false }) => {
            "net:net_dev_start_xmit (writers from sock:sock_send_length)"
        }
        Some(Writers::Storage { tcp_first: true }) => {
            "net:net_dev_start_xmit (writers from sock:sock_send_length and tcp:tcp_sendmsg_locked)"
        }
        Some(Writers::Table) => {
            "net:net_dev_start_xmit (writers from fentry on inet_sendmsg, inet6_sendmsg, inet_sendpage and sk_destruct)"
        }
    };
    let rx = match (recv_at, udp_ledger) {
        (Charge::Device, _) => "net:netif_receive_skb",
        (Charge::Socket, true) => {
            "skb:skb_copy_datagram_iovec, sock:sock_recv_length and cgroup_skb ingress"
        }
        (Charge::Socket, false) => "skb:skb_copy_datagram_iovec and skb:consume_skb",
    };
    format!("transmits at {tx}, receives at {rx}")
}

pub struct Probes {
    ebpf: Ebpf,
    /// The map the probes write into now (0 or 1).
    slot: u32,
    pub method: Method,
    pub recv_at: Charge,
    /// Where transmits' writers are noted (None: transmits are charged at the device).
    pub writers: Option<Writers>,
    /// UDP receives go through the socket ledger (sock:sock_recv_length) rather than the
    /// reader's free.
    pub udp_ledger: bool,
    /// Programs attached, and those of them on classic tracepoints (slow to detach).
    pub attached: usize,
    classic: usize,
    names: IfNames,
    /// Keys carry connections (`--connections`).
    pub connections: bool,
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
    pub fn attach(
        choice: Option<Method>,
        recv_at: Charge,
        xmit_at: Charge,
        cgroup: CgroupFilter,
        connections: bool,
    ) -> Result<Self> {
        if connections && choice == Some(Method::Tracepoint) {
            // Connections come from packet headers and sockets, which only the BTF
            // flavour reads.
            return Err(user_error(
                "--connections reads each packet's addresses through BTF tracepoints (tp_btf); it cannot be used with --probe tracepoint",
            ));
        }
        // The kernel's BTF, read and parsed once for every offset the probes need (none
        // when classic tracepoints charge both directions at the device).
        let needs_btf = choice != Some(Method::Tracepoint)
            || recv_at == Charge::Socket
            || xmit_at == Charge::Socket
            || connections;
        let kbtf = (needs_btf && features::btf())
            .then(btf::Btf::from_sys_fs)
            .transpose()?;
        let kbtf = kbtf.as_ref();
        let socket = match recv_at {
            Charge::Socket => Some(SocketReceive::find(kbtf)?),
            Charge::Device => None,
        };
        let sender = match xmit_at {
            Charge::Socket => SocketTransmit::find(kbtf)?,
            Charge::Device => None,
        };
        let conns = connections.then(|| ConnOffsets::find(kbtf)).transpose()?;
        let attach =
            |m| Self::attach_with(m, kbtf, socket.as_ref(), sender.as_ref(), &cgroup, conns);
        match connections {
            false => first_working("nettop", choice, attach),
            true => first_working_of("nettop", &[Method::TpBtf], attach),
        }
        .map_err(last_error)
    }

    fn attach_with(
        method: Method,
        kbtf: Option<&btf::Btf>,
        socket: Option<&SocketReceive>,
        sender: Option<&SocketTransmit>,
        cgroup: &CgroupFilter,
        conns: Option<ConnOffsets>,
    ) -> Result<Self> {
        let classic = method == Method::Tracepoint;
        let no_btf = || {
            user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): BTF tracepoints need it; use --probe tracepoint",
            )
        };
        if !classic && kbtf.is_none() {
            return Err(no_btf());
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
        if (!classic || sender.is_some()) && socket.is_none() {
            device_offsets(kbtf.ok_or_else(no_btf)?, &mut offsets)?;
        }
        if let Some(c) = conns {
            c.apply(&mut offsets);
        }
        if let Some(t) = sender {
            offsets.skb_sk = t.skb_sk;
            offsets.socket_sk = t.socket_sk;
            offsets.sk_protocol = t.sk_protocol;
            offsets.tcp_noted = matches!(t.writers, Writers::Storage { tcp_first: true }) as u32;
        }
        let mut ebpf = OBJECT.load(&offsets, cgroup)?;
        let progs = if classic { CLASSIC_PROGS } else { BTF_PROGS };
        // The device's own programs, for the directions charged there.
        let tx_rx: Vec<(&str, &str)> = [(sender.is_none(), progs[0]), (socket.is_none(), progs[1])]
            .into_iter()
            .filter_map(|(at_device, p)| at_device.then_some(p))
            .collect();
        let aya_btf = (!classic || socket.is_some() || sender.is_some())
            .then(|| aya::Btf::from_sys_fs().context("reading kernel BTF"))
            .transpose()?;
        for &(prog, tp) in &tx_rx {
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
        let classic_attached = if classic { tx_rx.len() } else { 0 };
        let mut attached = tx_rx.len();
        if let (Some(t), Some(kbtf)) = (sender, &aya_btf) {
            attached += t.attach(&mut ebpf, kbtf)?;
        }
        if let (Some(_), Some(kbtf)) = (conns, &aya_btf) {
            attach_btf(&mut ebpf, CONN_NEW.0, CONN_NEW.1, kbtf)?;
            attached += 1;
        }
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
                Charge::Socket
            } else {
                Charge::Device
            },
            writers: sender.map(|t| t.writers),
            udp_ledger,
            attached,
            classic: classic_attached,
            names: IfNames::new(),
            connections: conns.is_some(),
        })
    }

    /// The hooks attached, for the report's start line.
    pub fn describe(&self) -> String {
        let hooks = describe(self.writers, self.recv_at, self.udp_ledger);
        if self.connections {
            format!("{hooks}; new TCP connections at sock:inet_sock_set_state")
        } else {
            hooks
        }
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

    /// TCP connections established since the last call (`--connections`).
    pub fn new_connections(&mut self) -> Result<Vec<NetConn>> {
        if !self.connections {
            return Ok(Vec::new());
        }
        let mut map: aya::maps::HashMap<_, NetConn, u32> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut(NEW_CONNS)
                .with_context(|| format!("map {NEW_CONNS} missing"))?,
        )?;
        let got: Vec<NetConn> = map.keys().flatten().collect();
        for c in &got {
            // Gone already only if the kernel reused the slot: nothing to undo.
            let _ = map.remove(c);
        }
        Ok(got)
    }

    /// Attachments slow to detach (classic tracepoints).
    pub fn slow_attachments(&self) -> usize {
        self.classic
    }

    /// Probe runs the kernel skipped, since start.
    pub fn skipped(&self) -> u64 {
        crate::runtime::object::skipped_runs(&self.ebpf)
    }

    /// What was not counted as it should be, since start.
    pub fn lost(&self) -> Result<Lost> {
        Ok(Lost {
            table: slots::dropped(&self.ebpf, &MAPS)?,
            ledger: object::per_cpu_sum(&self.ebpf, MAPS.dropped, NET_LOST_LEDGER)?,
            writer: object::per_cpu_sum(&self.ebpf, MAPS.dropped, NET_LOST_WRITER)?,
            new: object::per_cpu_sum(&self.ebpf, MAPS.dropped, NET_LOST_NEW)?,
        })
    }
}

/// What nettop's probes did not count as they should, since start.
pub struct Lost {
    /// Packets of runs a full counter map had no room for.
    pub table: u64,
    /// Datagrams whose socket's ledger could not be made.
    pub ledger: u64,
    /// Sends whose writer could not be noted (their packets went to the task at the
    /// device).
    pub writer: u64,
    /// TCP connections established that the table of new ones had no room for (not
    /// marked new).
    pub new: u64,
}

/// What `--connections` reads: each socket's addresses and ports, each packet's headers.
#[derive(Clone, Copy)]
struct ConnOffsets {
    skb_head: u32,
    skb_data: u32,
    skb_network_header: u32,
    sk_protocol: u32,
    sk_family: u32,
    skc: [u32; 6],
}

impl ConnOffsets {
    fn find(kbtf: Option<&btf::Btf>) -> Result<Self> {
        let Some(b) = kbtf else {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): --connections reads each packet's addresses through BTF tracepoints",
            ));
        };
        let m = |s: &str, f: &str| b.member_offset(s, f);
        let common = m("sock", "__sk_common")?;
        let skc = |f: &str| Ok::<_, anyhow::Error>(common + m("sock_common", f)?);
        Ok(Self {
            skb_head: m("sk_buff", "head")?,
            skb_data: m("sk_buff", "data")?,
            skb_network_header: m("sk_buff", "network_header")?,
            sk_protocol: m("sock", "sk_protocol")?,
            sk_family: skc("skc_family")?,
            skc: [
                skc("skc_daddr")?,
                skc("skc_rcv_saddr")?,
                skc("skc_dport")?,
                skc("skc_num")?,
                skc("skc_v6_daddr")?,
                skc("skc_v6_rcv_saddr")?,
            ],
        })
    }

    fn apply(&self, o: &mut NetOffsets) {
        o.connections = 1;
        o.skb_head = self.skb_head;
        o.skb_data = self.skb_data;
        o.skb_network_header = self.skb_network_header;
        o.sk_protocol = self.sk_protocol;
        o.sk_family = self.sk_family;
        [
            o.skc_daddr,
            o.skc_rcv_saddr,
            o.skc_dport,
            o.skc_num,
            o.skc_v6_daddr,
            o.skc_v6_rcv_saddr,
        ] = self.skc;
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
    fn find(kbtf: Option<&btf::Btf>) -> Result<Self> {
        let Some(b) = kbtf else {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): charging receives to the reading socket needs it; use --recv-at device",
            ));
        };
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
            sk_rx_dst_ifindex: m("sock", "sk_rx_dst_ifindex")
                .or_else(|_| m("inet_sock", "rx_dst_ifindex"))?,
            sk_family: m("sock", "__sk_common")? + m("sock_common", "skc_family")?,
            tcp_header_len: m("tcp_sock", "tcp_header_len")?,
            task_nsproxy: m("task_struct", "nsproxy")?,
            nsproxy_net: m("nsproxy", "net_ns")?,
            net_inum: m("net", "ns")? + m("ns_common", "inum")?,
            netdev_ifindex: m("net_device", "ifindex")?,
            netdev_net: m("net_device", "nd_net")?,
            by_index: 1,
            ..Default::default()
        };
        device_offsets(b, &mut offsets)?;
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

/// What charging transmits to the socket's writer needs from this kernel.
struct SocketTransmit {
    writers: Writers,
    /// The fentry programs noting and forgetting writers (Table), with their functions:
    /// inet6_sendmsg where IPv6 is built in, inet_sendpage before 6.5.
    fentries: Vec<(&'static str, &'static str)>,
    skb_sk: u32,
    socket_sk: u32,
    sk_protocol: u32,
}

impl SocketTransmit {
    /// None: this kernel can note no writer, and transmits are charged at the device (said
    /// on stderr).
    fn find(kbtf: Option<&btf::Btf>) -> Result<Option<Self>> {
        let Some(b) = kbtf else {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): charging transmits to the writing socket needs it; use --xmit-at device",
            ));
        };
        // A writer must be noted as its send begins: sock:sock_send_length comes as it
        // ends, after the segments that ACKs release during a long first write have gone
        // out (to whichever task took the ACK). So socket storage where TCP sends also
        // have a tracepoint at their start, else the fentry table where fentry works,
        // else storage noted at the end of sends alone.
        let tcp_first = b.has_tracepoint("tcp_sendmsg_locked");
        let at_end = b.has_tracepoint("sock_send_length");
        let writers = match features::check(Facility::Fentry) {
            _ if at_end && tcp_first => Writers::Storage { tcp_first },
            Ok(_) => Writers::Table,
            Err(_) if at_end => Writers::Storage { tcp_first },
            Err(why) => {
                eprintln!(
                    "stapr nettop: this kernel has neither fentry ({why}) nor sock:sock_send_length (6.3); transmits are charged to the task running when the device sends them, as with --xmit-at device"
                );
                return Ok(None);
            }
        };
        let mut fentries = vec![TX_NOTE_FENTRY[0], TX_FORGET];
        fentries.extend(
            [TX_NOTE_FENTRY[1], TX_NOTE_PAGE]
                .into_iter()
                .filter(|&(_, func)| b.func_id(func).is_some()),
        );
        Ok(Some(Self {
            writers,
            fentries,
            skb_sk: b.member_offset("sk_buff", "sk")?,
            socket_sk: b.member_offset("socket", "sk")?,
            sk_protocol: b.member_offset("sock", "sk_protocol")?,
        }))
    }

    /// Attaches the transmit program and those noting writers; returns how many.
    fn attach(&self, ebpf: &mut Ebpf, kbtf: &aya::Btf) -> Result<usize> {
        match self.writers {
            Writers::Storage { tcp_first } => {
                attach_btf(ebpf, TX_SOCKET.0, TX_SOCKET.1, kbtf)?;
                attach_btf(ebpf, TX_NOTE.0, TX_NOTE.1, kbtf)?;
                if tcp_first {
                    for (prog, tp) in TX_NOTE_TCP {
                        attach_btf(ebpf, prog, tp, kbtf)?;
                    }
                }
                Ok(2 + tcp_first as usize * TX_NOTE_TCP.len())
            }
            Writers::Table => {
                attach_btf(ebpf, TX_SOCKET_HASH, TX_SOCKET.1, kbtf)?;
                for &(prog, func) in &self.fentries {
                    let p: &mut FEntry = program(ebpf, prog)?;
                    p.load(func, kbtf).map_err(|e| {
                        user_error(format!(
                            "this kernel refuses fentry on {func} ({}), which charging transmits to the writing socket needs here; use --xmit-at device",
                            program_error_reason(&e)
                        ))
                    })?;
                    p.attach()
                        .with_context(|| format!("attaching fentry on {func}"))?;
                }
                Ok(1 + self.fentries.len())
            }
        }
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
