# The reloadscope agent image, built from the repository root:
#   docker build -t ghcr.io/reloadscope/reloadscope:0.1.0 .
# `cargo xtask image` makes the same image's files into an archive with no container
# engine (deploy/README.md, "Image"). Not built in CI: no container engine there.

# Build: what `cargo xtask image` checks for (xtask/src/prereqs.rs, `ensure_build`;
# an xtask test holds this file to it and to the image's config), none of the test
# tools of `cargo xtask prereqs`.
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
# xtask (built by this stage's stable toolchain) finds its build prerequisites, builds
# the release agent with the pinned one (`cargo build -p reloadscope --release
# --locked`) and lays out the image's root filesystem in /rootfs with the code that
# packs `cargo xtask image`'s archive: /usr/bin/reloadscope, the shared objects and
# the ELF interpreter it loads (this stage's glibc and libgcc), /etc/passwd and
# /etc/group for root.
RUN cargo xtask image --rootfs /rootfs agent

# Runtime: that root filesystem alone. No shell, no package manager, no setuid binary.
FROM scratch
COPY --from=build /rootfs /
# As `docker run` sets it: `kubectl exec <pod> -- reloadscope inspect` finds it.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# uid 0: Kubernetes puts the capabilities the agent needs in the effective set of
# uid 0 only, and the state file's hostPath belongs to root. The DaemonSet drops
# every other capability (deploy/base/daemonset.yaml).
USER 0
EXPOSE 9741/tcp
ENTRYPOINT ["/usr/bin/reloadscope"]
CMD ["agent"]
