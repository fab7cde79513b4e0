//! Loads and attaches nettop's probes; drains the in-kernel counters. The only part of
//! nettop that touches the kernel.

use anyhow::{Context as _, Result};
use aya::{
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probes_common::{
    nettop::{NetCounters, NetKey, NetOffsets, NetRun},
    CgroupFilter, CGROUP_FILTER,
};

use crate::{
    report::{first_working, last_error, Facility, MethodSpec, Need},
    runtime::{
        btf, kernel_btf_present,
        object::program,
        slots::{self, SlotMaps},
        tracefs, user_error,
    },
};

pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettop"));

/// (transmit, receive) programs of each flavour.
const BTF_PROGS: [(&str, &str); 2] = [
    ("stapr_net_tx", "net_dev_xmit"),
    ("stapr_net_rx", "netif_receive_skb"),
];
const CLASSIC_PROGS: [(&str, &str); 2] = [
    ("stapr_net_tx_tp", "net_dev_xmit"),
    ("stapr_net_rx_tp", "netif_receive_skb"),
];
const OFFSETS: &str = "NET_OFFSETS";

#[cfg(test)]
pub const NAMES: crate::runtime::object::ObjectNames = crate::runtime::object::ObjectNames {
    object: "nettop",
    programs: &[
        BTF_PROGS[0].0,
        BTF_PROGS[1].0,
        CLASSIC_PROGS[0].0,
        CLASSIC_PROGS[1].0,
    ],
    maps: &[
        MAPS.slot,
        MAPS.counts[0],
        MAPS.counts[1],
        MAPS.runs,
        MAPS.dropped,
    ],
    globals: &[
        (OFFSETS, size_of::<NetOffsets>()),
        (CGROUP_FILTER, size_of::<CgroupFilter>()),
    ],
};

/// Which tracepoint flavour carries the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeKind {
    /// BTF tracepoints when the kernel allows them, else classic tracepoints.
    Auto,
    /// BTF-typed tracepoints (tp_btf): the cheapest; needs kernel BTF.
    TpBtf,
    /// Classic tracepoints (tracefs): work on any kernel since 4.7.
    Tracepoint,
}

pub struct Probes {
    ebpf: Ebpf,
    /// The map the probes write into now (0 or 1).
    slot: u32,
    pub kind: ProbeKind,
}

/// `--probe auto` tries these in order.
const AUTO: [ProbeKind; 2] = [ProbeKind::TpBtf, ProbeKind::Tracepoint];

/// The ways nettop attaches, best first.
pub fn methods() -> Vec<MethodSpec> {
    AUTO.iter().map(|k| k.spec()).collect()
}

impl ProbeKind {
    fn spec(self) -> MethodSpec {
        match self {
            ProbeKind::TpBtf | ProbeKind::Auto => MethodSpec {
                name: ProbeKind::TpBtf.describe(),
                needs: &[Need::Btf, Need::Works(Facility::TpBtf)],
                note: "net:net_dev_xmit, net:netif_receive_skb",
                partial: false,
            },
            ProbeKind::Tracepoint => MethodSpec {
                name: ProbeKind::Tracepoint.describe(),
                needs: &[Need::Works(Facility::Classic)],
                note: "BTF tracepoints unavailable",
                partial: false,
            },
        }
    }

    /// A one-word name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Auto => "auto",
            ProbeKind::TpBtf => "tp_btf",
            ProbeKind::Tracepoint => "tracepoint",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ProbeKind::Auto => "auto",
            ProbeKind::TpBtf => "BTF tracepoints (tp_btf)",
            ProbeKind::Tracepoint => "classic tracepoints",
        }
    }
}

const MAPS: SlotMaps = SlotMaps {
    slot: "NET_SLOT",
    counts: ["NET_COUNTS_0", "NET_COUNTS_1"],
    runs: "NET_RUN",
    dropped: "NET_DROPPED",
};

impl Probes {
    /// Attaches to net:net_dev_xmit and net:netif_receive_skb with the flavour asked for;
    /// `Auto` walks [`AUTO`] and says on stderr why a flavour was passed over.
    pub fn attach(kind: ProbeKind, cgroup: CgroupFilter) -> Result<Self> {
        let order: &[ProbeKind] = match kind {
            ProbeKind::Auto => &AUTO,
            _ => std::slice::from_ref(&kind),
        };
        first_working("nettop", order, ProbeKind::describe, |k| match k {
            ProbeKind::Tracepoint => Self::attach_classic(&cgroup),
            _ => Self::attach_btf(&cgroup),
        })
        .map_err(last_error)
    }

    fn attach_btf(cgroup: &CgroupFilter) -> Result<Self> {
        if !kernel_btf_present() {
            return Err(user_error(
                "this kernel has no BTF (/sys/kernel/btf/vmlinux): BTF tracepoints need it; use --probe tracepoint",
            ));
        }
        let kbtf = btf::Btf::from_sys_fs()?;
        let offsets = NetOffsets {
            skb_len: kbtf.member_offset("sk_buff", "len")?,
            skb_dev: kbtf.member_offset("sk_buff", "dev")?,
            netdev_name: kbtf.member_offset("net_device", "name")?,
            ..Default::default()
        };
        let mut ebpf = load(&offsets, cgroup)?;
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
        for (prog, tp) in BTF_PROGS {
            let p: &mut BtfTracePoint = program(&mut ebpf, prog)?;
            p.load(tp, &aya_btf)
                .with_context(|| format!("loading BTF tracepoint {tp}"))?;
            p.attach()
                .with_context(|| format!("attaching BTF tracepoint {tp}"))?;
        }
        Ok(Self {
            ebpf,
            slot: 0,
            kind: ProbeKind::TpBtf,
        })
    }

    fn attach_classic(cgroup: &CgroupFilter) -> Result<Self> {
        let offsets = NetOffsets {
            xmit_len: tracefs::field_offset("net", "net_dev_xmit", "len")?,
            xmit_name: tracefs::field_offset("net", "net_dev_xmit", "name")?,
            recv_len: tracefs::field_offset("net", "netif_receive_skb", "len")?,
            recv_name: tracefs::field_offset("net", "netif_receive_skb", "name")?,
            ..Default::default()
        };
        let mut ebpf = load(&offsets, cgroup)?;
        for (prog, tp) in CLASSIC_PROGS {
            let p: &mut TracePoint = program(&mut ebpf, prog)?;
            p.load()
                .with_context(|| format!("loading tracepoint net:{tp}"))?;
            p.attach("net", tp)
                .with_context(|| format!("attaching tracepoint net:{tp}"))?;
        }
        Ok(Self {
            ebpf,
            slot: 0,
            kind: ProbeKind::Tracepoint,
        })
    }

    /// What the probes counted since the last call (one element per key and CPU).
    pub fn drain(&mut self) -> Result<Vec<(NetKey, NetCounters)>> {
        slots::drain(&mut self.ebpf, &MAPS, &mut self.slot, |r: &NetRun| {
            (r.valid == 1).then_some((r.key, r.counts))
        })
    }

    /// Packets not counted because a counter map was full, since start.
    pub fn dropped(&self) -> Result<u64> {
        slots::dropped(&self.ebpf, &MAPS)
    }
}

fn load(offsets: &NetOffsets, cgroup: &CgroupFilter) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global(OFFSETS, offsets, true)
        .override_global(CGROUP_FILTER, cgroup, true)
        .load(OBJECT)
        .context("loading the nettop eBPF object")
}
