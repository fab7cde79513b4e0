//! `stapr disktop`: bytes read and written per process and device (block device or
//! network filesystem), every interval.

pub mod aggregate;
pub mod args;
pub mod devices;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;

use crate::{
    report::containers::{self, Containers},
    runtime::{self, interval},
};

pub use aggregate::{Filter, SortKey};
pub use probes::Method;

pub struct Options {
    pub every: interval::Every,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: usize,
    pub method: probes::Method,
    pub format: runtime::Format,
    pub containers: containers::Choice,
}

struct Report {
    probes: probes::Probes,
    names: devices::DevNames,
    opts: Options,
    cgroups: Containers,
}

impl interval::Periodic for Report {
    const NAME: &'static str = "disktop";
    const LOST: &'static str = "reads/writes";

    fn describe(&self) -> String {
        self.probes.method.describe()
    }

    fn report(&mut self, interval: Duration) -> Result<String> {
        let o = &self.opts;
        let entries = self.probes.drain()?;
        let names = &mut self.names;
        let mut snap = aggregate::snapshot(
            entries,
            |dev, pid| names.name(dev, pid),
            &o.filter,
            o.sort,
            o.rows,
            interval.as_millis() as u64,
        );
        for r in snap.iter_mut().flat_map(|s| s.rows.iter_mut()) {
            r.cg = self.cgroups.name(r.cgroup).clone();
        }
        Ok(match (snap, o.format) {
            (None, _) => String::new(),
            (Some(s), runtime::Format::Text) => {
                render::text(&s, &render::ctime(&chrono::Local::now()), self.cgroups.show)
            }
            (Some(s), runtime::Format::Json) => render::json(&s, &runtime::utc_now()),
        })
    }

    fn format(&self) -> runtime::Format {
        self.opts.format
    }

    fn lost(&self) -> Result<u64> {
        self.probes.dropped()
    }

    fn slow_attachments(&self) -> usize {
        self.probes.attached
    }
}

pub fn run(opts: Options) -> Result<()> {
    opts.filter.refuse_idle("disktop")?;
    runtime::prepare()?;
    let (cgroups, filter) = Containers::open(&opts.containers, opts.format)?;
    let probes = probes::Probes::attach(opts.method, filter)?;
    if !probes.skipped.is_empty() {
        eprintln!(
            "stapr disktop: this kernel lacks {}; those calls are not counted",
            probes.skipped.join(", ")
        );
    }
    let every = opts.every;
    let names = devices::DevNames::default();
    interval::run(
        Report {
            probes,
            names,
            opts,
            cgroups,
        },
        every,
    )
}
