//! Pure: records from the kernel and entries of its open-file table → report rows.

use crate::runtime::{cgroup::Named, shown::Name};
use probes_common::slowopen::{
    Notice, OpenFile, OpenKey, SlowFile, CLOSED, END_CLOSE_RANGE, END_DUP2, END_DUP3, END_EXEC,
    END_EXIT, END_SLOW_OPEN, END_UNSEEN, FLAG_CLOEXEC, FLAG_TRUNCATED,
};

/// `CLOSE_RANGE_CLOEXEC`: close_range marks the fds close-on-exec instead of closing them.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// How the file stopped being open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Close,
    Dup2,
    Dup3,
    Exec,
    Exit,
    CloseRange,
    /// Still open when stapr stopped.
    StillOpen,
    /// Not an end: the open call itself took at least `--open-min`.
    SlowOpen,
}

impl End {
    fn from_raw(raw: u32) -> End {
        match raw {
            END_DUP2 => End::Dup2,
            END_DUP3 => End::Dup3,
            END_EXEC => End::Exec,
            END_EXIT => End::Exit,
            END_CLOSE_RANGE => End::CloseRange,
            END_SLOW_OPEN => End::SlowOpen,
            _ => End::Close,
        }
    }

    /// The marker printed after the name; a plain close has none.
    pub fn marker(self) -> &'static str {
        match self {
            End::Close | End::StillOpen => "",
            End::Dup2 => " [dup2]",
            End::Dup3 => " [dup3]",
            End::Exec => " [exec]",
            End::Exit => " [exit]",
            End::CloseRange => " [close_range]",
            End::SlowOpen => " [slow open]",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub comm: Name,
    pub pid: u32,
    /// The thread that opened the file.
    pub tid: u32,
    pub uid: u32,
    pub fd: u32,
    /// When the open returned (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// How long it was held; for `End::SlowOpen`, how long the open took.
    pub held_ns: u64,
    /// How long the open call took, when opens are timed.
    pub open_ns: Option<u64>,
    /// `End::SlowOpen` of an open that failed: its errno.
    pub error: Option<i32>,
    pub name: Name,
    pub truncated: bool,
    pub end: End,
    /// The holder's cgroup v2 id as the kernel saw it when the file ended (0: unknown,
    /// for files still open: user space looks the process up).
    pub cgroup: u64,
    /// The cgroup's path and container, filled in by user space before output.
    pub cg: Named,
}

fn row(key: OpenKey, f: &OpenFile, held_ns: u64, end: End, cgroup: u64) -> Row {
    // A failed open's "fd" is its negative errno.
    let error = (end == End::SlowOpen && (key.fd as i32) < 0).then(|| -(key.fd as i32));
    Row {
        comm: Name::from_c(&f.comm),
        pid: key.tgid,
        tid: f.tid,
        uid: f.uid,
        fd: if error.is_some() { 0 } else { key.fd },
        start_ns: f.start_ns,
        held_ns,
        open_ns: (f.open_ns != 0).then_some(f.open_ns),
        error,
        name: Name::from_c(&f.name),
        truncated: f.flags & FLAG_TRUNCATED != 0,
        end,
        cgroup,
        cg: Named::default(),
    }
}

/// A file whose fd was reused before its end was seen: the end is the first notice for
/// its process, after it was opened and before the reuse, that ends it (exec for a
/// close-on-exec file, a close_range covering its fd, an exit). None when no notice
/// explains it or it was held less than the threshold.
pub fn resolve_unseen(s: &SlowFile, recent: &[Notice], min_ns: u64) -> Option<Row> {
    let f = &s.file;
    recent
        .iter()
        .filter(|n| n.tgid == s.key.tgid && n.time_ns >= f.start_ns && n.time_ns <= s.end_ns)
        .find_map(|n| {
            let end = match n.end {
                END_EXIT => End::Exit,
                END_EXEC if f.flags & FLAG_CLOEXEC != 0 => End::Exec,
                END_CLOSE_RANGE
                    if (n.first_fd..=n.last_fd).contains(&s.key.fd)
                        && n.range_flags & CLOSE_RANGE_CLOEXEC == 0 =>
                {
                    End::CloseRange
                }
                _ => return None,
            };
            Some((n.time_ns, end, n.cgroup))
        })
        .map(|(at, end, cg)| row(s.key, f, at.saturating_sub(f.start_ns), end, cg))
        .filter(|r| r.held_ns >= min_ns)
}

/// The row for a record of the kernel's: a slow file it saw end, or one whose end it did
/// not see (matched against `recent` notices).
pub fn slow_file_row(s: &SlowFile, recent: &[Notice], min_ns: u64) -> Option<Row> {
    if s.end == END_UNSEEN {
        resolve_unseen(s, recent, min_ns)
    } else {
        Some(from_slow_file(s))
    }
}

/// A file the kernel found slow when it was closed, or an open it found slow.
pub fn from_slow_file(s: &SlowFile) -> Row {
    let end = End::from_raw(s.end);
    let held = match end {
        End::SlowOpen => s.file.open_ns,
        _ => s.end_ns.saturating_sub(s.file.start_ns),
    };
    row(s.key, &s.file, held, end, s.cgroup)
}

/// What user space must do to the kernel's table after matching notices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// Files that ended and were held at least the threshold.
    pub rows: Vec<Row>,
    /// Entries to delete, with the start time they had: their files are closed.
    pub remove: Vec<(OpenKey, u64)>,
    /// Entries to rewrite: close_range marked them close-on-exec.
    pub update: Vec<(OpenKey, OpenFile)>,
}

/// Applies exec, exit and close_range notices to a snapshot of the open-file table. An
/// entry only matches a notice that came after it was opened (the fd may have been
/// reused since), and each entry ends at most once.
pub fn match_notices(notices: &[Notice], entries: &[(OpenKey, OpenFile)], min_ns: u64) -> Matched {
    let mut m = Matched::default();
    for (key, file) in entries {
        // A closed slot ends nothing, but the slots of an exited process are freed.
        if file.start_ns == CLOSED {
            if notices
                .iter()
                .any(|n| n.tgid == key.tgid && n.end == END_EXIT)
            {
                m.remove.push((*key, CLOSED));
            }
            continue;
        }
        let mut file = *file;
        let mut marked = false;
        let mut ended = None;
        for n in notices
            .iter()
            .filter(|n| n.tgid == key.tgid && n.time_ns >= file.start_ns)
        {
            match n.end {
                END_EXIT => ended = Some((n.time_ns, End::Exit, n.cgroup)),
                END_EXEC if file.flags & FLAG_CLOEXEC != 0 => {
                    ended = Some((n.time_ns, End::Exec, n.cgroup))
                }
                END_CLOSE_RANGE if (n.first_fd..=n.last_fd).contains(&key.fd) => {
                    if n.range_flags & CLOSE_RANGE_CLOEXEC != 0 {
                        file.flags |= FLAG_CLOEXEC;
                        marked = true;
                    } else {
                        ended = Some((n.time_ns, End::CloseRange, n.cgroup));
                    }
                }
                _ => {}
            }
            if ended.is_some() {
                break;
            }
        }
        match ended {
            Some((at, end, cg)) => {
                let held = at.saturating_sub(file.start_ns);
                if held >= min_ns {
                    m.rows.push(row(*key, &file, held, end, cg));
                }
                m.remove.push((*key, file.start_ns));
            }
            None if marked => m.update.push((*key, file)),
            None => {}
        }
    }
    m.rows.sort_by_key(|r| (r.pid, r.held_ns));
    m
}

/// Files still open at `now_ns` that have been held at least the threshold, longest first.
pub fn still_open(entries: &[(OpenKey, OpenFile)], now_ns: u64, min_ns: u64) -> Vec<Row> {
    let mut rows: Vec<Row> = entries
        .iter()
        .filter(|(_, f)| f.start_ns != CLOSED)
        .filter_map(|(k, f)| {
            let held = now_ns.saturating_sub(f.start_ns);
            (held >= min_ns).then(|| row(*k, f, held, End::StillOpen, 0))
        })
        .collect();
    rows.sort_by(|a, b| b.held_ns.cmp(&a.held_ns).then(a.pid.cmp(&b.pid)));
    rows
}

/// Remembers the files already reported, so a file whose end is seen twice (by a notice
/// matched against the table, and again when the kernel reuses its slot) prints once.
#[derive(Debug, Default)]
pub struct Reported {
    order: std::collections::VecDeque<(u32, u32, u64)>,
    seen: std::collections::HashSet<(u32, u32, u64)>,
}

impl Reported {
    const KEEP: usize = 4096;

    /// True the first time a (pid, fd, start) is offered.
    pub fn first_time(&mut self, r: &Row) -> bool {
        let id = (r.pid, r.fd, r.start_ns);
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// User-space filter (pid and uid are also filtered in the kernel, at open).
pub type Filter = crate::report::ProcessFilter;

/// Whether `f` keeps the row.
pub fn keeps(f: &Filter, r: &Row) -> bool {
    f.matches(r.pid, r.uid, &r.comm)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use probes_common::slowopen::{REC_NOTICE, REC_SLOW_FILE};

    pub fn file(start_ns: u64, tid: u32, comm: &str, name: &str, flags: u32) -> OpenFile {
        let mut f = OpenFile {
            start_ns,
            tid,
            uid: 48,
            flags,
            ..Default::default()
        };
        f.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        f.name[..name.len()].copy_from_slice(name.as_bytes());
        f
    }

    fn key(tgid: u32, fd: u32) -> OpenKey {
        OpenKey { tgid, fd }
    }

    fn notice(tgid: u32, end: u32, time_ns: u64) -> Notice {
        Notice {
            kind: REC_NOTICE,
            end,
            tgid,
            time_ns,
            ..Default::default()
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn slow_file_record() {
        let r = from_slow_file(&SlowFile {
            kind: REC_SLOW_FILE,
            end: END_DUP2,
            key: key(15337, 5),
            end_ns: 10 * S + 8_471_285_000,
            cgroup: 0,
            file: file(
                10 * S,
                15338,
                "httpd",
                "/var/www/html/lectura_lenta.html",
                0,
            ),
        });
        assert_eq!(r.held_ns, 8_471_285_000);
        assert_eq!((r.pid, r.tid, r.uid), (15337, 15338, 48));
        assert_eq!(r.comm, "httpd");
        assert_eq!(r.name, "/var/www/html/lectura_lenta.html");
        assert_eq!(r.end, End::Dup2);
        assert!(!r.truncated);
    }

    #[test]
    fn unseen_ends_are_matched_to_notices() {
        let slow = |flags, fd| SlowFile {
            kind: REC_SLOW_FILE,
            end: probes_common::slowopen::END_UNSEEN,
            key: key(100, fd),
            end_ns: 5 * S,
            cgroup: 0,
            file: file(S, 100, "old", "/held", flags),
        };
        let exec = notice(100, END_EXEC, 3 * S);
        let r = resolve_unseen(&slow(FLAG_CLOEXEC, 3), &[exec], S).unwrap();
        assert_eq!((r.held_ns, r.end), (2 * S, End::Exec));
        // Not close-on-exec: exec did not end it, and nothing else explains the reuse.
        assert_eq!(resolve_unseen(&slow(0, 3), &[exec], S), None);
        // Another process's notice, or one from after the reuse, does not count.
        assert_eq!(
            resolve_unseen(&slow(FLAG_CLOEXEC, 3), &[notice(7, END_EXEC, 3 * S)], S),
            None
        );
        assert_eq!(
            resolve_unseen(&slow(FLAG_CLOEXEC, 3), &[notice(100, END_EXEC, 6 * S)], S),
            None
        );
        let mut range = notice(100, END_CLOSE_RANGE, 2 * S);
        range.first_fd = 3;
        range.last_fd = 10;
        assert_eq!(
            resolve_unseen(&slow(0, 3), &[range], S).unwrap().end,
            End::CloseRange
        );
        // Held less than the threshold before the exec.
        assert_eq!(
            resolve_unseen(&slow(FLAG_CLOEXEC, 3), &[notice(100, END_EXEC, S + 5)], S),
            None
        );
    }

    #[test]
    fn exit_ends_every_file_of_the_process() {
        let entries = [
            (key(100, 3), file(S, 100, "a", "/x", 0)),
            (key(100, 4), file(S + S / 2, 100, "a", "/y", 0)),
            (key(200, 3), file(S, 200, "b", "/z", 0)),
        ];
        let m = match_notices(&[notice(100, END_EXIT, 3 * S)], &entries, S);
        assert_eq!(m.remove, [(key(100, 3), S), (key(100, 4), S + S / 2)]);
        // Both held >= 1 s: /x 2 s, /y 1.5 s.
        let names: Vec<_> = m
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.held_ns, r.end))
            .collect();
        assert_eq!(
            names,
            [("/y", 3 * S / 2, End::Exit), ("/x", 2 * S, End::Exit)]
        );
        assert!(m.update.is_empty());
    }

    #[test]
    fn closed_slots_are_freed_at_exit_and_ignored_otherwise() {
        let entries = [
            (key(100, 3), file(CLOSED, 100, "a", "/was-open", 0)),
            (
                key(200, 3),
                file(CLOSED, 200, "b", "/was-open", FLAG_CLOEXEC),
            ),
        ];
        let m = match_notices(
            &[notice(100, END_EXIT, 3 * S), notice(200, END_EXEC, 3 * S)],
            &entries,
            S,
        );
        assert_eq!(m.remove, [(key(100, 3), CLOSED)]);
        assert!(m.rows.is_empty());
        assert!(still_open(&entries, 10 * S, S).is_empty());
    }

    #[test]
    fn exec_ends_only_cloexec_files_and_fast_ones_are_silent() {
        let entries = [
            (key(100, 3), file(S, 100, "a", "/keep", 0)),
            (key(100, 4), file(S, 100, "a", "/cloexec", FLAG_CLOEXEC)),
            (key(100, 5), file(S * 3, 100, "a", "/fast", FLAG_CLOEXEC)),
        ];
        let m = match_notices(&[notice(100, END_EXEC, S * 3 + 10)], &entries, S);
        assert_eq!(m.remove, [(key(100, 4), S), (key(100, 5), S * 3)]);
        assert_eq!(m.rows.len(), 1);
        assert_eq!(m.rows[0].name, "/cloexec");
        assert_eq!(m.rows[0].end.marker(), " [exec]");
    }

    #[test]
    fn notices_before_an_open_do_not_end_it() {
        // The fd was reused after the process exec'd: the new file is not affected.
        let entries = [(key(100, 3), file(5 * S, 100, "a", "/new", FLAG_CLOEXEC))];
        let m = match_notices(&[notice(100, END_EXEC, 4 * S)], &entries, S);
        assert_eq!(m, Matched::default());
    }

    #[test]
    fn close_range_closes_or_marks() {
        let entries = [
            (key(100, 3), file(S, 100, "a", "/three", 0)),
            (key(100, 7), file(S, 100, "a", "/seven", 0)),
            (key(100, 9), file(S, 100, "a", "/nine", 0)),
        ];
        let mut close = notice(100, END_CLOSE_RANGE, 4 * S);
        close.first_fd = 5;
        close.last_fd = 8;
        let m = match_notices(&[close], &entries, S);
        assert_eq!(m.remove, [(key(100, 7), S)]);
        assert_eq!(m.rows[0].end, End::CloseRange);

        close.range_flags = CLOSE_RANGE_CLOEXEC;
        close.first_fd = 3;
        close.last_fd = u32::MAX;
        let m = match_notices(&[close], &entries, S);
        assert!(m.remove.is_empty() && m.rows.is_empty());
        assert_eq!(m.update.len(), 3);
        assert!(m.update.iter().all(|(_, f)| f.flags & FLAG_CLOEXEC != 0));
    }

    #[test]
    fn still_open_longest_first() {
        let entries = [
            (key(1, 3), file(S, 1, "a", "/old", 0)),
            (key(2, 3), file(5 * S, 2, "b", "/young", 0)),
            (key(3, 3), file(2 * S, 3, "c", "/mid", 0)),
        ];
        let rows = still_open(&entries, 6 * S, 2 * S);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["/old", "/mid"]);
    }

    #[test]
    fn each_file_is_reported_once() {
        let r = row(key(7, 3), &file(S, 7, "a", "/f", 0), S, End::Exec, 0);
        let mut seen = Reported::default();
        assert!(seen.first_time(&r));
        assert!(!seen.first_time(&r));
        let reopened = row(key(7, 3), &file(2 * S, 7, "a", "/f", 0), S, End::Close, 0);
        assert!(seen.first_time(&reopened));
    }

    #[test]
    fn filter_uses_the_opener() {
        // pid, uid and comm are the opener's, as stored with the file.
        let r = row(key(7, 3), &file(0, 9, "httpd", "/f", 0), S, End::Close, 0);
        assert!(keeps(&Filter::default(), &r));
        let f = Filter {
            pid: Some(7),
            uid: Some(48),
            comm: Some("ttp".into()),
        };
        assert!(keeps(&f, &r));
        let f = Filter {
            comm: Some("nginx".into()),
            ..Default::default()
        };
        assert!(!keeps(&f, &r));
    }
}
