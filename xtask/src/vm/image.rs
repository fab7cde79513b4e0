//! What a test boot carries: the ext4 image with the test binaries in their target/debug
//! layout, and a busybox initramfs with the modules, the libraries and an init that runs
//! the tests and prints their results on the console.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use super::{
    console::{DONE, METHOD, RESULT},
    kernels::{self, Kernel},
    Arch, Inject, INJECTED_TEST,
};
use crate::util::{output, status, workspace_root};

/// Modules the init loads, in order (dependencies first); those built into a kernel are
/// left out for it.
const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "crc16",
    "crc32c_generic",
    "mbcache",
    "jbd2",
    "ext4",
    // The NFS client (fscache is part of netfs from 6.12 on). The RPCSEC_GSS modules are
    // loaded although the mounts use sec=sys: the client asks for them at every mount,
    // and a modprobe starting while a test attaches fexit once hung 6.1 under TCG.
    "sunrpc",
    "auth_rpcgss",
    "rpcsec_gss_krb5",
    "grace",
    "lockd",
    "fscache",
    "netfs",
    "dns_resolver",
    "nfs",
    "nfsv4",
    // 9p over virtio: QEMU's host share (qemu.rs).
    "9pnet",
    "9pnet_virtio",
    "9p",
    // The SMB client (cifs), for the host's Samba (servers.rs), and what SMB3 signing and
    // encryption ask of the crypto API at every mount (generic implementations).
    "nls_utf8",
    "cmac",
    "ctr",
    "crypto_null",
    "ccm",
    "gf128mul",
    "ghash_generic",
    "gcm",
    "sha512_generic",
    "cifs_arc4",
    "cifs_md4",
    "nls_ucs2_utils",
    "cifs",
];

/// Integration test binaries run inside, and the tests the VM cannot run.
const TEST_BINARIES: &[&str] = &[
    "cli",
    "doctor",
    "nettop",
    "slowopen",
    "disktop",
    "export",
    "calltree",
    "robustness",
    "containers",
    "safety",
];
/// Host programs the tests run inside too, copied into the initramfs with their libraries
/// (x86-64 only: they are this machine's binaries).
const HOST_PROGRAMS: &[&str] = &["/usr/bin/setpriv"];
/// Tests that need programs the initramfs does not carry: (binary, test, why).
pub const SKIPPED: &[(&str, &str, &str)] = &[
    (
        "nettop",
        "veth_device_names_and_counts",
        "needs iproute2's netns",
    ),
    (
        "nettop",
        "veth_receiver_in_another_namespace_is_charged_on_its_device",
        "needs iproute2's netns",
    ),
    (
        "export",
        "prometheus_scrapes_the_exporter",
        "needs the prometheus server",
    ),
    (
        "disktop",
        "nginx_pages_sent_with_sendfile_are_read_from_disk",
        "needs the nginx server",
    ),
    (
        "nettop",
        "nginx_worker_is_charged_for_the_pages_it_sends",
        "needs the nginx server",
    ),
];
/// As [`SKIPPED`], on arm64 only.
pub const SKIPPED_ARM64: &[(&str, &str, &str)] = &[(
    "robustness",
    "only_bpf_capabilities_run_the_reports_or_name_what_is_missing",
    "needs an arm64 setpriv",
)];

/// The tests a boot of `arch` leaves out.
pub fn skipped(
    arch: Arch,
) -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
    let extra: &[_] = if arch == Arch::Aarch64 {
        SKIPPED_ARM64
    } else {
        &[]
    };
    SKIPPED.iter().chain(extra)
}

/// Builds the test binaries for `arch` and returns (name, path) for each in
/// TEST_BINARIES.
pub fn test_binaries(arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target: Vec<&str> = match arch.rust_target() {
        Some(t) => {
            crate::cross::setup()?;
            vec!["--target", t]
        }
        None => Vec::new(),
    };
    let mut build = vec!["build", "-p", "stapr", "-p", "stapr-examples"];
    build.extend(&target);
    crate::util::cargo(&build)?;
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "integration-tests",
            "--no-run",
            "--message-format=json",
        ])
        .args(&target)
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
    // A copy of what the guests run, taken now: builds that run later (the host's tests
    // while the guests boot) may put other builds of stapr in cargo's directory.
    let snapshot = snapshot_dir(arch);
    let _ = std::fs::remove_dir_all(&snapshot);
    std::fs::create_dir_all(snapshot.join("deps"))?;
    let bins = arch.debug_dir();
    for b in BINARIES {
        std::fs::copy(bins.join(b), snapshot.join(b)).with_context(|| format!("copying {b}"))?;
    }
    for (name, exe) in &mut found {
        let copy = snapshot.join("deps").join(&*name);
        std::fs::copy(&*exe, &copy).with_context(|| format!("copying {name}"))?;
        *exe = copy;
    }
    Ok(found)
}

/// stapr and the example workloads, staged in every guest beside the test binaries.
const BINARIES: &[&str] = &[
    "stapr",
    "udp_talker",
    "net_peer",
    "file_holder",
    "disk_writer",
    "call_chain",
    "call_trees",
    "args_echo",
    "many_procs",
    "tcp_relay",
    "hostile",
];

/// Where [`test_binaries`] copies what the guests of `arch` run.
fn snapshot_dir(arch: Arch) -> PathBuf {
    workspace_root()
        .join("target/vm")
        .join(format!("bins-{}", arch.deb()))
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
pub fn build_image(work: &Path, tests: &[(String, PathBuf)], arch: Arch) -> Result<PathBuf> {
    let stage = work.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    let debug = stage.join("target/debug");
    std::fs::create_dir_all(debug.join("deps"))?;
    let bins = snapshot_dir(arch);
    for b in BINARIES {
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
# The unified cgroup hierarchy where Debian 12 mounts it.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /bin/busybox /sbin/modprobe
# Modules the kernel asks for at run time (request_module) show on the console.
printf '#!/bin/busybox sh\necho "<3>stapr-vm: the kernel requested module $*" > /dev/kmsg\nexec /bin/busybox modprobe "$@"\n' > /sbin/request-module
chmod +x /sbin/request-module
ulimit -l unlimited
# As systemd sets it on Debian: with the kernel's default of 32768 the robustness tests'
# 10,000 processes each reuse the PIDs of earlier ones, and two processes of one PID in
# an interval are one row.
echo 4194304 > /proc/sys/kernel/pid_max
# Tests that know what each kernel allows (doctor's) tell the VMs from the host by this.
export STAPR_VM=1
for m in @MODULES@; do modprobe $m || echo "STAPR-VM-ERROR modprobe $m"; done
echo /sbin/request-module > /proc/sys/kernel/modprobe
sleep 1
mount -t ext4 /dev/vda /stapr || echo "STAPR-VM-ERROR mount ext4"
ip link set lo up
# The NIC on QEMU's user network (see qemu.rs): its usual static address.
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up || echo "STAPR-VM-ERROR eth0"
export STAPR_NIC STAPR_NIC_TCP STAPR_NFS STAPR_SMB
echo "STAPR-VM-BOOTED $(uname -r)"
cd /stapr/target/debug
method() {
  ./stapr "$@" >/dev/null 2>/tmp/method
  echo "@METHOD@ $1: $(grep -v '^$' /tmp/method | tail -n 1)"
  # A refused program's verifier log, for the console log.
  for f in /tmp/stapr-verifier-*.log; do [ -f "$f" ] && tail -n 40 "$f" && rm -f "$f"; done
}
@METHODS@
# A report with many classic tracepoints detaches them in a background process after it
# exits, and each detach patches kernel text; QEMU's TCG has been seen to oops on a patch
# site that another vCPU was running (int3 in syscall_trace_enter): let those finish
# before the tests start.
while pidof stapr >/dev/null; do sleep 0.2; done
@RUN_TESTS@
# Programs the verifier refused during the tests, for the console log.
for f in /tmp/stapr-verifier-*.log; do [ -f "$f" ] && echo "== $f" && tail -n 60 "$f"; done
sync
echo "@DONE@"
poweroff -f
"#;

pub fn build_initramfs(
    work: &Path,
    kernel: &Kernel,
    line: &super::Line,
    tests: &[(String, PathBuf)],
    filter: &[String],
    inject: Inject,
) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy(kernels::busybox(kernel.arch)?, root.join("bin/busybox"))
        .context("busybox-static is not installed")?;
    // glibc and friends for the dynamically linked binaries on the image (the arm64 ones
    // are linked statically).
    let mut libs = BTreeSet::new();
    if kernel.arch == Arch::X86_64 {
        let debug = workspace_root().join("target/debug");
        for exe in tests
            .iter()
            .map(|(_, p)| p.clone())
            .chain([debug.join("stapr"), debug.join("udp_talker")])
            .chain(HOST_PROGRAMS.iter().map(PathBuf::from))
        {
            libs.extend(libraries(&exe)?);
        }
        libs.extend(HOST_PROGRAMS.iter().map(PathBuf::from));
    }
    for file in &libs {
        copy_into(&root, file)?;
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
    let absent = line.absent;
    for m in MODULES.iter().chain(line.extra) {
        let found = output(
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
        );
        // A kernel line lists the modules it lacks; the list is kept exact both ways.
        let path = match (found, absent.contains(m)) {
            (None, true) => continue,
            (Some(_), true) => bail!(
                "module {m} is in {} although its kernel line lists it as absent",
                kernel.package
            ),
            (other, false) => {
                other.with_context(|| format!("module {m} not in {}", kernel.package))?
            }
        };
        if path.trim() == "(builtin)" {
            continue;
        }
        load.push(*m);
        // The module and whatever it depends on in this kernel (modprobe loads those
        // first): dependencies change between kernels (cifs needs libdes on 5.10).
        let deps = output(
            "modprobe",
            &[
                "-d",
                kernel.root.to_str().context("path")?,
                "-S",
                &kernel.release,
                "--show-depends",
                m,
            ],
        )
        .with_context(|| format!("modprobe --show-depends {m} in {}", kernel.package))?;
        for file in deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("insmod "))
        {
            let path = PathBuf::from(file.trim());
            let rel = path
                .strip_prefix(&kernel.root)
                .context("module outside the tree")?;
            let target = root.join(rel);
            std::fs::create_dir_all(target.parent().context("parent")?)?;
            std::fs::copy(&path, &target)?;
        }
    }
    let mut run_tests = String::new();
    // The method lines need only a moment; skip them when only the harness is tested.
    let methods = inject == Inject::Nothing;
    for (t, _) in tests {
        let skips: Vec<String> = skipped(kernel.arch)
            .filter(|(b, _, _)| b == t)
            .map(|(_, test, _)| format!("--skip {test}"))
            .collect();
        run_tests.push_str(&format!(
            "t0=$(date +%s)\nRUSTC_BOOTSTRAP=1 ./deps/{t} --test-threads=1 --include-ignored \
             -Z unstable-options --report-time {} {} 2>&1\n\
             echo \"{RESULT} {t} $? $(( $(date +%s) - t0 ))\"\n",
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
        Inject::Script(script) => run_tests = script.to_owned(),
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
