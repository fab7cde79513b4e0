//! ELF files as uprobes need them: read within bounds, only when they are regular files,
//! and a function's virtual address turned into the file offset the kernel attaches at.

use std::{collections::BTreeSet, io::Read as _, path::Path};

use anyhow::Result;

use super::user_error;

/// The largest ELF file stapr reads: a program or library, not a disk image.
const ELF_MAX: u64 = 2 << 30;

/// Reads `path` if it is a regular file of at most [`ELF_MAX`] bytes; anything else (a
/// FIFO, a device, a directory) is refused before it is opened, in one line.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| user_error(format!("cannot read {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(user_error(format!(
            "{shown} is not a regular file: --binary takes a program or a library"
        )));
    }
    if meta.len() > ELF_MAX {
        return Err(user_error(format!(
            "{shown} is {} MiB: larger than any program stapr traces",
            meta.len() >> 20
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(ELF_MAX).read_to_end(&mut data))
        .map_err(|e| user_error(format!("cannot read {shown}: {e}")))?;
    Ok(data)
}

/// The file offset of the virtual address `addr`: inside the loadable segment that maps it.
pub fn file_offset(file: &object::File, addr: u64) -> Option<u64> {
    use object::{Object as _, ObjectSegment as _};
    file.segments().find_map(|seg| {
        let (start, size) = seg.file_range();
        let va = seg.address();
        (addr >= va && addr - va < size).then(|| addr - va + start)
    })
}

/// The largest DWARF stapr reads for `noreturn`: beyond it, only the names it knows.
const DWARF_MAX: u64 = 256 << 20;

/// The functions the file's DWARF marks `noreturn` (`DW_AT_noreturn`: C's `_Noreturn`
/// and `__attribute__((noreturn))`, Rust's `-> !`): their addresses, and the names of
/// those only declared there (defined in another file).
pub fn dwarf_noreturn(file: &object::File) -> (BTreeSet<u64>, BTreeSet<String>) {
    use object::{Object as _, ObjectSection as _};
    let mut out = (BTreeSet::new(), BTreeSet::new());
    let big = file
        .section_by_name(".debug_info")
        .is_none_or(|s| s.size() > DWARF_MAX);
    if big {
        return out;
    }
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<[u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or_default())
    };
    let Ok(sections) = gimli::DwarfSections::load(load) else {
        return out;
    };
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, endian));
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        while let Ok(Some((_, e))) = entries.next_dfs() {
            if e.tag() != gimli::DW_TAG_subprogram
                || !matches!(
                    e.attr_value(gimli::DW_AT_noreturn),
                    Ok(Some(gimli::AttributeValue::Flag(true)))
                )
            {
                continue;
            }
            let low = e.attr_value(gimli::DW_AT_low_pc).ok().flatten();
            match low.and_then(|v| dwarf.attr_address(&unit, v).ok().flatten()) {
                Some(addr) => {
                    out.0.insert(addr);
                }
                None => {
                    let name = [gimli::DW_AT_linkage_name, gimli::DW_AT_name]
                        .into_iter()
                        .find_map(|at| e.attr_value(at).ok().flatten())
                        .and_then(|v| dwarf.attr_string(&unit, v).ok())
                        .map(|s| s.to_string_lossy().into_owned());
                    out.1.extend(name);
                }
            }
        }
    }
    out
}

/// The file offset of the function `name` in the ELF file `path` (dynamic or static
/// symbol).
pub fn symbol_offset(path: &Path, name: &str) -> Result<u64> {
    use object::{Object as _, ObjectSymbol as _};
    let data = read(path)?;
    let file = object::File::parse(&*data)
        .map_err(|e| anyhow::anyhow!("{} is not an ELF file: {e}", path.display()))?;
    let addr = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(name) && s.is_definition())
        .map(|s| s.address())
        .ok_or_else(|| anyhow::anyhow!("no {name} in {}", path.display()))?;
    file_offset(&file, addr).ok_or_else(|| anyhow::anyhow!("{name} is in no loadable segment"))
}
