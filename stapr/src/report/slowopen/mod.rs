//! `stapr slowopen`: files a process held open at least `--min`, reported when closed,
//! and opens that themselves took at least `--open-min`, reported as they return.

pub mod aggregate;
pub mod args;
pub mod probes;
pub mod render;

use std::{collections::VecDeque, time::Duration};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use probes_common::slowopen::{
    Notice, SlowConfig, SlowFile, MISSED_COUNT, OPEN_ARGS_MAX_ENTRIES, OPEN_MAX_ENTRIES,
    REC_NOTICE, REC_SLOW_FILE,
};

use crate::{
    report::containers::{self, Containers},
    runtime::{self, out, ring, Stop},
};

pub use aggregate::Filter;

pub struct Options {
    /// None: held files are not reported (`--open-min` alone).
    pub min: Option<Duration>,
    pub open_min: Option<Duration>,
    pub filter: Filter,
    pub format: runtime::Format,
    pub duration: Option<Duration>,
    pub verbose: bool,
    pub containers: containers::Choice,
    pub method: probes::Method,
}

impl Options {
    fn columns(&self) -> render::Columns {
        render::Columns {
            verbose: self.verbose,
            containers: self.containers.show,
        }
    }

    fn line(&self, r: &aggregate::Row) -> String {
        match self.format {
            runtime::Format::Text => render::line(r, self.columns()),
            runtime::Format::Json => render::json(r, &runtime::utc_now()),
        }
    }
}

/// What one read of the ring buffer brought.
#[derive(Default)]
pub struct Batch {
    slow: Vec<SlowFile>,
    notices: Vec<Notice>,
}

/// Every record waiting in the ring, sorted into `batch` by the kind its first field
/// names.
pub fn read_records(ring: &mut RingBuf<MapData>, batch: &mut Batch) {
    ring::drain(ring, usize::MAX, |bytes| {
        match bytes
            .get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        {
            Some(REC_SLOW_FILE) => batch.slow.extend(ring::record::<SlowFile>(bytes)),
            Some(REC_NOTICE) => batch.notices.extend(ring::record::<Notice>(bytes)),
            _ => {}
        }
    });
}

fn min_ns(opts: &Options) -> u64 {
    opts.min.map_or(u64::MAX, runtime::nanos)
}

impl Options {
    /// Whether the open calls are timed (entry probes attached).
    fn timed(&self) -> bool {
        self.open_min.is_some() || self.verbose
    }

    /// What the start line says is reported.
    fn reported(&self) -> String {
        let held = self.min.map(|m| format!("files held >= {m:?}"));
        let opens = self.open_min.map(|m| format!("opens taking >= {m:?}"));
        let mut what: Vec<String> = held.into_iter().chain(opens).collect();
        if self.verbose && self.open_min.is_none() {
            what.push("each open timed".into());
        }
        what.join("; ")
    }
}

/// What user space remembers between batches.
#[derive(Default)]
pub struct State {
    /// Recent notices, to explain files whose slot was reused before they were matched.
    recent: VecDeque<Notice>,
    reported: aggregate::Reported,
}

/// Notices kept to explain files whose fd was reused before their end was matched.
const RECENT_NOTICES: usize = 4096;

/// The files a batch ended that pass `filter`, each once. Exec, exit and close_range are
/// matched against the table here, then kept a while for files whose slot the kernel
/// reuses before that match.
pub fn ended(
    probes: &mut probes::Probes,
    batch: Batch,
    state: &mut State,
    min_ns: u64,
    filter: &Filter,
) -> Result<Vec<aggregate::Row>> {
    let State { recent, reported } = state;
    let mut out = Vec::new();
    if !batch.notices.is_empty() {
        let entries = probes.open_files()?;
        let m = aggregate::match_notices(&batch.notices, &entries, min_ns);
        probes.forget(&m.remove)?;
        probes.rewrite(&m.update)?;
        out.extend(
            m.rows
                .into_iter()
                .filter(|r| aggregate::keeps(filter, r) && reported.first_time(r)),
        );
        recent.extend(batch.notices);
        while recent.len() > RECENT_NOTICES {
            recent.pop_front();
        }
    }
    let recent = recent.make_contiguous();
    for s in &batch.slow {
        if let Some(row) = aggregate::slow_file_row(s, recent, min_ns) {
            // A slow open is sent once, when it returns; its file may be reported again
            // when it is closed.
            if aggregate::keeps(filter, &row)
                && (row.end == aggregate::End::SlowOpen || reported.first_time(&row))
            {
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// Names the cgroup of each row: the one the kernel sent, else the live process's.
fn name_cgroups(rows: &mut [aggregate::Row], names: &mut Containers) {
    for r in rows {
        r.cg = match r.cgroup {
            0 => names.of_process(r.pid),
            id => names.name(id).clone(),
        };
    }
}

/// The lines of the files a batch ended.
fn ended_lines(
    probes: &mut probes::Probes,
    batch: Batch,
    state: &mut State,
    opts: &Options,
    names: &mut Containers,
) -> Result<String> {
    let mut rows = ended(probes, batch, state, min_ns(opts), &opts.filter)?;
    name_cgroups(&mut rows, names);
    Ok(rows.iter().map(|r| opts.line(r)).collect())
}

/// What each loss counter counts (by `MISSED_*` index): the JSON reason, what was lost,
/// and why.
fn loss_kinds() -> [(&'static str, &'static str, String); MISSED_COUNT as usize] {
    [
        (
            "table_full",
            "opens",
            format!("the in-kernel table ({OPEN_MAX_ENTRIES} files) was full"),
        ),
        (
            "ringbuf_full",
            "reports",
            "the ring buffer was full".to_owned(),
        ),
        (
            "open_args_full",
            "open timings",
            format!(
                "the in-kernel table of opens in progress ({OPEN_ARGS_MAX_ENTRIES} threads) was full"
            ),
        ),
    ]
}

/// Losses since the last call (`seen` holds the counts then), as lines of their own.
fn losses(
    probes: &probes::Probes,
    seen: &mut [u64; MISSED_COUNT as usize],
    format: runtime::Format,
) -> Result<String> {
    let now = probes.missed()?;
    let mut out = String::new();
    for ((now, seen), (reason, what, why)) in now.iter().zip(seen.iter_mut()).zip(loss_kinds()) {
        let n = now - *seen;
        *seen = *now;
        if n == 0 {
            continue;
        }
        match format {
            runtime::Format::Text => out += &format!("Lost {n} {what}: {why}\n"),
            runtime::Format::Json => {
                out +=
                    &serde_json::json!({"time": runtime::utc_now(), "lost": n, "reason": reason})
                        .to_string();
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// How often the loss counters are looked at when no record arrives.
const LOSS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(opts: Options) -> Result<()> {
    opts.filter.refuse_idle("slowopen")?;
    runtime::prepare()?;
    let config = SlowConfig {
        min_ns: min_ns(&opts),
        open_min_ns: opts.open_min.map_or(0, runtime::nanos),
        time_opens: opts.timed() as u32,
        tgid: opts.filter.pid.unwrap_or(0),
        filter_tgid: opts.filter.pid.is_some() as u32,
        uid: opts.filter.uid.unwrap_or(0),
        filter_uid: opts.filter.uid.is_some() as u32,
        self_tgid: std::process::id(),
        ..Default::default()
    };
    let (mut names, filter) = Containers::open(&opts.containers, opts.format)?;
    let (mut probes, ring) = probes::Probes::attach(config, filter, opts.method)?;
    if !probes.skipped.is_empty() {
        eprintln!(
            "stapr slowopen: this kernel lacks {}; those calls are not traced",
            probes.skipped.join(", ")
        );
    }
    let (sched, calls): (Vec<&str>, Vec<&str>) = probes
        .traced
        .iter()
        .partition(|c| matches!(**c, "exec" | "exit"));
    let how = match probes.method {
        probes::Method::RawSyscalls => format!(
            "raw syscall tracepoint (BTF: raw_syscalls:sys_exit{}, handling {}) and tracepoints on {}",
            if opts.timed() { " and sys_enter" } else { "" },
            calls.join(", "),
            sched.join(", "),
        ),
        _ => format!(
            "syscall tracepoints ({}{})",
            if opts.timed() { "entry and exit of " } else { "" },
            probes.traced.join(", "),
        ),
    };
    eprintln!("stapr slowopen: {how}; {}. Ctrl-C to end.", opts.reported());
    let mut state = State::default();
    let mut seen = [0; MISSED_COUNT as usize];
    runtime::block_on(async {
        let header = match opts.format {
            runtime::Format::Text => render::header(opts.columns()),
            runtime::Format::Json => String::new(),
        };
        let mut ring = ring::Watched::new(ring)?;
        let stop = runtime::stopped(opts.duration, true);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(LOSS_CHECK);
        let mut text = header;
        let stop = loop {
            // A reader that stops reading holds the write, never the stop.
            if !text.is_empty() {
                tokio::select! {
                    r = out::write(&text) => {
                        if out::is_broken_pipe(&r) {
                            break Stop::ReaderGone;
                        }
                        r?;
                    }
                    s = &mut stop => break s?,
                }
            }
            text = tokio::select! {
                r = ring.wait(None) => {
                    r?;
                    let mut batch = Batch::default();
                    read_records(ring.ring(), &mut batch);
                    ended_lines(&mut probes, batch, &mut state, &opts, &mut names)?
                        + &losses(&probes, &mut seen, opts.format)?
                }
                _ = tick.tick() => losses(&probes, &mut seen, opts.format)?,
                s = &mut stop => break s?,
            };
        };
        if stop == Stop::ReaderGone {
            return Ok(());
        }
        // What arrived between the last wake-up and the stop, then the files still open.
        let mut batch = Batch::default();
        read_records(ring.ring(), &mut batch);
        let mut last = ended_lines(&mut probes, batch, &mut state, &opts, &mut names)?;
        last += &losses(&probes, &mut seen, opts.format)?;
        let entries = probes.open_files()?;
        let mut rows: Vec<_> =
            aggregate::still_open(&entries, runtime::monotonic_ns(), min_ns(&opts))
                .into_iter()
                .filter(|r| aggregate::keeps(&opts.filter, r))
                .collect();
        name_cgroups(&mut rows, &mut names);
        last += &match opts.format {
            runtime::Format::Text => render::still_open(&rows, opts.columns()),
            runtime::Format::Json => rows.iter().map(|r| opts.line(r)).collect(),
        };
        out::write_last(&last).await
    })?;
    // Worded as the interval reports' totals (runtime::interval).
    for (n, (_, what, why)) in probes.missed()?.into_iter().zip(loss_kinds()) {
        if n > 0 {
            eprintln!("stapr slowopen: {n} {what} not counted in all: {why}");
        }
    }
    let slow = probes.attached;
    runtime::detach::release(probes, slow, false);
    Ok(())
}
