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
//!   net_peer tcp-give --bind ADDR --count N --bytes B [--size S]
//!       prints `port=<p>`, accepts N connections and answers each (in a thread of its
//!       own) with B bytes once the client's request arrived (with --size, in writes of
//!       S bytes, each sent at once: TCP_NODELAY); prints `served=<n>`.
//!   net_peer tcp-fetch --to ADDR [--rcvbuf B --no-read SECS]
//!       sends a one-line request, reads the answer to its end, prints `received=<bytes>`.
//!       With --rcvbuf, shrinks its receive buffer to B once connected, when the window
//!       already offered lets far more in, and starts reading only after SECS: the
//!       kernel then collapses the receive queue to fit it.
//!   net_peer udp-many --to ADDR --count N
//!       has N UDP sockets open at once (in as many child processes as the open-file
//!       limit takes), sends one byte from each to ADDR, prints `sent=<n>` once every
//!       socket has sent, then closes them all.
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
    let (mut count, mut bytes, mut no_read) = (1u64, 0u64, None);
    let (mut size, mut rcvbuf): (Option<usize>, Option<i32>) = (None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--bind" | "--to" => addr = Some(value()?.parse()?),
            "--count" => count = value()?.parse()?,
            "--size" => size = Some(value()?.parse()?),
            "--bytes" => bytes = value()?.parse()?,
            "--no-read" => no_read = Some(Duration::from_secs_f64(value()?.parse()?)),
            "--rcvbuf" => rcvbuf = Some(value()?.parse()?),
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
            let size = size.unwrap_or(100);
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
        "tcp-give" => {
            let l = TcpListener::bind(addr)?;
            println!("port={}", l.local_addr()?.port());
            std::io::Write::flush(&mut std::io::stdout())?;
            let page = std::sync::Arc::new(vec![0x5au8; bytes as usize]);
            let write = size.unwrap_or(page.len()).max(1);
            let mut served = Vec::new();
            for _ in 0..count {
                let (mut c, _) = l.accept()?;
                let page = page.clone();
                served.push(std::thread::spawn(move || -> Result<()> {
                    c.set_read_timeout(Some(GIVE_UP))?;
                    c.set_nodelay(size.is_some())?;
                    let mut request = [0u8; 512];
                    let _ = c.read(&mut request)?;
                    for chunk in page.chunks(write) {
                        c.write_all(chunk)?;
                    }
                    Ok(())
                }));
            }
            for t in served {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a serving thread panicked"))??;
            }
            println!("served={count}");
            Ok(())
        }
        "tcp-fetch" => {
            let mut c = TcpStream::connect(addr)?;
            c.set_read_timeout(Some(GIVE_UP))?;
            if let Some(b) = rcvbuf {
                set_rcvbuf(&c, b)?;
            }
            c.write_all(b"GET /page\r\n")?;
            if let Some(wait) = no_read {
                std::thread::sleep(wait);
            }
            let mut got = Vec::new();
            c.read_to_end(&mut got)?;
            println!("received={}", got.len());
            Ok(())
        }
        "udp-many" => udp_many(addr, count),
        _ => bail!(
            "unknown mode {mode}: udp-recv, udp-send, tcp-serve, tcp-send, tcp-give, tcp-fetch, udp-many"
        ),
    }
}

/// SO_RCVBUF: the receive buffer `socket` may fill (the kernel doubles it for its own
/// bookkeeping).
fn set_rcvbuf(socket: &impl std::os::fd::AsRawFd, bytes: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt on a socket we hold, with an int option.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("SO_RCVBUF: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn udp_recv(addr: SocketAddr, count: u64, no_read: Option<Duration>) -> Result<()> {
    let s = UdpSocket::bind(addr)?;
    // Room for every datagram a test sends while nobody reads.
    let _ = set_rcvbuf(&s, 8 << 20);
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

/// udp-many: children of at most the hard open-file limit's sockets each, all held open
/// until every child has sent (a byte on `ready` each) and the parent lets them go (EOF
/// on `release`).
fn udp_many(addr: SocketAddr, count: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let per = limit.rlim_max.min(1 << 20).saturating_sub(64).max(1);
    let pipe = || -> Result<[libc::c_int; 2]> {
        let mut fds = [0; 2];
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        Ok(fds)
    };
    let (ready, release) = (pipe()?, pipe()?);
    let mut children = Vec::new();
    let mut left = count;
    while left > 0 {
        let n = left.min(per);
        left -= n;
        // Each child its own source address on loopback: one address has only the
        // ephemeral port range's ports (about 28,000).
        let local: SocketAddr = if addr.is_ipv4() {
            format!("127.0.0.{}:0", 2 + children.len()).parse()?
        } else {
            "[::]:0".parse()?
        };
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                let mut held = Vec::with_capacity(n as usize);
                let mut ok = 1u8;
                for _ in 0..n {
                    match UdpSocket::bind(local).and_then(|s| s.send_to(b"x", addr).map(|_| s)) {
                        Ok(s) => held.push(s),
                        Err(e) => {
                            eprintln!("net_peer udp-many: {e}");
                            ok = 0;
                            break;
                        }
                    }
                }
                unsafe {
                    libc::write(ready[1], (&ok as *const u8).cast(), 1);
                    libc::close(release[1]);
                    let mut b = 0u8;
                    libc::read(release[0], (&mut b as *mut u8).cast(), 1);
                    libc::_exit(if ok == 1 { 0 } else { 1 });
                }
            }
            pid => children.push(pid),
        }
    }
    unsafe {
        libc::close(ready[1]);
        libc::close(release[0]);
    }
    let mut sent_ok = true;
    for _ in &children {
        let mut b = 0u8;
        if unsafe { libc::read(ready[0], (&mut b as *mut u8).cast(), 1) } != 1 || b != 1 {
            sent_ok = false;
        }
    }
    if sent_ok {
        println!("sent={count}");
    }
    unsafe { libc::close(release[1]) };
    for pid in children {
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        sent_ok &= libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    }
    if !sent_ok {
        bail!("not every socket sent");
    }
    Ok(())
}
