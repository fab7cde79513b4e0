//! Project tasks: `cargo xtask setup | run | build | test | bench`. Builds on stable Rust
//! alone.

mod bench;
mod cross;
mod runs;
mod setup;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "stapr's setup, test and benchmark tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src, bpf-linker, Debian packages.
    Setup,
    /// Set up, build stapr (release) and run it with these arguments, as root.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and build stapr (release); with `--target aarch64`, cross-build it for arm64.
    Build {
        #[arg(long, value_enum)]
        target: Option<Arch>,
    },
    /// Set up, check formatting and lints, build, and run every test; the logs are kept
    /// under ~/.cache/stapr/runs/.
    Test {
        /// The inner loop: the host's tests and the 6.12 line's KERNEL_CI share only (no
        /// arm64, no other kernel lines, no harness self-test)
        #[arg(long)]
        quick: bool,
        /// Passed to `cargo test` (a test name filter, `--nocapture`...)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian kernels in QEMU and run the integration tests inside.
    VmTest(vm::VmArgs),
    /// Measure what a report costs: the same workload with and without it, alternating.
    Bench(bench::BenchArgs),
}

/// Architectures stapr cross-builds for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Arch {
    /// aarch64-unknown-linux-gnu (arm64)
    Aarch64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::cargo_bin_on_path();
    let result = match cli.task {
        Task::Setup => setup::all().map(|_| ()),
        Task::Run { args } => run(&args),
        Task::Build { target: None } => {
            setup::toolchain().and_then(|()| util::cargo(&["build", "--release", "-p", "stapr"]))
        }
        Task::Build {
            target: Some(Arch::Aarch64),
        } => setup::toolchain().and_then(|()| cross::build()),
        Task::Test { quick, args } => runs::supervise(|| test(quick, &args)),
        Task::Bench(args) => bench::run(&args),
        Task::VmTest(args) => vm::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    setup::toolchain()?;
    util::cargo(&["build", "--release", "-p", "stapr"])?;
    let stapr = util::workspace_root().join("target/release/stapr");
    util::exec_as_root(&stapr, args)
}

/// Lints the eBPF crate for its own target (bpfel, core built from source), where its
/// programs actually compile; on the host its `no_std` binaries have no panic handler.
fn lint_ebpf() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    util::status(
        std::process::Command::new(cargo)
            .args([
                "clippy",
                "-p",
                "probes-ebpf",
                "--bins",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--target-dir", "target/ebpf-lint"])
            .args(["--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "--cfg=bpf_target_arch=\"x86_64\"",
            )
            .current_dir(util::workspace_root()),
    )
}

fn test(quick: bool, args: &[String]) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut steps = Steps::default();
    steps.time("setup", setup::all)?;
    steps.time("fmt", || util::cargo(&["fmt", "--all", "--", "--check"]))?;
    steps.time("clippy", || {
        util::cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "probes-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    steps.time("ebpf-lint", lint_ebpf)?;
    // Integration tests drive the stapr binary and the example workloads.
    steps.time("build", || {
        util::cargo(&["build", "-p", "stapr", "-p", "stapr-examples"])
    })?;
    let full = args.is_empty() && !quick;
    let vm_args = if quick {
        vm::VmArgs::quick()
    } else {
        vm::VmArgs::ci_then_self_test()
    };
    // Everything the tests run is built first: cargo holds its build lock while tests
    // run, and the kernel lines boot beside the host's tests.
    steps.time("build tests", || {
        util::cargo(&["test", "--workspace", "--no-run"])?;
        if full {
            cross::build_unit_tests()?;
        }
        Ok(())
    })?;
    let built = steps.time("build for the kernel lines", || vm::build(&vm_args))?;
    // The kernel lines (under emulation, both cores) and the host's tests (mostly
    // waiting on their workloads: about a tenth of the machine) side by side.
    let (host, (vm, vm_steps)) = std::thread::scope(|s| {
        let lines = s.spawn(|| {
            let mut steps = Steps::default();
            // The same tests on Debian kernels (kprobes, fentry, ext4 as a module), and a
            // check that the harness catches a failing test and a kernel panic.
            let vm = steps.time("kernel lines", || vm::run_built(&vm_args, &built));
            (vm, steps)
        });
        let mut host_steps = Steps::default();
        // Every test binary runs, whatever fails before it: the closing list names them
        // all.
        let mut cmd = vec!["test", "--workspace", "--no-fail-fast"];
        if !args.is_empty() {
            cmd.push("--");
            cmd.extend(args.iter().map(String::as_str));
        }
        let host = (|| {
            let mut totals = host_steps.time("host tests", || util::cargo_test(&cmd))?;
            // The arm64 build of stapr, its unit tests run under qemu-user.
            if full {
                let arm = host_steps.time("arm64 unit tests", cross::run_unit_tests)?;
                totals.passed += arm.passed;
                totals.failed += arm.failed;
                totals.ignored += arm.ignored;
            }
            anyhow::Ok(totals)
        })();
        let lines = lines.join().expect("the kernel lines' thread panicked");
        ((host, host_steps), lines)
    });
    let (host, host_steps) = host;
    steps.0.extend(host_steps.0);
    steps.0.extend(vm_steps.0);
    println!(
        "xtask: time by step (the host's tests beside the kernel lines): {steps}; in all {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let totals = host?;
    if totals.passed == 0 {
        anyhow::bail!("no host test ran");
    }
    let vm = vm?;
    // One closing line for the whole run (cargo prints one per test binary).
    println!(
        "xtask: {} passed, {} failed, {} skipped",
        totals.passed + vm.passed,
        totals.failed + vm.failed,
        totals.ignored
    );
    vm.verdict()?;
    if totals.failed > 0 {
        anyhow::bail!("host tests failed");
    }
    Ok(())
}

/// How long each step of `cargo xtask test` took, in the order they ran.
#[derive(Default)]
struct Steps(Vec<(&'static str, std::time::Duration)>);

impl Steps {
    fn time<T>(
        &mut self,
        name: &'static str,
        step: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let start = std::time::Instant::now();
        let out = step();
        self.0.push((name, start.elapsed()));
        out
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|(name, d)| format!("{name} {:.0} s", d.as_secs_f64()))
            .collect();
        write!(f, "{}", steps.join(", "))
    }
}
