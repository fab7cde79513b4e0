//! A real NFS server for the guests: nfs-ganesha (Debian's nfs-ganesha, VFS backend) on
//! this host's loopback, serving a fresh directory over NFSv4.1/TCP. QEMU's user network
//! takes the guest's connections to 10.0.2.2:<port> to it; the guest mounts it with the
//! kernel's own NFS client.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The path guests mount (the export's NFSv4 pseudo path).
pub const EXPORT: &str = "/export";

pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    /// Starts a server exporting a new, empty directory under `work`; returns once it
    /// accepts connections.
    pub fn start(work: &Path) -> Result<Server> {
        let dir = work.join("nfs");
        let _ = std::fs::remove_dir_all(&dir);
        let export = dir.join("export");
        std::fs::create_dir_all(&export)?;
        std::fs::create_dir_all(dir.join("recovery"))?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free TCP port for the NFS server")?
            .port();
        let conf = dir.join("ganesha.conf");
        std::fs::write(&conf, config(&export, &dir.join("recovery"), port))?;
        let log = dir.join("ganesha.log");
        let child = Command::new("ganesha.nfsd")
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(dir.join("ganesha.pid"))
            .args(["-N", "NIV_EVENT"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ganesha.nfsd (Debian's nfs-ganesha, installed by the setup)")?;
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "the NFS server exited ({status}); its log: {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the NFS server did not listen on port {port} within 30 s; its log: {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NFSv4 only (no rpcbind, NLM or rquota), no grace period at start (nothing to reclaim),
/// no delegations (every open reaches the server), root not squashed.
fn config(export: &Path, recovery: &Path, port: u16) -> String {
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
    Pseudo = {EXPORT};
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
