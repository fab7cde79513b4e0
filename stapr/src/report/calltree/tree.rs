//! Pure: entry/return events → SystemTap's `thread_indent` lines.
//!
//! `thread_indent(delta)` prints `sprintf("%6d %s:%-*s", us, "comm(tid)", pad, "")`: `us`
//! is microseconds since the thread's outermost entry, `pad` is depth - 1 spaces where
//! depth counts the new call on entry and the returning call on return. stapr keeps each
//! thread's open calls as a stack of function ids, so a return pops back to its own entry
//! (entries whose returns were lost are closed with it), and a return whose entry was never
//! seen prints at depth 1 and leaves the stack alone.

use std::{collections::HashMap, fmt::Write as _};

/// One event, its function already named.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub entry: bool,
    /// The function's id (cookie or address): what matches a return to its entry.
    pub id: u64,
    pub func: &'a str,
}

#[derive(Debug, Default)]
struct Thread {
    /// Open calls, outermost first.
    stack: Vec<u64>,
    /// When the outermost open call began.
    base_ns: u64,
}

/// Where an event lands in the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Microseconds since the thread's outermost entry.
    pub us: u64,
    /// 1 for the outermost call.
    pub depth: usize,
    /// A return whose entry was not seen.
    pub unmatched: bool,
}

/// The per-thread state of every thread seen.
#[derive(Debug, Default)]
pub struct Indenter {
    threads: HashMap<u32, Thread>,
    /// Returns whose entry was never seen.
    pub unmatched: u64,
}

impl Indenter {
    /// Places `e` and updates its thread's stack.
    pub fn place(&mut self, e: &Event) -> Placed {
        let t = self.threads.entry(e.tid).or_default();
        if t.stack.is_empty() {
            t.base_ns = e.ts_ns;
        }
        let us = e.ts_ns.saturating_sub(t.base_ns) / 1000;
        let placed = if e.entry {
            t.stack.push(e.id);
            Placed {
                us,
                depth: t.stack.len(),
                unmatched: false,
            }
        } else if let Some(pos) = t.stack.iter().rposition(|&id| id == e.id) {
            let depth = pos + 1;
            t.stack.truncate(pos);
            Placed {
                us,
                depth,
                unmatched: false,
            }
        } else {
            self.unmatched += 1;
            Placed {
                us,
                depth: 1,
                unmatched: true,
            }
        };
        if t.stack.is_empty() {
            // The next event starts a new tree; keep the map small.
            self.threads.remove(&e.tid);
        }
        placed
    }
}

/// The `thread_indent` line of an event: `"%6d %s:%-*s"` then `-> func` or `<- func`.
pub fn text_line(out: &mut String, e: &Event, p: &Placed) {
    let _ = writeln!(
        out,
        "{:>6} {}({}):{:pad$} {} {}",
        p.us,
        e.comm,
        e.tid,
        "",
        if e.entry { "->" } else { "<-" },
        e.func,
        pad = p.depth.saturating_sub(1),
    );
}

/// The same event as one JSON object (keys sorted).
pub fn json_line(out: &mut String, e: &Event, p: &Placed) {
    let v = serde_json::json!({
        "comm": e.comm,
        "depth": p.depth,
        "event": if e.entry { "entry" } else { "return" },
        "func": e.func,
        "pid": e.pid,
        "tid": e.tid,
        "ts_ns": e.ts_ns,
        "unmatched": p.unmatched,
        "us": p.us,
    });
    out.push_str(&v.to_string());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev<'a>(ts_us: u64, tid: u32, comm: &'a str, entry: bool, func: &'a str) -> Event<'a> {
        Event {
            ts_ns: ts_us * 1000 + 123,
            pid: tid,
            tid,
            comm,
            entry,
            id: func.len() as u64 * 1000 + func.bytes().map(u64::from).sum::<u64>(),
            func,
        }
    }

    fn render(events: &[Event], max_depth: Option<usize>) -> String {
        let mut ind = Indenter::default();
        let mut out = String::new();
        for e in events {
            let p = ind.place(e);
            if max_depth.is_none_or(|m| p.depth <= m) {
                text_line(&mut out, e, &p);
            }
        }
        out
    }

    /// The seed's sample, byte for byte.
    #[test]
    fn seed_golden() {
        let events = [
            ev(1000, 31789, "ls", true, "ext3_dirty_inode"),
            ev(1008, 31789, "ls", true, "ext3_journal_start_sb"),
            ev(1021, 31789, "ls", false, "ext3_journal_start_sb"),
            ev(1090, 31789, "ls", false, "ext3_dirty_inode"),
        ];
        assert_eq!(
            render(&events, None),
            "     0 ls(31789): -> ext3_dirty_inode\n     8 ls(31789):  -> ext3_journal_start_sb\n    21 ls(31789):  <- ext3_journal_start_sb\n    90 ls(31789): <- ext3_dirty_inode\n"
        );
    }

    #[test]
    fn threads_interleave_and_bases_reset() {
        let events = [
            ev(10, 1, "a", true, "f"),
            ev(11, 2, "b", true, "g"),
            ev(12, 1, "a", true, "h"),
            ev(13, 2, "b", false, "g"),
            ev(15, 1, "a", false, "h"),
            ev(20, 1, "a", false, "f"),
            // Thread 2's next tree starts from 0 again.
            ev(5000, 2, "b", true, "g"),
            ev(5003, 2, "b", false, "g"),
        ];
        assert_eq!(
            render(&events, None),
            "     0 a(1): -> f\n     0 b(2): -> g\n     2 a(1):  -> h\n     2 b(2): <- g\n     5 a(1):  <- h\n    10 a(1): <- f\n     0 b(2): -> g\n     3 b(2): <- g\n"
        );
    }

    #[test]
    fn unmatched_returns_print_at_depth_one_and_keep_the_tree() {
        let events = [
            // Already running when tracing began.
            ev(1, 7, "x", false, "early"),
            ev(2, 7, "x", true, "f"),
            ev(3, 7, "x", true, "g"),
            // A return whose entry was never seen, in the middle of a tree.
            ev(4, 7, "x", false, "stray"),
            ev(5, 7, "x", false, "g"),
            ev(6, 7, "x", false, "f"),
        ];
        assert_eq!(
            render(&events, None),
            "     0 x(7): <- early\n     0 x(7): -> f\n     1 x(7):  -> g\n     2 x(7): <- stray\n     3 x(7):  <- g\n     4 x(7): <- f\n"
        );
    }

    #[test]
    fn a_lost_return_is_closed_by_its_callers() {
        let events = [
            ev(0, 3, "y", true, "f"),
            ev(1, 3, "y", true, "g"),
            // g's return was lost; f's return closes both.
            ev(2, 3, "y", false, "f"),
            ev(3, 3, "y", true, "f"),
        ];
        assert_eq!(
            render(&events, None),
            "     0 y(3): -> f\n     1 y(3):  -> g\n     2 y(3): <- f\n     0 y(3): -> f\n"
        );
    }

    #[test]
    fn recursion_pairs_innermost_first() {
        let events = [
            ev(0, 4, "r", true, "f"),
            ev(1, 4, "r", true, "f"),
            ev(2, 4, "r", false, "f"),
            ev(3, 4, "r", false, "f"),
        ];
        assert_eq!(
            render(&events, None),
            "     0 r(4): -> f\n     1 r(4):  -> f\n     2 r(4):  <- f\n     3 r(4): <- f\n"
        );
    }

    #[test]
    fn max_depth_hides_deeper_calls() {
        let events = [
            ev(0, 5, "z", true, "a"),
            ev(1, 5, "z", true, "b"),
            ev(2, 5, "z", true, "c"),
            ev(3, 5, "z", false, "c"),
            ev(4, 5, "z", false, "b"),
            ev(5, 5, "z", false, "a"),
        ];
        assert_eq!(
            render(&events, Some(2)),
            "     0 z(5): -> a\n     1 z(5):  -> b\n     4 z(5):  <- b\n     5 z(5): <- a\n"
        );
    }

    #[test]
    fn wide_times_and_long_names() {
        let mut ind = Indenter::default();
        let mut out = String::new();
        let a = ev(0, 99999, "kworker/u16:3", true, "f");
        let b = ev(12_345_678, 99999, "kworker/u16:3", false, "f");
        for e in [a, b] {
            let p = ind.place(&e);
            text_line(&mut out, &e, &p);
        }
        assert_eq!(
            out,
            "     0 kworker/u16:3(99999): -> f\n12345678 kworker/u16:3(99999): <- f\n"
        );
    }

    #[test]
    fn json_golden() {
        let mut ind = Indenter::default();
        let e = ev(0, 8, "ls", true, "ext4_readdir");
        let p = ind.place(&e);
        let mut out = String::new();
        json_line(&mut out, &e, &p);
        assert_eq!(
            out,
            format!(
                "{{\"comm\":\"ls\",\"depth\":1,\"event\":\"entry\",\"func\":\"ext4_readdir\",\"pid\":8,\"tid\":8,\"ts_ns\":123,\"unmatched\":false,\"us\":0}}\n"
            )
        );
    }
}
