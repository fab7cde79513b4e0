//! TCP talker: writes COUNT chunks of SIZE bytes on one loopback TCP connection to itself
//! (Nagle off, so each write is a segment of its own) and reads them back, like a service
//! streaming small replies.
//!
//! Prints one line: `pid=<pid> sent=<n> size=<bytes> ns_per_write=<ns>`.
//!
//! usage: tcp_talker [--count N] [--size BYTES]

use std::{
    io::{ErrorKind, Read, Write},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

fn main() -> Result<()> {
    let mut count: u64 = 1000;
    let mut size: usize = 64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--count" => count = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            _ => bail!("unknown argument {a}; usage: tcp_talker [--count N] [--size BYTES]"),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut sender = TcpStream::connect(listener.local_addr()?)?;
    let (mut receiver, _) = listener.accept()?;
    sender.set_nodelay(true)?;
    receiver.set_nonblocking(true)?;
    let payload = vec![0x5au8; size.max(1)];
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let start = Instant::now();
    for _ in 0..count {
        sender.write_all(&payload)?;
        // Keep the receive queue short, as a reader keeping up would.
        loop {
            match receiver.read(&mut buf) {
                Ok(0) => bail!("the connection closed"),
                Ok(n) => received += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    let elapsed = start.elapsed();
    drop(sender);
    receiver.set_nonblocking(false)?;
    received += receiver.read_to_end(&mut Vec::new())? as u64;
    if received != count * payload.len() as u64 {
        bail!("read {received} of {} bytes", count * payload.len() as u64);
    }
    println!(
        "pid={} sent={count} size={} ns_per_write={:.1}",
        std::process::id(),
        payload.len(),
        elapsed.as_nanos() as f64 / count.max(1) as f64
    );
    Ok(())
}
