//! Pure: a snapshot → the seed's text table.

use super::aggregate::Snapshot;
use crate::report::containers::column;

/// The seed's header: `printf("%5s %5s %-7s %7s %7s %7s %7s %-15s\n", ...)`;
/// `--containers` puts CONTAINER before COMMAND.
pub fn header(containers: bool) -> String {
    format!(
        "{:>5} {:>5} {:<7} {:>7} {:>7} {:>7} {:>7} {}{:<15}\n",
        "PID",
        "UID",
        "DEV",
        "XMIT_PK",
        "RECV_PK",
        "XMIT_KB",
        "RECV_KB",
        column(containers, "CONTAINER", false),
        "COMMAND"
    )
}

/// One interval: header, rows as `"%5d %5d %-7s %7d %7d %7d %7d %-15s\n"`, then the empty
/// line the seed prints after each report.
pub fn text(snapshot: &Snapshot, containers: bool) -> String {
    let mut out = header(containers);
    for r in &snapshot.rows {
        out.push_str(&format!(
            "{:>5} {:>5} {:<7} {:>7} {:>7} {:>7} {:>7} {}{:<15}\n",
            r.pid,
            r.uid,
            r.dev,
            r.xmit_packets,
            r.recv_packets,
            r.xmit_kb(),
            r.recv_kb(),
            column(containers, &r.cg.container, false),
            r.comm
        ));
    }
    out.push('\n');
    out
}

/// `--format json`: one object per row, raw byte counts, with the interval's end time and
/// length.
pub fn json(snapshot: &Snapshot, time: &str, interval_s: f64) -> String {
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
        assert_eq!(text(&s, false), expected);
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
            text(&s, false).lines().nth(1).unwrap(),
            "15337    48 e\\x1bth0       4       5       5       0 x\\n\\x1b]0;pwn\\a"
        );
    }

    #[test]
    fn golden_empty_interval_and_wide_values() {
        assert_eq!(
            text(&Snapshot::default(), false),
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
            text(&s, false),
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
            json(&s, "2009-04-11T17:22:03.000Z", 5.0),
            concat!(
                r#"{"cgroup":"/web.slice/httpd.service","comm":"httpd","container":"httpd.service","#,
                r#""dev":"eth0","interval_s":5.0,"pid":15337,"recv_bytes":400,"#,
                r#""recv_packets":5,"time":"2009-04-11T17:22:03.000Z","uid":48,"xmit_bytes":5420,"#,
                r#""xmit_packets":4}"#,
                "\n"
            )
        );
        assert_eq!(json(&Snapshot::default(), "t", 5.0), "");
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
            text(&s, true),
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
        for line in text(&s, false).lines() {
            assert!(line.len() <= 80, "{line:?}");
        }
    }
}
