//! What the kernel and the traced program offer, read from /proc, tracefs, /lib/modules
//! and the ELF file, handed to `select`'s pure functions.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};

use super::{names::Addrs, select};
use crate::runtime::{
    btf::{Btf, RetKind},
    elf, tracefs, user_error,
};

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// Modules built into the running kernel: modules.builtin, and /sys/module entries
/// without an initstate (loaded modules have one).
fn builtin_modules() -> Vec<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out =
        std::fs::read_to_string(format!("/lib/modules/{}/modules.builtin", release.trim()))
            .map(|t| select::parse_builtin(&t))
            .unwrap_or_default();
    if let Ok(dir) = std::fs::read_dir("/sys/module") {
        for e in dir.flatten() {
            if !e.path().join("initstate").exists() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The kernel functions `--module` and `--func` name, and every function's address.
pub fn kernel(module: Option<&str>, funcs: &[String]) -> Result<(select::Selection, Addrs)> {
    tracefs::ensure_mounted()?;
    let traceable = select::parse_traceable(&read(&format!(
        "{}/available_filter_functions",
        tracefs::TRACEFS
    ))?);
    let syms = select::parse_kallsyms(&read("/proc/kallsyms")?);
    let mut sel = select::Selection::default();
    if let Some(m) = module {
        let loaded: Vec<String> = read("/proc/modules")?
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        let builtin = builtin_modules();
        let mods = select::Modules {
            loaded: &loaded,
            builtin: &builtin,
        };
        sel = select::module(m, &traceable, &syms, &mods).map_err(user_error)?;
    }
    if !funcs.is_empty() {
        select::merge(&mut sel, select::functions(funcs, &traceable));
    }
    let mut addrs = Addrs::new();
    for s in syms {
        addrs.entry((s.name, s.module)).or_insert(s.addr);
    }
    Ok((sel, addrs))
}

/// What each of `funcs` returns, from the kernel's BTF (a module's function from the
/// module's); `Other` (never failing) where the kernel has no BTF for it. A module
/// function of a kernel without module BTF (before 5.11: Debian 11's ext4) is read as
/// an int, the kernel's convention of 0 or -errno, so `--errors` still finds its failures.
pub fn ret_kinds(funcs: &[select::Func]) -> Vec<RetKind> {
    let Ok(vmlinux) = Btf::from_sys_fs() else {
        return vec![RetKind::Other; funcs.len()];
    };
    let mut modules: HashMap<String, Option<Btf>> = HashMap::new();
    funcs
        .iter()
        .map(|f| {
            let found = match &f.module {
                None => vmlinux.func_ret(&f.name, None),
                Some(m) => match modules.entry(m.clone()).or_insert_with(|| {
                    let data = std::fs::read(format!("/sys/kernel/btf/{m}")).ok()?;
                    Btf::parse_split(&data, &vmlinux).ok()
                }) {
                    Some(b) => b.func_ret(&f.name, Some(&vmlinux)),
                    None => Some(RetKind::Int32),
                },
            };
            found.unwrap_or(RetKind::Other)
        })
        .collect()
}

/// The functions of the ELF file `path` whose names match `globs` (all when empty), from
/// its .symtab and .dynsym; and those skipped, by reason. Only a regular file is read.
pub fn binary(
    path: &Path,
    globs: &[String],
) -> Result<(
    Vec<select::ProgramFn>,
    std::collections::BTreeMap<String, usize>,
)> {
    use object::{Object as _, ObjectSymbol as _};
    let data = elf::read(path)?;
    let file = object::File::parse(&*data).map_err(|e| {
        user_error(format!(
            "{} is not an ELF file stapr can read: {e}",
            path.display()
        ))
    })?;
    let symbols = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition() && s.size() > 0)
        .filter_map(|s| {
            let addr = s.address();
            Some((
                s.name().ok()?.to_owned(),
                addr,
                elf::file_offset(&file, addr),
            ))
        });
    let entry = Some(file.entry()).filter(|&e| e != 0);
    let (addrs, names) = elf::dwarf_noreturn(&file);
    let never = select::Noreturn { addrs, names };
    Ok(select::binary(symbols, globs, entry, &never))
}
