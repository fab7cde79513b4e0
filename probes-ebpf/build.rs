// Rebuild the eBPF objects when bpf-linker changes: cargo does not track the linker.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
