//! Admission control: a create is refused while the live capsules' memory limits would exceed
//! host memory × the overcommit factor, or their count the maximum.

use super::error::{CapsuleError, CapsuleResult};
use super::Capsules;

/// How much this host may hand out.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Host memory, MiB.
    pub host_memory_mb: u64,
    /// Memory limits of live capsules may add up to `host_memory_mb` × this.
    pub memory_overcommit: f64,
    /// Live capsules at most.
    pub max_capsules: usize,
    /// Size of every capsule's disk, MiB (reported as `disk_size_mb`); 0 = no limit.
    pub disk_mb: u32,
}

impl Capacity {
    /// This host's memory with the given policy; capsules get no disk limit (set
    /// [`Capacity::disk_mb`] for one).
    pub fn of_host(memory_overcommit: f64, max_capsules: usize) -> Self {
        let host_memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        Self {
            host_memory_mb,
            memory_overcommit,
            max_capsules,
            disk_mb: 0,
        }
    }

    /// Why a capsule with `memory_mb` cannot be admitted next to `live` capsules reserving
    /// `reserved_mb`, if it cannot.
    pub fn refuse(&self, live: usize, reserved_mb: u64, memory_mb: u32) -> Option<String> {
        if live >= self.max_capsules {
            return Some(format!(
                "this host runs its maximum of {} capsules",
                self.max_capsules
            ));
        }
        let budget = (self.host_memory_mb as f64 * self.memory_overcommit) as u64;
        if self.host_memory_mb > 0 && reserved_mb + u64::from(memory_mb) > budget {
            return Some(format!(
                "not enough memory on this host: {reserved_mb} MiB of {budget} MiB reserved, \
                 {memory_mb} MiB asked"
            ));
        }
        None
    }
}

impl Capsules {
    /// Admits one more capsule of `memory_mb` next to the live and the pooled ones, or says
    /// why not.
    pub(super) fn admit(&self, memory_mb: u32) -> CapsuleResult<()> {
        let live = self.live.all();
        let (pooled, pooled_mb) = self.pool.reserved();
        let reserved_mb = live
            .iter()
            .map(|l| l.snapshot())
            .filter(|c| !c.status.is_terminal())
            .map(|c| u64::from(c.memory_mb))
            .sum::<u64>()
            + pooled_mb;
        match self
            .capacity
            .refuse(live.len() + pooled, reserved_mb, memory_mb)
        {
            Some(why) => Err(CapsuleError::NoCapacity(why)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_within_memory_budget_and_count() {
        let cap = Capacity {
            host_memory_mb: 1000,
            memory_overcommit: 2.0,
            max_capsules: 3,
            disk_mb: 0,
        };
        assert!(cap.refuse(0, 0, 512).is_none());
        assert!(cap.refuse(2, 1488, 512).is_none(), "exactly at the budget");
        assert!(cap.refuse(2, 1489, 512).is_some());
        assert!(cap.refuse(3, 0, 32).is_some(), "count limit");
        let unknown = Capacity {
            host_memory_mb: 0,
            ..cap
        };
        assert!(
            unknown.refuse(0, 1 << 40, 512).is_none(),
            "no meminfo: no memory check"
        );
    }
}
