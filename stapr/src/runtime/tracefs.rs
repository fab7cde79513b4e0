//! tracefs: mounting it when missing, and reading tracepoint record layouts from
//! `events/<category>/<name>/format`.

use std::path::Path;

use anyhow::{Context as _, Result};

use super::user_error;

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes tracefs usable, for what needs it (classic tracepoints are attached by the ids it
/// publishes; calltree reads its list of traceable functions): mounts it at
/// /sys/kernel/tracing unless it (or debugfs's copy) is there. A user who may not read or
/// mount it gets one line saying what to add. BTF tracepoints and fentry need none of it.
pub fn ensure_mounted() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    if let Err(e) = std::fs::read_dir(TRACEFS) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Err(user_error(format!(
                "this user may not read tracefs ({TRACEFS}), where the kernel publishes the tracepoint ids stapr attaches by: run as root, or add CAP_DAC_READ_SEARCH to CAP_BPF and CAP_PERFMON"
            )));
        }
    }
    super::mount("tracefs", TRACEFS).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            user_error(format!(
                "tracefs is not mounted at {TRACEFS} and this user may not mount it (that needs CAP_SYS_ADMIN): mount it once as root, or run stapr as root"
            ))
        } else {
            anyhow::Error::from(e).context(format!("mounting tracefs at {TRACEFS}"))
        }
    })
}

/// Whether this kernel has the tracepoint `category:name` (tracefs must be usable:
/// [`ensure_mounted`]).
pub fn exists(category: &str, name: &str) -> bool {
    Path::new(TRACEFS)
        .join("events")
        .join(category)
        .join(name)
        .is_dir()
}

/// Byte offset of `field` in a tracepoint record, from its `format` file.
pub fn field_offset(category: &str, name: &str, field: &str) -> Result<u32> {
    ensure_mounted()?;
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
