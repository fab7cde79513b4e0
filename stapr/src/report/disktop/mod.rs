//! `stapr disktop`: bytes read and written per process and device (block device or
//! network filesystem), every interval.

pub mod aggregate;
pub mod args;
pub mod devices;
pub mod probes;
pub mod render;

use std::time::Duration;

use anyhow::Result;
use probes_common::CgroupFilter;

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
pub use probes::Method;

pub static DISKTOP: Report = Report {
    name: "disktop",
    ways: specs::<Method>,
    object: &probes::OBJECT,
    families: &[Declared::Counters(&BYTES)],
    export: Some(|with| {
        let cgroups = Containers::for_export(with.containers)?;
        let probes = probes::Probes::attach(None, CgroupFilter::default())?;
        Ok(Box::new(Io::new(probes, cgroups)))
    }),
};

pub struct Options {
    pub every: interval::Every,
    pub filter: Filter,
    pub sort: SortKey,
    pub rows: usize,
    /// None: the first method that works.
    pub method: Option<Method>,
    pub format: runtime::Format,
    pub containers: containers::Choice,
}

/// disktop's probes, handing out every process's reads and writes since the last take.
pub struct Io {
    probes: probes::Probes,
    devices: devices::DevNames,
    cgroups: Containers,
}

impl Io {
    fn new(probes: probes::Probes, cgroups: Containers) -> Self {
        Io {
            probes,
            devices: devices::DevNames::default(),
            cgroups,
        }
    }
}

impl Source for Io {
    type Snapshot = aggregate::Counted;
    const NAME: &'static str = "disktop";

    fn label(&self) -> &'static str {
        self.probes.method.label()
    }

    fn describe(&self) -> String {
        const XFERS: &str = "sendfile, splice, copy_file_range";
        match self.probes.method {
            Method::Fexit => format!(
                "fexit on vfs_read and vfs_write, syscall tracepoints for {XFERS}, file resolved to its block device through BTF"
            ),
            Method::Syscalls => format!(
                "syscall exit tracepoints ({}, {}, {XFERS}), fd resolved to its block device through BTF",
                probes::READS.join(", "),
                probes::WRITES.join(", ")
            ),
            Method::Block => "block layer requests (block:block_rq_issue)".into(),
        }
    }

    fn attached(&self) -> usize {
        self.probes.attached
    }

    fn slow_to_detach(&self) -> usize {
        self.probes.attached
    }

    fn lost(&self) -> Result<Vec<Loss>> {
        Ok(vec![
            Loss::table_full("reads/writes", self.probes.lost()?),
            Loss::skipped("reads/writes", self.probes.skipped()),
        ])
    }

    fn take(&mut self) -> Result<aggregate::Counted> {
        let devices = &mut self.devices;
        let mut counted = aggregate::rows(self.probes.drain()?, |dev, pid| devices.name(dev, pid));
        for r in &mut counted.rows {
            r.cg = self.cgroups.name(r.cgroup).clone();
        }
        Ok(counted)
    }
}

impl View<aggregate::Counted> for Options {
    fn format(&self) -> runtime::Format {
        self.format
    }

    fn render(&mut self, all: aggregate::Counted, interval: Duration) -> String {
        let interval_ms = interval.as_millis() as u64;
        match (
            aggregate::view(all, &self.filter, self.sort, self.rows, interval_ms),
            self.format,
        ) {
            (None, _) => String::new(),
            (Some(s), runtime::Format::Text) => render::text(
                &s,
                &render::ctime(&chrono::Local::now()),
                self.containers.show,
                self.every.interval.as_millis() as u64,
            ),
            (Some(s), runtime::Format::Json) => render::json(&s, &runtime::utc_now()),
        }
    }
}

/// The exporter's series of disktop.
pub static BYTES: Counters = Counters {
    families: &[Family {
        name: "stapr_disk_bytes_total",
        help: "Bytes read and written per process and device: read/write calls on files of a block device (page cache hits included) or of a network filesystem (NFS, SMB/CIFS, Ceph, 9p, AFS), named by its server side.",
        kind: Kind::Counter,
    }],
};

impl Record for aggregate::Counted {
    fn record(&self, reg: &mut Registry, now_ns: u64) -> u64 {
        for r in &self.rows {
            let who = Who {
                pid: r.pid,
                comm: &r.comm,
                uid: r.uid,
                container: &r.cg.container,
            };
            let direction = match r.dir {
                aggregate::Dir::Read => "read",
                aggregate::Dir::Write => "write",
            };
            reg.count(&BYTES, who, &r.device, direction, &[r.bytes], now_ns);
        }
        self.calls
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
    interval::run(Io::new(probes, cgroups), opts, every)
}
