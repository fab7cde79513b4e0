//! Safe against the processes it watches: a local user's process with a hostile command
//! name and file name, an exporter flooded with idle connections and oversized requests,
//! the hangup of a dropped ssh session, a report stopped for seconds, and a limit of open
//! files too low to attach.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    assert_nothing_attached, assert_nothing_attached_within, bin, bin_dir, example,
    exporter_address, field, http_get, kernel_lock, lines_of, Running,
};
use serde_json::Value;

/// What a local user may name its process (15 bytes at most) and a file: a newline to
/// break the row, escapes that retitle the window and clear the screen, and a byte that
/// is not UTF-8.
const COMM: &[u8] = b"x\n\x1b]0;pwn\x07\xff";
const NAME: &[u8] = b"e\nv\x1b[2Jil\xff";
/// As text output must show them.
const COMM_SHOWN: &str = r"x\n\x1b]0;pwn\a\xff";
const NAME_SHOWN: &str = r"e\nv\x1b[2Jil\xff";
/// As JSON carries them: the exact characters, and U+FFFD for the byte that is not UTF-8.
const COMM_JSON: &str = "x\n\u{1b}]0;pwn\u{7}\u{fffd}";
const NAME_JSON: &str = "e\nv\u{1b}[2Jil\u{fffd}";

fn os(bytes: &[u8]) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(bytes)
}

/// Slow machines (emulated VMs) get longer deadlines: a deadline only bounds a failure.
fn slow() -> bool {
    std::env::var_os("STAPR_VM").is_some()
}

fn attach_deadline() -> Duration {
    Duration::from_secs(300)
}

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = bin_dir().join(format!("safety-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("making the test directory");
    d
}

/// The hostile process, started; its pid once it has renamed itself.
struct Hostile {
    child: Child,
    pid: u32,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Hostile {
    fn start(dir: &std::path::Path, hold_s: f64) -> Hostile {
        let mut child = example("hostile")
            .arg(os(COMM))
            .arg(dir)
            .arg(os(NAME))
            .arg(hold_s.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting hostile");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let first = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("hostile's pid line");
        let pid = field(&first, "pid").parse().expect("pid");
        Hostile { child, pid, lines }
    }

    /// Waits for its `done` (file closed, traffic sent) and its exit.
    fn wait_done(mut self) -> u32 {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(120))
            .expect("hostile's done line");
        assert_eq!(line, "done");
        let st = self.child.wait().expect("waiting for hostile");
        assert!(st.success(), "hostile: {st}");
        self.pid
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a report (`args`) around one hostile process that holds its file `hold_s`, and
/// stops it with SIGINT once the process is done; returns the hostile pid and stdout.
fn around_hostile(args: &[&str], name: &str, hold_s: f64) -> (u32, String) {
    let d = dir(name);
    let mut report = Running::spawn(args);
    report.wait_ready(attach_deadline());
    let pid = Hostile::start(&d, hold_s).wait_done();
    report.signal(libc::SIGINT);
    let out = report.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    (pid, out.stdout)
}

/// Text a person reads: no control byte but the line ends, so no escape sequence, and no
/// row broken in two.
fn assert_printable(report: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        assert!(
            !line.chars().any(char::is_control),
            "{report}: line {} holds a control character: {line:?}",
            i + 1
        );
    }
}

/// The rows of `text` that hold the escaped command, each with the header's `columns`
/// (names hold no spaces here; slowopen's headings do).
fn hostile_rows<'a>(report: &str, text: &'a str, header: &str, columns: usize) -> Vec<&'a str> {
    assert_printable(report, text);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with(header)),
        "{report}: no header {header:?} in\n{text}"
    );
    let rows: Vec<&str> = text.lines().filter(|l| l.contains(COMM_SHOWN)).collect();
    assert!(
        !rows.is_empty(),
        "{report}: no row shows {COMM_SHOWN} in\n{text}"
    );
    for r in &rows {
        assert_eq!(r.split_whitespace().count(), columns, "{report}: {r:?}");
    }
    rows
}

fn json_objects(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The JSON objects of process `pid`.
fn rows_of(json: &str, pid: u32) -> Vec<Value> {
    json_objects(json)
        .into_iter()
        .filter(|o| o["pid"] == pid)
        .collect()
}

#[test]
fn hostile_names_are_escaped_in_text_and_exact_in_json() {
    let _k = kernel_lock();
    // nettop: the datagrams it sent itself over loopback.
    let (pid, text) = around_hostile(&["nettop", "-i", "600"], "nettop", 0.0);
    let rows = hostile_rows("nettop", &text, "PID", 8);
    assert!(
        rows.iter().any(|r| r.starts_with(&format!("{pid:>5} "))),
        "{text}"
    );
    let (pid, json) = around_hostile(&["nettop", "-i", "600", "--format", "json"], "nettop", 0.0);
    let mine = rows_of(&json, pid);
    assert!(!mine.is_empty(), "no JSON row for {pid}:\n{json}");
    assert!(mine.iter().any(|o| o["comm"] == COMM_JSON), "{mine:?}");

    // disktop: the file it wrote.
    let (_, text) = around_hostile(&["disktop", "-i", "600"], "disktop", 0.0);
    hostile_rows("disktop", &text, "UID", 7);
    let (pid, json) = around_hostile(
        &["disktop", "-i", "600", "--format", "json"],
        "disktop",
        0.0,
    );
    let mine = rows_of(&json, pid);
    assert!(!mine.is_empty(), "no JSON row for {pid}:\n{json}");
    assert!(mine.iter().any(|o| o["comm"] == COMM_JSON), "{mine:?}");

    // slowopen: the file with the hostile name, held 200 ms.
    let (_, text) = around_hostile(&["slowopen", "--min", "100ms"], "slowopen", 0.2);
    let rows = hostile_rows("slowopen", &text, "Process", 3);
    assert!(
        rows.iter().any(|r| r.ends_with(&format!("/{NAME_SHOWN}"))),
        "slowopen: the escaped file name is not shown:\n{text}"
    );
    let (pid, json) = around_hostile(
        &["slowopen", "--min", "100ms", "--format", "json"],
        "slowopen",
        0.2,
    );
    let mine = rows_of(&json, pid);
    assert!(
        mine.iter().any(|o| o["comm"] == COMM_JSON
            && o["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(&format!("/{NAME_JSON}")))),
        "no JSON row with the exact names for {pid}:\n{json}"
    );
    assert_nothing_attached();
}

/// SIGHUP, as a dropped ssh session sends it, ends `args` as SIGINT does: exit 0 with its
/// final output. Returns stdout and how long the exit took.
fn hang_up(args: &[&str]) -> (String, Duration) {
    let mut report = Running::spawn(args);
    report.wait_ready(attach_deadline());
    let d = dir("sighup");
    // Held open across the hangup: slowopen lists it as still open.
    let held = Hostile::start(&d, 600.0);
    // Traffic for the interval reports' final interval.
    let sent = integration_tests::run(
        example("udp_talker").args(["--count", "100"]),
        Duration::from_secs(30),
    );
    assert!(sent.status.success(), "{sent:?}");
    let t = Instant::now();
    report.signal(libc::SIGHUP);
    let out = report.finish(Duration::from_secs(60));
    let took = t.elapsed();
    drop(held);
    assert_eq!(out.status.code(), Some(0), "{args:?} on SIGHUP: {out:?}");
    (out.stdout, took)
}

#[test]
fn sighup_ends_each_report_with_its_final_output() {
    let _k = kernel_lock();
    let (out, took) = hang_up(&["nettop", "-i", "600"]);
    assert!(
        out.contains(" udp_talker"),
        "nettop's final interval:\n{out}"
    );
    eprintln!("nettop exited {took:?} after SIGHUP");
    let (out, took) = hang_up(&["disktop", "-i", "600"]);
    assert!(out.contains("Average:"), "disktop's final interval:\n{out}");
    eprintln!("disktop exited {took:?} after SIGHUP");
    let (out, took) = hang_up(&["slowopen", "--min", "1ms"]);
    assert!(
        out.contains("Still open") && out.contains(NAME_SHOWN),
        "slowopen's list of files still open:\n{out}"
    );
    eprintln!("slowopen exited {took:?} after SIGHUP");
    let chain = bin("call_chain").display().to_string();
    let (_, took) = hang_up(&["calltree", "--binary", &chain, "-f", "ct_*"]);
    eprintln!("calltree exited {took:?} after SIGHUP");
    assert_nothing_attached();
}

#[test]
fn an_interval_stopped_for_seconds_reports_its_true_length() {
    let _k = kernel_lock();
    let mut nettop = Running::spawn(&["nettop", "-i", "1", "--format", "json"]);
    nettop.wait_ready(attach_deadline());
    nettop.signal(libc::SIGSTOP);
    let sent = integration_tests::run(
        example("udp_talker").args(["--count", "100"]),
        Duration::from_secs(30),
    );
    assert!(sent.status.success(), "{sent:?}");
    let pid: u64 = field(&sent.stdout, "pid").parse().unwrap();
    // The stall under test: the report is stopped this long (the workload, not a wait).
    const STOPPED: Duration = Duration::from_secs(5);
    std::thread::sleep(STOPPED);
    nettop.signal(libc::SIGCONT);
    nettop.wait_stdout("the talker's row", Duration::from_secs(60), |s| {
        s.contains(&format!("\"pid\":{pid},"))
    });
    nettop.signal(libc::SIGINT);
    let out = nettop.finish(Duration::from_secs(60));
    let row = json_objects(&out.stdout)
        .into_iter()
        .find(|o| o["pid"] == pid)
        .expect("the talker's row");
    let length = row["interval_s"].as_f64().expect("interval_s");
    assert!(
        length >= STOPPED.as_secs_f64() - 0.5,
        "the interval that held the stall says {length} s: {row}"
    );
    assert_nothing_attached();
}

#[test]
fn too_few_open_files_is_named_with_its_limit() {
    let _k = kernel_lock();
    // The old verifier-log path, planted as a link to a file root must not touch.
    let victim = bin_dir().join("safety-victim");
    std::fs::write(&victim, "untouched").unwrap();
    for args in [
        vec!["nettop", "-i", "1", "--count", "1"],
        vec!["disktop", "-i", "1", "--count", "1"],
        vec!["slowopen", "-d", "1"],
        vec!["export", "-d", "1", "--listen", "127.0.0.1:0"],
    ] {
        let mut cmd = Command::new("prlimit");
        cmd.arg("--nofile=16").arg(bin("stapr")).args(&args);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prlimit");
        let planted = std::env::temp_dir().join(format!("stapr-verifier-{}.log", child.id()));
        let _ = std::fs::remove_file(&planted);
        let _ = std::os::unix::fs::symlink(&victim, &planted);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let st = child.wait().unwrap();
        let _ = std::fs::remove_file(&planted);
        assert_eq!(st.code(), Some(2), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("stapr: too many open files (limit 16): raise it with `ulimit -n`"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("verifier"), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert_nothing_attached();
}

/// CPU time (user + system) of process `pid` so far, from /proc/PID/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm end") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted after the comm from field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// `stapr export` under `prlimit --nofile=NOFILE`, its address once it serves.
fn exporter_with_nofile(nofile: u32) -> (Running, String) {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}"))
        .arg(bin("stapr"))
        .args(["export", "--listen", "127.0.0.1:0"]);
    let mut exporter = Running::from_command(cmd);
    let ready = exporter.wait_ready(attach_deadline());
    let addr = exporter_address(&ready);
    assert_eq!(http_get(&addr, "/metrics").status, 200);
    (exporter, addr)
}

/// 1,000 connections that never send a request, held by another local user, while a
/// scraper scrapes: it is answered, and the exporter does not spin.
fn flood(exporter: &Running, addr: &str, nofile: u32) {
    let idle: Vec<TcpStream> = (0..1000)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let before = cpu_time(exporter.pid());
    let scrape = Instant::now();
    let r = http_get(addr, "/metrics");
    let answered = scrape.elapsed();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("stapr_probes_attached"), "{}", r.body);
    // The flood held a while longer: an exporter that spins shows it in CPU time.
    const HELD: Duration = Duration::from_secs(10);
    std::thread::sleep(HELD);
    let spent = cpu_time(exporter.pid()) - before;
    eprintln!(
        "--nofile={nofile}: scrape answered in {answered:?} under 1,000 idle connections; exporter CPU {spent:?} over {HELD:?}"
    );
    let limit = if slow() { HELD } else { HELD / 10 };
    assert!(
        spent < limit,
        "--nofile={nofile}: the exporter spent {spent:?} of CPU in {HELD:?}"
    );
    drop(idle);
}

#[test]
fn the_exporter_holds_under_a_flood_of_idle_connections() {
    let _k = kernel_lock();
    // Out of descriptors before --web.max-connections (512): the oldest idle ones go.
    let (exporter, addr) = exporter_with_nofile(120);
    flood(&exporter, &addr, 120);
    exporter.signal(libc::SIGTERM);
    let out = exporter.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // systemd's usual limit: the cap is reached first.
    let (exporter, addr) = exporter_with_nofile(1024);
    flood(&exporter, &addr, 1024);

    // A 1 MB request line is refused with a 4xx status, not a reset.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
            let _ = w.write_all(line.as_bytes());
        })
    };
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a response, not a reset");
    let _ = writer.join();
    let status = String::from_utf8_lossy(&head[9..12]).into_owned();
    assert!(
        status.starts_with('4'),
        "status {status} to a 1 MB request line"
    );
    assert_eq!(http_get(&addr, "/metrics").status, 200);

    exporter.signal(libc::SIGTERM);
    let out = exporter.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_nothing_attached_within(Duration::from_secs(30));
}
