//! UDP talker: sends COUNT datagrams of SIZE bytes to a socket of its own on loopback
//! (or to --to ADDR) and reads them back, like a chatty service on a web/mail node.
//!
//! Prints one line: `pid=<pid> sent=<n> size=<bytes> ns_per_packet=<ns>`.
//!
//! usage: udp_talker [--count N] [--size BYTES] [--to ADDR:PORT]

use std::{
    net::{SocketAddr, UdpSocket},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

fn main() -> Result<()> {
    let mut count: u64 = 1000;
    let mut size: usize = 1000;
    let mut to: Option<SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--count" => count = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            "--to" => to = Some(value()?.parse()?),
            _ => bail!(
                "unknown argument {a}; usage: udp_talker [--count N] [--size BYTES] [--to ADDR:PORT]"
            ),
        }
    }
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let dest = match to {
        Some(addr) => addr,
        None => receiver.local_addr()?,
    };
    let sender = UdpSocket::bind(if dest.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    receiver.set_nonblocking(true)?;
    let payload = vec![0x5au8; size];
    let mut buf = vec![0u8; size.max(1)];
    let start = Instant::now();
    for _ in 0..count {
        sender.send_to(&payload, dest)?;
        // Keep the receive queue short so no datagram is dropped for lack of buffer.
        while receiver.recv(&mut buf).is_ok() {}
    }
    let elapsed = start.elapsed();
    println!(
        "pid={} sent={count} size={size} ns_per_packet={:.1}",
        std::process::id(),
        elapsed.as_nanos() as f64 / count.max(1) as f64
    );
    Ok(())
}
