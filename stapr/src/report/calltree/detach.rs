//! Detaching: closing hundreds of probes one by one takes the kernel tens of seconds (an
//! RCU grace period each), so with many of them a background process does it after the
//! prompt is back.

use std::time::Instant;

use super::probes::Probes;

/// With more kernel attachments than this, detaching happens in a background process.
const BACKGROUND_DETACH: usize = 16;

/// Detaches `probes`, in the background when there are many and `foreground` is not
/// asked for; says how on return ("detached in 0.12 s", "detaching in the background").
pub fn detach(probes: Probes, foreground: bool) -> String {
    if foreground || probes.links <= BACKGROUND_DETACH {
        let t = Instant::now();
        drop(probes);
        format!("detached in {:.2} s", t.elapsed().as_secs_f64())
    } else {
        in_background(probes);
        "detaching in the background".to_owned()
    }
}

/// Whoever drops the last reference to a probe pays for its detach. So a child process inherits the descriptors; this process closes its own copies first (cheap: the
/// child still holds every probe), lets the child go, and exits at once. The child,
/// detached from the terminal, then closes the last references. Nothing stays attached
/// once it is done.
fn in_background(probes: Probes) {
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
