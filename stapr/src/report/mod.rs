//! One module per report: `probes` (the only part that touches the kernel), `aggregate`
//! (pure: kernel data to a snapshot) and `render` (pure: snapshot to text).
//!
//! Each report's `probes` also lists the ways it can attach, in its order of preference
//! ([`MethodSpec`]): its attach code walks that list, and `stapr doctor` reads it to say
//! which method the report will use on this kernel.

pub mod calltree;
pub mod containers;
pub mod disktop;
pub mod nettop;
pub mod slowopen;

/// The reports, as doctor and the exporter name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Report {
    Nettop,
    Slowopen,
    Disktop,
    Calltree,
}

impl Report {
    pub const ALL: [Report; 4] = [
        Report::Nettop,
        Report::Slowopen,
        Report::Disktop,
        Report::Calltree,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Report::Nettop => "nettop",
            Report::Slowopen => "slowopen",
            Report::Disktop => "disktop",
            Report::Calltree => "calltree",
        }
    }

    /// The ways the report can attach, best first.
    pub fn methods(self) -> Vec<MethodSpec> {
        match self {
            Report::Nettop => nettop::probes::methods(),
            Report::Slowopen => slowopen::probes::methods(),
            Report::Disktop => disktop::probes::methods(),
            Report::Calltree => calltree::probes::methods(),
        }
    }
}

/// A kernel facility `stapr doctor` tries by loading and attaching a tiny program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Facility {
    Classic,
    TpBtf,
    RawTp,
    Kprobes,
    KprobeMulti,
    Fentry,
    Uprobes,
    Ringbuf,
}

impl Facility {
    #[cfg(test)]
    pub const ALL: [Facility; 8] = [
        Facility::Classic,
        Facility::TpBtf,
        Facility::RawTp,
        Facility::Kprobes,
        Facility::KprobeMulti,
        Facility::Fentry,
        Facility::Uprobes,
        Facility::Ringbuf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Facility::Classic => "classic tracepoints",
            Facility::TpBtf => "BTF tracepoints (tp_btf)",
            Facility::RawTp => "raw tracepoints",
            Facility::Kprobes => "kprobes",
            Facility::KprobeMulti => "kprobe.multi",
            Facility::Fentry => "fentry/fexit",
            Facility::Uprobes => "uprobes",
            Facility::Ringbuf => "ring buffer",
        }
    }
}

/// What a probe method needs from the kernel or the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Kernel BTF (/sys/kernel/btf/vmlinux).
    Btf,
    /// An architecture whose saved syscall registers stapr knows (x86-64, arm64).
    SavedRegs,
    /// A facility that loads and attaches here.
    Works(Facility),
}

impl Need {
    pub fn name(self) -> &'static str {
        match self {
            Need::Btf => "kernel BTF",
            Need::SavedRegs => "x86-64 or arm64",
            Need::Works(f) => f.name(),
        }
    }
}

/// One way a report can attach its probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSpec {
    /// As `stapr doctor` names it.
    pub name: &'static str,
    pub needs: &'static [Need],
    /// What doctor prints beside it.
    pub note: &'static str,
    /// It does only part of the report's job (`--block` only, `--binary` only): doctor
    /// shows it but counts the report as unable to do its main job.
    pub partial: bool,
}

/// Tries `attach` with each method of `order` until one works, saying on stderr why each
/// one before it was passed over. When none works: every method with its error.
pub fn first_working<M: Copy, P>(
    report: &str,
    order: &[M],
    name: impl Fn(M) -> &'static str,
    mut attach: impl FnMut(M) -> anyhow::Result<P>,
) -> Result<P, Vec<(M, anyhow::Error)>> {
    let mut failed = Vec::new();
    for (i, &m) in order.iter().enumerate() {
        match attach(m) {
            Ok(p) => return Ok(p),
            Err(err) => {
                if let Some(&next) = order.get(i + 1) {
                    eprintln!(
                        "stapr {report}: {} unavailable ({err:#}); trying {}",
                        name(m),
                        name(next)
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

/// The process filters every report takes: `-p/--pid`, `-u/--uid`, `-c/--comm`.
#[derive(Debug, Clone, Default)]
pub struct ProcessFilter {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// Matches commands that contain this text.
    pub comm: Option<String>,
}

impl ProcessFilter {
    /// Refuses `-p 0` where the idle task can never show up (it opens, reads and writes
    /// no file).
    pub fn refuse_idle(&self, report: &str) -> anyhow::Result<()> {
        if self.pid == Some(0) {
            return Err(crate::runtime::user_error(format!(
                "-p 0 is the idle task, which {report} never sees: give a process id"
            )));
        }
        Ok(())
    }

    pub fn matches(&self, pid: u32, uid: u32, comm: &str) -> bool {
        self.pid.is_none_or(|p| pid == p)
            && self.uid.is_none_or(|u| uid == u)
            && self.comm.as_deref().is_none_or(|c| comm.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::object::missing_names;

    /// What libbpf's generated skeletons check at compile time: every program, map and
    /// global user space asks for by name is in its embedded object (globals at the size
    /// user space writes).
    #[test]
    fn every_name_user_space_asks_for_is_in_its_object() {
        for (object, names) in [
            (nettop::probes::OBJECT, &nettop::probes::NAMES),
            (disktop::probes::OBJECT, &disktop::probes::NAMES),
            (slowopen::probes::OBJECT, &slowopen::probes::NAMES),
            (calltree::probes::OBJECT, &calltree::probes::NAMES),
            (crate::doctor::OBJECT, &crate::doctor::NAMES),
        ] {
            assert_eq!(
                missing_names(object, names),
                Vec::<String>::new(),
                "{}",
                names.object
            );
        }
    }

    #[test]
    fn a_wrong_name_is_found() {
        let wrong = crate::runtime::object::ObjectNames {
            object: "nettop",
            programs: &["stapr_net_txx"],
            maps: &["NET_COUNTS_2"],
            globals: &[("NET_OFFSETS", 4)],
        };
        let missing = missing_names(nettop::probes::OBJECT, &wrong);
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(missing[0].contains("stapr_net_txx"), "{missing:?}");
        assert!(missing[2].starts_with("global NET_OFFSETS"), "{missing:?}");
    }

    #[test]
    fn process_filter() {
        let all = ProcessFilter::default();
        assert!(all.matches(1, 0, "init"));
        let f = ProcessFilter {
            pid: Some(7),
            uid: Some(48),
            comm: Some("ttp".into()),
        };
        assert!(f.matches(7, 48, "httpd"));
        assert!(!f.matches(8, 48, "httpd"));
        assert!(!f.matches(7, 0, "httpd"));
        assert!(!f.matches(7, 48, "nginx"));
    }
}
