# The reloadscope agent image, built from the repository root:
#   docker build -t ghcr.io/reloadscope/reloadscope:0.1.0 .
# Not built in CI (no container engine there); deploy/README.md says how it is used.

# Build: xtask/src/prereqs.rs' recipe, less what only the tests need.
FROM docker.io/library/rust:1-bookworm AS build
# LLVM 22 (bookworm-security) for bpf-linker, which also links zstd and zlib.
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
# The pinned nightly of xtask/src/cmd.rs: aya needs rust 1.98, the eBPF crate is
# built with -Z build-std=core (rust-src), and its LLVM (22) must be bpf-linker's.
ARG TOOLCHAIN=nightly-2026-07-01
RUN rustup toolchain install "$TOOLCHAIN" --profile minimal -c rust-src
RUN PATH="/usr/lib/llvm-22/bin:$PATH" LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
    cargo "+$TOOLCHAIN" install bpf-linker --version 0.13.0 --locked \
      --no-default-features --features llvm-22
WORKDIR /src
COPY . .
# What `cargo xtask build` runs once its prerequisites are there; the xtask itself
# would also install the test tools and mount tracefs, which a build cannot.
RUN RUSTUP_TOOLCHAIN="$TOOLCHAIN" cargo build -p reloadscope --release --locked \
 && cp target/release/reloadscope /reloadscope

# Runtime: glibc and libgcc, no shell, no package manager, no setuid binary.
FROM gcr.io/distroless/cc-debian13
COPY --from=build /reloadscope /reloadscope
# uid 0, not distroless' nonroot user: Kubernetes puts the capabilities the agent
# needs in the effective set of uid 0 only, and the state file's hostPath belongs to
# root. The DaemonSet drops every other capability (deploy/base/daemonset.yaml).
USER 0
EXPOSE 9741
ENTRYPOINT ["/reloadscope"]
CMD ["agent"]
