//! The double-buffered counters nettop and disktop keep in the kernel: two per-CPU hash
//! maps plus a per-CPU run cache with one entry per slot, and an array naming the slot the
//! probes write into. Each interval user space switches the probes to the other slot and
//! drains the idle one, so nothing is counted twice or lost at the boundary.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Ebpf, Pod,
};

use super::object::{map_mut, per_cpu_sum};

/// Names of one report's maps.
pub struct SlotMaps {
    pub slot: &'static str,
    pub counts: [&'static str; 2],
    pub runs: &'static str,
    pub dropped: &'static str,
}

/// Switches the probes to the other slot and returns what the idle one holds, one element
/// per key and CPU (`open_run` turns a run-cache entry into one, if it holds a run), leaving
/// it empty for its next turn. `current` is the slot the probes write into.
pub fn drain<K, V, R>(
    ebpf: &mut Ebpf,
    maps: &SlotMaps,
    current: &mut u32,
    open_run: impl Fn(&R) -> Option<(K, V)>,
) -> Result<Vec<(K, V)>>
where
    K: Pod,
    V: Pod,
    R: Pod + Default,
{
    let drained = *current;
    *current ^= 1;
    let mut slot: Array<&mut MapData, u32> = Array::try_from(map_mut(ebpf, maps.slot)?)?;
    slot.set(0, *current, 0)
        .with_context(|| format!("switching {}", maps.slot))?;
    // A probe that read the old slot just before the switch finishes its update first,
    // even when it was preempted in between (a busy or emulated machine).
    if !super::bpf_sys::wait_for_running_programs() {
        std::thread::sleep(Duration::from_millis(1));
    }

    let name = maps.counts[drained as usize];
    let mut counts: PerCpuHashMap<&mut MapData, K, V> =
        PerCpuHashMap::try_from(map_mut(ebpf, name)?)?;
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

    let mut runs: PerCpuArray<&mut MapData, R> = PerCpuArray::try_from(map_mut(ebpf, maps.runs)?)?;
    let open = runs
        .get(&drained, 0)
        .with_context(|| format!("reading {}", maps.runs))?;
    entries.extend(open.iter().filter_map(&open_run));
    let empty = PerCpuValues::try_from(vec![R::default(); open.len()])?;
    runs.set(drained, empty, 0)
        .with_context(|| format!("resetting {}", maps.runs))?;
    Ok(entries)
}

/// Events not counted because a counter map was full, since start.
pub fn dropped(ebpf: &Ebpf, maps: &SlotMaps) -> Result<u64> {
    per_cpu_sum(ebpf, maps.dropped, 0)
}
