//! File holder: opens a file, keeps it open for a while, then lets it go in one of the
//! ways slowopen must recognise. Prints `pid=<pid>` (and `fd=<fd>`) when the file is open.
//!
//! usage: file_holder MODE SECONDS PATH
//!   close     close(2) from the opening thread
//!   thread    open in the main thread, close from another thread
//!   exit      exit the process with the file still open
//!   dup2      dup2() another file onto the fd
//!   exec      open with O_CLOEXEC, then exec /bin/true
//!   failed    an open that fails (PATH must not exist), then close(0), which was opened
//!             before the program started
//!   open      open read-only without creating (waits on a FIFO until a writer comes, on
//!             a stalled network filesystem until its server answers), then as close;
//!             also prints open_s=<how long the open call took>
//!   loop      (benchmark) open + read 4 KiB + close, SECONDS is the iteration count;
//!             prints ns_per_iteration

use std::{
    ffi::CString,
    io::Write,
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

fn open(path: &Path, flags: i32) -> Result<i32> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CREAT, 0o644) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("open {}", path.display()));
    }
    Ok(fd)
}

fn close(fd: i32) {
    // SAFETY: closing an fd we opened.
    unsafe { libc::close(fd) };
}

fn announce(fd: i32) {
    println!("pid={} tid={} fd={fd}", std::process::id(), unsafe {
        libc::gettid()
    });
    let _ = std::io::stdout().flush();
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, secs, path] = args.as_slice() else {
        bail!("usage: file_holder close|thread|exit|dup2|exec|failed|open|loop SECONDS PATH");
    };
    let path = Path::new(path);
    if mode == "loop" {
        return bench_loop(path, secs.parse().context("iteration count")?);
    }
    let hold = Duration::from_secs_f64(secs.parse().context("seconds")?);
    match mode.as_str() {
        "close" => {
            let fd = open(path, libc::O_RDWR)?;
            announce(fd);
            std::thread::sleep(hold);
            close(fd);
        }
        "open" => {
            let c = CString::new(path.as_os_str().as_bytes())?;
            let t = Instant::now();
            // SAFETY: a valid NUL-terminated path.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
            let took = t.elapsed().as_secs_f64();
            if fd < 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("open {}", path.display()));
            }
            println!("open_s={took:.6}");
            announce(fd);
            std::thread::sleep(hold);
            close(fd);
        }
        "thread" => {
            let fd = open(path, libc::O_RDWR)?;
            announce(fd);
            std::thread::spawn(move || {
                std::thread::sleep(hold);
                println!("closer_tid={}", unsafe { libc::gettid() });
                close(fd);
            })
            .join()
            .map_err(|_| anyhow::anyhow!("closer thread panicked"))?;
        }
        "exit" => {
            let fd = open(path, libc::O_RDWR)?;
            announce(fd);
            std::thread::sleep(hold);
            // _exit: no destructor or stdio close runs, the kernel closes the file.
            unsafe { libc::_exit(0) };
        }
        "dup2" => {
            let fd = open(path, libc::O_RDWR)?;
            announce(fd);
            std::thread::sleep(hold);
            let other = open(Path::new("/dev/null"), libc::O_RDONLY)?;
            // SAFETY: both fds are ours.
            if unsafe { libc::dup2(other, fd) } < 0 {
                bail!("dup2: {}", std::io::Error::last_os_error());
            }
            close(other);
            close(fd);
        }
        "exec" => {
            let fd = open(path, libc::O_RDWR | libc::O_CLOEXEC)?;
            announce(fd);
            std::thread::sleep(hold);
            let prog = CString::new("/bin/true")?;
            let argv = [prog.as_ptr(), std::ptr::null()];
            // SAFETY: argv is NULL-terminated and outlives the call.
            unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
            bail!("exec /bin/true: {}", std::io::Error::last_os_error());
        }
        "failed" => {
            let c = CString::new(path.as_os_str().as_bytes())?;
            // SAFETY: a valid path; the open is expected to fail.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
            if fd >= 0 {
                bail!(
                    "{} exists: the failed mode needs a missing path",
                    path.display()
                );
            }
            announce(fd);
            std::thread::sleep(hold);
            close(0);
        }
        _ => bail!("unknown mode {mode}"),
    }
    Ok(())
}

/// open + read 4 KiB + close on a cached file: the cost slowopen adds to a file server.
fn bench_loop(path: &Path, iterations: u64) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: valid path and buffer.
        unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                bail!(
                    "open {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
            libc::close(fd);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations.max(1) as f64;
    println!(
        "pid={} iterations={iterations} ns_per_iteration={ns:.1}",
        std::process::id()
    );
    Ok(())
}
