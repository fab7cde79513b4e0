//! Pure: how an event's id names its function.

use std::collections::HashMap;

use super::select::Func;

/// The id → name table of the functions attached.
#[derive(Debug)]
pub enum Names {
    /// The id is an index (attach cookie: kprobe.multi, uprobes).
    Index(Vec<String>),
    /// The id is an address inside the function (at its start, or past an endbr64
    /// where the kernel placed the probe there: kprobes, fentry); sorted by address.
    Addr(Vec<(u64, String)>),
}

/// Largest distance from a function's start at which its probe may sit.
const PROBE_OFFSET_MAX: u64 = 64;

/// Addresses of kernel functions by (name, module), from kallsyms.
pub type Addrs = HashMap<(String, Option<String>), u64>;

impl Names {
    pub fn name(&self, id: u64) -> &str {
        match self {
            Names::Index(v) => v.get(id as usize).map_or("?", String::as_str),
            Names::Addr(v) => {
                let i = v.partition_point(|(a, _)| *a <= id);
                match i.checked_sub(1).map(|i| &v[i]) {
                    Some((a, name)) if id - a < PROBE_OFFSET_MAX => name,
                    _ => "?",
                }
            }
        }
    }

    /// The table of `funcs` by address; functions without one are left out.
    pub fn by_address(funcs: &[Func], addrs: &Addrs) -> Self {
        let mut v: Vec<(u64, String)> = funcs
            .iter()
            .filter_map(|f| {
                let a = addrs.get(&(f.name.clone(), f.module.clone()))?;
                Some((*a, f.name.clone()))
            })
            .collect();
        v.sort();
        Names::Addr(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names() {
        let n = Names::Index(vec!["a".into(), "b".into()]);
        assert_eq!(n.name(0), "a");
        assert_eq!(n.name(1), "b");
        assert_eq!(n.name(2), "?");
    }

    #[test]
    fn address_names_allow_a_probe_past_the_start() {
        let f = |name: &str, module: Option<&str>| Func {
            name: name.into(),
            module: module.map(Into::into),
        };
        let addrs: Addrs = [
            (("ext4_read".into(), Some("ext4".into())), 0x2000),
            (("vfs_read".into(), None), 0x1000),
            (("unused".into(), None), 0x3000),
        ]
        .into_iter()
        .collect();
        let n = Names::by_address(
            &[
                f("vfs_read", None),
                f("ext4_read", Some("ext4")),
                f("gone", None),
            ],
            &addrs,
        );
        assert_eq!(n.name(0x1000), "vfs_read");
        assert_eq!(n.name(0x1004), "vfs_read", "past an endbr64");
        assert_eq!(n.name(0x1000 + 64), "?", "too far from any start");
        assert_eq!(n.name(0x2010), "ext4_read");
        assert_eq!(n.name(0x0fff), "?", "before the first function");
        assert_eq!(n.name(0x3000), "?", "not attached");
    }
}
