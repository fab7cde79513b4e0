//! TCP relay: forwards every connection it accepts on 127.0.0.1 to TARGET, both ways.
//! Prints `port=<port>` once it listens. Stopping it (SIGSTOP) stalls everything that
//! goes through it, the way a server that stops answering does, without closing a
//! connection; SIGCONT lets it all through again.
//!
//! usage: tcp_relay TARGET (e.g. 10.0.2.2:2049)

use std::{
    io::Write,
    net::{Shutdown, TcpListener, TcpStream},
};

use anyhow::{bail, Context as _, Result};

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target] = args.as_slice() else {
        bail!("usage: tcp_relay TARGET");
    };
    let listener = TcpListener::bind("127.0.0.1:0").context("listening")?;
    println!("port={}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for client in listener.incoming() {
        let client = client.context("accepting")?;
        let server =
            TcpStream::connect(target).with_context(|| format!("connecting to {target}"))?;
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (c2, s2) = (client.try_clone()?, server.try_clone()?);
        std::thread::spawn(move || pump(client, server));
        std::thread::spawn(move || pump(s2, c2));
    }
    Ok(())
}
