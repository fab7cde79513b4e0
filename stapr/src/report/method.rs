//! A probe method: one way a report can attach, what it needs from the kernel, and the
//! names it goes by. Each report declares its ways once, best first ([`Method::WAYS`]):
//! its attach code walks them ([`first_working`]) and `stapr doctor` plans over the same
//! list. The command line's `auto` is no method: it is the absence of a choice.

use crate::runtime::features::Need;

/// One way a report attaches, as a method of it.
#[derive(Debug)]
pub struct Way<M: 'static> {
    pub method: M,
    pub spec: Spec,
}

/// What a way is called and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// As doctor and the fallback messages name it.
    pub name: &'static str,
    /// One word, for metrics labels.
    pub label: &'static str,
    pub needs: &'static [Need],
    /// What doctor prints beside it.
    pub note: &'static str,
    /// It does only part of the report's job (`--block` only, `--binary` only): doctor
    /// shows it as a last resort, never as the report's whole job.
    pub partial: bool,
    /// Chosen when the user names no method. Doctor plans over these and the partial
    /// ones; the rest are only ever asked for (slowopen's raw syscalls).
    pub auto: bool,
}

impl Spec {
    /// Whether doctor considers it.
    pub fn planned(&self) -> bool {
        self.auto || self.partial
    }

    /// Whether this machine meets all its needs (probing them on first use).
    pub fn met(&self) -> bool {
        self.needs.iter().all(|n| n.met())
    }
}

/// A report's probe methods (an enum of its own, without `auto`).
pub trait Method: Copy + PartialEq + std::fmt::Debug + 'static {
    /// Every way, best first.
    const WAYS: &'static [Way<Self>];

    /// The first way of this method (a method may have several: slowopen's syscall
    /// tracepoints read open's arguments from the registers where it can, else keep
    /// them from entry probes).
    fn spec(self) -> &'static Spec {
        let way = Self::WAYS.iter().find(|w| w.method == self);
        &way.unwrap_or(&Self::WAYS[0]).spec
    }

    fn name(self) -> &'static str {
        self.spec().name
    }

    fn label(self) -> &'static str {
        self.spec().label
    }
}

/// The methods to try for `choice` (None: every `auto` one, best first).
pub fn order<M: Method>(choice: Option<M>) -> Vec<M> {
    let mut out: Vec<M> = Vec::new();
    match choice {
        Some(m) => out.push(m),
        None => {
            for w in M::WAYS.iter().filter(|w| w.spec.auto) {
                if !out.contains(&w.method) {
                    out.push(w.method);
                }
            }
        }
    }
    out
}

/// Tries `attach` with each method `choice` stands for until one works, saying on stderr
/// why each one before it was passed over. When none works: every method with its error.
pub fn first_working<M: Method, P>(
    report: &str,
    choice: Option<M>,
    attach: impl FnMut(M) -> anyhow::Result<P>,
) -> Result<P, Vec<(M, anyhow::Error)>> {
    try_in_order(report, &order(choice), choice.is_some(), attach)
}

/// [`first_working`] over the methods `order` names, in that order.
pub fn first_working_of<M: Method, P>(
    report: &str,
    order: &[M],
    attach: impl FnMut(M) -> anyhow::Result<P>,
) -> Result<P, Vec<(M, anyhow::Error)>> {
    try_in_order(report, order, false, attach)
}

/// `named`: the user asked for the one method in `order`.
fn try_in_order<M: Method, P>(
    report: &str,
    order: &[M],
    named: bool,
    mut attach: impl FnMut(M) -> anyhow::Result<P>,
) -> Result<P, Vec<(M, anyhow::Error)>> {
    let mut failed = Vec::new();
    for (i, &m) in order.iter().enumerate() {
        let lacks = lacks_helper(m).map(|why| match instead(m) {
            // A method asked for by name: say what the report uses here without it.
            Some(other) if named => crate::runtime::user_error(format!(
                "{why}; without --probe/--attach, {report} uses {other} here"
            )),
            _ => crate::runtime::user_error(why),
        });
        match lacks.map_or_else(|| attach(m), Err) {
            Ok(p) => return Ok(p),
            // Out of descriptors or memory: every other way would run out too.
            Err(err) if crate::runtime::failure::exhausted(&err).is_some() => {
                failed.push((m, err));
                break;
            }
            Err(err) => {
                if let Some(&next) = order.get(i + 1) {
                    eprintln!(
                        "stapr {report}: {} unavailable ({}); trying {}",
                        m.name(),
                        crate::runtime::one_line(&err),
                        next.name()
                    );
                }
                failed.push((m, err));
            }
        }
    }
    Err(failed)
}

/// Why `m` cannot load here without trying it: every way of it calls a helper this
/// kernel lacks (the verifier would refuse its programs). Names the first way's.
fn lacks_helper<M: Method>(m: M) -> Option<String> {
    let mut missing = None;
    for w in M::WAYS.iter().filter(|w| w.method == m) {
        match w.spec.needs.iter().find(|n| n.is_helper() && !n.met()) {
            None => return None,
            Some(n) => {
                missing.get_or_insert(*n);
            }
        }
    }
    missing.map(|n| {
        let why = match n {
            crate::runtime::features::Need::Works(f) => {
                crate::runtime::features::check(f).clone().err()
            }
            _ => None,
        };
        format!(
            "{} needs the helper {}, which this kernel lacks{}",
            m.name(),
            n.name(),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        )
    })
}

/// The method the report picks by itself where `m` cannot load: the first `auto` way,
/// another method, whose needs are all met here.
fn instead<M: Method>(m: M) -> Option<&'static str> {
    M::WAYS
        .iter()
        .find(|w| w.spec.auto && w.method != m && w.spec.met())
        .map(|w| w.spec.name)
}

/// The error of the last method tried, when none worked.
pub fn last_error<M>(mut failed: Vec<(M, anyhow::Error)>) -> anyhow::Error {
    failed
        .pop()
        .map_or_else(|| anyhow::anyhow!("no method to try"), |(_, e)| e)
}
