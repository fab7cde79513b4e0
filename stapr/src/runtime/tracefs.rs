//! tracefs: mounting it when missing, and reading tracepoint record layouts from
//! `events/<category>/<name>/format`.

use std::path::Path;

use anyhow::{Context as _, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at /sys/kernel/tracing unless it (or debugfs's copy) is already there.
/// Classic tracepoints are attached by the id tracefs publishes.
pub fn ensure_mounted() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    super::mount("tracefs", TRACEFS).with_context(|| format!("mounting tracefs at {TRACEFS}"))?;
    Ok(())
}

/// Whether this kernel has the tracepoint `category:name`.
pub fn exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .is_dir()
}

/// Byte offset of `field` in a tracepoint record, from its `format` file.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<u32> {
    let path = Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_field_offset(&text, field)
        .with_context(|| format!("field {field} not in {}", path.display()))
}

/// Finds `offset:N;` on the line that declares `field`, e.g.
/// `field:__data_loc char[] name; offset:24; size:4; signed:0;`.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.rsplit([' ', '*']).next()?;
        let ident = ident.split('[').next()?;
        if ident != field {
            return None;
        }
        let off = rest.split_once("offset:")?.1.split_once(';')?.0;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XMIT: &str = "name: net_dev_xmit
ID: 2306
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned int len;\toffset:16;\tsize:4;\tsigned:0;
\tfield:int rc;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;
";

    #[test]
    fn finds_fields() {
        assert_eq!(parse_field_offset(XMIT, "len"), Some(16));
        assert_eq!(parse_field_offset(XMIT, "name"), Some(24));
        assert_eq!(parse_field_offset(XMIT, "skbaddr"), Some(8));
        assert_eq!(parse_field_offset(XMIT, "common_pid"), Some(4));
        assert_eq!(parse_field_offset(XMIT, "nope"), None);
    }
}
