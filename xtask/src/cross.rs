//! Building stapr for aarch64 on this x86-64 machine: the Rust target, Debian's cross
//! linker, and qemu-user to run the aarch64 build's unit tests here (they check, among
//! other things, every program, map and global name against the aarch64 eBPF objects).

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{self, output, status, TestTotals};

pub const TARGET: &str = "aarch64-unknown-linux-gnu";
/// Debian packages: the cross linker (with arm64 libc) and the user-mode emulator.
const PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user",
];

/// Installs what cross-building and running the aarch64 unit tests need.
pub fn setup() -> Result<()> {
    let installed = output("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == TARGET) {
        eprintln!("xtask: installing the Rust target {TARGET}");
        status(Command::new("rustup").args(["target", "add", TARGET]))
            .with_context(|| format!("`rustup target add {TARGET}` failed"))?;
    }
    crate::setup::packages(PACKAGES)?;
    // For the cargo processes started from here on; cargo reads them for this target only.
    std::env::set_var(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
        "aarch64-linux-gnu-gcc",
    );
    std::env::set_var(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
        "qemu-aarch64 -L /usr/aarch64-linux-gnu",
    );
    // Linked statically: the arm64 VM's initramfs then needs no arm64 libraries.
    std::env::set_var(
        "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static",
    );
    Ok(())
}

/// `target/aarch64-unknown-linux-gnu/release/stapr`.
pub fn build() -> Result<()> {
    setup()?;
    util::cargo(&["build", "--release", "--target", TARGET, "-p", "stapr"])?;
    println!(
        "xtask: built {}",
        util::workspace_root()
            .join("target")
            .join(TARGET)
            .join("release/stapr")
            .display()
    );
    Ok(())
}

/// Builds stapr's unit tests for aarch64 (and sets up what running them needs).
pub fn build_unit_tests() -> Result<()> {
    setup()?;
    util::cargo(&["test", "--target", TARGET, "-p", "stapr", "--no-run"])
}

/// stapr's unit tests for aarch64, run under qemu-user: after [`build_unit_tests`],
/// whose setup (the environment cargo reads) must come before any other thread starts.
pub fn run_unit_tests() -> Result<TestTotals> {
    util::cargo_test(&["test", "--target", TARGET, "-p", "stapr"])
}
