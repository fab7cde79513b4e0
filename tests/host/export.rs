//! `stapr export` against the running kernel: real workloads, then the exposition text and
//! a real Prometheus server (Debian's `prometheus`, installed by the setup) scraping it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    assert_nothing_attached, bin_dir, example, exporter_address, field, http_get, kernel_lock, run,
    stapr, Running,
};
use serde_json::Value;

/// One sample line of the exposition format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses every line: comments must be HELP/TYPE, every other line a valid sample.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = BTreeMap::new();
                // Values stapr writes here hold no commas or quotes.
                for pair in body.split(',') {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.starts_with("stapr_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample named `name` whose labels include `want`, or None.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {want:?} matches {found:?}");
    found.first().map(|s| s.value)
}

fn start_exporter(extra: &[&str]) -> (Running, String) {
    let mut args = vec!["export", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut exporter = Running::spawn(&args);
    let ready = exporter.wait_ready(Duration::from_secs(300));
    let addr = exporter_address(&ready);
    (exporter, addr)
}

fn scrape(addr: &str) -> Vec<Sample> {
    let r = http_get(addr, "/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.head.contains("Content-Type: text/plain; version=0.0.4"),
        "{r:?}"
    );
    parse(&r.body)
}

fn stop(exporter: Running) {
    exporter.signal(libc::SIGTERM);
    let t = Instant::now();
    let out = exporter.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A stop that hangs never ends: the bound is far above a slow machine's exit.
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "SIGTERM took {:?}",
        t.elapsed()
    );
    assert_nothing_attached();
}

fn scratch(name: &str) -> PathBuf {
    // Next to the binaries: on a block device, here and in the VMs (tmpfs files are not
    // disktop's).
    let dir = bin_dir().join(format!("export-test-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn udp_talker(count: u32) -> String {
    let out = run(
        example("udp_talker").args(["--count", &count.to_string()]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    field(&out.stdout, "pid")
}

#[test]
fn serves_the_workloads_counters() {
    let _k = kernel_lock();
    let dir = scratch("counters");
    let (exporter, addr) = start_exporter(&[]);

    let talker = udp_talker(300);
    let data = dir.join("data");
    let w = run(
        example("disk_writer").args(["file", "4", data.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert!(w.status.success(), "{w:?}");
    let writer = field(w.stdout.lines().next().unwrap(), "pid");
    let held = dir.join("held");
    std::fs::write(&held, b"x").unwrap();
    let h = run(
        example("file_holder").args(["close", "1", held.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert!(h.status.success(), "{h:?}");
    // The closed file travels through the ring buffer: scrape until it is counted.
    let s = integration_tests::wait_until(
        "file_holder's held file in the exporter's histogram",
        Duration::from_secs(120),
        || {
            let s = scrape(&addr);
            let held = value(
                &s,
                "stapr_file_open_seconds_bucket",
                &[("comm", "file_holder"), ("le", "+Inf")],
            )
            .unwrap_or(0.0)
                - value(
                    &s,
                    "stapr_file_open_seconds_bucket",
                    &[("comm", "file_holder"), ("le", "1")],
                )
                .unwrap_or(0.0);
            (held >= 1.0).then_some(s)
        },
    );
    let net = |name: &str, dir: &str| {
        value(
            &s,
            name,
            &[
                ("pid", &talker),
                ("comm", "udp_talker"),
                ("dev", "lo"),
                ("direction", dir),
            ],
        )
        .unwrap_or_else(|| panic!("no {name} {dir} for udp_talker {talker}"))
    };
    assert!(net("stapr_net_packets_total", "transmit") >= 300.0);
    assert!(net("stapr_net_bytes_total", "transmit") >= 300_000.0);
    let disk = |dir: &str| {
        value(
            &s,
            "stapr_disk_bytes_total",
            &[
                ("pid", &writer),
                ("comm", "disk_writer"),
                ("direction", dir),
            ],
        )
        .unwrap_or_else(|| panic!("no disk {dir} for disk_writer {writer}"))
    };
    assert!(disk("write") >= (4 << 20) as f64);
    assert!(disk("read") >= (4 << 20) as f64);
    let bucket = |le: &str| {
        value(
            &s,
            "stapr_file_open_seconds_bucket",
            &[("comm", "file_holder"), ("le", le)],
        )
        .unwrap_or_else(|| panic!("no file_holder bucket le={le}"))
    };
    // The file was held 1 s: in the (1, 5] bucket, the only one file_holder held that
    // long (its loader's opens of shared libraries may pass --file-min's 10 ms in an
    // emulated VM, so the lower buckets are not necessarily empty).
    assert_eq!(bucket("5") - bucket("1"), 1.0);
    assert_eq!(bucket("+Inf"), bucket("5"));
    assert!(
        value(
            &s,
            "stapr_file_open_seconds_sum",
            &[("comm", "file_holder")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &s,
            "stapr_file_open_seconds_count",
            &[("comm", "file_holder")]
        )
        .unwrap()
            >= 1.0
    );
    for report in ["nettop", "disktop", "slowopen"] {
        let attached = s
            .iter()
            .find(|x| x.name == "stapr_probes_attached" && x.labels["report"] == report)
            .unwrap_or_else(|| panic!("no stapr_probes_attached for {report}"));
        assert!(attached.value >= 1.0, "{attached:?}");
        assert!(value(&s, "stapr_events_total", &[("report", report)]).unwrap() >= 1.0);
    }
    assert!(value(&s, "stapr_events_total", &[("report", "nettop")]).unwrap() >= 600.0);

    let index = http_get(&addr, "/");
    assert_eq!(index.status, 200);
    assert!(index.body.contains("href=\"/metrics\""), "{index:?}");
    assert_eq!(http_get(&addr, "/nope").status, 404);
    stop(exporter);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn forgets_processes_that_exited() {
    let _k = kernel_lock();
    // A series is idle from the last drain that found it new counts: a scrape or the 5 s
    // tick. The scrape right after the talker is well within 3 s of its last packet.
    let (exporter, addr) = start_exporter(&["--forget-after", "3s"]);
    let talker = udp_talker(100);
    let of_talker = |s: &[Sample]| {
        s.iter()
            .filter(|x| x.labels.get("pid").is_some_and(|p| *p == talker))
            .count()
    };
    let now = scrape(&addr);
    // packets and bytes, each transmit and receive on lo
    assert!(of_talker(&now) >= 4, "talker {talker} not served");
    let forgotten = value(&now, "stapr_series_forgotten_total", &[]).unwrap();
    let later = integration_tests::wait_for(Duration::from_secs(120), || {
        let s = scrape(&addr);
        (of_talker(&s) == 0).then_some(s)
    })
    .unwrap_or_else(|| panic!("series of the exited talker {talker} kept for 120 s"));
    assert!(value(&later, "stapr_series_forgotten_total", &[]).unwrap() >= forgotten + 2.0);
    stop(exporter);
}

#[test]
fn by_comm_leaves_the_pid_label_out() {
    let _k = kernel_lock();
    let (exporter, addr) = start_exporter(&["--by", "comm"]);
    udp_talker(200);
    udp_talker(200);
    let s = scrape(&addr);
    let sent = value(
        &s,
        "stapr_net_packets_total",
        &[
            ("comm", "udp_talker"),
            ("dev", "lo"),
            ("direction", "transmit"),
        ],
    )
    .expect("udp_talker's series");
    assert!(sent >= 400.0, "two runs add up in one series: {sent}");
    assert!(s.iter().all(|x| !x.labels.contains_key("pid")));
    stop(exporter);
}

#[test]
fn a_taken_port_is_one_line_and_exit_2() {
    let _k = kernel_lock();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(
        stapr().args(["export", "--listen", &addr]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(out.stderr.contains("cannot listen on"), "{out:?}");
    assert_nothing_attached();
}

/// A Prometheus server on loopback with a config scraping `target` every second.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = Path::new("/usr/bin/prometheus");
        assert!(
            bin.exists(),
            "prometheus is not installed: `cargo xtask setup` installs Debian's package"
        );
        let dir = scratch("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: stapr\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = std::net::TcpStream::connect(&p.addr).is_ok()
                && http_get(&p.addr, "/-/ready").status == 200;
            if ready {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query that must return exactly one sample, or None when
    /// it returns none.
    fn query(&self, promql: &str) -> Option<f64> {
        let r = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", encode(promql)),
        );
        assert_eq!(r.status, 200, "{promql}: {r:?}");
        let doc: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(doc["status"], "success", "{doc}");
        let result = doc["data"]["result"].as_array().unwrap();
        assert!(result.len() <= 1, "{promql}: {doc}");
        result
            .first()
            .map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
    }

    /// Polls `promql` until `ok` accepts its value.
    fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = self.query(promql).filter(|v| ok(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: last value {:?}; prometheus log:\n{}",
                self.query(promql),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_exporter() {
    let _k = kernel_lock();
    let (exporter, addr) = start_exporter(&[]);
    let prom = Prometheus::start(&addr);
    prom.wait_for("up{job=\"stapr\"}", |v| v == 1.0);

    let sent = "sum(stapr_net_packets_total{comm=\"udp_talker\",direction=\"transmit\"})";
    let talker = udp_talker(500);
    let first = prom.wait_for(sent, |v| v >= 500.0);
    // The run's own series, with its pid.
    let mine = format!(
        "stapr_net_bytes_total{{pid=\"{talker}\",comm=\"udp_talker\",dev=\"lo\",direction=\"transmit\"}}"
    );
    assert!(prom.wait_for(&mine, |v| v >= 500_000.0) >= 500_000.0);
    // More traffic: the counter Prometheus stores increases.
    udp_talker(500);
    let second = prom.wait_for(sent, |v| v >= first + 500.0);
    assert!(second > first, "{first} -> {second}");

    prom.wait_for("stapr_probes_attached{report=\"nettop\"}", |v| v >= 1.0);
    drop(prom);
    stop(exporter);
}
