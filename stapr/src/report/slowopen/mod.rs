//! `stapr slowopen`: files a process held open at least `--min`, reported when closed,
//! and opens that themselves took at least `--open-min`, reported as they return.

pub mod aggregate;
pub mod args;
mod files;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;
use probes_common::{slowopen::SlowConfig, CgroupFilter};

use crate::{
    metrics::Declared,
    report::{
        containers::{self, Containers},
        specs, ExportSettings, Report,
    },
    runtime::{
        self, out,
        source::{loss_totals, Exported, Loss, LossLines, Source},
        Stop,
    },
};

pub use aggregate::Filter;
use files::Files;
#[cfg(test)]
pub use files::FILE_OPEN;
pub use probes::Method;

pub static SLOWOPEN: Report = Report {
    name: "slowopen",
    ways: specs::<Method>,
    object: &probes::OBJECT,
    families: &[Declared::Histogram(&files::FILE_OPEN)],
    export: Some(export),
};

fn export(with: &ExportSettings) -> Result<Box<dyn Exported>> {
    let names = Containers::for_export(with.containers)?;
    let min_ns = runtime::nanos(with.file_min);
    let config = SlowConfig {
        min_ns,
        self_tgid: std::process::id(),
        ..Default::default()
    };
    let files = Files::attach(
        config,
        CgroupFilter::default(),
        None,
        Filter::default(),
        names,
    )?;
    Ok(Box::new(files))
}

pub struct Options {
    /// None: held files are not reported (`--open-min` alone).
    pub min: Option<Duration>,
    pub open_min: Option<Duration>,
    pub filter: Filter,
    pub format: runtime::Format,
    pub duration: Option<Duration>,
    pub verbose: bool,
    pub containers: containers::Choice,
    /// None: the classic syscall tracepoints.
    pub method: Option<Method>,
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

/// What slowopen's output queue loses, and how many wait at most.
const DROPPED: &str = "batches of lines";
const BATCHES_WAITING: usize = 4096;

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
    let (names, cgroup) = Containers::open(&opts.containers, opts.format)?;
    let mut files = Files::attach(config, cgroup, opts.method, opts.filter.clone(), names)?;
    if !files.probes.skipped.is_empty() {
        eprintln!(
            "stapr slowopen: this kernel lacks {}; those calls are not traced",
            files.probes.skipped.join(", ")
        );
    }
    eprintln!(
        "stapr slowopen: {}; {}. Ctrl-C to end.",
        files.describe(),
        opts.reported()
    );
    let mut losses = LossLines::default();
    let mut queue = out::Queue::new(BATCHES_WAITING);
    let lines =
        |rows: Vec<aggregate::Row>| -> String { rows.iter().map(|r| opts.line(r)).collect() };
    let (f, q) = (&mut files, &mut queue);
    runtime::block_on(async {
        let mut losses = |f: &Files, queue: &out::Queue| -> Result<String> {
            let mut lost = f.lost()?;
            lost.push(Loss::output_full(DROPPED, queue));
            Ok(losses.lines(&lost, opts.format, &runtime::utc_now(), None))
        };
        let stop = runtime::stopped(opts.duration, true);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(LOSS_CHECK);
        if opts.format == runtime::Format::Text {
            q.push(render::header(opts.columns()));
        }
        // The ring is read as records come, whatever stdout does: lines wait in the queue.
        let stop = loop {
            tokio::select! {
                biased;
                s = &mut stop => break s?,
                r = std::future::poll_fn(|cx| Source::poll_records(f, cx)) => {
                    r?;
                    let text = lines(f.take()?) + &losses(f, q)?;
                    q.push(text);
                }
                _ = tick.tick() => {
                    let text = losses(f, q)?;
                    q.push(text);
                }
                r = q.write_some(), if !q.is_empty() => {
                    if out::is_broken_pipe(&r) {
                        break Stop::ReaderGone;
                    }
                    r?;
                }
            }
        };
        if stop == Stop::ReaderGone {
            return Ok(());
        }
        // What waits, what arrived between the last wake-up and the stop, then the files
        // still open.
        let mut last = q.take_all() + &lines(f.take()?) + &losses(f, q)?;
        let rows = f.still_open()?;
        last += &match opts.format {
            runtime::Format::Text => render::still_open(&rows, opts.columns()),
            runtime::Format::Json => lines(rows),
        };
        out::write_last(&last).await
    })?;
    let mut lost = files.lost()?;
    lost.push(Loss::output_full(DROPPED, &queue));
    eprint!("{}", loss_totals("slowopen", &lost));
    let slow = Source::slow_to_detach(&files);
    runtime::detach::release(files, slow, false);
    Ok(())
}
