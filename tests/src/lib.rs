//! Helpers for stapr's integration tests: find the built binaries, run stapr against a real
//! kernel, wait for it to attach, and check nothing stays attached afterwards.
//!
//! The binaries come from the same cargo profile as the test executable; `cargo xtask test`
//! builds them first.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// The directory holding the built binaries (target/<profile>).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p stapr -p stapr-examples`, which `cargo xtask test` does)",
        path.display()
    );
    path
}

pub fn stapr() -> Command {
    Command::new(bin("stapr"))
}

pub fn example(name: &str) -> Command {
    Command::new(bin(name))
}

static KERNEL: Mutex<()> = Mutex::new(());

/// Tests that attach probes take this lock: they count system-wide events and check that
/// nothing of stapr's stays loaded, so they must not overlap.
pub fn kernel_lock() -> MutexGuard<'static, ()> {
    KERNEL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The result of a finished command.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running stapr whose stderr is watched for the line that says probes are attached.
pub struct Running {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
    /// What stdout has given so far, as the reader thread receives it.
    stdout_so_far: Arc<Mutex<String>>,
}

const READY: &str = "Ctrl-C to end";

/// The lines `reader` gives, as they come, read by a thread of its own; the channel ends
/// when the reader does.
pub fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Running {
    /// stapr with `args`, its stdout read to the end by a thread (`finish` returns it).
    pub fn spawn(args: &[&str]) -> Running {
        let mut cmd = stapr();
        cmd.args(args);
        Self::from_command(cmd)
    }

    /// `cmd` (stapr under a wrapper such as prlimit), its stdout read as `spawn`'s is.
    pub fn from_command(cmd: Command) -> Running {
        let mut r = Self::start(cmd, Stdio::piped());
        let mut out = r.child.stdout.take().expect("stdout");
        let so_far = r.stdout_so_far.clone();
        r.stdout = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 64 << 10];
            let mut raw = Vec::new();
            while let Ok(n @ 1..) = out.read(&mut buf) {
                raw.extend_from_slice(&buf[..n]);
                // Whole lines only, so a reader never sees half a row.
                let end = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if end > 0 {
                    let lines: Vec<u8> = raw.drain(..end).collect();
                    so_far
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&lines));
                }
            }
            let mut all = so_far.lock().unwrap_or_else(|e| e.into_inner());
            all.push_str(&String::from_utf8_lossy(&raw));
            all.clone()
        }));
        r
    }

    /// stapr with `args` writing to `stdout`, which nobody reads for it (with
    /// `Stdio::piped()`, `take_stdout` hands the pipe to the caller).
    pub fn spawn_with_stdout(args: &[&str], stdout: Stdio) -> Running {
        let mut cmd = stapr();
        cmd.args(args);
        Self::start(cmd, stdout)
    }

    fn start(mut cmd: Command, stdout: Stdio) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting stapr");
        let err = child.stderr.take().expect("stderr");
        Running {
            child,
            stderr_lines: lines_of(err),
            stderr_seen: Vec::new(),
            stdout: None,
            stdout_so_far: Arc::default(),
        }
    }

    /// Waits until the whole lines stdout has given so far satisfy `done` (a `spawn`ed
    /// stapr's); panics after `timeout`, saying it waited for `what`, with the output.
    pub fn wait_stdout(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        let so_far = self.stdout_so_far.clone();
        let seen = wait_for(timeout, || {
            let s = so_far.lock().unwrap_or_else(|e| e.into_inner());
            done(&s).then_some(())
        });
        if seen.is_none() {
            self.stderr_seen.extend(self.stderr_lines.try_iter());
            let out = so_far.lock().unwrap_or_else(|e| e.into_inner()).clone();
            panic!(
                "timed out after {timeout:?} waiting for {what}; stdout (last 2000 bytes):\n{}\nstderr:\n{}",
                tail(&out, 2000),
                self.stderr_seen.join("\n")
            );
        }
    }

    /// The whole lines stdout has given so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout_so_far
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The read end of stdout, for a `spawn_with_stdout(.., Stdio::piped())`.
    pub fn take_stdout(&mut self) -> std::process::ChildStdout {
        self.child
            .stdout
            .take()
            .expect("stdout was piped and not taken yet")
    }

    /// Whether the process has exited (reaping it).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits until stapr says its probes are attached (returns that line); panics with its
    /// stderr otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(READY);
                    self.stderr_seen.push(line.clone());
                    if ready {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "stapr did not attach within {timeout:?}; stderr:\n{}",
                        self.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for exit (killing it after `timeout`) and collects its output.
    pub fn finish(mut self, timeout: Duration) -> Outcome {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("waiting for stapr") {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stderr_seen.extend(self.stderr_lines.try_iter());
                panic!(
                    "stapr did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        self.stderr_seen.extend(self.stderr_lines.try_iter());
        // The reader thread may still be draining the last lines.
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(line);
        }
        Outcome {
            status,
            stdout,
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

/// Polls `ready` (every 20 to 200 ms) until it gives a value, for at most `timeout`.
/// None at the deadline: the caller fails, naming what it waited for. A test waits for
/// the thing it needs this way, never for a fixed time.
pub fn wait_for<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// As [`wait_for`], panicking at the deadline with what it waited for.
pub fn wait_until<T>(what: &str, timeout: Duration, ready: impl FnMut() -> Option<T>) -> T {
    wait_for(timeout, ready)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Waits until process `pid` is blocked in openat(2) (a FIFO without a writer, a
/// stalled server), for at most `timeout`; panics otherwise.
pub fn wait_blocked_in_open(pid: u32, timeout: Duration) {
    #[cfg(target_arch = "x86_64")]
    const OPENAT: &str = "257";
    #[cfg(target_arch = "aarch64")]
    const OPENAT: &str = "56";
    wait_until(&format!("process {pid} blocked in openat"), timeout, || {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
        (s.split_whitespace().next() == Some(OPENAT)).then_some(())
    });
}

/// The last `n` bytes of `s` (on a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// A test that panics with stapr still running must not leave it attached for the tests
/// after it: the process is killed and reaped (a no-op once `finish` has reaped it).
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `stapr doctor` finds the kernel facility `name` ("uprobe.multi", "kprobes")
/// working here.
pub fn facility_works(name: &str) -> bool {
    // Asked once per test binary: the kernel does not change under it.
    static DOCTOR: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let doc = DOCTOR.get_or_init(|| {
        let out = run(
            stapr().args(["doctor", "--format", "json"]),
            Duration::from_secs(60),
        );
        serde_json::from_str(out.stdout.trim()).expect("doctor's JSON")
    });
    doc["facilities"].as_array().is_some_and(|f| {
        f.iter()
            .any(|f| f["name"] == name && f["verdict"] == "works")
    })
}

/// Runs stapr with `args` and asserts its refusal: exit 2, nothing on stdout, one line on
/// stderr that holds each of `says`.
pub fn assert_refused(args: &[&str], says: &[&str], timeout: Duration) {
    let out = run(stapr().args(args), timeout);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {out:?}");
    for s in says {
        assert!(lines[0].contains(s), "{s:?} missing; {args:?}: {out:?}");
    }
}

/// Runs a command to completion with a time limit.
pub fn run(cmd: &mut Command, timeout: Duration) -> Outcome {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => {
            let out = out.expect("collecting output");
            Outcome {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on a child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// Names of loaded eBPF programs that belong to stapr (all are named `stapr_*`).
pub fn stapr_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n.starts_with("stapr_"))
        .collect()
}

/// Asserts that no program of stapr's is loaded: with no pinning, a program outlives
/// stapr only if something still holds it attached.
pub fn assert_nothing_attached() {
    // Program release is deferred to an RCU grace period after the last fd closes, and
    // a report holding many slow-to-detach probes has a background process close them
    // after it exits (uprobes take a grace period each: seconds under emulation).
    let limit = if std::env::var_os("STAPR_VM").is_some() {
        120
    } else {
        30
    };
    assert_nothing_attached_within(Duration::from_secs(limit));
}

/// As [`assert_nothing_attached`], allowing `limit` for a background detach to finish.
pub fn assert_nothing_attached_within(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = stapr_programs_loaded();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("stapr programs still loaded after exit: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host:port an exporter serves on, from its readiness line
/// (`stapr export: serving http://127.0.0.1:40123/metrics (...)`).
pub fn exporter_address(ready: &str) -> String {
    ready
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {ready:?}"))
        .to_owned()
}

/// A response to a plain HTTP/1.1 GET.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The header lines, as received.
    pub head: String,
    pub body: String,
}

/// GETs `path` from `addr` (host:port) with a plain HTTP/1.1 request.
pub fn http_get(addr: &str, path: &str) -> Response {
    use std::io::Write as _;
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading {addr}{path}: {e}"));
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `key=value` pairs from an example's one-line report.
pub fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

/// The export of the NFS server the VM harness runs for each boot (nfs-ganesha on the
/// host), mounted with the kernel's NFS client; unmounted when dropped.
pub struct NfsMount {
    pub dir: PathBuf,
    /// The mount's source as mountinfo shows it (`10.0.2.2:/export`).
    pub source: String,
    relay: Option<Child>,
}

impl NfsMount {
    /// Mounts the export straight from the server.
    pub fn direct(name: &str) -> NfsMount {
        let (host, port, path) = server_env("STAPR_NFS");
        Self::mount(name, &host, &port, &path, None)
    }

    /// Mounts the export through a `tcp_relay` on the guest's loopback: stopping the
    /// relay stalls the server for this mount ([`NfsMount::relay_pid`]).
    pub fn through_relay(name: &str) -> NfsMount {
        let (host, port, path) = server_env("STAPR_NFS");
        let mut relay = example("tcp_relay")
            .arg(format!("{host}:{port}"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting tcp_relay");
        let mut first = String::new();
        BufReader::new(relay.stdout.take().expect("relay stdout"))
            .read_line(&mut first)
            .expect("reading the relay's port");
        let local = field(&first, "port");
        Self::mount(name, "127.0.0.1", &local, &path, Some(relay))
    }

    fn mount(name: &str, host: &str, port: &str, path: &str, relay: Option<Child>) -> NfsMount {
        let dir = PathBuf::from("/tmp").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let source = format!("{host}:{path}");
        // The kernel's own option parsing (no mount.nfs): NFSv4.1 over TCP on the
        // server's port; hard, with a 10 s retransmit timeout (a 2 s stall is waited out);
        // sec=sys, what the server offers (else the client asks for the Kerberos modules
        // at every mount).
        let data = format!("vers=4.1,proto=tcp,port={port},addr={host},sec=sys,hard,timeo=100");
        // The client gives up a mount whose first calls go 30 s unanswered (three tries
        // of 10 s), which a loaded machine's emulated network has done once: it is the
        // setup, not what the tests check, so it is tried again, twice at most.
        for attempt in 1.. {
            match try_mount(&source, &dir, "nfs4", &data) {
                Err(e) if attempt < 3 && e.raw_os_error() == Some(libc::EIO) => {
                    eprintln!("mount of {source} on {}: {e}; again", dir.display());
                }
                r => {
                    r.unwrap_or_else(|e| {
                        panic!("mount -t nfs4 {source} {} -o {data}: {e}", dir.display())
                    });
                    break;
                }
            }
        }
        NfsMount { dir, source, relay }
    }

    /// Stops the relay: the server stops answering this mount until the returned guard
    /// is dropped (also when a test fails: drop it before anything that waits on the
    /// server, such as closing a written file).
    pub fn stall(&self) -> Stalled {
        let pid = self.relay.as_ref().expect("mounted through a relay").id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stalled(pid)
    }
}

/// A stopped relay, continued when dropped.
pub struct Stalled(i32);

impl Drop for Stalled {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

impl Drop for NfsMount {
    fn drop(&mut self) {
        if let Some(r) = &mut self.relay {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(r.id() as i32, libc::SIGCONT) };
        }
        unmount(&self.dir);
        if let Some(r) = &mut self.relay {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

/// mount(2) of `source` on `target` with the kernel's own option parsing; panics with the
/// error when it fails.
pub fn mount(source: &str, target: &std::path::Path, fstype: &str, data: &str) {
    try_mount(source, target, fstype, data).unwrap_or_else(|e| {
        panic!(
            "mount -t {fstype} {source} {} -o {data}: {e}",
            target.display()
        )
    });
}

/// mount(2) of `source` on `target` with the kernel's own option parsing.
fn try_mount(
    source: &str,
    target: &std::path::Path,
    fstype: &str,
    data: &str,
) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (src, dir, fs, opts) = (c(source), c(target.to_str().unwrap()), c(fstype), c(data));
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fs.as_ptr(),
            0,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Detaches the mount on `target` (never waits on a server).
pub fn unmount(target: &std::path::Path) {
    let c = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

/// (host, port, export) from `var`=host:port:export (STAPR_NFS, STAPR_SMB), set by the VM
/// harness.
fn server_env(var: &str) -> (String, String, String) {
    let v = std::env::var(var).unwrap_or_else(|_| panic!("{var} is set by the VM harness"));
    let mut it = v.splitn(3, ':');
    match (it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(path)) => (h.to_owned(), p.to_owned(), path.to_owned()),
        _ => panic!("{var}={v:?} is not host:port:export"),
    }
}

/// The share of the SMB server the VM harness runs for each boot (Samba's smbd on the
/// host), mounted with the kernel's SMB client as an anonymous user; unmounted when
/// dropped.
pub struct SmbMount {
    pub dir: PathBuf,
    /// The mount's source as mountinfo shows it (`//10.0.2.2/export`).
    pub source: String,
}

impl SmbMount {
    pub fn direct(name: &str) -> SmbMount {
        let (host, port, share) = server_env("STAPR_SMB");
        let dir = PathBuf::from("/tmp").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let source = format!("//{host}/{share}");
        // The kernel's own option parsing (no mount.cifs): SMB 3.1.1 on the server's
        // port, a null session (sec=none) that the server maps to its guest account.
        let data = format!("ip={host},port={port},vers=3.1.1,sec=none");
        mount(&source, &dir, "cifs", &data);
        SmbMount { dir, source }
    }
}

impl Drop for SmbMount {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

/// Debian's nginx (the setup installs it), serving `www` on a free loopback port with one
/// worker and `sendfile on`, as Debian's own nginx.conf sets it. Stopped when dropped.
pub struct Nginx {
    server: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// The worker's PID: the process that serves every request.
    pub worker: u32,
}

impl Nginx {
    /// Starts it with its configuration and logs in `dir`, and waits until it listens.
    pub fn start(dir: &std::path::Path, www: &std::path::Path) -> Nginx {
        let bin = std::path::Path::new("/usr/sbin/nginx");
        assert!(
            bin.exists(),
            "nginx is not installed: `cargo xtask setup` installs Debian's package"
        );
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{}}\nhttp {{\n  sendfile on;\n  access_log off;\n  \
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    root {};\n  }}\n}}\n",
                www.display()
            ),
        )
        .unwrap();
        let server = Command::new(bin)
            .args(["-e", &format!("{d}/error.log"), "-p"])
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let addr = format!("127.0.0.1:{port}");
        wait_for(Duration::from_secs(120), || {
            std::net::TcpStream::connect(&addr).ok()
        })
        .unwrap_or_else(|| panic!("nginx did not listen on {addr}"));
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.id())).unwrap();
        let worker = children.split_whitespace().next().unwrap().parse().unwrap();
        Nginx {
            server,
            addr,
            worker,
        }
    }

    /// `GET /<path>` over HTTP/1.0: the whole response, headers included.
    pub fn get(&self, path: &str) -> Vec<u8> {
        use std::io::Write as _;
        let mut c = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(c, "GET /{path} HTTP/1.0\r\nHost: stapr\r\n\r\n").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        got
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.server.id() as i32, libc::SIGTERM) };
        let _ = self.server.wait();
    }
}
