//! Debian's kernel packages: the newest of a line resolved in the archive, downloaded once
//! and unpacked (modules decompressed, indexed with depmod) under ~/.cache/stapr/kernels.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{Arch, Line};
use crate::util::{output, status};

fn cache_dir() -> PathBuf {
    crate::util::cache_dir().join("kernels")
}

/// Makes Debian's packages of `arch` reachable through apt (`dpkg --add-architecture`),
/// once.
pub fn enable_arch(arch: Arch) -> Result<()> {
    if arch == Arch::X86_64 {
        return Ok(());
    }
    let foreign = output("dpkg", &["--print-foreign-architectures"]).unwrap_or_default();
    if foreign.lines().any(|a| a.trim() == arch.deb()) {
        return Ok(());
    }
    eprintln!("xtask vm: adding the {} architecture to apt", arch.deb());
    status(Command::new("dpkg").args(["--add-architecture", arch.deb()]))?;
    status(Command::new("apt-get").args(["update", "-q"]))
}

/// `apt-get download`'s name for a package of `arch`.
fn spec(package: &str, arch: Arch) -> String {
    match arch {
        Arch::X86_64 => package.to_owned(),
        _ => format!("{package}:{}", arch.deb()),
    }
}

/// The newest `linux-image-<prefix>*-<arch>-unsigned` in the archive.
pub fn resolve(line: &Line) -> Result<String> {
    enable_arch(line.arch)?;
    let pattern = format!(
        "^linux-image-{}.*-{}-unsigned$",
        line.prefix.replace('.', "\\."),
        line.arch.deb()
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
pub struct Kernel {
    pub package: String,
    pub arch: Arch,
    pub root: PathBuf,
    pub release: String,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads a package of `arch` and unpacks it under `dir/root`.
fn unpack(package: &str, arch: Arch, dir: &Path) -> Result<()> {
    eprintln!("xtask vm: fetching {package} ({})", arch.deb());
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    status(
        Command::new("apt-get")
            .args(["download", "-q", &spec(package, arch)])
            .current_dir(dir),
    )
    .with_context(|| format!("downloading {package}"))?;
    let deb = std::fs::read_dir(dir)?
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
    Ok(())
}

/// A static busybox for `arch`: the host's own, or Debian's busybox-static of that
/// architecture, unpacked once.
pub fn busybox(arch: Arch) -> Result<PathBuf> {
    if arch == Arch::X86_64 {
        return Ok(PathBuf::from("/bin/busybox"));
    }
    enable_arch(arch)?;
    let dir = cache_dir().join(format!("busybox-static-{}", arch.deb()));
    let exe = dir.join("root/bin/busybox");
    if !dir.join(".ready").exists() {
        unpack("busybox-static", arch, &dir)?;
        std::fs::write(dir.join(".ready"), "")?;
    }
    Ok(exe)
}

pub fn fetch(package: &str, arch: Arch) -> Result<Kernel> {
    let dir = cache_dir().join(package);
    let ready = dir.join(".ready");
    if !ready.exists() {
        unpack(package, arch, &dir)?;
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
        arch,
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
