//! A ring buffer watched by the runtime: the probes' records wake the report's loop.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

/// A ring buffer whose records wake a loop. It is registered with the runtime at the
/// first wait (registering needs the runtime, attaching happens before it runs).
pub struct Watched {
    idle: Option<RingBuf<MapData>>,
    fd: Option<AsyncFd<RingBuf<MapData>>>,
}

impl Watched {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Watched {
            idle: Some(ring),
            fd: None,
        }
    }

    fn registered(&mut self) -> Result<&mut AsyncFd<RingBuf<MapData>>> {
        if let Some(ring) = self.idle.take() {
            // SAFETY: the ring buffer owns its map fd and keeps it open until it is
            // dropped, which happens only after the AsyncFd is gone (with self).
            let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(std::io::Error::from)
                .context("watching a ring buffer")?;
            self.fd = Some(fd);
        }
        self.fd.as_mut().context("the ring buffer is gone")
    }

    /// Waits until the probes wake user space (or `at_most` passes). Readiness is
    /// cleared before the caller drains, so a record committed while it drains wakes it
    /// again.
    pub async fn wait(&mut self, at_most: Option<Duration>) -> Result<()> {
        let ready = self.registered()?.readable_mut();
        let guard = match at_most {
            Some(d) => match tokio::time::timeout(d, ready).await {
                Ok(g) => g,
                Err(_) => return Ok(()),
            },
            None => ready.await,
        };
        guard.context("waiting on a ring buffer")?.clear_ready();
        Ok(())
    }

    /// [`Watched::wait`] as a poll, for a loop that watches several sources.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let fd = match self.registered() {
            Ok(fd) => fd,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match fd.poll_read_ready_mut(cx) {
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e).context("waiting on a ring buffer")),
            Poll::Pending => Poll::Pending,
        }
    }

    pub fn ring(&mut self) -> Option<&mut RingBuf<MapData>> {
        match &mut self.fd {
            Some(fd) => Some(fd.get_mut()),
            None => self.idle.as_mut(),
        }
    }
}

/// Hands the records waiting in `ring` to `each`, up to `limit` of them (under a flood
/// the caller must still get to see a stop request). Returns whether more are waiting.
pub fn drain(ring: &mut RingBuf<MapData>, limit: usize, mut each: impl FnMut(&[u8])) -> bool {
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return false;
        };
        each(&item);
    }
    true
}

/// Copies a `T` out of a ring record that is at least `size_of::<T>()` bytes long.
pub fn record<T: Copy + aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: T is plain old data (Pod) and the record holds at least its size; the
    // kernel wrote a whole T; read_unaligned copies it out whatever the alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}
