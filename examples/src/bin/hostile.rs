//! A local user's process with names chosen to attack whoever prints them: it renames
//! itself (prctl PR_SET_NAME) to COMM, sends datagrams to itself over loopback, writes a
//! file, and holds open a file named NAME, then exits. Every report sees it. Prints
//! `pid=<pid>` once all of that is done and the file is open, and `done` once it is closed.
//!
//! usage: hostile COMM DIR NAME SECONDS
//!   COMM and NAME may hold any bytes but NUL and (NAME) '/'; SECONDS is how long the
//!   file stays open.

use std::{
    ffi::CString, io::Write as _, net::UdpSocket, os::unix::ffi::OsStrExt as _, path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// Datagrams sent, and their size: enough for nettop's KB columns to show them.
const DATAGRAMS: usize = 64;
const DATAGRAM_BYTES: usize = 1000;
/// Written to DIR/data, for disktop.
const WRITTEN: usize = 256 << 10;

fn main() -> Result<()> {
    // Names may hold bytes that are not UTF-8.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let [_, comm, dir, name, secs] = args.as_slice() else {
        bail!("usage: hostile COMM DIR NAME SECONDS");
    };
    let secs = secs.to_str().context("seconds")?;
    let hold = Duration::from_secs_f64(secs.parse().context("seconds")?);
    let comm = CString::new(comm.as_bytes()).context("COMM holds a NUL")?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (cut to 15 bytes by the kernel).
    if unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_NAME)");
    }
    let dir = Path::new(dir);
    let held =
        std::fs::File::create(dir.join(name)).context("creating the file with the hostile name")?;
    std::fs::write(dir.join("data"), vec![b'h'; WRITTEN]).context("writing DIR/data")?;
    let rx = UdpSocket::bind("127.0.0.1:0").context("binding the receiver")?;
    let tx = UdpSocket::bind("127.0.0.1:0").context("binding the sender")?;
    let to = rx.local_addr()?;
    let mut buf = [0u8; DATAGRAM_BYTES];
    for _ in 0..DATAGRAMS {
        tx.send_to(&[b'u'; DATAGRAM_BYTES], to)?;
        rx.recv_from(&mut buf)?;
    }
    println!("pid={}", std::process::id());
    std::io::stdout().flush()?;
    std::thread::sleep(hold);
    drop(held);
    println!("done");
    Ok(())
}
