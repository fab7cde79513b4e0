//! Loads calltree's probes with the chosen method and attaches them to every selected
//! function; the only part of calltree that touches the kernel.
//!
//! kprobe.multi and fentry/fexit need program loads aya does not offer (an expected attach
//! type, one copy per function with its BTF id): the object is loaded by aya (maps, the
//! read-only config) and those programs are relocated against its maps with aya-obj and
//! loaded with bpf(2) directly (`runtime::bpf_sys`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io::{IsTerminal, Write as _},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        KProbe, UProbe,
    },
    Ebpf, EbpfLoader,
};
use probes_common::calltree::CallConfig;

use super::select::Func;
use crate::runtime::{
    bpf_sys::{self, LoadSpec},
    btf, program, program_error_reason, user_error,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/calltree"));

/// `--attach`: how kernel functions are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// The best this kernel offers: multi, then fentry, then kprobe.
    Auto,
    /// One kprobe.multi link for all entries and one for all returns (Linux 5.18+).
    Multi,
    /// One fentry and one fexit program per function (BPF trampolines).
    Fentry,
    /// One kprobe and one kretprobe per function.
    Kprobe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Multi,
    Fentry,
    Kprobe,
    Uprobe,
}

impl Method {
    pub fn describe(self) -> &'static str {
        match self {
            Method::Multi => "kprobe.multi",
            Method::Fentry => "fentry/fexit",
            Method::Kprobe => "kprobe/kretprobe",
            Method::Uprobe => "uprobe/uretprobe",
        }
    }
}

/// How an event's id names its function.
#[derive(Debug)]
pub enum Names {
    /// The id is an index (attach cookie).
    Index(Vec<String>),
    /// The id is an address inside the function (at its start, or past an endbr64
    /// where the kernel placed the probe there); sorted by address.
    Addr(Vec<(u64, String)>),
}

impl Names {
    pub fn name(&self, id: u64) -> &str {
        match self {
            Names::Index(v) => v.get(id as usize).map_or("?", String::as_str),
            Names::Addr(v) => {
                let i = v.partition_point(|(a, _)| *a <= id);
                match i.checked_sub(1).map(|i| &v[i]) {
                    Some((a, name)) if id - a < 64 => name,
                    _ => "?",
                }
            }
        }
    }
}

pub struct Probes {
    /// Holds the maps and the aya-attached programs (kprobes, uprobes).
    ebpf: Ebpf,
    /// Programs and links loaded with bpf(2) directly (kprobe.multi, fentry).
    raw: Vec<OwnedFd>,
    pub method: Method,
    /// Functions attached (entry and return).
    pub attached: usize,
    /// Kernel attachments held: links or perf events.
    pub links: usize,
    pub skipped: BTreeMap<String, usize>,
    pub names: Names,
    pub took: Duration,
}

fn load(config: &CallConfig) -> Result<Ebpf> {
    EbpfLoader::new()
        .override_global("CALL_CONFIG", config, true)
        .load(OBJECT)
        .context("loading the calltree eBPF object")
}

fn map_fd(map: &Map) -> Option<RawFd> {
    match map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::RingBuf(d) | Map::HashMap(d) => {
            Some(d.fd().as_fd().as_raw_fd())
        }
        _ => None,
    }
}

/// The instructions of `prog`, relocated against the maps `ebpf` created.
fn relocated(ebpf: &Ebpf, prog: &str) -> Result<Vec<u64>> {
    let mut obj = aya_obj::Object::parse(OBJECT).context("parsing the calltree object")?;
    let defs = obj.maps.clone();
    let fds: Vec<(String, RawFd)> = ebpf
        .maps()
        .filter_map(|(name, m)| Some((name.to_owned(), map_fd(m)?)))
        .collect();
    let text: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        fds.iter()
            .filter_map(|(n, fd)| Some((n.as_str(), *fd, defs.get(n)?))),
        &text,
    )
    .map_err(|e| anyhow!("relocating {prog}: {e}"))?;
    obj.relocate_calls(&text)
        .map_err(|e| anyhow!("relocating {prog}: {e}"))?;
    let p = obj
        .programs
        .get(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the calltree object"))?;
    let f = obj
        .functions
        .get(&p.function_key())
        .ok_or_else(|| anyhow!("code of {prog} missing from the calltree object"))?;
    Ok(f.instructions
        .iter()
        // SAFETY: bpf_insn is the kernel's 8-byte instruction; the kernel reads it as such.
        .map(|i| unsafe { std::mem::transmute::<aya_obj::generated::bpf_insn, u64>(*i) })
        .collect())
}

/// Attach progress on stderr, when it is a terminal.
struct Progress {
    tty: bool,
    total: usize,
    last: Instant,
}

impl Progress {
    fn new(total: usize) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal() && total > 20,
            total,
            last: Instant::now(),
        }
    }

    fn show(&mut self, done: usize) {
        if self.tty && self.last.elapsed() > Duration::from_millis(100) {
            self.last = Instant::now();
            let width = 30;
            let filled = done * width / self.total.max(1);
            eprint!(
                "\rstapr calltree: attaching [{}{}] {done}/{}",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

/// A short reason from an attach error, for counting skipped functions.
fn reason(what: &str, err: &str) -> String {
    let err = err.rsplit(": ").next().unwrap_or(err);
    let err = err.split(" (os error").next().unwrap_or(err);
    // The kernel-internal ENOTSUPP, which libc has no text for.
    let err = if err == "Unknown error 524" {
        "not supported for this function"
    } else {
        err
    };
    format!("{what}: {err}")
}

/// Tries `attach_one` on every function; gives up early when the first ones all fail
/// (the method does not work here) and returns that error.
fn each(
    funcs: &[Func],
    mut attach_one: impl FnMut(usize, &Func) -> std::result::Result<(), String>,
) -> Result<(usize, BTreeMap<String, usize>)> {
    let mut progress = Progress::new(funcs.len());
    let mut ok = 0;
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_err = None;
    for (i, f) in funcs.iter().enumerate() {
        match attach_one(i, f) {
            Ok(()) => ok += 1,
            Err(r) => {
                first_err.get_or_insert_with(|| r.clone());
                *skipped.entry(r).or_default() += 1;
            }
        }
        if ok == 0 && i + 1 >= 16.min(funcs.len()) {
            progress.done();
            return Err(anyhow!(first_err.unwrap_or_default()));
        }
        progress.show(i + 1);
    }
    progress.done();
    Ok((ok, skipped))
}

fn addresses(funcs: &[Func], addrs: &HashMap<(String, Option<String>), u64>) -> Names {
    let mut v: Vec<(u64, String)> = funcs
        .iter()
        .filter_map(|f| {
            Some((
                *addrs.get(&(f.name.clone(), f.module.clone()))?,
                f.name.clone(),
            ))
        })
        .collect();
    v.sort();
    Names::Addr(v)
}

impl Probes {
    /// Attaches to kernel functions with `attach` (`Auto`: the first method that works).
    pub fn attach_kernel(
        config: &CallConfig,
        funcs: &[Func],
        attach: Attach,
        addrs: &HashMap<(String, Option<String>), u64>,
    ) -> Result<Self> {
        let order: &[Method] = match attach {
            Attach::Auto => &[Method::Multi, Method::Fentry, Method::Kprobe],
            Attach::Multi => &[Method::Multi],
            Attach::Fentry => &[Method::Fentry],
            Attach::Kprobe => &[Method::Kprobe],
        };
        let mut failures = Vec::new();
        for &m in order {
            let t = Instant::now();
            let r = match m {
                Method::Multi => Self::multi(config, funcs),
                Method::Fentry => Self::fentry(config, funcs, addrs),
                _ => Self::kprobe(config, funcs, addrs),
            };
            match r {
                Ok(mut p) => {
                    p.took = t.elapsed();
                    for (m, e) in &failures {
                        eprintln!("stapr calltree: {m} unavailable ({e}); trying the next method");
                    }
                    return Ok(p);
                }
                Err(e) => failures.push((m.describe(), format!("{e:#}"))),
            }
        }
        let why: Vec<String> = failures.iter().map(|(m, e)| format!("{m}: {e}")).collect();
        Err(user_error(format!(
            "cannot attach to kernel functions here ({}); see `stapr doctor`",
            why.join("; ")
        )))
    }

    fn new(ebpf: Ebpf, method: Method, names: Names) -> Self {
        Probes {
            ebpf,
            raw: Vec::new(),
            method,
            attached: 0,
            links: 0,
            skipped: BTreeMap::new(),
            names,
            took: Duration::ZERO,
        }
    }

    fn multi(config: &CallConfig, funcs: &[Func]) -> Result<Self> {
        let ebpf = load(config)?;
        let insns = relocated(&ebpf, "stapr_ct_multi")?;
        let prog = bpf_sys::prog_load(
            &LoadSpec {
                prog_type: bpf_sys::PROG_TYPE_KPROBE,
                expected_attach_type: bpf_sys::ATTACH_TRACE_KPROBE_MULTI,
                name: "stapr_ct_multi",
                attach_btf_id: 0,
                attach_btf_obj: None,
            },
            &insns,
        )?;
        let syms: Vec<String> = funcs.iter().map(|f| f.name.clone()).collect();
        let entry: Vec<u64> = (0..syms.len() as u64).map(|i| i << 1).collect();
        let ret: Vec<u64> = entry.iter().map(|c| c | 1).collect();
        let on_entry = bpf_sys::kprobe_multi(prog.as_fd(), &syms, &entry, false)
            .context("kprobe.multi link on entries")?;
        let on_return = bpf_sys::kprobe_multi(prog.as_fd(), &syms, &ret, true)
            .context("kprobe.multi link on returns")?;
        let mut p = Self::new(ebpf, Method::Multi, Names::Index(syms));
        p.raw = vec![prog, on_entry, on_return];
        p.attached = funcs.len();
        p.links = 2;
        Ok(p)
    }

    fn fentry(
        config: &CallConfig,
        funcs: &[Func],
        addrs: &HashMap<(String, Option<String>), u64>,
    ) -> Result<Self> {
        let ebpf = load(config)?;
        let code = [
            (
                relocated(&ebpf, "stapr_ct_fent")?,
                bpf_sys::ATTACH_TRACE_FENTRY,
                "stapr_ct_fent",
            ),
            (
                relocated(&ebpf, "stapr_ct_fexit")?,
                bpf_sys::ATTACH_TRACE_FEXIT,
                "stapr_ct_fexit",
            ),
        ];
        let vmlinux = btf::Btf::from_sys_fs()?;
        let module_fds = bpf_sys::module_btf_fds()?;
        let mut module_btf: HashMap<String, Option<btf::Btf>> = HashMap::new();
        let mut raw = Vec::new();
        let (ok, skipped) = each(funcs, |_, f| {
            let (id, obj) = match &f.module {
                None => (vmlinux.func_id(&f.name), None),
                Some(m) => {
                    let b = module_btf.entry(m.clone()).or_insert_with(|| {
                        let data = std::fs::read(format!("/sys/kernel/btf/{m}")).ok()?;
                        btf::Btf::parse_split(&data, &vmlinux).ok()
                    });
                    let id = b.as_ref().and_then(|b| b.func_id(&f.name));
                    (id, module_fds.get(m).map(|fd| fd.as_fd()))
                }
            };
            let id = id.ok_or_else(|| "fentry: no BTF for the function".to_owned())?;
            if f.module.is_some() && obj.is_none() {
                return Err("fentry: module has no BTF object".to_owned());
            }
            let mut pair = Vec::with_capacity(4);
            for (insns, kind, name) in &code {
                let spec = LoadSpec {
                    prog_type: bpf_sys::PROG_TYPE_TRACING,
                    expected_attach_type: *kind,
                    name,
                    attach_btf_id: id,
                    attach_btf_obj: obj,
                };
                let prog = bpf_sys::prog_load(&spec, insns)
                    .map_err(|e| reason("fentry refused", &format!("{e:#}")))?;
                let link = bpf_sys::tracing_attach(prog.as_fd())
                    .map_err(|e| reason("fentry attach failed", &e.to_string()))?;
                pair.push(prog);
                pair.push(link);
            }
            raw.extend(pair);
            Ok(())
        })?;
        let mut p = Self::new(ebpf, Method::Fentry, addresses(funcs, addrs));
        p.links = raw.len() / 2;
        p.raw = raw;
        p.attached = ok;
        p.skipped = skipped;
        Ok(p)
    }

    fn kprobe(
        config: &CallConfig,
        funcs: &[Func],
        addrs: &HashMap<(String, Option<String>), u64>,
    ) -> Result<Self> {
        if !crate::runtime::kprobe_pmu_present() {
            return Err(anyhow!(crate::runtime::NO_KPROBE_PMU));
        }
        let mut ebpf = load(config)?;
        for name in ["stapr_ct_kent", "stapr_ct_kret"] {
            let p: &mut KProbe = program(&mut ebpf, name)?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let (ok, skipped) = each(funcs, |_, f| {
            let mut done = Vec::new();
            for name in ["stapr_ct_kent", "stapr_ct_kret"] {
                let p: &mut KProbe = program(&mut ebpf, name).map_err(|e| e.to_string())?;
                match p.attach(&f.name, 0) {
                    Ok(id) => done.push((name, id)),
                    Err(e) => {
                        // Half a pair would print unmatched entries or returns.
                        for (n, id) in done {
                            if let Ok(p) = program::<KProbe>(&mut ebpf, n) {
                                let _ = p.detach(id);
                            }
                        }
                        return Err(reason("kprobe refused", &program_error_reason(&e)));
                    }
                }
            }
            Ok(())
        })?;
        let mut p = Self::new(ebpf, Method::Kprobe, addresses(funcs, addrs));
        p.attached = ok;
        p.links = ok * 2;
        p.skipped = skipped;
        Ok(p)
    }

    /// Attaches uprobes and uretprobes to `funcs` of the ELF file `path`.
    pub fn attach_binary(config: &CallConfig, path: &Path, funcs: &[String]) -> Result<Self> {
        let t = Instant::now();
        let mut ebpf = load(config)?;
        for name in ["stapr_ct_uent", "stapr_ct_uret"] {
            let p: &mut UProbe = program(&mut ebpf, name)?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let as_funcs: Vec<Func> = funcs
            .iter()
            .map(|n| Func {
                name: n.clone(),
                module: None,
            })
            .collect();
        let (ok, skipped) = each(&as_funcs, |i, f| {
            for name in ["stapr_ct_uent", "stapr_ct_uret"] {
                let p: &mut UProbe = program(&mut ebpf, name).map_err(|e| e.to_string())?;
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::Symbol(&f.name),
                    cookie: Some(i as u64),
                };
                p.attach(point, path, UProbeScope::AllProcesses)
                    .map_err(|e| reason("uprobe refused", &program_error_reason(&e)))?;
            }
            Ok(())
        })
        .map_err(|e| user_error(format!("cannot attach uprobes to {}: {e}", path.display())))?;
        let mut p = Self::new(ebpf, Method::Uprobe, Names::Index(funcs.to_vec()));
        p.attached = ok;
        p.links = ok * 2;
        p.skipped = skipped;
        p.took = t.elapsed();
        Ok(p)
    }

    /// The ring buffer the events arrive in.
    pub fn ring(&mut self) -> Result<RingBuf<MapData>> {
        RingBuf::try_from(
            self.ebpf
                .take_map("CALL_EVENTS")
                .ok_or_else(|| anyhow!("map CALL_EVENTS missing from the calltree object"))?,
        )
        .context("opening the calltree ring buffer")
    }

    /// Events lost because the ring buffer was full, since start.
    pub fn lost(&self) -> Result<u64> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("CALL_LOST")
                .ok_or_else(|| anyhow!("map CALL_LOST missing from the calltree object"))?,
        )?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

/// The functions of the ELF file `path` whose names match `globs` (all when empty):
/// defined, sized text symbols of .symtab and .dynsym. A name defined at several
/// addresses is skipped (uprobes attach by name).
pub fn binary_functions(
    path: &Path,
    globs: &[String],
) -> Result<(Vec<String>, BTreeMap<String, usize>)> {
    use object::{Object as _, ObjectSymbol as _};
    let data = std::fs::read(path)
        .map_err(|e| user_error(format!("cannot read {}: {e}", path.display())))?;
    let file = object::File::parse(&*data).map_err(|e| {
        user_error(format!(
            "{} is not an ELF file stapr can read: {e}",
            path.display()
        ))
    })?;
    let mut by_name: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for s in file.symbols().chain(file.dynamic_symbols()) {
        if s.kind() != object::SymbolKind::Text || !s.is_definition() || s.size() == 0 {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if globs.is_empty() || globs.iter().any(|g| super::select::glob(g, name)) {
            by_name
                .entry(name.to_owned())
                .or_default()
                .insert(s.address());
        }
    }
    let mut skipped = BTreeMap::new();
    let mut names = Vec::new();
    for (name, addrs) in by_name {
        if addrs.len() > 1 {
            *skipped
                .entry(super::select::AMBIGUOUS.to_owned())
                .or_default() += 1;
        } else {
            names.push(name);
        }
    }
    Ok((names, skipped))
}
