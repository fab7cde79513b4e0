//! Disk writer: writes MiB of data somewhere and reads it back, like a web node writing
//! logs and serving files. Prints `pid=<pid>` first.
//!
//! usage: disk_writer MODE MIB [PATH]
//!   file     write MIB MiB to PATH (1 MiB writes), fsync, read it back (1 MiB reads);
//!            more PATHs: the same on each, in turn
//!   pipe     write MIB MiB into a pipe a thread drains
//!   direct   write MIB MiB to PATH with O_DIRECT (bypassing the page cache)
//!   transfers write MIB MiB to PATH and fsync it, then move the file without read(2) or
//!            write(2): sendfile to a TCP socket (as a web server sends a page), copy_file_range
//!            to PATH2, splice into a pipe; each MIB MiB, drained by threads. Prints
//!            `wrote=` (2 × MIB MiB to files) and `read=` (3 × MIB MiB from the file)
//!   readloop (benchmark) pread 4 KiB at offset 0 of PATH, MIB times (the count);
//!            prints ns_per_read
//!   sendloop (benchmark) sendfile 4 KiB at offset 0 of PATH to /dev/null, MIB times (the
//!            count); prints ns_per_sendfile

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

const MIB: usize = 1 << 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, n) = match args.as_slice() {
        [_, mode, n, ..] => (mode.as_str(), n.parse::<u64>().context("MIB")?),
        _ => bail!("usage: disk_writer file|pipe|direct|transfers|readloop|sendloop MIB [PATH]"),
    };
    let path = args.get(3);
    let need_path = || path.context("this mode needs a PATH");
    println!("pid={}", std::process::id());
    std::io::stdout().flush()?;
    let chunk = vec![0x5au8; MIB];
    match mode {
        "file" => {
            need_path()?;
            for p in &args[3..] {
                let mut f = File::create(p).with_context(|| format!("creating {p}"))?;
                for _ in 0..n {
                    f.write_all(&chunk)?;
                }
                f.sync_all()?;
                drop(f);
                let mut f = File::open(p)?;
                let mut buf = vec![0u8; MIB];
                let mut total = 0u64;
                loop {
                    let got = f.read(&mut buf)?;
                    if got == 0 {
                        break;
                    }
                    total += got as u64;
                }
                println!("wrote={} read={total}", n * MIB as u64);
            }
        }
        "pipe" => {
            let (mut r, mut w) = std::io::pipe()?;
            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; MIB];
                while matches!(r.read(&mut buf), Ok(got) if got > 0) {}
            });
            for _ in 0..n {
                w.write_all(&chunk)?;
            }
            drop(w);
            reader
                .join()
                .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        }
        "direct" => {
            let p = need_path()?;
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_DIRECT)
                .open(p)
                .with_context(|| format!("opening {p} with O_DIRECT"))?;
            // O_DIRECT needs a buffer aligned to the logical block size.
            let layout = std::alloc::Layout::from_size_align(MIB, 4096)?;
            // SAFETY: the layout is non-zero; the buffer is freed below.
            let buf = unsafe { std::alloc::alloc_zeroed(layout) };
            if buf.is_null() {
                bail!("out of memory");
            }
            // SAFETY: buf points to MIB initialised bytes.
            let slice = unsafe { std::slice::from_raw_parts(buf, MIB) };
            let result = (0..n).try_for_each(|i| f.write_all_at(slice, i * MIB as u64));
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(buf, layout) };
            result?;
            println!("wrote={}", n * MIB as u64);
        }
        "transfers" => {
            let (src, dst) = (need_path()?, args.get(4).context("this mode needs PATH2")?);
            let mut f = File::create(src).with_context(|| format!("creating {src}"))?;
            for _ in 0..n {
                f.write_all(&chunk)?;
            }
            f.sync_all()?;
            let f = File::open(src)?;
            let len = n * MIB as u64;
            transfers(&f, File::create(dst)?, len)?;
            println!("wrote={} read={}", 2 * len, 3 * len);
        }
        "readloop" => {
            let p = need_path()?;
            let f = File::open(p)?;
            let mut buf = vec![0u8; 4096];
            let start = Instant::now();
            for _ in 0..n {
                f.read_at(&mut buf, 0)?;
            }
            let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
            println!("reads={n} ns_per_read={ns:.1}");
        }
        "sendloop" => {
            use std::os::fd::AsRawFd;
            let f = File::open(need_path()?)?;
            let null = OpenOptions::new().write(true).open("/dev/null")?;
            let start = Instant::now();
            for _ in 0..n {
                let mut off: libc::off_t = 0;
                // SAFETY: two open fds and a valid offset; no buffers.
                let sent =
                    unsafe { libc::sendfile(null.as_raw_fd(), f.as_raw_fd(), &mut off, 4096) };
                if sent != 4096 {
                    bail!("sendfile sent {sent}: {}", std::io::Error::last_os_error());
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
            println!("sendfiles={n} ns_per_sendfile={ns:.1}");
        }
        _ => bail!("unknown mode {mode}"),
    }
    Ok(())
}

/// sendfile, copy_file_range and splice of `len` bytes of `src` each: to a TCP peer, to
/// `dst`, to a pipe.
fn transfers(src: &File, dst: File, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; MIB];
            while matches!(r.read(&mut buf), Ok(got) if got > 0) {}
        })
    };
    // Calls `step(offset, left)` until `len` bytes moved; each returns how many it moved.
    let all = |what: &str, step: &mut dyn FnMut(&mut i64, usize) -> isize| -> Result<()> {
        let mut off = 0i64;
        while (off as u64) < len {
            let left = (len - off as u64) as usize;
            if step(&mut off, left) <= 0 {
                bail!("{what}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let sock = std::net::TcpStream::connect(listener.local_addr()?)?;
    let peer = drain(Box::new(listener.accept()?.0));
    all("sendfile", &mut |off, left| {
        // SAFETY: valid descriptors; `off` is the kernel's to advance.
        unsafe { libc::sendfile(sock.as_raw_fd(), src.as_raw_fd(), off, left) }
    })?;
    drop(sock);
    all("copy_file_range", &mut |off, left| {
        // SAFETY: valid descriptors; the offsets are the kernel's to advance.
        let mut out = *off;
        unsafe { libc::copy_file_range(src.as_raw_fd(), off, dst.as_raw_fd(), &mut out, left, 0) }
    })?;
    let (r, w) = std::io::pipe()?;
    let reader = drain(Box::new(r));
    all("splice", &mut |off, left| {
        // SAFETY: valid descriptors; `off` is the kernel's to advance.
        unsafe {
            libc::splice(
                src.as_raw_fd(),
                off,
                w.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        }
    })?;
    drop(w);
    for t in [peer, reader] {
        t.join().map_err(|_| anyhow::anyhow!("drain panicked"))?;
    }
    Ok(())
}
