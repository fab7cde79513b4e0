//! A report as a source of snapshots (the shape of Inspektor Gadget's tracers: install,
//! next stats, close). Its probes attach once; each `take` hands over what they saw
//! since the last one, already named (devices, cgroups). The text and JSON views, the
//! exporter and any other consumer read the same snapshots.

use std::task::{Context, Poll};

use anyhow::Result;

use super::Format;
use crate::metrics::Registry;

/// One loss counter of a source, since start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// Why, in one word: JSON's and the exporter's `reason` (`table_full`...).
    pub reason: &'static str,
    /// What was lost ("packets", "open timings").
    pub what: &'static str,
    /// Why, as the line says it ("the in-kernel table was full").
    pub why: String,
    pub count: u64,
}

impl Loss {
    /// Outputs (`what`) dropped because stdout did not take them in time.
    pub fn output_full(what: &'static str, queue: &super::out::Queue) -> Loss {
        Loss {
            reason: "output_full",
            what,
            why: format!(
                "stdout did not take them in time ({} were waiting)",
                queue.max
            ),
            count: queue.dropped,
        }
    }

    /// Events whose probe the kernel skipped: it fired while a probe program was running
    /// on its CPU (one that was preempted, on kernels with full or lazy preemption), and
    /// the kernel runs none nested.
    pub fn skipped(what: &'static str, count: u64) -> Loss {
        Loss {
            reason: "probe_skipped",
            what,
            why: "the kernel skipped their probe while another run of it held the CPU".into(),
            count,
        }
    }

    /// The most common loss: an in-kernel table was full.
    pub fn table_full(what: &'static str, count: u64) -> Loss {
        Loss {
            reason: "table_full",
            what,
            why: "the in-kernel table was full".into(),
            count,
        }
    }
}

/// Attached probes that hand out snapshots.
pub trait Source {
    /// What one take holds.
    type Snapshot;
    /// `stapr NAME`.
    const NAME: &'static str;
    /// The method attached, one word (the exporter's `method` label).
    fn label(&self) -> &'static str;
    /// What is attached, for the start line.
    fn describe(&self) -> String;
    /// Programs, links or probes attached.
    fn attached(&self) -> usize;
    /// Attachments slow to detach (classic tracepoints, per-function probes).
    fn slow_to_detach(&self) -> usize;
    /// Every loss counter, since start.
    fn lost(&self) -> Result<Vec<Loss>>;
    /// What the probes saw since the last take.
    fn take(&mut self) -> Result<Self::Snapshot>;
    /// Ready when records wait in a ring (sources that have one): a consumer that wants
    /// them as they come takes then. Call inside the runtime.
    fn poll_records(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Pending
    }
}

/// How a consumer turns a source's snapshots into output.
pub trait View<T> {
    fn format(&self) -> Format;
    /// One output from one snapshot (empty: nothing to print).
    fn render(&mut self, snapshot: T, interval: std::time::Duration) -> String;
}

/// A snapshot that feeds the exporter's registry.
pub trait Record {
    /// Adds itself to `reg`; returns the events it holds (packets, calls, files).
    fn record(&self, reg: &mut Registry, now_ns: u64) -> u64;
}

/// A source as the exporter runs it, whatever its snapshot.
pub trait Exported {
    fn name(&self) -> &'static str;
    fn label(&self) -> &'static str;
    fn attached(&self) -> usize;
    fn slow_to_detach(&self) -> usize;
    /// Takes a snapshot into `reg`, with the losses so far.
    fn collect(&mut self, reg: &mut Registry, now_ns: u64) -> Result<()>;
    fn poll_records(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>>;
}

impl<S: Source> Exported for S
where
    S::Snapshot: Record,
{
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn label(&self) -> &'static str {
        Source::label(self)
    }

    fn attached(&self) -> usize {
        Source::attached(self)
    }

    fn slow_to_detach(&self) -> usize {
        Source::slow_to_detach(self)
    }

    fn collect(&mut self, reg: &mut Registry, now_ns: u64) -> Result<()> {
        let snapshot = self.take()?;
        let events = snapshot.record(reg, now_ns);
        let lost = self.lost()?;
        if let Some(s) = reg.source(S::NAME) {
            s.events += events;
            s.lost.clear();
            for l in lost {
                *s.lost.entry(l.reason).or_default() += l.count;
            }
        }
        Ok(())
    }

    fn poll_records(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        Source::poll_records(self, cx)
    }
}

/// The losses since the last call, as lines of their own after an output: text `Lost N
/// what: why`, JSON an object with `lost` and `reason` (and `interval_s` for interval
/// reports).
#[derive(Debug, Default)]
pub struct LossLines {
    seen: Vec<u64>,
}

impl LossLines {
    pub fn lines(
        &mut self,
        now: &[Loss],
        format: Format,
        time: &str,
        interval: Option<std::time::Duration>,
    ) -> String {
        self.seen.resize(now.len(), 0);
        let mut out = String::new();
        for (l, seen) in now.iter().zip(self.seen.iter_mut()) {
            let n = l.count.saturating_sub(*seen);
            *seen = l.count;
            if n == 0 {
                continue;
            }
            match format {
                Format::Text => out += &format!("Lost {n} {}: {}\n", l.what, l.why),
                Format::Json => {
                    let mut j = serde_json::json!({"time": time});
                    if let Some(i) = interval {
                        j["interval_s"] = super::seconds(i).into();
                    }
                    j["lost"] = n.into();
                    j["reason"] = l.reason.into();
                    out += &j.to_string();
                    out.push('\n');
                }
            }
        }
        out
    }
}

/// The totals said on stderr at exit: `stapr NAME: N what not counted in all: why`.
pub fn loss_totals(name: &str, lost: &[Loss]) -> String {
    lost.iter()
        .filter(|l| l.count > 0)
        .map(|l| {
            format!(
                "stapr {name}: {} {} not counted in all: {}\n",
                l.count, l.what, l.why
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn losses_follow_the_interval() {
        let i = Some(Duration::from_secs(5));
        let mut l = LossLines::default();
        assert_eq!(
            l.lines(&[Loss::table_full("packets", 0)], Format::Text, "t", i),
            ""
        );
        assert_eq!(
            l.lines(&[Loss::table_full("packets", 2760)], Format::Text, "t", i),
            "Lost 2760 packets: the in-kernel table was full\n"
        );
        let j: serde_json::Value = serde_json::from_str(&l.lines(
            &[Loss::table_full("packets", 2767)],
            Format::Json,
            "t",
            i,
        ))
        .unwrap();
        assert_eq!(j["lost"], 7);
        assert_eq!(j["reason"], "table_full");
        assert_eq!(j["interval_s"], 5.0);
        assert_eq!(
            loss_totals("nettop", &[Loss::table_full("packets", 2767)]),
            "stapr nettop: 2767 packets not counted in all: the in-kernel table was full\n"
        );
    }
}
