//! Events from the ring buffer to the tree's lines (text or JSON), handed out in chunks
//! for the report's loop to write.

use aya::maps::{MapData, RingBuf};
use probes_common::{
    c_bytes,
    calltree::{CallEvent, CALL_ENTRY},
};

use super::{names::Names, tree};
use crate::runtime::{ring, Format};

/// Events formatted between two looks at the stop signal (and two writes).
const DRAIN_BATCH: usize = 16384;

pub struct Printer {
    pub indenter: tree::Indenter,
    format: Format,
    max_depth: Option<usize>,
    pub events: u64,
    out: String,
}

impl Printer {
    pub fn new(format: Format, max_depth: Option<usize>) -> Self {
        Printer {
            indenter: tree::Indenter::default(),
            format,
            max_depth,
            events: 0,
            out: String::new(),
        }
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
        let comm = String::from_utf8_lossy(c_bytes(&ev.comm));
        let e = tree::Event {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            tid: ev.tid,
            comm: &comm,
            entry: ev.kind == CALL_ENTRY,
            id: ev.id,
            func: names.name(ev.id),
        };
        let p = self.indenter.place(&e);
        if self.max_depth.is_some_and(|m| p.depth > m) {
            return;
        }
        match self.format {
            Format::Text => tree::text_line(&mut self.out, &e, &p),
            Format::Json => tree::json_line(&mut self.out, &e, &p),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, time::Instant};

    use probes_common::{calltree::CALL_RETURN, COMM_LEN};

    use super::*;

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
                comm,
            });
            if !entry {
                depth[t] -= 1;
            }
        }
        events
    }

    fn names() -> Names {
        Names::Index((0..64).map(|i| format!("ext4_function_{i}")).collect())
    }

    #[test]
    fn formats_and_honours_max_depth() {
        let mut p = Printer::new(Format::Text, Some(2));
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
        for _ in 0..env("STAPR_FORMAT_RUNS", 1) {
            let mut file = std::fs::File::create(&path).unwrap();
            let mut p = Printer::new(Format::Text, None);
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
