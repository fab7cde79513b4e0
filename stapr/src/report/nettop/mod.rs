//! `stapr nettop`: packets and KB sent and received, per process and device, every interval.

pub mod aggregate;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;

use crate::runtime;

pub use aggregate::{Filter, SortKey};
pub use probes::ProbeKind;

pub struct Options {
    pub interval: Duration,
    pub count: Option<u64>,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: Option<usize>,
    pub probe: ProbeKind,
    pub format: runtime::Format,
}

pub fn run(opts: Options) -> Result<()> {
    runtime::prepare()?;
    let mut probes = probes::Probes::attach(opts.probe)?;
    eprintln!(
        "stapr nettop: {} on net:net_dev_xmit and net:netif_receive_skb; reporting every {}. Ctrl-C to end.",
        probes.kind.describe(),
        humanize(opts.interval)
    );
    runtime::block_on(runtime::every_interval(opts.interval, opts.count, || {
        let entries = probes.drain()?;
        let snap = aggregate::snapshot(entries, &opts.filter, opts.sort, opts.rows);
        runtime::emit(&match opts.format {
            runtime::Format::Text => render::text(&snap),
            runtime::Format::Json => {
                render::json(&snap, &runtime::utc_now(), opts.interval.as_secs_f64())
            }
        })
    }))?;
    let dropped = probes.dropped()?;
    if dropped > 0 {
        eprintln!("stapr nettop: {dropped} packets not counted: the in-kernel table was full");
    }
    Ok(())
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}
