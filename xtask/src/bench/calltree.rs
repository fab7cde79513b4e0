//! calltree's benchmarks beyond the shared with/without rounds: its formatter alone, and
//! attach and detach of every ext4 function in the Debian VMs, per method.

use super::*;
use crate::vm;

/// calltree's formatter alone: synthetic events through tree building and printing to a
/// file, events per second (the ignored unit test `format_rate`, in release mode); then
/// the same with `--min` (every tree held back until it ends, the slow ones printed).
pub fn formatter(verbose: bool) -> Result<()> {
    for (label, min_ns) in [("", None), (" with --min 2us", Some(2000))] {
        let rates = format_rates(min_ns, verbose)?;
        let (q1, q3) = quartiles(&rates);
        println!(
            "calltree formatter{label}: {FORMAT_EVENTS} synthetic events to a file, {} runs: median {:.2} million events/s (middle half {:.2} to {:.2}; target >= 2)",
            rates.len(),
            median(&rates) / 1e6,
            q1 / 1e6,
            q3 / 1e6
        );
    }
    Ok(())
}

const FORMAT_EVENTS: u64 = 2_000_000;

fn format_rates(min_ns: Option<u64>, verbose: bool) -> Result<Vec<f64>> {
    const RUNS: usize = 7;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["test", "--release", "-p", "stapr", "--bin", "stapr", "--"])
        .args([
            "--ignored",
            "--exact",
            "report::calltree::printer::tests::format_rate",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("STAPR_FORMAT_EVENTS", FORMAT_EVENTS.to_string())
        .env("STAPR_FORMAT_RUNS", RUNS.to_string())
        .current_dir(workspace_root())
        .stderr(Stdio::inherit());
    if let Some(ns) = min_ns {
        cmd.env("STAPR_FORMAT_MIN_NS", ns.to_string());
    }
    let out = cmd.output().context("running the formatter benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<f64> = text
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("events_per_s=")?.parse().ok())
        .collect();
    if !out.status.success() || rates.len() != RUNS {
        bail!("the formatter benchmark failed: {text}");
    }
    if verbose {
        for r in &rates {
            eprintln!("formatter: {r:.0} events/s");
        }
    }
    Ok(rates)
}

/// For each method and detach mode: trace every ext4 function for 2 s with `--timings`;
/// in background mode also time, from /proc/uptime, until the detaching process is gone.
const CALLTREE_BENCH: &str = r#"
for m in multi fentry kprobe; do
  for mode in background foreground; do
    flag=""
    [ $mode = foreground ] && flag=--detach-in-foreground
    ./stapr calltree --module ext4 --attach $m -d 2 --timings $flag >/dev/null 2>/tmp/bench
    t0=$(cut -d' ' -f1 /proc/uptime)
    while pidof stapr >/dev/null; do sleep 0.2; done
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "@METHOD@ calltree-bench $m $mode $t0 $t1: $(grep -E 'timings:|^stapr: ' /tmp/bench | tail -n 1)"
  done
done
"#;

/// Boots `line` to run a benchmark's shell `script` instead of the tests; the console
/// log's path and the outcome (the script's `@METHOD@` lines in `methods`) once the
/// script has finished.
fn boot_script(line: &vm::Line, script: &'static str) -> Result<(PathBuf, vm::Outcome)> {
    let tests = vm::prepare(line.arch)?;
    let script = vm::Inject::Script(script);
    let (_, log, o) = vm::boot_line(line, &tests, &[], script, Duration::from_secs(2400))?;
    if !o.done {
        bail!(
            "{}: the benchmark did not finish; console log: {}",
            line.name,
            log.display()
        );
    }
    Ok((log, o))
}

/// calltree's VM part: attach and detach times of every ext4 function with each method,
/// on each kernel, side by side.
pub fn calltree_in_vms() -> Result<()> {
    println!("calltree --module ext4 in the Debian VMs (TCG emulation: slower than hardware):");
    println!(
        "  {:<12} {:<18} {:>9} {:>8} {:>14} {:>14} {:>14}",
        "kernel", "method", "functions", "attach", "stop->prompt", "bg detach done", "fg detach"
    );
    // x86-64 only: on arm64 under emulation attaching fentry to every ext4 function alone
    // takes more than ten minutes.
    for line in vm::kernel_lines(&[])?
        .into_iter()
        .filter(|l| l.arch == vm::Arch::X86_64)
    {
        let (_, o) = boot_script(line, CALLTREE_BENCH)?;
        let mut rows: BTreeMap<String, [String; 5]> = BTreeMap::new();
        for m in &o.methods {
            let Some(rest) = m.strip_prefix("calltree-bench ") else {
                continue;
            };
            let (head, text) = rest.split_once(": ").unwrap_or((rest, ""));
            let f: Vec<&str> = head.split_whitespace().collect();
            let [method, mode, t0, t1] = f[..] else {
                continue;
            };
            let secs = |key: &str| {
                text.split(key)
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            };
            let row = rows.entry(method.to_owned()).or_default();
            let timed = text.contains("timings:");
            let Some(attach) = secs(", attach ")
                .or_else(|| secs(" functions: attach "))
                .filter(|_| timed)
            else {
                row[0] = text
                    .trim_start_matches("stapr: ")
                    .chars()
                    .take(60)
                    .collect();
                continue;
            };
            row[0] = secs(" on ").unwrap_or_default();
            row[1] = format!("{attach} s");
            if mode == "background" {
                row[2] = format!("{} s", secs("stop to exit ").unwrap_or_default());
                let done: f64 = t1.parse::<f64>().unwrap_or(0.0) - t0.parse::<f64>().unwrap_or(0.0);
                row[3] = format!("{done:.1} s");
            } else {
                row[4] = format!("{} s", secs("detached in ").unwrap_or_default());
            }
        }
        for (method, r) in rows {
            if r[1].is_empty() {
                println!("  {:<12} {:<18} unavailable: {}", line.name, method, r[0]);
            } else {
                println!(
                    "  {:<12} {:<18} {:>9} {:>8} {:>14} {:>14} {:>14}",
                    line.name, method, r[0], r[1], r[2], r[3], r[4]
                );
            }
        }
    }
    Ok(())
}

/// Reads per round: 20 `dd` runs of 4,096 one-byte reads of a cached ext4 file, each a
/// call of `ext4_file_read_iter`.
const PER_CALL_CALLS: f64 = 20.0 * 4096.0;

/// For each of 5 rounds and each method in turn (none, fentry, kprobe): the same reads,
/// timed from /proc/uptime, with `calltree -f ext4_file_read_iter` printing every call to
/// /dev/null.
const PER_CALL_BENCH: &str = r#"
dd if=/dev/zero of=percall.dat bs=4096 count=1 2>/dev/null
reads() {
  i=0
  while [ $i -lt 20 ]; do dd if=percall.dat of=/dev/null bs=1 count=4096 2>/dev/null; i=$((i+1)); done
}
round=1
while [ $round -le 5 ]; do
  for m in none fentry kprobe; do
    if [ $m != none ]; then
      ./stapr calltree -f ext4_file_read_iter --attach $m >/dev/null 2>/tmp/ct &
      pid=$!
      n=0
      while ! grep -q "Ctrl-C" /tmp/ct && [ $n -lt 1500 ]; do sleep 0.2; n=$((n+1)); done
    fi
    t0=$(cut -d' ' -f1 /proc/uptime)
    reads
    t1=$(cut -d' ' -f1 /proc/uptime)
    if [ $m != none ]; then kill -INT $pid; wait $pid; fi
    echo "@METHOD@ calltree-percall $m $round $t0 $t1"
  done
  round=$((round+1))
done
"#;

/// The per-call cost of fentry/fexit and of kprobe/kretprobe on one ext4 function, in
/// the same VM, on x86-64 and arm64 6.12: what `auto` weighs against attach time for a
/// large selection. Under TCG, so slower than hardware; the ratio is the point.
pub fn per_call_in_vms() -> Result<()> {
    println!(
        "calltree per call in the Debian VMs (TCG): ext4_file_read_iter, {} reads a round, medians of paired differences:",
        PER_CALL_CALLS as u64
    );
    let names = ["debian-6.12".to_owned(), "debian-6.12-arm64".to_owned()];
    for line in vm::kernel_lines(&names)? {
        let (log, o) = boot_script(line, PER_CALL_BENCH)?;
        // (method, round) -> seconds
        let mut secs: BTreeMap<(String, String), f64> = BTreeMap::new();
        for m in &o.methods {
            let Some(rest) = m.strip_prefix("calltree-percall ") else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let [method, round, t0, t1] = f[..] else {
                continue;
            };
            let (Ok(t0), Ok(t1)) = (t0.parse::<f64>(), t1.parse::<f64>()) else {
                continue;
            };
            secs.insert((method.to_owned(), round.to_owned()), t1 - t0);
        }
        let added = |method: &str| -> Vec<f64> {
            secs.iter()
                .filter(|((m, _), _)| m == method)
                .filter_map(|((_, r), t)| {
                    let bare = secs.get(&("none".to_owned(), r.clone()))?;
                    Some((t - bare) / PER_CALL_CALLS * 1e9)
                })
                .collect()
        };
        let bare: Vec<f64> = secs
            .iter()
            .filter(|((m, _), _)| m == "none")
            .map(|(_, t)| t / PER_CALL_CALLS * 1e9)
            .collect();
        let (fentry, kprobe) = (added("fentry"), added("kprobe"));
        if bare.is_empty() || fentry.is_empty() || kprobe.is_empty() {
            bail!(
                "{}: the benchmark printed no complete round; console log: {}",
                line.name,
                log.display()
            );
        }
        println!(
            "  {:<18} {} rounds: bare {:>8.0} ns/read, fentry/fexit {:>+8.0} ns/call, kprobe/kretprobe {:>+8.0} ns/call, kprobe/fentry {:.2}",
            line.name,
            bare.len(),
            median(&bare),
            median(&fentry),
            median(&kprobe),
            median(&kprobe) / median(&fentry)
        );
    }
    Ok(())
}
