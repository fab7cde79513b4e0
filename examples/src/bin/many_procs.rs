//! Many processes, one small action each: what fills a report's in-kernel table (one row
//! per process) in a single interval, like a pre-forking server under a burst of clients.
//!
//! usage: many_procs PROCS udp            each child sends one 100-byte datagram to loopback
//!        many_procs PROCS write PATH     each child writes one byte at its own offset of PATH
//!        many_procs FILES hold MS PATH   one process opens PATH FILES times, holds every fd
//!                                        MS milliseconds, then closes them all
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: many_procs N udp | N write PATH | N hold MS PATH";
    let n: usize = args.first().context(usage)?.parse().context(usage)?;
    let done = match (args.get(1).map(String::as_str), &args[2.min(args.len())..]) {
        (Some("udp"), []) => {
            let receiver = UdpSocket::bind("127.0.0.1:0")?;
            let dest = receiver.local_addr()?;
            in_children(n, |_| {
                UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.send_to(&[0x5a; 100], dest))
                    .is_ok()
            })?
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
        _ => bail!("{usage}"),
    };
    println!("pid={} done={done}", std::process::id());
    Ok(())
}
