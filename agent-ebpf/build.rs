/// The eBPF binary is linked by `bpf-linker`, which cargo does not know about:
/// rebuild when it changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!(
            "cargo:warning=bpf-linker not found on PATH ({e}); run `cargo xtask test` to install it"
        ),
    }
}
