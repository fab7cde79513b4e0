//! Loads and attaches nettop's probes; drains the in-kernel counters. The only part of
//! nettop that touches the kernel.

use anyhow::{Context as _, Result};
use aya::{
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probes_common::nettop::{NetCounters, NetKey, NetOffsets, NetRun};

use crate::runtime::{
    btf, kernel_btf_present, program,
    slots::{self, SlotMaps},
    tracefs, user_error,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nettop"));

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

impl ProbeKind {
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
    /// `Auto` falls back to classic tracepoints and says why on stderr.
    pub fn attach(kind: ProbeKind) -> Result<Self> {
        match kind {
            ProbeKind::TpBtf => Self::attach_btf(),
            ProbeKind::Tracepoint => Self::attach_classic(),
            ProbeKind::Auto => Self::attach_btf().or_else(|err| {
                eprintln!(
                    "stapr: BTF tracepoints unavailable ({err:#}); using classic tracepoints"
                );
                Self::attach_classic()
            }),
        }
    }

    fn attach_btf() -> Result<Self> {
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
        let mut ebpf = load(&offsets)?;
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
        for (prog, tp) in [
            ("stapr_net_tx", "net_dev_xmit"),
            ("stapr_net_rx", "netif_receive_skb"),
        ] {
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

    fn attach_classic() -> Result<Self> {
        let offsets = NetOffsets {
            xmit_len: tracefs::field_offset("net", "net_dev_xmit", "len")?,
            xmit_name: tracefs::field_offset("net", "net_dev_xmit", "name")?,
            recv_len: tracefs::field_offset("net", "netif_receive_skb", "len")?,
            recv_name: tracefs::field_offset("net", "netif_receive_skb", "name")?,
            ..Default::default()
        };
        let mut ebpf = load(&offsets)?;
        for (prog, tp) in [
            ("stapr_net_tx_tp", "net_dev_xmit"),
            ("stapr_net_rx_tp", "netif_receive_skb"),
        ] {
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

fn load(offsets: &NetOffsets) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global("NET_OFFSETS", offsets, true)
        .load(OBJECT)
        .context("loading the nettop eBPF object")
}
