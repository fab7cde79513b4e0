//! `stapr export`: the reports' counters as a Prometheus exporter, for the node that
//! monitors a fleet. nettop's and disktop's in-kernel tables are drained at every scrape and
//! every few seconds in between; slowopen's closed files feed a histogram as they arrive.

pub mod args;
pub mod http;
pub mod metrics;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use probes_common::slowopen::{
    SlowConfig, MISSED_ARGS_FULL, MISSED_RINGBUF_FULL, MISSED_TABLE_FULL,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use crate::{
    report::{
        containers::{Choice, Containers},
        disktop, nettop, slowopen, Report,
    },
    runtime::{self, ring, user_error},
};

pub use metrics::By;

pub struct Options {
    pub listen: SocketAddr,
    pub by: By,
    pub forget_after: Duration,
    pub file_min: Duration,
    pub duration: Option<Duration>,
    pub recv_at: nettop::RecvAt,
}

/// Between scrapes the tables are drained this often, so they never fill.
const DRAIN_EVERY: Duration = Duration::from_secs(5);

type MetricsRequest = oneshot::Sender<String>;

/// The probes that attached; a report this kernel cannot run is left out.
struct Parts {
    net: Option<nettop::probes::Probes>,
    disk: Option<disktop::probes::Probes>,
    slow: Option<slowopen::probes::Probes>,
    slow_state: slowopen::State,
    dev_names: disktop::devices::DevNames,
    /// Names cgroups for `--by ...,container`.
    containers: Containers,
    file_min_ns: u64,
}

fn source(report: Report, method: &'static str, attached: usize) -> metrics::Source {
    metrics::Source {
        report,
        method,
        attached,
        events: 0,
        lost: BTreeMap::new(),
    }
}

impl Parts {
    fn attach(
        file_min_ns: u64,
        recv_at: nettop::RecvAt,
        reg: &mut metrics::Registry,
        containers: Containers,
    ) -> Result<(Self, Option<RingBuf<MapData>>)> {
        let unavailable = |report: Report, err: &anyhow::Error| {
            eprintln!(
                "stapr export: {} unavailable ({err:#}); its metrics are left out",
                report.name()
            );
        };
        let net =
            nettop::probes::Probes::attach(nettop::ProbeKind::Auto, recv_at, Default::default())
                .inspect_err(|e| unavailable(Report::Nettop, e))
                .ok();
        if let Some(n) = &net {
            reg.sources
                .push(source(Report::Nettop, n.kind.name(), n.attached));
        }
        let disk = disktop::probes::Probes::attach(disktop::Method::Auto, Default::default())
            .inspect_err(|e| unavailable(Report::Disktop, e))
            .ok();
        if let Some(d) = &disk {
            reg.sources
                .push(source(Report::Disktop, d.method.name(), d.attached));
        }
        let config = SlowConfig {
            min_ns: file_min_ns,
            self_tgid: std::process::id(),
            ..Default::default()
        };
        let attach = slowopen::probes::Probes::attach(
            config,
            Default::default(),
            slowopen::probes::Method::Auto,
        );
        let (slow, ring) = match attach {
            Ok((s, ring)) => {
                reg.sources.push(source(
                    Report::Slowopen,
                    s.method.label(),
                    s.attached + s.raw,
                ));
                (Some(s), Some(ring))
            }
            Err(e) => {
                unavailable(Report::Slowopen, &e);
                (None, None)
            }
        };
        if net.is_none() && disk.is_none() && slow.is_none() {
            return Err(user_error(
                "no report's probes attach on this kernel: see `stapr doctor`",
            ));
        }
        let parts = Parts {
            net,
            disk,
            slow,
            slow_state: slowopen::State::default(),
            dev_names: disktop::devices::DevNames::default(),
            containers,
            file_min_ns,
        };
        Ok((parts, ring))
    }

    /// Attachments that are slow to detach: every report's but nettop's BTF tracepoints.
    fn slow_attachments(&self) -> usize {
        let net = match &self.net {
            Some(n) => n.slow_attachments(),
            None => 0,
        };
        net + self.disk.as_ref().map_or(0, |d| d.attached)
            + self.slow.as_ref().map_or(0, |s| s.attached)
    }

    /// Drains nettop's and disktop's tables into the registry and forgets gone processes.
    fn collect(&mut self, reg: &mut metrics::Registry) -> Result<()> {
        let now = runtime::monotonic_ns();
        if let Some(n) = &mut self.net {
            let names = &mut self.containers;
            reg.add_net(&n.drain()?, |id| names.name(id).container.clone(), now);
            let lost = n.dropped()?;
            if let Some(s) = reg.source(Report::Nettop) {
                s.lost.insert("table_full", lost);
            }
        }
        if let Some(d) = &mut self.disk {
            let (devs, names) = (&mut self.dev_names, &mut self.containers);
            reg.add_disk(
                &d.drain()?,
                |dev, pid| devs.name(dev, pid).name,
                |id| names.name(id).container.clone(),
                now,
            );
            let lost = d.dropped()?;
            if let Some(s) = reg.source(Report::Disktop) {
                s.lost.insert("table_full", lost);
            }
        }
        if let Some(p) = &self.slow {
            let n = p.missed()?;
            if let Some(s) = reg.source(Report::Slowopen) {
                // Both of its tables as one reason: open files, and opens in progress.
                s.lost.insert(
                    "table_full",
                    n[MISSED_TABLE_FULL as usize] + n[MISSED_ARGS_FULL as usize],
                );
                s.lost
                    .insert("ringbuf_full", n[MISSED_RINGBUF_FULL as usize]);
            }
        }
        reg.forget(now, |pid| {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        Ok(())
    }

    /// Files the batch ended, into the histogram.
    fn files(&mut self, batch: slowopen::Batch, reg: &mut metrics::Registry) -> Result<()> {
        let Some(p) = &mut self.slow else {
            return Ok(());
        };
        let rows = slowopen::ended(
            p,
            batch,
            &mut self.slow_state,
            self.file_min_ns,
            &Default::default(),
        )?;
        let now = runtime::monotonic_ns();
        let names = &mut self.containers;
        for r in rows {
            reg.observe_file(
                &r.comm,
                r.cgroup,
                |id| names.name(id).container.clone(),
                r.held_ns,
                now,
            );
        }
        Ok(())
    }
}

/// Waits for slowopen's records; never, when slowopen is not running.
async fn readable(ring: &mut Option<ring::Watched>) -> Result<()> {
    match ring {
        Some(r) => r.wait(None).await,
        None => std::future::pending().await,
    }
}

/// Answers `first` and every scrape waiting behind it with one drain and one rendering:
/// a storm of scrapes costs what one does.
fn answer(
    first: MetricsRequest,
    waiting: &mut mpsc::Receiver<MetricsRequest>,
    parts: &mut Parts,
    reg: &mut metrics::Registry,
) -> Result<()> {
    parts.collect(reg)?;
    let text = reg.render();
    for reply in std::iter::once(first).chain(std::iter::from_fn(|| waiting.try_recv().ok())) {
        let _ = reply.send(text.clone());
    }
    Ok(())
}

/// One scrape: read the request, ask the main loop for fresh metrics if it wants them.
async fn connection(mut stream: TcpStream, ask: mpsc::Sender<MetricsRequest>) {
    let Some(head) = http::read_head(&mut stream).await else {
        return;
    };
    let metrics = if http::route(&head).0 == http::Route::Metrics {
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
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;

    let forget_ns = runtime::nanos(opts.forget_after);
    let mut reg = metrics::Registry::new(opts.by, forget_ns);
    let file_min_ns = runtime::nanos(opts.file_min);
    let choice = Choice {
        show: opts.by.container,
        cgroup: None,
    };
    let (containers, _) = Containers::open(&choice, runtime::Format::Text)?;
    let (mut parts, ring) = Parts::attach(file_min_ns, opts.recv_at, &mut reg, containers)?;
    let methods: Vec<String> = reg
        .sources
        .iter()
        .map(|s| format!("{} {}", s.report.name(), s.method))
        .collect();
    eprintln!(
        "stapr export: serving http://{local}/metrics ({}; series by {}, dropped {:?} after their process ends). Ctrl-C to end.",
        methods.join(", "),
        opts.by.describe(),
        opts.forget_after,
    );

    runtime::block_on(async move {
        let listener = TcpListener::from_std(listener).context("registering the listener")?;
        let mut ring = ring.map(ring::Watched::new).transpose()?;
        let (ask, mut asks) = mpsc::channel::<MetricsRequest>(64);
        let mut clients = JoinSet::new();
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = runtime::stopped(opts.duration, false);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    while clients.try_join_next().is_some() {}
                    if let Ok((stream, _)) = accepted {
                        clients.spawn(connection(stream, ask.clone()));
                    }
                }
                Some(reply) = asks.recv() => answer(reply, &mut asks, &mut parts, &mut reg)?,
                r = readable(&mut ring) => {
                    r?;
                    if let Some(ring) = &mut ring {
                        let mut batch = slowopen::Batch::default();
                        slowopen::read_records(ring.ring(), &mut batch);
                        parts.files(batch, &mut reg)?;
                    }
                }
                _ = tick.tick() => parts.collect(&mut reg)?,
                r = &mut stop => { r?; break; }
            }
        }
        // Scrapes in flight get their answer; then the probes are detached on return.
        drop(listener);
        drop(ask);
        let finish = async {
            loop {
                tokio::select! {
                    Some(reply) = asks.recv() => answer(reply, &mut asks, &mut parts, &mut reg)?,
                    next = clients.join_next() => if next.is_none() { break },
                }
            }
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
        Ok(parts)
    })
    .map(|parts| {
        let slow = parts.slow_attachments();
        runtime::detach::release(parts, slow, false);
    })
}
