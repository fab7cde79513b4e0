//! Many processes, one small action each: what fills a report's in-kernel table (one row
//! per process) in a single interval, like a pre-forking server under a burst of clients.
//!
//! usage: many_procs PROCS udp [RATE]     each child sends one 100-byte datagram to a
//!                                        loopback socket nobody reads; RATE: children
//!                                        started per second (default: as fast as it can)
//!        many_procs PROCS write PATH     each child writes one byte at its own offset of PATH
//!        many_procs FILES hold MS PATH   one process opens PATH FILES times, holds every fd
//!                                        MS milliseconds, then closes them all
//!        many_procs THREADS fifo MS PATH one process makes PATH a FIFO and opens it for
//!                                        reading in THREADS threads at once; every open
//!                                        waits for a writer, which comes once all of them
//!                                        have waited MS milliseconds
//!
//! Prints `pid=<pid> done=<n>` at the end: the actions that succeeded.

use std::{ffi::CString, net::UdpSocket, os::unix::ffi::OsStrExt, time::Duration};

use anyhow::{bail, Context as _, Result};

/// Children alive at once: enough to be quick, few enough for a small machine.
const BATCH: usize = 256;

fn open(path: &str, flags: i32) -> Result<i32> {
    let c = CString::new(std::path::Path::new(path).as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CREAT, 0o644) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("open {path}"));
    }
    Ok(fd)
}

/// Runs `action(i)` in `n` children (in batches), each exiting 0 when it succeeded.
/// Returns how many succeeded.
fn in_children(n: usize, action: impl Fn(usize) -> bool) -> Result<usize> {
    let mut done = 0;
    let mut started = 0;
    while started < n {
        let batch = BATCH.min(n - started);
        for i in started..started + batch {
            // SAFETY: the child only runs `action` (plain syscalls) and _exits.
            match unsafe { libc::fork() } {
                0 => {
                    let ok = action(i);
                    // SAFETY: leave without running the parent's exit handlers.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
                }
                -1 => bail!("fork: {}", std::io::Error::last_os_error()),
                _ => {}
            }
        }
        for _ in 0..batch {
            let mut status = 0;
            // SAFETY: waiting for our own children.
            if unsafe { libc::wait(&mut status) } > 0
                && libc::WIFEXITED(status)
                && libc::WEXITSTATUS(status) == 0
            {
                done += 1;
            }
        }
        started += batch;
    }
    Ok(done)
}

/// [`in_children`] at `rate` children a second: one batch every 100 ms.
fn paced(n: usize, rate: usize, action: impl Fn(usize) -> bool) -> Result<usize> {
    let per_tick = (rate / 10).max(1);
    let start = std::time::Instant::now();
    let mut done = 0;
    let mut started = 0;
    while started < n {
        let batch = per_tick.min(n - started);
        done += in_children(batch, &action)?;
        started += batch;
        let due = start + Duration::from_millis(100 * (started / per_tick) as u64);
        std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    }
    Ok(done)
}

fn raise_nofile(want: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!(
            "raising RLIMIT_NOFILE to {want}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// How many of `threads` (their `/proc/self/task/TID/syscall`, opened beforehand) are
/// inside the open syscall now: the file starts with the number of the syscall a blocked
/// thread is in. Read with pread on files already open, so polling opens nothing itself.
fn threads_in_open(threads: &[std::fs::File]) -> usize {
    use std::os::unix::fs::FileExt as _;
    let open = libc::SYS_openat.to_string();
    let mut buf = [0u8; 32];
    threads
        .iter()
        .filter(|f| {
            f.read_at(&mut buf, 0).is_ok_and(|n| {
                let first = buf[..n].split(|b| *b == b' ').next().unwrap_or(&[]);
                first == open.as_bytes()
            })
        })
        .count()
}

/// `n` threads open the FIFO `path` for reading and block there (no writer yet); once
/// all of them are inside open, `wait` later, one open for writing releases them all.
/// Returns how many opens succeeded.
fn readers_on_fifo(n: usize, wait: Duration, path: &str) -> Result<usize> {
    let c = CString::new(path)?;
    let _ = std::fs::remove_file(path);
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        bail!("mkfifo {path}: {}", std::io::Error::last_os_error());
    }
    let start = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let (tids, tid) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let (c, start, tids) = (c.clone(), start.clone(), tids.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let _ = tids.send(unsafe { libc::gettid() });
                    start.wait();
                    // SAFETY: a valid NUL-terminated path.
                    unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) }
                })
                .context("starting a reader thread")
        })
        .collect::<Result<_>>()?;
    // Each reader's syscall file, opened before any reader is inside open.
    let watched: Vec<std::fs::File> = tid
        .iter()
        .take(n)
        .map(|t| std::fs::File::open(format!("/proc/self/task/{t}/syscall")))
        .collect::<std::io::Result<_>>()
        .context("opening /proc/self/task/*/syscall")?;
    start.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while threads_in_open(&watched) < n {
        if std::time::Instant::now() > deadline {
            bail!(
                "only {} of {n} threads reached open",
                threads_in_open(&watched)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(wait);
    let writer = open(path, libc::O_WRONLY)?;
    let mut done = 0;
    for r in readers {
        let fd = r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?;
        if fd >= 0 {
            done += 1;
            // SAFETY: closing an fd this process opened.
            unsafe { libc::close(fd) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::close(writer) };
    let _ = std::fs::remove_file(path);
    Ok(done)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: many_procs N udp | N write PATH | N hold MS PATH | N fifo MS PATH";
    let n: usize = args.first().context(usage)?.parse().context(usage)?;
    let done = match (args.get(1).map(String::as_str), &args[2.min(args.len())..]) {
        (Some("udp"), rest @ ([] | [_])) => {
            let receiver = UdpSocket::bind("127.0.0.1:0")?;
            let dest = receiver.local_addr()?;
            let send = |_| {
                UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.send_to(&[0x5a; 100], dest))
                    .is_ok()
            };
            match rest.first() {
                None => in_children(n, send)?,
                Some(rate) => paced(n, rate.parse().context(usage)?, send)?,
            }
        }
        (Some("udp-self"), [rate]) => {
            // Each child sends to its own socket and exits unread: the datagram meets a
            // socket being closed.
            let send = |_| {
                UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr().and_then(|a| s.send_to(&[0x5a; 100], a)))
                    .is_ok()
            };
            paced(n, rate.parse().context(usage)?, send)?
        }
        (Some("write"), [path]) => {
            let fd = open(path, libc::O_WRONLY)?;
            in_children(n, |i| {
                // SAFETY: one byte from a live buffer, to an fd the child inherited.
                unsafe { libc::pwrite(fd, [b'x'].as_ptr().cast(), 1, i as i64) == 1 }
            })?
        }
        (Some("hold"), [ms, path]) => {
            let ms: u64 = ms.parse().context(usage)?;
            raise_nofile(n as u64 + 64)?;
            let fds: Vec<i32> = (0..n)
                .map(|_| open(path, libc::O_RDONLY))
                .collect::<Result<_>>()?;
            std::thread::sleep(Duration::from_millis(ms));
            for fd in &fds {
                // SAFETY: closing fds we opened.
                unsafe { libc::close(*fd) };
            }
            fds.len()
        }
        (Some("fifo"), [ms, path]) => {
            let ms: u64 = ms.parse().context(usage)?;
            raise_nofile(2 * n as u64 + 64)?;
            readers_on_fifo(n, Duration::from_millis(ms), path)?
        }
        _ => bail!("{usage}"),
    };
    println!("pid={} done={done}", std::process::id());
    Ok(())
}
