//! `stapr disktop`: bytes read and written per process and block device, every interval.

pub mod aggregate;
pub mod probes;
pub mod render;

use std::{collections::HashMap, time::Duration};

use anyhow::Result;

use crate::runtime;

pub use aggregate::{Filter, SortKey};
pub use probes::Method;

pub struct Options {
    pub interval: Duration,
    pub count: Option<u64>,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: usize,
    pub method: probes::Method,
    pub format: runtime::Format,
}

/// The kernel's name for a block device (`vda`, `dm-0`, `nvme0n1p2`), from sysfs.
pub fn sysfs_device_name(dev: u32) -> String {
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

pub fn run(opts: Options) -> Result<()> {
    runtime::prepare()?;
    let mut probes = probes::Probes::attach(opts.method)?;
    if !probes.skipped.is_empty() {
        eprintln!(
            "stapr disktop: this kernel lacks {}; those calls are not counted",
            probes.skipped.join(", ")
        );
    }
    let method = probes.method.describe();
    eprintln!(
        "stapr disktop: {method}; reporting every {:?}. Ctrl-C to end.",
        opts.interval
    );
    let mut names: HashMap<u32, String> = HashMap::new();
    let interval_ms = opts.interval.as_millis() as u64;
    runtime::block_on(runtime::every_interval(opts.interval, opts.count, || {
        let entries = probes.drain()?;
        let name = |dev: u32| {
            names
                .entry(dev)
                .or_insert_with(|| sysfs_device_name(dev))
                .clone()
        };
        let snap = aggregate::snapshot(
            entries,
            name,
            &opts.filter,
            opts.sort,
            opts.rows,
            interval_ms,
        );
        match snap {
            Some(s) => runtime::emit(&match opts.format {
                runtime::Format::Text => render::text(&s, &render::ctime(&chrono::Local::now())),
                runtime::Format::Json => render::json(&s, &runtime::utc_now()),
            }),
            None => Ok(()),
        }
    }))?;
    let dropped = probes.dropped()?;
    if dropped > 0 {
        eprintln!(
            "stapr disktop: {dropped} reads/writes not counted: the in-kernel table was full"
        );
    }
    Ok(())
}
