//! Call trees: a server-like program with three kinds of request, for calltree's `--min`
//! and `--errors`. Prints `pid=<pid>`, waits for a line on standard input, then ROUNDS
//! times (default 1) handles:
//!
//!   a fast request:    ct_fast -> call_trees::parse (a Rust-mangled name)
//!   a failed request:  ct_failing -> ct_open_missing (returns -2, as C's -ENOENT)
//!   a slow request:    ct_slow -> ct_wait (sleeps 200 ms), last
//!
//! With `flood N`, instead: one request, ct_flood, that makes N calls of ct_tick (a tree
//! that outgrows any buffer); then `flooded` on standard output, and for each further
//! line on standard input one ct_tick on a new thread (a tree of its own, after the
//! flood's: once a tracer shows it, it has read everything before it).
//!
//! usage: call_trees [ROUNDS] [flood N]

use std::{hint::black_box, io::BufRead, time::Duration};

/// A Rust function with a mangled symbol: `call_trees::parse` demangled.
#[inline(never)]
fn parse(x: u64) -> u64 {
    black_box(x.wrapping_mul(3) + 1)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_fast(x: u64) -> u64 {
    black_box(parse(x))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_wait(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(black_box(ms)));
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_slow(x: u64) -> u64 {
    black_box(ct_wait(200) + x)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_open_missing(_x: u64) -> i32 {
    black_box(-2)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_failing(x: u64) -> i32 {
    black_box(ct_open_missing(x))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_tick(x: u64) -> u64 {
    black_box(x + 1)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_flood(n: u64) -> u64 {
    (0..n).fold(0, |a, i| {
        // A pause now and then, as a busy server has: the tracer's reader gets to drain
        // the ring, so the tree's outermost return is not among the events lost.
        if i % 1000 == 999 {
            std::thread::sleep(Duration::from_millis(2));
        }
        black_box(ct_tick(a ^ i))
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
    let flood: Option<u64> = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("flood"), Some(n)) => n.parse().ok(),
        _ => None,
    };
    println!("pid={}", std::process::id());
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if let Some(n) = flood {
        black_box(ct_flood(n));
        println!("flooded");
        let mut more = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut more)
            .is_ok_and(|n| n > 0)
        {
            let _ = std::thread::spawn(|| black_box(ct_tick(0))).join();
            more.clear();
        }
        return;
    }
    for i in 0..rounds {
        black_box(ct_fast(i));
        black_box(ct_failing(i));
        black_box(ct_slow(i));
    }
}
