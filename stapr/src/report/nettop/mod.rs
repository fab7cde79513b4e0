//! `stapr nettop`: packets and KB sent and received, per process and device, every interval.

pub mod aggregate;
pub mod args;
pub mod ifnames;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;
use probes_common::{nettop::NET_NEW_MAX, CgroupFilter};

use crate::{
    metrics::{Counters, Declared, Family, Kind, Registry, Who},
    report::{
        containers::{self, Containers},
        method::Method as _,
        specs, Report,
    },
    runtime::{
        self, interval,
        source::{Loss, Record, Source, View},
    },
};

pub use aggregate::{Filter, SortKey};
pub use probes::{Charge, Method};

pub static NETTOP: Report = Report {
    name: "nettop",
    ways: specs::<Method>,
    object: &probes::OBJECT,
    families: &[Declared::Counters(&TRAFFIC)],
    export: Some(|with| {
        let names = Containers::for_export(with.containers)?;
        let probes = probes::Probes::attach(
            None,
            with.recv_at,
            with.xmit_at,
            CgroupFilter::default(),
            false,
        )?;
        Ok(Box::new(Traffic::new(probes, names)))
    }),
};

pub struct Options {
    pub every: interval::Every,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: Option<usize>,
    /// None: the first method that works.
    pub probe: Option<Method>,
    pub recv_at: Charge,
    pub xmit_at: Charge,
    pub format: runtime::Format,
    pub containers: containers::Choice,
    /// A row per process and connection (`--connections`).
    pub connections: bool,
}

/// nettop's probes, handing out every process's traffic since the last take.
pub struct Traffic {
    probes: probes::Probes,
    names: Containers,
    new: aggregate::NewConnections,
}

impl Traffic {
    fn new(probes: probes::Probes, names: Containers) -> Self {
        Traffic {
            probes,
            names,
            new: Default::default(),
        }
    }
}

impl Source for Traffic {
    type Snapshot = aggregate::Snapshot;
    const NAME: &'static str = "nettop";

    fn label(&self) -> &'static str {
        self.probes.method.label()
    }

    fn describe(&self) -> String {
        format!("{}: {}", self.probes.method.name(), self.probes.describe())
    }

    fn attached(&self) -> usize {
        self.probes.attached
    }

    fn slow_to_detach(&self) -> usize {
        self.probes.slow_attachments()
    }

    fn lost(&self) -> Result<Vec<Loss>> {
        let probes::Lost {
            table,
            ledger,
            writer,
            new,
        } = self.probes.lost()?;
        let mut lost = vec![
            Loss::table_full("packets", table),
            Loss {
                reason: "ledger_failed",
                what: "packets",
                why: "their socket's ledger could not be made (out of memory)".into(),
                count: ledger,
            },
            Loss {
                reason: "writer_failed",
                what: "sends",
                why: "their socket's writer could not be noted (out of memory, or the writer table full): their packets went to the task running at the device".into(),
                count: writer,
            },
            Loss::skipped("packets", self.probes.skipped()),
        ];
        if self.probes.connections {
            lost.push(Loss {
                reason: "new_table_full",
                what: "connections",
                why: format!(
                    "the table of TCP connections established in an interval (room for {NET_NEW_MAX}) was full: they were not marked new"
                ),
                count: new,
            });
        }
        Ok(lost)
    }

    fn take(&mut self) -> Result<aggregate::Snapshot> {
        // Connections established before the counts are drained: one established
        // meanwhile is marked in the next interval, with the rows it has there.
        let established = self.probes.new_connections()?;
        let mut snap = aggregate::rows(self.probes.drain()?);
        for r in &mut snap.rows {
            r.cg = self.names.name(r.cgroup).clone();
        }
        if self.probes.connections {
            self.new.mark(&mut snap.rows, established);
        }
        Ok(snap)
    }
}

impl View<aggregate::Snapshot> for Options {
    fn format(&self) -> runtime::Format {
        self.format
    }

    fn render(&mut self, all: aggregate::Snapshot, interval: Duration) -> String {
        let snap = aggregate::view(all, &self.filter, self.sort, self.rows);
        match self.format {
            runtime::Format::Text => render::text(
                &snap,
                render::Columns {
                    containers: self.containers.show,
                    connections: self.connections,
                },
            ),
            runtime::Format::Json => render::json(
                &snap,
                &runtime::utc_now(),
                runtime::seconds(interval),
                self.connections,
            ),
        }
    }
}

/// The exporter's series of nettop: packets and bytes share one per process, device and
/// direction.
pub static TRAFFIC: Counters = Counters {
    families: &[
        Family {
            name: "stapr_net_packets_total",
            help: "Packets sent (transmit) and received (receive) per process and network device; by default (--xmit-at socket, --recv-at socket) transmits are charged to the process that last wrote to their socket, receives to the process that read them off it.",
            kind: Kind::Counter,
        },
        Family {
            name: "stapr_net_bytes_total",
            help: "Bytes (skb length) sent and received per process and network device.",
            kind: Kind::Counter,
        },
    ],
};

impl Record for aggregate::Snapshot {
    fn record(&self, reg: &mut Registry, now_ns: u64) -> u64 {
        let mut events = 0;
        for r in &self.rows {
            let who = Who {
                pid: r.pid,
                comm: &r.comm,
                uid: r.uid,
                container: &r.cg.container,
            };
            for (direction, packets, bytes) in [
                ("transmit", r.xmit_packets, r.xmit_bytes),
                ("receive", r.recv_packets, r.recv_bytes),
            ] {
                if packets > 0 {
                    events += packets;
                    reg.count(&TRAFFIC, who, &r.dev, direction, &[packets, bytes], now_ns);
                }
            }
        }
        events
    }
}

/// Refuses a `-d` device this network namespace does not have, naming those it has: the
/// name must be one of its interfaces' (`lo/` or `..` are paths, not names).
fn check_device(dev: &str) -> Result<()> {
    let mut have: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if have.iter().any(|h| h == dev) {
        return Ok(());
    }
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
    let probes = probes::Probes::attach(
        opts.probe,
        opts.recv_at,
        opts.xmit_at,
        cgroup,
        opts.connections,
    )?;
    let every = opts.every;
    interval::run(Traffic::new(probes, names), opts, every)
}
