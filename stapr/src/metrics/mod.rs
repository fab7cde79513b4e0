//! Pure: what the reports' snapshots counted, accumulated into Prometheus counters and
//! histograms with bounded label sets. Each report declares its families ([`Declared`])
//! and records its snapshots into them; [`exposition`] renders the text format 0.0.4.

pub mod exposition;

use std::collections::BTreeMap;

use exposition::{float, Sample};
pub use exposition::{Family, Kind};

/// Which labels identify a process in the series: `--by` takes a comma list of `pid`
/// (pid, comm and uid: one series per process), `comm` (comm and uid: processes of one
/// command add up, so short-lived workers do not each make new series) and `container`
/// (the container or unit of the process's cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct By {
    pub pid: bool,
    pub comm: bool,
    pub container: bool,
}

impl Default for By {
    fn default() -> Self {
        By::PID
    }
}

impl By {
    pub const PID: By = By {
        pid: true,
        comm: true,
        container: false,
    };
    #[cfg(test)]
    pub const COMM: By = By {
        pid: false,
        comm: true,
        container: false,
    };

    /// `--by pid`, `--by comm,container`, `--by container`...
    pub fn parse(s: &str) -> Result<By, String> {
        let mut by = By {
            pid: false,
            comm: false,
            container: false,
        };
        for part in s.split(',') {
            match part.trim() {
                "pid" => (by.pid, by.comm) = (true, true),
                "comm" => by.comm = true,
                "container" => by.container = true,
                other => {
                    return Err(format!(
                        "'{other}': --by takes pid, comm, container or a comma list of them"
                    ))
                }
            }
        }
        Ok(by)
    }

    /// As the start line says it: `pid`, `comm,container`...
    pub fn describe(self) -> String {
        let mut parts = Vec::new();
        if self.pid {
            parts.push("pid");
        } else if self.comm {
            parts.push("comm");
        }
        if self.container {
            parts.push("container");
        }
        parts.join(",")
    }
}

/// A report's counters: one series per process, device and direction, with one value per
/// family (nettop's packets and bytes share their series).
#[derive(Debug)]
pub struct Counters {
    pub families: &'static [Family],
}

/// What a report serves.
#[derive(Debug, Clone, Copy)]
pub enum Declared {
    Counters(&'static Counters),
    /// Per command (and container, `--by ...,container`).
    Histogram(&'static Family),
}

/// The process a sample belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub uid: u32,
    /// The container or unit of its cgroup.
    pub container: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    /// None unless `--by pid`.
    pid: Option<u32>,
    /// None unless `--by pid` or `--by comm`.
    comm: Option<(String, u32)>,
    /// None unless `--by container`.
    container: Option<String>,
    dev: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Count {
    /// One per family of the counters.
    values: Vec<u64>,
    /// Monotonic ns of the last change.
    seen_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    /// Non-cumulative counts per bucket, then the overflow bucket.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
    seen_ns: u64,
}

#[derive(Debug, Clone)]
enum Held {
    Counters(&'static Counters, BTreeMap<Series, Count>),
    Histogram(
        &'static Family,
        BTreeMap<(String, Option<String>), Histogram>,
    ),
}

/// One report's probes as the exporter runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub report: &'static str,
    /// The probe method in use (tp_btf, syscalls, tracepoint...).
    pub method: &'static str,
    pub attached: usize,
    /// Events the probes counted: packets, reads/writes, files reported.
    pub events: u64,
    /// Events lost, by reason (table_full, ringbuf_full), as the probes count them.
    pub lost: BTreeMap<&'static str, u64>,
}

/// Every series the exporter serves.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by: By,
    forget_after_ns: u64,
    /// In the order the reports declared them.
    held: Vec<Held>,
    pub sources: Vec<Probed>,
    /// Series dropped because their process had gone, since start.
    pub forgotten: u64,
}

impl Registry {
    pub fn new(by: By, forget_after_ns: u64, declared: &[Declared]) -> Self {
        let held = declared
            .iter()
            .map(|d| match *d {
                Declared::Counters(c) => Held::Counters(c, BTreeMap::new()),
                Declared::Histogram(f) => Held::Histogram(f, BTreeMap::new()),
            })
            .collect();
        Registry {
            by,
            forget_after_ns,
            held,
            ..Default::default()
        }
    }

    pub fn source(&mut self, report: &str) -> Option<&mut Probed> {
        self.sources.iter_mut().find(|s| s.report == report)
    }

    /// Adds `values` (one per family of `counters`) to the series of `who` on `dev`.
    pub fn count(
        &mut self,
        counters: &'static Counters,
        who: Who<'_>,
        dev: &str,
        direction: &'static str,
        values: &[u64],
        now_ns: u64,
    ) {
        let series = Series {
            pid: self.by.pid.then_some(who.pid),
            comm: self.by.comm.then(|| (who.comm.to_owned(), who.uid)),
            container: self.by.container.then(|| who.container.to_owned()),
            dev: dev.to_owned(),
            direction,
        };
        for held in &mut self.held {
            if let Held::Counters(c, map) = held {
                if std::ptr::eq(*c, counters) {
                    let n = map.entry(series).or_default();
                    n.values.resize(c.families.len(), 0);
                    for (v, add) in n.values.iter_mut().zip(values) {
                        *v += add;
                    }
                    n.seen_ns = now_ns;
                    return;
                }
            }
        }
    }

    /// Records one observation of `secs` into `family`'s histogram of `comm` (in
    /// `container`).
    pub fn observe(
        &mut self,
        family: &'static Family,
        comm: &str,
        container: &str,
        secs: f64,
        now_ns: u64,
    ) {
        let key = (
            comm.to_owned(),
            self.by.container.then(|| container.to_owned()),
        );
        for held in &mut self.held {
            if let Held::Histogram(f, map) = held {
                if std::ptr::eq(*f, family) {
                    let bounds = buckets(f);
                    let h = map.entry(key).or_default();
                    h.buckets.resize(bounds.len() + 1, 0);
                    let i = bounds
                        .iter()
                        .position(|&le| secs <= le)
                        .unwrap_or(bounds.len());
                    h.buckets[i] += 1;
                    h.sum += secs;
                    h.count += 1;
                    h.seen_ns = now_ns;
                    return;
                }
            }
        }
    }

    /// Drops series nothing added to for `forget_after`: with `--by pid` only those of
    /// processes that are gone (`alive` says which are not), so a quiet daemon keeps its
    /// counters; with `--by comm`, and for the per-command histograms, any idle one.
    pub fn forget(&mut self, now_ns: u64, alive: impl Fn(u32) -> bool) {
        let forget_after = self.forget_after_ns;
        let stale = |seen: u64| now_ns.saturating_sub(seen) >= forget_after;
        let before = self.series();
        for held in &mut self.held {
            match held {
                Held::Counters(_, map) => {
                    map.retain(|s, c| !stale(c.seen_ns) || s.pid.is_some_and(&alive))
                }
                Held::Histogram(_, map) => map.retain(|_, h| !stale(h.seen_ns)),
            }
        }
        self.forgotten += (before - self.series()) as u64;
    }

    /// Labelled series held (each histogram counts once).
    pub fn series(&self) -> usize {
        self.held
            .iter()
            .map(|h| match h {
                Held::Counters(_, m) => m.len(),
                Held::Histogram(_, m) => m.len(),
            })
            .sum()
    }

    /// The exposition text: the reports' families in the order declared, then the
    /// exporter's own.
    pub fn render(&self) -> String {
        let mut families: Vec<(&Family, Vec<Sample>)> = Vec::new();
        for held in &self.held {
            match held {
                Held::Counters(c, map) => {
                    for (i, f) in c.families.iter().enumerate() {
                        families.push((f, traffic(map, i)));
                    }
                }
                Held::Histogram(f, map) => families.push((f, histogram_samples(f, map))),
            }
        }
        families.extend(self.own_families());
        exposition::render(families)
    }

    fn own_families(&self) -> Vec<(&'static Family, Vec<Sample>)> {
        let report = |s: &Probed| ("report", s.report.to_owned());
        let events = self
            .sources
            .iter()
            .map(|s| Sample::new(vec![report(s)], s.events))
            .collect();
        let lost = self
            .sources
            .iter()
            .flat_map(|s| {
                s.lost.iter().map(move |(reason, n)| {
                    Sample::new(vec![report(s), ("reason", (*reason).into())], *n)
                })
            })
            .collect();
        let attached = self
            .sources
            .iter()
            .map(|s| {
                let labels = vec![report(s), ("method", s.method.into())];
                Sample::new(labels, s.attached as u64)
            })
            .collect();
        vec![
            (&exposition::EVENTS, events),
            (&exposition::EVENTS_LOST, lost),
            (&exposition::PROBES_ATTACHED, attached),
            (
                &exposition::SERIES,
                vec![Sample::new(vec![], self.series() as u64)],
            ),
            (
                &exposition::FORGOTTEN,
                vec![Sample::new(vec![], self.forgotten)],
            ),
        ]
    }
}

fn buckets(f: &Family) -> &'static [f64] {
    match f.kind {
        Kind::Histogram(b) => b,
        _ => &[],
    }
}

/// Value `i` of every series of a report's counters.
fn traffic(map: &BTreeMap<Series, Count>, i: usize) -> Vec<Sample> {
    map.iter()
        .map(|(s, c)| {
            let mut labels = Vec::with_capacity(6);
            if let Some(p) = s.pid {
                labels.push(("pid", p.to_string()));
            }
            if let Some((comm, uid)) = &s.comm {
                labels.extend([("comm", comm.clone()), ("uid", uid.to_string())]);
            }
            if let Some(c) = &s.container {
                labels.push(("container", c.clone()));
            }
            labels.extend([
                ("dev", s.dev.clone()),
                ("direction", s.direction.to_owned()),
            ]);
            Sample::new(labels, c.values.get(i).copied().unwrap_or(0))
        })
        .collect()
}

/// A histogram's cumulative buckets, sum and count per command.
fn histogram_samples(
    f: &Family,
    map: &BTreeMap<(String, Option<String>), Histogram>,
) -> Vec<Sample> {
    let bounds = buckets(f);
    let mut out = Vec::new();
    for ((comm, container), h) in map {
        let comm = || {
            let mut l = vec![("comm", comm.clone())];
            if let Some(c) = container {
                l.push(("container", c.clone()));
            }
            l
        };
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let mut labels = comm();
            labels.push(("le", le));
            out.push(Sample::new(labels, cumulative).suffix("_bucket"));
        }
        out.push(Sample {
            suffix: "_sum",
            labels: comm(),
            value: float(h.sum),
        });
        out.push(Sample::new(comm(), h.count).suffix("_count"));
    }
    out
}
