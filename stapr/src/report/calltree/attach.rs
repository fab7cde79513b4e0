//! The mass attacher: one function per method that loads calltree's programs and attaches
//! them to every selected function, skipping (and counting, by reason) those the kernel
//! refuses, and giving up early when the method does not work here at all.
//!
//! kprobe.multi and fentry/fexit need program loads aya does not offer (an expected attach
//! type, one copy per function with its BTF id): the object is loaded by aya (maps, the
//! read-only config) and those programs are relocated against its maps with aya-obj and
//! loaded with bpf(2) directly (`runtime::bpf_sys`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{IsTerminal, Write as _},
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::Map,
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        KProbe, UProbe,
    },
    Ebpf,
};

use super::{
    names::{Addrs, Names},
    probes::{self, Method, Probes},
    select::{Func, ProgramFn},
};
use crate::runtime::{
    bpf_sys::{self, LoadSpec},
    btf::{self, RetKind},
    object::program,
    program_error_reason, user_error,
};

/// A method is given up when this many first attaches all fail.
const GIVE_UP_AFTER: usize = 16;

/// How long attaching one function at a time may take before `auto` takes the next
/// method instead: an operator waits a minute or two, not ten. Measured under emulation:
/// fentry/fexit on ext4's ~800 functions took about 45 s on x86-64 but over 10 minutes on
/// arm64, where kprobe/kretprobe took 60 s.
pub const ATTACH_BUDGET: Duration = Duration::from_secs(120);

/// The projection is made after this many functions, and only for selections at least
/// this large twice over (a few functions attach within the budget on any machine).
const BUDGET_SAMPLE: usize = 32;

/// Why attaching `total` functions at this pace is over `budget`, once `done` of them
/// took `took`; None while it fits (or too few are done to tell).
fn over_budget(done: usize, total: usize, took: Duration, budget: Duration) -> Option<String> {
    if done < BUDGET_SAMPLE || total < 2 * BUDGET_SAMPLE {
        return None;
    }
    let projected = took.mul_f64(total as f64 / done as f64);
    (projected > budget).then(|| {
        format!(
            "attaching {total} functions one at a time would take about {} s here (the first {done} took {:.1} s), over {} s",
            projected.as_secs(),
            took.as_secs_f64(),
            budget.as_secs()
        )
    })
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
    let mut obj =
        aya_obj::Object::parse(probes::OBJECT.bytes).context("parsing the calltree object")?;
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
/// (the method does not work here) and returns that error, or with `budget`, when the
/// pace of the first ones would take longer than that for all. Otherwise: the functions
/// attached and those skipped, by reason.
fn each(
    funcs: &[Func],
    budget: Option<Duration>,
    mut attach_one: impl FnMut(usize, &Func) -> std::result::Result<(), String>,
) -> Result<(usize, BTreeMap<String, usize>)> {
    let start = Instant::now();
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
        if ok == 0 && i + 1 >= GIVE_UP_AFTER.min(funcs.len()) {
            progress.done();
            return Err(anyhow!(first_err.unwrap_or_default()));
        }
        if let Some(why) = budget.and_then(|b| over_budget(i + 1, funcs.len(), start.elapsed(), b))
        {
            progress.done();
            return Err(anyhow!(why));
        }
        progress.show(i + 1);
    }
    progress.done();
    Ok((ok, skipped))
}

/// One kprobe.multi link for every entry and one for every return; the cookie is the
/// function's index shifted left, its low bit set on return.
pub fn multi(ebpf: Ebpf, funcs: &[Func], rets: &[RetKind]) -> Result<Probes> {
    let insns = relocated(&ebpf, probes::PROG_MULTI)?;
    let prog = bpf_sys::prog_load(
        &LoadSpec {
            prog_type: bpf_sys::PROG_TYPE_KPROBE,
            expected_attach_type: bpf_sys::ATTACH_TRACE_KPROBE_MULTI,
            name: probes::PROG_MULTI,
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
    let mut p = Probes::new(ebpf, Method::Multi, Names::by_index(funcs, rets));
    p.raw = vec![prog, on_entry, on_return];
    p.attached = funcs.len();
    p.links = 2;
    Ok(p)
}

/// One fentry and one fexit program per function, each loaded for its BTF id (in the
/// module's BTF for a module's function). With `budget`, given up when the first
/// functions' pace would take longer than that for all.
pub fn fentry(
    ebpf: Ebpf,
    funcs: &[Func],
    rets: &[RetKind],
    addrs: &Addrs,
    budget: Option<Duration>,
) -> Result<Probes> {
    let code = [
        (
            relocated(&ebpf, probes::PROG_FENTRY)?,
            bpf_sys::ATTACH_TRACE_FENTRY,
            probes::PROG_FENTRY,
        ),
        (
            relocated(&ebpf, probes::PROG_FEXIT)?,
            bpf_sys::ATTACH_TRACE_FEXIT,
            probes::PROG_FEXIT,
        ),
    ];
    let vmlinux = btf::Btf::from_sys_fs()?;
    let module_fds = bpf_sys::module_btf_fds()?;
    let mut module_btf: HashMap<String, Option<btf::Btf>> = HashMap::new();
    let mut raw: Vec<OwnedFd> = Vec::new();
    let (ok, skipped) = each(funcs, budget, |_, f| {
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
    let names = Names::by_address(funcs, rets, addrs);
    let mut p = Probes::new(ebpf, Method::Fentry, names);
    p.links = raw.len() / 2;
    p.raw = raw;
    p.attached = ok;
    p.skipped = skipped;
    Ok(p)
}

/// kprobe/kretprobe can attach here (the PMU and a program that loads).
pub fn kprobes_work() -> bool {
    use crate::runtime::features::{check, Facility};
    crate::runtime::features::kprobe_pmu() && check(Facility::Kprobes).is_ok()
}

/// One kprobe and one kretprobe per function.
pub fn kprobe(mut ebpf: Ebpf, funcs: &[Func], rets: &[RetKind], addrs: &Addrs) -> Result<Probes> {
    if !crate::runtime::features::kprobe_pmu() {
        return Err(anyhow!(crate::runtime::features::NO_KPROBE_PMU));
    }
    use crate::runtime::features::{check, Facility};
    let progs = if check(Facility::KprobeFuncIp).is_ok() {
        probes::PROGS_KPROBE
    } else {
        probes::PROGS_KPROBE_IP
    };
    for name in progs {
        let p: &mut KProbe = program(&mut ebpf, name)?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    let (ok, skipped) = each(funcs, None, |_, f| {
        let mut done = Vec::new();
        for name in progs {
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
    let names = Names::by_address(funcs, rets, addrs);
    let mut p = Probes::new(ebpf, Method::Kprobe, names);
    p.attached = ok;
    p.links = ok * 2;
    p.skipped = skipped;
    Ok(p)
}

/// Every function of the ELF file `path` in two uprobe.multi links, one for entries and
/// one for returns (functions that must not get a return probe are left out of that one),
/// in every process that runs it; the cookie is the function's index. Closing a link
/// detaches all its probes at once.
pub fn uprobe_multi(ebpf: Ebpf, path: &Path, funcs: &[ProgramFn]) -> Result<Probes> {
    let offsets: Vec<u64> = funcs
        .iter()
        .map(|f| f.offset)
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("a function lies outside the file's loadable segments"))?;
    let mut raw = Vec::new();
    for (name, ret) in probes::PROGS_UPROBE.iter().zip([false, true]) {
        let prog = bpf_sys::prog_load(
            &LoadSpec {
                prog_type: bpf_sys::PROG_TYPE_KPROBE,
                expected_attach_type: bpf_sys::ATTACH_TRACE_UPROBE_MULTI,
                name,
                attach_btf_id: 0,
                attach_btf_obj: None,
            },
            &relocated(&ebpf, name)?,
        )?;
        let (at, cookies): (Vec<u64>, Vec<u64>) = offsets
            .iter()
            .zip(funcs)
            .enumerate()
            .filter(|(_, (_, f))| !ret || f.entry_only.is_none())
            .map(|(i, (o, _))| (*o, i as u64))
            .unzip();
        if !at.is_empty() {
            let what = if ret { "returns" } else { "entries" };
            let link = bpf_sys::uprobe_multi(prog.as_fd(), path, &at, &cookies, ret)
                .with_context(|| format!("uprobe.multi link on {what}"))?;
            raw.push(link);
        }
        raw.push(prog);
    }
    let rets = vec![RetKind::Int32; funcs.len()];
    let shown: Vec<Func> = funcs
        .iter()
        .map(|f| Func {
            name: f.shown.clone(),
            module: None,
        })
        .collect();
    let mut names = Names::by_index(&shown, &rets);
    names.entry_only(funcs.iter().map(|f| f.entry_only.is_some()));
    let mut p = Probes::new(ebpf, Method::UprobeMulti, names);
    p.raw = raw;
    p.attached = funcs.len();
    p.links = 2;
    Ok(p)
}

/// One uprobe and one uretprobe per function of the ELF file `path` (the uprobe alone for
/// one that must not get a return probe), in every process that runs it; the cookie is
/// the function's index.
pub fn uprobe(mut ebpf: Ebpf, path: &Path, funcs: &[ProgramFn]) -> Result<Probes> {
    for name in probes::PROGS_UPROBE {
        let p: &mut UProbe = program(&mut ebpf, name)?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    let func = |name: &String| Func {
        name: name.clone(),
        module: None,
    };
    let as_funcs: Vec<Func> = funcs.iter().map(|f| func(&f.symbol)).collect();
    let mut links = 0;
    let (ok, skipped) = each(&as_funcs, None, |i, f| {
        let progs = match funcs[i].entry_only {
            Some(_) => &probes::PROGS_UPROBE[..1],
            None => &probes::PROGS_UPROBE[..],
        };
        for name in progs {
            let p: &mut UProbe = program(&mut ebpf, name).map_err(|e| e.to_string())?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::Symbol(&f.name),
                cookie: Some(i as u64),
            };
            p.attach(point, path, UProbeScope::AllProcesses)
                .map_err(|e| reason("uprobe refused", &program_error_reason(&e)))?;
            links += 1;
        }
        Ok(())
    })
    .map_err(|e| user_error(format!("cannot attach uprobes to {}: {e}", path.display())))?;
    // No BTF for a program's functions: an int-sized error code is what C returns.
    let rets = vec![RetKind::Int32; as_funcs.len()];
    let shown: Vec<Func> = funcs.iter().map(|f| func(&f.shown)).collect();
    let mut names = Names::by_index(&shown, &rets);
    names.entry_only(funcs.iter().map(|f| f.entry_only.is_some()));
    let mut p = Probes::new(ebpf, Method::Uprobe, names);
    p.attached = ok;
    p.links = links;
    p.skipped = skipped;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reasons_are_short() {
        assert_eq!(
            reason(
                "kprobe refused",
                "`perf_event_open` failed: Invalid argument (os error 22)"
            ),
            "kprobe refused: Invalid argument"
        );
        assert_eq!(
            reason("fentry refused", "loading stapr_ct_fent: Unknown error 524"),
            "fentry refused: not supported for this function"
        );
    }

    fn funcs(n: usize) -> Vec<Func> {
        (0..n)
            .map(|i| Func {
                name: format!("f{i}"),
                module: None,
            })
            .collect()
    }

    #[test]
    fn gives_up_when_the_first_attaches_all_fail() {
        let mut tried = 0;
        let err = each(&funcs(100), None, |_, _| {
            tried += 1;
            Err("kprobe refused: Operation not supported".into())
        })
        .unwrap_err();
        assert_eq!(tried, GIVE_UP_AFTER);
        assert_eq!(err.to_string(), "kprobe refused: Operation not supported");
        // Fewer functions than that: all are tried first.
        let mut tried = 0;
        assert!(each(&funcs(3), None, |_, _| {
            tried += 1;
            Err("no".into())
        })
        .is_err());
        assert_eq!(tried, 3);
    }

    #[test]
    fn counts_skipped_functions_once_one_works() {
        let (ok, skipped) = each(&funcs(40), None, |i, _| {
            if i % 4 == 0 {
                Ok(())
            } else {
                Err(format!(
                    "refused: {}",
                    if i % 2 == 0 { "busy" } else { "no BTF" }
                ))
            }
        })
        .unwrap();
        assert_eq!(ok, 10);
        assert_eq!(skipped.get("refused: no BTF"), Some(&20));
        assert_eq!(skipped.get("refused: busy"), Some(&10));
    }

    #[test]
    fn a_slow_pace_gives_the_method_up_after_the_sample() {
        let budget = Duration::from_secs(120);
        let mut tried = 0;
        let err = each(&funcs(800), Some(budget), |_, _| {
            tried += 1;
            std::thread::sleep(Duration::from_millis(5));
            Ok(())
        });
        // 5 ms each is 4 s for all: within the budget, every function attached.
        assert_eq!(err.unwrap().0, 800);
        assert_eq!(tried, 800);
        // Seen from a pace of 0.75 s per function (arm64 under emulation).
        let slow = over_budget(32, 800, Duration::from_secs(24), budget).unwrap();
        assert_eq!(
            slow,
            "attaching 800 functions one at a time would take about 600 s here (the first 32 took 24.0 s), over 120 s"
        );
        assert!(over_budget(31, 800, Duration::from_secs(24), budget).is_none());
        // Small selections are never given up for their pace.
        assert!(over_budget(32, 63, Duration::from_secs(600), budget).is_none());
        assert!(over_budget(32, 800, Duration::from_secs(4), budget).is_none());
    }
}
