#![no_std]
// This file exists so that `agent/build.rs` can list this crate as a build-dependency:
// cargo then rebuilds the agent when the kernel programs change.
