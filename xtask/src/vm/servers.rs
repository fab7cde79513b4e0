//! Real network filesystem servers for the guests, on this host's loopback, each serving
//! a fresh directory; QEMU's user network takes the guest's connections to
//! 10.0.2.2:<port> to them, and the guest mounts them with the kernel's own clients.
//! - NFS: nfs-ganesha (Debian's nfs-ganesha, VFS backend), NFSv4.1/TCP.
//! - SMB: Samba's smbd (Debian's samba), SMB3, one share open to guests.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The path guests mount from the NFS server (the export's NFSv4 pseudo path).
pub const NFS_EXPORT: &str = "/export";
/// The SMB share guests mount (`//10.0.2.2/<share>`).
pub const SMB_SHARE: &str = "export";

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// nfs-ganesha exporting a new, empty directory under `work`.
    pub fn nfs(work: &Path) -> Result<Server> {
        let (dir, export, port) = fresh(work, "nfs")?;
        std::fs::create_dir_all(dir.join("recovery"))?;
        let conf = dir.join("ganesha.conf");
        std::fs::write(&conf, nfs_config(&export, &dir.join("recovery"), port))?;
        let log = dir.join("ganesha.log");
        let mut cmd = Command::new("ganesha.nfsd");
        cmd.arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"]);
        listening(
            cmd,
            port,
            "the NFS server (ganesha.nfsd, Debian's nfs-ganesha, installed by the setup)",
            &log,
        )
    }

    /// smbd sharing a new, empty directory under `work` as [`SMB_SHARE`].
    pub fn smb(work: &Path) -> Result<Server> {
        let (dir, export, port) = fresh(work, "smb")?;
        // Guests write as the guest account.
        std::fs::set_permissions(
            &export,
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )?;
        for d in ["private", "lock", "state", "cache", "ncalrpc"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let conf = dir.join("smb.conf");
        std::fs::write(&conf, smb_config(&dir, &export, port))?;
        let log = dir.join("log.smbd");
        let mut cmd = Command::new("smbd");
        cmd.args(["--foreground", "--no-process-group", "--configfile"])
            .arg(&conf);
        listening(
            cmd,
            port,
            "the SMB server (smbd, Debian's samba, installed by the setup)",
            &log,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `work/<name>` emptied, its `export` directory, and a free TCP port on the loopback.
fn fresh(work: &Path, name: &str) -> Result<(PathBuf, PathBuf, u16)> {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let export = dir.join("export");
    std::fs::create_dir_all(&export)?;
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .with_context(|| format!("finding a free TCP port for the {name} server"))?
        .port();
    Ok((dir, export, port))
}

/// Starts `cmd`; returns once it accepts connections on `port`.
fn listening(mut cmd: Command, port: u16, what: &str, log: &Path) -> Result<Server> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("{what} exited ({status}); its log: {}", log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not listen on port {port} within 30 s; its log: {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

/// NFSv4 only (no rpcbind, NLM or rquota), no grace period at start (nothing to reclaim),
/// no delegations (every open reaches the server), root not squashed.
fn nfs_config(export: &Path, recovery: &Path, port: u16) -> String {
    format!(
        r#"NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSv4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
    Only_Numeric_Owners = true;
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = {NFS_EXPORT};
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Transports = TCP;
    Protocols = 4;
    Delegations = None;
    FSAL {{ Name = VFS; }}
}}
"#,
        recovery = recovery.display(),
        export = export.display(),
    )
}

/// A standalone server on the loopback only, every state directory under `dir`, no
/// NetBIOS, no printers; one share that an anonymous (null session) client may write.
fn smb_config(dir: &Path, export: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"[global]
    server role = standalone server
    smb ports = {port}
    interfaces = 127.0.0.1
    bind interfaces only = yes
    disable netbios = yes
    private dir = {d}/private
    lock directory = {d}/lock
    state directory = {d}/state
    cache directory = {d}/cache
    pid directory = {d}
    ncalrpc dir = {d}/ncalrpc
    log file = {d}/log.smbd
    log level = 1
    map to guest = Bad User
    restrict anonymous = 0
    load printers = no
    printcap name = /dev/null
    disable spoolss = yes
    server min protocol = SMB3

[{SMB_SHARE}]
    path = {export}
    guest ok = yes
    guest only = yes
    read only = no
"#,
        export = export.display(),
    )
}
