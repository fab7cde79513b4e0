//! Pure: per-CPU counter maps drained from the kernel → the rows of one report.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::runtime::{cgroup::Named, shown::Name};
use probes_common::nettop::{NetConn, NetCounters, NetKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub pid: u32,
    pub uid: u32,
    pub dev: Name,
    pub comm: Name,
    pub xmit_packets: u64,
    pub recv_packets: u64,
    pub xmit_bytes: u64,
    pub recv_bytes: u64,
    /// The task's cgroup v2 id, and its path and container (filled in before output).
    pub cgroup: u64,
    pub cg: Named,
    /// With `--connections`: the connection, and whether it is new in this interval
    /// ([`NewConnections`]). Zero and false otherwise.
    pub conn: NetConn,
    pub new: bool,
}

impl Row {
    /// KB as the seed computes it: bytes / 1024, rounded down.
    pub fn xmit_kb(&self) -> u64 {
        self.xmit_bytes / 1024
    }

    pub fn recv_kb(&self) -> u64 {
        self.recv_bytes / 1024
    }

    /// The protocol's name (`tcp`, `udp`, `icmp`, ...), its number if it has none here, or
    /// None for a packet that is not IP.
    pub fn proto(&self) -> Option<String> {
        if self.conn.family == 0 {
            return None;
        }
        Some(match self.conn.proto {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "icmpv6".into(),
            132 => "sctp".into(),
            p => p.to_string(),
        })
    }

    /// The local address (None: not IP).
    pub fn laddr(&self) -> Option<IpAddr> {
        addr(self.conn.family, &self.conn.laddr)
    }

    /// The remote address (None: not IP, or a UDP socket's datagrams from several peers
    /// read together).
    pub fn raddr(&self) -> Option<IpAddr> {
        if self.conn.mixed != 0 {
            return None;
        }
        addr(self.conn.family, &self.conn.raddr)
    }

    /// Ports exist for TCP, UDP and SCTP.
    fn has_ports(&self) -> bool {
        matches!(self.conn.proto, 6 | 17 | 132)
    }

    pub fn lport(&self) -> Option<u16> {
        (self.laddr().is_some() && self.has_ports()).then_some(self.conn.lport)
    }

    pub fn rport(&self) -> Option<u16> {
        (self.raddr().is_some() && self.has_ports()).then_some(self.conn.rport)
    }

    /// `addr:port` (`[v6]:port`), the address alone without ports, `-` when not IP, `*`
    /// for a remote end that is not known.
    pub fn local(&self) -> String {
        endpoint(self.conn.family, self.laddr(), self.lport())
    }

    pub fn remote(&self) -> String {
        endpoint(self.conn.family, self.raddr(), self.rport())
    }
}

fn addr(family: u8, a: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*a))),
        _ => None,
    }
}

fn endpoint(family: u8, addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (None, _) if family == 0 => "-".into(),
        (None, _) => "*".into(),
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
    }
}

/// Which rows of `--connections` are new. A TCP connection is new in the interval its
/// handshake completed in (the kernel notes each, at either end); a flow of another
/// protocol is new the first time a process has a row for it, after the first interval
/// (which cannot tell) and unless it was seen in the last [`FLOW_MEMORY`] intervals.
#[derive(Default)]
pub struct NewConnections {
    /// TCP connections established and not yet shown, with the intervals since.
    established: HashMap<NetConn, u32>,
    /// Other flows by process, with the interval each was last seen in.
    seen: HashMap<(u32, NetConn), u64>,
    interval: u64,
}

/// Intervals a flow of a protocol without connections is remembered after it was last
/// seen; and how long an established TCP connection waits for its first row.
pub const FLOW_MEMORY: u64 = 60;
const ESTABLISHED_WAIT: u32 = 3;

impl NewConnections {
    /// Marks `rows` (one interval's, all of them) new or not; `established`: the TCP
    /// connections the kernel saw established since the last call.
    pub fn mark(&mut self, rows: &mut [Row], established: impl IntoIterator<Item = NetConn>) {
        for c in established {
            self.established.insert(c, 0);
        }
        let mut shown = HashSet::new();
        for r in rows.iter_mut() {
            let tuple = NetConn { mixed: 0, ..r.conn };
            if r.conn.proto == 6 {
                r.new = self.established.contains_key(&tuple);
                if r.new {
                    shown.insert(tuple);
                }
            } else if r.conn.family != 0 {
                let last = self.seen.insert((r.pid, tuple), self.interval);
                r.new = self.interval > 0 && last.is_none_or(|l| self.interval - l > FLOW_MEMORY);
            }
        }
        self.established.retain(|c, age| {
            !shown.contains(c) && {
                *age += 1;
                *age <= ESTABLISHED_WAIT
            }
        });
        let now = self.interval;
        self.seen.retain(|_, last| now - *last <= FLOW_MEMORY);
        self.interval += 1;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SortKey {
    XmitPk,
    #[default]
    RecvPk,
    XmitKb,
    RecvKb,
    Pid,
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub who: crate::report::ProcessFilter,
    /// Matches this device name exactly.
    pub dev: Option<String>,
}

impl Filter {
    fn keeps(&self, row: &Row) -> bool {
        self.who.matches(row.pid, row.uid, &row.comm)
            && self.dev.as_deref().is_none_or(|d| row.dev == d)
    }
}

/// One interval's rows: every one the probes counted, or (after [`view`]) those a report
/// shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub rows: Vec<Row>,
}

/// Sums per-CPU values (`entries` holds one element per key and CPU, in any order) and
/// turns them into rows: every process and device that sent or received, unsorted.
pub fn rows(entries: impl IntoIterator<Item = (NetKey, NetCounters)>) -> Snapshot {
    let mut sums: BTreeMap<NetKey, NetCounters> = BTreeMap::new();
    for (k, v) in entries {
        let s = sums.entry(k).or_default();
        s.xmit_packets += v.xmit_packets;
        s.xmit_bytes += v.xmit_bytes;
        s.recv_packets += v.recv_packets;
        s.recv_bytes += v.recv_bytes;
    }
    let rows = sums
        .into_iter()
        .filter(|(_, v)| v.xmit_packets + v.recv_packets > 0)
        .map(|(k, v)| Row {
            pid: k.pid,
            uid: k.uid,
            dev: Name::from_c(&k.dev),
            comm: Name::from_c(&k.comm),
            xmit_packets: v.xmit_packets,
            recv_packets: v.recv_packets,
            xmit_bytes: v.xmit_bytes,
            recv_bytes: v.recv_bytes,
            cgroup: k.cgroup,
            cg: Named::default(),
            conn: k.conn,
            new: false,
        })
        .collect();
    Snapshot { rows }
}

/// The rows one report shows: filtered, sorted and cut to `limit`.
pub fn view(all: Snapshot, filter: &Filter, sort: SortKey, limit: Option<usize>) -> Snapshot {
    let mut rows: Vec<Row> = all.rows.into_iter().filter(|r| filter.keeps(r)).collect();
    // Largest first for the counters; ties broken so the order is stable between runs.
    let tie = |a: &Row, b: &Row| {
        (a.pid, &a.dev, &a.comm, a.uid, a.conn).cmp(&(b.pid, &b.dev, &b.comm, b.uid, b.conn))
    };
    rows.sort_by(|a, b| {
        let primary = match sort {
            SortKey::XmitPk => b.xmit_packets.cmp(&a.xmit_packets),
            SortKey::RecvPk => b.recv_packets.cmp(&a.recv_packets),
            SortKey::XmitKb => b.xmit_bytes.cmp(&a.xmit_bytes),
            SortKey::RecvKb => b.recv_bytes.cmp(&a.recv_bytes),
            SortKey::Pid => std::cmp::Ordering::Equal,
        };
        primary.then_with(|| tie(a, b))
    });
    if let Some(n) = limit {
        rows.truncate(n);
    }
    Snapshot { rows }
}

/// [`rows`] then [`view`]: one report from what was drained.
#[cfg(test)]
pub fn snapshot(
    entries: impl IntoIterator<Item = (NetKey, NetCounters)>,
    filter: &Filter,
    sort: SortKey,
    limit: Option<usize>,
) -> Snapshot {
    view(rows(entries), filter, sort, limit)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn key(pid: u32, uid: u32, dev: &str, comm: &str) -> NetKey {
        let mut k = NetKey {
            pid,
            uid,
            ..Default::default()
        };
        k.dev[..dev.len()].copy_from_slice(dev.as_bytes());
        k.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        k
    }

    pub fn counters(xp: u64, xb: u64, rp: u64, rb: u64) -> NetCounters {
        NetCounters {
            xmit_packets: xp,
            xmit_bytes: xb,
            recv_packets: rp,
            recv_bytes: rb,
        }
    }

    fn sample() -> Vec<(NetKey, NetCounters)> {
        vec![
            // httpd seen on two CPUs: summed.
            (key(15337, 48, "eth0", "httpd"), counters(3, 4000, 2, 100)),
            (key(15337, 48, "eth0", "httpd"), counters(1, 1200, 3, 150)),
            (key(31485, 500, "eth0", "sshd"), counters(1, 90, 1, 60)),
            (key(9, 0, "lo", "chronyd"), counters(7, 700, 0, 0)),
            // Empty slot left by a reset: not a row.
            (key(1, 0, "lo", "init"), counters(0, 0, 0, 0)),
        ]
    }

    fn pids(s: &Snapshot) -> Vec<u32> {
        s.rows.iter().map(|r| r.pid).collect()
    }

    #[test]
    fn sums_cpus_and_sorts_by_recv_packets() {
        let s = snapshot(sample(), &Filter::default(), SortKey::RecvPk, None);
        assert_eq!(pids(&s), [15337, 31485, 9]);
        let httpd = &s.rows[0];
        assert_eq!((httpd.xmit_packets, httpd.recv_packets), (4, 5));
        assert_eq!((httpd.xmit_bytes, httpd.recv_bytes), (5200, 250));
        assert_eq!((httpd.xmit_kb(), httpd.recv_kb()), (5, 0));
    }

    #[test]
    fn other_sort_keys() {
        let f = Filter::default();
        assert_eq!(
            pids(&snapshot(sample(), &f, SortKey::XmitPk, None)),
            [9, 15337, 31485]
        );
        assert_eq!(
            pids(&snapshot(sample(), &f, SortKey::XmitKb, None)),
            [15337, 9, 31485]
        );
        assert_eq!(
            pids(&snapshot(sample(), &f, SortKey::RecvKb, None)),
            [15337, 31485, 9]
        );
        assert_eq!(
            pids(&snapshot(sample(), &f, SortKey::Pid, None)),
            [9, 15337, 31485]
        );
    }

    #[test]
    fn filters_and_limit() {
        use crate::report::ProcessFilter;
        let by = |f: Filter| pids(&snapshot(sample(), &f, SortKey::RecvPk, None));
        assert_eq!(
            by(Filter {
                who: ProcessFilter {
                    pid: Some(31485),
                    ..Default::default()
                },
                ..Default::default()
            }),
            [31485]
        );
        assert_eq!(
            by(Filter {
                who: ProcessFilter {
                    uid: Some(0),
                    ..Default::default()
                },
                ..Default::default()
            }),
            [9]
        );
        assert_eq!(
            by(Filter {
                who: ProcessFilter {
                    comm: Some("http".into()),
                    ..Default::default()
                },
                ..Default::default()
            }),
            [15337]
        );
        assert_eq!(
            by(Filter {
                dev: Some("lo".into()),
                ..Default::default()
            }),
            [9]
        );
        assert_eq!(
            by(Filter {
                dev: Some("eth".into()),
                ..Default::default()
            }),
            [] as [u32; 0]
        );
        let s = snapshot(sample(), &Filter::default(), SortKey::RecvPk, Some(2));
        assert_eq!(pids(&s), [15337, 31485]);
    }

    #[test]
    fn kb_rounds_down() {
        let row = |bytes| Row {
            pid: 1,
            uid: 0,
            dev: "lo".into(),
            comm: "x".into(),
            xmit_packets: 1,
            recv_packets: 1,
            xmit_bytes: bytes,
            recv_bytes: bytes,
            cgroup: 1,
            cg: Named::default(),
            conn: NetConn::default(),
            new: false,
        };
        assert_eq!(row(0).xmit_kb(), 0);
        assert_eq!(row(1023).xmit_kb(), 0);
        assert_eq!(row(1024).recv_kb(), 1);
        assert_eq!(row(2047).recv_kb(), 1);
        assert_eq!(row(1_048_576).xmit_kb(), 1024);
    }
}
