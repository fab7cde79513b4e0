//! Idempotent setup: each step checks first and does nothing when its piece is there,
//! so a second run costs well under two seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::util::{is_root, output, status};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the host tests use (the workloads call these programs; the exporter is
/// scraped by a real Prometheus; disktop watches a real nginx send pages).
pub const TEST_PACKAGES: &[&str] = &["iproute2", "util-linux", "prometheus", "nginx"];

/// Everything building and testing need.
pub fn all() -> Result<()> {
    let t = Instant::now();
    toolchain()?;
    let wanted: Vec<&str> = TEST_PACKAGES
        .iter()
        .chain(crate::vm::PACKAGES)
        .copied()
        .collect();
    packages(&wanted)?;
    eprintln!("xtask: setup complete ({:.1} s)", t.elapsed().as_secs_f64());
    Ok(())
}

/// What building stapr needs: rust-src for the eBPF target, bpf-linker on this LLVM.
pub fn toolchain() -> Result<()> {
    let sysroot = PathBuf::from(
        output("rustc", &["--print", "sysroot"])
            .context("rustc is not on PATH: install Rust with rustup first")?
            .trim(),
    );
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)
}

fn rust_src(sysroot: &Path) -> Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src (the eBPF target builds core from source)");
    status(Command::new("rustup").args(["component", "add", "rust-src"])).context(
        "`rustup component add rust-src` failed: check network access to the Rust dist server",
    )
}

/// The libLLVM shared object of this toolchain, e.g. `libLLVM.so.22.1-rust-1.95.0-stable`.
fn toolchain_llvm(sysroot: &Path) -> Result<String> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") || name.starts_with("libLLVM-") && name.contains(".so") {
            return Ok(name);
        }
    }
    bail!(
        "{} has no libLLVM shared library: this toolchain cannot host bpf-linker",
        lib.display()
    )
}

fn llvm_major() -> Result<String> {
    let vv = output("rustc", &["-vV"]).context("running rustc -vV")?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV does not say its LLVM version")?;
    Ok(version.split('.').next().unwrap_or(version).to_owned())
}

fn bpf_linker(sysroot: &Path) -> Result<()> {
    let so = toolchain_llvm(sysroot)?;
    // Installed, runs, and linked against this toolchain's LLVM: nothing to do.
    let works =
        output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    let linked_here =
        output("sh", &["-c", "ldd \"$(command -v bpf-linker)\""]).is_some_and(|ldd| {
            ldd.lines()
                .any(|l| l.contains(&so) && !l.contains("not found"))
        });
    if works && linked_here {
        return Ok(());
    }

    // bpf-linker's build looks for LLVM_PREFIX/lib/libLLVM.so; rustup ships the library
    // under a versioned name only, so give it a prefix of symlinks.
    let prefix = crate::util::cache_dir().join("llvm-prefix");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for link in ["libLLVM.so", so.as_str()] {
        let path = lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&so), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }
    let feature = format!("llvm-{}", llvm_major()?);
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against this toolchain's LLVM ({feature}); about 2 minutes"
    );
    status(
        Command::new("cargo")
            .args(["install", "--force"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features", &feature])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("installing bpf-linker failed: check network access to crates.io")?;
    if output("bpf-linker", &["--version"]).is_none() {
        bail!("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn missing_packages(wanted: &[&str]) -> Vec<String> {
    wanted
        .iter()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${db:Status-Status}", p])
                .is_none_or(|s| s.trim() != "installed")
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs the Debian packages that are missing, with apt-get.
pub fn packages(wanted: &[&str]) -> Result<()> {
    let missing = missing_packages(wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing Debian packages: run `sudo apt-get install -y {list}`, then this command again");
    }
    eprintln!("xtask: installing Debian packages: {list}");
    let apt = |args: &[&str]| {
        status(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])
        .context("`apt-get update` failed: check network access to Debian's archive")?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().map(String::as_str));
    apt(&install).with_context(|| format!("`apt-get install {list}` failed"))
}
