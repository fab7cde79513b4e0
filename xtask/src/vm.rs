//! `cargo xtask vm-test`: boots Debian kernels in QEMU and runs stapr's integration tests
//! inside, on the kernels users have (kprobes, fentry, ext4 as a module) rather than this
//! machine's.
//!
//! Per kernel: fetch the newest package of its line with `apt-get download` (cached under
//! ~/.cache/stapr/kernels), stage the test binaries on an ext4 image, build a busybox
//! initramfs with the modules and libraries they need, boot it under TCG, and read the
//! results from the serial console.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::util::{output, status, workspace_root};

/// Packages the harness runs on the host.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "e2fsprogs",
    "kmod",
];

/// A line of Debian kernels: the newest package whose name matches is used.
struct Line {
    name: &'static str,
    /// `linux-image-<prefix><abi>-amd64-unsigned`
    prefix: &'static str,
}

const LINES: &[Line] = &[
    Line {
        name: "debian-6.1",
        prefix: "6.1.0-",
    },
    Line {
        name: "debian-6.12",
        prefix: "6.12.",
    },
];

/// Modules the init loads, in order (dependencies first).
const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "crc16",
    "crc32c_generic",
    "mbcache",
    "jbd2",
    "ext4",
];

/// Integration test binaries run inside, and the tests the VM cannot run.
const TEST_BINARIES: &[&str] = &[
    "cli", "doctor", "nettop", "slowopen", "disktop", "export", "calltree",
];
/// Tests that need programs the initramfs does not carry: (binary, test, why).
const SKIPPED: &[(&str, &str, &str)] = &[
    (
        "nettop",
        "veth_device_names_and_counts",
        "needs iproute2's netns",
    ),
    (
        "export",
        "prometheus_scrapes_the_exporter",
        "needs the prometheus server",
    ),
];

const DONE: &str = "STAPR-VM-DONE";
const RESULT: &str = "STAPR-VM-RESULT";
const METHOD: &str = "STAPR-VM-METHOD";

#[derive(Args)]
pub struct VmArgs {
    /// Kernel lines to boot (debian-6.1, debian-6.12); default: all
    #[arg(long = "kernel")]
    kernels: Vec<String>,
    /// Seconds one kernel may take, boot to power-off
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Check the harness itself: an injected test failure and an injected kernel panic
    /// must each be caught (boots the first kernel twice, runs no tests)
    #[arg(long)]
    self_test: bool,
    /// Passed to every test binary (a test name filter)
    #[arg(trailing_var_arg = true)]
    filter: Vec<String>,
}

fn cache_dir() -> Result<PathBuf> {
    Ok(crate::util::cache_dir().join("kernels"))
}

/// The newest `linux-image-<prefix>*-amd64-unsigned` in the archive.
fn resolve(line: &Line) -> Result<String> {
    let pattern = format!(
        "^linux-image-{}.*-amd64-unsigned$",
        line.prefix.replace('.', "\\.")
    );
    // Kernel images of the line, without the realtime and cloud flavours.
    let search = || -> Vec<String> {
        output("apt-cache", &["search", "--names-only", &pattern])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| !n.contains("-rt-") && !n.contains("-cloud-"))
            .map(str::to_owned)
            .collect()
    };
    let mut names = search();
    if names.is_empty() {
        // The package lists may be missing or stale on a fresh machine.
        status(Command::new("apt-get").args(["update", "-q"]))?;
        names = search();
    }
    // Compare version numbers numerically: 6.1.0-54 > 6.1.0-9.
    let key = |n: &String| -> Vec<u64> {
        n.split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    names.sort_by_key(key);
    names
        .pop()
        .with_context(|| format!("no {pattern} package in Debian's archive"))
}

/// A kernel unpacked and ready: vmlinuz, its release, its module tree.
struct Kernel {
    package: String,
    root: PathBuf,
    release: String,
}

impl Kernel {
    fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

fn fetch(package: &str) -> Result<Kernel> {
    let dir = cache_dir()?.join(package);
    let ready = dir.join(".ready");
    if !ready.exists() {
        eprintln!("xtask vm: fetching {package}");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        status(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&dir),
        )
        .with_context(|| format!("downloading {package}"))?;
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        status(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("root")),
        )?;
        std::fs::remove_file(&deb)?;
        let release = only_entry(&dir.join("root/lib/modules"))?;
        let modules = dir.join("root/lib/modules").join(&release);
        // Newer kernels ship modules compressed; the initramfs's modprobe wants them plain.
        status(
            Command::new("find")
                .arg(&modules)
                .args(["-name", "*.ko.xz", "-exec", "xz", "-d", "-f", "{}", "+"]),
        )?;
        status(
            Command::new("depmod")
                .arg("-b")
                .arg(dir.join("root"))
                .arg(&release),
        )?;
        std::fs::write(&ready, "")?;
    }
    let root = dir.join("root");
    let release = only_entry(&root.join("lib/modules"))?;
    Ok(Kernel {
        package: package.to_owned(),
        root,
        release,
    })
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .pop()
        .with_context(|| format!("{} is empty", dir.display()))
}

/// Builds the test binaries and returns (name, path) for each in TEST_BINARIES.
fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::util::cargo(&["build", "-p", "stapr", "-p", "stapr-examples"])?;
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "integration-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the integration tests")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // {"reason":"compiler-artifact",...,"target":{"name":"nettop",...},"executable":"/..."}
        if !line.contains("\"compiler-artifact\"") || !line.contains("\"executable\":\"") {
            continue;
        }
        let name = json_str(line, "\"target\":{").and_then(|t| json_str(t, "\"name\":\""));
        let exe = json_str(line, "\"executable\":\"");
        if let (Some(name), Some(exe)) = (name, exe) {
            let name = name.split('"').next().unwrap_or_default().to_owned();
            let exe = exe.split('"').next().unwrap_or_default().to_owned();
            if TEST_BINARIES.contains(&name.as_str()) {
                found.push((name, PathBuf::from(exe)));
            }
        }
    }
    for t in TEST_BINARIES {
        if !found.iter().any(|(n, _)| n == t) {
            bail!("test binary {t} not found in cargo's output");
        }
    }
    Ok(found)
}

fn json_str<'a>(s: &'a str, after: &str) -> Option<&'a str> {
    s.find(after).map(|i| &s[i + after.len()..])
}

/// The shared libraries a dynamic executable loads, from ldd.
fn libraries(exe: &Path) -> Result<BTreeSet<PathBuf>> {
    let out = output("ldd", &[exe.to_str().context("non-UTF-8 path")?])
        .with_context(|| format!("ldd {}", exe.display()))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l
                .split("=>")
                .nth(1)
                .unwrap_or(l)
                .split_whitespace()
                .next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

fn copy_into(root: &Path, file: &Path) -> Result<()> {
    let dest = root.join(file.strip_prefix("/").unwrap_or(file));
    std::fs::create_dir_all(dest.parent().context("no parent")?)?;
    std::fs::copy(file, &dest).with_context(|| format!("copying {}", file.display()))?;
    Ok(())
}

/// The ext4 image: the binaries in their target/debug layout (the tests find stapr and the
/// examples next to their own directory) plus room for the tests' files.
fn build_image(work: &Path, tests: &[(String, PathBuf)]) -> Result<PathBuf> {
    let stage = work.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    let debug = stage.join("target/debug");
    std::fs::create_dir_all(debug.join("deps"))?;
    let bins = workspace_root().join("target/debug");
    for b in [
        "stapr",
        "udp_talker",
        "file_holder",
        "disk_writer",
        "call_chain",
    ] {
        std::fs::copy(bins.join(b), debug.join(b)).with_context(|| format!("staging {b}"))?;
    }
    for (name, exe) in tests {
        std::fs::copy(exe, debug.join("deps").join(name))?;
    }
    let image = work.join("rootfs.ext4");
    let _ = std::fs::remove_file(&image);
    status(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "stapr", "-d"])
            .arg(&stage)
            .arg(&image)
            .arg("1536M"),
    )
    .context("mkfs.ext4")?;
    Ok(image)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /stapr /sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm 2>/dev/null || { mkdir -p /dev/shm; mount -t tmpfs tmpfs /dev/shm; }
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
ln -sf /bin/busybox /sbin/modprobe
ulimit -l unlimited
# Tests that know what each kernel allows (doctor's) tell the VMs from the host by this.
export STAPR_VM=1
for m in @MODULES@; do modprobe $m || echo "STAPR-VM-ERROR modprobe $m"; done
sleep 1
mount -t ext4 /dev/vda /stapr || echo "STAPR-VM-ERROR mount ext4"
ip link set lo up
echo "STAPR-VM-BOOTED $(uname -r)"
cd /stapr/target/debug
method() {
  ./stapr "$@" >/dev/null 2>/tmp/method
  echo "@METHOD@ $1: $(grep -v '^$' /tmp/method | tail -n 1)"
}
@METHODS@
@RUN_TESTS@
sync
echo "@DONE@"
poweroff -f
"#;

fn build_initramfs(
    work: &Path,
    kernel: &Kernel,
    tests: &[(String, PathBuf)],
    filter: &[String],
    inject: Inject,
) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("busybox-static is not installed")?;
    // glibc and friends for the dynamically linked binaries on the image.
    let mut libs = BTreeSet::new();
    let debug = workspace_root().join("target/debug");
    for exe in tests
        .iter()
        .map(|(_, p)| p.clone())
        .chain([debug.join("stapr"), debug.join("udp_talker")])
    {
        libs.extend(libraries(&exe)?);
    }
    for lib in &libs {
        copy_into(&root, lib)?;
    }
    // The modules the init loads, at their paths in the tree, with the tree's indexes.
    let mods = kernel.modules();
    let dest = root.join("lib/modules").join(&kernel.release);
    std::fs::create_dir_all(&dest)?;
    for entry in std::fs::read_dir(&mods)? {
        let p = entry?.path();
        if p.is_file()
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("modules."))
        {
            std::fs::copy(&p, dest.join(p.file_name().context("name")?))?;
        }
    }
    let mut load = Vec::new();
    for m in MODULES {
        let path = output(
            "modinfo",
            &[
                "-b",
                kernel.root.to_str().context("path")?,
                "-k",
                &kernel.release,
                "-F",
                "filename",
                m,
            ],
        )
        .with_context(|| format!("module {m} not in {}", kernel.package))?;
        if path.trim() == "(builtin)" {
            continue;
        }
        load.push(*m);
        let path = PathBuf::from(path.trim());
        let rel = path
            .strip_prefix(&kernel.root)
            .context("module outside the tree")?;
        let target = root.join(rel);
        std::fs::create_dir_all(target.parent().context("parent")?)?;
        std::fs::copy(&path, &target)?;
    }
    let mut run_tests = String::new();
    // The method lines need only a moment; skip them when only the harness is tested.
    let methods = inject == Inject::Nothing;
    for (t, _) in tests {
        let skips: Vec<String> = SKIPPED
            .iter()
            .filter(|(b, _, _)| b == t)
            .map(|(_, test, _)| format!("--skip {test}"))
            .collect();
        run_tests.push_str(&format!(
            "./deps/{t} --test-threads=1 --include-ignored {} {} 2>&1\necho \"{RESULT} {t} $?\"\n",
            skips.join(" "),
            filter.join(" ")
        ));
    }
    match inject {
        Inject::Nothing => {}
        Inject::Failure => {
            run_tests = format!(
                "echo 'running 1 test'\necho 'test {INJECTED_TEST} ... FAILED'\n\
                 echo '---- {INJECTED_TEST} stdout ----'\necho 'injected by the self-test'\n\
                 echo 'test result: FAILED. 0 passed; 1 failed; 0 ignored'\necho \"{RESULT} vm_harness 1\"\n"
            )
        }
        Inject::Panic => run_tests = "echo c > /proc/sysrq-trigger\n".to_owned(),
        Inject::Bench => run_tests = CALLTREE_BENCH.to_owned(),
    }
    let method_lines = if methods {
        "method nettop -i 1 --count 1\nmethod disktop -i 1 --count 1\nmethod slowopen -d 1"
    } else {
        ""
    };
    let init = INIT
        .replace("@METHODS@", method_lines)
        .replace("@MODULES@", &load.join(" "))
        .replace("@RUN_TESTS@", &run_tests)
        .replace("@RESULT@", RESULT)
        .replace("@METHOD@", METHOD)
        .replace("@DONE@", DONE);
    std::fs::write(root.join("init"), init)?;
    status(Command::new("chmod").arg("+x").arg(root.join("init")))?;
    let image = work.join("initramfs.cpio.gz");
    status(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        image.display()
    )))
    .context("packing the initramfs")?;
    Ok(image)
}

/// What one boot showed.
#[derive(Default, Debug)]
struct Outcome {
    booted: bool,
    done: bool,
    panic: Option<String>,
    stall: Option<String>,
    timed_out: bool,
    /// (test binary, exit code)
    results: Vec<(String, i32)>,
    methods: Vec<String>,
    failures: Vec<String>,
    passed: u64,
    failed: u64,
}

fn boot(
    kernel: &Kernel,
    initrd: &Path,
    image: &Path,
    timeout: Duration,
    log: &Path,
) -> Result<Outcome> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 loglevel=4"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", image.display()))
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
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
    let mut transcript = String::new();
    let deadline = Instant::now() + timeout;
    let mut current_test: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            o.timed_out = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                transcript.push_str(&line);
                transcript.push('\n');
                if line.contains("STAPR-VM-BOOTED") {
                    o.booted = true;
                }
                if line.contains("Kernel panic") {
                    o.panic = Some(line.clone());
                }
                if line.contains("rcu_sched self-detected stall")
                    || line.contains("rcu: INFO: rcu_")
                {
                    o.stall.get_or_insert(line.clone());
                }
                if let Some(m) = line.strip_prefix(METHOD) {
                    o.methods.push(m.trim().to_owned());
                }
                if let Some(r) = line.strip_prefix(RESULT) {
                    let mut it = r.split_whitespace();
                    if let (Some(t), Some(rc)) = (it.next(), it.next()) {
                        o.results.push((t.to_owned(), rc.parse().unwrap_or(-1)));
                    }
                }
                // libtest: "test name ... FAILED" and the per-binary summary.
                if line.starts_with("test ") && line.ends_with(" ... FAILED") {
                    o.failures.push(line.clone());
                }
                if line.starts_with("test result: ") {
                    for part in line.split(';') {
                        let w: Vec<&str> = part.split_whitespace().collect();
                        let n = w
                            .len()
                            .checked_sub(2)
                            .and_then(|i| w[i].parse::<u64>().ok())
                            .unwrap_or(0);
                        match w.last() {
                            Some(&"passed") => o.passed += n,
                            Some(&"failed") => o.failed += n,
                            _ => {}
                        }
                    }
                }
                current_test.push(line.clone());
                if line.contains(DONE) {
                    o.done = true;
                }
                if o.panic.is_some() {
                    // Give the panic message a moment to finish, then stop.
                    std::thread::sleep(Duration::from_millis(500));
                    transcript.extend(rx.try_iter().map(|l| l + "\n"));
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
    std::fs::write(log, &transcript)?;
    Ok(o)
}

/// What the init runs besides the tests: nothing, a fault the harness must recognise, or
/// (instead of the tests) calltree's benchmark.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inject {
    Nothing,
    /// A test that fails, with output, in libtest's format.
    Failure,
    /// `echo c > /proc/sysrq-trigger`: a kernel panic.
    Panic,
    /// No tests: calltree's attach/detach benchmark.
    Bench,
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

const INJECTED_TEST: &str = "vm_harness::deliberate_failure";

/// Fetches the newest kernel of `line`, stages the disk image and an initramfs that runs
/// `filter`ed tests (or what `inject` says), and boots it. Returns the package booted, the
/// console log's path and what the console showed.
fn boot_line(
    line: &Line,
    tests: &[(String, PathBuf)],
    filter: &[String],
    inject: Inject,
    timeout: Duration,
) -> Result<(String, PathBuf, Outcome)> {
    let package = resolve(line)?;
    let kernel = fetch(&package)?;
    let work = workspace_root().join("target/vm").join(line.name);
    std::fs::create_dir_all(&work)?;
    let image = build_image(&work, tests)?;
    let initrd = build_initramfs(&work, &kernel, tests, filter, inject)?;
    let log = work.join("console.log");
    eprintln!(
        "xtask vm: booting {package} under TCG (console: {})",
        log.display()
    );
    let o = boot(&kernel, &initrd, &image, timeout, &log)?;
    Ok((package, log, o))
}

/// Boots one kernel line and returns the verdict (None: every test passed) with the
/// numbers of tests passed and failed.
fn run_kernel(
    line: &Line,
    tests: &[(String, PathBuf)],
    filter: &[String],
    timeout: Duration,
    inject: Inject,
) -> Result<(Option<String>, u64, u64)> {
    let t = Instant::now();
    let (package, log, o) = boot_line(line, tests, filter, inject, timeout)?;
    println!(
        "== {} ({package}, {:.0} s)",
        line.name,
        t.elapsed().as_secs_f64()
    );
    for m in &o.methods {
        println!("   method  {m}");
    }
    for (bin, rc) in &o.results {
        println!("   {:<8} {}", bin, if *rc == 0 { "ok" } else { "FAILED" });
    }
    for f in &o.failures {
        println!("   {f}");
    }
    if inject == Inject::Nothing {
        for (bin, test, why) in SKIPPED {
            println!("   not run here: {bin}::{test} ({why} inside the VM)");
        }
    }
    println!("   {} passed, {} failed", o.passed, o.failed);
    let expected_results = if inject == Inject::Nothing {
        tests.len()
    } else {
        1
    };
    let verdict = if let Some(p) = &o.panic {
        Some(format!("kernel panic: {p}"))
    } else if let Some(s) = &o.stall {
        Some(format!("RCU stall: {s}"))
    } else if o.timed_out {
        Some(format!("timed out after {} s", timeout.as_secs()))
    } else if !o.booted {
        Some("did not reach the test stage".to_owned())
    } else if !o.done {
        Some("stopped before the tests finished".to_owned())
    } else if o.results.len() != expected_results
        || o.results.iter().any(|(_, rc)| *rc != 0)
        || o.failed > 0
    {
        Some(format!("tests failed: {}", o.failures.join(", ")))
    } else if o.passed == 0 {
        Some("no test ran".to_owned())
    } else {
        None
    };
    if let Some(v) = &verdict {
        println!("   {}: {v}; console log: {}", line.name, log.display());
        print_failures(&log)?;
    }
    Ok((verdict, o.passed, o.failed))
}

fn kernel_lines(names: &[String]) -> Result<Vec<&'static Line>> {
    if names.is_empty() {
        return Ok(LINES.iter().collect());
    }
    names
        .iter()
        .map(|k| {
            LINES
                .iter()
                .find(|l| l.name == k)
                .with_context(|| format!("unknown kernel {k}; known: debian-6.1, debian-6.12"))
        })
        .collect()
}

pub fn run(args: &VmArgs) -> Result<()> {
    let (passed, failed) = run_counted(args)?;
    println!("xtask vm: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs what `args` asks for; returns the tests passed and failed over all kernels, or an
/// error when any kernel did not pass.
pub fn run_counted(args: &VmArgs) -> Result<(u64, u64)> {
    crate::setup::packages(PACKAGES)?;
    let lines = kernel_lines(&args.kernels)?;
    let tests = test_binaries()?;
    let timeout = Duration::from_secs(args.timeout);
    if args.self_test {
        self_test(lines[0], &tests, timeout)?;
        return Ok((0, 0));
    }
    let (mut passed, mut failed_tests, mut failed) = (0, 0, Vec::new());
    for line in lines {
        let (v, p, f) = run_kernel(line, &tests, &args.filter, timeout, Inject::Nothing)?;
        passed += p;
        failed_tests += f;
        if let Some(v) = v {
            failed.push(format!("{}: {v}", line.name));
        }
    }
    if !failed.is_empty() {
        bail!(
            "VM tests failed ({passed} passed, {failed_tests} failed): {}",
            failed.join("; ")
        );
    }
    Ok((passed, failed_tests))
}

/// `cargo xtask bench calltree`, VM part: attach and detach times of every ext4 function
/// with each method, on each kernel, side by side.
pub fn bench_calltree() -> Result<()> {
    crate::setup::packages(PACKAGES)?;
    let tests = test_binaries()?;
    println!("calltree --module ext4 in the Debian VMs (TCG emulation: slower than hardware):");
    println!(
        "  {:<12} {:<18} {:>9} {:>8} {:>14} {:>14} {:>14}",
        "kernel", "method", "functions", "attach", "stop->prompt", "bg detach done", "fg detach"
    );
    for line in kernel_lines(&[])? {
        let (_, log, o) = boot_line(line, &tests, &[], Inject::Bench, Duration::from_secs(2400))?;
        if !o.done {
            bail!(
                "{}: the benchmark did not finish; console log: {}",
                line.name,
                log.display()
            );
        }
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

impl VmArgs {
    /// Every kernel, every test.
    pub fn all() -> Self {
        VmArgs {
            kernels: Vec::new(),
            timeout: 1800,
            self_test: false,
            filter: Vec::new(),
        }
    }

    /// The harness's self-test on the first kernel.
    pub fn self_check() -> Self {
        VmArgs {
            self_test: true,
            ..Self::all()
        }
    }
}

/// The harness's own test: a failing test and a kernel panic must each be reported as
/// such, not as a pass or a time-out.
fn self_test(line: &Line, tests: &[(String, PathBuf)], timeout: Duration) -> Result<()> {
    let (v, _, _) = run_kernel(line, tests, &[], timeout, Inject::Failure)?;
    match v {
        Some(v) if v.starts_with("tests failed") && v.contains(INJECTED_TEST) => {}
        other => bail!("self-test: an injected test failure was reported as {other:?}"),
    }
    let (v, _, _) = run_kernel(line, tests, &[], timeout, Inject::Panic)?;
    match v {
        Some(v) if v.starts_with("kernel panic") => {}
        other => bail!("self-test: an injected kernel panic was reported as {other:?}"),
    }
    println!("xtask vm: self-test passed (a failing test and a kernel panic were both caught)");
    Ok(())
}

/// Prints the libtest failure sections ("---- name stdout ----" up to "failures:") of a log.
fn print_failures(log: &Path) -> Result<()> {
    let text = std::fs::read_to_string(log)?;
    let mut printing = false;
    for l in text.lines() {
        if l.starts_with("---- ") {
            printing = true;
        } else if l == "failures:" || l.starts_with("test result:") {
            printing = false;
        }
        if printing {
            println!("   | {l}");
        }
    }
    Ok(())
}
