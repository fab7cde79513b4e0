//! `cargo xtask vm-test`: boots Debian kernels in QEMU and runs stapr's integration tests
//! inside, on the kernels users have (kprobes, fentry, ext4 as a module) rather than this
//! machine's.
//!
//! Per kernel: fetch the newest package of its line with `apt-get download` (cached under
//! ~/.cache/stapr/kernels: `kernels`), stage the test binaries on an ext4 image and build a
//! busybox initramfs with the modules and libraries they need (`image`), boot it under
//! TCG (`qemu`), and read the results from the serial console (`console`).

mod console;
mod image;
mod kernels;
mod qemu;
mod servers;

pub use console::Outcome;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::util::workspace_root;

/// Packages the harness runs on the host.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "cpio",
    "e2fsprogs",
    "kmod",
    // The NFS and SMB servers the guests mount (servers.rs).
    "nfs-ganesha",
    "nfs-ganesha-vfs",
    "samba",
];

/// The architecture a kernel line is built for: what QEMU emulates and what the test
/// binaries are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// Debian's name for it.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The Rust target to cross-build for, None for this machine's own.
    pub fn rust_target(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Aarch64 => Some(crate::cross::TARGET),
        }
    }

    /// Where cargo puts the debug build for this architecture.
    pub fn debug_dir(self) -> PathBuf {
        let target = workspace_root().join("target");
        match self.rust_target() {
            None => target.join("debug"),
            Some(t) => target.join(t).join("debug"),
        }
    }
}

/// A line of Debian kernels: the newest package whose name matches is used.
pub struct Line {
    pub name: &'static str,
    /// The image package's name, a regular expression for `apt-cache search` (`@ARCH@`:
    /// Debian's architecture name).
    pattern: &'static str,
    /// The Debian suite it comes from, when not one of the machine's own.
    suite: Option<&'static str>,
    /// Modules of the harness's list (image.rs) this line does not have: merged into
    /// another, renamed, or newer than it.
    absent: &'static [&'static str],
    /// Modules only this line needs, loaded after the harness's list (what its SMB
    /// client asks of the crypto API where later kernels have it built in).
    extra: &'static [&'static str],
    pub arch: Arch,
    /// What `cargo xtask test` runs on this line. `cargo xtask vm-test` runs every test
    /// unless told otherwise.
    ci: Ci,
    /// (test, the bug) that `cargo xtask test` leaves out on this line because of a known
    /// bug of stapr's there; the line's report names them, `cargo xtask vm-test` runs them.
    known_bugs: &'static [(&'static str, &'static str)],
}

/// In the order `cargo xtask test` boots them, two at a time: the longest first (as
/// they last ran).
const LINES: &[Line] = &[
    Line {
        name: "debian-6.12",
        pattern: r"^linux-image-6\.12\..*-@ARCH@-unsigned$",
        suite: None,
        absent: &["fscache"],
        extra: &[],
        arch: Arch::X86_64,
        ci: Ci::Core,
        known_bugs: &[],
    },
    // Debian 11: none of the helpers after 5.10 (doctor's list), no kprobe.multi.
    Line {
        name: "debian-5.10",
        pattern: r"^linux-image-5\.10\.0-.*-@ARCH@-unsigned$",
        suite: Some("bullseye"),
        absent: &[
            "virtio_pci_modern_dev",
            "virtio_pci_legacy_dev",
            "netfs",
            "cifs_arc4",
            "cifs_md4",
            "nls_ucs2_utils",
        ],
        extra: &["aes_generic", "md4"],
        arch: Arch::X86_64,
        // slowopen's entry-probe method is this line's alone: its full tables here.
        ci: Ci::Subset(&[KERNEL_CI, FULL_TABLES_CI]),
        known_bugs: &[],
    },
    Line {
        name: "debian-6.12-arm64",
        pattern: r"^linux-image-6\.12\..*-@ARCH@-unsigned$",
        suite: None,
        absent: &["fscache"],
        extra: &[],
        arch: Arch::Aarch64,
        ci: Ci::Subset(&[ARM64_CI]),
        known_bugs: &[],
    },
    // Debian's newest (trixie-backports): split packages, everything under usr/, no
    // -unsigned image.
    Line {
        name: "debian-7",
        pattern: r"^linux-image-7\.[0-9.]+\+deb[0-9]+-@ARCH@$",
        suite: Some("trixie-backports"),
        absent: &[
            "fscache",
            "crc32c_generic",
            "ghash_generic",
            "sha512_generic",
            "cifs_arc4",
        ],
        extra: &[],
        arch: Arch::X86_64,
        // Full tables: where Debian's 7.x showed probe runs the kernel skips.
        ci: Ci::Subset(&[KERNEL_CI, MODULE_CI, FULL_TABLES_CI]),
        known_bugs: &[],
    },
    Line {
        name: "debian-6.1",
        pattern: r"^linux-image-6\.1\.0-.*-@ARCH@-unsigned$",
        suite: None,
        absent: &["nls_ucs2_utils"],
        extra: &[],
        arch: Arch::X86_64,
        // Its uprobes attach one pair per function (no uprobe.multi): KERNEL_CI's
        // `--binary` test runs that path; calltree's further `--binary` tests took 11
        // minutes there under emulation and check what the host checks. Its full tables
        // take 6.12's paths, and its module test 5.10's (one function at a time), where
        // neither line runs it.
        ci: Ci::Subset(&[KERNEL_CI]),
        known_bugs: &[],
    },
];

/// How many of a line's slowest tests its summary names.
const SLOWEST_SHOWN: usize = 6;

/// What a kernel line runs in `cargo xtask test`.
#[derive(Clone, Copy)]
enum Ci {
    /// Every test but [`HOST_ONLY`], [`UPROBE_TESTS`] and [`SAME_PROBES_AS_HOST`].
    Core,

    /// These tests only (the union of these lists).
    Subset(&'static [&'static [&'static str]]),
}

/// Tests that only the host runs in `cargo xtask test` (`cargo xtask vm-test` runs them
/// too): they check stapr's own user space (the command line, output that cannot be
/// written, a fuzzer, the exporter under load), which does not change from one kernel
/// to the next, and each takes minutes under emulation. (libtest's `--skip`: substrings
/// of test names.)
const HOST_ONLY: &[&str] = &[
    // cli: argument parsing only.
    "help_and_version_exit_zero",
    "negative_pid",
    "non_numeric_interval",
    "not_root",
    "slowopen_bad_min",
    "unknown_receive_charging_names_the_two",
    "unknown_report",
    "unknown_sort_key",
    "zero_interval",
    // robustness: stdout and readers, the fuzzer, exporter load.
    "a_stalled_stdout_loses_no_counts",
    "a_stop_is_honoured_while_stdout_is_blocked",
    "a_thousand_fuzzed_command_lines_keep_the_rules",
    "duration_is_honoured_while_stdout_is_blocked",
    "the_exporter_keeps_answering_under_load",
    "unread_datagrams_of_short_lived_senders_are_no_loss",
    "a_reader_that_goes_away_ends_each_report",
    // safety: the exporter's connections, signals, the interval clock, rlimits.
    "the_exporter_holds_under_a_flood_of_idle_connections",
    "sighup_ends_each_report_with_its_final_output",
    "an_interval_stopped_for_seconds_reports_its_true_length",
    "too_few_open_files_is_named_with_its_limit",
    // nettop: 9,000 TCP connections held open at once by one process fill the table of
    // new connections; that table's code is the same on every line.
    "a_full_new_connection_table_is_counted_as_lost",
    // calltree: every function of two programs traced (the kernel's uretprobes, which
    // the host has too), minutes of output under emulation.
    "every_function_traced_leaves_the_program_intact",
];

/// Tests of nettop, slowopen, containers and the exporter that 6.12 would run on the same
/// probes as the host (tp_btf for nettop, the syscall tracepoints for slowopen, on both
/// kernels; cgroups the same way): their kernel-facing part is in [`KERNEL_CI`], which
/// every line runs; the rest checks stapr's own handling of what those probes report
/// (output forms, filters, the end cases of a file), proven once on the host. About 280 s
/// of 6.12's 893 under emulation.
const SAME_PROBES_AS_HOST: &[&str] = &[
    // slowopen
    "the_raw_syscall_method_sees_every_end",
    "open_min_reports_a_slow_open_as_it_returns_and_not_a_fast_one",
    "failed_opens_and_untracked_closes_report_nothing",
    "files_still_open_at_stop_are_listed_once",
    "dup2_onto_the_fd_closes_the_file",
    "opened_in_one_thread_closed_in_another",
    "exec_closes_cloexec_files",
    "names_with_spaces_and_non_ascii_are_intact",
    "json_lines_per_file",
    "default_output_is_the_seed_format",
    "held_briefly_is_absent",
    "opens_in_progress_beyond_the_table_are_counted_as_lost",
    // nettop
    "udp_ipv6_receiver_is_charged_for_what_it_reads",
    "recv_at_device_charges_the_softirq_task",
    "xmit_at_device_charges_the_task_running_at_the_device",
    "a_receiver_that_never_reads_is_not_charged",
    "filters_keep_only_matching_rows",
    "json_lines_carry_raw_counts",
    "loopback_udp_classic_tracepoints",
    "rows_limit",
    "loopback_udp_auto_picks_btf_here",
    "sigterm_prints_the_current_interval_and_exits_zero",
    "sigint_prints_the_current_interval_and_exits_zero",
    "sigkill_leaves_nothing_attached",
    // containers
    "export_labels_series_by_container",
    "slowopen_names_containers_and_filters",
    "unknown_or_ambiguous_cgroups_are_refused",
    "mounts_cgroup2_privately_when_none_is_mounted",
    "a_removed_cgroup_keeps_its_last_name",
    // export
    "forgets_processes_that_exited",
    "by_comm_leaves_the_pid_label_out",
    "a_taken_port_is_one_line_and_exit_2",
];

/// What every amd64 kernel line but the one running [`Ci::Core`] runs: each report's
/// job on that kernel, with the numbers asserted (a known UDP receiver charged exactly,
/// a known write on the virtio disk and on NFS, a held file with its name and time, a
/// slow open on a stalled server, calltree's errors with every method the kernel offers
/// and the refusal of the others, `--binary`), `--cgroup`, the exporter's counters,
/// doctor's verdicts and planned methods against what the reports attach, nettop's
/// writer table full, a collapsed receive queue and its connections (addresses, ports,
/// new ones), bad input, and `kill -9`. libtest
/// filters: substrings of test names.
const KERNEL_CI: &[&str] = &[
    "udp_ipv4_receiver_is_charged_for_what_it_reads",
    "tcp_server_is_charged_for_the_stream_it_reads",
    "tcp_server_is_charged_for_every_page_it_sends",
    "nic_receiver_is_charged_on_the_nic",
    "nic_server_is_charged_for_every_page_it_sends",
    "loopback_udp_btf_tracepoints",
    "file_writes_and_reads_on_the_right_device",
    "file_writes_and_reads_on_the_syscall_path",
    "nfs_reads_and_writes_are_counted_under_the_server",
    "sendfile_copy_file_range_and_splice_are_counted",
    "held_long_enough_is_reported_with_its_time",
    "process_exit_closes_its_files",
    "a_stalled_nfs_server_shows_as_a_slow_open",
    "errors_show_the_failed_rmdir_with_every_method",
    "binary_tree_has_the_programs_call_structure",
    "serves_the_workloads_counters",
    "verdicts_match_this_kernel",
    "planned_methods_are_the_ones_the_reports_attach",
    "nettop_names_containers_and_filters_by_container_id",
    "disktop_names_containers_and_filters_by_path",
    "a_full_writer_table_is_counted_as_lost",
    "a_collapsed_receive_queue_is_charged_to_its_reader",
    "connections_of_two_tcp_clients_and_a_udp_exchange",
    "a_connection_is_new_only_in_its_first_interval",
    "kill_9_leaves_nothing_attached",
    "bad_input_is_one_line_and_exit_2",
];

/// calltree `--module ext4`, the whole module with the kernel's default method, where
/// that is kprobe.multi (7.3, and 6.12's [`Ci::Core`]). Where it attaches one function at
/// a time it took 358 s on 5.10 and 521 s on arm64 under emulation: `cargo xtask
/// vm-test` runs it there; `cargo xtask test` checks each attach method on a few ext4
/// functions there instead (`errors_show_the_failed_rmdir_with_every_method`).
const MODULE_CI: &[&str] = &["module_ext4_while_ls_write_and_sync_run"];

/// Every report's in-kernel table driven full (10,500 processes, 17,000 files): minutes
/// under emulation, on the lines whose probes differ (5.10's slowopen entry probes, 7.3),
/// beside 6.12's [`Ci::Core`].
const FULL_TABLES_CI: &[&str] = &["full_tables_show_their_losses_in_that_interval"];

/// calltree's uprobe tests beyond its main one (`binary_tree_has_the_programs_call_structure`,
/// which every line runs): the host runs them; under emulation they take minutes (11 on
/// 6.1, whose uprobes attach one pair per function).
const UPROBE_TESTS: &[&str] = &[
    "binary_durations_json_and_demangled_names",
    "binary_errors_prints_only_the_failing_tree",
    "binary_filters_by_pid_and_comm_in_the_kernel",
    "binary_json_and_max_depth",
    "binary_min_prints_only_the_slow_tree",
    "a_function_dwarf_marks_noreturn_gets_no_return_probe",
    "kill_9_detaches_every_uprobe_at_once",
    // Memory stays bounded under a flood of calls: stapr's own user space.
    "a_runaway_tree_is_cut_and_memory_stays_bounded",
];

impl Line {
    /// The test filter this line runs with: the user's when given, else (in `cargo
    /// xtask test`) its CI share.
    fn filter(&self, args: &VmArgs) -> Vec<String> {
        if !args.ci || !args.filter.is_empty() {
            return args.filter.clone();
        }
        let mut f = self.ci_filter();
        for (test, _) in self.known_bugs {
            f.extend(["--skip".to_owned(), test.to_string()]);
        }
        f
    }

    /// The line's share of `cargo xtask test`, before its known bugs are left out.
    fn ci_filter(&self) -> Vec<String> {
        let skip = |names: &[&str]| -> Vec<String> {
            names
                .iter()
                .flat_map(|n| ["--skip".to_owned(), n.to_string()])
                .collect()
        };
        match self.ci {
            Ci::Core => [
                skip(HOST_ONLY),
                skip(UPROBE_TESTS),
                skip(SAME_PROBES_AS_HOST),
            ]
            .concat(),
            Ci::Subset(lists) => lists
                .iter()
                .flat_map(|l| l.iter().map(|s| s.to_string()))
                .collect(),
        }
    }
}

/// What `cargo xtask test` runs on arm64, where the whole suite under emulation would
/// not fit the CI budget: each report's main test (nettop's on both directions and with
/// --connections). calltree traces a few ext4 functions with each attach method. (The
/// whole module, where fentry/fexit gives way to kprobes after its first functions
/// because one at a time it would take more than ten minutes under emulation, took 521 s
/// with kprobes: `cargo xtask vm-test` runs it.)
const ARM64_CI: &[&str] = &[
    "loopback_udp_btf_tracepoints",
    "nic_receiver_is_charged_on_the_nic",
    "tcp_server_is_charged_for_every_page_it_sends",
    "connections_of_two_tcp_clients_and_a_udp_exchange",
    "file_writes_and_reads_on_the_right_device",
    "held_long_enough_is_reported_with_its_time",
    "errors_show_the_failed_rmdir_with_every_method",
    "binary_tree_has_the_programs_call_structure",
    "serves_the_workloads_counters",
    "verdicts_match_this_kernel",
    "nettop_names_containers_and_filters_by_container_id",
    "nfs_reads_and_writes_are_counted_under_the_server",
    "sendfile_copy_file_range_and_splice_are_counted",
    "a_stalled_nfs_server_shows_as_a_slow_open",
];

#[derive(Args)]
pub struct VmArgs {
    /// Kernel lines to boot (debian-5.10, debian-6.1, debian-6.12, debian-7,
    /// debian-6.12-arm64); default: all
    #[arg(long = "kernel")]
    kernels: Vec<String>,
    /// Seconds one kernel may take, boot to power-off
    #[arg(long, default_value_t = 2400)]
    timeout: u64,
    /// Check the harness itself: an injected test failure and an injected kernel panic
    /// must each be caught (boots the first kernel of each architecture twice, runs no tests)
    #[arg(long)]
    self_test: bool,
    /// Passed to every test binary (a test name filter)
    #[arg(trailing_var_arg = true)]
    filter: Vec<String>,
    /// Kernel lines booted at once (each guest has two vCPUs)
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Run each line's share of `cargo xtask test` (docs/testing.md), not every test
    #[arg(long)]
    ci: bool,
    /// After the lines, the harness's self-test (as `cargo xtask test` runs it)
    #[arg(skip)]
    then_self_test: bool,
}

/// What one of the side-by-side slots boots.
enum Job<'a> {
    Line(&'a Line),
    SelfTest(&'a Line),
}

/// What the init runs besides the tests: nothing, a fault the harness must recognise, or
/// (instead of the tests) a script of a benchmark's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    Nothing,
    /// A test that fails, with output, in libtest's format.
    Failure,
    /// `echo c > /proc/sysrq-trigger`: a kernel panic.
    Panic,
    /// No tests: this shell script, which prints its results on `STAPR-VM-METHOD` lines
    /// (`@METHOD@` in it).
    Script(&'static str),
}

const INJECTED_TEST: &str = "vm_harness::deliberate_failure";

/// Fetches the newest kernel of `line`, stages the disk image and an initramfs that runs
/// `filter`ed tests (or what `inject` says), and boots it. Returns the package booted, the
/// console log's path and what the console showed.
pub fn boot_line(
    line: &Line,
    tests: &[(String, PathBuf)],
    filter: &[String],
    inject: Inject,
    timeout: Duration,
) -> Result<(String, PathBuf, Outcome)> {
    let package = kernels::resolve(line)?;
    let kernel = kernels::fetch(&package, line)?;
    // The self-test's boots have their own directory: they may run beside the line's.
    let dir = match inject {
        Inject::Failure | Inject::Panic => format!("{}-self-test", line.name),
        Inject::Nothing | Inject::Script(_) => line.name.to_owned(),
    };
    let work = workspace_root().join("target/vm").join(dir);
    std::fs::create_dir_all(&work)?;
    let image = image::build_image(&work, tests, line.arch)?;
    let initrd = image::build_initramfs(&work, &kernel, line, tests, filter, inject)?;
    let log = work.join("console.log");
    eprintln!(
        "xtask vm: booting {package} under TCG (console: {})",
        log.display()
    );
    let mut o = qemu::boot(&kernel, &initrd, &image, timeout, &log)?;
    // A kernel that dies while it boots, before the init runs anything, met the
    // emulator's known faults with kernel text the kernel patches at boot (7.3 under
    // TCG: an int3 oops in sched_clock_cpu, or a reset before its first line): boot it
    // again, at most twice, and say so.
    for attempt in 1..=2 {
        if o.booted || o.timed_out || inject == Inject::Panic {
            break;
        }
        let failed = work.join(format!("console-boot-{attempt}.log"));
        std::fs::rename(&log, &failed)?;
        eprintln!(
            "xtask vm: {package} died while booting (console: {}); booting it again",
            failed.display()
        );
        o = qemu::boot(&kernel, &initrd, &image, timeout, &log)?;
    }
    Ok((package, log, o))
}

/// Boots one kernel line and returns the verdict (None: every test passed) with the
/// numbers of tests passed and failed. Its report is printed in one piece at the end
/// (lines boot side by side).
fn run_kernel(
    line: &Line,
    tests: &[(String, PathBuf)],
    filter: &[String],
    timeout: Duration,
    inject: Inject,
) -> Result<(Option<String>, u64, u64)> {
    use std::fmt::Write as _;
    let t = Instant::now();
    let (package, log, o) = boot_line(line, tests, filter, inject, timeout)?;
    let mut out = String::new();
    let what = match inject {
        Inject::Failure => " (self-test: an injected test failure)",
        Inject::Panic => " (self-test: an injected kernel panic)",
        Inject::Nothing | Inject::Script(_) => "",
    };
    writeln!(
        out,
        "== {}{what} ({package}, {:.0} s)",
        line.name,
        t.elapsed().as_secs_f64()
    )?;
    for m in &o.methods {
        writeln!(out, "   method  {m}")?;
    }
    for (bin, rc, secs) in &o.results {
        let verdict = if *rc == 0 { "ok" } else { "FAILED" };
        writeln!(out, "   {bin:<10} {verdict:<6} {secs:>5} s")?;
    }
    for f in &o.failures {
        writeln!(out, "   {f}")?;
    }
    let mut slow = o.times.clone();
    slow.sort_by(|a, b| b.1.total_cmp(&a.1));
    if !slow.is_empty() {
        let top: Vec<String> = slow
            .iter()
            .take(SLOWEST_SHOWN)
            .map(|(t, s)| format!("{t} {s:.0} s"))
            .collect();
        writeln!(out, "   slowest: {}", top.join(", "))?;
    }
    if inject == Inject::Nothing {
        for (bin, test, why) in image::skipped(line.arch) {
            writeln!(out, "   not run here: {bin}::{test} ({why} inside the VM)")?;
        }
        for (test, bug) in line.known_bugs {
            if filter.windows(2).any(|w| w[0] == "--skip" && w[1] == *test) {
                writeln!(out, "   KNOWN BUG, left out here: {test}: {bug}")?;
            }
        }
    }
    writeln!(out, "   {} passed, {} failed", o.passed, o.failed)?;
    let expected_results = if inject == Inject::Nothing {
        tests.len()
    } else {
        1
    };
    let verdict = o.verdict(expected_results, timeout);
    // The run's own copy of the console (`cargo xtask test`), which outlives the clone.
    let log = match inject {
        Inject::Nothing => crate::runs::keep_file(&format!("{}-console.log", line.name), &log),
        _ => log,
    };
    if let Some(v) = &verdict {
        writeln!(out, "   {}: {v}; console log: {}", line.name, log.display())?;
        let console = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
        let failed = if inject == Inject::Nothing {
            crate::runs::record_libtest(line.name, &console, &log)
        } else {
            crate::runs::libtest_failures(&console)
        };
        for l in failed.iter().flat_map(|f| f.section.lines()) {
            writeln!(out, "   | {l}")?;
        }
        // No test failed: the line did (a panic, a time-out, no boot).
        if inject == Inject::Nothing && failed.is_empty() {
            crate::runs::record(&crate::runs::Failure {
                place: line.name.into(),
                test: "-".into(),
                message: v.clone(),
                log: log.clone(),
            });
        }
    }
    print!("{out}");
    Ok((verdict, o.passed, o.failed))
}

pub fn kernel_lines(names: &[String]) -> Result<Vec<&'static Line>> {
    if names.is_empty() {
        return Ok(LINES.iter().collect());
    }
    names
        .iter()
        .map(|k| {
            LINES.iter().find(|l| l.name == k).with_context(|| {
                let known: Vec<&str> = LINES.iter().map(|l| l.name).collect();
                format!("unknown kernel {k}; known: {}", known.join(", "))
            })
        })
        .collect()
}

pub fn run(args: &VmArgs) -> Result<()> {
    let c = run_counted(args)?;
    println!("xtask vm: {} passed, {} failed", c.passed, c.failed);
    c.verdict()
}

/// The tests of the kernel lines run, and the lines that did not pass.
#[derive(Debug, Default)]
pub struct Counted {
    pub passed: u64,
    pub failed: u64,
    /// `line: verdict` of each line that did not pass.
    pub lines_failed: Vec<String>,
}

impl Counted {
    /// An error naming the lines that did not pass, if any.
    pub fn verdict(&self) -> Result<()> {
        if !self.lines_failed.is_empty() {
            bail!(
                "VM tests failed ({} passed, {} failed): {}",
                self.passed,
                self.failed,
                self.lines_failed.join("; ")
            );
        }
        Ok(())
    }
}

/// Installs what booting needs and builds the test binaries for `arch`: (name, path) of
/// each.
pub fn prepare(arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    crate::setup::packages(PACKAGES)?;
    image::test_binaries(arch)
}

/// The first of `lines` for each architecture among them: where the self-test boots.
fn first_of_each_arch<'a>(lines: &[&'a Line]) -> Vec<&'a Line> {
    let mut firsts: Vec<&Line> = Vec::new();
    for line in lines {
        if !firsts.iter().any(|l| l.arch == line.arch) {
            firsts.push(line);
        }
    }
    firsts
}

/// The test binaries of each architecture a run boots, built.
pub struct Built(Vec<(Arch, Vec<(String, PathBuf)>)>);

impl Built {
    fn tests(&self, arch: Arch) -> &[(String, PathBuf)] {
        &self.0.iter().find(|(a, _)| *a == arch).expect("built").1
    }
}

/// Builds what the lines `args` names boot, for each of their architectures (cargo runs
/// one build at a time; nothing after this runs cargo, so tests may run beside the lines).
pub fn build(args: &VmArgs) -> Result<Built> {
    let built = first_of_each_arch(&kernel_lines(&args.kernels)?)
        .into_iter()
        .map(|line| Ok((line.arch, prepare(line.arch)?)))
        .collect::<Result<_>>()?;
    Ok(Built(built))
}

/// Builds and runs what `args` asks for; returns the tests passed and failed over all
/// kernels and the lines that did not pass (an error only when the harness itself fails).
pub fn run_counted(args: &VmArgs) -> Result<Counted> {
    run_built(args, &build(args)?)
}

/// [`run_counted`] with the test binaries already built.
pub fn run_built(args: &VmArgs, built: &Built) -> Result<Counted> {
    let lines = kernel_lines(&args.kernels)?;
    let timeout = Duration::from_secs(args.timeout);
    if args.self_test {
        // The first line of each architecture among those asked for, side by side (each
        // boots twice, and a boot is mostly emulated time).
        return std::thread::scope(|s| {
            let checks: Vec<_> = first_of_each_arch(&lines)
                .into_iter()
                .map(|line| s.spawn(move || self_test(line, built.tests(line.arch), timeout)))
                .collect();
            for c in checks {
                c.join().expect("a self-test thread panicked")?;
            }
            Ok(Counted::default())
        });
    }
    // `jobs` lines side by side: a guest spends much of a test in sleeps and waits. The
    // harness's self-test, when asked for with the lines, boots last: its short boots
    // fill the time one slot would otherwise wait for the other's last line.
    let mut queue: Vec<Job> = lines.iter().map(|l| Job::Line(l)).collect();
    if args.then_self_test {
        queue.extend(first_of_each_arch(&lines).into_iter().map(Job::SelfTest));
    }
    let queue = std::sync::Mutex::new(queue.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| loop {
                let Some(job) = queue.lock().unwrap().next() else {
                    break;
                };
                let r = match job {
                    Job::Line(line) => (
                        line.name.to_owned(),
                        run_kernel(
                            line,
                            built.tests(line.arch),
                            &line.filter(args),
                            timeout,
                            Inject::Nothing,
                        ),
                    ),
                    Job::SelfTest(line) => (
                        format!("harness self-test on {}", line.name),
                        match self_test(line, built.tests(line.arch), timeout) {
                            Ok(()) => Ok((None, 0, 0)),
                            Err(e) => Ok((Some(format!("{e:#}")), 0, 0)),
                        },
                    ),
                };
                results.lock().unwrap().push(r);
            });
        }
    });
    let mut c = Counted::default();
    for (name, r) in results.into_inner().unwrap() {
        let (v, p, f) = r?;
        c.passed += p;
        c.failed += f;
        if let Some(v) = v {
            c.lines_failed.push(format!("{name}: {v}"));
        }
    }
    Ok(c)
}

impl VmArgs {
    /// What `cargo xtask test` runs: every kernel line, each with its CI subset.
    pub fn ci() -> Self {
        VmArgs {
            kernels: Vec::new(),
            timeout: 2400,
            self_test: false,
            filter: Vec::new(),
            jobs: 2,
            ci: true,
            then_self_test: false,
        }
    }

    /// What `cargo xtask test --quick` runs: the 6.12 line's share of [`KERNEL_CI`].
    pub fn quick() -> Self {
        VmArgs {
            kernels: vec!["debian-6.12".into()],
            filter: KERNEL_CI.iter().map(|s| s.to_string()).collect(),
            ci: false,
            ..Self::ci()
        }
    }

    /// [`VmArgs::ci`], then the harness's self-test on the first line of each
    /// architecture.
    pub fn ci_then_self_test() -> Self {
        VmArgs {
            then_self_test: true,
            ..Self::ci()
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
