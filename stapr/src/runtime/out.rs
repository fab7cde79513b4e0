//! Writing a report's output without ever blocking its loop. A reader that stops reading
//! (`stapr ... | sleep 60`: a full pipe) must not keep a stop request or `--duration` from
//! being honoured, and a reader that goes away (`| head -1`) is noticed at once, not at
//! the next interval's write.
//!
//! Loops hand their outputs to a [`Queue`] and keep taking snapshots while it waits for
//! the reader.
//!
//! stdout stays a blocking descriptor (it may be shared with a shell); instead each write
//! waits until poll(2) says the descriptor takes data, and writes at most `PIPE_BUF` bytes,
//! which a pipe with room accepts without blocking.

use std::{future::Future, io, pin::Pin, time::Duration};

use anyhow::Result;

use super::Stop;

/// Bytes written per write(2): a pipe that polls writable takes this many at once.
const CHUNK: usize = libc::PIPE_BUF;
/// How soon a full stdout is looked at again: at first soon (a reader that reads keeps up
/// with a report that has a backlog), then less often while it stays full.
const FULL_RETRY_FIRST: Duration = Duration::from_millis(1);
const FULL_RETRY_MAX: Duration = Duration::from_millis(50);
/// How often stdout is checked for a reader that went away.
const GONE_CHECK: Duration = Duration::from_millis(200);
/// What a report may spend on its last output once told to stop.
pub const LAST_WORDS: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Writable,
    Full,
    /// The pipe's reader closed it, or the terminal hung up.
    Gone,
}

fn stdout_state() -> State {
    let mut p = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 {
        // EINTR: look again later.
        return State::Full;
    }
    if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        State::Gone
    } else if p.revents & libc::POLLOUT != 0 {
        State::Writable
    } else {
        State::Full
    }
}

/// Whether stdout's reader is gone (a closed pipe, a hung-up terminal).
pub fn reader_gone() -> bool {
    stdout_state() == State::Gone
}

/// Resolves once stdout's reader is gone; never for a file or a live reader.
pub async fn gone() {
    while !reader_gone() {
        tokio::time::sleep(GONE_CHECK).await;
    }
}

/// Writes `text` to stdout as it takes it. A reader that went away is an error of kind
/// `BrokenPipe`, which the callers treat as the end of the report, not a failure.
pub async fn write(text: &str) -> Result<()> {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        let n = write_chunk(rest).await?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Waits until stdout takes data, then writes one chunk of `bytes` (not empty); returns
/// how many went out. Cancel-safe: nothing is written unless it returns.
async fn write_chunk(bytes: &[u8]) -> Result<usize> {
    let mut retry = FULL_RETRY_FIRST;
    loop {
        match stdout_state() {
            State::Gone => return Err(io::Error::from(io::ErrorKind::BrokenPipe).into()),
            State::Full => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(FULL_RETRY_MAX);
            }
            State::Writable => {
                let n = bytes.len().min(CHUNK);
                // SAFETY: writing initialised bytes of a live slice.
                let w = unsafe { libc::write(libc::STDOUT_FILENO, bytes.as_ptr().cast(), n) };
                if w >= 0 {
                    return Ok(w as usize);
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
        }
    }
}

/// Outputs that wait for stdout, so a loop takes its snapshots on time whatever the reader
/// does. Bounded: past its number of outputs or [`QUEUE_BYTES`] bytes the oldest is
/// dropped and counted, a loss the report shows like the kernel's.
#[derive(Debug)]
pub struct Queue {
    /// At most this many outputs wait.
    pub max: usize,
    waiting: std::collections::VecDeque<String>,
    /// Bytes of the first output already written.
    written: usize,
    bytes: usize,
    /// Outputs dropped since start.
    pub dropped: u64,
}

/// At most this many bytes wait, whatever the number of outputs.
pub const QUEUE_BYTES: usize = 16 << 20;

impl Queue {
    pub fn new(max: usize) -> Self {
        Queue {
            max,
            waiting: Default::default(),
            written: 0,
            bytes: 0,
            dropped: 0,
        }
    }

    /// Adds an output (nothing for an empty one), dropping the oldest past the bounds
    /// (never one partly written: that would cut a line).
    pub fn push(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        self.bytes += text.len();
        self.waiting.push_back(text);
        while self.waiting.len() > self.max || self.bytes > QUEUE_BYTES {
            let at = usize::from(self.written > 0);
            if self.waiting.len() <= at + 1 {
                break;
            }
            if let Some(old) = self.waiting.remove(at) {
                self.bytes -= old.len();
                self.dropped += 1;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Writes one chunk of the oldest output once stdout takes it. Cancel-safe: what was
    /// written is remembered.
    pub async fn write_some(&mut self) -> Result<()> {
        let Some(first) = self.waiting.front() else {
            return std::future::pending().await;
        };
        let n = write_chunk(&first.as_bytes()[self.written..]).await?;
        self.written += n;
        if self.written == first.len() {
            self.bytes -= first.len();
            self.waiting.pop_front();
            self.written = 0;
        }
        Ok(())
    }

    /// Everything waiting, as one text (what is left of a partly written output first).
    pub fn take_all(&mut self) -> String {
        let mut out = String::new();
        for (i, t) in self.waiting.drain(..).enumerate() {
            out.push_str(if i == 0 { &t[self.written..] } else { &t });
        }
        self.written = 0;
        self.bytes = 0;
        out
    }
}

/// A report's last output after a stop: written as long as stdout keeps taking it; the
/// rest is dropped once stdout takes nothing for [`LAST_WORDS`] (the reader is not
/// reading). A slow reader still gets all of it.
pub async fn write_last(text: &str) -> Result<()> {
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match tokio::time::timeout(LAST_WORDS, write_chunk(rest)).await {
            Ok(Ok(n)) => rest = &rest[n..],
            Ok(r) if is_broken_pipe(&r) => return Ok(()),
            Ok(r) => return r.map(|_| ()),
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Whether `r` failed because stdout's reader went away.
pub fn is_broken_pipe<T>(r: &Result<T>) -> bool {
    r.as_ref().is_err_and(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` unless a stop comes first: None once it is written, else why the loop
/// ends (the stop, or [`Stop::ReaderGone`]). A reader that stops reading holds the write,
/// never the stop.
pub async fn write_or_stop<F: Future<Output = Result<Stop>>>(
    text: &str,
    stop: &mut Pin<&mut F>,
) -> Result<Option<Stop>> {
    tokio::select! {
        biased;
        why = stop.as_mut() => why.map(Some),
        r = write(text) => {
            if is_broken_pipe(&r) {
                return Ok(Some(Stop::ReaderGone));
            }
            r.map(|()| None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_drops_the_oldest_whole_outputs_and_counts_them() {
        let mut q = Queue::new(64);
        for i in 0..64 + 3 {
            q.push(format!("interval {i}\n"));
        }
        assert_eq!(q.dropped, 3);
        assert!(q.take_all().starts_with("interval 3\n"));
        q.push(String::new());
        assert!(q.is_empty());
        // A partly written output is never the one dropped.
        q.push("a".repeat(10));
        q.written = 4;
        for i in 0..64 + 1 {
            q.push(format!("{i}\n"));
        }
        assert_eq!(q.dropped, 5);
        let all = q.take_all();
        assert!(all.starts_with("aaaaaa2\n"), "{all}");
    }
}
