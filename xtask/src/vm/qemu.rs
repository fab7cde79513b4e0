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

use super::{console::Outcome, kernels::Kernel, servers, Arch};

/// The mount tag of the guest's virtio-9p share.
pub const NINE_P_TAG: &str = "stapr9p";

/// The UDP port the guest's NIC receives the forwarded datagrams on.
pub const NIC_GUEST_PORT: u16 = 5555;

pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    image: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<Outcome> {
    // arm64: QEMU's generic "virt" board; its first serial port is a PL011.
    // x86-64 guests get one TCG thread for both vCPUs: with a thread per vCPU, QEMU let
    // one vCPU run a stale copy of kernel text another was patching (text_poke_bp's
    // int3, already replaced), which the guest took as an oops and panicked (6.12,
    // twice: syscall exit while stapr attached). Two guests still keep both cores busy.
    let (qemu, machine, accel, console): (&str, &[&str], &str, &str) = match kernel.arch {
        Arch::X86_64 => ("qemu-system-x86_64", &[], "tcg,thread=single", "ttyS0"),
        Arch::Aarch64 => ("qemu-system-aarch64", &["-M", "virt"], "tcg", "ttyAMA0"),
    };
    // A virtio-net NIC on QEMU's user network. A datagram the guest sends to
    // 10.0.2.2:<port> reaches this host's loopback, where the forward of that port sends
    // it back in to the guest's NIC_GUEST_PORT: traffic that arrives through a real NIC
    // driver, with no server needed on the host. The guest learns the address from its
    // kernel command line (STAPR_NIC, passed to init as an environment variable).
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("finding a free UDP port for the guest's NIC")?
        .port();
    // The same for TCP (STAPR_NIC_TCP): a connection to 10.0.2.2:<tcp> comes back in to
    // a server on the guest's NIC_GUEST_PORT.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("finding a free TCP port for the guest's NIC")?
        .port();
    let netdev = format!(
        "user,id=n0,hostfwd=udp:127.0.0.1:{port}-:{NIC_GUEST_PORT},hostfwd=tcp:127.0.0.1:{tcp}-:{NIC_GUEST_PORT}"
    );
    // The NFS and SMB servers the guest mounts at 10.0.2.2:<their ports> (STAPR_NFS,
    // STAPR_SMB), for this boot.
    let work = log.parent().context("the log's directory")?;
    let nfs = servers::Server::nfs(work)?;
    let smb = servers::Server::smb(work)?;
    // A host directory shared over virtio-9p (mount tag NINE_P_TAG): another network
    // filesystem for disktop.
    let share = work.join("9p");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share)?;
    let virtfs = format!(
        "local,path={},mount_tag={NINE_P_TAG},security_model=none,id=fs0",
        share.display()
    );
    let mut child = Command::new(qemu)
        .args(machine)
        .args(["-accel", accel, "-cpu", "max", "-m", "2048", "-smp", "2"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console={console} quiet panic=-1 loglevel=4 STAPR_NIC=10.0.2.2:{port} STAPR_NIC_TCP=10.0.2.2:{tcp} STAPR_NFS=10.0.2.2:{}:{} STAPR_SMB=10.0.2.2:{}:{}",
            nfs.port,
            servers::NFS_EXPORT,
            smb.port,
            servers::SMB_SHARE,
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", image.display()))
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
        .args(["-virtfs", &virtfs])
        .args(["-nographic", "-no-reboot"])
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
    drop((nfs, smb));
    transcript.flush()?;
    Ok(o)
}
