//! `stapr disktop`: bytes read and written per process and block device, every interval.

pub mod aggregate;
pub mod args;
pub mod probes;
pub mod render;

use std::{collections::HashMap, time::Duration};

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

/// The kernel's names of block devices (`vda`, `dm-0`, `nvme0n1p2`), read from sysfs once
/// per device number.
#[derive(Default)]
pub struct DevNames(HashMap<u32, String>);

impl DevNames {
    pub fn name(&mut self, dev: u32) -> String {
        self.0.entry(dev).or_insert_with(|| sysfs_name(dev)).clone()
    }
}

fn sysfs_name(dev: u32) -> String {
    let (major, minor) = aggregate::major_minor(dev);
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

struct Report {
    probes: probes::Probes,
    names: DevNames,
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
            |dev| names.name(dev),
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
    let names = DevNames::default();
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
