//! `stapr calltree`'s command line: its flags, help text and options.

use std::time::Duration;

use clap::Args as ClapArgs;

use super::{Attach, Options};
use crate::{
    cli::{positive_usize, OutputArgs, ProcessArgs},
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

EXAMPLES:
    stapr calltree --module ext4              # while `ls` runs on an ext4 mount
    stapr calltree --func 'vfs_*' -c ls       # kernel functions by name, only ls
    stapr calltree --module nfs --max-depth 3 -d 10s
    stapr calltree --binary /usr/sbin/nginx --func 'ngx_http_*' -p 1234
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
    /// Print calls only down to this depth
    #[arg(long, value_parser = positive_usize, allow_hyphen_values = true)]
    pub max_depth: Option<usize>,
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
            attach: a.attach,
            filter: a.who.into(),
            max_depth: a.max_depth,
            duration: a.duration,
            format: a.output.format,
            timings: a.timings,
            detach_in_foreground: a.detach_in_foreground,
        }
    }
}
