//! Pure: how an event's id names its function, and what the function returns.

use std::collections::HashMap;

use super::select::Func;
use crate::runtime::btf::RetKind;

/// A function attached: its name as shown, and what it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub name: String,
    pub ret: RetKind,
    /// Traced at entry only (no return probe): its entry opens no call.
    pub entry_only: bool,
}

/// The id → function table of the functions attached.
#[derive(Debug)]
pub enum Names {
    /// The id is an index (attach cookie: kprobe.multi, uprobes).
    Index(Vec<Known>),
    /// The id is an address inside the function (at its start, or past an endbr64
    /// where the kernel placed the probe there: kprobes, fentry); sorted by address.
    Addr(Vec<(u64, Known)>),
}

/// Largest distance from a function's start at which its probe may sit.
const PROBE_OFFSET_MAX: u64 = 64;

/// Addresses of kernel functions by (name, module), from kallsyms.
pub type Addrs = HashMap<(String, Option<String>), u64>;

impl Names {
    pub fn get(&self, id: u64) -> Option<&Known> {
        match self {
            Names::Index(v) => v.get(id as usize),
            Names::Addr(v) => {
                let i = v.partition_point(|(a, _)| *a <= id);
                match i.checked_sub(1).map(|i| &v[i]) {
                    Some((a, k)) if id - a < PROBE_OFFSET_MAX => Some(k),
                    _ => None,
                }
            }
        }
    }

    #[cfg(test)]
    pub fn name(&self, id: u64) -> &str {
        self.get(id).map_or("?", |k| k.name.as_str())
    }

    /// The table of `funcs` (with what each returns, `rets[i]` for `funcs[i]`) by cookie
    /// index.
    pub fn by_index(funcs: &[Func], rets: &[RetKind]) -> Self {
        Names::Index(funcs.iter().zip(rets).map(|(f, r)| known(f, *r)).collect())
    }

    /// Marks the functions traced at entry only, in index order.
    pub fn entry_only(&mut self, flags: impl IntoIterator<Item = bool>) {
        if let Names::Index(v) = self {
            for (k, flag) in v.iter_mut().zip(flags) {
                k.entry_only = flag;
            }
        }
    }

    /// The same by address; functions without one are left out.
    pub fn by_address(funcs: &[Func], rets: &[RetKind], addrs: &Addrs) -> Self {
        let mut v: Vec<(u64, Known)> = funcs
            .iter()
            .zip(rets)
            .filter_map(|(f, r)| {
                let a = addrs.get(&(f.name.clone(), f.module.clone()))?;
                Some((*a, known(f, *r)))
            })
            .collect();
        v.sort_by_key(|(a, _)| *a);
        Names::Addr(v)
    }
}

fn known(f: &Func, ret: RetKind) -> Known {
    Known {
        name: f.name.clone(),
        ret,
        entry_only: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn func(name: &str, module: Option<&str>) -> Func {
        Func {
            name: name.into(),
            module: module.map(Into::into),
        }
    }

    #[test]
    fn index_names() {
        let n = Names::by_index(
            &[func("a", None), func("b", None)],
            &[RetKind::Int32, RetKind::Void],
        );
        assert_eq!(n.name(0), "a");
        assert_eq!(n.get(1).unwrap().ret, RetKind::Void);
        assert_eq!(n.name(2), "?");
    }

    #[test]
    fn address_names_allow_a_probe_past_the_start() {
        let f = func;
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
            &[RetKind::Int64, RetKind::Int32, RetKind::Ptr],
            &addrs,
        );
        assert_eq!(n.get(0x2010).unwrap().ret, RetKind::Int32);
        assert_eq!(n.name(0x1000), "vfs_read");
        assert_eq!(n.name(0x1004), "vfs_read", "past an endbr64");
        assert_eq!(n.name(0x1000 + 64), "?", "too far from any start");
        assert_eq!(n.name(0x2010), "ext4_read");
        assert_eq!(n.name(0x0fff), "?", "before the first function");
        assert_eq!(n.name(0x3000), "?", "not attached");
    }
}
