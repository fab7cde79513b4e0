//! Pure: a snapshot → the seed's text table, or JSON.

use std::fmt::Display;

use super::aggregate::{Row, Snapshot};
use crate::report::containers::column;

/// What a text report shows beside the seed's columns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns {
    /// `--containers`: CONTAINER before COMMAND.
    pub containers: bool,
    /// `--connections`: PROTO, LOCAL, REMOTE and NEW after DEV.
    pub connections: bool,
}

/// The narrowest LOCAL and REMOTE columns (`255.255.255.255:65535`).
const ENDPOINT_WIDTH: usize = 21;

/// One line of the table: the seed's `"%5d %5d %-7s %7d %7d %7d %7d %-15s\n"`, with
/// `extra` (the `--connections` columns, or nothing) after DEV and `container` (the
/// `--containers` column, or nothing) before COMMAND.
#[allow(clippy::too_many_arguments)]
fn line(
    pid: &dyn Display,
    uid: &dyn Display,
    dev: &dyn Display,
    extra: &str,
    counts: [&dyn Display; 4],
    container: &str,
    comm: &dyn Display,
) -> String {
    let [xp, rp, xk, rk] = counts;
    format!(
        "{:>5} {:>5} {:<7} {extra}{:>7} {:>7} {:>7} {:>7} {container}{:<15}\n",
        pid.to_string(),
        uid.to_string(),
        dev.to_string(),
        xp.to_string(),
        rp.to_string(),
        xk.to_string(),
        rk.to_string(),
        comm.to_string()
    )
}

/// `--connections`' columns of a row, or of the header (`None`), at `width`.
fn connection(r: Option<&Row>, width: usize) -> String {
    let (proto, local, remote, new) = match r {
        None => ("PROTO".into(), "LOCAL".into(), "REMOTE".into(), "NEW"),
        Some(r) => (
            r.proto().unwrap_or_else(|| "-".into()),
            r.local(),
            r.remote(),
            if r.new { "new" } else { "-" },
        ),
    };
    format!("{proto:<6} {local:<width$} {remote:<width$} {new:<3} ")
}

/// One interval: the header, a line per row, then the empty line the seed prints after
/// each report.
pub fn text(snapshot: &Snapshot, cols: Columns) -> String {
    let width = snapshot
        .rows
        .iter()
        .map(|r| r.local().len().max(r.remote().len()))
        .fold(ENDPOINT_WIDTH, usize::max);
    let extra = |r: Option<&Row>| {
        if cols.connections {
            connection(r, width)
        } else {
            String::new()
        }
    };
    let mut out = line(
        &"PID",
        &"UID",
        &"DEV",
        &extra(None),
        [&"XMIT_PK", &"RECV_PK", &"XMIT_KB", &"RECV_KB"],
        &column(cols.containers, "CONTAINER", false),
        &"COMMAND",
    );
    for r in &snapshot.rows {
        out.push_str(&line(
            &r.pid,
            &r.uid,
            &r.dev,
            &extra(Some(r)),
            [&r.xmit_packets, &r.recv_packets, &r.xmit_kb(), &r.recv_kb()],
            &column(cols.containers, &r.cg.container, false),
            &r.comm,
        ));
    }
    out.push('\n');
    out
}

/// `--format json`: one object per row, raw byte counts, with the interval's end time and
/// length.
pub fn json(snapshot: &Snapshot, time: &str, interval_s: f64, connections: bool) -> String {
    snapshot
        .rows
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({
                "time": time,
                "interval_s": interval_s,
                "pid": r.pid,
                "uid": r.uid,
                "dev": r.dev,
                "comm": r.comm,
                "xmit_packets": r.xmit_packets,
                "recv_packets": r.recv_packets,
                "xmit_bytes": r.xmit_bytes,
                "recv_bytes": r.recv_bytes,
            });
            if let Some(obj) = v.as_object_mut() {
                r.cg.json_fields(obj);
                if connections {
                    obj.insert("proto".into(), r.proto().into());
                    obj.insert("laddr".into(), r.laddr().map(|a| a.to_string()).into());
                    obj.insert("lport".into(), r.lport().into());
                    obj.insert("raddr".into(), r.raddr().map(|a| a.to_string()).into());
                    obj.insert("rport".into(), r.rport().into());
                    obj.insert("new".into(), r.new.into());
                }
            }
            v.to_string() + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{
        snapshot,
        tests::{counters, key},
        Filter, SortKey,
    };
    use super::*;
    use crate::runtime::cgroup::Named;

    #[test]
    fn golden_seed_sample() {
        // The seed's second sample, reproduced from the same counts.
        let s = snapshot(
            vec![
                (
                    key(15337, 48, "eth0", "httpd"),
                    counters(4, 5 * 1024 + 300, 5, 400),
                ),
                (key(31485, 500, "eth0", "sshd"), counters(1, 200, 1, 52)),
            ],
            &Filter::default(),
            SortKey::RecvPk,
            None,
        );
        let expected = concat!(
            "  PID   UID DEV     XMIT_PK RECV_PK XMIT_KB RECV_KB COMMAND        \n",
            "15337    48 eth0          4       5       5       0 httpd          \n",
            "31485   500 eth0          1       1       0       0 sshd           \n",
            "\n",
        );
        assert_eq!(text(&s, Columns::default()), expected);
    }

    #[test]
    fn hostile_names_stay_in_their_row() {
        let s = snapshot(
            vec![(
                key(15337, 48, "e\u{1b}th0", "x\n\u{1b}]0;pwn\u{7}"),
                counters(4, 5 * 1024, 5, 400),
            )],
            &Filter::default(),
            SortKey::RecvPk,
            None,
        );
        assert_eq!(
            text(&s, Columns::default()).lines().nth(1).unwrap(),
            "15337    48 e\\x1bth0       4       5       5       0 x\\n\\x1b]0;pwn\\a"
        );
    }

    #[test]
    fn golden_empty_interval_and_wide_values() {
        assert_eq!(
            text(&Snapshot::default(), Columns::default()),
            "  PID   UID DEV     XMIT_PK RECV_PK XMIT_KB RECV_KB COMMAND        \n\n"
        );
        // printf widths are minimums: long values push the columns, never truncate.
        let s = snapshot(
            vec![(
                key(4194304, 65534, "enp0s31f6", "a-fifteen-char-"),
                counters(12345678, 1 << 40, 0, 0),
            )],
            &Filter::default(),
            SortKey::RecvPk,
            None,
        );
        assert_eq!(
            text(&s, Columns::default()),
            concat!(
                "  PID   UID DEV     XMIT_PK RECV_PK XMIT_KB RECV_KB COMMAND        \n",
                "4194304 65534 enp0s31f6 12345678       0 1073741824       0 a-fifteen-char-\n",
                "\n",
            )
        );
    }

    #[test]
    fn golden_json() {
        let mut s = snapshot(
            vec![(key(15337, 48, "eth0", "httpd"), counters(4, 5420, 5, 400))],
            &Filter::default(),
            SortKey::RecvPk,
            None,
        );
        s.rows[0].cg = Named::of(Some("/web.slice/httpd.service".into()));
        assert_eq!(
            json(&s, "2009-04-11T17:22:03.000Z", 5.0, false),
            concat!(
                r#"{"cgroup":"/web.slice/httpd.service","comm":"httpd","container":"httpd.service","#,
                r#""dev":"eth0","interval_s":5.0,"pid":15337,"recv_bytes":400,"#,
                r#""recv_packets":5,"time":"2009-04-11T17:22:03.000Z","uid":48,"xmit_bytes":5420,"#,
                r#""xmit_packets":4}"#,
                "\n"
            )
        );
        assert_eq!(json(&Snapshot::default(), "t", 5.0, false), "");
    }

    #[test]
    fn golden_containers_column() {
        let mut s = snapshot(
            vec![
                (key(15337, 48, "eth0", "httpd"), counters(4, 5420, 5, 400)),
                (key(31485, 500, "eth0", "sshd"), counters(1, 200, 1, 52)),
            ],
            &Filter::default(),
            SortKey::RecvPk,
            None,
        );
        s.rows[0].cg = Named::of(Some(format!(
            "/system.slice/docker-{}.scope",
            "ab12".repeat(16)
        )));
        s.rows[1].cg = Named::of(Some("/".into()));
        assert_eq!(
            text(&s, Columns { containers: true, connections: false }),
            concat!(
                "  PID   UID DEV     XMIT_PK RECV_PK XMIT_KB RECV_KB CONTAINER    COMMAND        \n",
                "15337    48 eth0          4       5       5       0 ab12ab12ab12 httpd          \n",
                "31485   500 eth0          1       1       0       0 -            sshd           \n",
                "\n",
            )
        );
    }

    #[test]
    fn every_line_fits_80_columns() {
        let s = snapshot(
            vec![(
                key(99999, 99999, "wlp2s0", "fifteen-chars-x"),
                counters(9999999, 0, 9999999, 0),
            )],
            &Filter::default(),
            SortKey::RecvPk,
            None,
        );
        for line in text(&s, Columns::default()).lines() {
            assert!(line.len() <= 80, "{line:?}");
        }
    }

    fn conn(proto: u8, l: (&str, u16), r: (&str, u16)) -> probes_common::nettop::NetConn {
        use std::net::IpAddr;
        let bytes = |a: &str| match a.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v) => (4, {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&v.octets());
                b
            }),
            IpAddr::V6(v) => (6, v.octets()),
        };
        let ((family, laddr), (_, raddr)) = (bytes(l.0), bytes(r.0));
        probes_common::nettop::NetConn {
            laddr,
            raddr,
            lport: l.1,
            rport: r.1,
            proto,
            family,
            ..Default::default()
        }
    }

    fn with_conn(
        pid: u32,
        comm: &str,
        c: probes_common::nettop::NetConn,
    ) -> probes_common::nettop::NetKey {
        let mut k = key(pid, 33, "eth0", comm);
        k.conn = c;
        k
    }

    #[test]
    fn golden_connections() {
        let mut mixed = conn(17, ("0.0.0.0", 53), ("0.0.0.0", 0));
        mixed.mixed = 1;
        let mut s = snapshot(
            vec![
                (
                    with_conn(
                        812,
                        "nginx",
                        conn(6, ("10.0.0.5", 80), ("10.0.9.14", 51234)),
                    ),
                    counters(220, 300 * 1024, 40, 3000),
                ),
                (
                    with_conn(
                        812,
                        "nginx",
                        conn(6, ("2001:db8::5", 443), ("2001:db8::9", 40000)),
                    ),
                    counters(10, 9000, 12, 2048),
                ),
                (with_conn(90, "named", mixed), counters(0, 0, 3, 300)),
                (
                    with_conn(1, "init", Default::default()),
                    counters(1, 42, 0, 0),
                ),
            ],
            &Filter::default(),
            SortKey::XmitPk,
            None,
        );
        s.rows[0].new = true;
        assert_eq!(
            text(&s, Columns { containers: false, connections: true }),
            concat!(
                "  PID   UID DEV     PROTO  LOCAL                 REMOTE                NEW XMIT_PK RECV_PK XMIT_KB RECV_KB COMMAND        \n",
                "  812    33 eth0    tcp    10.0.0.5:80           10.0.9.14:51234       new     220      40     300       2 nginx          \n",
                "  812    33 eth0    tcp    [2001:db8::5]:443     [2001:db8::9]:40000   -        10      12       8       2 nginx          \n",
                "    1    33 eth0    -      -                     -                     -         1       0       0       0 init           \n",
                "   90    33 eth0    udp    0.0.0.0:53            *                     -         0       3       0       0 named          \n",
                "\n",
            )
        );
        let json = json(&s, "t", 1.0, true);
        let rows: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let fields = |i: usize| {
            let r = &rows[i];
            (
                r["proto"].clone(),
                r["laddr"].clone(),
                r["lport"].clone(),
                r["raddr"].clone(),
                r["rport"].clone(),
                r["new"].clone(),
            )
        };
        use serde_json::json as j;
        assert_eq!(
            fields(1),
            (
                j!("tcp"),
                j!("2001:db8::5"),
                j!(443),
                j!("2001:db8::9"),
                j!(40000),
                j!(false)
            )
        );
        assert_eq!(fields(0).5, j!(true));
        assert_eq!(
            fields(2),
            (j!(null), j!(null), j!(null), j!(null), j!(null), j!(false))
        );
        assert_eq!(
            fields(3),
            (
                j!("udp"),
                j!("0.0.0.0"),
                j!(53),
                j!(null),
                j!(null),
                j!(false)
            )
        );
    }

    #[test]
    fn new_connections_are_marked_once() {
        use super::super::aggregate::NewConnections;
        let tcp = conn(6, ("127.0.0.1", 8080), ("127.0.0.1", 40000));
        let udp = conn(17, ("127.0.0.1", 5353), ("127.0.0.1", 40001));
        let rows = |conns: &[probes_common::nettop::NetConn]| {
            snapshot(
                conns
                    .iter()
                    .map(|&c| (with_conn(7, "srv", c), counters(1, 100, 1, 100))),
                &Filter::default(),
                SortKey::Pid,
                None,
            )
            .rows
        };
        // (protocol, new) of each row.
        let news = |r: &[super::super::aggregate::Row]| {
            let mut v: Vec<_> = r.iter().map(|r| (r.conn.proto, r.new)).collect();
            v.sort();
            v
        };
        let mut n = NewConnections::default();
        // First interval: the TCP handshake is seen; the UDP flow cannot be told new.
        let mut r = rows(&[tcp, udp]);
        n.mark(&mut r, [tcp]);
        assert_eq!(news(&r), [(6, true), (17, false)]);
        // Next: neither is new.
        let mut r = rows(&[tcp, udp]);
        n.mark(&mut r, []);
        assert_eq!(news(&r), [(6, false), (17, false)]);
        // A UDP flow not seen before is new once.
        let other = conn(17, ("127.0.0.1", 5353), ("127.0.0.1", 40002));
        let mut r = rows(&[other]);
        n.mark(&mut r, []);
        assert_eq!(news(&r), [(17, true)]);
        let mut r = rows(&[other]);
        n.mark(&mut r, []);
        assert_eq!(news(&r), [(17, false)]);
    }
}
