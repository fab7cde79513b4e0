//! The loop every interval report (nettop, disktop) runs: say what is attached, drain the
//! probes' tables and print one report per interval, once more on a stop signal, and at
//! the end what the kernel could not count.

use std::time::Duration;

use anyhow::Result;

use super::{block_on, out, stopped, utc_now, Format, Stop};

/// `-i/--interval` and `--count`.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    pub interval: Duration,
    pub count: Option<u64>,
}

/// A report the driver runs: its probes, already attached, and how it renders.
pub trait Periodic {
    /// `stapr NAME` and what its loss counter counts ("packets", "reads/writes").
    const NAME: &'static str;
    const LOST: &'static str;
    /// The probes in use, for the start line.
    fn describe(&self) -> String;
    /// One interval's output from what the probes counted since the last call (empty:
    /// nothing to print).
    fn report(&mut self, interval: Duration) -> Result<String>;
    fn format(&self) -> Format;
    /// Events not counted because an in-kernel table was full, since start.
    fn lost(&self) -> Result<u64>;
    /// Attachments that are slow to detach (classic tracepoints, per-function probes).
    fn slow_attachments(&self) -> usize;
}

/// What follows an interval's output when the kernel could not count everything in it:
/// a line, or in JSON an object with `lost` (and `reason`) instead of a row's fields.
pub fn lost_report(
    what: &str,
    lost: u64,
    format: Format,
    time: &str,
    interval: Duration,
) -> String {
    if lost == 0 {
        return String::new();
    }
    match format {
        Format::Text => format!("Lost {lost} {what}: the in-kernel table was full\n"),
        Format::Json => {
            serde_json::json!({
                "time": time,
                "interval_s": interval.as_secs_f64(),
                "lost": lost,
                "reason": "table_full",
            })
            .to_string()
                + "\n"
        }
    }
}

pub fn run<R: Periodic>(mut report: R, every: Every) -> Result<()> {
    eprintln!(
        "stapr {}: {}; reporting every {}. Ctrl-C to end.",
        R::NAME,
        report.describe(),
        humanize(every.interval)
    );
    let mut lost_before = 0;
    let mut next = |report: &mut R| -> Result<String> {
        let lost = report.lost()?;
        let mut text = report.report(every.interval)?;
        let (what, format) = (R::LOST, report.format());
        text += &lost_report(what, lost - lost_before, format, &utc_now(), every.interval);
        lost_before = lost;
        Ok(text)
    };
    let r = &mut report;
    block_on(async {
        let stop = stopped(None, true);
        tokio::pin!(stop);
        let start = tokio::time::Instant::now();
        let mut made = 0u64;
        loop {
            if every.count.is_some_and(|c| made >= c) {
                return Ok(());
            }
            let at = start + every.interval * (made as u32 + 1);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    let text = next(r)?;
                    made += 1;
                    // A reader that stops reading holds the write, never the stop.
                    tokio::select! {
                        r = out::write(&text) => {
                            if out::is_broken_pipe(&r) {
                                return Ok(());
                            }
                            r?;
                        }
                        s = &mut stop => return finish(s?, || next(r)).await,
                    }
                }
                s = &mut stop => return finish(s?, || next(r)).await,
            }
        }
    })?;
    let lost = report.lost()?;
    if lost > 0 {
        eprintln!(
            "stapr {}: {lost} {} not counted in all: the in-kernel table was full",
            R::NAME,
            R::LOST
        );
    }
    let slow = report.slow_attachments();
    super::detach::release(report, slow, false);
    Ok(())
}

/// On a signal, the interval in progress is reported once more, as SystemTap's `probe end`
/// does; after `--duration` too. A reader that went away gets nothing.
async fn finish(stop: Stop, last: impl FnOnce() -> Result<String>) -> Result<()> {
    if stop == Stop::ReaderGone {
        return Ok(());
    }
    out::write_last(&last()?).await
}

/// An interval as the start line says it: `5 s`, `500 ms`.
fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_follow_the_interval() {
        let i = Duration::from_secs(5);
        assert_eq!(lost_report("packets", 0, Format::Text, "t", i), "");
        assert_eq!(
            lost_report("packets", 2760, Format::Text, "t", i),
            "Lost 2760 packets: the in-kernel table was full\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&lost_report("packets", 7, Format::Json, "t", i)).unwrap();
        assert_eq!(j["lost"], 7);
        assert_eq!(j["reason"], "table_full");
        assert_eq!(j["interval_s"], 5.0);
    }

    #[test]
    fn intervals_read_as_typed() {
        assert_eq!(humanize(Duration::from_secs(5)), "5 s");
        assert_eq!(humanize(Duration::from_millis(500)), "500 ms");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500 ms");
    }
}
