//! `stapr disktop`'s command line: its flags, help text and options.

use clap::Args as ClapArgs;

use super::{Method, Options, SortKey};
use crate::cli::flags::{positive_usize, CgroupArgs, IntervalArgs, OutputArgs, ProcessArgs};

pub const HELP: &str = "\
Counts the bytes that read and write calls return for files on a block device or a network
filesystem (NFS, SMB/CIFS, Ceph, 9p, AFS), page-cache hits included, like SystemTap's
disktop. Pipes, sockets, tmpfs, /proc, FUSE and other files without either are not
counted. DEVICE is the kernel's name for the block device under the file's filesystem, or
a network mount's server side from mountinfo (nfs1:/export/www); JSON adds fstype. Where the kernel allows fexit, the probes sit on vfs_read and
vfs_write: every read(2), write(2), pread64(2) and pwrite64(2) goes through them, and so
does the kernel's own use of those functions; readv/writev-style calls do not. Elsewhere
(this is said at start) they are the exit tracepoints of read, write, pread64, pwrite64,
readv, writev, preadv, pwritev, preadv2 and pwritev2. On both, sendfile (a read of the
file), splice (its file side) and copy_file_range (a read and a write) are counted at
their syscall tracepoints. Not seen: io_uring, aio, and reads through mmap (page faults,
not bytes moved).

--block counts requests issued to the devices instead (block:block_rq_issue): physical
I/O on block devices (network filesystems have none), charged to the task running when the
request was issued. Write-back of dirty pages is
issued by the kernel's flusher threads and shows under them, not under the writer.

EXAMPLES:
    stapr disktop                 # every 5 s, top 10 by bytes
    stapr disktop -i 1 -r 20      # every second, top 20
    stapr disktop -c postgres     # only commands containing 'postgres'
    stapr disktop --block         # physical I/O per device
    stapr disktop --containers --cgroup system.slice   # services only, named
";

#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(flatten)]
    pub every: IntervalArgs,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub cgroups: CgroupArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Order rows by bytes (largest first) or pid
    #[arg(short, long, value_enum, default_value = "bytes")]
    pub sort: SortKey,
    /// Rows per report
    #[arg(short, long, default_value = "10", value_parser = positive_usize, allow_hyphen_values = true)]
    pub rows: usize,
    /// Count requests issued to block devices instead of read/write calls (same as
    /// --probe block)
    #[arg(long)]
    pub block: bool,
    /// How reads and writes are seen
    #[arg(long, value_enum, default_value = "auto")]
    pub probe: Probe,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            every: a.every.into(),
            filter: a.who.into(),
            containers: a.cgroups.into(),
            format: a.output.format,
            sort: a.sort,
            rows: a.rows,
            method: if a.block {
                Some(Method::Block)
            } else {
                a.probe.into()
            },
        }
    }
}

/// `--probe`: how reads and writes are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Probe {
    /// fexit on vfs_read/vfs_write where the kernel allows it, else syscall tracepoints.
    Auto,
    /// fexit on vfs_read and vfs_write (BPF trampolines).
    Fexit,
    /// Exit tracepoints of the read and write syscalls.
    Syscalls,
    /// Requests issued to block devices (block:block_rq_issue).
    Block,
}

impl From<Probe> for Option<Method> {
    fn from(p: Probe) -> Self {
        match p {
            Probe::Auto => None,
            Probe::Fexit => Some(Method::Fexit),
            Probe::Syscalls => Some(Method::Syscalls),
            Probe::Block => Some(Method::Block),
        }
    }
}
