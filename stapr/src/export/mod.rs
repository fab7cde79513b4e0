//! `stapr export`: the reports' counters as a Prometheus exporter, for the node that
//! monitors a fleet. nettop's and disktop's in-kernel tables are drained at every scrape and
//! every few seconds in between; slowopen's closed files feed a histogram as they arrive.

pub mod args;
pub mod http;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::{AbortHandle, JoinSet},
};

use crate::{
    metrics::{self, Declared, Probed},
    report::{self, nettop, ExportSettings},
    runtime::{self, source::Exported, user_error},
};

pub use crate::metrics::By;

pub struct Options {
    pub listen: SocketAddr,
    /// Connections served at once (`--web.max-connections`).
    pub max_connections: usize,
    pub by: By,
    pub forget_after: Duration,
    pub file_min: Duration,
    pub duration: Option<Duration>,
    pub recv_at: nettop::Charge,
    pub xmit_at: nettop::Charge,
}

/// Connections the kernel queues before the exporter accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// Between scrapes the tables are drained this often, so they never fill.
const DRAIN_EVERY: Duration = Duration::from_secs(5);

/// How long accepting pauses when the process or the system is out of descriptors and no
/// connection of the exporter's can be closed: the pending connection stays readable, and
/// retrying at once would spin.
const OUT_OF_FILES_PAUSE: Duration = Duration::from_millis(50);

/// The connections being served, oldest first. Past the cap, or out of descriptors, the
/// oldest one still waiting for its request is closed to make room: clients that connect
/// and send nothing cannot shut scrapers out.
struct Clients {
    tasks: JoinSet<()>,
    open: VecDeque<(AbortHandle, Arc<AtomicBool>)>,
    max: usize,
}

impl Clients {
    fn new(max: usize) -> Clients {
        Clients {
            tasks: JoinSet::new(),
            open: VecDeque::new(),
            max,
        }
    }

    fn serve(&mut self, stream: TcpStream, ask: &mpsc::Sender<MetricsRequest>) {
        while self.tasks.try_join_next().is_some() {}
        self.open.retain(|(task, _)| !task.is_finished());
        if self.open.len() >= self.max {
            self.close_one();
        }
        let asked = Arc::new(AtomicBool::new(false));
        let task = self
            .tasks
            .spawn(connection(stream, ask.clone(), asked.clone()));
        self.open.push_back((task, asked));
    }

    /// Closes the oldest connection that has not sent its request (or, when every one
    /// has, the oldest); false when none is open.
    fn close_one(&mut self) -> bool {
        self.open.retain(|(task, _)| !task.is_finished());
        let idle = self
            .open
            .iter()
            .position(|(_, asked)| !asked.load(Ordering::Relaxed))
            .unwrap_or(0);
        match self.open.remove(idle) {
            Some((task, _)) => {
                task.abort();
                true
            }
            None => false,
        }
    }
}

/// accept(2) failed for want of a descriptor (the process's limit or the system's).
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

type MetricsRequest = oneshot::Sender<String>;

/// The reports that serve metrics, attached; one this kernel cannot run is left out.
struct Sources(Vec<Box<dyn Exported>>);

impl Sources {
    fn attach(with: &ExportSettings, reg: &mut metrics::Registry) -> Result<Self> {
        let mut sources: Vec<Box<dyn Exported>> = Vec::new();
        for r in report::ALL.iter() {
            let Some(export) = r.export else { continue };
            match export(with) {
                Err(err) if runtime::failure::exhausted(&err).is_some() => return Err(err),
                Ok(s) => {
                    reg.sources.push(Probed {
                        report: s.name(),
                        method: s.label(),
                        attached: s.attached(),
                        events: 0,
                        lost: Default::default(),
                    });
                    sources.push(s);
                }
                Err(err) => eprintln!(
                    "stapr export: {} unavailable ({}); its metrics are left out",
                    r.name,
                    runtime::one_line(&err)
                ),
            }
        }
        if sources.is_empty() {
            return Err(user_error(
                "no report's probes attach on this kernel: see `stapr doctor`",
            ));
        }
        Ok(Sources(sources))
    }

    fn slow_to_detach(&self) -> usize {
        self.0.iter().map(|s| s.slow_to_detach()).sum()
    }

    /// Takes every source's snapshot into the registry and forgets gone processes.
    fn collect(&mut self, reg: &mut metrics::Registry) -> Result<()> {
        let now = runtime::monotonic_ns();
        for s in &mut self.0 {
            s.collect(reg, now)?;
        }
        reg.forget(now, |pid| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        Ok(())
    }

    /// Ready, with its index, when a source has records waiting (slowopen's closed
    /// files): they are taken as they come, so its ring never fills between scrapes.
    fn poll_records(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize>> {
        for (i, s) in self.0.iter_mut().enumerate() {
            if let Poll::Ready(r) = s.poll_records(cx) {
                return Poll::Ready(r.map(|()| i));
            }
        }
        Poll::Pending
    }

    /// Takes the snapshot of source `i` only.
    fn collect_one(&mut self, i: usize, reg: &mut metrics::Registry) -> Result<()> {
        match self.0.get_mut(i) {
            Some(s) => s.collect(reg, runtime::monotonic_ns()),
            None => Ok(()),
        }
    }
}

/// Answers `first` and every scrape waiting behind it with one drain and one rendering:
/// a storm of scrapes costs what one does.
fn answer(
    first: MetricsRequest,
    waiting: &mut mpsc::Receiver<MetricsRequest>,
    sources: &mut Sources,
    reg: &mut metrics::Registry,
) -> Result<()> {
    sources.collect(reg)?;
    let text = reg.render();
    for reply in std::iter::once(first).chain(std::iter::from_fn(|| waiting.try_recv().ok())) {
        let _ = reply.send(text.clone());
    }
    Ok(())
}

/// One scrape: read the request, ask the main loop for fresh metrics if it wants them.
/// `asked` is set once the request is in.
async fn connection(
    mut stream: TcpStream,
    ask: mpsc::Sender<MetricsRequest>,
    asked: Arc<AtomicBool>,
) {
    let Some(head) = http::read_head(&mut stream).await else {
        return;
    };
    asked.store(true, Ordering::Relaxed);
    let wants_metrics =
        matches!(&head, http::Head::Whole(h) if http::route(h).0 == http::Route::Metrics);
    let metrics = if wants_metrics {
        let (tx, rx) = oneshot::channel();
        if ask.send(tx).await.is_err() {
            return;
        }
        match rx.await {
            Ok(m) => m,
            Err(_) => return,
        }
    } else {
        String::new()
    };
    http::answer(stream, head, metrics).await;
}

pub fn run(opts: Options) -> Result<()> {
    runtime::prepare()?;
    // Bind first: a taken port should fail before any probe is loaded.
    let listener = std::net::TcpListener::bind(opts.listen)
        .map_err(|e| user_error(format!("cannot listen on {}: {e}", opts.listen)))?;
    // std listens with a backlog of 128: a storm of scrapes while a drain runs filled it,
    // and a client whose SYN was dropped waits a second to send it again. Linux takes a
    // second listen(2) as a new backlog (capped by net.core.somaxconn).
    // SAFETY: listen(2) on the socket this function owns, no pointers.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting the listen backlog");
    }
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;

    let declared: Vec<Declared> = report::ALL
        .iter()
        .flat_map(|r| r.families.iter().copied())
        .collect();
    let mut reg = metrics::Registry::new(opts.by, runtime::nanos(opts.forget_after), &declared);
    let with = ExportSettings {
        file_min: opts.file_min,
        recv_at: opts.recv_at,
        xmit_at: opts.xmit_at,
        containers: opts.by.container,
    };
    let mut sources = Sources::attach(&with, &mut reg)?;
    let methods: Vec<String> = reg
        .sources
        .iter()
        .map(|s| format!("{} {}", s.report, s.method))
        .collect();
    eprintln!(
        "stapr export: serving http://{local}/metrics ({}; series by {}, dropped {:?} after their process ends). Ctrl-C to end.",
        methods.join(", "),
        opts.by.describe(),
        opts.forget_after,
    );

    runtime::block_on(async move {
        let listener = TcpListener::from_std(listener).context("registering the listener")?;
        let (ask, mut asks) = mpsc::channel::<MetricsRequest>(64);
        let mut clients = Clients::new(opts.max_connections);
        let mut paused = false;
        let pause = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(pause);
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = runtime::stopped(opts.duration, false);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept(), if !paused => match accepted {
                    Ok((stream, _)) => clients.serve(stream, &ask),
                    Err(e) if out_of_files(&e) => {
                        if clients.close_one() {
                            // Its descriptor is freed once the runtime drops the task.
                            tokio::task::yield_now().await;
                        } else {
                            paused = true;
                            pause.as_mut().reset(tokio::time::Instant::now() + OUT_OF_FILES_PAUSE);
                        }
                    }
                    Err(_) => {}
                },
                () = &mut pause, if paused => paused = false,
                Some(reply) = asks.recv() => answer(reply, &mut asks, &mut sources, &mut reg)?,
                r = std::future::poll_fn(|cx| sources.poll_records(cx)) => {
                    sources.collect_one(r?, &mut reg)?;
                }
                _ = tick.tick() => sources.collect(&mut reg)?,
                r = &mut stop => { r?; break; }
            }
        }
        // Scrapes in flight get their answer; then the probes are detached on return.
        drop(listener);
        drop(ask);
        let finish = async {
            loop {
                tokio::select! {
                    Some(reply) = asks.recv() => answer(reply, &mut asks, &mut sources, &mut reg)?,
                    next = clients.tasks.join_next() => if next.is_none() { break },
                }
            }
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
        Ok(sources)
    })
    .map(|sources| {
        let slow = sources.slow_to_detach();
        runtime::detach::release(sources, slow, false);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{Registry, Who},
        report::{
            disktop::{self, aggregate::Dir},
            nettop::aggregate::tests::{counters, key},
            slowopen::FILE_OPEN,
        },
        runtime::{cgroup::Named, source::Record},
    };

    fn declared() -> Vec<Declared> {
        report::ALL
            .iter()
            .flat_map(|r| r.families.iter().copied())
            .collect()
    }

    fn named(mut snap: nettop::aggregate::Snapshot) -> nettop::aggregate::Snapshot {
        for r in &mut snap.rows {
            r.cg = Named::of(Some("/web".into()));
        }
        snap
    }

    fn disk_row(pid: u32, comm: &str, bytes: u64) -> disktop::aggregate::Row {
        disktop::aggregate::Row {
            uid: 0,
            pid,
            ppid: 1,
            comm: comm.into(),
            device: "sda".into(),
            fstype: None,
            dir: Dir::Read,
            bytes,
            cgroup: 1,
            cg: Named::of(Some("/web".into())),
        }
    }

    fn registry(by: By) -> Registry {
        let mut r = Registry::new(by, 60_000_000_000, &declared());
        r.sources = ["nettop", "slowopen", "disktop"]
            .into_iter()
            .zip(["tp_btf", "tracepoint", "syscalls"])
            .map(|(report, method)| Probed {
                report,
                method,
                attached: 2,
                events: 0,
                lost: [("table_full", 0)].into_iter().collect(),
            })
            .collect();
        let net = named(nettop::aggregate::rows([
            (key(10, 33, "eth0", "httpd"), counters(3, 3000, 0, 0)),
            (key(10, 33, "eth0", "httpd"), counters(1, 500, 2, 120)), // another CPU
            (key(11, 33, "eth0", "httpd"), counters(0, 0, 1, 60)),
        ]));
        let events = net.record(&mut r, 5);
        r.source("nettop").unwrap().events += events;
        let disk = disktop::aggregate::Counted {
            rows: vec![disk_row(12, "postgres", 4096)],
            calls: 1,
        };
        let events = disk.record(&mut r, 5);
        r.source("disktop").unwrap().events += events;
        let who = Who {
            pid: 13,
            comm: "vsftpd",
            uid: 0,
            container: "web",
        };
        for secs in [2.5, 0.02] {
            r.observe(&FILE_OPEN, who.comm, who.container, secs, 5);
        }
        r.source("slowopen").unwrap().events += 2;
        r
    }

    #[test]
    fn exposition_golden() {
        let text = registry(By::PID).render();
        let golden = r#"# HELP stapr_net_packets_total Packets sent (transmit) and received (receive) per process and network device; by default (--xmit-at socket, --recv-at socket) transmits are charged to the process that last wrote to their socket, receives to the process that read them off it.
# TYPE stapr_net_packets_total counter
stapr_net_packets_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="receive"} 2
stapr_net_packets_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="transmit"} 4
stapr_net_packets_total{pid="11",comm="httpd",uid="33",dev="eth0",direction="receive"} 1
# HELP stapr_net_bytes_total Bytes (skb length) sent and received per process and network device.
# TYPE stapr_net_bytes_total counter
stapr_net_bytes_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="receive"} 120
stapr_net_bytes_total{pid="10",comm="httpd",uid="33",dev="eth0",direction="transmit"} 3500
stapr_net_bytes_total{pid="11",comm="httpd",uid="33",dev="eth0",direction="receive"} 60
# HELP stapr_file_open_seconds How long files were held open, per command, observed when they were closed (files held at least --file-min).
# TYPE stapr_file_open_seconds histogram
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.01"} 0
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.05"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.1"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="0.5"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="1"} 1
stapr_file_open_seconds_bucket{comm="vsftpd",le="5"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="10"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="60"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="300"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="1800"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="3600"} 2
stapr_file_open_seconds_bucket{comm="vsftpd",le="+Inf"} 2
stapr_file_open_seconds_sum{comm="vsftpd"} 2.52
stapr_file_open_seconds_count{comm="vsftpd"} 2
# HELP stapr_disk_bytes_total Bytes read and written per process and device: read/write calls on files of a block device (page cache hits included) or of a network filesystem (NFS, SMB/CIFS, Ceph, 9p, AFS), named by its server side.
# TYPE stapr_disk_bytes_total counter
stapr_disk_bytes_total{pid="12",comm="postgres",uid="0",dev="sda",direction="read"} 4096
# HELP stapr_events_total Events the probes counted: packets (nettop), reads and writes (disktop), files reported closed (slowopen).
# TYPE stapr_events_total counter
stapr_events_total{report="nettop"} 7
stapr_events_total{report="slowopen"} 2
stapr_events_total{report="disktop"} 1
# HELP stapr_events_lost_total Events the probes could not count, by reason (table_full: an in-kernel table was full; ringbuf_full: the ring buffer was; open_args_full: slowopen's table of opens in progress was; ledger_failed: a socket's ledger could not be made; writer_failed: a socket's writer could not be noted).
# TYPE stapr_events_lost_total counter
stapr_events_lost_total{report="nettop",reason="table_full"} 0
stapr_events_lost_total{report="slowopen",reason="table_full"} 0
stapr_events_lost_total{report="disktop",reason="table_full"} 0
# HELP stapr_probes_attached Probes attached in the kernel, per report and method.
# TYPE stapr_probes_attached gauge
stapr_probes_attached{report="nettop",method="tp_btf"} 2
stapr_probes_attached{report="slowopen",method="tracepoint"} 2
stapr_probes_attached{report="disktop",method="syscalls"} 2
# HELP stapr_series Labelled series this exporter holds (a histogram counts once).
# TYPE stapr_series gauge
stapr_series 5
# HELP stapr_series_forgotten_total Series dropped because their process had gone (or, --by comm, they were idle) for --forget-after.
# TYPE stapr_series_forgotten_total counter
stapr_series_forgotten_total 0
"#;
        assert_eq!(text, golden);
    }

    #[test]
    fn by_comm_drops_the_pid_label() {
        let text = registry(By::COMM).render();
        assert!(text.contains(
            "stapr_net_packets_total{comm=\"httpd\",uid=\"33\",dev=\"eth0\",direction=\"receive\"} 3\n"
        ));
        assert!(!text.contains("pid=\""));
        let text = registry(By::parse("comm,container").unwrap()).render();
        assert!(
            text.contains("stapr_disk_bytes_total{comm=\"postgres\",uid=\"0\",container=\"web\",dev=\"sda\",direction=\"read\"} 4096\n"),
            "{text}"
        );
    }

    #[test]
    fn forgets_gone_processes_after_the_delay() {
        let mut r = registry(By::PID);
        let minute = 60_000_000_000;
        // Everyone is gone, but not for long enough yet.
        r.forget(minute, |_| false);
        assert_eq!(r.series(), 5);
        // pid 10 lives on, quiet: kept. 11, 12 and the idle histogram go.
        r.forget(minute + 10, |pid| pid == 10);
        assert_eq!(r.series(), 2);
        assert_eq!(r.forgotten, 3);
        let text = r.render();
        assert!(text.contains("pid=\"10\""));
        assert!(!text.contains("pid=\"11\""));
        assert!(!text.contains("vsftpd"));
        // --by comm: idle series go whatever `alive` says.
        let mut c = registry(By::COMM);
        c.forget(minute + 10, |_| true);
        assert_eq!(c.series(), 0);
    }
}
