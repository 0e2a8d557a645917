//! Daily usage per team (contract §5.9), added to as capsules run.

use chrono::NaiveDate;
use rusqlite::params;

use super::{Store, StoreError};
use crate::metrics::PendingUsage;

impl Store {
    /// Adds accumulated usage.
    pub async fn add_usage(&self, pending: PendingUsage) -> Result<(), StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO usage_daily (team_id, day, cpu_minutes, ram_mb_minutes)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (team_id, day) DO UPDATE SET
                       cpu_minutes = cpu_minutes + excluded.cpu_minutes,
                       ram_mb_minutes = ram_mb_minutes + excluded.ram_mb_minutes",
                )?;
                for ((team, day), (cpu, ram)) in &pending {
                    stmt.execute(params![team, day.to_string(), cpu, ram])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Usage of `team_id` per day in `[from, to]` (days without use are absent).
    pub async fn usage(
        &self,
        team_id: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, f64, f64)>, StoreError> {
        let team = team_id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT day, cpu_minutes, ram_mb_minutes FROM usage_daily
                 WHERE team_id = ?1 AND day >= ?2 AND day <= ?3 ORDER BY day",
            )?;
            let rows = stmt.query_map(params![team, from.to_string(), to.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (day, cpu, ram) = row?;
                if let Ok(d) = NaiveDate::parse_from_str(&day, "%Y-%m-%d") {
                    out.push((d, cpu, ram));
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn usage_adds_up_per_team_and_day() {
        let store = Store::open_in_memory().unwrap();
        let key = store.create_key("alpha", "k").await.unwrap();
        let team = key.row.team_id.clone();
        let day = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        for _ in 0..2 {
            let mut p = PendingUsage::new();
            p.insert((team.clone(), day), (1.5, 512.0));
            store.add_usage(p).await.unwrap();
        }
        let got = store.usage(&team, day, day).await.unwrap();
        assert_eq!(got, vec![(day, 3.0, 1024.0)]);
        let other = store.usage("team-none", day, day).await.unwrap();
        assert!(other.is_empty());
    }
}
