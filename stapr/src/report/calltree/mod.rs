//! `stapr calltree`: every entry and return of the chosen functions, as SystemTap's
//! `thread_indent` tree.

pub mod probes;
pub mod select;
pub mod tree;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use probes_common::{
    c_bytes,
    calltree::{CallConfig, CallEvent, CALL_ENTRY},
    COMM_LEN,
};
use tokio::io::{unix::AsyncFd, Interest};

use crate::{
    report::ProcessFilter,
    runtime::{self, user_error},
};

pub use probes::Attach;

pub struct Options {
    pub module: Option<String>,
    pub funcs: Vec<String>,
    pub binary: Option<PathBuf>,
    pub attach: Attach,
    pub filter: ProcessFilter,
    pub max_depth: Option<usize>,
    pub duration: Option<Duration>,
    pub format: runtime::Format,
}

/// User space checks the ring this often: the probes wake it only when a lot is waiting.
const POLL: Duration = Duration::from_millis(100);
/// With more kernel attachments than this, detaching happens in a background process.
const BACKGROUND_DETACH: usize = 16;

fn config(filter: &ProcessFilter) -> Result<CallConfig> {
    let mut c = CallConfig {
        self_tgid: std::process::id(),
        filter_tgid: filter.pid.is_some() as u32,
        tgid: filter.pid.unwrap_or(0),
        filter_uid: filter.uid.is_some() as u32,
        uid: filter.uid.unwrap_or(0),
        ..Default::default()
    };
    if let Some(comm) = &filter.comm {
        if comm.is_empty() || comm.len() >= COMM_LEN {
            return Err(user_error(format!(
                "--comm '{comm}' cannot match: command names are 1 to {} bytes",
                COMM_LEN - 1
            )));
        }
        c.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        c.comm_len = comm.len() as u32;
    }
    Ok(c)
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// Modules built into the running kernel: modules.builtin, and /sys/module entries
/// without an initstate (loaded modules have one).
fn builtin_modules() -> Vec<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out =
        std::fs::read_to_string(format!("/lib/modules/{}/modules.builtin", release.trim()))
            .map(|t| select::parse_builtin(&t))
            .unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/sys/module") {
        for e in dir.flatten() {
            if !e.path().join("initstate").exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Refuses early, in one sentence, on a kernel that can probe no kernel function.
fn kernel_functions_possible() -> Result<()> {
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if kprobes {
        return Ok(());
    }
    match crate::doctor::fentry_works() {
        Ok(()) => Ok(()),
        Err(why) => Err(user_error(format!(
            "this kernel has neither kprobes (no kprobe PMU: built without CONFIG_KPROBES) nor fentry ({why}), so no kernel function can be traced here; `stapr doctor` shows what works, and `stapr calltree --binary PATH` traces a program's own functions with uprobes"
        ))),
    }
}

/// The kernel functions `--module` and `--func` name, and their addresses.
type Addrs = HashMap<(String, Option<String>), u64>;

fn kernel_selection(opts: &Options) -> Result<(select::Selection, Addrs)> {
    runtime::tracefs::ensure_mounted()?;
    let traceable =
        select::parse_traceable(&read("/sys/kernel/tracing/available_filter_functions")?);
    let syms = select::parse_kallsyms(&read("/proc/kallsyms")?);
    let mut sel = select::Selection::default();
    if let Some(m) = &opts.module {
        let loaded: Vec<String> = read("/proc/modules")?
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        let builtin = builtin_modules();
        let mods = select::Modules {
            loaded: &loaded,
            builtin: &builtin,
        };
        sel = select::module(m, &traceable, &syms, &mods).map_err(user_error)?;
    }
    if !opts.funcs.is_empty() {
        select::merge(&mut sel, select::functions(&opts.funcs, &traceable));
    }
    let mut addrs = HashMap::new();
    for s in syms {
        addrs.entry((s.name, s.module)).or_insert(s.addr);
    }
    Ok((sel, addrs))
}

fn summary(skipped: &BTreeMap<String, usize>) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let total: usize = skipped.values().sum();
    let parts: Vec<String> = skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(", {total} skipped: {}", parts.join(", "))
}

pub fn run(opts: Options) -> Result<()> {
    runtime::prepare()?;
    let config = config(&opts.filter)?;
    let (mut probes, what) = if let Some(bin) = &opts.binary {
        if opts.module.is_some() {
            return Err(user_error(
                "--binary traces a program's functions, --module a kernel module's: use one",
            ));
        }
        let (names, skipped) = probes::binary_functions(bin, &opts.funcs)?;
        if names.is_empty() {
            return Err(user_error(format!(
                "no function of {} matches {}",
                bin.display(),
                if opts.funcs.is_empty() {
                    "(it has no function symbols: stripped?)".to_owned()
                } else {
                    opts.funcs.join(", ")
                }
            )));
        }
        let mut p = probes::Probes::attach_binary(&config, bin, &names)?;
        for (k, v) in skipped {
            *p.skipped.entry(k).or_default() += v;
        }
        (p, format!("functions of {}", bin.display()))
    } else {
        if opts.module.is_none() && opts.funcs.is_empty() {
            return Err(user_error(
                "nothing to trace: give --module NAME, --func GLOB or --binary PATH",
            ));
        }
        kernel_functions_possible()?;
        let (sel, addrs) = kernel_selection(&opts)?;
        if let Some(note) = &sel.note {
            eprintln!("stapr calltree: {note}");
        }
        if sel.funcs.is_empty() {
            return Err(user_error(format!(
                "no traceable function matches{}{}",
                opts.module
                    .as_deref()
                    .map(|m| format!(" module {m}"))
                    .unwrap_or_default(),
                summary(&sel.skipped)
            )));
        }
        let mut p = probes::Probes::attach_kernel(&config, &sel.funcs, opts.attach, &addrs)?;
        for (k, v) in sel.skipped {
            *p.skipped.entry(k).or_default() += v;
        }
        let what = match &opts.module {
            Some(m) => format!("functions of {m}"),
            None => "kernel functions".to_owned(),
        };
        (p, what)
    };
    eprintln!(
        "stapr calltree: {} on {} {what}{}; attached in {:.2} s. Ctrl-C to end.",
        probes.method.describe(),
        probes.attached,
        summary(&probes.skipped),
        probes.took.as_secs_f64()
    );

    let ring = probes.ring()?;
    let mut printer = Printer {
        indenter: tree::Indenter::default(),
        format: opts.format,
        max_depth: opts.max_depth,
        events: 0,
        out: String::new(),
    };
    let names = &probes.names;
    runtime::block_on(async {
        // SAFETY: the ring buffer owns its map fd and keeps it open until it is dropped,
        // which happens only after the AsyncFd is gone.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("watching the calltree ring buffer")?;
        let stop = runtime::stopped(opts.duration);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                // Output stops at once: what is still in the ring is dropped.
                r = &mut stop => { r?; break; }
                woken = tokio::time::timeout(POLL, ring.readable_mut()) => {
                    if let Ok(guard) = woken {
                        guard.context("waiting on the ring buffer")?.clear_ready();
                    }
                }
            }
            printer.drain(ring.get_mut(), names)?;
        }
        Ok(())
    })?;
    let lost = probes.lost()?;
    eprintln!(
        "stapr calltree: {} events, {lost} lost (ring buffer full), {} returns whose entry was not seen",
        printer.events, printer.indenter.unmatched
    );
    if probes.links > BACKGROUND_DETACH {
        detach_in_background(probes);
    }
    Ok(())
}

struct Printer {
    indenter: tree::Indenter,
    format: runtime::Format,
    max_depth: Option<usize>,
    events: u64,
    out: String,
}

impl Printer {
    /// Prints everything waiting in the ring.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, names: &probes::Names) -> Result<()> {
        while let Some(item) = ring.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < size_of::<CallEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole CallEvent; read_unaligned copies it out.
            let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CallEvent) };
            drop(item);
            self.add(&ev, names);
            if self.out.len() > 64 * 1024 {
                runtime::emit(&self.out)?;
                self.out.clear();
            }
        }
        if !self.out.is_empty() {
            runtime::emit(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    fn add(&mut self, ev: &CallEvent, names: &probes::Names) {
        self.events += 1;
        let comm = String::from_utf8_lossy(c_bytes(&ev.comm));
        let e = tree::Event {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            tid: ev.tid,
            comm: &comm,
            entry: ev.kind == CALL_ENTRY,
            id: ev.id,
            func: names.name(ev.id),
        };
        let p = self.indenter.place(&e);
        if self.max_depth.is_some_and(|m| p.depth > m) {
            return;
        }
        match self.format {
            runtime::Format::Text => tree::text_line(&mut self.out, &e, &p),
            runtime::Format::Json => tree::json_line(&mut self.out, &e, &p),
        }
    }
}

/// Closing hundreds of probes one by one takes the kernel tens of seconds (an RCU grace
/// period each). A child process inherits the descriptors and closes them, detached from
/// the terminal; this process exits at once, and since the child still holds every probe,
/// its own exit closes nothing that costs. Nothing stays attached once the child is done.
fn detach_in_background(probes: probes::Probes) {
    // SAFETY: fork in a single-threaded process (the runtime is gone); the child only
    // closes descriptors and exits.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: plain syscalls on our own process and descriptors.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
            }
            drop(probes);
            // SAFETY: exit without running the parent's exit handlers a second time.
            unsafe { libc::_exit(0) }
        }
        -1 => drop(probes),
        _ => std::mem::forget(probes),
    }
}
