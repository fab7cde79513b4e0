//! Pure: a snapshot → SystemTap disktop's text.

use super::aggregate::Snapshot;
use crate::report::containers::column;
use crate::runtime::shown::shown;

/// `"\n%-25s, %-8s%4dKb/sec, %-7s%6dKb, %-7s%6dKb\n\n"`, the header
/// `%8s %8s %8s %25s %8s %4s %12s` and rows `%8d %8d %8d %25s %8s %4s %12d`.
/// `time` is the local time as ctime(3) prints it, e.g. `Sat Apr 11 17:22:03 2009`.
/// `--containers` puts CONTAINER (`%12s`) before CMD. An interval that ran half again as
/// long as `-i` and a second more (a stall: the report was stopped, or starved of CPU)
/// says how long it was.
pub fn text(s: &Snapshot, time: &str, containers: bool, nominal_ms: u64) -> String {
    let mut out = format!(
        "\n{:<25}, {:<8}{:>4}Kb/sec, {:<7}{:>6}Kb, {:<7}{:>6}Kb{}\n\n",
        time,
        "Average:",
        s.average_kb_per_sec(),
        "Read:",
        s.read_bytes / 1024,
        "Write:",
        s.write_bytes / 1024,
        stretched(s.interval_ms, nominal_ms)
    );
    out.push_str(&format!(
        "{:>8} {:>8} {:>8} {}{:>25} {:>8} {:>4} {:>12}\n",
        "UID",
        "PID",
        "PPID",
        column(containers, "CONTAINER", true),
        "CMD",
        "DEVICE",
        "T",
        "BYTES"
    ));
    for r in &s.rows {
        out.push_str(&format!(
            "{:>8} {:>8} {:>8} {}{:>25} {:>8} {:>4} {:>12}\n",
            r.uid,
            r.pid,
            r.ppid,
            column(containers, &r.cg.container, true),
            r.comm,
            shown(&r.device),
            r.dir.letter(),
            r.bytes
        ));
    }
    out
}

/// ` (over 26.0 s)` after the header of a stalled interval: a timer that fires a little
/// late is no stall.
fn stretched(measured_ms: u64, nominal_ms: u64) -> String {
    if measured_ms >= nominal_ms + (nominal_ms / 2).max(1000) {
        format!(" (over {:.1} s)", measured_ms as f64 / 1000.0)
    } else {
        String::new()
    }
}

/// `--format json`: one object per row, with the interval's end time and length.
pub fn json(s: &Snapshot, time: &str) -> String {
    s.rows
        .iter()
        .map(|r| {
            let mut v = serde_json::json!({
                "time": time,
                "interval_s": s.interval_ms as f64 / 1000.0,
                "uid": r.uid,
                "pid": r.pid,
                "ppid": r.ppid,
                "comm": r.comm,
                "device": r.device,
                "fstype": r.fstype,
                "direction": r.dir.letter(),
                "bytes": r.bytes,
            });
            if let Some(obj) = v.as_object_mut() {
                r.cg.json_fields(obj);
            }
            v.to_string() + "\n"
        })
        .collect()
}

/// ctime(3)'s format without the newline.
pub fn ctime(t: &chrono::DateTime<chrono::Local>) -> String {
    t.format("%a %b %e %H:%M:%S %Y").to_string()
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{
        snapshot,
        tests::{counts, key, names, snap},
        Filter, SortKey,
    };
    use super::*;
    use crate::runtime::cgroup::Named;
    use chrono::TimeZone;

    #[test]
    fn golden_seed_sample() {
        // The seed's sample: four httpd children each wrote 210 bytes to dm-0.
        let dm0 = 253 << 20;
        let s = snap(
            [15342, 15343, 15337, 15336]
                .map(|pid| (key(pid, 15239, 48, dm0, "httpd"), counts(0, 210))),
        )
        .unwrap();
        let expected = concat!(
            "\n",
            "Sat Apr 11 17:22:03 2009 , Average:   0Kb/sec, Read:       0Kb, Write:      0Kb\n",
            "\n",
            "     UID      PID     PPID                       CMD   DEVICE    T        BYTES\n",
            "      48    15336    15239                     httpd     dm-0    W          210\n",
            "      48    15337    15239                     httpd     dm-0    W          210\n",
            "      48    15342    15239                     httpd     dm-0    W          210\n",
            "      48    15343    15239                     httpd     dm-0    W          210\n",
        );
        assert_eq!(
            text(&s, "Sat Apr 11 17:22:03 2009", false, s.interval_ms),
            expected
        );
    }

    #[test]
    fn golden_large_values() {
        let s = snapshot(
            vec![(
                key(4194304, 1, 0, 254 << 20, "postgres"),
                counts(33554432, 1 << 40),
            )],
            names,
            &Filter::default(),
            SortKey::Bytes,
            10,
            1000,
        )
        .unwrap();
        assert_eq!(
            text(&s, "Thu Nov  5 09:01:02 2026", false, s.interval_ms),
            concat!(
                "\n",
                "Thu Nov  5 09:01:02 2026 , Average:1073774592Kb/sec, Read:   32768Kb, Write: 1073741824Kb\n",
                "\n",
                "     UID      PID     PPID                       CMD   DEVICE    T        BYTES\n",
                "       0  4194304        1                  postgres      vda    W 1099511627776\n",
                "       0  4194304        1                  postgres      vda    R     33554432\n",
            )
        );
    }

    /// One process's read and write in `web.slice/httpd.service`.
    fn httpd_in_a_service() -> Snapshot {
        let mut s = snap(vec![(
            key(15342, 15239, 48, 253 << 20, "httpd"),
            counts(4096, 210),
        )])
        .unwrap();
        for r in &mut s.rows {
            r.cg = Named::of(Some("/web.slice/httpd.service".into()));
        }
        s
    }

    #[test]
    fn golden_json() {
        let s = httpd_in_a_service();
        assert_eq!(
            json(&s, "2009-04-11T17:22:03.000Z"),
            concat!(
                r#"{"bytes":4096,"cgroup":"/web.slice/httpd.service","comm":"httpd","#,
                r#""container":"httpd.service","device":"dm-0","direction":"R","fstype":"xfs","#,
                r#""interval_s":5.0,"#,
                r#""pid":15342,"ppid":15239,"time":"2009-04-11T17:22:03.000Z","uid":48}"#,
                "\n",
                r#"{"bytes":210,"cgroup":"/web.slice/httpd.service","comm":"httpd","#,
                r#""container":"httpd.service","device":"dm-0","direction":"W","fstype":"xfs","#,
                r#""interval_s":5.0,"#,
                r#""pid":15342,"ppid":15239,"time":"2009-04-11T17:22:03.000Z","uid":48}"#,
                "\n",
            )
        );
    }

    #[test]
    fn golden_containers_column() {
        let s = httpd_in_a_service();
        assert_eq!(
            text(&s, "Sat Apr 11 17:22:03 2009", true, s.interval_ms),
            concat!(
                "\n",
                "Sat Apr 11 17:22:03 2009 , Average:   0Kb/sec, Read:       4Kb, Write:      0Kb\n",
                "\n",
                "     UID      PID     PPID    CONTAINER                       CMD   DEVICE    T        BYTES\n",
                "      48    15342    15239 httpd.service                     httpd     dm-0    R         4096\n",
                "      48    15342    15239 httpd.service                     httpd     dm-0    W          210\n",
            )
        );
    }

    /// A file on NFS: DEVICE names the server and its export, the `%8s` column grows for
    /// it as printf's would; JSON says which filesystem.
    #[test]
    fn golden_network_filesystem_row() {
        let s = snap(vec![
            (key(15342, 15239, 48, 53, "httpd"), counts(8192, 0)),
            (key(15342, 15239, 48, 254 << 20, "httpd"), counts(0, 4096)),
        ])
        .unwrap();
        assert_eq!(
            text(&s, "Sat Apr 11 17:22:03 2009", false, s.interval_ms),
            concat!(
                "\n",
                "Sat Apr 11 17:22:03 2009 , Average:   2Kb/sec, Read:       8Kb, Write:      4Kb\n",
                "\n",
                "     UID      PID     PPID                       CMD   DEVICE    T        BYTES\n",
                "      48    15342    15239                     httpd nfs1:/export/www    R         8192\n",
                "      48    15342    15239                     httpd      vda    W         4096\n",
            )
        );
        let j = json(&s, "t");
        assert!(
            j.lines()
                .next()
                .unwrap()
                .contains(r#""device":"nfs1:/export/www","direction":"R","fstype":"nfs4""#),
            "{j}"
        );
    }

    #[test]
    fn ctime_pads_the_day_with_a_space() {
        let t = chrono::Local.with_ymd_and_hms(2009, 4, 1, 7, 2, 3).unwrap();
        assert_eq!(ctime(&t), "Wed Apr  1 07:02:03 2009");
    }

    #[test]
    fn a_stalled_interval_says_how_long_it_ran() {
        let mut s = snap([(key(7, 1, 0, 253 << 20, "httpd"), counts(0, 26 << 20))]).unwrap();
        s.interval_ms = 26_000;
        let head = text(&s, "Sat Apr 11 17:22:03 2009", false, 1000);
        assert!(
            head.starts_with("\nSat Apr 11 17:22:03 2009 , Average:1024Kb/sec, Read:       0Kb, Write:  26624Kb (over 26.0 s)\n"),
            "{head}"
        );
        // On time, or cut short by a stop: the seed's line as it was.
        for ms in [1000, 1999, 300] {
            s.interval_ms = ms;
            assert!(!text(&s, "x", false, 1000).contains("over"), "{ms}");
        }
    }

    #[test]
    fn hostile_names_stay_in_their_row() {
        let s = snap([(
            key(7, 1, 0, 253 << 20, "x\n\u{1b}]0;pwn\u{7}"),
            counts(0, 210),
        )])
        .unwrap();
        let out = text(&s, "Sat Apr 11 17:22:03 2009", false, s.interval_ms);
        let row = out.lines().last().unwrap();
        assert_eq!(
            row,
            "       0        7        1           x\\n\\x1b]0;pwn\\a     dm-0    W          210"
        );
    }
}
