//! `stapr calltree`: every entry and return of the chosen functions, as SystemTap's
//! `thread_indent` tree.

pub mod probes;
pub mod select;
pub mod tree;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
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
    pub timings: bool,
    pub detach_in_foreground: bool,
    pub bench_format: Option<u64>,
}

/// User space checks the ring this often: the probes wake it only when a lot is waiting.
const POLL: Duration = Duration::from_millis(100);
/// Output is written in chunks of about this many bytes.
const OUT_CHUNK: usize = 64 * 1024;
/// Events printed between two looks at the stop signal.
const DRAIN_BATCH: usize = 16384;
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
    if runtime::kprobe_pmu_present() {
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
    if let Some(n) = opts.bench_format {
        return bench_format(n, opts.format);
    }
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
    let mut printer = Printer::new(opts.format, opts.max_depth);
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
            let more = printer.drain(ring.get_mut(), names)?;
            let wait = if more { Duration::ZERO } else { POLL };
            tokio::select! {
                biased;
                // Output stops at once: what is still in the ring is dropped.
                r = &mut stop => { r?; break; }
                woken = tokio::time::timeout(wait, ring.readable_mut()) => {
                    if let Ok(guard) = woken {
                        guard.context("waiting on the ring buffer")?.clear_ready();
                    }
                }
            }
        }
        Ok(())
    })?;
    let stopped = Instant::now();
    let lost = probes.lost()?;
    eprintln!(
        "stapr calltree: {} events, {lost} lost (ring buffer full), {} returns whose entry was not seen",
        printer.events, printer.indenter.unmatched
    );
    let (method, attached, took) = (probes.method, probes.attached, probes.took);
    let detach = if opts.detach_in_foreground || probes.links <= BACKGROUND_DETACH {
        let t = Instant::now();
        drop(probes);
        format!("detached in {:.2} s", t.elapsed().as_secs_f64())
    } else {
        detach_in_background(probes);
        "detaching in the background".to_owned()
    };
    if opts.timings {
        eprintln!(
            "stapr calltree: timings: {} on {attached} functions: attach {:.2} s, stop to exit {:.2} s, {detach}",
            method.describe(),
            took.as_secs_f64(),
            stopped.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The formatter alone: `n` synthetic events (8 threads, calls nested 1 to 6 deep)
/// through the same path as traced ones, to stdout; the rate goes to stderr.
fn bench_format(n: u64, format: runtime::Format) -> Result<()> {
    let names = probes::Names::Index((0..64).map(|i| format!("ext4_function_{i}")).collect());
    let mut events = Vec::with_capacity(n as usize);
    let mut depth = [0u64; 8];
    let mut comm = [0u8; COMM_LEN];
    comm[..6].copy_from_slice(b"worker");
    for i in 0..n {
        let t = (i % 8) as usize;
        // Deterministic walk: go down to 6, then back up, per thread.
        let entry = depth[t] == 0 || (depth[t] < 6 && (i / 8) % 12 < 6);
        let kind = if entry { CALL_ENTRY } else { 1 };
        if entry {
            depth[t] += 1;
        }
        events.push(CallEvent {
            ts_ns: 1_000_000_000 + i * 250,
            id: depth[t],
            pid: 1000,
            tid: 1000 + t as u32,
            kind,
            _pad: 0,
            comm,
        });
        if !entry {
            depth[t] -= 1;
        }
    }
    let mut printer = Printer::new(format, None);
    let t = Instant::now();
    for ev in &events {
        printer.add(ev, &names);
        printer.flush(OUT_CHUNK)?;
    }
    printer.flush(0)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "stapr calltree: formatted {n} events in {secs:.3} s: events_per_s={:.0}",
        n as f64 / secs
    );
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
    fn new(format: runtime::Format, max_depth: Option<usize>) -> Self {
        Printer {
            indenter: tree::Indenter::default(),
            format,
            max_depth,
            events: 0,
            out: String::new(),
        }
    }

    /// Prints what is waiting in the ring, up to `DRAIN_BATCH` events: under a flood the
    /// loop must still get to see a stop request.
    /// Returns whether more is waiting.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, names: &probes::Names) -> Result<bool> {
        let mut more = true;
        for _ in 0..DRAIN_BATCH {
            let Some(item) = ring.next() else {
                more = false;
                break;
            };
            let bytes: &[u8] = &item;
            if bytes.len() < size_of::<CallEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole CallEvent; read_unaligned copies it out.
            let ev = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const CallEvent) };
            drop(item);
            self.add(&ev, names);
            self.flush(OUT_CHUNK)?;
        }
        self.flush(0)?;
        Ok(more)
    }

    /// Writes the pending output once more than `above` bytes wait.
    fn flush(&mut self, above: usize) -> Result<()> {
        if self.out.len() > above {
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
/// period each), and whoever drops the last reference to a probe pays for it. So a child
/// process inherits the descriptors; this process closes its own copies first (cheap: the
/// child still holds every probe), lets the child go, and exits at once. The child,
/// detached from the terminal, then closes the last references. Nothing stays attached
/// once it is done.
fn detach_in_background(probes: probes::Probes) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        drop(probes);
        return;
    }
    let [read_end, write_end] = fds;
    // SAFETY: fork in a single-threaded process (the runtime is gone); the child only
    // waits, closes descriptors and exits.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: plain syscalls on our own process and descriptors.
            unsafe {
                libc::close(write_end);
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
                // Until the parent has let go of its copies (EOF).
                let mut byte = 0u8;
                while libc::read(read_end, (&raw mut byte).cast(), 1) < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                }
            }
            drop(probes);
            // SAFETY: exit without running the parent's exit handlers a second time.
            unsafe { libc::_exit(0) }
        }
        -1 => drop(probes),
        _ => {
            drop(probes);
            // SAFETY: our own descriptors.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
        }
    }
}
