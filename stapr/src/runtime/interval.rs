//! The loop every interval report (nettop, disktop) runs: say what is attached, drain the
//! probes' tables and print one report per interval, once more on a stop signal, and at
//! the end what the kernel could not count.

use std::time::Duration;

use anyhow::Result;

use super::{block_on, emit, signalled};

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
    /// Events not counted because an in-kernel table was full, since start.
    fn lost(&self) -> Result<u64>;
}

pub fn run<R: Periodic>(report: &mut R, every: Every) -> Result<()> {
    eprintln!(
        "stapr {}: {}; reporting every {}. Ctrl-C to end.",
        R::NAME,
        report.describe(),
        humanize(every.interval)
    );
    block_on(every_interval(every.interval, every.count, || {
        let text = report.report(every.interval)?;
        if text.is_empty() {
            return Ok(());
        }
        emit(&text)
    }))?;
    let lost = report.lost()?;
    if lost > 0 {
        eprintln!(
            "stapr {}: {lost} {} not counted: the in-kernel table was full",
            R::NAME,
            R::LOST
        );
    }
    Ok(())
}

/// An interval as the start line says it: `5 s`, `500 ms`.
fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Calls `report` every `interval` until `count` reports were made or SIGINT/SIGTERM
/// arrives; on a signal it reports the interval in progress once more, as SystemTap's
/// `probe end` does.
async fn every_interval<F>(interval: Duration, count: Option<u64>, mut report: F) -> Result<()>
where
    F: FnMut() -> Result<()>,
{
    let stop = signalled();
    tokio::pin!(stop);
    let start = tokio::time::Instant::now();
    let mut made = 0u64;
    loop {
        if count.is_some_and(|c| made >= c) {
            return Ok(());
        }
        let next = start + interval * (made as u32 + 1);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                report()?;
                made += 1;
            }
            r = &mut stop => {
                r?;
                return report();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_as_typed() {
        assert_eq!(humanize(Duration::from_secs(5)), "5 s");
        assert_eq!(humanize(Duration::from_millis(500)), "500 ms");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500 ms");
    }
}
