//! Host id ranges of capsule user namespaces.
//!
//! Every capsule runs in a user namespace of its own that maps its ids 0–65535 to a host
//! range `B..B+65535` with `B = 2^20 + n × 65536`, so capsule root is an ordinary unprivileged
//! host uid, never host root, and no two live capsules share an id.
//!
//! Range `n` is claimed host-wide (tests run several runtimes at once) by creating
//! `/run/wrenn-ids/<n>` exclusively; the file names the owning data dir and capsule, so
//! `recover` keeps the claims of capsules it adopts and frees the rest. Destroy releases it.
//!
//! The namespace itself is made by [`crate::sys::make_userns`]: a short-lived helper whose
//! effective uid is `B` unshares it (so the namespace's owner, and the uid its kernel counters
//! such as inotify instances are charged to in the host namespace, is `B`: one capsule cannot
//! use up another's or the host root's), the runtime writes the mapping and bind-mounts the
//! namespace at `capsules/<id>/userns`; libcontainer joins it by that path and the overlay's
//! template layer is idmapped through it.

use std::path::Path;

use super::claims::Claims;

/// Where range claims live.
const CLAIM_DIR: &str = "/run/wrenn-ids";
/// Ids of one capsule.
pub const RANGE_SIZE: u32 = 65_536;
/// First host id of range 0 (above every id a distribution hands out).
pub const FIRST_ID: u32 = 1 << 20;
/// Number of ranges (2^20 + 16384 × 65536 stays below 2^31).
const RANGES: u32 = 16_384;

/// First host id of range `n`.
pub fn host_base(n: u32) -> u32 {
    FIRST_ID + n * RANGE_SIZE
}

/// The range claims.
pub(crate) const CLAIMS: Claims = Claims::new(CLAIM_DIR, RANGES, "id ranges");

/// Claims a free range for capsule `id` of runtime `owner`.
pub fn claim_range(owner: &Path, id: &str) -> anyhow::Result<u32> {
    CLAIMS.claim(owner, id)
}

/// Frees range `n`.
pub fn release_range(n: u32) {
    CLAIMS.release(n);
}

/// Ranges claimed by runtime `owner`: (range, capsule id).
pub fn owned_ranges(owner: &Path) -> Vec<(u32, String)> {
    CLAIMS.owned(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_disjoint_and_never_host_root() {
        assert_eq!(host_base(0), 1 << 20);
        assert_eq!(host_base(1) - host_base(0), RANGE_SIZE);
        let last = u64::from(host_base(RANGES - 1)) + u64::from(RANGE_SIZE);
        assert!(last <= i32::MAX as u64);
    }
}
