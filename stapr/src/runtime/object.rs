//! The embedded eBPF objects, each declared once by the report it serves ([`Object`]:
//! its bytes and every program, map and global user space asks it for by name), loaded
//! in one place, and looked up by those names. A unit test checks the names against the
//! objects, so a typo fails `cargo test` instead of a load as root.

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{Program, ProgramError},
    Ebpf, EbpfLoader, Pod,
};
use probes_common::{CgroupFilter, Helpers, CGROUP_FILTER, HELPERS};

use super::tracefs;

/// One embedded eBPF object and every name user space asks it for.
pub struct Object {
    /// The probes-ebpf binary it was built from.
    pub name: &'static str,
    pub bytes: &'static [u8],
    /// The read-only global set before load with the report's settings (every object but
    /// the feature probes' also takes [`CGROUP_FILTER`]), and its size in bytes.
    pub config: Option<(&'static str, usize)>,
    pub programs: &'static [&'static str],
    pub maps: &'static [&'static str],
}

impl Object {
    /// Loads the object with its settings and cgroup filter set (libbpf's `const
    /// volatile` rodata: the verifier sees them as constants).
    pub fn load<C: Pod>(&self, config: &C, cgroup: &CgroupFilter) -> Result<Ebpf> {
        let name = self.config.map_or("", |(n, _)| n);
        let helpers = Helpers {
            task_btf: super::features::check(super::features::Facility::TaskBtf).is_ok() as u32,
            _pad: 0,
        };
        let ebpf = EbpfLoader::new()
            .override_global(name, config, true)
            .override_global(CGROUP_FILTER, cgroup, true)
            .override_global(HELPERS, &helpers, true)
            .load(self.bytes)
            .with_context(|| format!("loading the {} eBPF object", self.name))?;
        self.complete(ebpf)
    }

    /// Loads an object that takes no settings.
    pub fn load_plain(&self) -> Result<Ebpf> {
        let ebpf = Ebpf::load(self.bytes)
            .with_context(|| format!("loading the {} eBPF object", self.name))?;
        self.complete(ebpf)
    }

    /// The loaded object, if it has every program and map declared (a stale build
    /// fails here, in one line, rather than at some later lookup).
    fn complete(&self, ebpf: Ebpf) -> Result<Ebpf> {
        let lacks = self
            .programs
            .iter()
            .map(|p| (p, ebpf.program(p).is_none()))
            .chain(self.maps.iter().map(|m| (m, ebpf.map(m).is_none())))
            .find(|(_, missing)| *missing);
        match lacks {
            Some((name, _)) => Err(anyhow!("{name} missing from the {} eBPF object", self.name)),
            None => Ok(ebpf),
        }
    }

    /// The globals user space sets, with their sizes.
    #[cfg(test)]
    fn globals(&self) -> Vec<(&'static str, usize)> {
        match self.config {
            Some(c) => vec![
                c,
                (CGROUP_FILTER, size_of::<CgroupFilter>()),
                (HELPERS, size_of::<Helpers>()),
            ],
            None => Vec::new(),
        }
    }
}

/// A program of a loaded object, as its type (`TracePoint`, `BtfTracePoint`...).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

pub fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

pub fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// The ring buffer `name`, taken out of the object so it can be watched on its own.
pub fn ring(ebpf: &mut Ebpf, name: &str) -> Result<RingBuf<MapData>> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    RingBuf::try_from(map).with_context(|| format!("opening the ring buffer {name}"))
}

/// Runs of the object's loaded programs that the kernel skipped, since load (see
/// [`super::bpf_sys::prog_recursion_misses`]).
pub fn skipped_runs(ebpf: &Ebpf) -> u64 {
    use std::os::fd::AsFd as _;
    ebpf.programs()
        .filter_map(|(_, p)| p.fd().ok())
        .filter_map(|fd| super::bpf_sys::prog_recursion_misses(fd.as_fd()).ok())
        .sum()
}

/// The sum over CPUs of element `index` of a per-CPU `u64` array (the probes' loss
/// counters).
pub fn per_cpu_sum(ebpf: &Ebpf, name: &str, index: u32) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map(ebpf, name)?)?;
    Ok(m.get(&index, 0)
        .with_context(|| format!("reading {name}"))?
        .iter()
        .sum())
}

/// Attaches the classic tracepoint program `prog` to `category:name`, loading it on first
/// use (one program may serve several tracepoints). An optional tracepoint this kernel lacks
/// is skipped: returns false.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
    required: bool,
) -> Result<bool> {
    tracefs::ensure_mounted()?;
    if !required && !tracefs::exists(category, name) {
        return Ok(false);
    }
    let p: &mut aya::programs::TracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load()
            .with_context(|| format!("loading {prog} for {category}:{name}"))?;
    }
    p.attach(category, name).map_err(|e| {
        refused_perf_event(&e).unwrap_or_else(|| {
            anyhow::Error::from(e).context(format!("attaching tracepoint {category}:{name}"))
        })
    })?;
    Ok(true)
}

/// Loads program `prog` as a BTF tracepoint (tp_btf) on `tp` and attaches it.
pub fn attach_btf(ebpf: &mut Ebpf, prog: &str, tp: &str, kbtf: &aya::Btf) -> Result<()> {
    let p: &mut aya::programs::BtfTracePoint = program(ebpf, prog)?;
    p.load(tp, kbtf)
        .with_context(|| format!("loading BTF tracepoint {tp}"))?;
    p.attach()
        .with_context(|| format!("attaching BTF tracepoint {tp}"))?;
    Ok(())
}

/// Attaches each (program, category, tracepoint, required) of `list`; returns how many
/// attached and the optional ones this kernel lacks (`category:name`).
pub fn attach_tracepoints<N: AsRef<str>>(
    ebpf: &mut Ebpf,
    list: &[(&str, &str, N, bool)],
) -> Result<(usize, Vec<String>)> {
    let (mut attached, mut skipped) = (0, Vec::new());
    for (prog, category, name, required) in list {
        let name = name.as_ref();
        if attach_tracepoint(ebpf, prog, category, name, *required)? {
            attached += 1;
        } else {
            skipped.push(format!("{category}:{name}"));
        }
    }
    Ok((attached, skipped))
}

/// A classic tracepoint is attached through a perf event. Kernels that set
/// `kernel.perf_event_paranoid` to 3 (Debian's default) refuse those to a user without
/// CAP_SYS_ADMIN, whatever other capabilities it has: say so in one line.
fn refused_perf_event(e: &ProgramError) -> Option<anyhow::Error> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut denied = false;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            denied |= matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM));
        }
        source = s.source();
    }
    // SAFETY: geteuid has no preconditions.
    if !denied || unsafe { libc::geteuid() } == 0 {
        return None;
    }
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    Some(super::user_error(format!(
        "this kernel refuses tracepoint perf events to this user (kernel.perf_event_paranoid is {paranoid}; at 3 they need CAP_SYS_ADMIN): run as root, or set kernel.perf_event_paranoid=2"
    )))
}

/// The names `object` declares that its bytes lack (a global also when its size
/// differs), as "kind name" strings; empty when every one is there.
#[cfg(test)]
pub fn missing_names(object: &Object) -> Vec<String> {
    let mut obj = match aya_obj::Object::parse(object.bytes) {
        Ok(o) => o,
        Err(e) => return vec![format!("object {}: {e}", object.name)],
    };
    let mut out = Vec::new();
    for p in object.programs {
        if !obj.programs.contains_key(*p) {
            out.push(format!("program {p}"));
        }
    }
    for m in object.maps {
        if !obj.maps.contains_key(*m) {
            out.push(format!("map {m}"));
        }
    }
    for (g, size) in object.globals() {
        // Patching with a value of the expected size fails when the symbol is missing or
        // of another size: what `override_global` would do at load time.
        let zeroes = vec![0u8; size];
        let globals = [(g, (zeroes.as_slice(), true))].into_iter().collect();
        if let Err(e) = obj.patch_map_data(globals) {
            out.push(format!("global {g} ({e})"));
        }
    }
    out
}
