//! Pure: which kernel functions `--module` and `--func` mean, from the text of
//! /proc/kallsyms and tracefs' available_filter_functions (the functions ftrace, and so
//! kprobe.multi, fentry and kprobes, can attach to); and which functions of a program
//! `--binary` means, from its ELF symbols. `sources` reads those files.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A kernel function to trace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Func {
    pub name: String,
    /// The module it belongs to; None for vmlinux.
    pub module: Option<String>,
}

/// The functions chosen, and those left out by reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub funcs: Vec<Func>,
    pub skipped: BTreeMap<String, usize>,
    /// Said once on stderr (the built-in fallback).
    pub note: Option<String>,
}

pub const NOT_TRACEABLE: &str = "not traceable (notrace, inlined or __init)";
pub const AMBIGUOUS: &str = "ambiguous (several functions share the name)";
pub const ALIAS: &str = "aliases (another name of a function traced)";

/// `name` or `name [module]` lines of available_filter_functions.
pub fn parse_traceable(text: &str) -> Vec<Func> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?;
            let module = parts
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            Some(Func {
                name: name.to_owned(),
                module,
            })
        })
        .collect()
}

/// A text symbol of /proc/kallsyms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sym {
    pub addr: u64,
    pub name: String,
    pub module: Option<String>,
}

/// The function (text) symbols of /proc/kallsyms: `addr type name [module]`.
pub fn parse_kallsyms(text: &str) -> Vec<Sym> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            if !matches!(kind, "t" | "T") {
                return None;
            }
            let name = parts.next()?;
            let module = parts
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            Some(Sym {
                addr,
                name: name.to_owned(),
                module,
            })
        })
        .collect()
}

/// Shell-style glob: `*` any run, `?` one character.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Names that more than one traceable function carries: attaching by name would pick one
/// of them at random.
fn ambiguous(traceable: &[Func]) -> BTreeSet<&str> {
    let mut count: HashMap<&str, u32> = HashMap::new();
    for f in traceable {
        *count.entry(f.name.as_str()).or_default() += 1;
    }
    count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(name, _)| name)
        .collect()
}

/// Keeps `wanted` functions that are traceable and unambiguous; counts the rest.
fn finish(wanted: BTreeSet<Func>, traceable: &[Func], note: Option<String>) -> Selection {
    let ok: BTreeSet<&Func> = traceable.iter().collect();
    let dup = ambiguous(traceable);
    let mut s = Selection {
        note,
        ..Default::default()
    };
    for f in wanted {
        let reason = if !ok.contains(&f) {
            NOT_TRACEABLE
        } else if dup.contains(f.name.as_str()) {
            AMBIGUOUS
        } else {
            s.funcs.push(f);
            continue;
        };
        *s.skipped.entry(reason.to_owned()).or_default() += 1;
    }
    s
}

/// What the kernel says about modules.
pub struct Modules<'a> {
    /// Loaded modules (/proc/modules).
    pub loaded: &'a [String],
    /// Modules built into the kernel (modules.builtin, /sys/module without initstate).
    pub builtin: &'a [String],
}

/// The functions of `module`: a loaded module's own text symbols, or, for a module built
/// into the kernel, the traceable vmlinux functions named `module_*` and `__module_*`.
/// Unknown modules are an error naming the closest known ones.
pub fn module(
    module: &str,
    traceable: &[Func],
    kallsyms: &[Sym],
    mods: &Modules,
) -> Result<Selection, String> {
    let module = module.replace('-', "_");
    if mods.loaded.contains(&module) {
        let wanted: BTreeSet<Func> = kallsyms
            .iter()
            .filter(|s| s.module.as_deref() == Some(module.as_str()))
            // Padding and CFI stubs in front of functions, not functions.
            .filter(|s| !s.name.starts_with("__pfx_") && !s.name.starts_with("__cfi_"))
            .map(|s| Func {
                name: s.name.clone(),
                module: Some(module.clone()),
            })
            .collect();
        return Ok(finish(wanted, traceable, None));
    }
    if mods.builtin.contains(&module) {
        let (a, b) = (format!("{module}_"), format!("__{module}_"));
        let wanted: BTreeSet<Func> = traceable
            .iter()
            .filter(|f| f.module.is_none() && (f.name.starts_with(&a) || f.name.starts_with(&b)))
            .cloned()
            .collect();
        let note = format!(
            "{module} is built into this kernel: tracing its functions named {module}_* and __{module}_*"
        );
        return Ok(finish(wanted, traceable, Some(note)));
    }
    let known: BTreeSet<&str> = mods
        .loaded
        .iter()
        .chain(mods.builtin)
        .map(String::as_str)
        .collect();
    let near = closest(&module, known.into_iter());
    Err(if near.is_empty() {
        format!("unknown module '{module}': neither loaded nor built into this kernel (see /proc/modules)")
    } else {
        format!(
            "unknown module '{module}': neither loaded nor built into this kernel; did you mean {}?",
            near.join(", ")
        )
    })
}

/// Traceable kernel functions matching any of `globs`.
pub fn functions(globs: &[String], traceable: &[Func]) -> Selection {
    let wanted: BTreeSet<Func> = traceable
        .iter()
        .filter(|f| globs.iter().any(|g| glob(g, &f.name)))
        .cloned()
        .collect();
    finish(wanted, traceable, None)
}

/// Adds `more` to `into` (`--module` and `--func` together).
pub fn merge(into: &mut Selection, more: Selection) {
    let have: BTreeSet<Func> = into.funcs.iter().cloned().collect();
    into.funcs
        .extend(more.funcs.into_iter().filter(|f| !have.contains(f)));
    for (k, v) in more.skipped {
        *into.skipped.entry(k).or_default() += v;
    }
    into.note = into.note.take().or(more.note);
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Up to three names close to `name` (edit distance, or sharing its start).
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<String> {
    let limit = (name.len() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            let d = distance(name, c);
            let prefix = name.len() >= 3 && c.starts_with(&name[..3]);
            (d <= limit || prefix).then_some((d, c))
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_owned())
        .collect()
}

/// A function of a program: its symbol (what uprobes attach by) and the name shown,
/// demangled for C++ and Rust.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProgramFn {
    pub symbol: String,
    pub shown: String,
    /// Where it starts in the file (what uprobe.multi attaches at); None when no loadable
    /// segment maps it.
    pub offset: Option<u64>,
    /// Why it gets no return probe (traced at entry only), if it must not have one.
    pub entry_only: Option<&'static str>,
}

/// Why a function is traced at entry only.
pub const ENTRY_POINT: &str = "the ELF entry point";
pub const NO_RETURN: &str = "does not return";
pub const RETURNS_TWICE: &str = "returns twice or switches stacks";

/// Functions that never return to their caller. A return probe replaces the return
/// address on the stack; where nothing returns through it the probe only leaks, or (a
/// panic or exception unwinding through it) breaks the unwinder.
const NORETURN: &[&str] = &[
    "exit",
    "_exit",
    "_Exit",
    "quick_exit",
    "abort",
    "__stack_chk_fail",
    "__stack_chk_fail_local",
    "__chk_fail",
    "__fortify_fail",
    "__assert_fail",
    "__assert_perror_fail",
    "__libc_fatal",
    "__libc_start_main",
    "__libc_start_call_main",
    "pthread_exit",
    "__pthread_exit",
    "err",
    "errx",
    "verr",
    "verrx",
    "__cxa_throw",
    "__cxa_rethrow",
    "_Unwind_Resume",
    "__rust_start_panic",
    "rust_panic",
    "__rust_abort",
    "std::process::exit",
    "std::process::abort",
];
/// Demangled prefixes of Rust's functions that never return.
const NORETURN_PREFIXES: &[&str] = &[
    "core::panicking::",
    "std::panicking::begin_panic",
    "std::panicking::rust_panic",
];
/// The setjmp/longjmp and context-switch family: setjmp returns a second time through the
/// return address it saved (a replaced one, under a return probe), the others leave on
/// another stack.
const TWICE: &[&str] = &[
    "setjmp",
    "_setjmp",
    "__setjmp",
    "sigsetjmp",
    "__sigsetjmp",
    "longjmp",
    "_longjmp",
    "__longjmp",
    "siglongjmp",
    "__longjmp_chk",
    "____longjmp_chk",
    "getcontext",
    "setcontext",
    "swapcontext",
    "makecontext",
    "__start_context",
];

/// What the file's debug information says does not return: addresses of functions it
/// defines, names of those it only declares.
#[derive(Debug, Default)]
pub struct Noreturn {
    pub addrs: BTreeSet<u64>,
    pub names: BTreeSet<String>,
}

/// Whether the function at `addr`, named `symbol` (shown as `shown`), must be traced at
/// entry only, and why. `entry` is the ELF entry point, when the file has one; `never`
/// what its DWARF marks noreturn.
pub fn entry_only(
    symbol: &str,
    shown: &str,
    addr: u64,
    entry: Option<u64>,
    never: &Noreturn,
) -> Option<&'static str> {
    if entry == Some(addr) || symbol == "_start" {
        return Some(ENTRY_POINT);
    }
    if never.addrs.contains(&addr)
        || never.names.contains(symbol)
        || NORETURN.contains(&symbol)
        || NORETURN.contains(&shown)
        || NORETURN_PREFIXES.iter().any(|p| shown.starts_with(p))
    {
        return Some(NO_RETURN);
    }
    TWICE.contains(&symbol).then_some(RETURNS_TWICE)
}

/// The symbol demangled, if it is a Rust or C++ one.
pub fn demangle(symbol: &str) -> Option<String> {
    if let Ok(d) = rustc_demangle::try_demangle(symbol) {
        // `{:#}` leaves the hash out.
        return Some(format!("{d:#}"));
    }
    let d = cpp_demangle::Symbol::new(symbol).ok()?.demangle().ok()?;
    (d != symbol).then_some(d)
}

/// The functions of a program whose names (mangled or demangled) match `globs` (all when
/// empty), from its defined, sized text symbols (name, address). A name defined at
/// several addresses is skipped: uprobes attach by name. `entry` is the ELF entry point.
pub fn binary(
    symbols: impl IntoIterator<Item = (String, u64, Option<u64>)>,
    globs: &[String],
    entry: Option<u64>,
    never: &Noreturn,
) -> (Vec<ProgramFn>, BTreeMap<String, usize>) {
    // (symbol, shown) -> every (address, file offset) it is defined at.
    type Places = BTreeSet<(u64, Option<u64>)>;
    let mut by_name: BTreeMap<(String, String), Places> = BTreeMap::new();
    for (symbol, addr, offset) in symbols {
        let shown = demangle(&symbol).unwrap_or_else(|| symbol.clone());
        if globs.is_empty() || globs.iter().any(|g| glob(g, &symbol) || glob(g, &shown)) {
            by_name
                .entry((symbol, shown))
                .or_default()
                .insert((addr, offset));
        }
    }
    let mut skipped = BTreeMap::new();
    let mut funcs = Vec::new();
    // Names of one address (aliases): one pair of probes, or each event would come twice
    // and the second return would find its entry closed.
    let mut taken = BTreeSet::new();
    for ((symbol, shown), addrs) in by_name {
        match addrs.first() {
            Some(&(addr, offset)) if addrs.len() == 1 => {
                if !taken.insert(addr) {
                    *skipped.entry(ALIAS.to_owned()).or_default() += 1;
                    continue;
                }
                funcs.push(ProgramFn {
                    entry_only: entry_only(&symbol, &shown, addr, entry, never),
                    offset,
                    symbol,
                    shown,
                })
            }
            _ => *skipped.entry(AMBIGUOUS.to_owned()).or_default() += 1,
        }
    }
    (funcs, skipped)
}

/// Module names in modules.builtin (`kernel/fs/ext4/ext4.ko` → `ext4`).
pub fn parse_builtin(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let file = l.trim().rsplit('/').next()?;
            Some(file.strip_suffix(".ko")?.replace('-', "_"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEABLE: &str = "\
vfs_read
vfs_write
ext4_file_open [ext4]
ext4_readdir [ext4]
__ext4_journal_start_sb [ext4]
jbd2_journal_start [jbd2]
dup_name
dup_name [ext4]
btrfs_sync_file
";

    const KALLSYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81200000 T vfs_read
ffffffff81200100 T vfs_write
ffffffff81300000 D some_data
ffffffffc0100000 t __pfx_ext4_file_open\t[ext4]
ffffffffc0100010 t ext4_file_open\t[ext4]
ffffffffc0100200 t ext4_readdir\t[ext4]
ffffffffc0100400 T __ext4_journal_start_sb\t[ext4]
ffffffffc0100600 t ext4_fill_super\t[ext4]
ffffffffc0100800 t dup_name\t[ext4]
ffffffffc0200000 T jbd2_journal_start\t[jbd2]
";

    fn names(s: &Selection) -> Vec<&str> {
        s.funcs.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn loaded_module_functions() {
        let traceable = parse_traceable(TRACEABLE);
        let syms = parse_kallsyms(KALLSYMS);
        let loaded = vec!["ext4".to_owned(), "jbd2".to_owned()];
        let mods = Modules {
            loaded: &loaded,
            builtin: &[],
        };
        let s = module("ext4", &traceable, &syms, &mods).unwrap();
        assert_eq!(
            names(&s),
            ["__ext4_journal_start_sb", "ext4_file_open", "ext4_readdir"]
        );
        assert!(s.funcs.iter().all(|f| f.module.as_deref() == Some("ext4")));
        // ext4_fill_super is __init (not in the traceable list); dup_name is ambiguous.
        assert_eq!(s.skipped[NOT_TRACEABLE], 1);
        assert_eq!(s.skipped[AMBIGUOUS], 1);
        assert_eq!(s.note, None);
    }

    #[test]
    fn builtin_module_falls_back_to_names() {
        let traceable =
            parse_traceable("ext4_file_open\n__ext4_journal_start_sb\next4x\nvfs_read\n");
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n");
        let mods = Modules {
            loaded: &[],
            builtin: &builtin,
        };
        let s = module("ext4", &traceable, &[], &mods).unwrap();
        assert_eq!(names(&s), ["__ext4_journal_start_sb", "ext4_file_open"]);
        assert!(s.note.unwrap().contains("built into this kernel"));
    }

    #[test]
    fn unknown_module_names_the_closest() {
        let loaded = vec!["ext4".to_owned(), "xfs".to_owned(), "nfsd".to_owned()];
        let builtin = vec!["ext2".to_owned()];
        let mods = Modules {
            loaded: &loaded,
            builtin: &builtin,
        };
        let err = module("ext5", &[], &[], &mods).unwrap_err();
        assert!(err.contains("unknown module 'ext5'"), "{err}");
        assert!(err.contains("did you mean ext2, ext4?"), "{err}");
        let err = module("zzzzzzzz", &[], &[], &mods).unwrap_err();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn globs() {
        assert!(glob("vfs_*", "vfs_read"));
        assert!(glob("*_read", "vfs_read"));
        assert!(glob("v?s_re*d", "vfs_read"));
        assert!(glob("*", ""));
        assert!(!glob("vfs_*", "do_vfs_read"));
        assert!(!glob("vfs_read", "vfs_readv"));
        let traceable = parse_traceable(TRACEABLE);
        let s = functions(&["vfs_*".into(), "jbd2_*".into()], &traceable);
        assert_eq!(names(&s), ["jbd2_journal_start", "vfs_read", "vfs_write"]);
        let mut m = functions(&["vfs_read".into()], &traceable);
        merge(&mut m, s);
        assert_eq!(names(&m), ["vfs_read", "jbd2_journal_start", "vfs_write"]);
    }

    #[test]
    fn kallsyms_keeps_text_symbols() {
        let syms = parse_kallsyms(KALLSYMS);
        assert!(syms.iter().all(|s| s.name != "some_data"));
        let f = syms.iter().find(|s| s.name == "ext4_readdir").unwrap();
        assert_eq!(f.addr, 0xffffffffc0100200);
        assert_eq!(f.module.as_deref(), Some("ext4"));
    }

    #[test]
    fn binary_functions_by_glob_without_ambiguous_names() {
        let syms = [
            ("main", 1),
            ("ct_leaf", 2),
            ("ct_mid", 3),
            ("ct_leaf", 2),
            ("dup", 4),
            ("dup", 5),
        ]
        .map(|(n, a)| (n.to_owned(), a, None));
        let symbols = |funcs: Vec<ProgramFn>| -> Vec<String> {
            funcs.into_iter().map(|f| f.symbol).collect()
        };
        let (funcs, skipped) = binary(syms.clone(), &[], None, &Noreturn::default());
        assert_eq!(
            symbols(funcs),
            ["ct_leaf", "ct_mid", "main"],
            "one per function, sorted"
        );
        assert_eq!(skipped.get(AMBIGUOUS), Some(&1));
        let (funcs, skipped) = binary(syms, &["ct_*".to_owned()], None, &Noreturn::default());
        assert_eq!(symbols(funcs), ["ct_leaf", "ct_mid"]);
        assert!(skipped.is_empty());
    }

    #[test]
    fn functions_that_do_not_return_through_their_caller_get_no_return_probe() {
        let syms = [
            ("_start", 0x1040),
            ("entry_here", 0x1000),
            ("main", 0x1100),
            ("exit", 0x1200),
            ("_setjmp", 0x1300),
            ("_ZN4core9panicking9panic_fmt17h0123456789abcdefE", 0x1400),
            ("_ZN3std7process4exit17h0123456789abcdefE", 0x1500),
            ("my_fatal", 0x1700),
            ("declared_elsewhere", 0x1800),
        ]
        .map(|(n, a)| (n.to_owned(), a, None));
        let never = Noreturn {
            addrs: [0x1700].into(),
            names: ["declared_elsewhere".to_owned()].into(),
        };
        let (funcs, _) = binary(syms, &[], Some(0x1000), &never);
        let why: Vec<(&str, Option<&str>)> = funcs
            .iter()
            .map(|f| (f.shown.as_str(), f.entry_only))
            .collect();
        assert_eq!(
            why,
            [
                ("std::process::exit", Some(NO_RETURN)),
                ("core::panicking::panic_fmt", Some(NO_RETURN)),
                ("_setjmp", Some(RETURNS_TWICE)),
                ("_start", Some(ENTRY_POINT)),
                ("declared_elsewhere", Some(NO_RETURN)),
                ("entry_here", Some(ENTRY_POINT)),
                ("exit", Some(NO_RETURN)),
                ("main", None),
                ("my_fatal", Some(NO_RETURN)),
            ]
        );
    }

    #[test]
    fn rust_and_cpp_names_are_demangled_and_matched_either_way() {
        let rust = "_ZN10call_trees7handler17h0123456789abcdefE";
        let cpp = "_ZN6server7handlerEi";
        assert_eq!(demangle(rust).as_deref(), Some("call_trees::handler"));
        assert_eq!(demangle(cpp).as_deref(), Some("server::handler(int)"));
        assert_eq!(demangle("ct_leaf"), None);
        let syms = [
            (rust.to_owned(), 1, None),
            (cpp.to_owned(), 2, None),
            ("plain".to_owned(), 3, None),
        ];
        let (funcs, _) = binary(
            syms.clone(),
            &["server::*".to_owned()],
            None,
            &Noreturn::default(),
        );
        assert_eq!(funcs[0].shown, "server::handler(int)");
        assert_eq!(funcs[0].symbol, cpp);
        let (funcs, _) = binary(
            syms,
            &["_ZN10call_trees*".to_owned()],
            None,
            &Noreturn::default(),
        );
        assert_eq!(funcs[0].shown, "call_trees::handler");
    }
}
