//! slowopen as a source: the files that ended since the last take, read from the ring
//! buffer and matched against the in-kernel table, each reported once and named.

use std::{
    collections::VecDeque,
    task::{Context, Poll},
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use probes_common::{
    slowopen::{
        Notice, SlowConfig, SlowFile, MISSED_COUNT, OPEN_ARGS_MAX_ENTRIES, OPEN_MAX_ENTRIES,
        REC_NOTICE, REC_SLOW_FILE,
    },
    CgroupFilter,
};

use super::{aggregate, probes, Filter, Method};
use crate::{
    metrics::{Family, Kind, Registry},
    report::{containers::Containers, method::Method as _},
    runtime::{
        self, ring,
        source::{Loss, Record, Source},
    },
};

/// What one read of the ring buffer brought.
#[derive(Default)]
struct Batch {
    slow: Vec<SlowFile>,
    notices: Vec<Notice>,
}

/// Every record waiting in the ring, sorted into `batch` by the kind its first field
/// names.
fn read_records(ring: &mut RingBuf<MapData>, batch: &mut Batch) {
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

/// What user space remembers between batches.
#[derive(Default)]
struct State {
    /// Recent notices, to explain files whose slot was reused before they were matched.
    recent: VecDeque<Notice>,
    reported: aggregate::Reported,
}

/// Notices kept to explain files whose fd was reused before their end was matched.
const RECENT_NOTICES: usize = 4096;

/// The files a batch ended that pass `filter`, each once. Exec, exit and close_range are
/// matched against the table here, then kept a while for files whose slot the kernel
/// reuses before that match.
fn ended(
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

/// What each loss counter counts (by `MISSED_*` index): the JSON reason, what
/// was lost, and why.
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

/// slowopen's probes, handing out the files that ended (and the slow opens that
/// returned) since the last take, each once.
pub struct Files {
    pub probes: probes::Probes,
    ring: ring::Watched,
    state: State,
    min_ns: u64,
    filter: Filter,
    names: Containers,
    /// Open calls are timed (entry probes attached).
    timed: bool,
}

impl Files {
    pub fn attach(
        config: SlowConfig,
        cgroup: CgroupFilter,
        choice: Option<Method>,
        filter: Filter,
        names: Containers,
    ) -> Result<Files> {
        let (probes, ring) = probes::Probes::attach(config, cgroup, choice)?;
        Ok(Files {
            probes,
            ring: ring::Watched::new(ring),
            state: State::default(),
            min_ns: config.min_ns,
            filter,
            names,
            timed: config.time_opens == 1,
        })
    }

    /// The files still open now and held at least the threshold (a run's end), named.
    pub fn still_open(&mut self) -> Result<Vec<aggregate::Row>> {
        let entries = self.probes.open_files()?;
        let mut rows: Vec<_> =
            aggregate::still_open(&entries, runtime::monotonic_ns(), self.min_ns)
                .into_iter()
                .filter(|r| aggregate::keeps(&self.filter, r))
                .collect();
        name_cgroups(&mut rows, &mut self.names);
        Ok(rows)
    }
}

impl Source for Files {
    type Snapshot = Vec<aggregate::Row>;
    const NAME: &'static str = "slowopen";

    fn label(&self) -> &'static str {
        self.probes.method.label()
    }

    fn describe(&self) -> String {
        let p = &self.probes;
        let (sched, calls): (Vec<&str>, Vec<&str>) = p
            .traced
            .iter()
            .partition(|c| matches!(**c, "exec" | "exit"));
        match p.method {
            Method::RawSyscalls => format!(
                "raw syscall tracepoint (BTF: raw_syscalls:sys_exit{}, handling {}) and tracepoints on {}",
                if self.timed { " and sys_enter" } else { "" },
                calls.join(", "),
                sched.join(", "),
            ),
            Method::Syscalls => format!(
                "syscall tracepoints ({}{})",
                if self.timed { "entry and exit of " } else { "" },
                p.traced.join(", "),
            ),
        }
    }

    fn attached(&self) -> usize {
        self.probes.attached + self.probes.raw
    }

    fn slow_to_detach(&self) -> usize {
        self.probes.attached
    }

    fn lost(&self) -> Result<Vec<Loss>> {
        let mut lost: Vec<Loss> = self
            .probes
            .lost()?
            .into_iter()
            .zip(loss_kinds())
            .map(|(count, (reason, what, why))| Loss {
                reason,
                what,
                why,
                count,
            })
            .collect();
        lost.push(Loss::skipped(
            "open and close events",
            self.probes.skipped(),
        ));
        Ok(lost)
    }

    fn take(&mut self) -> Result<Vec<aggregate::Row>> {
        let mut batch = Batch::default();
        if let Some(ring) = self.ring.ring() {
            read_records(ring, &mut batch);
        }
        let mut rows = ended(
            &mut self.probes,
            batch,
            &mut self.state,
            self.min_ns,
            &self.filter,
        )?;
        name_cgroups(&mut rows, &mut self.names);
        Ok(rows)
    }

    fn poll_records(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.ring.poll_ready(cx)
    }
}

/// The exporter's histogram of slowopen.
pub static FILE_OPEN: Family = Family {
    name: "stapr_file_open_seconds",
    help: "How long files were held open, per command, observed when they were closed (files held at least --file-min).",
    kind: Kind::Histogram(&[
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
    ]),
};

impl Record for Vec<aggregate::Row> {
    fn record(&self, reg: &mut Registry, now_ns: u64) -> u64 {
        for r in self {
            let secs = r.held_ns as f64 / 1e9;
            reg.observe(&FILE_OPEN, &r.comm, &r.cg.container, secs, now_ns);
        }
        self.len() as u64
    }
}
