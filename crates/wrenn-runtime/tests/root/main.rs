//! Real-capsule tests of the container runtime. They need root (namespaces, cgroups, mounts);
//! as another user each test prints why it skipped and passes.
//!
//! Run with: `sudo -E cargo test -p wrenn-runtime --test root` (CI runs as root).
//! Environment: `WRENN_AGENT` (static agent binary; default the path `scripts/build-agent.sh`
//! writes), `WRENN_CACHE` (template cache, default `/var/cache/wrenn`), `WRENN_SKIP_MINIMAL=1`
//! skips the tests that need the debootstrap template.

#[allow(dead_code)] // each test uses a subset
mod common;

mod agent_socket;
mod bench;
mod disk;
mod hardening;

mod isolation;
mod lifecycle;
mod limits;
mod microvm;
mod network;
mod recover;
mod services;
mod userns;
