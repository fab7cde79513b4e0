//! `stapr calltree`: every entry and return of the chosen functions, as SystemTap's
//! `thread_indent` tree.
//!
//! `sources` reads what can be traced and `select` (pure) picks the functions; `probes`
//! attaches with the first method that works (`attach` does the work per method);
//! `printer` and `tree` (pure) turn events into lines.

pub mod args;
mod attach;
mod errno;
mod names;
mod printer;
pub mod probes;
mod select;
mod sources;
mod tree;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use probes_common::{calltree::CallConfig, COMM_LEN};

use crate::{
    report::{
        containers::{self, Containers},
        ProcessFilter,
    },
    runtime::{self, out, ring, user_error},
};

pub use printer::TreeFilter;
pub use probes::Method;

pub static CALLTREE: crate::report::Report = crate::report::Report {
    name: "calltree",
    ways: crate::report::specs::<Method>,
    object: &probes::OBJECT,
    families: &[],
    export: None,
};

pub struct Options {
    pub module: Option<String>,
    pub funcs: Vec<String>,
    pub binary: Option<PathBuf>,
    /// How kernel functions are probed (None: the first method that works).
    pub attach: Option<Method>,
    pub filter: ProcessFilter,
    pub max_depth: Option<usize>,
    pub trees: TreeFilter,
    pub durations: bool,
    pub duration: Option<Duration>,
    pub format: runtime::Format,
    pub timings: bool,
    pub detach_in_foreground: bool,
    pub containers: containers::Choice,
}

/// User space checks the ring this often: the probes wake it only when a lot is waiting.
const POLL: Duration = Duration::from_millis(100);

fn config(filter: &ProcessFilter) -> CallConfig {
    let mut c = CallConfig {
        self_tgid: std::process::id(),
        filter_tgid: filter.pid.is_some() as u32,
        tgid: filter.pid.unwrap_or(0),
        filter_uid: filter.uid.is_some() as u32,
        uid: filter.uid.unwrap_or(0),
        ..Default::default()
    };
    // The command line allows 1 to COMM_LEN - 1 bytes.
    if let Some(comm) = filter.comm.as_deref().filter(|c| c.len() < COMM_LEN) {
        c.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        c.comm_mask[..comm.len()].fill(0xff);
        c.comm_len = comm.len() as u32;
    }
    c
}

/// ", 12 skipped: 10 not traceable (...), 2 ambiguous (...)", or nothing.
fn summary(skipped: &BTreeMap<String, usize>) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let total: usize = skipped.values().sum();
    let parts: Vec<String> = skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!(", {total} skipped: {}", parts.join(", "))
}

fn functions(n: usize) -> &'static str {
    if n == 1 {
        "function"
    } else {
        "functions"
    }
}

/// "; trees: 3 printed, 120 neither slow nor failed, ..." when a filter held trees back.
fn trees(p: &printer::Printer, filter: &TreeFilter) -> String {
    if *filter == TreeFilter::default() {
        return String::new();
    }
    let t = p.trees;
    let what = match (filter.min_ns.is_some(), filter.errors) {
        (true, true) => "neither slow nor failed",
        (true, false) => "not slow",
        _ => "without a failure",
    };
    format!(
        "; trees: {} printed ({} with lines cut), {} {what}, {} still open at exit",
        t.printed,
        t.cut,
        t.dropped,
        p.open_trees()
    )
}

/// The functions of `--binary`, attached; and what the start line calls them.
fn attach_binary(opts: &Options, config: &probes::Globals) -> Result<(probes::Probes, String)> {
    let bin = opts.binary.as_deref().unwrap_or(std::path::Path::new(""));
    if opts.module.is_some() {
        return Err(user_error(
            "--binary traces a program's functions, --module a kernel module's: use one",
        ));
    }
    let (names, skipped) = sources::binary(bin, &opts.funcs)?;
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
    let mut p = probes::Probes::attach_binary(config, bin, &names)?;
    for (k, v) in skipped {
        *p.skipped.entry(k).or_default() += v;
    }
    let links = match p.method {
        probes::Method::UprobeMulti => " in two uprobe.multi links",
        _ => "",
    };
    let what = format!(
        "{} of {}{links}{}",
        functions(p.attached),
        bin.display(),
        entry_only(&names)
    );
    Ok((p, what))
}

/// How many named in a list on the start line before "and N more".
const NAMED_MAX: usize = 6;

/// " (at entry only, no return probe: _start, exit, _setjmp)", or nothing.
fn entry_only(funcs: &[select::ProgramFn]) -> String {
    // The entry point first: the one every program has.
    let mut only: Vec<(bool, &str)> = funcs
        .iter()
        .filter_map(|f| Some((f.entry_only? != select::ENTRY_POINT, f.shown.as_str())))
        .collect();
    only.sort_by_key(|(later, _)| *later);
    let only: Vec<&str> = only.into_iter().map(|(_, name)| name).collect();
    if only.is_empty() {
        return String::new();
    }
    let mut named = only[..only.len().min(NAMED_MAX)].join(", ");
    if only.len() > NAMED_MAX {
        named += &format!(" and {} more", only.len() - NAMED_MAX);
    }
    format!(" ({} at entry only, no return probe: {named})", only.len())
}

/// The kernel functions of `--module`/`--func`, attached; and what the start line calls
/// them.
fn attach_kernel(opts: &Options, config: &probes::Globals) -> Result<(probes::Probes, String)> {
    if opts.module.is_none() && opts.funcs.is_empty() {
        return Err(user_error(
            "nothing to trace: give --module NAME, --func GLOB or --binary PATH",
        ));
    }
    probes::kernel_functions_possible()?;
    let (sel, addrs) = sources::kernel(opts.module.as_deref(), &opts.funcs)?;
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
    let rets = sources::ret_kinds(&sel.funcs);
    let mut p = probes::Probes::attach_kernel(config, &sel.funcs, &rets, opts.attach, &addrs)?;
    for (k, v) in sel.skipped {
        *p.skipped.entry(k).or_default() += v;
    }
    let what = match &opts.module {
        Some(m) => format!("{} of {m}", functions(p.attached)),
        None => format!("kernel {}", functions(p.attached)),
    };
    Ok((p, what))
}

pub fn run(opts: Options) -> Result<()> {
    runtime::prepare()?;
    let (cgroups, cgroup) = Containers::open(&opts.containers, opts.format)?;
    let config = probes::Globals {
        call: config(&opts.filter),
        cgroup,
    };
    let (mut probes, what) = if opts.binary.is_some() {
        attach_binary(&opts, &config)?
    } else {
        attach_kernel(&opts, &config)?
    };
    eprintln!(
        "stapr calltree: {} on {} {what}{}; attached in {:.2} s. Ctrl-C to end.",
        probes.method.pair(),
        probes.attached,
        summary(&probes.skipped),
        probes.took.as_secs_f64()
    );

    let ring = probes.ring()?;
    let mut printer =
        printer::Printer::new(opts.format, opts.max_depth, opts.durations, opts.trees);
    printer.cgroups = cgroups;
    let names = &probes.names;
    runtime::block_on(async {
        let mut ring = ring::Watched::new(ring);
        let stop = runtime::stopped(opts.duration, true);
        tokio::pin!(stop);
        let why = loop {
            let more = ring.ring().is_some_and(|r| printer.drain(r, names));
            let text = printer.take();
            // Output stops at once on a stop, whatever is still in the ring or unwritten.
            if let Some(why) = out::write_or_stop(&text, &mut stop).await? {
                break why;
            }
            let wait = if more { Duration::ZERO } else { POLL };
            tokio::select! {
                biased;
                r = &mut stop => break r?,
                r = ring.wait(Some(wait)) => r?,
            }
        };
        // The trees still open, as far as they got (held back by --min/--errors only).
        let open = printer.close_open(runtime::monotonic_ns());
        if why != runtime::Stop::ReaderGone && !open.is_empty() {
            out::write_last(&open).await?;
        }
        Ok(())
    })?;
    let stopped = Instant::now();
    let lost = probes.lost()?;
    let unkept = probes.returns_unkept()?;
    eprintln!(
        "stapr calltree: {} events, {lost} lost (ring buffer full), {} returns whose entry was not seen{}",
        printer.events,
        printer.indenter.unmatched + unkept,
        trees(&printer, &opts.trees)
    );
    let (method, attached, took) = (probes.method, probes.attached, probes.took);
    let (links, foreground) = (probes.links, opts.detach_in_foreground);
    let detached = runtime::detach::release(probes, links, foreground);
    if opts.timings {
        eprintln!(
            "stapr calltree: timings: {} on {attached} functions: attach {:.2} s, stop to exit {:.2} s, {detached}",
            method.pair(),
            took.as_secs_f64(),
            stopped.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
