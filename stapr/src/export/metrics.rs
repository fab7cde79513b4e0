//! Pure: what the reports' probes counted, accumulated into Prometheus counters and a
//! histogram, with bounded label sets, and rendered in the text exposition format 0.0.4.

use std::{collections::BTreeMap, fmt::Write as _};

use probes_common::{
    c_bytes,
    disktop::{DiskCounters, DiskKey},
    nettop::{NetCounters, NetKey},
};

use crate::report::Report;

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

/// Upper bounds (seconds) of the `stapr_file_open_seconds` buckets; `+Inf` follows.
pub const FILE_BUCKETS: [f64; 11] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
];

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    packets: u64,
    bytes: u64,
    /// Monotonic ns of the last change.
    seen_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    /// Non-cumulative counts per bucket of `FILE_BUCKETS`, then the overflow bucket.
    buckets: [u64; FILE_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
    seen_ns: u64,
}

/// One report's probes as the exporter runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub report: Report,
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
    net: BTreeMap<Series, Count>,
    disk: BTreeMap<Series, Count>,
    /// Per command (and container, `--by ...,container`).
    files: BTreeMap<(String, Option<String>), Histogram>,
    pub sources: Vec<Source>,
    /// Series dropped because their process had gone, since start.
    pub forgotten: u64,
}

fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(c_bytes(raw)).into_owned()
}

impl Registry {
    pub fn new(by: By, forget_after_ns: u64) -> Self {
        Registry {
            by,
            forget_after_ns,
            ..Default::default()
        }
    }

    fn pid(&self, pid: u32) -> Option<u32> {
        self.by.pid.then_some(pid)
    }

    fn comm(&self, comm: &[u8], uid: u32) -> Option<(String, u32)> {
        self.by.comm.then(|| (text(comm), uid))
    }

    fn container(&self, cgroup: u64, name: &mut impl FnMut(u64) -> String) -> Option<String> {
        self.by.container.then(|| name(cgroup))
    }

    pub fn source(&mut self, report: Report) -> Option<&mut Source> {
        self.sources.iter_mut().find(|s| s.report == report)
    }

    /// Adds nettop's drained entries (one per key and CPU); `container` names a cgroup id.
    pub fn add_net(
        &mut self,
        entries: &[(NetKey, NetCounters)],
        mut container: impl FnMut(u64) -> String,
        now_ns: u64,
    ) {
        let mut events = 0;
        for (k, c) in entries {
            for (direction, packets, bytes) in [
                ("transmit", c.xmit_packets, c.xmit_bytes),
                ("receive", c.recv_packets, c.recv_bytes),
            ] {
                if packets == 0 {
                    continue;
                }
                events += packets;
                let series = Series {
                    pid: self.pid(k.pid),
                    comm: self.comm(&k.comm, k.uid),
                    container: self.container(k.cgroup, &mut container),
                    dev: text(&k.dev),
                    direction,
                };
                let n = self.net.entry(series).or_default();
                n.packets += packets;
                n.bytes += bytes;
                n.seen_ns = now_ns;
            }
        }
        if let Some(s) = self.source(Report::Nettop) {
            s.events += events;
        }
    }

    /// Adds disktop's drained entries; `dev_name` names a device number, `container` a
    /// cgroup id.
    pub fn add_disk(
        &mut self,
        entries: &[(DiskKey, DiskCounters)],
        mut dev_name: impl FnMut(u32, u32) -> String,
        mut container: impl FnMut(u64) -> String,
        now_ns: u64,
    ) {
        let mut events = 0;
        for (k, c) in entries {
            events += c.calls;
            for (direction, bytes) in [("read", c.read_bytes), ("write", c.write_bytes)] {
                if bytes == 0 {
                    continue;
                }
                let series = Series {
                    pid: self.pid(k.pid),
                    comm: self.comm(&k.comm, k.uid),
                    container: self.container(k.cgroup, &mut container),
                    dev: dev_name(k.dev, k.pid),
                    direction,
                };
                let n = self.disk.entry(series).or_default();
                n.bytes += bytes;
                n.seen_ns = now_ns;
            }
        }
        if let Some(s) = self.source(Report::Disktop) {
            s.events += events;
        }
    }

    /// Records a file `comm` (in cgroup `cgroup`, which `container` names) held open for
    /// `held_ns`.
    pub fn observe_file(
        &mut self,
        comm: &str,
        cgroup: u64,
        mut container: impl FnMut(u64) -> String,
        held_ns: u64,
        now_ns: u64,
    ) {
        let secs = held_ns as f64 / 1e9;
        let key = (comm.to_owned(), self.container(cgroup, &mut container));
        let h = self.files.entry(key).or_default();
        let i = FILE_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(FILE_BUCKETS.len());
        h.buckets[i] += 1;
        h.sum += secs;
        h.count += 1;
        h.seen_ns = now_ns;
        if let Some(s) = self.source(Report::Slowopen) {
            s.events += 1;
        }
    }

    /// Drops series nothing added to for `forget_after`: with `--by pid` only those of
    /// processes that are gone (`alive` says which are not), so a quiet daemon keeps its
    /// counters; with `--by comm`, and for the per-command histogram, any idle one.
    pub fn forget(&mut self, now_ns: u64, alive: impl Fn(u32) -> bool) {
        let stale = |seen: u64| now_ns.saturating_sub(seen) >= self.forget_after_ns;
        let before = self.series();
        for map in [&mut self.net, &mut self.disk] {
            map.retain(|s, c| !stale(c.seen_ns) || s.pid.is_some_and(&alive));
        }
        self.files.retain(|_, h| !stale(h.seen_ns));
        self.forgotten += (before - self.series()) as u64;
    }

    /// Labelled series held (each histogram counts once).
    pub fn series(&self) -> usize {
        self.net.len() + self.disk.len() + self.files.len()
    }

    /// The exposition text: every family with its samples, in [`Registry::families`]
    /// order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (f, samples) in self.families() {
            let _ = writeln!(
                out,
                "# HELP {0} {1}\n# TYPE {0} {2}",
                f.name, f.help, f.kind
            );
            for s in samples {
                out.push_str(f.name);
                out.push_str(s.suffix);
                if !s.labels.is_empty() {
                    let labels: Vec<String> = s
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                        .collect();
                    let _ = write!(out, "{{{}}}", labels.join(","));
                }
                let _ = writeln!(out, " {}", s.value);
            }
        }
        out
    }

    fn families(&self) -> Vec<(&'static Family, Vec<Sample>)> {
        let per_source = |value: fn(&Source) -> u64| -> Vec<Sample> {
            self.sources
                .iter()
                .map(|s| Sample::new(vec![("report", s.report.name().into())], value(s)))
                .collect()
        };
        let lost = self
            .sources
            .iter()
            .flat_map(|s| {
                s.lost.iter().map(|(reason, n)| {
                    let labels = vec![
                        ("report", s.report.name().into()),
                        ("reason", (*reason).into()),
                    ];
                    Sample::new(labels, *n)
                })
            })
            .collect();
        let attached = self
            .sources
            .iter()
            .map(|s| {
                let labels = vec![
                    ("report", s.report.name().into()),
                    ("method", s.method.into()),
                ];
                Sample::new(labels, s.attached as u64)
            })
            .collect();
        vec![
            (&NET_PACKETS, self.traffic(&self.net, |c| c.packets)),
            (&NET_BYTES, self.traffic(&self.net, |c| c.bytes)),
            (&DISK_BYTES, self.traffic(&self.disk, |c| c.bytes)),
            (&FILE_OPEN, self.file_samples()),
            (&EVENTS, per_source(|s| s.events)),
            (&EVENTS_LOST, lost),
            (&PROBES_ATTACHED, attached),
            (&SERIES, vec![Sample::new(vec![], self.series() as u64)]),
            (&FORGOTTEN, vec![Sample::new(vec![], self.forgotten)]),
        ]
    }

    fn traffic(&self, map: &BTreeMap<Series, Count>, value: fn(&Count) -> u64) -> Vec<Sample> {
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
                Sample::new(labels, value(c))
            })
            .collect()
    }

    /// The histogram's cumulative buckets, sum and count per command.
    fn file_samples(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        for ((comm, container), h) in &self.files {
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
                let le = FILE_BUCKETS
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
}

/// A metric family's name, help text and type.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

const NET_PACKETS: Family = Family {
    name: "stapr_net_packets_total",
    help: "Packets sent (transmit) and received (receive) per process and network device; receives are charged to the task running when the kernel processed them.",
    kind: "counter",
};
const NET_BYTES: Family = Family {
    name: "stapr_net_bytes_total",
    help: "Bytes (skb length) sent and received per process and network device.",
    kind: "counter",
};
const DISK_BYTES: Family = Family {
    name: "stapr_disk_bytes_total",
    help: "Bytes read and written per process and block device (read/write calls on files of a block device, page cache hits included).",
    kind: "counter",
};
const FILE_OPEN: Family = Family {
    name: "stapr_file_open_seconds",
    help: "How long files were held open, per command, observed when they were closed (files held at least --file-min).",
    kind: "histogram",
};
const EVENTS: Family = Family {
    name: "stapr_events_total",
    help: "Events the probes counted: packets (nettop), reads and writes (disktop), files reported closed (slowopen).",
    kind: "counter",
};
const EVENTS_LOST: Family = Family {
    name: "stapr_events_lost_total",
    help: "Events the probes could not count, by reason (table_full: an in-kernel table was full; ringbuf_full: the ring buffer was).",
    kind: "counter",
};
const PROBES_ATTACHED: Family = Family {
    name: "stapr_probes_attached",
    help: "Probes attached in the kernel, per report and method.",
    kind: "gauge",
};
const SERIES: Family = Family {
    name: "stapr_series",
    help: "Labelled series this exporter holds (a histogram counts once).",
    kind: "gauge",
};
const FORGOTTEN: Family = Family {
    name: "stapr_series_forgotten_total",
    help: "Series dropped because their process had gone (or, --by comm, they were idle) for --forget-after.",
    kind: "counter",
};

/// One line of a family: the name's suffix (`_bucket`...), labels and value.
struct Sample {
    suffix: &'static str,
    labels: Vec<(&'static str, String)>,
    value: String,
}

impl Sample {
    fn new(labels: Vec<(&'static str, String)>, value: u64) -> Self {
        Sample {
            suffix: "",
            labels,
            value: value.to_string(),
        }
    }

    fn suffix(mut self, suffix: &'static str) -> Self {
        self.suffix = suffix;
        self
    }
}

/// A label value as the exposition format wants it: `\`, `"` and newline escaped.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A float as Prometheus prints one: shortest exact form, no exponent surprises.
fn float(v: f64) -> String {
    let s = v.to_string();
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        s + ".0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net_key(pid: u32, comm: &str, dev: &str) -> NetKey {
        let mut k = NetKey {
            pid,
            uid: 33,
            ..Default::default()
        };
        k.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        k.dev[..dev.len()].copy_from_slice(dev.as_bytes());
        k
    }

    fn net(xp: u64, xb: u64, rp: u64, rb: u64) -> NetCounters {
        NetCounters {
            xmit_packets: xp,
            xmit_bytes: xb,
            recv_packets: rp,
            recv_bytes: rb,
        }
    }

    fn disk_key(pid: u32, comm: &str, dev: u32) -> DiskKey {
        let mut k = DiskKey {
            pid,
            ppid: 1,
            uid: 0,
            dev,
            ..Default::default()
        };
        k.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        k
    }

    fn sources() -> Vec<Source> {
        [Report::Nettop, Report::Disktop, Report::Slowopen]
            .into_iter()
            .zip(["tp_btf", "syscalls", "tracepoint"])
            .map(|(report, method)| Source {
                report,
                method,
                attached: 2,
                events: 0,
                lost: [("table_full", 0)].into_iter().collect(),
            })
            .collect()
    }

    fn registry(by: By) -> Registry {
        let mut r = Registry::new(by, 60_000_000_000);
        r.sources = sources();
        r.add_net(
            &[
                (net_key(10, "httpd", "eth0"), net(3, 3000, 0, 0)),
                (net_key(10, "httpd", "eth0"), net(1, 500, 2, 120)), // another CPU
                (net_key(11, "httpd", "eth0"), net(0, 0, 1, 60)),
            ],
            |_| "web".into(),
            5,
        );
        r.add_disk(
            &[(
                disk_key(12, "postgres", 8 << 20),
                DiskCounters {
                    read_bytes: 4096,
                    write_bytes: 0,
                    calls: 1,
                },
            )],
            |_, _| "sda".into(),
            |_| "web".into(),
            5,
        );
        r.observe_file("vsftpd", 1, |_| "web".into(), 2_500_000_000, 5);
        r.observe_file("vsftpd", 1, |_| "web".into(), 20_000_000, 5);
        r
    }

    #[test]
    fn exposition_golden() {
        let text = registry(By::PID).render();
        let golden = r#"# HELP stapr_net_packets_total Packets sent (transmit) and received (receive) per process and network device; receives are charged to the task running when the kernel processed them.
# TYPE stapr_net_packets_total counter
stapr_net_packets_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="receive"} 2
stapr_net_packets_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="transmit"} 4
stapr_net_packets_total{pid="11",comm="httpd",uid="33",dev="eth0",direction="receive"} 1
# HELP stapr_net_bytes_total Bytes (skb length) sent and received per process and network device.
# TYPE stapr_net_bytes_total counter
stapr_net_bytes_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="receive"} 120
stapr_net_bytes_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="transmit"} 3500
stapr_net_bytes_total{pid="11",comm="httpd",uid="33",dev="eth0",direction="receive"} 60
# HELP stapr_disk_bytes_total Bytes read and written per process and block device (read/write calls on files of a block device, page cache hits included).
# TYPE stapr_disk_bytes_total counter
stapr_disk_bytes_total{pid="12",comm="postgres",uid="0",dev="sda",direction="read"} 4096
# HELP stapr_file_open_seconds How long files were held open, per command, observed when they were closed (files held at least --file-min).
# TYPE stapr_file_open_seconds histogram
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.01"} 0
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.05"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.1"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.5"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="1"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="5"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="10"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="60"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="300"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="1800"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="3600"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="+Inf"} 2
stapr_file_open_seconds_sum{comm="vsftpd"} 2.52
stapr_file_open_seconds_count{comm="vsftpd"} 2
# HELP stapr_events_total Events the probes counted: packets (nettop), reads and writes (disktop), files reported closed (slowopen).
# TYPE stapr_events_total counter
stapr_events_total{report="nettop"} 7
stapr_events_total{report="disktop"} 1
stapr_events_total{report="slowopen"} 2
# HELP stapr_events_lost_total Events the probes could not count, by reason (table_full: an in-kernel table was full; ringbuf_full: the ring buffer was).
# TYPE stapr_events_lost_total counter
stapr_events_lost_total{report="nettop",reason="table_full"} 0
stapr_events_lost_total{report="disktop",reason="table_full"} 0
stapr_events_lost_total{report="slowopen",reason="table_full"} 0
# HELP stapr_probes_attached Probes attached in the kernel, per report and method.
# TYPE stapr_probes_attached gauge
stapr_probes_attached{report="nettop",method="tp_btf"} 2
stapr_probes_attached{report="disktop",method="syscalls"} 2
stapr_probes_attached{report="slowopen",method="tracepoint"} 2
# HELP stapr_series Labelled series this exporter holds (a histogram counts once).
# TYPE stapr_series gauge
stapr_series 5
# HELP stapr_series_forgotten_total Series dropped because their process had gone (or, --by comm, they were idle) for --forget-after.
# TYPE stapr_series_forgotten_total counter
stapr_series_forgotten_total 0
"#;
        assert_eq!(text, golden);
    }

    #[test]
    fn by_comm_drops_the_pid_label() {
        let text = registry(By::COMM).render();
        assert!(text.contains(
            "stapr_net_packets_total{comm=\"httpd\",uid=\"33\",dev=\"eth0\",direction=\"receive\"} 3\n"
        ));
        assert!(!text.contains("pid=\""));
    }

    #[test]
    fn forgets_gone_processes_after_the_delay() {
        let mut r = registry(By::PID);
        let minute = 60_000_000_000;
        // Everyone is gone, but not for long enough yet.
        r.forget(minute, |_| false);
        assert_eq!(r.series(), 5);
        // pid 10 lives on, quiet: kept. 11, 12 and the idle histogram go.
        r.forget(minute + 10, |pid| pid == 10);
        assert_eq!(r.series(), 2);
        assert_eq!(r.forgotten, 3);
        let text = r.render();
        assert!(text.contains("pid=\"10\""));
        assert!(!text.contains("pid=\"11\""));
        assert!(!text.contains("vsftpd"));
        // --by comm: idle series go whatever `alive` says.
        let mut c = registry(By::COMM);
        c.forget(minute + 10, |_| true);
        assert_eq!(c.series(), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(float(2.0), "2.0");
        assert_eq!(float(2.52), "2.52");
    }
}
