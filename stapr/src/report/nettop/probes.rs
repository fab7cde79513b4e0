//! Loads and attaches nettop's probes; drains the in-kernel counters. The only part of
//! nettop that touches the kernel.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use probes_common::nettop::{NetCounters, NetKey, NetOffsets, NetRun};

use crate::runtime::{btf, kernel_btf_present, tracefs, user_error};

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
    pub fn describe(self) -> &'static str {
        match self {
            ProbeKind::Auto => "auto",
            ProbeKind::TpBtf => "BTF tracepoints (tp_btf)",
            ProbeKind::Tracepoint => "classic tracepoints",
        }
    }
}

const COUNTS: [&str; 2] = ["NET_COUNTS_0", "NET_COUNTS_1"];

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

    /// Switches the probes to the other map and returns what the previous one counted,
    /// one element per key and CPU, leaving that map empty for its next turn.
    pub fn drain(&mut self) -> Result<Vec<(NetKey, NetCounters)>> {
        let drained = self.slot;
        self.slot ^= 1;
        let mut slot: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut("NET_SLOT")
                .ok_or_else(|| anyhow!("map NET_SLOT missing from the nettop object"))?,
        )?;
        slot.set(0, self.slot, 0)
            .context("switching nettop's counter map")?;
        // Let a probe that read the old slot just before the switch finish its update.
        std::thread::sleep(Duration::from_millis(1));

        let name = COUNTS[drained as usize];
        let mut counts: PerCpuHashMap<&mut MapData, NetKey, NetCounters> = PerCpuHashMap::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| anyhow!("map {name} missing from the nettop object"))?,
        )?;
        let mut entries = Vec::new();
        let mut keys = Vec::new();
        for item in counts.iter() {
            let (key, per_cpu) = item.with_context(|| format!("reading {name}"))?;
            keys.push(key);
            entries.extend(per_cpu.iter().map(|v| (key, *v)));
        }
        for key in &keys {
            // A key may vanish only if we removed it already; nothing else deletes.
            let _ = counts.remove(key);
        }

        // Runs still open in each CPU's cache for the drained slot.
        let mut runs: PerCpuArray<&mut MapData, NetRun> = PerCpuArray::try_from(
            self.ebpf
                .map_mut("NET_RUN")
                .ok_or_else(|| anyhow!("map NET_RUN missing from the nettop object"))?,
        )?;
        let open = runs.get(&drained, 0).context("reading NET_RUN")?;
        entries.extend(
            open.iter()
                .filter(|r| r.valid == 1)
                .map(|r| (r.key, r.counts)),
        );
        let cpus = open.len();
        let empty = PerCpuValues::try_from(vec![NetRun::default(); cpus])?;
        runs.set(drained, empty, 0).context("resetting NET_RUN")?;
        Ok(entries)
    }

    /// Packets not counted because a counter map was full, since start.
    pub fn dropped(&self) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("NET_DROPPED")
                .ok_or_else(|| anyhow!("map NET_DROPPED missing from the nettop object"))?,
        )?;
        Ok(map.get(&0, 0)?.iter().sum())
    }
}

fn load(offsets: &NetOffsets) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global("NET_OFFSETS", offsets, true)
        .load(OBJECT)
        .context("loading the nettop eBPF object")
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}
