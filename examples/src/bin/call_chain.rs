//! Call chain: a program with a known call structure, for calltree's uprobe mode.
//! Prints `pid=<pid> tid=<tid>`, waits DELAY_MS (default 0; `-`: until a line arrives on
//! standard input), then makes, ROUNDS times (default 1):
//!
//!   ct_outer -> ct_middle -> ct_leaf, ct_middle -> ct_leaf, ct_leaf
//!   ct_recurse(2) -> ct_recurse(1) -> ct_recurse(0)
//!
//! Then prints `ns_per_call=<ns>`: the time of the rounds over the 9 calls each makes.
//!
//! usage: call_chain [ROUNDS] [DELAY_MS or -]
//! The functions are unmangled and never inlined, so their symbols are those names.

use std::hint::black_box;

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_leaf(x: u64) -> u64 {
    black_box(x.wrapping_mul(31).wrapping_add(7))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_middle(x: u64) -> u64 {
    black_box(ct_leaf(x) + 1)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_outer(x: u64) -> u64 {
    let a = ct_middle(x);
    let b = ct_middle(a);
    black_box(ct_leaf(b))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ct_recurse(n: u64) -> u64 {
    if n == 0 {
        return black_box(0);
    }
    black_box(ct_recurse(n - 1) + 1)
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i);
    let rounds: u64 = arg(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    println!("pid={} tid={tid}", std::process::id());
    match arg(2).as_deref() {
        Some("-") => {
            let _ = std::io::stdin().read_line(&mut String::new());
        }
        ms => std::thread::sleep(std::time::Duration::from_millis(
            ms.and_then(|a| a.parse().ok()).unwrap_or(0),
        )),
    }
    let mut acc = 0u64;
    let t = std::time::Instant::now();
    for i in 0..rounds {
        acc = acc.wrapping_add(ct_outer(i));
        acc = acc.wrapping_add(ct_recurse(2));
    }
    let ns = t.elapsed().as_nanos() as f64;
    black_box(acc);
    // The reader may have gone after the first line (the tests read only the pid).
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "ns_per_call={:.1}",
        ns / (rounds * 9) as f64
    );
}
