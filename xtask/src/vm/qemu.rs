//! One boot under QEMU (TCG): the kernel, the initramfs and the staged image, the serial
//! console read line by line into an [`Outcome`] and saved as a log.

use std::{
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{console::Outcome, kernels::Kernel, Arch};

pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    image: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<Outcome> {
    // arm64: QEMU's generic "virt" board; its first serial port is a PL011.
    let (qemu, machine, console): (&str, &[&str], &str) = match kernel.arch {
        Arch::X86_64 => ("qemu-system-x86_64", &[], "ttyS0"),
        Arch::Aarch64 => ("qemu-system-aarch64", &["-M", "virt"], "ttyAMA0"),
    };
    let mut child = Command::new(qemu)
        .args(machine)
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console={console} quiet panic=-1 loglevel=4"))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", image.display()))
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx2.send(format!("qemu: {l}")).is_err() {
                break;
            }
        }
    });
    let mut o = Outcome::default();
    // Written as it arrives, so a long boot can be followed with `tail -f`.
    let mut transcript = std::io::LineWriter::new(
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?,
    );
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            o.timed_out = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                writeln!(transcript, "{line}")?;
                if o.feed(line) {
                    // Give the panic message a moment to finish, then stop.
                    std::thread::sleep(Duration::from_millis(500));
                    for l in rx.try_iter() {
                        writeln!(transcript, "{l}")?;
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    transcript.flush()?;
    Ok(o)
}
