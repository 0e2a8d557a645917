//! Which host CPUs each capsule runs on.
//!
//! A capsule's CPU quota limits how much it runs; its cpuset says where, and is what `nproc`,
//! `os.cpu_count()` and thread pools inside the capsule see. Capsules are placed round-robin
//! over the CPUs this process may use, so a host's capsules spread over all of its cores.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Round-robin placement of capsules on the host's CPUs.
#[derive(Debug)]
pub(crate) struct CpuSpread {
    cpus: Vec<usize>,
    /// Memory nodes every capsule may use (cpuset `mems`).
    pub(crate) mems: String,
    next: AtomicUsize,
}

impl CpuSpread {
    /// The CPUs this process may run on and the host's online memory nodes.
    pub(crate) fn detect() -> Self {
        let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|c| set.is_set(*c).unwrap_or(false))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let mems = std::fs::read_to_string("/sys/devices/system/node/online")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "0".to_owned());
        Self::new(cpus, mems)
    }

    fn new(mut cpus: Vec<usize>, mems: String) -> Self {
        if cpus.is_empty() {
            cpus.push(0);
        }
        Self {
            cpus,
            mems,
            next: AtomicUsize::new(0),
        }
    }

    /// A cpuset list of `vcpus` CPUs (all of them when asked for more), the next ones in turn.
    pub(crate) fn pick(&self, vcpus: u32) -> String {
        let n = self.cpus.len();
        let k = (vcpus.max(1) as usize).min(n);
        let start = self.next.fetch_add(k, Ordering::Relaxed);
        let mut chosen: Vec<usize> = (0..k).map(|i| self.cpus[(start + i) % n]).collect();
        chosen.sort_unstable();
        chosen
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_round_robin_and_caps_at_the_host() {
        let s = CpuSpread::new(vec![0, 1, 2, 3], "0".into());
        assert_eq!(s.pick(1), "0");
        assert_eq!(s.pick(1), "1");
        assert_eq!(s.pick(2), "2,3");
        assert_eq!(s.pick(3), "0,1,2");
        assert_eq!(s.pick(8), "0,1,2,3");
        assert_eq!(s.pick(0), "3", "0 vCPUs still runs somewhere");
        let holes = CpuSpread::new(vec![2, 5], "0-1".into());
        assert_eq!(holes.pick(1), "2");
        assert_eq!(holes.pick(1), "5");
        assert_eq!(holes.mems, "0-1");
    }

    #[test]
    fn detect_finds_this_process_cpus() {
        let s = CpuSpread::detect();
        assert_eq!(
            s.cpus.len(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
}
