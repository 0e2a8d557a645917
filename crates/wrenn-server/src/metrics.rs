//! Per-capsule resource samples (contract §5.10) and per-team daily usage (§5.9).
//!
//! The housekeeping tick samples every running capsule's cgroup counters every 2 s. Samples
//! are kept in memory for [`RETENTION`] (a server restart starts the series afresh); usage is
//! accumulated as deltas and added to the store's `usage_daily` table on every flush, so it
//! survives restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use wrenn_runtime::ResourceUsage;

/// How long samples are kept.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);
/// At most this many points are returned; longer ranges are averaged into buckets.
pub const MAX_POINTS: usize = 300;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When.
    pub at: DateTime<Utc>,
    /// CPU use over the last interval, 0–100, normalised to the capsule's vCPUs.
    pub cpu_pct: f64,
    /// Memory in use.
    pub mem_bytes: u64,
    /// Bytes the capsule wrote to its own layer.
    pub disk_bytes: u64,
}

#[derive(Debug)]
struct Series {
    last_cpu_ns: u64,
    last_at: Instant,
    samples: VecDeque<Sample>,
}

/// A team's reservation at one minute (the peak within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The minute.
    pub at: DateTime<Utc>,
    /// Running capsules.
    pub running: u64,
    /// Their vCPUs.
    pub vcpus: u64,
    /// Their memory.
    pub memory_mb: u64,
}

/// How long team reservations are kept (the stats' peak window).
pub const TEAM_RETENTION: chrono::Duration = chrono::Duration::days(30);

/// Usage not yet written to the store: (team, day) → (cpu minutes, RAM MB·minutes).
pub type PendingUsage = HashMap<(String, NaiveDate), (f64, f64)>;

/// Samples and usage of every capsule.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<HashMap<String, Series>>,
    pending: Mutex<PendingUsage>,
    teams: Mutex<HashMap<String, VecDeque<Reservation>>>,
}

impl Metrics {
    /// Records a reading of capsule `id` (of `team_id`, with `vcpus` and `memory_mb`).
    pub fn record(&self, team_id: &str, id: &str, vcpus: u32, memory_mb: u32, u: ResourceUsage) {
        let now = Instant::now();
        let at = Utc::now();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = series.entry(id.to_owned()).or_insert_with(|| Series {
            last_cpu_ns: u.cpu_ns,
            last_at: now,
            samples: VecDeque::new(),
        });
        let dt = now.duration_since(s.last_at).as_secs_f64();
        let dcpu = u.cpu_ns.saturating_sub(s.last_cpu_ns) as f64;
        s.last_cpu_ns = u.cpu_ns;
        s.last_at = now;
        if dt <= 0.0 {
            return; // first reading: a baseline, no interval yet
        }
        let cpu_pct = (dcpu / 1e9 / dt / f64::from(vcpus.max(1)) * 100.0).clamp(0.0, 100.0);
        s.samples.push_back(Sample {
            at,
            cpu_pct,
            mem_bytes: u.memory_bytes,
            disk_bytes: u.disk_bytes,
        });
        while s.samples.front().is_some_and(|f| at - f.at > RETENTION) {
            s.samples.pop_front();
        }
        drop(series);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let e = pending
            .entry((team_id.to_owned(), at.date_naive()))
            .or_insert((0.0, 0.0));
        e.0 += dcpu / 60e9;
        e.1 += f64::from(memory_mb) * dt / 60.0;
    }

    /// Samples of `id` within `range` of now, averaged into at most [`MAX_POINTS`] buckets.
    pub fn points(&self, id: &str, range: chrono::Duration) -> Vec<Sample> {
        let since = Utc::now() - range;
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = series.get(id) else {
            return Vec::new();
        };
        let recent: Vec<Sample> = s
            .samples
            .iter()
            .filter(|x| x.at >= since)
            .copied()
            .collect();
        downsample(&recent, MAX_POINTS)
    }

    /// Drops the series of a capsule that is gone.
    pub fn forget(&self, id: &str) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Records a team's current reservation (kept per minute, the minute's peak).
    pub fn record_team(&self, team_id: &str, now: Reservation) {
        let ts = now.at.timestamp();
        let minute = DateTime::from_timestamp(ts - ts.rem_euclid(60), 0).unwrap_or(now.at);
        let mut teams = self.teams.lock().unwrap_or_else(|p| p.into_inner());
        let q = teams.entry(team_id.to_owned()).or_default();
        match q.back_mut() {
            Some(last) if last.at == minute => {
                last.running = last.running.max(now.running);
                last.vcpus = last.vcpus.max(now.vcpus);
                last.memory_mb = last.memory_mb.max(now.memory_mb);
            }
            _ => q.push_back(Reservation { at: minute, ..now }),
        }
        while q.front().is_some_and(|f| now.at - f.at > TEAM_RETENTION) {
            q.pop_front();
        }
    }

    /// A team's per-minute reservations within `range` of now.
    pub fn team_series(&self, team_id: &str, range: chrono::Duration) -> Vec<Reservation> {
        let since = Utc::now() - range;
        let teams = self.teams.lock().unwrap_or_else(|p| p.into_inner());
        teams
            .get(team_id)
            .map(|q| q.iter().filter(|r| r.at >= since).copied().collect())
            .unwrap_or_default()
    }

    /// Takes the usage accumulated since the last call.
    pub fn take_pending(&self) -> PendingUsage {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Averages consecutive samples into at most `max` points (each stamped with its last time).
fn downsample(samples: &[Sample], max: usize) -> Vec<Sample> {
    if samples.len() <= max || max == 0 {
        return samples.to_vec();
    }
    let per = samples.len().div_ceil(max);
    samples
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            Sample {
                at: c[c.len() - 1].at,
                cpu_pct: c.iter().map(|s| s.cpu_pct).sum::<f64>() / n,
                mem_bytes: (c.iter().map(|s| s.mem_bytes as f64).sum::<f64>() / n) as u64,
                disk_bytes: c[c.len() - 1].disk_bytes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_ns: u64) -> ResourceUsage {
        ResourceUsage {
            cpu_ns,
            memory_bytes: 1 << 20,
            disk_bytes: 4096,
        }
    }

    #[test]
    fn cpu_percent_is_normalised_to_vcpus_and_usage_accumulates() {
        let m = Metrics::default();
        m.record("team-a", "cl-x", 2, 512, usage(0));
        assert!(
            m.points("cl-x", chrono::Duration::minutes(10)).is_empty(),
            "baseline only"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        // 0.1 s of CPU over ~0.1 s on 2 vCPUs ≈ 50 %.
        m.record("team-a", "cl-x", 2, 512, usage(100_000_000));
        let p = m.points("cl-x", chrono::Duration::minutes(10));
        assert_eq!(p.len(), 1);
        assert!(
            p[0].cpu_pct > 25.0 && p[0].cpu_pct <= 50.0,
            "{}",
            p[0].cpu_pct
        );
        let pending = m.take_pending();
        let (cpu_min, ram_min) = pending.values().next().copied().unwrap();
        assert!((cpu_min - 0.1 / 60.0).abs() < 1e-9);
        assert!(ram_min > 0.0);
        assert!(m.take_pending().is_empty());
        m.forget("cl-x");
        assert!(m.points("cl-x", chrono::Duration::minutes(10)).is_empty());
    }

    #[test]
    fn team_reservations_keep_the_peak_of_each_minute() {
        let m = Metrics::default();
        let ts = Utc::now().timestamp() - 120;
        let minute = DateTime::from_timestamp(ts - ts.rem_euclid(60), 0).unwrap();
        let r = |secs: i64, running: u64| Reservation {
            at: minute + chrono::Duration::milliseconds(secs * 1000 + 7),
            running,
            vcpus: running,
            memory_mb: 512 * running,
        };
        m.record_team("t", r(1, 2));
        m.record_team("t", r(2, 5));
        m.record_team("t", r(3, 1));
        m.record_team("t", r(61, 1));
        let s = m.team_series("t", chrono::Duration::hours(1));
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].running, 5);
        assert_eq!(s[0].at, minute);
        assert_eq!(s[1].running, 1);
        assert!(m
            .team_series("other", chrono::Duration::hours(1))
            .is_empty());
    }

    #[test]
    fn long_series_are_averaged_into_buckets() {
        let at = Utc::now();
        let s: Vec<Sample> = (0..1000)
            .map(|i| Sample {
                at,
                cpu_pct: f64::from(i % 2) * 100.0,
                mem_bytes: 10,
                disk_bytes: 1,
            })
            .collect();
        let d = downsample(&s, 300);
        assert!(d.len() <= 300);
        assert!(d.iter().all(|x| (x.cpu_pct - 50.0).abs() < 20.0));
    }
}
