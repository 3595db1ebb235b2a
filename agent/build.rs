//! Builds the kernel programs of `agent-ebpf` for the bpf target and leaves the object
//! in OUT_DIR, where `probe.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf(
        [package],
        aya_build::Toolchain::Custom("nightly-2026-07-01"),
    )
}
