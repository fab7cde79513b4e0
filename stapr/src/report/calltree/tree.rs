//! Pure: entry/return events → SystemTap's `thread_indent` lines.
//!
//! `thread_indent(delta)` prints `sprintf("%6d %s:%-*s", us, "comm(tid)", pad, "")`: `us`
//! is microseconds since the thread's outermost entry, `pad` is depth - 1 spaces where
//! depth counts the new call on entry and the returning call on return. stapr keeps each
//! thread's open calls as a stack of function ids, so a return pops back to its own entry
//! (entries whose returns were lost are closed with it), and a return whose entry was never
//! seen prints at depth 1 and leaves the stack alone.

use std::{collections::HashMap, fmt::Write as _};

use super::errno;
use crate::runtime::{
    btf::RetKind,
    cgroup::Named,
    shown::{shown, Name},
};

/// One event, its function already named.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: &'a Name,
    pub entry: bool,
    /// The function's id (cookie or address): what matches a return to its entry.
    pub id: u64,
    pub func: &'a str,
    /// A return's value, and what the function returns (which says whether it failed).
    pub ret: i64,
    pub ret_kind: RetKind,
    /// The function is traced at entry only: its entry is a leaf, no return follows.
    pub entry_only: bool,
    /// The task's cgroup, when the output shows it (`--containers`, JSON).
    pub cg: Option<&'a Named>,
}

#[derive(Debug, Default)]
struct Thread {
    /// Open calls, outermost first: (function id, entry time).
    stack: Vec<(u64, u64)>,
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
    /// A matched return: how long the call took.
    pub duration_ns: Option<u64>,
    /// A return whose value says the call failed: its errno.
    pub errno: Option<i64>,
    /// The event ends its thread's tree: the outermost call returned (or a return whose
    /// entry was not seen, which is a tree of its own).
    pub ends_tree: bool,
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
        let mut placed = Placed {
            us,
            depth: 1,
            unmatched: false,
            duration_ns: None,
            errno: None,
            ends_tree: false,
        };
        if e.entry && e.entry_only {
            placed.depth = t.stack.len() + 1;
            placed.ends_tree = t.stack.is_empty();
        } else if e.entry {
            t.stack.push((e.id, e.ts_ns));
            placed.depth = t.stack.len();
        } else {
            placed.errno = errno::error(e.ret, e.ret_kind);
            if let Some(pos) = t.stack.iter().rposition(|&(id, _)| id == e.id) {
                placed.depth = pos + 1;
                placed.duration_ns = Some(e.ts_ns.saturating_sub(t.stack[pos].1));
                t.stack.truncate(pos);
                placed.ends_tree = pos == 0;
            } else {
                self.unmatched += 1;
                placed.unmatched = true;
                placed.ends_tree = t.stack.is_empty();
            }
        }
        if t.stack.is_empty() {
            // The next event starts a new tree; keep the map small.
            self.threads.remove(&e.tid);
        }
        placed
    }

    /// Threads whose outermost call has not returned.
    pub fn open_trees(&self) -> usize {
        self.threads.len()
    }

    /// When `tid`'s outermost open call began, if it has one.
    pub fn open_since(&self, tid: u32) -> Option<u64> {
        self.threads
            .get(&tid)
            .filter(|t| !t.stack.is_empty())
            .map(|t| t.base_ns)
    }
}

/// The `thread_indent` line of an event: `"%6d %s:%-*s"` then `-> func` or `<- func`.
/// With `durations`, a return also says how long the call took and, when it failed, its
/// error: `<- ext4_rmdir (31.2 us) -ENOTEMPTY`.
pub fn text_line(out: &mut String, e: &Event, p: &Placed, durations: bool) {
    let _ = write!(out, "{:>6} {}({})", p.us, e.comm, e.tid);
    if let Some(cg) = e.cg {
        let _ = write!(out, " {}", shown(&cg.container));
    }
    let _ = write!(
        out,
        ":{:pad$} {} {}",
        "",
        if e.entry { "->" } else { "<-" },
        shown(e.func),
        pad = p.depth.saturating_sub(1),
    );
    if durations && !e.entry {
        if let Some(d) = p.duration_ns {
            let _ = write!(out, " ({})", duration(d));
        }
        if let Some(errno) = p.errno {
            let _ = write!(out, " {}", errno::name(errno));
        }
    }
    out.push('\n');
}

/// A call's duration as an operator reads it: `850 ns`, `31.2 us`, `200.153 ms`, `2.500 s`.
pub fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.3} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

/// The same event as one JSON object (keys sorted); a return also carries `duration_ns`
/// (null when its entry was not seen), `ret` and, when it failed, `error`.
pub fn json_line(out: &mut String, e: &Event, p: &Placed) {
    let mut v = serde_json::json!({
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
    if let (Some(cg), Some(obj)) = (e.cg, v.as_object_mut()) {
        cg.json_fields(obj);
    }
    if e.entry && e.entry_only {
        // No return follows: the function is traced at entry only.
        v["entry_only"] = true.into();
    }
    if !e.entry {
        v["duration_ns"] = p.duration_ns.into();
        v["ret"] = errno::value(e.ret, e.ret_kind).into();
        if let Some(errno) = p.errno {
            v["error"] = errno::name(errno).trim_start_matches('-').into();
        }
    }
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
            // A few bytes per test event, for the test's life.
            comm: Box::leak(Box::new(Name::from(comm))),
            entry,
            id: func.len() as u64 * 1000 + func.bytes().map(u64::from).sum::<u64>(),
            func,
            entry_only: false,
            ret: 0,
            ret_kind: RetKind::Other,
            cg: None,
        }
    }

    fn render(events: &[Event], max_depth: Option<usize>) -> String {
        let mut ind = Indenter::default();
        let mut out = String::new();
        for e in events {
            let p = ind.place(e);
            if max_depth.is_none_or(|m| p.depth <= m) {
                text_line(&mut out, e, &p, false);
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
    fn durations_errors_and_tree_ends() {
        let mut ind = Indenter::default();
        let mut out = String::new();
        let fail = |mut e: Event<'static>| {
            e.ret = 0xffff_ffd9; // -ENOTEMPTY in eax
            e.ret_kind = RetKind::Int32;
            e
        };
        let events = [
            ev(0, 9, "rmdir", true, "ext4_rmdir"),
            ev(10, 9, "rmdir", true, "ext4_empty_dir"),
            ev(41, 9, "rmdir", false, "ext4_empty_dir"),
            fail(ev(250_000, 9, "rmdir", false, "ext4_rmdir")),
        ];
        let mut ends = Vec::new();
        for e in &events {
            let p = ind.place(e);
            ends.push(p.ends_tree);
            text_line(&mut out, e, &p, true);
        }
        assert_eq!(
            out,
            "     0 rmdir(9): -> ext4_rmdir
    10 rmdir(9):  -> ext4_empty_dir
    41 rmdir(9):  <- ext4_empty_dir (31.0 us)
250000 rmdir(9): <- ext4_rmdir (250.000 ms) -ENOTEMPTY
"
        );
        assert_eq!(ends, [false, false, false, true]);
        assert_eq!(ind.open_trees(), 0);
        // A return whose entry was never seen: no duration, a tree of its own.
        let p = ind.place(&ev(5, 9, "rmdir", false, "stray"));
        assert!(p.ends_tree && p.unmatched && p.duration_ns.is_none());
        ind.place(&ev(6, 9, "rmdir", true, "open"));
        assert_eq!(ind.open_trees(), 1);
        assert_eq!(duration(850), "850 ns");
        assert_eq!(duration(2_500_000_000), "2.500 s");
    }

    #[test]
    fn wide_times_and_long_names() {
        let mut ind = Indenter::default();
        let mut out = String::new();
        let a = ev(0, 99999, "kworker/u16:3", true, "f");
        let b = ev(12_345_678, 99999, "kworker/u16:3", false, "f");
        for e in [a, b] {
            let p = ind.place(&e);
            text_line(&mut out, &e, &p, false);
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
        let mut r = ev(3, 8, "ls", false, "ext4_readdir");
        r.ret = -2;
        r.ret_kind = RetKind::Int64;
        let p = ind.place(&r);
        json_line(&mut out, &r, &p);
        assert_eq!(
            out,
            format!(
                "{{\"comm\":\"ls\",\"depth\":1,\"event\":\"entry\",\"func\":\"ext4_readdir\",\"pid\":8,\"tid\":8,\"ts_ns\":123,\"unmatched\":false,\"us\":0}}\n\
                 {{\"comm\":\"ls\",\"depth\":1,\"duration_ns\":3000,\"error\":\"ENOENT\",\"event\":\"return\",\"func\":\"ext4_readdir\",\"pid\":8,\"ret\":-2,\"tid\":8,\"ts_ns\":3123,\"unmatched\":false,\"us\":3}}\n"
            )
        );
    }
}
