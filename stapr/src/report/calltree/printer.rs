//! Events from the ring buffer to the tree's lines (text or JSON), handed out in chunks
//! for the report's loop to write. With `--min` or `--errors` each thread's tree is held
//! back until its outermost call returns, and printed only if it was slow or failed.

use std::collections::HashMap;

use aya::maps::{MapData, RingBuf};
use probes_common::calltree::{CallEvent, CALL_ENTRY};

use super::{names::Names, tree};
use crate::{
    report::containers::Containers,
    runtime::{btf::RetKind, ring, shown::Name, Format},
};

/// Events formatted between two looks at the stop signal (and two writes).
const DRAIN_BATCH: usize = 16384;
/// Bytes of output one held-back tree may hold, and all of them together: past that,
/// lines are cut (and counted) rather than stapr's memory growing with a runaway tree.
const TREE_BYTES: usize = 4 << 20;
const ALL_TREES_BYTES: usize = 64 << 20;

/// `--min` and `--errors`: which trees are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeFilter {
    /// Trees whose outermost call took at least this long.
    pub min_ns: Option<u64>,
    /// Trees in which some call failed.
    pub errors: bool,
}

impl TreeFilter {
    fn active(&self) -> bool {
        self.min_ns.is_some() || self.errors
    }
}

/// What happened to the trees a filter held back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeCounts {
    pub printed: u64,
    pub dropped: u64,
    /// Printed with lines cut for the memory bound.
    pub cut: u64,
}

/// A thread's tree held back until its outermost call returns.
#[derive(Debug, Default)]
struct Held {
    text: String,
    failed: bool,
    cut_lines: u64,
    comm: Name,
}

pub struct Printer {
    pub indenter: tree::Indenter,
    format: Format,
    max_depth: Option<usize>,
    durations: bool,
    filter: TreeFilter,
    pub events: u64,
    pub trees: TreeCounts,
    held: HashMap<u32, Held>,
    held_bytes: usize,
    out: String,
    /// Names each event's cgroup, for `--containers` and JSON.
    pub cgroups: Containers,
}

impl Printer {
    pub fn new(
        format: Format,
        max_depth: Option<usize>,
        durations: bool,
        filter: TreeFilter,
    ) -> Self {
        Printer {
            indenter: tree::Indenter::default(),
            format,
            max_depth,
            durations,
            filter,
            events: 0,
            trees: TreeCounts::default(),
            held: HashMap::new(),
            held_bytes: 0,
            out: String::new(),
            cgroups: Containers::none(),
        }
    }

    /// Trees still held back (their outermost call had not returned).
    pub fn open_trees(&self) -> usize {
        self.indenter.open_trees()
    }

    /// Formats what is waiting in the ring, up to `DRAIN_BATCH` events: under a flood the
    /// loop must still get to see a stop request. Returns whether more is waiting.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, names: &Names) -> bool {
        ring::drain(ring, DRAIN_BATCH, |bytes| {
            if let Some(ev) = ring::record::<CallEvent>(bytes) {
                self.add(&ev, names);
            }
        })
    }

    /// The lines formatted since the last call.
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.out)
    }

    pub fn add(&mut self, ev: &CallEvent, names: &Names) {
        self.events += 1;
        let comm = Name::from_c(&ev.comm);
        let known = names.get(ev.id);
        let cg = (self.cgroups.show || self.format == Format::Json)
            .then(|| self.cgroups.name(ev.cgroup).clone());
        let e = tree::Event {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            tid: ev.tid,
            comm: &comm,
            entry: ev.kind == CALL_ENTRY,
            id: ev.id,
            func: known.map_or("?", |k| k.name.as_str()),
            ret: ev.ret,
            ret_kind: known.map_or(RetKind::Other, |k| k.ret),
            entry_only: known.is_some_and(|k| k.entry_only),
            cg: cg.as_ref(),
        };
        let p = self.indenter.place(&e);
        let shown = self.max_depth.is_none_or(|m| p.depth <= m);
        if !self.filter.active() {
            if shown {
                line(&mut self.out, self.format, self.durations, &e, &p);
            }
            return;
        }
        let held = self.held.entry(e.tid).or_default();
        if held.comm.is_empty() {
            held.comm = e.comm.to_owned();
        }
        held.failed |= p.errno.is_some();
        if shown {
            let before = held.text.len();
            line(&mut held.text, self.format, self.durations, &e, &p);
            let added = held.text.len() - before;
            // The line that ends a tree (its outermost return, with the duration) is kept
            // whatever the bound: it is one line.
            if !p.ends_tree
                && (before + added > TREE_BYTES || self.held_bytes + added > ALL_TREES_BYTES)
            {
                held.text.truncate(before);
                held.cut_lines += 1;
            } else {
                self.held_bytes += added;
            }
        }
        if p.ends_tree {
            self.end_tree(&e, &p);
        }
    }

    /// The outermost call of `e`'s thread returned: its tree is printed if it was slow
    /// enough or something in it failed.
    fn end_tree(&mut self, e: &tree::Event, p: &tree::Placed) {
        let Some(held) = self.held.remove(&e.tid) else {
            return;
        };
        self.held_bytes -= held.text.len();
        let slow = self
            .filter
            .min_ns
            .is_some_and(|min| p.duration_ns.is_some_and(|d| d >= min));
        if !(slow || (self.filter.errors && held.failed)) {
            self.trees.dropped += 1;
            return;
        }
        self.print(held, e.tid, None);
    }

    /// At a stop: the trees whose outermost call has not returned (still running, or its
    /// return was among the events lost) are printed as far as they got, each with a
    /// line that says so, if they are already slow (open at least `--min` by `now_ns`)
    /// or something in them failed. Lines still in the ring are not waited for.
    pub fn close_open(&mut self, now_ns: u64) -> String {
        let mut tids: Vec<u32> = self.held.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            let Some(since) = self.indenter.open_since(tid) else {
                continue;
            };
            let Some(held) = self.held.remove(&tid) else {
                continue;
            };
            self.held_bytes -= held.text.len();
            let open_ns = now_ns.saturating_sub(since);
            let slow = self.filter.min_ns.is_some_and(|min| open_ns >= min);
            if slow || (self.filter.errors && held.failed) {
                self.print(held, tid, Some(open_ns));
            }
        }
        self.take()
    }

    /// A held tree goes out, with a line for the lines it lost to the memory bound and,
    /// when `open_ns` is given, one saying it was still open at the stop.
    fn print(&mut self, held: Held, tid: u32, open_ns: Option<u64>) {
        self.trees.printed += 1;
        self.out.push_str(&held.text);
        // Display escapes it for the text; JSON gets it as it is.
        let comm = &held.comm;
        if held.cut_lines > 0 {
            self.trees.cut += 1;
            let n = held.cut_lines;
            self.note(
                format!("{n} lines of {comm}({tid})'s tree cut: it outgrew stapr's buffer"),
                serde_json::json!({"tid": tid, "comm": comm, "cut_lines": n}),
            );
        }
        if let Some(open) = open_ns {
            let after = tree::duration(open);
            self.note(
                format!("{comm}({tid})'s tree still open at stop, after {after}"),
                serde_json::json!({"tid": tid, "comm": comm, "open_at_stop_ns": open}),
            );
        }
    }

    /// One line of stapr's own about a tree, as the format wants it: `... text`, or the
    /// JSON object (both are made: this runs once per printed tree at most).
    fn note(&mut self, text: String, json: serde_json::Value) {
        let line = match self.format {
            Format::Text => format!("... {text}"),
            Format::Json => json.to_string(),
        };
        self.out.push_str(&line);
        self.out.push('\n');
    }
}

fn line(out: &mut String, format: Format, durations: bool, e: &tree::Event, p: &tree::Placed) {
    match format {
        Format::Text => tree::text_line(out, e, p, durations),
        Format::Json => tree::json_line(out, e, p),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, time::Instant};

    use probes_common::{calltree::CALL_RETURN, COMM_LEN};

    use super::*;
    use crate::report::calltree::select::Func;

    /// `n` synthetic events: 8 threads, calls nested 1 to 6 deep.
    fn synthetic(n: u64) -> Vec<CallEvent> {
        let mut events = Vec::with_capacity(n as usize);
        let mut depth = [0u64; 8];
        let mut comm = [0u8; COMM_LEN];
        comm[..6].copy_from_slice(b"worker");
        for i in 0..n {
            let t = (i % 8) as usize;
            // Deterministic walk: go down to 6, then back up, per thread.
            let entry = depth[t] == 0 || (depth[t] < 6 && (i / 8) % 12 < 6);
            if entry {
                depth[t] += 1;
            }
            events.push(CallEvent {
                ts_ns: 1_000_000_000 + i * 250,
                id: depth[t],
                pid: 1000,
                tid: 1000 + t as u32,
                kind: if entry { CALL_ENTRY } else { CALL_RETURN },
                _pad: 0,
                ret: 0,
                comm,
                cgroup: 1,
            });
            if !entry {
                depth[t] -= 1;
            }
        }
        events
    }

    fn names() -> Names {
        let funcs: Vec<Func> = (0..64)
            .map(|i| Func {
                name: format!("ext4_function_{i}"),
                module: None,
            })
            .collect();
        Names::by_index(&funcs, &[RetKind::Int32; 64])
    }

    #[test]
    fn formats_and_honours_max_depth() {
        let mut p = Printer::new(Format::Text, Some(2), false, TreeFilter::default());
        for ev in synthetic(96) {
            p.add(&ev, &names());
        }
        assert_eq!(p.events, 96);
        let text = p.take();
        assert!(p.take().is_empty(), "taken once");
        assert!(
            text.contains("worker(1000): -> ext4_function_1\n"),
            "{text}"
        );
        assert!(!text.contains("ext4_function_3"), "deeper than 2: {text}");
    }

    fn call(ts_us: u64, tid: u32, id: u64, entry: bool, ret: i64) -> CallEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..3].copy_from_slice(b"srv");
        CallEvent {
            ts_ns: ts_us * 1000,
            id,
            pid: 1,
            tid,
            kind: if entry { CALL_ENTRY } else { CALL_RETURN },
            _pad: 0,
            ret,
            comm,
            cgroup: 1,
        }
    }

    /// Three trees: fast (1 us), slow (200 ms), failing (a leaf returns -ENOENT).
    fn three_trees() -> Vec<CallEvent> {
        vec![
            call(0, 10, 1, true, 0),
            call(1, 10, 2, true, 0),
            call(1, 10, 2, false, 0),
            call(1, 10, 1, false, 0),
            call(10, 11, 1, true, 0),
            call(200_010, 11, 1, false, 0),
            call(20, 12, 1, true, 0),
            call(21, 12, 3, true, 0),
            call(22, 12, 3, false, -2),
            call(23, 12, 1, false, 0),
        ]
    }

    fn filtered(min_ns: Option<u64>, errors: bool) -> (String, TreeCounts) {
        let f = TreeFilter { min_ns, errors };
        let mut p = Printer::new(Format::Text, None, true, f);
        for ev in three_trees() {
            p.add(&ev, &names());
        }
        (p.take(), p.trees)
    }

    #[test]
    fn only_slow_or_failing_trees() {
        let (text, t) = filtered(Some(100_000_000), false);
        assert_eq!(
            text,
            "     0 srv(11): -> ext4_function_1\n200000 srv(11): <- ext4_function_1 (200.000 ms)\n"
        );
        assert_eq!((t.printed, t.dropped), (1, 2));
        let (text, t) = filtered(None, true);
        assert_eq!(
            text,
            "     0 srv(12): -> ext4_function_1\n     1 srv(12):  -> ext4_function_3\n     2 srv(12):  <- ext4_function_3 (1.0 us) -ENOENT\n     3 srv(12): <- ext4_function_1 (3.0 us)\n"
        );
        assert_eq!((t.printed, t.dropped), (1, 2));
        let (_, t) = filtered(Some(100_000_000), true);
        assert_eq!((t.printed, t.dropped), (2, 1));
    }

    #[test]
    fn a_runaway_tree_is_cut_and_counted() {
        let f = TreeFilter {
            min_ns: Some(1),
            errors: false,
        };
        let mut p = Printer::new(Format::Text, None, false, f);
        p.add(&call(0, 7, 1, true, 0), &names());
        // About 50 bytes a line: far past TREE_BYTES.
        for i in 0..100_000 {
            p.add(&call(1 + i, 7, 2, true, 0), &names());
            p.add(&call(1 + i, 7, 2, false, 0), &names());
        }
        assert!(p.held_bytes <= TREE_BYTES, "{} bytes held", p.held_bytes);
        assert_eq!(p.open_trees(), 1);
        p.add(&call(500_000, 7, 1, false, 0), &names());
        let text = p.take();
        assert!(
            text.ends_with("lines of srv(7)'s tree cut: it outgrew stapr's buffer\n"),
            "{}",
            &text[text.len() - 200..]
        );
        assert_eq!((p.trees.printed, p.trees.cut), (1, 1));
        assert_eq!(p.held_bytes, 0);
    }

    #[test]
    fn trees_open_at_stop_are_printed_with_a_marker_when_slow_or_failed() {
        let f = TreeFilter {
            min_ns: Some(100_000_000),
            errors: true,
        };
        let mut p = Printer::new(Format::Text, None, false, f);
        // tid 7: open 300 ms by the stop; tid 8: open 1 ms, nothing failed; tid 9: a
        // failure inside, open 1 ms; tid 10: closed, fast.
        p.add(&call(0, 7, 1, true, 0), &names());
        p.add(&call(299_000, 8, 1, true, 0), &names());
        p.add(&call(299_000, 9, 1, true, 0), &names());
        p.add(&call(299_001, 9, 3, true, 0), &names());
        p.add(&call(299_002, 9, 3, false, -2), &names());
        p.add(&call(299_000, 10, 1, true, 0), &names());
        p.add(&call(299_001, 10, 1, false, 0), &names());
        assert!(p.take().is_empty(), "nothing printed before the stop");
        let text = p.close_open(300_000_000);
        assert_eq!(
            text,
            "     0 srv(7): -> ext4_function_1\n\
             ... srv(7)'s tree still open at stop, after 300.000 ms\n\
             \x20    0 srv(9): -> ext4_function_1\n\
             \x20    1 srv(9):  -> ext4_function_3\n\
             \x20    2 srv(9):  <- ext4_function_3\n\
             ... srv(9)'s tree still open at stop, after 1.000 ms\n"
        );
        assert_eq!((p.trees.printed, p.trees.dropped), (2, 1));
        assert_eq!(p.held_bytes, 0);
        assert!(p.close_open(400_000_000).is_empty(), "printed once");
    }

    /// The formatter's rate, for `cargo xtask bench calltree`: STAPR_FORMAT_EVENTS
    /// synthetic events (default 2,000,000) through tree building and printing to a file,
    /// STAPR_FORMAT_RUNS times; prints `events_per_s=N` per run.
    #[test]
    #[ignore = "a benchmark: cargo xtask bench calltree runs it"]
    fn format_rate() {
        let env = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let n = env("STAPR_FORMAT_EVENTS", 2_000_000);
        let events = synthetic(n);
        let names = names();
        let path = std::env::temp_dir().join(format!("stapr-format-{}.out", std::process::id()));
        // STAPR_FORMAT_MIN_NS: as with `--min`, trees held back and the slow ones printed.
        let filter = TreeFilter {
            min_ns: std::env::var("STAPR_FORMAT_MIN_NS")
                .ok()
                .and_then(|v| v.parse().ok()),
            errors: false,
        };
        for _ in 0..env("STAPR_FORMAT_RUNS", 1) {
            let mut file = std::fs::File::create(&path).unwrap();
            let mut p = Printer::new(Format::Text, None, filter.active(), filter);
            let t = Instant::now();
            // As the report does: a batch formatted, then written.
            for batch in events.chunks(DRAIN_BATCH) {
                for ev in batch {
                    p.add(ev, &names);
                }
                file.write_all(p.take().as_bytes()).unwrap();
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "formatted {n} events in {secs:.3} s: events_per_s={:.0}",
                n as f64 / secs
            );
        }
        let _ = std::fs::remove_file(&path);
    }
}
