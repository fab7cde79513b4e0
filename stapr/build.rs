//! Compiles the eBPF objects in `probes-ebpf` and leaves them in OUT_DIR for
//! `include_bytes_aligned!`.
//!
//! The objects are built with the toolchain that builds this crate (bpf-linker is linked
//! against that toolchain's LLVM by `cargo xtask setup`); RUSTC_BOOTSTRAP lets a stable
//! toolchain use `-Z build-std=core` for the bpfel target.
use std::path::PathBuf;

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root_dir = manifest_dir.join("../probes-ebpf");
    let root_dir = root_dir.to_str().expect("UTF-8 path").to_owned();
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "probes-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
