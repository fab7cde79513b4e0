//! The loop every interval report (nettop, disktop) runs: say what is attached, take a
//! snapshot and print one report per interval, once more on a stop signal, and at the
//! end what the kernel could not count.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::source::{loss_totals, Loss, LossLines, Source, View};
use super::{block_on, out, stopped, utc_now, Stop};

/// `-i/--interval` and `--count`.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    pub interval: Duration,
    pub count: Option<u64>,
}

/// Runs a periodic report: says what `source` attached, then every interval renders its
/// snapshot with `view` (and any losses), once more on a stop signal; at the end what
/// the kernel could not count, and the probes are let go. Snapshots are taken on time
/// whatever stdout does: outputs wait in a bounded queue.
pub fn run<S: Source, V: View<S::Snapshot>>(
    mut source: S,
    mut view: V,
    every: Every,
) -> Result<()> {
    // Each interval is as long as it measured, from one take to the next: a stall (the
    // report stopped, a starved CPU) shows as one long interval, never as traffic packed
    // into a nominal second. The first starts before the line that says the probes
    // count: whatever happens once that line is out (a stop included) is in it.
    let mut taken = Instant::now();
    eprintln!(
        "stapr {}: {}; reporting every {}. Ctrl-C to end.",
        S::NAME,
        source.describe(),
        humanize(every.interval)
    );
    let mut losses = LossLines::default();
    let mut queue = out::Queue::new(INTERVALS_WAITING);
    let mut next = |source: &mut S, view: &mut V, queue: &out::Queue| -> Result<String> {
        let mut lost = source.lost()?;
        lost.push(Loss::output_full(DROPPED, queue));
        // The time of the cut: a take switches the probes to fresh counters first, then
        // waits for the programs in flight and reads the old ones. A stall during that
        // wait or read (a stopped report, a starved CPU) belongs to the next interval,
        // whose counters the probes fill meanwhile.
        let now = Instant::now();
        let snapshot = source.take()?;
        let length = now - std::mem::replace(&mut taken, now);
        let mut text = view.render(snapshot, length);
        text += &losses.lines(&lost, view.format(), &utc_now(), Some(length));
        Ok(text)
    };
    let (s, v, q) = (&mut source, &mut view, &mut queue);
    block_on(async {
        let stop = stopped(None, true);
        tokio::pin!(stop);
        let mut at = tokio::time::Instant::now() + every.interval;
        let mut made = 0u64;
        loop {
            let done = every.count.is_some_and(|c| made >= c);
            if done && q.is_empty() {
                return Ok(());
            }
            tokio::select! {
                biased;
                why = &mut stop => {
                    let why = why?;
                    return finish(why, || {
                        let last = if done { String::new() } else { next(s, v, q)? };
                        Ok(q.take_all() + &last)
                    }).await;
                }
                _ = tokio::time::sleep_until(at), if !done => {
                    let text = next(s, v, q)?;
                    q.push(text);
                    made += 1;
                    // On time, the next is one interval on; after a stall, one interval
                    // from now, not a burst of empty ones to catch up.
                    let now = tokio::time::Instant::now();
                    at += every.interval;
                    if at <= now {
                        at = now + every.interval;
                    }
                }
                r = q.write_some(), if !q.is_empty() => {
                    if out::is_broken_pipe(&r) {
                        return Ok(());
                    }
                    r?;
                }
            }
        }
    })?;
    let mut lost = source.lost()?;
    lost.push(Loss::output_full(DROPPED, &queue));
    eprint!("{}", loss_totals(S::NAME, &lost));
    let slow = source.slow_to_detach();
    super::detach::release(source, slow, false);
    Ok(())
}

/// What the interval reports' output queue loses, and how many wait at most (a minute of
/// 1-second intervals).
const DROPPED: &str = "intervals";
const INTERVALS_WAITING: usize = 64;

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
    fn intervals_read_as_typed() {
        assert_eq!(humanize(Duration::from_secs(5)), "5 s");
        assert_eq!(humanize(Duration::from_millis(500)), "500 ms");
        assert_eq!(humanize(Duration::from_millis(1500)), "1500 ms");
    }
}
