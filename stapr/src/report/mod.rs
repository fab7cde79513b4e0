//! One folder per report: `probes` (the only part that touches the kernel), `aggregate`
//! (pure: kernel data to a snapshot) and `render` (pure: snapshot to text), with the
//! report's [`Source`](crate::runtime::source::Source) in its `mod.rs`. Each report's `probes`
//! lists the ways it can attach, best first ([`method::Method::WAYS`]): its attach code walks
//! that list, and `stapr doctor` plans over it.
//!
//! [`ALL`] is the report list: doctor, the exporter and the object check walk it, so a
//! new report is one folder, one line here and one in the command list (`cli`).

pub mod calltree;
pub mod containers;
pub mod disktop;
pub mod method;
pub mod nettop;
pub mod slowopen;

use std::time::Duration;

use anyhow::Result;

use crate::runtime::source::Exported;
use crate::{metrics::Declared, runtime::object::Object};
use method::Spec;

/// The reports, in the order doctor lists them.
pub static ALL: [&Report; 4] = [
    &nettop::NETTOP,
    &slowopen::SLOWOPEN,
    &disktop::DISKTOP,
    &calltree::CALLTREE,
];

/// What the exporter asks of the reports it runs.
#[derive(Debug, Clone, Copy)]
pub struct ExportSettings {
    /// Files held at least this long are observed.
    pub file_min: Duration,
    pub recv_at: nettop::Charge,
    pub xmit_at: nettop::Charge,
    /// Rows need their container named (`--by ...,container`).
    pub containers: bool,
}

/// A report, as doctor, the exporter and the object check see it.
pub struct Report {
    /// `stapr NAME`.
    pub name: &'static str,
    /// Every way it attaches, best first: the list its attach code walks.
    pub ways: fn() -> Vec<&'static Spec>,
    /// Its embedded eBPF object (what the object check reads).
    #[cfg_attr(not(test), allow(dead_code))]
    pub object: &'static Object,
    /// The metric families it serves through `stapr export` (none: not exported).
    pub families: &'static [Declared],
    /// Its probes, attached for the exporter.
    pub export: Option<ExportFn>,
}

/// Attaches a report's probes for the exporter.
pub type ExportFn = fn(&ExportSettings) -> Result<Box<dyn Exported>>;

/// The specs of a method's ways, for [`Report::ways`].
pub fn specs<M: method::Method>() -> Vec<&'static Spec> {
    M::WAYS.iter().map(|w| &w.spec).collect()
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
        let objects = ALL
            .iter()
            .map(|r| r.object)
            .chain([&crate::runtime::features::OBJECT]);
        for object in objects {
            assert_eq!(
                missing_names(object),
                Vec::<String>::new(),
                "{}",
                object.name
            );
        }
    }

    #[test]
    fn a_wrong_name_is_found() {
        let right = nettop::NETTOP.object;
        let wrong = Object {
            programs: &["stapr_net_txx"],
            maps: &["NET_COUNTS_2"],
            config: Some(("NET_OFFSETS", 4)),
            ..*right
        };
        let missing = missing_names(&wrong);
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert!(missing[0].contains("stapr_net_txx"), "{missing:?}");
        assert!(missing[2].starts_with("global NET_OFFSETS"), "{missing:?}");
    }

    #[test]
    fn every_method_has_a_way() {
        for r in ALL {
            let ways = (r.ways)();
            assert!(!ways.is_empty(), "{}", r.name);
            assert!(ways.iter().any(|w| w.auto), "{}: nothing for auto", r.name);
            assert_eq!(r.export.is_some(), !r.families.is_empty(), "{}", r.name);
        }
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
