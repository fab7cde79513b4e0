//! Compiles the eBPF objects in `probes-ebpf` and leaves them in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! The objects are built with the toolchain that builds this crate (bpf-linker is linked
//! against that toolchain's LLVM by `cargo xtask setup`); RUSTC_BOOTSTRAP lets a stable
//! toolchain use `-Z build-std=core` for the bpfel target. The nested build's output is
//! shown only when it fails, so a normal build log stays quiet.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

const TARGET: &str = "bpfel-unknown-none";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let ebpf_dir = manifest_dir.join("../probes-ebpf");
    for dir in ["../probes-ebpf", "../probes-common"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(dir).display()
        );
    }
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let target_dir = out_dir.join("ebpf-target");

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "build",
        "--package",
        "probes-ebpf",
    ])
    .args(["--bins", "--release", "--target", TARGET])
    .args(["-Z", "build-std=core", "--target-dir"])
    .arg(&target_dir)
    .current_dir(&ebpf_dir)
    .env("RUSTC_BOOTSTRAP", "1")
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".into(),
            "-Clink-arg=--btf".into(),
        ]
        .join("\x1f"),
    )
    // The outer build's compiler settings are for the host, not for bpfel.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS");
    let out = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup installed?)"))?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        bail!(
            "building the eBPF objects failed ({}); `cargo xtask setup` installs bpf-linker and rust-src",
            out.status
        );
    }
    copy_objects(&target_dir.join(TARGET).join("release"), &out_dir)
}

/// Copies the linked objects (files without an extension: the `[[bin]]`s) to `out`.
fn copy_objects(release: &Path, out: &Path) -> Result<()> {
    let mut copied = 0;
    for entry in std::fs::read_dir(release).with_context(|| format!("{}", release.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if path.is_file() && !name.contains('.') {
            std::fs::copy(&path, out.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
            copied += 1;
        }
    }
    if copied == 0 {
        bail!("the eBPF build left no objects in {}", release.display());
    }
    Ok(())
}
