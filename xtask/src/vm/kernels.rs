//! Debian's kernel packages: the newest of a line resolved in the archive, downloaded once
//! and unpacked (modules decompressed, indexed with depmod) under ~/.cache/stapr/kernels.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::Line;
use crate::util::{output, status};

fn cache_dir() -> PathBuf {
    crate::util::cache_dir().join("kernels")
}

/// The newest `linux-image-<prefix>*-amd64-unsigned` in the archive.
pub fn resolve(line: &Line) -> Result<String> {
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
pub struct Kernel {
    pub package: String,
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

pub fn fetch(package: &str) -> Result<Kernel> {
    let dir = cache_dir().join(package);
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
