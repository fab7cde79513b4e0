//! Pure: rows → the seed's lines.

use super::aggregate::{End, Row};

/// `printf("%10s %12s %30s\n", "Process", "Open time(s)", "File Name")`; `-v` puts PID
/// and TID in front.
pub fn header(verbose: bool) -> String {
    let ids = if verbose {
        format!("{:>7} {:>7} ", "PID", "TID")
    } else {
        String::new()
    };
    format!(
        "{ids}{:>10} {:>12} {:>30}\n",
        "Process", "Open time(s)", "File Name"
    )
}

/// `printf("%10s %6d.%06d %s\n", comm, secs, usecs, name)`, the name followed by a marker
/// when the file was not closed by close(2), and `...` when it was cut to fit.
pub fn line(r: &Row, verbose: bool) -> String {
    let us = r.held_ns / 1000;
    let ids = if verbose {
        format!("{:>7} {:>7} ", r.pid, r.tid)
    } else {
        String::new()
    };
    let cut = if r.truncated { "..." } else { "" };
    format!(
        "{ids}{:>10} {:>6}.{:06} {}{cut}{}\n",
        r.comm,
        us / 1_000_000,
        us % 1_000_000,
        r.name,
        r.end.marker()
    )
}

/// `--format json`: one object per file, with the time it was reported.
pub fn json(r: &Row, time: &str) -> String {
    let end = match r.end {
        End::Close => "close",
        End::Dup2 => "dup2",
        End::Dup3 => "dup3",
        End::Exec => "exec",
        End::Exit => "exit",
        End::CloseRange => "close_range",
        End::StillOpen => "still_open",
    };
    serde_json::json!({
        "time": time,
        "pid": r.pid,
        "tid": r.tid,
        "uid": r.uid,
        "comm": r.comm,
        "fd": r.fd,
        "held_ns": r.held_ns,
        "held_s": r.held_ns as f64 / 1e9,
        "file": r.name,
        "truncated": r.truncated,
        "end": end,
    })
    .to_string()
        + "\n"
}

/// The listing printed once when stapr stops.
pub fn still_open(rows: &[Row], verbose: bool) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nStill open when stapr stopped:\n");
    out.push_str(&header(verbose));
    for r in rows {
        out.push_str(&line(r, verbose));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(comm: &str, held_ns: u64, name: &str, end: End) -> Row {
        Row {
            comm: comm.into(),
            pid: 15337,
            tid: 15338,
            uid: 48,
            fd: 3,
            start_ns: 1,
            held_ns,
            name: name.into(),
            truncated: false,
            end,
        }
    }

    #[test]
    fn golden_seed_line() {
        assert_eq!(
            header(false),
            "   Process Open time(s)                      File Name\n"
        );
        assert_eq!(
            line(
                &row(
                    "httpd",
                    8_471_285_123,
                    "/var/www/html/lectura_lenta.html",
                    End::Close
                ),
                false
            ),
            "     httpd      8.471285 /var/www/html/lectura_lenta.html\n"
        );
    }

    #[test]
    fn golden_markers_verbose_and_truncation() {
        assert_eq!(
            header(true),
            "    PID     TID    Process Open time(s)                      File Name\n"
        );
        assert_eq!(
            line(&row("php-fpm", 1_000_000, "a b/ñandú.txt", End::Exit), true),
            "  15337   15338    php-fpm      0.001000 a b/ñandú.txt [exit]\n"
        );
        let mut r = row("verylongcommand", 123_456_789_000_000, "/x", End::Dup2);
        r.truncated = true;
        assert_eq!(
            line(&r, false),
            "verylongcommand 123456.789000 /x... [dup2]\n"
        );
    }

    #[test]
    fn golden_json() {
        let r = row(
            "httpd",
            8_471_285_123,
            "/var/www/html/lectura lenta.html",
            End::Exit,
        );
        assert_eq!(
            json(&r, "2009-04-11T17:22:03.000Z"),
            concat!(
                r#"{"comm":"httpd","end":"exit","fd":3,"file":"/var/www/html/lectura lenta.html","#,
                r#""held_ns":8471285123,"held_s":8.471285123,"pid":15337,"tid":15338,"#,
                r#""time":"2009-04-11T17:22:03.000Z","truncated":false,"uid":48}"#,
                "\n"
            )
        );
    }

    #[test]
    fn golden_still_open() {
        assert_eq!(still_open(&[], false), "");
        assert_eq!(
            still_open(
                &[row(
                    "tail",
                    2_500_000_000,
                    "/var/log/syslog",
                    End::StillOpen
                )],
                false
            ),
            concat!(
                "\nStill open when stapr stopped:\n",
                "   Process Open time(s)                      File Name\n",
                "      tail      2.500000 /var/log/syslog\n",
            )
        );
    }
}
