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
    first_working_of(report, &order(choice), attach)
}

/// [`first_working`] over the methods `order` names, in that order.
pub fn first_working_of<M: Method, P>(
    report: &str,
    order: &[M],
    mut attach: impl FnMut(M) -> anyhow::Result<P>,
) -> Result<P, Vec<(M, anyhow::Error)>> {
    let mut failed = Vec::new();
    for (i, &m) in order.iter().enumerate() {
        match attach(m) {
            Ok(p) => return Ok(p),
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

/// The error of the last method tried, when none worked.
pub fn last_error<M>(mut failed: Vec<(M, anyhow::Error)>) -> anyhow::Error {
    failed
        .pop()
        .map_or_else(|| anyhow::anyhow!("no method to try"), |(_, e)| e)
}
