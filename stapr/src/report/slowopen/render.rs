//! Pure: rows → the seed's lines.

use super::aggregate::{End, Row};
use crate::report::containers::column;

/// The columns asked for beyond the seed's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns {
    /// `-v`: PID and TID in front, OPEN(s) after the time.
    pub verbose: bool,
    /// `--containers`: CONTAINER before Process.
    pub containers: bool,
}

impl Columns {
    fn ids(self, pid: impl std::fmt::Display, tid: impl std::fmt::Display) -> String {
        if self.verbose {
            format!("{pid:>7} {tid:>7} ")
        } else {
            String::new()
        }
    }

    /// `-v`'s OPEN(s) column: how long the open call took, `-` when it was not timed.
    fn open_time(self, open_ns: Option<u64>) -> String {
        match (self.verbose, open_ns) {
            (false, _) => String::new(),
            (true, Some(ns)) => {
                let us = ns / 1000;
                format!(" {:>3}.{:06}", us / 1_000_000, us % 1_000_000)
            }
            (true, None) => format!(" {:>10}", "-"),
        }
    }
}

/// The symbolic name of the errors a slow open usually ends with, else the number.
fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EIO => "EIO",
        libc::EINTR => "EINTR",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::ENXIO => "ENXIO",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EEXIST => "EEXIST",
        libc::ELOOP => "ELOOP",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EROFS => "EROFS",
        libc::ERESTART => "ERESTART",
        libc::EAGAIN => "EAGAIN",
        _ => return format!("errno {e}"),
    };
    name.to_owned()
}

/// The marker after the name: how the file ended, or that its open was slow (and failed).
fn marker(r: &Row) -> String {
    match (r.end, r.error) {
        (End::SlowOpen, Some(e)) => format!(" [slow open, failed: {}]", errno_name(e)),
        (end, _) => end.marker().to_owned(),
    }
}

/// `printf("%10s %12s %30s\n", "Process", "Open time(s)", "File Name")`, with the extra
/// columns in front (and `-v`'s OPEN(s) after the time).
pub fn header(c: Columns) -> String {
    format!(
        "{}{}{:>10} {:>12}{} {:>30}\n",
        c.ids("PID", "TID"),
        column(c.containers, "CONTAINER", true),
        "Process",
        "Open time(s)",
        if c.verbose {
            format!(" {:>10}", "OPEN(s)")
        } else {
            String::new()
        },
        "File Name"
    )
}

/// `printf("%10s %6d.%06d %s\n", comm, secs, usecs, name)`, the name followed by a marker
/// when the file was not closed by close(2), and `...` when it was cut to fit.
pub fn line(r: &Row, c: Columns) -> String {
    let us = r.held_ns / 1000;
    let cut = if r.truncated { "..." } else { "" };
    format!(
        "{}{}{:>10} {:>6}.{:06}{} {}{cut}{}\n",
        c.ids(r.pid, r.tid),
        column(c.containers, &r.cg.container, true),
        r.comm,
        us / 1_000_000,
        us % 1_000_000,
        c.open_time(r.open_ns),
        r.name,
        marker(r)
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
        End::SlowOpen => "slow_open",
    };
    let mut v = serde_json::json!({
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
    });
    if let Some(obj) = v.as_object_mut() {
        r.cg.json_fields(obj);
        if let Some(ns) = r.open_ns {
            obj.insert("open_ns".into(), ns.into());
        }
        if r.end == End::SlowOpen {
            // Not a held file: the open's time is all there is.
            obj.remove("held_ns");
            obj.remove("held_s");
            if let Some(e) = r.error {
                obj.insert("fd".into(), serde_json::Value::Null);
                obj.insert("error".into(), errno_name(e).into());
            }
        }
    }
    v.to_string() + "\n"
}

/// The listing printed once when stapr stops.
pub fn still_open(rows: &[Row], c: Columns) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nStill open when stapr stopped:\n");
    out.push_str(&header(c));
    for r in rows {
        out.push_str(&line(r, c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::cgroup::Named;

    const VERBOSE: Columns = Columns {
        verbose: true,
        containers: false,
    };

    fn row(comm: &str, held_ns: u64, name: &str, end: End) -> Row {
        Row {
            comm: comm.into(),
            pid: 15337,
            tid: 15338,
            uid: 48,
            fd: 3,
            start_ns: 1,
            held_ns,
            open_ns: None,
            error: None,
            name: name.into(),
            truncated: false,
            end,
            cgroup: 0,
            cg: Default::default(),
        }
    }

    #[test]
    fn golden_seed_line() {
        assert_eq!(
            header(Columns::default()),
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
                Columns::default()
            ),
            "     httpd      8.471285 /var/www/html/lectura_lenta.html\n"
        );
    }

    #[test]
    fn hostile_names_stay_on_their_line() {
        let r = row(
            "x\n\u{1b}]0;pwn\u{7}",
            1_000_000,
            "/tmp/e\nv\u{1b}[2Jil",
            End::Close,
        );
        assert_eq!(
            line(&r, Columns::default()),
            "x\\n\\x1b]0;pwn\\a      0.001000 /tmp/e\\nv\\x1b[2Jil\n"
        );
        // JSON keeps the names exactly.
        let j: serde_json::Value = serde_json::from_str(&json(&r, "t")).unwrap();
        assert_eq!(j["comm"], "x\n\u{1b}]0;pwn\u{7}");
        assert_eq!(j["file"], "/tmp/e\nv\u{1b}[2Jil");
    }

    #[test]
    fn golden_markers_verbose_and_truncation() {
        assert_eq!(
            header(VERBOSE),
            "    PID     TID    Process Open time(s)    OPEN(s)                      File Name\n"
        );
        let mut r = row("php-fpm", 1_000_000, "a b/ñandú.txt", End::Exit);
        assert_eq!(
            line(&r, VERBOSE),
            "  15337   15338    php-fpm      0.001000          - a b/ñandú.txt [exit]\n"
        );
        r.open_ns = Some(2_345_678);
        assert_eq!(
            line(&r, VERBOSE),
            "  15337   15338    php-fpm      0.001000   0.002345 a b/ñandú.txt [exit]\n"
        );
        let mut r = row("verylongcommand", 123_456_789_000_000, "/x", End::Dup2);
        r.truncated = true;
        assert_eq!(
            line(&r, Columns::default()),
            "verylongcommand 123456.789000 /x... [dup2]\n"
        );
    }

    #[test]
    fn golden_containers_column() {
        let c = Columns {
            verbose: false,
            containers: true,
        };
        assert_eq!(
            header(c),
            "   CONTAINER    Process Open time(s)                      File Name\n"
        );
        let mut r = row("httpd", 8_471_285_123, "/var/www/a.html", End::Close);
        r.cg = Named::of(Some(format!(
            "/docker/{}",
            "0123456789ab".repeat(5) + "cdef"
        )));
        assert_eq!(
            line(&r, c),
            "0123456789ab      httpd      8.471285 /var/www/a.html\n"
        );
    }

    #[test]
    fn golden_json() {
        let mut r = row(
            "httpd",
            8_471_285_123,
            "/var/www/html/lectura lenta.html",
            End::Exit,
        );
        r.cg = Named::of(Some("/web.slice/httpd.service".into()));
        assert_eq!(
            json(&r, "2009-04-11T17:22:03.000Z"),
            concat!(
                r#"{"cgroup":"/web.slice/httpd.service","comm":"httpd","container":"httpd.service","#,
                r#""end":"exit","fd":3,"file":"/var/www/html/lectura lenta.html","#,
                r#""held_ns":8471285123,"held_s":8.471285123,"pid":15337,"tid":15338,"#,
                r#""time":"2009-04-11T17:22:03.000Z","truncated":false,"uid":48}"#,
                "\n"
            )
        );
    }

    #[test]
    fn golden_slow_open() {
        let mut r = row("httpd", 2_013_456_789, "/srv/nfs/a.html", End::SlowOpen);
        r.open_ns = Some(2_013_456_789);
        assert_eq!(
            line(&r, Columns::default()),
            "     httpd      2.013456 /srv/nfs/a.html [slow open]\n"
        );
        assert_eq!(
            line(&r, VERBOSE),
            "  15337   15338      httpd      2.013456   2.013456 /srv/nfs/a.html [slow open]\n"
        );
        assert_eq!(
            json(&r, "2009-04-11T17:22:03.000Z"),
            concat!(
                r#"{"cgroup":null,"comm":"httpd","container":"?","end":"slow_open","fd":3,"#,
                r#""file":"/srv/nfs/a.html","#,
                r#""open_ns":2013456789,"pid":15337,"tid":15338,"#,
                r#""time":"2009-04-11T17:22:03.000Z","truncated":false,"uid":48}"#,
                "\n"
            )
        );
        r.error = Some(libc::ENOENT);
        assert_eq!(
            line(&r, Columns::default()),
            "     httpd      2.013456 /srv/nfs/a.html [slow open, failed: ENOENT]\n"
        );
        assert!(json(&r, "t").contains(r#""error":"ENOENT","fd":null"#));
    }

    #[test]
    fn golden_still_open() {
        assert_eq!(still_open(&[], Columns::default()), "");
        assert_eq!(
            still_open(
                &[row(
                    "tail",
                    2_500_000_000,
                    "/var/log/syslog",
                    End::StillOpen
                )],
                Columns::default()
            ),
            concat!(
                "\nStill open when stapr stopped:\n",
                "   Process Open time(s)                      File Name\n",
                "      tail      2.500000 /var/log/syslog\n",
            )
        );
    }
}
