//! Step timings of one capsule create, logged at debug level (`WRENN_LOG=wrenn_runtime=debug`)
//! so an operator can see where a slow create spent its time.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Durations of consecutive steps; displays as `name=1.23 other=0.40` (milliseconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Steps {
    /// When the running step began; `None` after deserializing.
    #[serde(skip)]
    last: Option<Instant>,
    /// Finished steps: name and milliseconds.
    done: Vec<(String, f64)>,
}

impl Steps {
    /// Starts timing the first step now.
    pub fn start() -> Self {
        Self {
            last: Some(Instant::now()),
            done: Vec::new(),
        }
    }

    /// Ends the running step as `name` and starts the next one.
    pub fn mark(&mut self, name: &str) {
        let now = Instant::now();
        let ms = self
            .last
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64() * 1e3);
        self.done.push((name.to_owned(), ms));
        self.last = Some(now);
    }

    /// Adds the finished steps of `other` (timed elsewhere, e.g. on another thread) after
    /// these, and restarts the running step now.
    pub fn append(&mut self, other: Steps) {
        self.done.extend(other.done);
        self.last = Some(Instant::now());
    }

    /// Milliseconds of every finished step together.
    pub fn total_ms(&self) -> f64 {
        self.done.iter().map(|(_, ms)| ms).sum()
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, ms)) in self.done.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={ms:.2}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Steps;

    #[test]
    fn steps_show_in_order_and_survive_json() {
        let mut s = Steps::start();
        s.mark("a");
        s.mark("b");
        let shown = s.to_string();
        assert!(shown.starts_with("a=") && shown.contains(" b="), "{shown}");
        let back: Steps = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.to_string(), shown);
        assert!(back.total_ms() >= 0.0);
    }
}
