//! Writing a report's output without ever blocking its loop. A reader that stops reading
//! (`stapr ... | sleep 60`: a full pipe) must not keep a stop request or `--duration` from
//! being honoured, and a reader that goes away (`| head -1`) is noticed at once, not at
//! the next interval's write.
//!
//! stdout stays a blocking descriptor (it may be shared with a shell); instead each write
//! waits until poll(2) says the descriptor takes data, and writes at most `PIPE_BUF` bytes,
//! which a pipe with room accepts without blocking.

use std::{future::Future, io, pin::Pin, time::Duration};

use anyhow::Result;

use super::Stop;

/// Bytes written per write(2): a pipe that polls writable takes this many at once.
const CHUNK: usize = libc::PIPE_BUF;
/// How often a full stdout is looked at again.
const FULL_RETRY: Duration = Duration::from_millis(10);
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
        match stdout_state() {
            State::Gone => return Err(io::Error::from(io::ErrorKind::BrokenPipe).into()),
            State::Full => tokio::time::sleep(FULL_RETRY).await,
            State::Writable => {
                let n = rest.len().min(CHUNK);
                // SAFETY: writing initialised bytes of a live slice.
                let w = unsafe { libc::write(libc::STDOUT_FILENO, rest.as_ptr().cast(), n) };
                if w < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e.into());
                    }
                    continue;
                }
                rest = &rest[w as usize..];
            }
        }
    }
    Ok(())
}

/// A report's last output after a stop: written if stdout takes it within
/// [`LAST_WORDS`], else dropped (the reader is not reading).
pub async fn write_last(text: &str) -> Result<()> {
    match tokio::time::timeout(LAST_WORDS, write(text)).await {
        Ok(r) if is_broken_pipe(&r) => Ok(()),
        Ok(r) => r,
        Err(_) => Ok(()),
    }
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
