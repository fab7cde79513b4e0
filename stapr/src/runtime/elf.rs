//! ELF files as uprobes need them: read within bounds, only when they are regular files,
//! and a function's virtual address turned into the file offset the kernel attaches at.

use std::{io::Read as _, path::Path};

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
