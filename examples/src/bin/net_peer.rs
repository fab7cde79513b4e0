//! One end of a network conversation, so that sender and receiver are separate processes:
//!
//!   net_peer udp-recv --bind ADDR [--count N] [--no-read SECS]
//!       binds, prints `port=<p>` and waits for N datagrams, reading each (or, with
//!       --no-read, never reads and just holds the socket that long); then prints
//!       `pid=<pid> received=<n> bytes=<b>`.
//!   net_peer udp-send --to ADDR --count N --size BYTES
//!   net_peer tcp-serve --bind ADDR
//!       prints `port=<p>`, accepts one connection, reads to its end, answers `ok`, prints
//!       `pid=<pid> received=<bytes>`.
//!   net_peer tcp-send --to ADDR --bytes N
//!
//! Every mode prints `pid=<pid>` first thing, and the receivers give up after 30 s.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

const GIVE_UP: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().context("usage: net_peer MODE [options]")?;
    let mut addr: Option<SocketAddr> = None;
    let (mut count, mut size, mut bytes, mut no_read) = (1u64, 100usize, 0u64, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bind" | "--to" => addr = Some(value()?.parse()?),
            "--count" => count = value()?.parse()?,
            "--size" => size = value()?.parse()?,
            "--bytes" => bytes = value()?.parse()?,
            "--no-read" => no_read = Some(Duration::from_secs_f64(value()?.parse()?)),
            _ => bail!("unknown argument {a}"),
        }
    }
    let addr = addr.context("--bind or --to is required")?;
    println!("pid={}", std::process::id());
    match mode.as_str() {
        "udp-recv" => udp_recv(addr, count, no_read),
        "udp-send" => {
            let s = UdpSocket::bind(if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })?;
            let payload = vec![0x5au8; size];
            for _ in 0..count {
                s.send_to(&payload, addr)?;
                // Paced so that no receive queue overflows.
                std::thread::sleep(Duration::from_micros(100));
            }
            println!("sent={count} size={size}");
            Ok(())
        }
        "tcp-serve" => {
            let l = TcpListener::bind(addr)?;
            println!("port={}", l.local_addr()?.port());
            let (mut c, _) = l.accept()?;
            c.set_read_timeout(Some(GIVE_UP))?;
            let mut buf = vec![0u8; 65536];
            let mut got = 0u64;
            loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            c.write_all(b"ok")?;
            println!("received={got}");
            Ok(())
        }
        "tcp-send" => {
            let mut c = TcpStream::connect(addr)?;
            let chunk = vec![0x5au8; 8192];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                c.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            c.shutdown(std::net::Shutdown::Write)?;
            let mut answer = Vec::new();
            c.read_to_end(&mut answer)?;
            println!("answer={}", String::from_utf8_lossy(&answer));
            Ok(())
        }
        _ => bail!("unknown mode {mode}: udp-recv, udp-send, tcp-serve, tcp-send"),
    }
}

fn udp_recv(addr: SocketAddr, count: u64, no_read: Option<Duration>) -> Result<()> {
    let s = UdpSocket::bind(addr)?;
    // Room for every datagram a test sends while nobody reads.
    let room: libc::c_int = 8 << 20;
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &room as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    println!("port={}", s.local_addr()?.port());
    if let Some(hold) = no_read {
        std::thread::sleep(hold);
        println!("received=0 bytes=0");
        return Ok(());
    }
    s.set_read_timeout(Some(GIVE_UP))?;
    let mut buf = vec![0u8; 65536];
    let (mut got, mut total) = (0u64, 0u64);
    while got < count {
        let n = s.recv(&mut buf).context("waiting for datagrams")?;
        got += 1;
        total += n as u64;
    }
    println!("received={got} bytes={total}");
    Ok(())
}
