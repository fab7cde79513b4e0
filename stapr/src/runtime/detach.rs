//! Detaching at exit. Closing a classic tracepoint, a kprobe or a uprobe costs the kernel
//! an RCU grace period each (tens of milliseconds; seconds for hundreds of probes), and it
//! happens one at a time. A report holding more than a few of them hands the closing to a
//! background process, so the prompt comes back at once after Ctrl-C, `--duration` or a
//! reader that left; everything is detached a moment later.

use std::time::Instant;

/// With more slow-to-detach attachments than this, detaching happens in the background.
const BACKGROUND_DETACH: usize = 4;

/// Lets go of `probes` (whatever holds the attachments), in the background when it holds
/// more than a few `slow` attachments and `foreground` is not asked for; says how
/// ("detached in 0.12 s", "detaching in the background").
pub fn release<T>(probes: T, slow: usize, foreground: bool) -> String {
    if foreground || slow <= BACKGROUND_DETACH {
        let t = Instant::now();
        drop(probes);
        format!("detached in {:.2} s", t.elapsed().as_secs_f64())
    } else {
        in_background(probes);
        "detaching in the background".to_owned()
    }
}

/// Whoever drops the last reference to a probe pays for its detach. So a child process
/// inherits the descriptors; this process closes its own copies first (cheap: the
/// child still holds every probe), lets the child go, and exits at once. The child,
/// detached from the terminal, then closes the last references. Nothing stays attached
/// once it is done.
fn in_background<T>(probes: T) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        drop(probes);
        return;
    }
    let [read_end, write_end] = fds;
    // SAFETY: fork in a single-threaded process (the runtime is gone); the child only
    // waits, closes descriptors and exits.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: plain syscalls on our own process and descriptors.
            unsafe {
                libc::close(write_end);
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                }
                // Until the parent has let go of its copies (EOF).
                let mut byte = 0u8;
                while libc::read(read_end, (&raw mut byte).cast(), 1) < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                }
            }
            drop(probes);
            // SAFETY: exit without running the parent's exit handlers a second time.
            unsafe { libc::_exit(0) }
        }
        -1 => drop(probes),
        _ => {
            drop(probes);
            // SAFETY: our own descriptors.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
        }
    }
}
