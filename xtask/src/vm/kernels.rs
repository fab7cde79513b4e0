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

/// Debian suites beyond the machine's own, reached through a private apt configuration:
/// its own sources list, package lists and cache under ~/.cache/stapr/apt. The machine's
/// sources are never changed, and nothing from these suites is installed: kernel
/// packages are only downloaded and unpacked.
const EXTRA_SUITES: &[&str] = &["bullseye", "trixie-backports", "sid"];

/// The `-o` options that point apt at the private configuration, or none for the
/// machine's own suites.
fn apt_options(suite: Option<&str>) -> Result<Vec<String>> {
    let Some(suite) = suite else {
        return Ok(Vec::new());
    };
    anyhow::ensure!(
        EXTRA_SUITES.contains(&suite),
        "suite {suite} is not among {EXTRA_SUITES:?}"
    );
    let dir = crate::util::cache_dir().join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    // The mirror the machine itself uses.
    let uri = machine_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".into());
    let sources: String = EXTRA_SUITES
        .iter()
        .map(|s| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {s} main\n"
            )
        })
        .collect();
    let list = dir.join("sources.list");
    if std::fs::read_to_string(&list).ok().as_deref() != Some(sources.as_str()) {
        std::fs::write(&list, &sources)?;
    }
    let path = |p: &str| dir.join(p).display().to_string();
    Ok(vec![
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/dev/null".into(),
        format!("Dir::State::Lists={}", path("lists")),
        format!("Dir::Cache={}", path("cache")),
        // The cache belongs to whoever runs the harness; apt's sandbox user cannot write it.
        "APT::Sandbox::User=root".into(),
    ])
}

/// The first `URIs:` of the machine's own Debian sources (deb822 or one-line format).
fn machine_mirror() -> Option<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for l in text.lines().map(str::trim) {
            let uri = l
                .strip_prefix("URIs:")
                .and_then(|u| u.split_whitespace().next())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
                });
            if let Some(u) = uri.filter(|u| u.ends_with("/debian")) {
                return Some(u.to_owned());
            }
        }
    }
    None
}

/// An apt program (`apt-get`, `apt-cache`) with the options for `suite`.
fn apt(program: &str, suite: Option<&str>) -> Result<Command> {
    let mut cmd = Command::new(program);
    for o in apt_options(suite)? {
        cmd.args(["-o", &o]);
    }
    Ok(cmd)
}

fn apt_output(program: &str, suite: Option<&str>, args: &[&str]) -> Result<String> {
    let out = apt(program, suite)?.args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Refreshes the package lists of `suite` (the private ones at most once a day).
fn update(suite: Option<&str>) -> Result<()> {
    if suite.is_some() {
        let stamp = crate::util::cache_dir().join("apt/updated");
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e.as_secs() < 86_400));
        if fresh {
            return Ok(());
        }
        status(apt("apt-get", suite)?.args(["update", "-q"]))?;
        std::fs::write(stamp, "")?;
        return Ok(());
    }
    status(Command::new("apt-get").args(["update", "-q"]))
}

/// The newest kernel image of the line in the archive, without the realtime and cloud
/// flavours.
pub fn resolve(line: &Line) -> Result<String> {
    enable_arch(line.arch)?;
    let pattern = line.pattern.replace("@ARCH@", line.arch.deb());
    let search = || -> Result<Vec<String>> {
        let out = apt_output(
            "apt-cache",
            line.suite,
            &["search", "--names-only", &pattern],
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| !n.contains("-rt-") && !n.contains("-cloud-") && !n.ends_with("-dbg"))
            .map(str::to_owned)
            .collect())
    };
    let mut names = search()?;
    if names.is_empty() {
        // The package lists may be missing or stale on a fresh machine.
        update(line.suite)?;
        names = search()?;
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
    /// `boot/vmlinuz-<release>`, or the module directory's `vmlinuz` in the split
    /// packages.
    pub fn vmlinuz(&self) -> PathBuf {
        let classic = self
            .root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release));
        if classic.exists() {
            classic
        } else {
            self.modules().join("vmlinuz")
        }
    }

    pub fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// Downloads a package of `arch` from `suite` and unpacks it under `dir/root`, with the
/// packages newer kernels split it into: the image package then only depends on
/// `linux-binary-*` (the vmlinuz), `linux-modules-*` and `linux-base-*` (the module
/// indexes: which modules are built in).
fn unpack(package: &str, arch: Arch, suite: Option<&str>, dir: &Path) -> Result<()> {
    eprintln!("xtask vm: fetching {package} ({})", arch.deb());
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let shown = apt_output(
        "apt-cache",
        suite,
        &["show", "--no-all-versions", &spec(package, arch)],
    )?;
    let mut packages = vec![spec(package, arch)];
    for dep in shown
        .lines()
        .filter_map(|l| l.strip_prefix("Depends:"))
        .flat_map(|d| d.split(','))
        .filter_map(|d| d.split_whitespace().next())
        .filter(|d| {
            ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| d.starts_with(p))
        })
    {
        packages.push(spec(dep, arch));
    }
    let mut download = apt("apt-get", suite)?;
    download
        .args(["download", "-q"])
        .args(&packages)
        .current_dir(dir);
    status(&mut download).with_context(|| format!("downloading {}", packages.join(" ")))?;
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    anyhow::ensure!(!debs.is_empty(), "apt-get download left no .deb");
    for deb in debs {
        status(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("root")),
        )?;
        std::fs::remove_file(&deb)?;
    }
    // Kernels under usr/ (merged /usr): the classic paths as links, for modprobe -d and
    // depmod -b.
    let root = dir.join("root");
    if root.join("usr/lib/modules").is_dir() && !root.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
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
        unpack("busybox-static", arch, None, &dir)?;
        std::fs::write(dir.join(".ready"), "")?;
    }
    Ok(exe)
}

pub fn fetch(package: &str, line: &Line) -> Result<Kernel> {
    let arch = line.arch;
    let dir = cache_dir().join(package);
    let ready = dir.join(".ready");
    if !ready.exists() {
        unpack(package, arch, line.suite, &dir)?;
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
