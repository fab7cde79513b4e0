//! `stapr calltree`'s command line: its flags, help text and options.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::{Method, Options, TreeFilter};
use crate::{
    cli::flags::{min_duration, positive_usize, CgroupArgs, OutputArgs, ProcessArgs},
    runtime::duration,
};

pub const HELP: &str = "\
Each line is SystemTap's thread_indent: microseconds since the thread's outermost traced
call, command(thread id), then '->' on entry or '<-' on return, indented one space per
level. A return whose entry was not seen (the call was running when tracing began) prints
at depth 1. Kernel functions are probed with kprobe.multi where the kernel has it, else
fentry/fexit, else kprobe/kretprobe (--attach forces one); functions that cannot be
probed (notrace, __init, ambiguous names, refused by the kernel) are skipped and counted.
--binary traces the functions of a program or library with uprobes instead, in every
process that runs it. On exit output stops at once; many probes are detached by a
background process after the prompt returns.

--min and --errors hold each thread's tree back until its outermost call returns and
print it only if that call took at least --min, or (--errors) some call in it failed:
a kernel function whose BTF return type is an integer that returned -4095..-1 (an int's
low 32 bits), or a pointer that returned an ERR_PTR; a program's function (--binary, no
BTF) that returned -4095..-1 in its low 32 bits, as C's int error codes do. Void functions
never fail. A tree that outgrows 4 MiB (64 MiB for all) is cut and counted.

EXAMPLES:
    stapr calltree --module ext4              # while `ls` runs on an ext4 mount
    stapr calltree --func 'vfs_*' -c ls       # kernel functions by name, only ls
    stapr calltree --module nfs --max-depth 3 -d 10s
    stapr calltree --module ext4 --min 10ms   # only trees slower than 10 ms
    stapr calltree --module ext4 --errors     # only trees where something failed
    stapr calltree --binary /usr/sbin/nginx --func 'ngx_http_*' -p 1234
    stapr calltree --module ext4 --cgroup system.slice/nginx.service --containers
";

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Every traceable function of this kernel module
    #[arg(short, long)]
    pub module: Option<String>,
    /// Functions whose names match this glob (repeatable): kernel functions, or with
    /// --binary the program's
    #[arg(short, long = "func", value_name = "GLOB")]
    pub funcs: Vec<String>,
    /// Trace functions of this ELF program or library with uprobes
    #[arg(short, long, value_name = "PATH")]
    pub binary: Option<std::path::PathBuf>,
    /// How kernel functions are probed
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: Attach,
    #[command(flatten)]
    pub who: ProcessArgs,
    #[command(flatten)]
    pub cgroups: CgroupArgs,
    /// Print calls only down to this depth
    #[arg(long, value_parser = positive_usize, allow_hyphen_values = true)]
    pub max_depth: Option<usize>,
    /// Print only the call trees whose outermost call took at least this long (10ms,
    /// 1.5s, 250us)
    #[arg(long, value_parser = min_duration, allow_hyphen_values = true)]
    pub min: Option<Duration>,
    /// Print only the call trees in which some call failed (returned -4095..-1 or an
    /// ERR_PTR; see below); with --min, trees that are slow or failed
    #[arg(long)]
    pub errors: bool,
    /// End each return line with the call's duration and, when it failed, its error
    /// (on with --min and --errors)
    #[arg(short = 'D', long)]
    pub durations: bool,
    /// Stop after this long (default: until Ctrl-C)
    #[arg(short, long, value_parser = duration::positive_secs, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// (benchmarks) print attach, stop-to-exit and detach times on stderr
    #[arg(long, hide = true)]
    pub timings: bool,
    /// (benchmarks) detach before exiting instead of in the background
    #[arg(long, hide = true)]
    pub detach_in_foreground: bool,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            module: a.module,
            funcs: a.funcs,
            binary: a.binary,
            attach: a.attach.into(),
            filter: a.who.into(),
            containers: a.cgroups.into(),
            max_depth: a.max_depth,
            trees: TreeFilter {
                min_ns: a.min.map(crate::runtime::nanos),
                errors: a.errors,
            },
            durations: a.durations || a.min.is_some() || a.errors,
            duration: a.duration,
            format: a.output.format,
            timings: a.timings,
            detach_in_foreground: a.detach_in_foreground,
        }
    }
}

/// `--attach`: how kernel functions are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attach {
    /// The best this kernel offers: multi, then fentry, then kprobe.
    Auto,
    /// One kprobe.multi link for all entries and one for all returns (Linux 5.18+).
    Multi,
    /// One fentry and one fexit program per function (BPF trampolines).
    Fentry,
    /// One kprobe and one kretprobe per function.
    Kprobe,
}

impl From<Attach> for Option<Method> {
    fn from(a: Attach) -> Self {
        match a {
            Attach::Auto => None,
            Attach::Multi => Some(Method::Multi),
            Attach::Fentry => Some(Method::Fentry),
            Attach::Kprobe => Some(Method::Kprobe),
        }
    }
}
