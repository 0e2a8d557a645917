//! `GET /health`: the agent is up, and what it sees of its guest.

use axum::Json;
use wrenn_types::agent::Health;

/// `GET /health`.
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_version: kernel_release(),
    })
}

/// The running kernel's release as `uname -r` prints it: the guest's own in a VM, the host's in
/// a container.
fn kernel_release() -> Option<String> {
    nix::sys::utsname::uname()
        .ok()
        .map(|u| u.release().to_string_lossy().into_owned())
        .filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_is_unames() {
        let release = kernel_release().expect("uname");
        let proc = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        assert_eq!(release, proc.trim());
    }
}
