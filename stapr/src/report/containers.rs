//! `--containers` and `--cgroup`, as every report takes them: the filter handed to the
//! probes, and the names of the cgroups their rows carry.

use std::collections::HashMap;

use anyhow::Result;
use probes_common::CgroupFilter;

use crate::runtime::{
    self,
    cgroup::{Cgroups, Named},
};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Choice {
    /// `--containers`: a CONTAINER column in text output.
    pub show: bool,
    /// `--cgroup`: a cgroup path or container id prefix.
    pub cgroup: Option<String>,
}

/// The cgroup names a report resolves (JSON carries them even without `--containers`).
pub struct Containers {
    /// Text output has the CONTAINER column.
    pub show: bool,
    cgroups: Option<Cgroups>,
    /// Names by id, once known (an event-per-call report looks each event's up).
    known: HashMap<u64, Named>,
    unknown: Named,
}

impl Containers {
    /// Opens the cgroup2 tree when the output needs names or `--cgroup` a filter, and
    /// turns `--cgroup` into the probes' filter. Without a cgroup2 tree, JSON rows carry
    /// `"cgroup": null`; `--containers` and `--cgroup` end with one line, exit 2.
    pub fn open(choice: &Choice, format: runtime::Format) -> Result<(Containers, CgroupFilter)> {
        let wanted = choice.show || choice.cgroup.is_some();
        let cgroups = if wanted {
            Some(Cgroups::open()?)
        } else if format == runtime::Format::Json {
            Cgroups::open().ok()
        } else {
            None
        };
        let mut c = Containers {
            show: choice.show,
            cgroups,
            known: HashMap::new(),
            unknown: Named::of(None),
        };
        let filter = match (&choice.cgroup, c.cgroups.as_mut()) {
            (Some(arg), Some(cg)) => cg.filter(arg)?,
            _ => CgroupFilter::default(),
        };
        Ok((c, filter))
    }

    /// The names the exporter's rows need: containers only for `--by ...,container`.
    pub fn for_export(containers: bool) -> Result<Containers> {
        let choice = Choice {
            show: containers,
            cgroup: None,
        };
        Containers::open(&choice, runtime::Format::Text).map(|(c, _)| c)
    }

    /// No cgroup tree: every cgroup unknown, no column.
    pub fn none() -> Containers {
        Containers {
            show: false,
            cgroups: None,
            known: HashMap::new(),
            unknown: Named::of(None),
        }
    }

    /// The path and container of cgroup `id` (unknown when no tree is open).
    pub fn name(&mut self, id: u64) -> &Named {
        if !self.known.contains_key(&id) {
            let Some(named) = self.cgroups.as_mut().map(|c| c.name(id)) else {
                return &self.unknown;
            };
            if named.path.is_none() {
                return &self.unknown;
            }
            self.known.insert(id, named);
        }
        &self.known[&id]
    }

    /// The cgroup of a live process, from /proc/PID/cgroup (for rows the kernel sent no
    /// id with).
    pub fn of_process(&mut self, pid: u32) -> Named {
        match self.cgroups.as_mut() {
            Some(c) => c.of_process(pid),
            None => Named::of(None),
        }
    }
}

/// The CONTAINER column's text, aligned like the column after it: `printf("%-12s ")`
/// or `printf("%12s ")`; empty without `--containers`.
pub fn column(show: bool, value: &str, right: bool) -> String {
    let value = crate::runtime::shown::shown(value);
    match (show, right) {
        (false, _) => String::new(),
        (true, false) => format!("{value:<12} "),
        (true, true) => format!("{value:>12} "),
    }
}
