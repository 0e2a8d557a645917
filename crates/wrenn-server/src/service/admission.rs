//! Admission control, in three rings:
//! 1. **The capsule fits the host**: no more vCPUs than host cores, no more memory than host RAM
//!    (400 `invalid_request`: asking again cannot help).
//! 2. **The team stays within its limits**: live capsules, their vCPUs and memory; snapshot count
//!    and bytes (402 with upstream's quota codes, e.g. `concurrent_sandbox_limit`).
//! 3. **The host has room now**: live capsules' memory limits within host memory × the memory
//!    overcommit, their promised disks within the data dir's free space plus what they already
//!    use × the disk overcommit, and the capsule count (503 `host_unavailable`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use wrenn_types::api::Capsule;

use super::error::{CapsuleError, CapsuleResult};
use super::pool::Warm;
use super::{Capsules, LiveCapsule};
use crate::ids;

/// Per-team limits; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeamLimits {
    /// Live capsules.
    pub capsules: u32,
    /// vCPUs of live capsules, added up.
    pub vcpus: u32,
    /// Memory limits of live capsules, added up, MiB.
    pub memory_mb: u64,
    /// Snapshots kept.
    pub snapshots: u32,
    /// Bytes of the snapshots kept, MiB.
    pub snapshot_mb: u64,
}

impl TeamLimits {
    /// No per-team limit.
    pub const NONE: Self = Self {
        capsules: 0,
        vcpus: 0,
        memory_mb: 0,
        snapshots: 0,
        snapshot_mb: 0,
    };
}

impl Default for TeamLimits {
    /// Defaults of `wrenn serve`: room for real work, not for one team to take a whole host.
    fn default() -> Self {
        Self {
            capsules: 500,
            vcpus: 256,
            memory_mb: 256 * 1024,
            snapshots: 100,
            snapshot_mb: 100 * 1024,
        }
    }
}

/// How much this host may hand out.
#[derive(Debug, Clone)]
pub struct Capacity {
    /// Host memory, MiB (0: unknown, no memory checks).
    pub host_memory_mb: u64,
    /// Host CPUs (0: unknown, no check).
    pub host_cpus: u32,
    /// Memory limits of live capsules may add up to `host_memory_mb` × this.
    pub memory_overcommit: f64,
    /// Live capsules at most.
    pub max_capsules: usize,
    /// Size of every capsule's disk, MiB (reported as `disk_size_mb`); 0 = no limit.
    pub disk_mb: u32,
    /// Promised disks may add up to (free space + space live capsules use) × this.
    pub disk_overcommit: f64,
    /// Where capsule disks live (free space is read there); `None`: no disk check.
    pub disk_dir: Option<PathBuf>,
    /// Per-team limits.
    pub team: TeamLimits,
}

/// What the live capsules of the host, and of one team, hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live capsules.
    pub capsules: u32,
    /// Their vCPUs.
    pub vcpus: u32,
    /// Their memory limits, MiB.
    pub memory_mb: u64,
}

impl Usage {
    fn add(&mut self, vcpus: u32, memory_mb: u32) {
        self.capsules += 1;
        self.vcpus += vcpus;
        self.memory_mb += u64::from(memory_mb);
    }
}

/// Why a capsule is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It can never fit this host.
    TooBig(String),
    /// The team is at a limit: upstream's quota code and a message.
    Quota(&'static str, String),
    /// The host is full now.
    Full(String),
}

impl From<Refusal> for CapsuleError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::TooBig(m) => Self::Invalid(m),
            Refusal::Quota(code, message) => Self::Quota { code, message },
            Refusal::Full(m) => Self::NoCapacity(m),
        }
    }
}

fn over(limit: u64, used: u64, asked: u64) -> bool {
    limit > 0 && used + asked > limit
}

impl Capacity {
    /// This host's memory and CPUs with the given policy; no disk limit, no team limits (set
    /// the fields for them).
    pub fn of_host(memory_overcommit: f64, max_capsules: usize) -> Self {
        let host_memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        let host_cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u32);
        Self {
            host_memory_mb,
            host_cpus,
            memory_overcommit,
            max_capsules,
            disk_mb: 0,
            disk_overcommit: 1.0,
            disk_dir: None,
            team: TeamLimits::NONE,
        }
    }

    /// Why a capsule of `vcpus` and `memory_mb` cannot join `host` (every live capsule) and
    /// `team` (the team's), if it cannot. `disk` is (free MiB, MiB live capsules use) where the
    /// disks live, when known.
    pub fn refuse(
        &self,
        host: Usage,
        team: Usage,
        vcpus: u32,
        memory_mb: u32,
        disk: Option<(u64, u64)>,
    ) -> Option<Refusal> {
        self.refuse_team(team, vcpus, memory_mb)
            .or_else(|| self.refuse_host(host, memory_mb, disk))
    }

    /// The first two rings: the capsule fits the host, the team stays within its limits.
    pub fn refuse_team(&self, team: Usage, vcpus: u32, memory_mb: u32) -> Option<Refusal> {
        if self.host_cpus > 0 && vcpus > self.host_cpus {
            return Some(Refusal::TooBig(format!(
                "vcpus must be at most {} (the host's cores)",
                self.host_cpus
            )));
        }
        if self.host_memory_mb > 0 && u64::from(memory_mb) > self.host_memory_mb {
            return Some(Refusal::TooBig(format!(
                "memory_mb must be at most {} (the host's memory)",
                self.host_memory_mb
            )));
        }
        let t = &self.team;
        if over(u64::from(t.capsules), u64::from(team.capsules), 1) {
            return Some(Refusal::Quota(
                "concurrent_sandbox_limit",
                format!("the team runs its limit of {} capsules", t.capsules),
            ));
        }
        if over(u64::from(t.vcpus), u64::from(team.vcpus), u64::from(vcpus)) {
            return Some(Refusal::Quota(
                "vcpu_limit",
                format!(
                    "the team's capsules hold {} of its {} vCPUs; {vcpus} asked",
                    team.vcpus, t.vcpus
                ),
            ));
        }
        if over(t.memory_mb, team.memory_mb, u64::from(memory_mb)) {
            return Some(Refusal::Quota(
                "memory_limit",
                format!(
                    "the team's capsules hold {} of its {} MiB; {memory_mb} MiB asked",
                    team.memory_mb, t.memory_mb
                ),
            ));
        }
        None
    }

    /// The third ring: the host has room now (`disk` as for [`Capacity::refuse`]).
    pub fn refuse_host(
        &self,
        host: Usage,
        memory_mb: u32,
        disk: Option<(u64, u64)>,
    ) -> Option<Refusal> {
        if host.capsules as usize >= self.max_capsules {
            return Some(Refusal::Full(format!(
                "this host runs its maximum of {} capsules",
                self.max_capsules
            )));
        }
        let budget = (self.host_memory_mb as f64 * self.memory_overcommit) as u64;
        if self.host_memory_mb > 0 && host.memory_mb + u64::from(memory_mb) > budget {
            return Some(Refusal::Full(format!(
                "not enough memory on this host: {} MiB of {budget} MiB reserved, \
                 {memory_mb} MiB asked",
                host.memory_mb
            )));
        }
        if let (Some((free, used)), true) = (disk, self.disk_mb > 0) {
            let promised = u64::from(host.capsules) * u64::from(self.disk_mb);
            let budget = ((free + used) as f64 * self.disk_overcommit) as u64;
            if promised + u64::from(self.disk_mb) > budget {
                return Some(Refusal::Full(format!(
                    "not enough disk on this host: {promised} MiB promised of {budget} MiB, \
                     {} MiB asked",
                    self.disk_mb
                )));
            }
        }
        None
    }

    /// Why the team cannot keep one more snapshot, if it cannot: it has `count` of `mb` MiB.
    pub fn refuse_snapshot(&self, count: u32, mb: u64) -> Option<Refusal> {
        let t = &self.team;
        if over(u64::from(t.snapshots), u64::from(count), 1) {
            return Some(Refusal::Quota(
                "snapshot_limit",
                format!("the team keeps its limit of {} snapshots", t.snapshots),
            ));
        }
        if t.snapshot_mb > 0 && mb >= t.snapshot_mb {
            return Some(Refusal::Quota(
                "snapshot_limit",
                format!(
                    "the team's snapshots take {mb} MiB of its {} MiB",
                    t.snapshot_mb
                ),
            ));
        }
        None
    }
}

/// Free MiB of the filesystem holding `dir`.
fn free_mb(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64 / (1024 * 1024))
}

/// Capsules admitted and not yet in the registry (their record is being written): admission
/// counts them, so that concurrent creates cannot all pass the same check.
#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<Vec<Admitted>>);

#[derive(Debug)]
struct Admitted {
    id: String,
    team_id: String,
    vcpus: u32,
    memory_mb: u32,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Vec<Admitted>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A capsule's place, held from its admission until it is registered (or the create is
/// given up: dropping the place frees it).
#[must_use]
pub(super) struct Reservation<'a> {
    pending: &'a Pending,
    /// The capsule's id.
    pub(super) id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.pending.lock().retain(|a| a.id != self.id);
    }
}

impl Capsules {
    /// What the live capsules (and those admitted but not yet registered) hold, on the whole
    /// host (with the warm pools) and for `team_id`; and the MiB their disks use.
    fn usage(&self, pending: &[Admitted], team_id: Option<&str>) -> (Usage, Usage, u64) {
        let (mut host, mut team, mut disk_used_mb) = (Usage::default(), Usage::default(), 0u64);
        for live in self.live.all() {
            let c = live.snapshot();
            if c.status.is_terminal() {
                continue;
            }
            host.add(c.vcpus, c.memory_mb);
            disk_used_mb += c.disk_used_mb.unwrap_or(0);
            if Some(live.team_id()) == team_id {
                team.add(c.vcpus, c.memory_mb);
            }
        }
        for a in pending {
            host.add(a.vcpus, a.memory_mb);
            if Some(a.team_id.as_str()) == team_id {
                team.add(a.vcpus, a.memory_mb);
            }
        }
        let (pooled, pooled_mb) = self.pool.reserved();
        host.capsules += pooled as u32;
        host.memory_mb += pooled_mb;
        (host, team, disk_used_mb)
    }

    /// Why the host has no room now for one more capsule of `memory_mb`, next to the live,
    /// the pending and the pooled ones, if it has none.
    fn refuse_host(&self, pending: &[Admitted], memory_mb: u32) -> Option<Refusal> {
        let (host, _, disk_used_mb) = self.usage(pending, None);
        let disk = self
            .capacity
            .disk_dir
            .as_deref()
            .and_then(free_mb)
            .map(|free| (free, disk_used_mb));
        self.capacity.refuse_host(host, memory_mb, disk)
    }

    /// Admits one more capsule of `vcpus` and `memory_mb` for `team_id`: it must fit the host
    /// and the team's limits and, unless a warm capsule of `warm_template` is taken for it,
    /// the host's room now. The check and the reservation are one step, so concurrent creates
    /// never exceed a limit together. Answers the reservation (its id is the warm capsule's,
    /// when one was taken) and the warm capsule.
    pub(super) fn reserve(
        self: &Arc<Self>,
        team_id: &str,
        vcpus: u32,
        memory_mb: u32,
        warm_template: Option<&str>,
    ) -> CapsuleResult<(Reservation<'_>, Option<Warm>)> {
        let mut pending = self.admitted.lock();
        let (_, team, _) = self.usage(&pending, Some(team_id));
        if let Some(r) = self.capacity.refuse_team(team, vcpus, memory_mb) {
            return Err(r.into());
        }
        let warm = warm_template.and_then(|t| self.take_warm(t, vcpus, memory_mb));
        if warm.is_none() {
            if let Some(r) = self.refuse_host(&pending, memory_mb) {
                return Err(r.into());
            }
        }
        let id = warm
            .as_ref()
            .map_or_else(ids::new_capsule_id, |w| w.id.clone());
        pending.push(Admitted {
            id: id.clone(),
            team_id: team_id.to_owned(),
            vcpus,
            memory_mb,
        });
        let reservation = Reservation {
            pending: &self.admitted,
            id,
        };
        Ok((reservation, warm))
    }

    /// Registers the admitted `capsule` of `team_id`, in the same step that ends its
    /// reservation (so that it is counted once, never zero times or twice).
    pub(super) fn register_admitted(
        &self,
        reservation: Reservation<'_>,
        team_id: String,
        capsule: Capsule,
    ) -> Arc<LiveCapsule> {
        let mut pending = self.admitted.lock();
        let live = self.register(team_id, capsule);
        pending.retain(|a| a.id != reservation.id);
        drop(pending);
        live
    }

    /// Whether the pool filler may make one more capsule of `memory_mb`; when it may, the
    /// room is held for it (as the pool's filling capsule) in the same step.
    pub(super) fn reserve_fill(&self, memory_mb: u32) -> bool {
        let pending = self.admitted.lock();
        if self.refuse_host(&pending, memory_mb).is_some() {
            return false;
        }
        self.pool
            .filling_mb
            .store(memory_mb as usize, Ordering::Relaxed);
        true
    }

    /// Admits one more snapshot for `team_id`, or says why not.
    pub(super) async fn admit_snapshot(&self, team_id: &str) -> CapsuleResult<()> {
        let rows = self.store.list_snapshots(team_id).await?;
        let mb = rows.iter().map(|r| r.size_bytes).sum::<u64>() / (1024 * 1024);
        match self.capacity.refuse_snapshot(rows.len() as u32, mb) {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> Capacity {
        Capacity {
            host_memory_mb: 1000,
            host_cpus: 2,
            memory_overcommit: 2.0,
            max_capsules: 3,
            disk_mb: 0,
            disk_overcommit: 1.0,
            disk_dir: None,
            team: TeamLimits::NONE,
        }
    }

    fn used(capsules: u32, vcpus: u32, memory_mb: u64) -> Usage {
        Usage {
            capsules,
            vcpus,
            memory_mb,
        }
    }

    #[test]
    fn admission_within_memory_budget_and_count() {
        let cap = cap();
        let none = Usage::default();
        assert!(cap.refuse(none, none, 1, 512, None).is_none());
        assert!(
            cap.refuse(used(2, 2, 1488), none, 1, 512, None).is_none(),
            "exactly at the budget"
        );
        assert!(matches!(
            cap.refuse(used(2, 2, 1489), none, 1, 512, None),
            Some(Refusal::Full(_))
        ));
        assert!(matches!(
            cap.refuse(used(3, 3, 0), none, 1, 32, None),
            Some(Refusal::Full(_))
        ));
        let unknown = Capacity {
            host_memory_mb: 0,
            ..cap.clone()
        };
        assert!(
            unknown
                .refuse(used(0, 0, 1 << 40), none, 1, 512, None)
                .is_none(),
            "no meminfo: no memory check"
        );
    }

    #[test]
    fn a_capsule_larger_than_the_host_is_invalid() {
        let cap = cap();
        let none = Usage::default();
        assert!(
            matches!(cap.refuse(none, none, 3, 64, None), Some(Refusal::TooBig(m)) if m.contains("at most 2"))
        );
        assert!(matches!(
            cap.refuse(none, none, 1, 1001, None),
            Some(Refusal::TooBig(_))
        ));
        assert!(cap.refuse(none, none, 2, 1000, None).is_none());
    }

    #[test]
    fn team_limits_use_upstream_quota_codes() {
        let cap = Capacity {
            team: TeamLimits {
                capsules: 2,
                vcpus: 3,
                memory_mb: 600,
                snapshots: 1,
                snapshot_mb: 10,
            },
            max_capsules: 100,
            memory_overcommit: 100.0,
            ..cap()
        };
        let host = used(2, 2, 512);
        let code = |r: Option<Refusal>| match r {
            Some(Refusal::Quota(c, _)) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(cap.refuse(host, used(2, 2, 256), 1, 64, None)),
            "concurrent_sandbox_limit"
        );
        assert_eq!(
            code(cap.refuse(host, used(1, 2, 256), 2, 64, None)),
            "vcpu_limit"
        );
        assert_eq!(
            code(cap.refuse(host, used(1, 1, 512), 1, 128, None)),
            "memory_limit"
        );
        assert!(cap.refuse(host, used(1, 1, 512), 1, 88, None).is_none());
        assert_eq!(code(cap.refuse_snapshot(1, 0)), "snapshot_limit");
        assert_eq!(code(cap.refuse_snapshot(0, 10)), "snapshot_limit");
        assert!(cap.refuse_snapshot(0, 9).is_none());
        assert!(Capacity {
            team: TeamLimits::NONE,
            ..cap
        }
        .refuse_snapshot(1000, 1 << 30)
        .is_none());
    }

    #[test]
    fn promised_disk_fits_free_space_times_overcommit() {
        let cap = Capacity {
            disk_mb: 100,
            disk_overcommit: 2.0,
            max_capsules: 100,
            memory_overcommit: 100.0,
            ..cap()
        };
        let none = Usage::default();
        // 2 live capsules promise 200 MiB; budget (50 free + 50 used) × 2 = 200.
        assert!(matches!(
            cap.refuse(used(2, 0, 0), none, 1, 1, Some((50, 50))),
            Some(Refusal::Full(m)) if m.contains("disk")
        ));
        assert!(cap
            .refuse(used(1, 0, 0), none, 1, 1, Some((50, 50)))
            .is_none());
        assert!(
            cap.refuse(used(9, 0, 0), none, 1, 1, None).is_none(),
            "unknown: no check"
        );
    }
}
