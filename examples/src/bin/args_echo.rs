//! Args echo: a program entered the C way (`_start` → `__libc_start_main` → `main(argc,
//! argv)`), no Rust runtime in between, that prints what it was given: `argc=N` and
//! `argv=a b c`, then calls `ae_twice` twice, and leaves through `ae_exit`, which never
//! returns (`-> !`: DWARF marks it noreturn). A return probe on the entry point would
//! overwrite argc (it sits where a return address would); calltree must leave it intact.
//!
//! usage: args_echo [ARGS...]
#![no_main]

use std::ffi::{c_char, c_int, CStr};

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ae_twice(x: c_int) -> c_int {
    std::hint::black_box(x * 2)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn ae_exit(code: c_int) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// # Safety
/// Called by the C runtime with its argc and argv.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    let mut args = Vec::new();
    for i in 1..argc.max(0) as usize {
        // SAFETY: the C runtime passes argc valid, NUL-terminated argv entries.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
        args.push(arg.to_string_lossy().into_owned());
    }
    println!("argc={argc}");
    println!("argv={}", args.join(" "));
    println!("twice={}", ae_twice(ae_twice(argc)));
    ae_exit(0)
}
