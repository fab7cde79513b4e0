//! `stapr nettop`: packets and KB sent and received, per process and device, every interval.

pub mod aggregate;
pub mod args;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;

use crate::runtime::{self, interval};

pub use aggregate::{Filter, SortKey};
pub use probes::ProbeKind;

pub struct Options {
    pub every: interval::Every,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: Option<usize>,
    pub probe: ProbeKind,
    pub format: runtime::Format,
}

struct Report {
    probes: probes::Probes,
    opts: Options,
}

impl interval::Periodic for Report {
    const NAME: &'static str = "nettop";
    const LOST: &'static str = "packets";

    fn describe(&self) -> String {
        format!(
            "{} on net:net_dev_xmit and net:netif_receive_skb",
            self.probes.kind.describe()
        )
    }

    fn report(&mut self, interval: Duration) -> Result<String> {
        let o = &self.opts;
        let snap = aggregate::snapshot(self.probes.drain()?, &o.filter, o.sort, o.rows);
        Ok(match o.format {
            runtime::Format::Text => render::text(&snap),
            runtime::Format::Json => {
                render::json(&snap, &runtime::utc_now(), interval.as_secs_f64())
            }
        })
    }

    fn lost(&self) -> Result<u64> {
        self.probes.dropped()
    }
}

pub fn run(opts: Options) -> Result<()> {
    runtime::prepare()?;
    let probes = probes::Probes::attach(opts.probe)?;
    let every = opts.every;
    interval::run(&mut Report { probes, opts }, every)
}
