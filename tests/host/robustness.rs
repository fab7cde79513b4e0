//! Under pressure, each report driven to the edge by a real process: a reader that stops
//! reading or goes away, a user with only the BPF capabilities, tables driven full, kill -9,
//! an exporter hammered by scrapers, and every kind of bad input.

use std::{
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    assert_nothing_attached, assert_nothing_attached_within, bin, bin_dir, example,
    exporter_address, facility_works, field, http_get, kernel_lock, run, stapr, Running,
};
use serde_json::Value;

/// How soon a stop (signal, --duration, a reader gone) must end a report. Emulated VMs
/// get more: everything there runs several times slower.
fn within() -> Duration {
    // A stop that is not honoured is never honoured: the bound only has to be far above
    // a slow machine's exit (tens of ms here, about a second under emulation).
    if std::env::var_os("STAPR_VM").is_some() {
        Duration::from_secs(45)
    } else {
        Duration::from_secs(15)
    }
}

/// Waits for `r` to exit; panics when it takes longer than `limit`. Returns the time taken.
fn exits_within(r: &mut Running, limit: Duration, what: &str) -> Duration {
    let t = Instant::now();
    while !r.exited() {
        assert!(t.elapsed() < limit, "{what}: still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

/// A pipe whose buffer (one page) is already full: whoever writes to it blocks. Returns
/// (read end, write end); the read end must stay open, and is never read.
fn full_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which the OwnedFds then own.
    let (r, w) = unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let fd = w.as_raw_fd();
    // SAFETY: fcntl and write on our own pipe.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let page = [b'x'; 4096];
        while libc::write(fd, page.as_ptr().cast(), page.len()) > 0 {}
        libc::fcntl(fd, libc::F_SETFL, flags);
    }
    (r, w)
}

/// `call_chain` making calls until killed, started once the tracer is attached.
struct Calls(Child);

impl Calls {
    fn waiting() -> Calls {
        Calls(
            example("call_chain")
                .args(["100000000", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("starting call_chain"),
        )
    }

    fn go(&mut self) {
        let stdin = self.0.stdin.as_mut().expect("call_chain stdin");
        stdin
            .write_all(b"go\n")
            .expect("starting call_chain's calls");
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn call_chain_args() -> Vec<String> {
    let path = bin("call_chain").display().to_string();
    ["calltree", "--binary", &path, "-f", "ct_*"]
        .map(str::to_owned)
        .to_vec()
}

/// Writes a little to a file on this machine's disk every 100 ms while it lives, so
/// disktop has something to print.
struct DiskActivity(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl DiskActivity {
    fn start() -> DiskActivity {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let path = bin_dir().join("robustness-disk");
        let h = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write(&path, [b'd'; 4096]);
                // Paces the workload only.
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::fs::remove_file(&path);
        });
        DiskActivity(stop, Some(h))
    }
}

impl Drop for DiskActivity {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn a_stop_is_honoured_while_stdout_is_blocked() {
    let _k = kernel_lock();
    let ct = call_chain_args();
    let ct: Vec<&str> = ct.iter().map(String::as_str).collect();
    let cases: [(&str, Vec<&str>, i32); 5] = [
        ("nettop", vec!["nettop", "-i", "200ms"], libc::SIGINT),
        ("disktop", vec!["disktop", "-i", "200ms"], libc::SIGTERM),
        ("slowopen", vec!["slowopen"], libc::SIGINT),
        ("calltree", ct.clone(), libc::SIGINT),
        ("calltree SIGTERM", ct, libc::SIGTERM),
    ];
    for (what, args, sig) in cases {
        let (_read_end, write_end) = full_pipe();
        let _disk = DiskActivity::start();
        let mut calls = what.starts_with("calltree").then(Calls::waiting);
        let mut r = Running::spawn_with_stdout(&args, Stdio::from(write_end));
        r.wait_ready(Duration::from_secs(300));
        calls.iter_mut().for_each(Calls::go);
        // Long enough for the report to have tried to write (and blocked, before). On a
        // slower machine it may not have tried yet: the test is weaker then, never wrong.
        std::thread::sleep(Duration::from_millis(800));
        assert!(!r.exited(), "{what} ended by itself");
        r.signal(sig);
        let took = exits_within(&mut r, within(), what);
        let out = r.finish(Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
        eprintln!("{what}: stopped {took:?} after the signal");
        assert_nothing_attached();
    }
}

#[test]
fn duration_is_honoured_while_stdout_is_blocked() {
    let _k = kernel_lock();
    let mut ct = call_chain_args();
    ct.extend(["-d".to_owned(), "1".to_owned()]);
    let ct: Vec<&str> = ct.iter().map(String::as_str).collect();
    for (what, args) in [("slowopen", vec!["slowopen", "-d", "1"]), ("calltree", ct)] {
        let (_read_end, write_end) = full_pipe();
        let mut calls = (what == "calltree").then(Calls::waiting);
        let mut r = Running::spawn_with_stdout(&args, Stdio::from(write_end));
        r.wait_ready(Duration::from_secs(300));
        calls.iter_mut().for_each(Calls::go);
        exits_within(&mut r, Duration::from_secs(1) + within(), what);
        let out = r.finish(Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
        assert_nothing_attached();
    }
}

#[test]
fn a_reader_that_goes_away_ends_each_report() {
    let _k = kernel_lock();
    let _disk = DiskActivity::start();
    let ct = call_chain_args();
    let ct: Vec<&str> = ct.iter().map(String::as_str).collect();
    for (what, args) in [
        ("nettop", vec!["nettop", "-i", "2"]),
        ("disktop", vec!["disktop", "-i", "1"]),
        ("slowopen", vec!["slowopen"]),
        ("calltree", ct),
    ] {
        let mut calls = (what == "calltree").then(Calls::waiting);
        let mut r = Running::spawn_with_stdout(&args, Stdio::piped());
        let mut reader = BufReader::new(r.take_stdout());
        r.wait_ready(Duration::from_secs(300));
        calls.iter_mut().for_each(Calls::go);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .expect("reading the first line");
        // `| head -1`: the reader takes one line and leaves.
        drop(reader);
        exits_within(&mut r, within(), what);
        let out = r.finish(Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(0), "{what}: {out:?}");
        assert_nothing_attached_within(Duration::from_secs(30));
    }
}

#[test]
fn only_bpf_capabilities_run_the_reports_or_name_what_is_missing() {
    let _k = kernel_lock();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("setpriv (util-linux) is installed by the project's setup and in the VM image");
    let as_nobody = |caps: &str, args: &[&str]| {
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(bin("stapr"))
            .args(args);
        run(&mut c, Duration::from_secs(60))
    };
    let reports: [&[&str]; 3] = [
        &["nettop", "-i", "200ms", "--count", "1"],
        &["disktop", "-i", "200ms", "--count", "1"],
        &["slowopen", "-d", "200ms"],
    ];
    // Debian's kernels set perf_event_paranoid to 3: tracepoint perf events then need
    // CAP_SYS_ADMIN, and the classic-tracepoint reports must say so.
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2);
    // Exit 0, or exit 2 with one line naming what is missing (one of `missing`).
    let runs_or_names =
        |out: &integration_tests::Outcome, args: &[&str], missing: &[&str]| match out.status.code()
        {
            Some(0) => {}
            Some(2) => {
                let lines: Vec<&str> = out
                    .stderr
                    .lines()
                    .filter(|l| l.starts_with("stapr: "))
                    .collect();
                assert_eq!(lines.len(), 1, "{args:?}: {out:?}");
                assert!(
                    missing.iter().any(|m| lines[0].contains(m)),
                    "{args:?}: {out:?} names none of {missing:?}"
                );
            }
            _ => panic!("{args:?}: {out:?}"),
        };
    // Charging UDP receives to sockets through a cgroup_skb program (kernels with
    // sock:sock_recv_length) also takes CAP_NET_ADMIN; without it nettop says so.
    let nettop = reports[0];
    let out = as_nobody("+bpf,+perfmon", nettop);
    runs_or_names(&out, nettop, &["CAP_NET_ADMIN"]);
    for args in reports {
        let net = if args[0] == "nettop" {
            ",+net_admin"
        } else {
            ""
        };
        let out = as_nobody(&format!("+bpf,+perfmon{net}"), args);
        runs_or_names(&out, args, &["CAP_DAC_READ_SEARCH", "perf_event_paranoid"]);
        if args[0] == "nettop" {
            assert_eq!(
                out.status.code(),
                Some(0),
                "nettop needs no tracefs: {out:?}"
            );
        }
        let out = as_nobody(&format!("+bpf,+perfmon,+dac_read_search{net}"), args);
        if paranoid < 3 {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        } else {
            runs_or_names(&out, args, &["perf_event_paranoid"]);
        }
    }
    assert_nothing_attached();
}

/// Runs `report` (with JSON output), the workload, then Ctrl-C; returns stdout's objects.
fn json_around(report: &[&str], workload: &mut Command) -> (Vec<Value>, String) {
    let mut r = Running::spawn(report);
    r.wait_ready(Duration::from_secs(300));
    let w = run(workload, Duration::from_secs(600));
    assert!(w.status.success(), "{w:?}");
    // The workload has exited: what it did is counted, or waits in the ring, which a stop
    // reads to the end.
    r.signal(libc::SIGINT);
    let out = r.finish(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let objects = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (objects, w.stdout)
}

/// Packets dropped because a CPU's backlog queue was full, since boot (the second column
/// of /proc/net/softnet_stat, per CPU, in hex).
fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .unwrap()
        .lines()
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

fn lost(objects: &[Value]) -> u64 {
    objects.iter().filter_map(|o| o["lost"].as_u64()).sum()
}

/// What the workload did = what was counted + what was lost, give or take what other
/// processes did meanwhile (their losses cannot be told apart).
fn adds_up(what: &str, counted: u64, lost: u64, done: u64) {
    assert!(
        lost > 0,
        "{what}: the table never filled ({counted} counted)"
    );
    assert!(
        counted <= done + 2000,
        "{what}: {counted} counted of {done}"
    );
    assert!(
        counted + lost >= done,
        "{what}: {counted} + {lost} lost < {done}"
    );
    assert!(
        counted + lost <= done + 2000,
        "{what}: {counted} + {lost} lost >> {done}"
    );
}

#[test]
fn full_tables_show_their_losses_in_that_interval() {
    let _k = kernel_lock();
    // nettop: 10,500 processes, one datagram each (a transmit and a receive under the
    // sender on loopback, with receives charged where the device delivers them: nobody
    // reads these datagrams), against 10,240 keys. A datagram the kernel drops from a
    // full backlog queue before it is received has no receive event: softnet_stat counts
    // them.
    let n = 10_500u64;
    let drops_before = backlog_drops();
    let (objs, _) = json_around(
        &[
            "nettop",
            "--format",
            "json",
            // Longer than the workload takes under emulation (over 80 s): one interval.
            "-i",
            "600",
            "--recv-at",
            "device",
        ],
        example("many_procs").args([&n.to_string(), "udp"]),
    );
    // Every row: a receive is charged to whatever task ran when the kernel took the packet,
    // which under load is ksoftirqd as often as the sender.
    let counted: u64 = objs
        .iter()
        .filter(|o| o.get("xmit_packets").is_some())
        .map(|o| o["xmit_packets"].as_u64().unwrap() + o["recv_packets"].as_u64().unwrap())
        .sum();
    assert!(objs.iter().any(|o| o["reason"] == "table_full"), "{objs:?}");
    let dropped = backlog_drops() - drops_before;
    adds_up("nettop", counted, lost(&objs), 2 * n - dropped);
    assert_nothing_attached();

    // disktop: 10,500 processes, one 1-byte write each, against 10,240 keys.
    let path = bin_dir().join("robustness-writes");
    std::fs::write(&path, b"").unwrap();
    let (objs, w) = json_around(
        &["disktop", "--format", "json", "-i", "600", "-r", "100000"],
        example("many_procs").args([&n.to_string(), "write", path.to_str().unwrap()]),
    );
    let parent: u64 = field(&w, "pid").parse().unwrap();
    let counted: u64 = objs
        .iter()
        .filter(|o| o["ppid"].as_u64() == Some(parent))
        .map(|o| o["bytes"].as_u64().unwrap())
        .sum();
    adds_up("disktop", counted, lost(&objs), n);
    let _ = std::fs::remove_file(&path);
    assert_nothing_attached();

    // slowopen: one process holds 17,000 files open (16,384 slots), in text form.
    let files = 17_000u64;
    let path = bin_dir().join("robustness-held");
    std::fs::write(&path, b"held").unwrap();
    let mut r = Running::spawn(&["slowopen", "--min", "50ms"]);
    r.wait_ready(Duration::from_secs(300));
    let w = run(
        example("many_procs").args([&files.to_string(), "hold", "300", path.to_str().unwrap()]),
        Duration::from_secs(600),
    );
    assert!(w.status.success(), "{w:?}");
    // Every file is closed: their records wait in the ring, which a stop reads to the end.
    r.signal(libc::SIGINT);
    let out = r.finish(Duration::from_secs(30));
    let name = path.display().to_string();
    let counted = out
        .stdout
        .lines()
        .filter(|l| l.contains("many_procs") && l.ends_with(&name))
        .count() as u64;
    let lost: u64 = out
        .stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Lost ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        out.stdout
            .contains("the in-kernel table (16384 files) was full"),
        "{}",
        out.stderr
    );
    adds_up("slowopen", counted, lost, files);
    let _ = std::fs::remove_file(&path);
    assert_nothing_attached();
}

/// slowopen's other table: the opens in progress, one per thread inside open, which timing
/// opens needs. 9,000 threads blocked at once in open on a FIFO (8,192 slots): every open
/// is either reported as slow or counted as lost, with both probe methods.
#[test]
fn opens_in_progress_beyond_the_table_are_counted_as_lost() {
    let _k = kernel_lock();
    let threads = 9_000u64;
    let path = bin_dir().join("robustness-fifo");
    for probe in ["syscalls", "raw-syscalls"] {
        // The raw method needs bpf_get_current_task_btf (5.11); slowopen's tests assert
        // its refusal where it is missing.
        if probe == "raw-syscalls" && !facility_works("bpf_get_current_task_btf") {
            continue;
        }
        let (objs, w) = json_around(
            &[
                "slowopen",
                "--open-min",
                "100ms",
                "--probe",
                probe,
                "--format",
                "json",
            ],
            example("many_procs").args([
                &threads.to_string(),
                "fifo",
                "300",
                path.to_str().unwrap(),
            ]),
        );
        let pid: u64 = field(&w, "pid").parse().unwrap();
        assert_eq!(field(&w, "done"), threads.to_string(), "{w}");
        let name = path.display().to_string();
        let slow = objs
            .iter()
            .filter(|o| o["pid"] == pid && o["end"] == "slow_open" && o["file"] == name.as_str())
            .count() as u64;
        assert!(
            objs.iter().any(|o| o["reason"] == "open_args_full"),
            "--probe {probe}: no open_args_full loss among {} objects",
            objs.len()
        );
        adds_up(
            &format!("slowopen --probe {probe}"),
            slow,
            lost(&objs),
            threads,
        );
        assert_nothing_attached();
    }
}

#[test]
fn kill_9_leaves_nothing_attached() {
    let _k = kernel_lock();
    let ct = call_chain_args();
    let mut ct: Vec<&str> = ct.iter().map(String::as_str).collect();
    // Uprobes need bpf_get_attach_cookie (5.15); kernels without it trace kernel
    // functions (the tests' kernels all have kprobes then).
    if !facility_works("bpf_get_attach_cookie") {
        ct = vec!["calltree", "--func", "vfs_fsync"];
    }
    for args in [
        vec!["nettop"],
        vec!["disktop"],
        vec!["slowopen"],
        ct,
        vec!["export", "--listen", "127.0.0.1:0"],
    ] {
        let mut r = Running::spawn(&args);
        r.wait_ready(Duration::from_secs(300));
        r.signal(libc::SIGKILL);
        let _ = r.finish(Duration::from_secs(60));
        assert_nothing_attached_within(Duration::from_secs(2));
    }
}

fn vm_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn the_exporter_keeps_answering_under_load() {
    let _k = kernel_lock();
    let mut exporter = Running::spawn(&["export", "--listen", "127.0.0.1:0"]);
    let ready = exporter.wait_ready(Duration::from_secs(300));
    let addr = exporter_address(&ready);
    // 50 connections that never send a request.
    let idle: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // Malformed requests, answered or dropped, never crashing the exporter.
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\n\r\n",
        &[b'A'; 20_000],
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(bad);
    }
    // 200 scrapes at once, while a normal scrape is timed.
    let crowd: Vec<_> = (0..200)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || http_get(&a, "/metrics").status)
        })
        .collect();
    for _ in 0..3 {
        let t = Instant::now();
        let r = http_get(&addr, "/metrics");
        assert_eq!(r.status, 200);
        assert!(r.body.contains("stapr_series"), "{}", r.body);
        assert!(
            t.elapsed() < within(),
            "a scrape took {:?} under load",
            t.elapsed()
        );
    }
    for c in crowd {
        assert_eq!(c.join().unwrap(), 200);
    }
    let rss = vm_rss_kb(exporter.pid());
    assert!(rss < 100 * 1024, "exporter RSS {rss} KiB under load");
    drop(idle);
    exporter.signal(libc::SIGTERM);
    let out = exporter.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_nothing_attached();
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let long = "x".repeat(100_000);
    let cases: &[(&[&str], &str)] = &[
        (&["nettop", "-p", "+1"], "'+1' is not a valid id"),
        (&["nettop", "--pid", "-1"], "'-1' is not a valid id"),
        (&["slowopen", "-p", "0"], "idle task"),
        (&["disktop", "-p", "0"], "idle task"),
        (&["nettop", "-c", ""], "command names are 1 to 15 bytes"),
        (&["disktop", "-c", &long], "command names are 1 to 15 bytes"),
        (&["calltree", "-c", ""], "command names are 1 to 15 bytes"),
        (&["nettop", "-d", ""], "not a network device name"),
        (
            &["nettop", "-d", "nosuchdev0"],
            "no network device 'nosuchdev0'",
        ),
        (&["slowopen", "--min", "0"], "greater than zero"),
        (&["slowopen", "--min", "0.1ns"], "greater than zero"),
        (&["slowopen", "--min", "1x"], "invalid duration '1x'"),
        (&["slowopen", "--open-min", "0"], "greater than zero"),
        (
            &["slowopen", "--open-min", "soon"],
            "invalid duration 'soon'",
        ),
        (&["export", "--file-min", "0"], "greater than zero"),
        (&["nettop", "-i", "1ns"], "too short"),
        (&["disktop", "-i", "99999999999999"], "too long"),
        (&["nettop", "-i", "-1"], "must be positive"),
        (&["slowopen", "-d", "-1"], "must be positive"),
        (&["nettop", "--count", "-1"], "greater than zero"),
        (
            &["nettop", "--connections", "--probe", "tracepoint"],
            "cannot be used with --probe tracepoint",
        ),
        (&["disktop", "-r", "-1"], "greater than zero"),
        (&["calltree", "--max-depth", "-1"], "greater than zero"),
        (
            &["calltree", "--func", "x", "--min", "0"],
            "greater than zero",
        ),
        (
            &["calltree", "--func", "x", "--min", "1x"],
            "invalid duration '1x'",
        ),
        (
            &["calltree", "--module", "ext4", "--binary", "/bin/true"],
            "use one",
        ),
        // Paths and the parent directory are not interface names.
        (&["nettop", "-d", "lo/"], "no network device 'lo/'"),
        (&["nettop", "-d", ".."], "no network device '..'"),
        (&["nettop", "-d", "./lo"], "no network device './lo'"),
        // Long values come back cut, wherever the line names them.
        (&["nettop", "--cgroup", &long[..10_000]], "cgroup"),
        (
            &["calltree", "--binary", &format!("/{}", &long[..10_000])],
            "cannot read",
        ),
    ];
    for (args, mentions) in cases {
        let out = run(stapr().args(*args), Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {:?}", out.stderr);
        assert!(lines[0].starts_with("stapr: "), "{args:?}: {lines:?}");
        assert!(
            lines[0].contains(mentions),
            "{args:?}: {lines:?} lacks {mentions:?}"
        );
        assert!(
            lines[0].len() < 300,
            "{args:?}: a {} byte line",
            lines[0].len()
        );
    }
}

/// The output of a report whose stdout nobody read for `pause` while `workload` ran (a
/// pipe full from the start), read to the end once the pause is over; and the workload's
/// stdout.
fn after_a_stalled_stdout(
    report: &[&str],
    workload: &mut Command,
    pause: Duration,
) -> (String, String) {
    let (read_end, write_end) = full_pipe();
    let mut r = Running::spawn_with_stdout(report, Stdio::from(write_end));
    r.wait_ready(Duration::from_secs(300));
    let t = Instant::now();
    let w = run(workload, Duration::from_secs(600));
    assert!(w.status.success(), "{w:?}");
    // The scene: stdout stays unread this long (a pause, not a wait for a result).
    std::thread::sleep(pause.saturating_sub(t.elapsed()));
    // Only now does anyone read: everything the report made meanwhile waited in it.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut std::fs::File::from(read_end), &mut s);
        s
    });
    // What still waits in the report is written at the stop, as long as stdout takes it.
    r.signal(libc::SIGINT);
    let out = r.finish(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The bytes that filled the pipe before the report wrote.
    let text = reader.join().unwrap();
    (text.trim_start_matches('x').to_owned(), w.stdout)
}

/// Transmits of the workload's children (the parent, which only forks, sends nothing).
fn sent_by(objects: &[Value], comm: &str) -> u64 {
    objects
        .iter()
        .filter(|o| o["comm"] == comm)
        .filter_map(|o| o["xmit_packets"].as_u64())
        .sum()
}

#[test]
fn a_stalled_stdout_loses_no_counts() {
    let _k = kernel_lock();
    // A new process every few milliseconds, one datagram each: as many keys as processes.
    // With stdout unread, intervals wait in stapr while its tables are still taken every
    // second, so none of them fills.
    let (pause, rate, procs) = if std::env::var_os("STAPR_VM").is_some() {
        (Duration::from_secs(15), 100, 1500)
    } else {
        (Duration::from_secs(40), 300, 12_000)
    };
    let (text, w) = after_a_stalled_stdout(
        &[
            "nettop",
            "-i",
            "1",
            "--format",
            "json",
            "--recv-at",
            "device",
        ],
        example("many_procs").args([&procs.to_string(), "udp", &rate.to_string()]),
        pause,
    );
    let objs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let done: u64 = field(&w, "done").parse().unwrap();
    assert_eq!(done, procs);
    assert_eq!(sent_by(&objs, "many_procs"), done, "every datagram counted");
    assert!(
        objs.iter().all(|o| o.get("lost").is_none()),
        "{:?}",
        objs.iter()
            .filter(|o| o.get("lost").is_some())
            .collect::<Vec<_>>()
    );
    assert_nothing_attached();

    // Past 64 waiting intervals the oldest are dropped, and said so (the text format prints
    // a header every interval, traffic or not).
    let (text, _) = after_a_stalled_stdout(
        &["nettop", "-i", "100ms"],
        example("many_procs").args(["10", "udp"]),
        Duration::from_secs(9),
    );
    let said: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("Lost ") && l.contains(" intervals: stdout did not take them in time")
        })
        .collect();
    assert!(!said.is_empty(), "no dropped intervals said:\n{text}");
    assert!(text.lines().filter(|l| l.starts_with("  PID")).count() <= 64 + 40);
    assert_nothing_attached();
}

#[test]
fn unread_datagrams_of_short_lived_senders_are_no_loss() {
    let _k = kernel_lock();
    // Socket mode charges receives to readers; nobody reads these, so nothing is charged
    // to a receiver and nothing is lost, however fast the senders come and go.
    let (rate, procs) = if std::env::var_os("STAPR_VM").is_some() {
        (100, 1500)
    } else {
        (300, 6000)
    };
    let (objs, w) = json_around(
        &["nettop", "-i", "1", "--format", "json"],
        example("many_procs").args([&procs.to_string(), "udp", &rate.to_string()]),
    );
    let done: u64 = field(&w, "done").parse().unwrap();
    assert_eq!(sent_by(&objs, "many_procs"), done);
    let parent: u32 = field(&w, "pid").parse().unwrap();
    let received: u64 = objs
        .iter()
        .filter(|o| o["pid"] == parent)
        .filter_map(|o| o["recv_packets"].as_u64())
        .sum();
    assert_eq!(received, 0, "the receiving socket never read");
    let losses: Vec<&Value> = objs.iter().filter(|o| o.get("lost").is_some()).collect();
    assert!(losses.is_empty(), "{losses:?}");
    assert_nothing_attached();
}

/// A small deterministic generator (xorshift64*): the same argument sets on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
        of[self.below(of.len())]
    }
}

/// Values a flag may get: good ones, and every kind of bad one.
fn fuzz_value(rng: &mut Rng, good: &[&str]) -> String {
    const BAD: &[&str] = &[
        "",
        "-1",
        "0",
        "+1",
        "abc",
        "1x",
        "99999999999999999999",
        "0.0000001",
        "nan",
        "-",
        "--",
        "é",
        "1e9",
        "18446744073709551616",
        "/",
        "..",
        "lo/",
        "1s1",
        " 1",
        "0x10",
    ];
    match rng.below(10) {
        0..=3 => rng.pick(good).to_owned(),
        4..=8 => rng.pick(BAD).to_owned(),
        _ => "z".repeat(1 + rng.below(12_000)),
    }
}

#[test]
fn a_thousand_fuzzed_command_lines_keep_the_rules() {
    let _k = kernel_lock();
    let chain = bin("call_chain").to_str().unwrap().to_owned();
    // Each subcommand's flags with good values; the run-bounding ones (-i, --count,
    // --duration) are added last, always good, so a valid line ends within a second.
    // A flag and the good values it takes (none: a switch).
    type Flag<'a> = (&'a str, &'a [&'a str]);
    let common: &[Flag] = &[
        ("-p", &["1", "0", "4294967295", "123456"]),
        ("-u", &["0", "1000", "65534"]),
        ("-c", &["x", "python", "nginx-worker-12", "stapr"]),
        ("--cgroup", &["system.slice", "/", "3f4c2a", "nosuch.slice"]),
        ("--containers", &[]),
        ("--format", &["text", "json", "xml"]),
    ];
    let commands: &[(&str, &[Flag], &[&str])] = &[
        (
            "nettop",
            &[
                ("-d", &["lo", "eth0", "nosuchdev"]),
                ("-s", &["recv_pk", "xmit_kb", "pid", "bogus"]),
                ("-r", &["1", "10", "1000"]),
                ("--probe", &["auto", "tp-btf", "tracepoint", "kprobe"]),
                ("--recv-at", &["socket", "device", "nic"]),
                ("--xmit-at", &["socket", "device", "wire"]),
            ],
            &["-i", "100ms", "--count", "1"],
        ),
        (
            "disktop",
            &[
                ("-s", &["bytes", "pid"]),
                ("-r", &["1", "10"]),
                ("--block", &[]),
                ("--probe", &["auto", "fexit", "syscalls", "block"]),
            ],
            &["-i", "100ms", "--count", "1"],
        ),
        (
            "slowopen",
            &[
                ("--min", &["1s", "250us", "1ms", "2m"]),
                ("--open-min", &["1s", "10ms"]),
                ("-v", &[]),
                ("--probe", &["auto", "syscalls", "raw-syscalls"]),
            ],
            &["-d", "100ms"],
        ),
        (
            "calltree",
            &[
                ("--binary", &[&chain, "/dev/zero", "/", "/nonexistent"]),
                // Not "*": on kernels without uprobe.multi every function takes a probe
                // pair to attach and to detach (the every-function test has that).
                ("-f", &["ct_*", "ct_leaf", "zz_*", "ct_?eaf"]),
                ("--attach", &["auto", "multi", "fentry", "kprobe"]),
                ("--max-depth", &["1", "3"]),
                ("--min", &["1ms", "1s"]),
                ("--errors", &[]),
                ("-D", &[]),
            ],
            &["-d", "100ms"],
        ),
        (
            "export",
            &[
                (
                    "--listen",
                    &["127.0.0.1:0", "[::1]:0", "localhost", "127.0.0.1:1"],
                ),
                ("--by", &["pid", "comm", "comm,container", "host"]),
                ("--forget-after", &["1m", "5s"]),
                ("--file-min", &["10ms", "1s"]),
                ("--recv-at", &["socket", "device"]),
            ],
            &["-d", "100ms"],
        ),
        ("doctor", &[], &[]),
    ];
    let in_vm = std::env::var_os("STAPR_VM").is_some();
    let sets = if in_vm { 60 } else { 1000 };
    // A line's time limit: 10 s on hardware; emulation runs everything several times
    // slower, with fewer lines at once.
    let (limit, at_once) = if in_vm {
        (Duration::from_secs(60), 2)
    } else {
        (Duration::from_secs(10), 8)
    };
    let mut rng = Rng(0x5eed_57a9_0000_0001);
    let mut lines: Vec<Vec<String>> = Vec::new();
    for _ in 0..sets {
        let (name, own, bound) = commands[rng.below(commands.len())];
        let mut args = vec![name.to_owned()];
        for _ in 0..1 + rng.below(3) {
            let flags: Vec<&Flag> = own.iter().chain(common).collect();
            let (flag, good) = flags[rng.below(flags.len())];
            args.push((*flag).to_owned());
            if !good.is_empty() {
                args.push(fuzz_value(&mut rng, good));
            }
        }
        if rng.below(20) == 0 {
            args.push(rng.pick(&["--bogus", "extra", "-Z", "--help"]).to_owned());
        }
        // calltree traces one function of call_chain unless the line names others: every
        // function takes minutes without uprobe.multi (the every-function test has that).
        if name == "calltree" {
            if !args.iter().any(|a| a == "--binary") {
                args.extend(["--binary".to_owned(), chain.clone()]);
            }
            if !args.iter().any(|a| a == "-f") {
                args.extend(["-f".to_owned(), "ct_leaf".to_owned()]);
            }
        }
        args.extend(bound.iter().map(|s| (*s).to_owned()));
        lines.push(args);
    }
    // Several at a time: most lines end in milliseconds, the valid ones within a second,
    // most of it waiting on the kernel.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(lines));
    let workers: Vec<_> = (0..at_once)
        .map(|_| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                let mut broken = Vec::new();
                loop {
                    let Some(args) = lines.lock().unwrap().pop() else {
                        return broken;
                    };
                    let t = Instant::now();
                    let out = run(stapr().args(&args), limit + Duration::from_secs(20));
                    let took = t.elapsed();
                    let code = out.status.code();
                    let shown: Vec<String> = args
                        .iter()
                        .map(|a| {
                            if a.len() > 40 {
                                format!("{}...", &a[..40])
                            } else {
                                a.clone()
                            }
                        })
                        .collect();
                    let stderr_lines = out.stderr.lines().count();
                    if !matches!(code, Some(0..=2))
                        || out.stderr.contains("panicked")
                        || (code == Some(2) && stderr_lines > 3)
                        || took > limit
                        || out.stderr.lines().any(|l| l.len() > 1000)
                    {
                        broken.push(format!(
                            "{shown:?}: exit {code:?} after {took:?}, stderr {:?}",
                            out.stderr.chars().take(500).collect::<String>()
                        ));
                    }
                }
            })
        })
        .collect();
    let broken: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        broken.is_empty(),
        "{} of {sets} broke a rule:\n{}",
        broken.len(),
        broken.join("\n")
    );
    assert_nothing_attached();
}
