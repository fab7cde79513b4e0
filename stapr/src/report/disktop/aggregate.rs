//! Pure: per-CPU counters drained from the kernel → one disktop report.

use std::collections::BTreeMap;

use probes_common::disktop::{DiskCounters, DiskKey};

use super::devices::Device;
use crate::runtime::{cgroup::Named, shown::Name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    Read,
    Write,
}

impl Dir {
    pub fn letter(self) -> &'static str {
        match self {
            Dir::Read => "R",
            Dir::Write => "W",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub uid: u32,
    pub pid: u32,
    pub ppid: u32,
    pub comm: Name,
    pub device: String,
    /// The filesystem type on the device, when known (JSON only).
    pub fstype: Option<String>,
    pub dir: Dir,
    pub bytes: u64,
    /// The task's cgroup v2 id, and its path and container (filled in before output).
    pub cgroup: u64,
    pub cg: Named,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SortKey {
    #[default]
    Bytes,
    Pid,
}

pub type Filter = crate::report::ProcessFilter;

/// One interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Totals over every counted row, before the top-N cut.
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub interval_ms: u64,
    pub rows: Vec<Row>,
}

impl Snapshot {
    /// (read + write) KB per second, as the seed: KB / interval, rounded down.
    pub fn average_kb_per_sec(&self) -> u64 {
        (self.read_bytes + self.write_bytes) / 1024 * 1000 / self.interval_ms.max(1)
    }
}

/// What the probes counted in one interval: a row per process, device and direction
/// (unfiltered, unsorted), and the read/write calls behind them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counted {
    pub rows: Vec<Row>,
    pub calls: u64,
}

/// Sums per-CPU values and splits each key into an R and a W row.
pub fn rows(
    entries: impl IntoIterator<Item = (DiskKey, DiskCounters)>,
    mut device_name: impl FnMut(u32, u32) -> Device,
) -> Counted {
    let mut sums: BTreeMap<DiskKey, DiskCounters> = BTreeMap::new();
    for (k, v) in entries {
        let s = sums.entry(k).or_default();
        s.read_bytes += v.read_bytes;
        s.write_bytes += v.write_bytes;
        s.calls += v.calls;
    }
    let mut out = Counted::default();
    for (k, v) in sums {
        out.calls += v.calls;
        if v.read_bytes + v.write_bytes == 0 {
            continue;
        }
        let comm = Name::from_c(&k.comm);
        let dev = device_name(k.dev, k.pid);
        for (dir, bytes) in [(Dir::Read, v.read_bytes), (Dir::Write, v.write_bytes)] {
            if bytes > 0 {
                out.rows.push(Row {
                    uid: k.uid,
                    pid: k.pid,
                    ppid: k.ppid,
                    comm: comm.clone(),
                    device: dev.name.clone(),
                    fstype: dev.fstype.clone(),
                    dir,
                    bytes,
                    cgroup: k.cgroup,
                    cg: Named::default(),
                });
            }
        }
    }
    out
}

/// One report: the rows `filter` keeps, their totals, sorted and cut to `limit`. None
/// when the interval saw no I/O (the seed prints nothing then).
pub fn view(
    all: Counted,
    filter: &Filter,
    sort: SortKey,
    limit: usize,
    interval_ms: u64,
) -> Option<Snapshot> {
    let mut rows: Vec<Row> = all
        .rows
        .into_iter()
        .filter(|r| filter.matches(r.pid, r.uid, &r.comm))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let (mut read, mut write) = (0, 0);
    for r in &rows {
        match r.dir {
            Dir::Read => read += r.bytes,
            Dir::Write => write += r.bytes,
        }
    }
    let tie = |a: &Row, b: &Row| {
        (a.pid, &a.device, a.dir, &a.comm).cmp(&(b.pid, &b.device, b.dir, &b.comm))
    };
    rows.sort_by(|a, b| match sort {
        SortKey::Bytes => b.bytes.cmp(&a.bytes).then_with(|| tie(a, b)),
        SortKey::Pid => tie(a, b),
    });
    rows.truncate(limit);
    Some(Snapshot {
        read_bytes: read,
        write_bytes: write,
        interval_ms,
        rows,
    })
}

/// [`rows`] then [`view`]: one report from what was drained.
#[cfg(test)]
pub fn snapshot(
    entries: impl IntoIterator<Item = (DiskKey, DiskCounters)>,
    device_name: impl FnMut(u32, u32) -> Device,
    filter: &Filter,
    sort: SortKey,
    limit: usize,
    interval_ms: u64,
) -> Option<Snapshot> {
    view(rows(entries, device_name), filter, sort, limit, interval_ms)
}

/// The kernel's dev_t encoding: major in the high 12 bits, minor in the low 20.
pub fn major_minor(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn key(pid: u32, ppid: u32, uid: u32, dev: u32, comm: &str) -> DiskKey {
        let mut k = DiskKey {
            pid,
            ppid,
            uid,
            dev,
            ..Default::default()
        };
        k.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        k
    }

    pub fn counts(r: u64, w: u64) -> DiskCounters {
        DiskCounters {
            read_bytes: r,
            write_bytes: w,
            calls: 1,
        }
    }

    pub fn names(dev: u32, _pid: u32) -> Device {
        let (name, fstype) = match major_minor(dev) {
            (253, 0) => ("dm-0".into(), Some("xfs")),
            (254, 0) => ("vda".into(), Some("ext4")),
            (0, 53) => ("nfs1:/export/www".into(), Some("nfs4")),
            (maj, min) => (format!("{maj}:{min}"), None),
        };
        Device {
            name,
            fstype: fstype.map(Into::into),
        }
    }

    /// The seed's view of `entries`: every process, by bytes, 10 rows, a 5 s interval.
    pub fn snap(entries: impl IntoIterator<Item = (DiskKey, DiskCounters)>) -> Option<Snapshot> {
        snapshot(entries, names, &Filter::default(), SortKey::Bytes, 10, 5000)
    }

    const DM0: u32 = 253 << 20;
    const VDA: u32 = 254 << 20;

    fn sample() -> Vec<(DiskKey, DiskCounters)> {
        vec![
            (key(15342, 15239, 48, DM0, "httpd"), counts(0, 150)),
            (key(15342, 15239, 48, DM0, "httpd"), counts(0, 60)), // another CPU
            (key(15343, 15239, 48, DM0, "httpd"), counts(4096, 210)),
            (key(900, 1, 0, VDA, "rsync"), counts(1 << 20, 3 << 20)),
        ]
    }

    #[test]
    fn rows_per_direction_sorted_by_bytes() {
        let s = snap(sample()).unwrap();
        let got: Vec<_> = s
            .rows
            .iter()
            .map(|r| (r.pid, r.device.as_str(), r.dir, r.bytes))
            .collect();
        assert_eq!(
            got,
            [
                (900, "vda", Dir::Write, 3 << 20),
                (900, "vda", Dir::Read, 1 << 20),
                (15343, "dm-0", Dir::Read, 4096),
                (15342, "dm-0", Dir::Write, 210),
                (15343, "dm-0", Dir::Write, 210),
            ]
        );
        assert_eq!(s.read_bytes, (1 << 20) + 4096);
        assert_eq!(s.write_bytes, (3 << 20) + 420);
    }

    #[test]
    fn average_and_kb_rounding() {
        let s = snap(sample()).unwrap();
        // (1 MiB + 4096 + 3 MiB + 420) B = 4100 KB (rounded down) over 5 s.
        assert_eq!(s.average_kb_per_sec(), 820);
        let one = snapshot(
            vec![(key(1, 0, 0, VDA, "x"), counts(1023, 0))],
            names,
            &Filter::default(),
            SortKey::Bytes,
            10,
            1000,
        )
        .unwrap();
        assert_eq!(one.average_kb_per_sec(), 0);
    }

    #[test]
    fn top_n_cut_keeps_totals_of_everything() {
        let s = snapshot(sample(), names, &Filter::default(), SortKey::Bytes, 2, 5000).unwrap();
        assert_eq!(s.rows.len(), 2);
        assert_eq!(s.read_bytes, (1 << 20) + 4096);
    }

    #[test]
    fn sort_by_pid_and_filters() {
        let s = snapshot(sample(), names, &Filter::default(), SortKey::Pid, 10, 5000).unwrap();
        let pids: Vec<_> = s.rows.iter().map(|r| r.pid).collect();
        assert_eq!(pids, [900, 900, 15342, 15343, 15343]);
        let f = Filter {
            uid: Some(48),
            comm: Some("ttp".into()),
            ..Default::default()
        };
        let s = snapshot(sample(), names, &f, SortKey::Bytes, 10, 5000).unwrap();
        assert!(s.rows.iter().all(|r| r.comm == "httpd"));
        assert_eq!(s.read_bytes, 4096);
        let f = Filter {
            pid: Some(1),
            ..Default::default()
        };
        assert_eq!(
            snapshot(sample(), names, &f, SortKey::Bytes, 10, 5000),
            None
        );
    }

    #[test]
    fn no_io_no_report() {
        assert_eq!(snap(vec![]), None);
        let zero = vec![(key(1, 0, 0, VDA, "x"), counts(0, 0))];
        assert_eq!(snap(zero), None);
    }
}
