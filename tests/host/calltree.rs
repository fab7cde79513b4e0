//! `stapr calltree` against real kernels. The uprobe mode (`--binary`) runs everywhere,
//! this host included; tracing kernel functions needs kprobes or fentry, which this host's
//! kernel lacks: those tests are ignored here and run in the Debian VMs (`cargo xtask
//! vm-test` runs every test binary with `--include-ignored`).

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    assert_nothing_attached, assert_nothing_attached_within, bin, bin_dir, example, facility_works,
    field, kernel_lock, run, stapr, Outcome, Running,
};

/// One `thread_indent` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    us: u64,
    comm: String,
    tid: u32,
    depth: usize,
    entry: bool,
    func: String,
}

/// Parses `"%6d %s(%d):%*s -> func"`; panics on anything else.
fn not_a_line(line: &str) -> ! {
    panic!("not a thread_indent line: {line:?}")
}

fn parse(line: &str) -> Line {
    let (us, rest) = line
        .trim_start()
        .split_once(' ')
        .unwrap_or_else(|| not_a_line(line));
    if line.len() - line.trim_start().len() + us.len() < 6 {
        not_a_line(line);
    }
    let (head, entry, func) = match (rest.find(" -> "), rest.find(" <- ")) {
        (Some(i), _) => (&rest[..i], true, &rest[i + 4..]),
        (None, Some(i)) => (&rest[..i], false, &rest[i + 4..]),
        _ => not_a_line(line),
    };
    let who = head.trim_end_matches(' ');
    let pad = head.len() - who.len();
    let who = who.strip_suffix(':').unwrap_or_else(|| not_a_line(line));
    let open = who.rfind('(').unwrap_or_else(|| not_a_line(line));
    let tid = who[open + 1..]
        .strip_suffix(')')
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| not_a_line(line));
    Line {
        us: us.parse().unwrap_or_else(|_| not_a_line(line)),
        comm: who[..open].to_owned(),
        tid,
        depth: pad + 1,
        entry,
        func: func.to_owned(),
    }
}

/// Every return closes the innermost open entry of its thread (or, with nothing open,
/// prints at depth 1); depths follow the nesting; times never go back within a tree.
fn check_nesting(lines: &[Line]) {
    check_nesting_with(lines, |_| false);
}

/// [`check_nesting`] where the functions `entry_only` says are traced at entry only (no
/// return probe): their entry is a leaf.
fn check_nesting_with(lines: &[Line], entry_only: impl Fn(&str) -> bool) {
    let mut stacks: HashMap<u32, (Vec<&str>, u64)> = HashMap::new();
    for l in lines {
        let (stack, last_us) = stacks.entry(l.tid).or_default();
        if stack.is_empty() {
            *last_us = 0;
        }
        assert!(l.us >= *last_us, "time went back at {l:?}");
        *last_us = l.us;
        if l.entry && entry_only(&l.func) {
            assert_eq!(l.depth, stack.len() + 1, "entry-only depth at {l:?}");
        } else if l.entry {
            stack.push(&l.func);
            assert_eq!(l.depth, stack.len(), "entry depth at {l:?}");
        } else if stack.is_empty() {
            assert_eq!(l.depth, 1, "unmatched return at {l:?}");
        } else {
            assert_eq!(
                stack.last().copied(),
                Some(l.func.as_str()),
                "return at {l:?}"
            );
            assert_eq!(l.depth, stack.len(), "return depth at {l:?}");
            stack.pop();
        }
    }
}

/// The tree's lines of calltree's text output, without stapr's own notes on held trees
/// (`... N lines of x(1)'s tree cut`, `... x(1)'s tree still open at stop`).
fn tree_lines(out: &str) -> impl Iterator<Item = &str> {
    out.lines().filter(|l| !l.starts_with("... "))
}

fn lines_of(out: &str) -> Vec<Line> {
    tree_lines(out).map(parse).collect()
}

/// (depth, arrow, function) of one thread's lines.
fn shape(lines: &[Line], tid: u32) -> Vec<(usize, &'static str, String)> {
    lines
        .iter()
        .filter(|l| l.tid == tid)
        .map(|l| (l.depth, if l.entry { "->" } else { "<-" }, l.func.clone()))
        .collect()
}

fn expected_chain() -> Vec<(usize, &'static str, String)> {
    [
        (1, "->", "ct_outer"),
        (2, "->", "ct_middle"),
        (3, "->", "ct_leaf"),
        (3, "<-", "ct_leaf"),
        (2, "<-", "ct_middle"),
        (2, "->", "ct_middle"),
        (3, "->", "ct_leaf"),
        (3, "<-", "ct_leaf"),
        (2, "<-", "ct_middle"),
        (2, "->", "ct_leaf"),
        (2, "<-", "ct_leaf"),
        (1, "<-", "ct_outer"),
        (1, "->", "ct_recurse"),
        (2, "->", "ct_recurse"),
        (3, "->", "ct_recurse"),
        (3, "<-", "ct_recurse"),
        (2, "<-", "ct_recurse"),
        (1, "<-", "ct_recurse"),
    ]
    .into_iter()
    .map(|(d, a, f)| (d, a, f.to_owned()))
    .collect()
}

fn chain_path() -> String {
    bin("call_chain").to_str().unwrap().to_owned()
}

/// Runs call_chain once; returns its tid (= pid: it is single-threaded).
fn call_chain(extra: &[&str]) -> String {
    let out = run(example("call_chain").args(extra), Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    field(&out.stdout, "tid")
}

/// Stops the tracer (Ctrl-C) once its output shows what the test needs: `done`, which
/// names `what` when it never comes. Output stops at once on a stop, so the wait is for
/// the last line the test asserts.
fn stop_when(mut tracer: Running, what: &str, done: impl Fn(&str) -> bool) -> Outcome {
    tracer.wait_stdout(what, Duration::from_secs(600), done);
    stop(tracer)
}

/// `func`'s return line, in text or JSON, by any thread (`tid` None) or by `tid`.
fn returned(out: &str, func: &str, tid: Option<u32>) -> bool {
    out.lines()
        .any(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) => {
                v["func"] == func && v["event"] == "return" && tid.is_none_or(|t| v["tid"] == t)
            }
            Err(_) => {
                l.contains(&format!("<- {func}"))
                    && tid.is_none_or(|t| l.contains(&format!("({t}):")))
            }
        })
}

/// Stops the tracer (Ctrl-C) and collects its output.
fn stop(tracer: Running) -> Outcome {
    tracer.signal(libc::SIGINT);
    let out = tracer.finish(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    out
}

/// Stops a tracer that must print nothing: events its filter drops never reach the
/// ring, so nothing can come later. The pause gives a leak the time to show; a slow
/// machine can only hide a leak here, never fail a correct run.
fn stop_quiet(tracer: Running) -> Outcome {
    std::thread::sleep(Duration::from_millis(300));
    stop(tracer)
}

/// Uprobes name their function by the attach cookie: on a kernel without it (5.10)
/// `--binary` is refused in one line that names the helper. True when it was (the
/// test then has nothing more to trace).
fn binary_refused(path: &str) -> bool {
    if facility_works("bpf_get_attach_cookie") {
        return false;
    }
    integration_tests::assert_refused(
        &["calltree", "--binary", path, "--func", "ct_*"],
        &["needs the helper bpf_get_attach_cookie"],
        Duration::from_secs(60),
    );
    assert_nothing_attached();
    eprintln!("--binary refused here (no bpf_get_attach_cookie), as it must be");
    true
}

#[test]
fn binary_tree_has_the_programs_call_structure() {
    let _k = kernel_lock();
    let path = chain_path();
    if binary_refused(&path) {
        return;
    }
    let mut tracer = Running::spawn(&["calltree", "--binary", &path, "--func", "ct_*"]);
    let ready = tracer.wait_ready(Duration::from_secs(300));
    assert!(ready.contains("uprobe/uretprobe on 4 functions"), "{ready}");
    let tid: u32 = call_chain(&[]).parse().unwrap();
    let out = stop_when(tracer, "ct_outer's return", |o| {
        returned(o, "ct_outer", Some(tid))
    });
    let lines = lines_of(&out.stdout);
    assert_eq!(shape(&lines, tid), expected_chain(), "{}", out.stdout);
    assert!(lines
        .iter()
        .filter(|l| l.tid == tid)
        .all(|l| l.comm == "call_chain"));
    check_nesting(&lines);
    // Byte for byte: the width-6 time, one space per level after the colon.
    let first = out.stdout.lines().next().unwrap();
    assert!(
        first.ends_with(&format!(" call_chain({tid}): -> ct_outer")),
        "{first:?}"
    );
    assert!(out
        .stdout
        .contains(&format!("call_chain({tid}):   -> ct_leaf\n")));
    assert!(out.stderr.contains("0 lost"), "{}", out.stderr);
    assert_nothing_attached();
}

#[test]
fn binary_filters_by_pid_and_comm_in_the_kernel() {
    let _k = kernel_lock();
    let path = chain_path();
    // A copy under another name: another command, same functions.
    let other = bin_dir().join("chain_other");
    std::fs::copy(&path, &other).unwrap();
    // Each copy waits for a line on stdin before its calls, so they run only once the
    // tracer is attached (attaching takes seconds in an emulated VM).
    let start = |p: &std::path::Path| {
        let mut c = Command::new(p)
            .args(["1", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        (c, field(&line, "pid"))
    };
    let go = |mut c: std::process::Child| {
        use std::io::Write as _;
        c.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(c.wait().unwrap().success());
    };

    // -p: two processes run the traced code; only the chosen one shows.
    let (a, pid_a) = start(std::path::Path::new(&path));
    let (b, pid_b) = start(std::path::Path::new(&path));
    let mut tracer = Running::spawn(&["calltree", "--binary", &path, "-f", "ct_*", "-p", &pid_a]);
    tracer.wait_ready(Duration::from_secs(300));
    go(a);
    go(b);
    let a_tid: u32 = pid_a.parse().unwrap();
    let out = stop_when(tracer, "the chosen process's ct_outer return", |o| {
        returned(o, "ct_outer", Some(a_tid))
    });
    let lines = lines_of(&out.stdout);
    assert_eq!(shape(&lines, pid_a.parse().unwrap()), expected_chain());
    assert!(
        lines.iter().all(|l| l.tid.to_string() == pid_a),
        "pid {pid_b} leaked in:\n{}",
        out.stdout
    );

    // -c: the copy runs the same code under another command name.
    let other_path = other.to_str().unwrap().to_owned();
    let mut tracer = Running::spawn(&[
        "calltree", "--binary", &path, "-f", "ct_*", "-c", "chain_ot",
    ]);
    tracer.wait_ready(Duration::from_secs(300));
    let (c, _) = start(std::path::Path::new(&path));
    go(c);
    let out = stop_quiet(tracer);
    assert!(
        out.stdout.is_empty(),
        "call_chain is not chain_ot*:\n{}",
        out.stdout
    );
    let mut tracer = Running::spawn(&[
        "calltree",
        "--binary",
        &other_path,
        "-f",
        "ct_*",
        "-c",
        "n_oth",
    ]);
    tracer.wait_ready(Duration::from_secs(300));
    let (d, pid_d) = start(&other);
    go(d);
    let d_tid: u32 = pid_d.parse().unwrap();
    let out = stop_when(tracer, "chain_other's ct_outer return", |o| {
        returned(o, "ct_outer", Some(d_tid))
    });
    let lines = lines_of(&out.stdout);
    assert_eq!(shape(&lines, pid_d.parse().unwrap()), expected_chain());
    assert!(lines.iter().all(|l| l.comm == "chain_other"));
    let _ = std::fs::remove_file(&other);
    assert_nothing_attached();
}

#[test]
fn binary_json_and_max_depth() {
    let _k = kernel_lock();
    let path = chain_path();
    let mut tracer = Running::spawn(&[
        "calltree",
        "--binary",
        &path,
        "-f",
        "ct_*",
        "--max-depth",
        "2",
        "--format",
        "json",
    ]);
    tracer.wait_ready(Duration::from_secs(300));
    let tid: u64 = call_chain(&[]).parse().unwrap();
    let out = stop_when(tracer, "ct_outer's return", |o| {
        returned(o, "ct_outer", Some(tid as u32))
    });
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let mine: Vec<_> = events.iter().filter(|e| e["tid"] == tid).collect();
    let want: Vec<_> = expected_chain()
        .into_iter()
        .filter(|(d, _, _)| *d <= 2)
        .collect();
    assert_eq!(mine.len(), want.len(), "{}", out.stdout);
    for (e, (depth, arrow, func)) in mine.iter().zip(&want) {
        assert_eq!(e["depth"], *depth as u64, "{e}");
        assert_eq!(e["event"], if *arrow == "->" { "entry" } else { "return" });
        assert_eq!(e["func"], func.as_str());
        assert_eq!(e["comm"], "call_chain");
        assert_eq!(e["pid"], tid);
        assert_eq!(e["unmatched"], false);
        assert!(e["ts_ns"].as_u64().unwrap() > 0 && e["us"].is_u64());
    }
    assert_nothing_attached();
}

/// What `args_echo a "b c" d` prints when nothing disturbs it.
fn args_echo_is_intact() {
    let out = run(
        example("args_echo").args(["a", "b c", "d"]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "argc=4\nargv=a b c d\ntwice=16\n", "{out:?}");
}

/// The selection of a test that traces a program's every function: all of them where the
/// kernel attaches them in one link, else the entry point and a few (one probe pair each
/// takes minutes to attach and detach under emulation).
fn every_function() -> Vec<&'static str> {
    if facility_works("uprobe.multi") {
        Vec::new()
    } else {
        vec![
            "-f", "_start", "-f", "main", "-f", "ct_*", "-f", "ae_*", "-f", "exit",
        ]
    }
}

/// The JSON events' nesting: every return closes the innermost open entry of its thread,
/// an entry marked `entry_only` opens nothing, depths follow; no return is unmatched.
fn check_json_nesting(events: &[serde_json::Value]) {
    let mut stacks: HashMap<u64, Vec<&str>> = HashMap::new();
    for e in events {
        let stack = stacks.entry(e["tid"].as_u64().unwrap()).or_default();
        let func = e["func"].as_str().unwrap();
        let depth = e["depth"].as_u64().unwrap() as usize;
        assert_eq!(e["unmatched"], false, "{e}");
        if e["event"] == "entry" {
            if e["entry_only"] == true {
                assert_eq!(depth, stack.len() + 1, "{e}");
            } else {
                stack.push(func);
                assert_eq!(depth, stack.len(), "{e}");
            }
        } else {
            assert_eq!(stack.last().copied(), Some(func), "{e}");
            assert_eq!(depth, stack.len(), "{e}");
            stack.pop();
        }
    }
}

#[test]
fn every_function_traced_leaves_the_program_intact() {
    let _k = kernel_lock();
    let selection = every_function();
    for prog in ["args_echo", "call_chain"] {
        let path = bin(prog).to_str().unwrap().to_owned();
        let mut args = vec!["calltree", "--binary", &path, "--format", "json"];
        args.extend(&selection);
        let mut tracer = Running::spawn(&args);
        let ready = tracer.wait_ready(Duration::from_secs(300));
        // The entry point never returns to a caller: its "return address" is argc.
        assert!(
            ready.contains("at entry only, no return probe: _start"),
            "{ready}"
        );
        let pid: u64 = if prog == "args_echo" {
            args_echo_is_intact();
            0
        } else {
            let out = run(example("call_chain").arg("3"), Duration::from_secs(60));
            assert!(out.status.success(), "{out:?}");
            assert!(out.stdout.contains("ns_per_call="), "{out:?}");
            field(&out.stdout, "pid").parse().unwrap()
        };
        let out = stop_when(tracer, "main's entry", |o| {
            o.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|e| {
                    e["func"] == "main" && e["event"] == "entry" && (pid == 0 || e["pid"] == pid)
                })
        });
        assert!(
            out.stderr
                .contains(", 0 lost (ring buffer full), 0 returns whose entry was not seen"),
            "{}",
            out.stderr
        );
        // Output stops at once on a stop: under emulation a last line may be cut short.
        let whole = &out.stdout[..out.stdout.rfind('\n').map_or(0, |i| i + 1)];
        let events: Vec<serde_json::Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|e: &serde_json::Value| pid == 0 || e["pid"] == pid)
            .collect();
        check_json_nesting(&events);
        let seen = |f: &str, event: &str| {
            events
                .iter()
                .filter(|e| e["func"] == f && e["event"] == event)
                .count()
        };
        assert!(seen("_start", "entry") >= 1, "{}", out.stdout);
        assert_eq!(seen("_start", "return"), 0, "{}", out.stdout);
        assert!(seen("main", "entry") >= 1, "{}", out.stdout);
    }
    assert_nothing_attached();
}

#[test]
fn a_function_dwarf_marks_noreturn_gets_no_return_probe() {
    let _k = kernel_lock();
    let path = bin("args_echo").to_str().unwrap().to_owned();
    let mut tracer = Running::spawn(&["calltree", "--binary", &path, "-f", "ae_*", "-f", "_start"]);
    let ready = tracer.wait_ready(Duration::from_secs(300));
    // ae_exit is named in no list: only its debug information says it never returns.
    assert!(
        ready.contains("2 at entry only, no return probe: _start, ae_exit"),
        "{ready}"
    );
    args_echo_is_intact();
    let out = stop_when(tracer, "ae_exit's entry", |o| o.contains("-> ae_exit"));
    let lines: Vec<Line> = tree_lines(&out.stdout).map(parse).collect();
    check_nesting_with(&lines, |f| f == "_start" || f == "ae_exit");
    let shape: Vec<(usize, bool, &str)> = lines
        .iter()
        .map(|l| (l.depth, l.entry, l.func.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, true, "_start"),
            (1, true, "ae_twice"),
            (1, false, "ae_twice"),
            (1, true, "ae_twice"),
            (1, false, "ae_twice"),
            (1, true, "ae_exit"),
        ],
        "{}",
        out.stdout
    );
    assert_nothing_attached();
}

#[test]
fn kill_9_detaches_every_uprobe_at_once() {
    let _k = kernel_lock();
    let chain = chain_path();
    let mut args = vec!["calltree", "--binary", &chain];
    let multi = facility_works("uprobe.multi");
    let selection = every_function();
    args.extend(&selection);
    let mut tracer = Running::spawn(&args);
    let ready = tracer.wait_ready(Duration::from_secs(300));
    if multi {
        assert!(ready.contains("in two uprobe.multi links"), "{ready}");
    }
    // 2 s on hardware; emulation (the VMs) makes everything several times slower.
    let bound = Duration::from_secs(if std::env::var_os("STAPR_VM").is_some() {
        10
    } else {
        2
    });
    let t = Instant::now();
    tracer.signal(libc::SIGKILL);
    let out = tracer.finish(if multi {
        bound
    } else {
        Duration::from_secs(300)
    });
    assert_eq!(out.status.code(), None, "killed: {out:?}");
    if multi {
        assert!(t.elapsed() < bound, "reaped after {:?}", t.elapsed());
        assert_nothing_attached_within(bound);
    } else {
        // One probe pair per function: the kernel detaches them one grace period at a
        // time as the killed process's descriptors close.
        assert_nothing_attached();
    }
    args_echo_is_intact();
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let _k = kernel_lock();
    let in_vm = std::env::var_os("STAPR_VM").is_some();
    let kernel_case: (&[&str], &str) = if in_vm {
        (&["--module", "ext5"], "unknown module 'ext5'")
    } else {
        (&["--module", "ext4"], "neither kprobes")
    };
    let chain = chain_path();
    let dir = std::env::temp_dir().join(format!("stapr-ct-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo").to_str().unwrap().to_owned();
    let text = dir.join("notes.txt").to_str().unwrap().to_owned();
    let c_fifo = std::ffi::CString::new(fifo.as_str()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    std::fs::write(&text, "not a program\n").unwrap();
    for (args, says) in [
        (&[][..], "nothing to trace"),
        (
            &["--binary", "/nonexistent/prog"],
            "cannot read /nonexistent/prog",
        ),
        (&["--binary", &chain, "-f", "zz_*"], "no function of"),
        (&["--binary", "/dev/zero"], "not a regular file"),
        (&["--binary", "/"], "not a regular file"),
        (&["--binary", &fifo], "not a regular file"),
        (&["--binary", &text], "not an ELF file"),
        (&["--binary", &chain, "--module", "ext4"], "use one"),
        (
            &["--attach", "sideways", "--module", "ext4"],
            "one of: auto, multi, fentry, kprobe",
        ),
        kernel_case,
    ] {
        let out = run(stapr().arg("calltree").args(args), Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {out:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Every command name length the kernel keeps loads (the in-kernel match is one path
    // per offset for the verifier, whatever the length).
    // (A kernel function where uprobes cannot name theirs: 5.10.)
    let target: Vec<&str> = if facility_works("bpf_get_attach_cookie") {
        vec!["--binary", &chain, "-f", "ct_leaf"]
    } else {
        vec!["-f", "vfs_fsync"]
    };
    // Under emulation each run takes half a minute (5.10): the shortest, the lengths
    // either side of the first word's end, and the longest.
    let lengths: Vec<usize> = if in_vm {
        vec![1, 7, 8, 15]
    } else {
        (1..=15).collect()
    };
    for len in lengths {
        let comm = "python3-worker-".get(..len).unwrap();
        let out = run(
            stapr()
                .arg("calltree")
                .args(&target)
                .args(["-c", comm, "-d", "0.2"]),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(0), "-c {comm:?}: {out:?}");
        // (Besides the lines naming a method passed over for a helper this kernel lacks.)
        let said = out
            .stderr
            .lines()
            .filter(|l| !l.contains(" unavailable ("))
            .count();
        assert!(said <= 3, "-c {comm:?}: {out:?}");
    }
    if !in_vm {
        let out = run(
            stapr().args(["calltree", "--module", "ext4"]),
            Duration::from_secs(60),
        );
        for hint in ["stapr doctor", "--binary"] {
            assert!(out.stderr.contains(hint), "{out:?}");
        }
    }
    assert_nothing_attached();
}

/// Runs the workload in a directory of an ext4 filesystem (the VM's image).
fn ext4_workload() -> Vec<&'static str> {
    let dir = bin_dir();
    let file = dir.join("calltree-write.txt");
    let ls = run(
        Command::new("ls").arg("-la").arg(&dir),
        Duration::from_secs(30),
    );
    assert!(ls.status.success(), "{ls:?}");
    let write = run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo hello > {}", file.display())),
        Duration::from_secs(30),
    );
    assert!(write.status.success(), "{write:?}");
    let sync = run(&mut Command::new("sync"), Duration::from_secs(60));
    assert!(sync.status.success(), "{sync:?}");
    let _ = std::fs::remove_file(&file);
    vec!["ls", "sh", "sync"]
}

/// Whether fentry/fexit programs can name their function and its return value here
/// (Debian's 5.10 has fentry but neither helper).
fn fentry_usable() -> bool {
    [
        "fentry/fexit",
        "bpf_get_func_ip in fentry",
        "bpf_get_func_ret",
    ]
    .iter()
    .all(|f| facility_works(f))
}

/// The method the kernel should get by default: kprobe.multi where it exists (from 6.12
/// on in these tests' amd64 kernels), else fentry/fexit, else kprobes (5.10).
fn default_methods() -> &'static [&'static str] {
    if facility_works("kprobe.multi") {
        &["kprobe.multi"]
    } else if fentry_usable() {
        &["fentry/fexit", "kprobe/kretprobe"]
    } else {
        &["kprobe/kretprobe"]
    }
}

/// Traces while the workload runs; with `every_command`, each of ls, sh and sync must
/// show ext4 calls.
fn trace_ext4(args: &[&str], every_command: bool) -> (String, Outcome, Duration) {
    let mut all = vec!["calltree"];
    all.extend_from_slice(args);
    let mut tracer = Running::spawn(&all);
    let ready = tracer.wait_ready(Duration::from_secs(600));
    let commands = ext4_workload();
    let wanted: Vec<&str> = if every_command {
        commands.clone()
    } else {
        vec![]
    };
    tracer.wait_stdout(
        "ext4 calls and returns of the workload's commands",
        Duration::from_secs(600),
        |o| {
            let lines: Vec<&str> = o.lines().filter(|l| l.contains(" ext4_")).collect();
            !lines.is_empty()
                && wanted.iter().all(|c| {
                    let by = |arrow: &str| {
                        lines
                            .iter()
                            .any(|l| l.contains(&format!(" {c}(")) && l.contains(arrow))
                    };
                    by("-> ext4_") && by("<- ext4_")
                })
        },
    );
    tracer.signal(libc::SIGINT);
    let t = Instant::now();
    let out = tracer.finish(Duration::from_secs(60));
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = lines_of(&out.stdout);
    check_nesting(&lines);
    let ext4 = lines.iter().filter(|l| l.func.starts_with("ext4_")).count();
    assert!(ext4 > 0, "no ext4 calls at all; stderr:\n{}", out.stderr);
    for comm in commands.into_iter().filter(|_| every_command) {
        let entries = lines
            .iter()
            .filter(|l| l.comm == comm && l.entry && l.func.starts_with("ext4_"))
            .count();
        let returns = lines
            .iter()
            .filter(|l| l.comm == comm && !l.entry && l.func.starts_with("ext4_"))
            .count();
        assert!(
            entries > 0 && returns > 0,
            "no ext4 calls by {comm} ({entries} entries, {returns} returns); stderr:\n{}",
            out.stderr
        );
    }
    (ready, out, took)
}

#[test]
#[ignore = "needs kprobes or fentry: runs in the Debian VMs"]
fn module_ext4_while_ls_write_and_sync_run() {
    let _k = kernel_lock();
    let (ready, out, took) = trace_ext4(&["--module", "ext4"], true);
    let method = default_methods()
        .iter()
        .find(|m| ready.contains(&format!(": {m} on ")))
        .unwrap_or_else(|| panic!("expected one of {:?}: {ready}", default_methods()));
    assert!(ready.contains("functions of ext4"), "{ready}");
    assert!(out.stderr.contains(" 0 lost"), "{}", out.stderr);
    // The prompt comes back at once, however many probes: detaching goes on in the
    // background, and is finished well within the limit below. (Detaching in the
    // foreground took 2-3 minutes under emulation: the bound is ten times a slow exit.)
    assert!(
        took < Duration::from_secs(30),
        "{method}: exit took {took:?}"
    );
    // Under emulation the background detach of ~800 fentry pairs takes 2-3 minutes.
    assert_nothing_attached_within(Duration::from_secs(600));
}

#[test]
#[ignore = "needs kprobes or fentry: runs in the Debian VMs"]
fn every_attach_method_traces_ext4() {
    let _k = kernel_lock();
    let all = [
        ("fentry", "fentry/fexit"),
        ("kprobe", "kprobe/kretprobe"),
        ("multi", "kprobe.multi"),
    ];
    let offered = ext4_methods();
    // A method this kernel cannot run is refused in one line that names what it lacks.
    for (flag, name) in all.iter().filter(|(f, _)| !offered.contains(f)) {
        integration_tests::assert_refused(
            &["calltree", "--func", "ext4_sync_file", "--attach", flag],
            &[name],
            Duration::from_secs(120),
        );
        assert_nothing_attached();
    }
    for (flag, name) in all.into_iter().filter(|(f, _)| offered.contains(f)) {
        // A few functions every file access goes through: attaching all of them per
        // function takes a minute under emulation, and the module test does that already.
        let (ready, _out, _) = trace_ext4(
            &[
                "--func",
                "ext4_file_*",
                "--func",
                "ext4_*readdir*",
                "--func",
                "ext4_sync_*",
                "--attach",
                flag,
            ],
            false,
        );
        assert!(ready.contains(&format!(": {name} on ")), "{ready}");
        assert_nothing_attached_within(Duration::from_secs(180));
    }
}

/// A line of `--min`/`--errors`/`-D` output: depth, entry, function, and for a return its
/// duration in ns and error name (`ENOTEMPTY`).
#[derive(Debug, Clone, PartialEq)]
struct Timed {
    comm: String,
    depth: usize,
    entry: bool,
    func: String,
    duration_ns: Option<f64>,
    error: Option<String>,
}

fn timed(line: &str) -> Timed {
    let (head, entry, rest) = match (line.find(" -> "), line.find(" <- ")) {
        (Some(i), _) => (&line[..i], true, &line[i + 4..]),
        (None, Some(i)) => (&line[..i], false, &line[i + 4..]),
        _ => panic!("not a tree line: {line:?}"),
    };
    let who = head.trim_start().split_once(' ').map_or("", |(_, w)| w);
    let comm = who.split('(').next().unwrap_or_default().to_owned();
    let depth = who.len() - who.trim_end_matches(' ').len() + 1;
    let (func, tail) = match rest.find(" (") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, ""),
    };
    let duration_ns = tail.split_once(')').map(|(d, _)| {
        let (n, unit) = d.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let n: f64 = n.parse().unwrap_or_else(|_| panic!("{line:?}"));
        n * match unit {
            "ns" => 1.0,
            "us" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            _ => panic!("unit in {line:?}"),
        }
    });
    let error = tail.split_once(") -").map(|(_, e)| e.trim().to_owned());
    Timed {
        comm,
        depth,
        entry,
        func: func.to_owned(),
        duration_ns,
        error,
    }
}

/// `calltree --binary call_trees` with `args` while call_trees handles one request of each
/// kind (fast, failing, slow), stopped once `last`'s return is printed.
fn trees_of_call_trees(args: &[&str], last: &str) -> Outcome {
    let path = bin("call_trees").to_str().unwrap().to_owned();
    let mut all = vec![
        "calltree",
        "--binary",
        &path,
        "-f",
        "ct_*",
        "-f",
        "call_trees::pars*",
    ];
    all.extend_from_slice(args);
    let mut tracer = Running::spawn(&all);
    tracer.wait_ready(Duration::from_secs(300));
    let mut prog = example("call_trees")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    prog.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert!(prog.wait().unwrap().success());
    stop_when(tracer, &format!("{last}'s return"), |o| {
        returned(o, last, None)
    })
}

#[test]
fn binary_min_prints_only_the_slow_tree() {
    let _k = kernel_lock();
    let out = trees_of_call_trees(&["--min", "100ms"], "ct_slow");
    let lines: Vec<Timed> = tree_lines(&out.stdout).map(timed).collect();
    let shape: Vec<(usize, bool, &str)> = lines
        .iter()
        .map(|l| (l.depth, l.entry, l.func.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, true, "ct_slow"),
            (2, true, "ct_wait"),
            (2, false, "ct_wait"),
            (1, false, "ct_slow")
        ],
        "{}",
        out.stdout
    );
    let outer = lines[3]
        .duration_ns
        .expect("the outermost return's duration");
    assert!(outer >= 200e6, "{outer} ns: {}", out.stdout);
    assert!(
        out.stderr
            .contains("trees: 1 printed (0 with lines cut), 2 not slow, 0 still open"),
        "{}",
        out.stderr
    );
    assert_nothing_attached();
}

#[test]
fn binary_errors_prints_only_the_failing_tree() {
    let _k = kernel_lock();
    let out = trees_of_call_trees(&["--errors"], "ct_failing");
    let lines: Vec<Timed> = tree_lines(&out.stdout).map(timed).collect();
    let shape: Vec<(bool, &str, Option<&str>)> = lines
        .iter()
        .map(|l| (l.entry, l.func.as_str(), l.error.as_deref()))
        .collect();
    assert_eq!(
        shape,
        [
            (true, "ct_failing", None),
            (true, "ct_open_missing", None),
            (false, "ct_open_missing", Some("ENOENT")),
            (false, "ct_failing", Some("ENOENT")),
        ],
        "{}",
        out.stdout
    );
    assert!(lines.iter().all(|l| l.comm == "call_trees"));
    assert_nothing_attached();
}

#[test]
fn binary_durations_json_and_demangled_names() {
    let _k = kernel_lock();
    let out = trees_of_call_trees(&["-D"], "ct_slow");
    // Every tree, every return with its duration; the Rust function by its own name.
    let lines: Vec<Timed> = tree_lines(&out.stdout).map(timed).collect();
    assert_eq!(lines.len(), 12, "{}", out.stdout);
    assert!(lines
        .iter()
        .filter(|l| !l.entry)
        .all(|l| l.duration_ns.is_some()));
    assert!(
        lines
            .iter()
            .any(|l| l.func == "call_trees::parse" && l.depth == 2),
        "{}",
        out.stdout
    );
    let out = trees_of_call_trees(&["--format", "json"], "ct_slow");
    let returns: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "return")
        .collect();
    assert_eq!(returns.len(), 6, "{}", out.stdout);
    let missing = returns
        .iter()
        .find(|v| v["func"] == "ct_open_missing")
        .unwrap();
    assert_eq!(missing["ret"], -2, "{missing}");
    assert_eq!(missing["error"], "ENOENT", "{missing}");
    let slow = returns.iter().find(|v| v["func"] == "ct_slow").unwrap();
    assert!(
        slow["duration_ns"].as_u64().unwrap() >= 200_000_000,
        "{slow}"
    );
    assert_nothing_attached();
}

#[test]
fn a_runaway_tree_is_cut_and_memory_stays_bounded() {
    use std::io::Write as _;
    let _k = kernel_lock();
    let path = bin("call_trees").to_str().unwrap().to_owned();
    if binary_refused(&path) {
        return;
    }
    let mut tracer = Running::spawn(&[
        "calltree", "--binary", &path, "-f", "ct_flood", "-f", "ct_tick", "--min", "1ns",
    ]);
    tracer.wait_ready(Duration::from_secs(300));
    let mut prog = example("call_trees")
        .args(["1", "flood", "300000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let said = integration_tests::lines_of(prog.stdout.take().unwrap());
    let mut input = prog.stdin.take().unwrap();
    input.write_all(b"go\n").unwrap();
    let mut max_rss_kb = 0;
    let rss = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    // While the flood runs (the fastest machine takes seconds, emulation minutes).
    integration_tests::wait_until("the flood's end", Duration::from_secs(900), || {
        max_rss_kb = max_rss_kb.max(rss(tracer.pid()).unwrap_or(0));
        said.try_iter().any(|l| l == "flooded").then_some(())
    });
    // Caught up: a tree the program makes after the flood has been printed (one tick per
    // second until one arrives whole: under a full ring, a tick's events may be lost).
    let caught_up = |out: &str| out.contains("): <- ct_tick");
    integration_tests::wait_until("a tree after the flood's", Duration::from_secs(900), || {
        max_rss_kb = max_rss_kb.max(rss(tracer.pid()).unwrap_or(0));
        if caught_up(&tracer.stdout_so_far()) {
            return Some(());
        }
        input.write_all(b"tick\n").unwrap();
        // Paces the ticks only; the wait is for the line.
        std::thread::sleep(Duration::from_secs(1));
        None
    });
    drop(input);
    prog.wait().unwrap();
    let out = stop(tracer);
    // 600,000 lines of about 45 bytes would be 27 MB; one tree may hold 4 MiB. The
    // flood's tree ends at its own return or, when that return was among the events
    // lost, at the stop, marked as still open.
    assert!(
        out.stdout
            .contains("'s tree cut: it outgrew stapr's buffer"),
        "{}\n{}",
        integration_tests::tail(&out.stdout, 300),
        out.stderr
    );
    assert!(
        out.stdout.len() < 5 << 20,
        "{} bytes printed",
        out.stdout.len()
    );
    assert!(
        out.stderr.contains(" printed (1 with lines cut)"),
        "{}",
        out.stderr
    );
    assert!(
        max_rss_kb < 100 * 1024,
        "stapr's RSS reached {max_rss_kb} KiB"
    );
    eprintln!("max RSS {max_rss_kb} KiB; {}", out.stderr);
    assert_nothing_attached();
}

/// The ext4 methods this kernel offers, as `--attach` flags.
fn ext4_methods() -> Vec<&'static str> {
    let mut m = vec!["kprobe"];
    if fentry_usable() {
        m.push("fentry");
    }
    if facility_works("kprobe.multi") {
        m.push("multi");
    }
    m
}

#[test]
#[ignore = "needs kprobes or fentry: runs in the Debian VMs"]
fn errors_show_the_failed_rmdir_with_every_method() {
    let _k = kernel_lock();
    let dir = bin_dir().join("calltree-rmdir");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for method in ext4_methods() {
        let mut tracer = Running::spawn(&[
            "calltree",
            "--func",
            "ext4_rmdir",
            "--func",
            "ext4_empty_dir",
            "--func",
            "ext4_*readdir*",
            "--func",
            "ext4_lookup",
            "--errors",
            "--attach",
            method,
        ]);
        tracer.wait_ready(Duration::from_secs(300));
        let ls = run(Command::new("ls").arg(&dir), Duration::from_secs(30));
        assert!(ls.status.success(), "{ls:?}");
        let rmdir = run(Command::new("rmdir").arg(&dir), Duration::from_secs(30));
        assert!(
            !rmdir.status.success(),
            "rmdir of a non-empty directory: {rmdir:?}"
        );
        let out = stop_when(tracer, "rmdir's ext4_rmdir return", |o| {
            o.lines()
                .any(|l| l.contains(" rmdir(") && l.contains("<- ext4_rmdir"))
        });
        let lines: Vec<Timed> = tree_lines(&out.stdout).map(timed).collect();
        assert!(
            lines.iter().any(|l| l.comm == "rmdir"
                && !l.entry
                && l.func == "ext4_rmdir"
                && l.error.as_deref() == Some("ENOTEMPTY")),
            "{method}: no failed ext4_rmdir:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            lines.iter().all(|l| l.comm != "ls"),
            "{method}: a successful ls printed:\n{}",
            out.stdout
        );
        assert_nothing_attached_within(Duration::from_secs(180));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "needs kprobes or fentry: runs in the Debian VMs"]
fn min_shows_only_the_slow_ext4_trees() {
    let _k = kernel_lock();
    let mut tracer = Running::spawn(&[
        "calltree",
        "--func",
        "ext4_*getattr",
        "--func",
        "ext4_file_write_iter",
        "--func",
        "ext4_sync_fs",
        "--func",
        "ext4_writepages",
        "--func",
        "ext4_sync_file",
        "--min",
        "1ms",
    ]);
    tracer.wait_ready(Duration::from_secs(300));
    let file = bin_dir().join("calltree-big.dat");
    let dd = run(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", file.display()))
            .args(["bs=1M", "count=16"]),
        Duration::from_secs(120),
    );
    assert!(dd.status.success(), "{dd:?}");
    for _ in 0..20 {
        let ls = run(
            Command::new("ls").arg("-l").arg(bin_dir()),
            Duration::from_secs(30),
        );
        assert!(ls.status.success(), "{ls:?}");
    }
    let sync = run(&mut Command::new("sync"), Duration::from_secs(120));
    assert!(sync.status.success(), "{sync:?}");
    let out = stop_when(tracer, "a write-back or sync tree", |o| {
        o.contains("): <- ext4_writepages") || o.contains("): <- ext4_sync_fs")
    });
    let _ = std::fs::remove_file(&file);
    let lines: Vec<Timed> = tree_lines(&out.stdout).map(timed).collect();
    let outermost: Vec<&Timed> = lines.iter().filter(|l| !l.entry && l.depth == 1).collect();
    assert!(
        outermost
            .iter()
            .any(|l| l.func == "ext4_writepages" || l.func == "ext4_sync_fs"),
        "no write-back or sync tree:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    for l in &outermost {
        let d = l.duration_ns.unwrap_or_else(|| panic!("{l:?}"));
        assert!(d >= 1e6, "a tree under 1 ms printed: {l:?}\n{}", out.stdout);
    }
    assert!(out.stderr.contains(" not slow"), "{}", out.stderr);
    assert_nothing_attached_within(Duration::from_secs(180));
}
