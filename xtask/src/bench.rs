//! `cargo xtask bench <report>`: the same workload with and without the report running,
//! alternating in one invocation so drift on a shared machine hits both sides alike.
//! Prints each round, then the medians, the added ns per event, and the ratio.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};

mod calltree;

use calltree::{calltree_in_vms, formatter, per_call_in_vms};

use crate::util::{cargo, is_root, workspace_root};

#[derive(Clone, Copy, ValueEnum)]
pub enum Report {
    /// Loopback UDP: ns per datagram sent and received (one transmit + one receive event).
    Nettop,
    /// nettop on one loopback TCP connection, 64-byte writes with Nagle off: ns per write
    /// (a segment transmitted and received, and the ACKs it draws).
    NettopTcp,
    /// open + read 4 KiB + close of a cached file: ns per iteration.
    Slowopen,
    /// 4 KiB reads (pread) of a cached file: ns per read.
    Disktop,
    /// disktop on 4 KiB sendfiles of a cached file to /dev/null, as a web server sends a
    /// page: ns per sendfile (an entry and an exit event).
    DisktopSendfile,
    /// The formatter alone (events/s), calls of a traced program (ns per call, uprobes,
    /// two probe events per call), and in the Debian VMs attach and detach times for every
    /// ext4 function with each method.
    Calltree,
}

#[derive(Args)]
pub struct BenchArgs {
    report: Report,
    /// Rounds of each side (without, with), alternating.
    #[arg(long, default_value_t = 31)]
    rounds: usize,
    /// Events (packets, reads...) per round.
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// CPU the workload is pinned to, so every round runs on the same core.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// Print every round.
    #[arg(short, long)]
    verbose: bool,
    /// calltree: leave out the part that boots the Debian kernels (about 25 minutes).
    #[arg(long)]
    host_only: bool,
    /// calltree: only the per-call cost of fentry/fexit and kprobe/kretprobe in the
    /// x86-64 and arm64 6.12 VMs (about 15 minutes).
    #[arg(long, conflicts_with = "host_only")]
    per_call: bool,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn quartiles(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

fn bin(name: &str) -> PathBuf {
    workspace_root().join("target/release").join(name)
}

/// Runs stapr with `args` until it says its probes are attached.
fn start_stapr(args: &[String]) -> Result<Child> {
    let mut child = Command::new(bin("stapr"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting stapr")?;
    let stderr = child.stderr.take().context("stapr stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("Ctrl-C to end") => break,
            Some(Ok(_)) if Instant::now() < deadline => continue,
            other => {
                let _ = child.kill();
                bail!("stapr did not attach: {other:?}");
            }
        }
    }
    // Keep draining stderr so stapr never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(child)
}

/// Stops stapr and waits until its probes are gone: a report with many probes hands the
/// detaching to a background process (also named stapr), and a "without" round that
/// overlapped it would still be traced.
fn stop_stapr(mut child: Child) -> Result<()> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait()?;
    if !st.success() {
        bail!("stapr exited with {st}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while stapr_running() {
        if Instant::now() > deadline {
            bail!("stapr's background detach did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether a process named stapr (a background detacher) is alive.
fn stapr_running() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "stapr"))
}

/// Runs an example pinned to `cpu` and returns the `key=` number it prints.
fn example(name: &str, args: &[&str], cpu: usize, key: &str) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(bin(name))
        .args(args)
        .output()
        .with_context(|| format!("running {name} under taskset"))?;
    if !out.status.success() {
        bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("{name} printed no {key}"))?
        .parse()
        .with_context(|| format!("parsing {key}"))
}

/// A 4 KiB file in the target directory, read once so it is in the page cache.
fn cached_file() -> Result<PathBuf> {
    let path = workspace_root().join("target/bench-4k.dat");
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(4096) {
        std::fs::write(&path, vec![0x5a; 4096]).context("writing the benchmark file")?;
    }
    std::fs::read(&path).context("reading the benchmark file")?;
    Ok(path)
}

/// One run of the workload; returns ns per event.
fn workload(report: Report, events: u64, cpu: usize) -> Result<f64> {
    let n = events.to_string();
    match report {
        Report::Nettop => example(
            "udp_talker",
            &["--count", &n, "--size", "64"],
            cpu,
            "ns_per_packet",
        ),
        Report::NettopTcp => example(
            "tcp_talker",
            &["--count", &n, "--size", "64"],
            cpu,
            "ns_per_write",
        ),
        Report::Slowopen => {
            let file = cached_file()?;
            let file = file.to_string_lossy();
            example("file_holder", &["loop", &n, &file], cpu, "ns_per_iteration")
        }
        Report::Disktop => {
            let file = cached_file()?;
            let file = file.to_string_lossy();
            example("disk_writer", &["readloop", &n, &file], cpu, "ns_per_read")
        }
        Report::DisktopSendfile => {
            let file = cached_file()?;
            let file = file.to_string_lossy();
            example(
                "disk_writer",
                &["sendloop", &n, &file],
                cpu,
                "ns_per_sendfile",
            )
        }
        // Each round makes 9 calls.
        Report::Calltree => example(
            "call_chain",
            &[&(events / 9).max(1).to_string()],
            cpu,
            "ns_per_call",
        ),
    }
}

/// The path of the example calltree traces with uprobes.
fn call_chain_path() -> String {
    bin("call_chain").to_string_lossy().into_owned()
}

fn stapr_args(report: Report) -> Vec<String> {
    let chain;
    let args: &[&str] = match report {
        Report::Nettop | Report::NettopTcp => &["nettop", "-i", "5"],
        Report::Slowopen => &["slowopen", "--min", "1s"],
        Report::Disktop | Report::DisktopSendfile => &["disktop", "-i", "5"],
        Report::Calltree => {
            chain = call_chain_path();
            &["calltree", "--binary", &chain, "-f", "ct_*"]
        }
    };
    args.iter().map(|s| s.to_string()).collect()
}

/// The configurations timed against the bare workload in each round: the report as
/// `stapr_args` runs it; for nettop and disktop the same with `--containers` (what
/// naming each row's container costs); for nettop also `--recv-at device` (receives
/// charged where the device delivers them instead of at the reading socket),
/// `--xmit-at device` (transmits charged to the task at the device instead of the
/// socket's last writer) and `--connections` (a key per connection, from each packet's
/// headers or socket); for
/// slowopen also `--open-min 1s` (every open timed by entry probes as well) and
/// `--probe raw-syscalls` (one BTF tracepoint on every syscall instead of one classic
/// tracepoint per traced call).
fn sides(report: Report) -> Vec<(&'static str, Vec<String>)> {
    let base = stapr_args(report);
    let mut sides = vec![("", base.clone())];
    let with = |extra: &[&str]| {
        let mut c = base.clone();
        c.extend(extra.iter().map(|s| s.to_string()));
        c
    };
    if matches!(
        report,
        Report::Nettop | Report::NettopTcp | Report::Disktop | Report::DisktopSendfile
    ) {
        sides.push((" --containers", with(&["--containers"])));
    }
    if let Report::Nettop | Report::NettopTcp = report {
        sides.push((" --recv-at device", with(&["--recv-at", "device"])));
        sides.push((" --xmit-at device", with(&["--xmit-at", "device"])));
        sides.push((" --connections", with(&["--connections"])));
    }
    if let Report::Slowopen = report {
        sides.push((" --open-min 1s", with(&["--open-min", "1s"])));
        sides.push((" --probe raw-syscalls", with(&["--probe", "raw-syscalls"])));
    }
    sides
}

fn event_name(report: Report) -> &'static str {
    match report {
        Report::Nettop => "packet",
        Report::NettopTcp => "write",
        Report::Slowopen => "iteration",
        Report::Disktop => "read",
        Report::DisktopSendfile => "sendfile",
        Report::Calltree => "call",
    }
}

/// Sum of `run_time_ns` and `run_cnt` over the eBPF programs a process holds open, from
/// /proc/PID/fdinfo (filled while kernel.bpf_stats_enabled is 1).
fn program_stats(pid: u32) -> Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/fdinfo");
    let (mut ns, mut runs) = (0, 0);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !text.contains("prog_id:") {
            continue;
        }
        let get = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        ns += get("run_time_ns:");
        runs += get("run_cnt:");
    }
    Ok((ns, runs))
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// In-kernel time of the report's programs per workload event, measured by the kernel's
/// own BPF run-time statistics (which add their own small cost, so this run is separate
/// from the timed rounds).
fn in_kernel_cost(report: Report, stapr: &[String], events: u64, cpu: usize) -> Result<(f64, f64)> {
    let before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
    std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = (|| {
        let child = start_stapr(stapr)?;
        let pid = child.id();
        let run = workload(report, events, cpu);
        let stats = program_stats(pid);
        stop_stapr(child)?;
        run?;
        stats
    })();
    let _ = std::fs::write(BPF_STATS, before.trim());
    let (ns, runs) = result?;
    if runs == 0 {
        bail!("the report's programs never ran");
    }
    Ok((ns as f64 / events as f64, runs as f64 / events as f64))
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("benchmarks attach eBPF probes: run `cargo xtask bench` as root");
    }
    crate::setup::toolchain()?;
    cargo(&["build", "--release", "-p", "stapr", "-p", "stapr-examples"])?;
    let report = args.report;
    if let Report::Calltree = report {
        if args.per_call {
            return per_call_in_vms();
        }
        formatter(args.verbose)?;
    }
    let event = event_name(report);
    let sides = sides(report);
    // An untimed run warms caches and the CPU before the first round.
    workload(report, args.events, args.cpu)?;
    let mut without = Vec::new();
    let mut with = vec![Vec::new(); sides.len()];
    let mut diffs = vec![Vec::new(); sides.len()];
    for round in 1..=args.rounds {
        let a = workload(report, args.events, args.cpu)?;
        without.push(a);
        let mut line = format!("round {round:3}: without {a:8.1}");
        for (i, (label, stapr)) in sides.iter().enumerate() {
            let child = start_stapr(stapr)?;
            let b = workload(report, args.events, args.cpu);
            stop_stapr(child)?;
            let b = b?;
            line += &format!("  with{label} {b:8.1}");
            with[i].push(b);
            diffs[i].push(b - a);
        }
        if args.verbose {
            eprintln!("{line} ns/{event}");
        }
    }
    let m0 = median(&without);
    println!(
        "{} rounds of {} {event}s each on CPU {}, alternating without/with `stapr {}`{}:",
        args.rounds,
        args.events,
        args.cpu,
        stapr_args(report).join(" "),
        sides
            .iter()
            .skip(1)
            .map(|(label, _)| format!(" and{label}"))
            .collect::<String>()
    );
    println!("  {:<28} median {m0:8.1} ns/{event}", "without stapr");
    for (i, (label, _)) in sides.iter().enumerate() {
        let m1 = median(&with[i]);
        let added = median(&diffs[i]);
        let (q1, q3) = quartiles(&diffs[i]);
        println!(
            "  {:<28} median {m1:8.1} ns/{event}",
            format!("with stapr{label}")
        );
        println!(
            "  {:<28} {added:+8.1} ns/{event} (median of paired differences; middle half {q1:+.1} to {q3:+.1}), ratio {:.3}",
            format!("added{label}"),
            (m0 + added) / m0
        );
    }
    // Every side's own for nettop, whose sides differ in the programs they attach.
    let measured = if let Report::Nettop | Report::NettopTcp = report {
        sides.len()
    } else {
        1
    };
    for (label, stapr) in &sides[..measured] {
        let (ns, runs) = in_kernel_cost(report, stapr, args.events, args.cpu)?;
        println!(
            "  in-kernel probe time{label} {ns:6.1} ns/{event} ({runs:.2} program runs per {event}, kernel.bpf_stats_enabled)"
        );
    }
    if let Report::Calltree = report {
        if !args.host_only {
            calltree_in_vms()?;
            per_call_in_vms()?;
        }
    }
    Ok(())
}
