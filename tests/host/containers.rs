//! `--containers`, `--cgroup`, the JSON `cgroup`/`container` fields and `export --by
//! container`, against real cgroups: each test makes cgroups under the cgroup2 mount, one
//! named like a docker scope and one like a systemd service, and starts workloads inside
//! them (the workload's shell writes its pid to `cgroup.procs`, then execs it).

use std::{path::PathBuf, process::Command, time::Duration};

use integration_tests::{
    assert_nothing_attached, bin, bin_dir, exporter_address, field, http_get, kernel_lock, run,
    Outcome, Running,
};

/// The cgroup2 mount point, from /proc/self/mountinfo.
fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("no cgroup2 mount: the test machine must have one")
}

/// A cgroup made for a test (and the parents it had to make), removed on drop.
struct TestCgroup {
    /// Path below the cgroup2 root, with a leading `/`.
    rel: String,
    made: Vec<PathBuf>,
}

impl TestCgroup {
    fn new(rel: &str) -> TestCgroup {
        let root = cgroup2_root();
        let mut made = Vec::new();
        let mut dir = root.clone();
        for part in rel.split('/') {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        TestCgroup {
            rel: format!("/{rel}"),
            made,
        }
    }

    /// `system.slice/docker-<id>.scope`, the id being `seed` repeated to 64 hex digits.
    fn docker(seed: &str) -> (TestCgroup, String) {
        let id = seed.repeat(64 / seed.len());
        assert_eq!(id.len(), 64);
        (
            TestCgroup::new(&format!("system.slice/docker-{id}.scope")),
            id,
        )
    }

    fn dir(&self) -> PathBuf {
        cgroup2_root().join(self.rel.trim_start_matches('/'))
    }

    /// Runs `program args` inside this cgroup, to its end.
    fn run(&self, program: &str, args: &[&str]) -> Outcome {
        let procs = self.dir().join("cgroup.procs");
        let script = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display());
        run(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(bin(program))
                .args(args),
            Duration::from_secs(60),
        )
    }

    fn remove(&mut self) {
        for d in self.made.drain(..).rev() {
            // A cgroup empties a moment after its last process is reaped.
            integration_tests::wait_for(Duration::from_secs(60), || {
                (std::fs::remove_dir(&d).is_ok() || !d.exists()).then_some(())
            });
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The `pid=` (or `tid=`) an example printed.
fn id_of(out: &Outcome, key: &str) -> u64 {
    assert!(out.status.success(), "{out:?}");
    field(&out.stdout, key).parse().unwrap()
}

fn pid_of(out: &Outcome) -> u64 {
    id_of(out, "pid")
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Asserts that every JSON row or event in `rows` names `cgroup` and `container`.
fn assert_named<'a>(
    rows: impl IntoIterator<Item = &'a serde_json::Value>,
    cgroup: &str,
    container: &str,
) {
    for r in rows {
        assert_eq!(r["cgroup"], cgroup, "{r}");
        assert_eq!(r["container"], container, "{r}");
    }
}

/// Rows of a text report whose whitespace-separated column `pid_col` is `pid`.
fn text_rows(stdout: &str, pid_col: usize, pid: u64) -> Vec<Vec<&str>> {
    let pid = pid.to_string();
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|c| c.get(pid_col) == Some(&pid.as_str()))
        .collect()
}

fn finish(r: Running) -> Outcome {
    let out = r.finish(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    out
}

/// Ctrl-C once the workload has exited: what it did is already counted in the kernel,
/// and a stop prints the interval in progress.
fn interrupt(r: Running) -> Outcome {
    r.signal(libc::SIGINT);
    finish(r)
}

#[test]
fn nettop_names_containers_and_filters_by_container_id() {
    let _k = kernel_lock();
    let (docker, id) = TestCgroup::docker("5ca1ab1e");
    let web = TestCgroup::new("web.slice/httpd.service");
    let mut text = Running::spawn(&["nettop", "-i", "1", "--containers"]);
    text.wait_ready(Duration::from_secs(300));
    let mut json = Running::spawn(&[
        "nettop",
        "-i",
        "1",
        "--format",
        "json",
        "--cgroup",
        &id[..8],
    ]);
    json.wait_ready(Duration::from_secs(300));
    let talk = ["--count", "300", "--size", "400"];
    let inside = pid_of(&docker.run("udp_talker", &talk));
    let twin = pid_of(&web.run("udp_talker", &talk));
    // SIGINT prints the interval in progress.
    let text = interrupt(text).stdout;
    let json = interrupt(json).stdout;

    assert!(
        text.contains("XMIT_KB RECV_KB CONTAINER    COMMAND"),
        "{text}"
    );
    // PID UID DEV XMIT_PK RECV_PK XMIT_KB RECV_KB CONTAINER COMMAND
    for (pid, container) in [(&inside, &id[..12]), (&twin, "httpd.service")] {
        let rows = text_rows(&text, 0, *pid);
        assert!(!rows.is_empty(), "no row for {pid}:\n{text}");
        for r in rows {
            assert_eq!((r[7], r[8]), (container, "udp_talker"), "{text}");
        }
    }
    let rows = json_lines(&json);
    let mine: Vec<_> = rows.iter().filter(|r| r["pid"] == inside).collect();
    let sent: u64 = mine
        .iter()
        .map(|r| r["xmit_packets"].as_u64().unwrap())
        .sum();
    assert!(sent >= 300, "{json}");
    assert_named(mine, &docker.rel, &id[..12]);
    assert!(
        rows.iter().all(|r| r["cgroup"] == docker.rel.as_str()),
        "--cgroup let other cgroups through:\n{json}"
    );
    assert!(!rows.iter().any(|r| r["pid"] == twin), "{json}");
    assert_nothing_attached();
}

#[test]
fn disktop_names_containers_and_filters_by_path() {
    let _k = kernel_lock();
    let (docker, id) = TestCgroup::docker("d15c");
    let web = TestCgroup::new("web.slice/httpd.service");
    let dir = bin_dir().join("containers-test-files");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.dat"), dir.join("b.dat"));
    let mut text = Running::spawn(&["disktop", "-i", "1", "-r", "50", "--containers"]);
    text.wait_ready(Duration::from_secs(300));
    // A parent cgroup: everything below web.slice is kept.
    let mut json = Running::spawn(&[
        "disktop",
        "-i",
        "1",
        "-r",
        "50",
        "--format",
        "json",
        "--cgroup",
        "web.slice",
    ]);
    json.wait_ready(Duration::from_secs(300));
    let outside = pid_of(&docker.run("disk_writer", &["file", "2", a.to_str().unwrap()]));
    let inside = pid_of(&web.run("disk_writer", &["file", "2", b.to_str().unwrap()]));
    let text = interrupt(text).stdout;
    let json = interrupt(json).stdout;
    let _ = std::fs::remove_dir_all(&dir);

    // UID PID PPID CONTAINER CMD DEVICE T BYTES
    for (pid, container) in [(&outside, &id[..12]), (&inside, "httpd.service")] {
        // The shell reads its start-up files before it moves into the cgroup.
        let rows: Vec<_> = text_rows(&text, 1, *pid)
            .into_iter()
            .filter(|r| r[4] != "sh")
            .collect();
        let written: u64 = rows
            .iter()
            .filter(|r| r[6] == "W")
            .map(|r| r[7].parse::<u64>().unwrap())
            .sum();
        assert!(written >= 2 << 20, "pid {pid} wrote {written}:\n{text}");
        for r in rows {
            assert_eq!((r[3], r[4]), (container, "disk_writer"), "{text}");
        }
    }
    let rows = json_lines(&json);
    let mine: Vec<_> = rows.iter().filter(|r| r["pid"] == inside).collect();
    assert!(!mine.is_empty(), "{json}");
    assert_named(mine, &web.rel, "httpd.service");
    assert!(
        rows.iter()
            .all(|r| r["cgroup"].as_str().unwrap_or("").starts_with("/web.slice")),
        "--cgroup web.slice let other cgroups through:\n{json}"
    );
    assert!(!rows.iter().any(|r| r["pid"] == outside), "{json}");
    assert_nothing_attached();
}

#[test]
fn slowopen_names_containers_and_filters() {
    let _k = kernel_lock();
    let (docker, id) = TestCgroup::docker("0badcafe");
    let web = TestCgroup::new("web.slice/httpd.service");
    let dir = bin_dir().join("containers-test-held");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("held");
    std::fs::write(&path, b"x").unwrap();
    let p = path.to_str().unwrap();
    let mut text = Running::spawn(&["slowopen", "--min", "500ms", "--containers"]);
    text.wait_ready(Duration::from_secs(300));
    let mut json = Running::spawn(&[
        "slowopen", "--min", "500ms", "--format", "json", "--cgroup", &web.rel,
    ]);
    json.wait_ready(Duration::from_secs(300));
    let outside = pid_of(&docker.run("file_holder", &["close", "0.7", p]));
    let inside = pid_of(&web.run("file_holder", &["close", "0.7", p]));
    let text = interrupt(text).stdout;
    let json = interrupt(json).stdout;
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        text.starts_with("   CONTAINER    Process Open time(s)"),
        "{text}"
    );
    for container in [&id[..12], "httpd.service"] {
        let line = format!("{container:>12} {:>10} ", "file_holder");
        assert!(
            text.lines().any(|l| l.starts_with(&line) && l.ends_with(p)),
            "no {line:?}...{p}:\n{text}"
        );
    }
    let rows = json_lines(&json);
    let mine: Vec<_> = rows.iter().filter(|r| r["file"] == p).collect();
    assert_eq!(mine.len(), 1, "{json}");
    assert_eq!(mine[0]["pid"], inside);
    assert_eq!(mine[0]["cgroup"], web.rel.as_str());
    assert_eq!(mine[0]["container"], "httpd.service");
    assert!(!rows.iter().any(|r| r["pid"] == outside), "{json}");
    assert_nothing_attached();
}

#[test]
fn calltree_names_containers_and_filters() {
    let _k = kernel_lock();
    let (docker, id) = TestCgroup::docker("ca11");
    let web = TestCgroup::new("web.slice/httpd.service");
    let chain = bin("call_chain");
    let chain = chain.to_str().unwrap();
    // Uprobes need bpf_get_attach_cookie (5.15): without it --binary is refused (the
    // calltree tests assert the line); the filter itself is the other reports' too.
    if !integration_tests::facility_works("bpf_get_attach_cookie") {
        integration_tests::assert_refused(
            &["calltree", "--binary", chain, "--cgroup", &id[..6]],
            &[],
            Duration::from_secs(60),
        );
        eprintln!("--binary refused here (no bpf_get_attach_cookie), as it must be");
        return;
    }
    let mut text = Running::spawn(&["calltree", "--binary", chain, "-f", "ct_*", "--containers"]);
    text.wait_ready(Duration::from_secs(300));
    let mut json = Running::spawn(&[
        "calltree",
        "--binary",
        chain,
        "-f",
        "ct_*",
        "--format",
        "json",
        "--cgroup",
        &id[..6],
    ]);
    json.wait_ready(Duration::from_secs(300));
    let inside = docker.run("call_chain", &[]);
    let outside = web.run("call_chain", &[]);
    let (inside, outside) = (id_of(&inside, "tid"), id_of(&outside, "tid"));
    // calltree's output stops at once on a stop: wait for the last lines asserted.
    let returned = |tid: u64| format!(" call_chain({tid}) ");
    text.wait_stdout(
        "both chains' ct_outer returns",
        Duration::from_secs(600),
        |o| {
            [inside, outside].iter().all(|&t| {
                o.lines()
                    .any(|l| l.contains(&returned(t)) && l.ends_with(": <- ct_outer"))
            })
        },
    );
    json.wait_stdout(
        "the container's ct_outer return",
        Duration::from_secs(600),
        |o| {
            o.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["func"] == "ct_outer" && v["event"] == "return" && v["tid"] == inside
                })
            })
        },
    );
    let text = interrupt(text).stdout;
    let json = interrupt(json).stdout;

    for (tid, container) in [(&inside, &id[..12]), (&outside, "httpd.service")] {
        let want = format!(" call_chain({tid}) {container}: -> ct_outer");
        assert!(
            text.lines().any(|l| l.ends_with(&want)),
            "no {want:?}:\n{text}"
        );
    }
    let events = json_lines(&json);
    assert!(events.iter().any(|e| e["tid"] == inside), "{json}");
    for e in &events {
        assert_eq!(e["tid"], inside, "--cgroup let {e} through");
    }
    assert_named(&events, &docker.rel, &id[..12]);
    assert_nothing_attached();
}

#[test]
fn export_labels_series_by_container() {
    let _k = kernel_lock();
    let (docker, id) = TestCgroup::docker("e4");
    let mut exporter = Running::spawn(&[
        "export",
        "--listen",
        "127.0.0.1:0",
        "--by",
        "comm,container",
    ]);
    let ready = exporter.wait_ready(Duration::from_secs(300));
    assert!(ready.contains("series by comm,container"), "{ready}");
    let addr = exporter_address(&ready);
    pid_of(&docker.run("udp_talker", &["--count", "100", "--size", "200"]));
    let body = http_get(&addr, "/metrics").body;
    interrupt(exporter);
    let want = format!(
        "stapr_net_packets_total{{comm=\"udp_talker\",uid=\"0\",container=\"{}\",dev=\"lo\",direction=\"transmit\"}} ",
        &id[..12]
    );
    let line = body
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no {want}...:\n{body}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 100, "{line}");
    assert!(
        !body.contains("pid=\""),
        "--by comm,container has no pid label:\n{body}"
    );
    assert_nothing_attached();
}

#[test]
fn a_removed_cgroup_keeps_its_last_name() {
    let _k = kernel_lock();
    let (mut docker, id) = TestCgroup::docker("dead");
    let mut json = Running::spawn(&["nettop", "-i", "1", "--format", "json"]);
    json.wait_ready(Duration::from_secs(300));
    let pid = pid_of(&docker.run("udp_talker", &["--count", "50", "--size", "100"]));
    docker.remove();
    assert!(!docker.dir().exists(), "the test cgroup is still there");
    // Reports after the removal still name it: at least the one the stop prints.
    let json = interrupt(json).stdout;
    let rows = json_lines(&json);
    let mine: Vec<_> = rows.iter().filter(|r| r["pid"] == pid).collect();
    assert!(!mine.is_empty(), "{json}");
    assert_named(mine, &docker.rel, &id[..12]);
    assert_nothing_attached();
}

/// One line on stderr, exit code 2, nothing on stdout.
fn refused(args: &[&str], says: &str) {
    integration_tests::assert_refused(args, &[says], Duration::from_secs(30));
}

#[test]
fn unknown_or_ambiguous_cgroups_are_refused() {
    let _k = kernel_lock();
    let (_a, _) = TestCgroup::docker("c0ffee00");
    let (_b, _) = TestCgroup::docker("c0ffee01");
    for report in [
        &["nettop"][..],
        &["disktop"],
        &["slowopen"],
        &["calltree", "--binary", "/bin/true"],
    ] {
        let mut args = report.to_vec();
        args.extend(["--cgroup", "/no/such/path"]);
        refused(&args, "no such cgroup");
        let mut args = report.to_vec();
        args.extend(["--cgroup", "c0ffee"]);
        refused(&args, "2 containers start with it");
    }
    refused(
        &["export", "--by", "pod"],
        "--by takes pid, comm, container",
    );
    assert_nothing_attached();
}

/// Where no cgroup2 is mounted, stapr mounts one in a mount namespace of its own.
#[test]
fn mounts_cgroup2_privately_when_none_is_mounted() {
    let _k = kernel_lock();
    let root = cgroup2_root();
    let script = format!(
        "umount {} && ! grep -q ' - cgroup2 ' /proc/self/mountinfo && exec \"$0\" nettop -i 1 --count 1 --containers",
        root.display()
    );
    let out = run(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .arg(bin("stapr")),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("CONTAINER    COMMAND"), "{out:?}");
    // The mount stapr made is its own: this namespace still has the one it had.
    assert_eq!(cgroup2_root(), root);
    assert_nothing_attached();
}
