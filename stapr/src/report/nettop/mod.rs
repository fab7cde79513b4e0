//! `stapr nettop`: packets and KB sent and received, per process and device, every interval.

pub mod aggregate;
pub mod args;
pub mod ifnames;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;

use crate::{
    report::containers::{self, Containers},
    runtime::{self, interval},
};

pub use aggregate::{Filter, SortKey};
pub use probes::{ProbeKind, RecvAt};

pub struct Options {
    pub every: interval::Every,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: Option<usize>,
    pub probe: ProbeKind,
    pub recv_at: RecvAt,
    pub format: runtime::Format,
    pub containers: containers::Choice,
}

struct Report {
    probes: probes::Probes,
    opts: Options,
    names: Containers,
}

impl interval::Periodic for Report {
    const NAME: &'static str = "nettop";
    const LOST: &'static str = "packets";

    fn describe(&self) -> String {
        let p = &self.probes;
        format!(
            "{} on {}",
            p.kind.describe(),
            p.recv_at.describe(p.udp_ledger)
        )
    }

    fn report(&mut self, interval: Duration) -> Result<String> {
        let o = &self.opts;
        let mut snap = aggregate::snapshot(self.probes.drain()?, &o.filter, o.sort, o.rows);
        for r in &mut snap.rows {
            r.cg = self.names.name(r.cgroup).clone();
        }
        Ok(match o.format {
            runtime::Format::Text => render::text(&snap, self.names.show),
            runtime::Format::Json => {
                render::json(&snap, &runtime::utc_now(), interval.as_secs_f64())
            }
        })
    }

    fn format(&self) -> runtime::Format {
        self.opts.format
    }

    fn lost(&self) -> Result<u64> {
        self.probes.dropped()
    }

    fn slow_attachments(&self) -> usize {
        self.probes.slow_attachments()
    }
}

/// Refuses a `-d` device this network namespace does not have, naming those it has.
fn check_device(dev: &str) -> Result<()> {
    let net = std::path::Path::new("/sys/class/net");
    if net.join(dev).exists() {
        return Ok(());
    }
    let mut have: Vec<String> = std::fs::read_dir(net)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    have.sort();
    Err(runtime::user_error(format!(
        "no network device '{dev}' here (this network namespace has: {})",
        have.join(", ")
    )))
}

pub fn run(opts: Options) -> Result<()> {
    if let Some(dev) = &opts.filter.dev {
        check_device(dev)?;
    }
    runtime::prepare()?;
    let (names, cgroup) = Containers::open(&opts.containers, opts.format)?;
    let probes = probes::Probes::attach(opts.probe, opts.recv_at, cgroup)?;
    let every = opts.every;
    interval::run(
        Report {
            probes,
            opts,
            names,
        },
        every,
    )
}
