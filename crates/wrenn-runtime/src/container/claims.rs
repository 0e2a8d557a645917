//! Host-wide numbered claims (network slots, user-namespace id ranges).
//!
//! Several runtimes may share a host (tests run many at once), so a number is claimed by
//! creating `<dir>/<n>` exclusively; the file names the owning data dir and the capsule, so a
//! runtime's start-up sweep keeps the claims of capsules it adopts and frees the rest, and
//! claims whose data dir is gone (a server removed with its data) are freed by any runtime.

use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context};

/// One kind of claim: where its files live and how many numbers there are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claims {
    dir: &'static str,
    count: u32,
    what: &'static str,
}

impl Claims {
    /// Numbers `0..count` claimed under `dir`; `what` names them in errors.
    pub(crate) const fn new(dir: &'static str, count: u32, what: &'static str) -> Self {
        Self { dir, count, what }
    }

    /// Claims the lowest free number for capsule `id` of runtime `owner`.
    pub(crate) fn claim(&self, owner: &Path, id: &str) -> anyhow::Result<u32> {
        std::fs::create_dir_all(self.dir).with_context(|| format!("create {}", self.dir))?;
        for n in 0..self.count {
            let p = Path::new(self.dir).join(n.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(mut f) => {
                    writeln!(f, "{}\t{}", owner.display(), id)
                        .with_context(|| format!("write {} claim", self.what))?;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("claim {}", self.what)),
            }
        }
        bail!("all {} {} in use", self.count, self.what)
    }

    /// Frees number `n`.
    pub(crate) fn release(&self, n: u32) {
        let _ = std::fs::remove_file(Path::new(self.dir).join(n.to_string()));
    }

    /// Every claim: (number, owner data dir, capsule id).
    fn all(&self) -> Vec<(u32, String, String)> {
        let Ok(rd) = std::fs::read_dir(self.dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let n: u32 = e.file_name().to_str()?.parse().ok()?;
                let s = std::fs::read_to_string(e.path()).ok()?;
                let (o, id) = s.trim_end().split_once('\t')?;
                Some((n, o.to_owned(), id.to_owned()))
            })
            .collect()
    }

    /// Numbers claimed by runtime `owner`: (number, capsule id).
    pub(crate) fn owned(&self, owner: &Path) -> Vec<(u32, String)> {
        let owner = owner.display().to_string();
        self.all()
            .into_iter()
            .filter(|(_, o, _)| *o == owner)
            .map(|(n, _, id)| (n, id))
            .collect()
    }

    /// Frees the claims whose owner's data dir no longer exists and that `in_use` (number,
    /// capsule id) does not see held by something on the host; returns how many.
    pub(crate) fn free_orphans(&self, in_use: impl Fn(u32, &str) -> bool) -> usize {
        let orphans: Vec<u32> = self
            .all()
            .into_iter()
            .filter(|(n, o, id)| !Path::new(o).exists() && !in_use(*n, id))
            .map(|(n, _, _)| n)
            .collect();
        for n in &orphans {
            self.release(*n);
        }
        orphans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_owned_and_orphans_freed() {
        let scratch = crate::test_utils::Scratch::new("claims");
        let dir: &'static str = Box::leak(
            scratch
                .path()
                .join("c")
                .display()
                .to_string()
                .into_boxed_str(),
        );
        let claims = Claims::new(dir, 3, "things");
        let (alive, gone) = (scratch.path().join("alive"), scratch.path().join("gone"));
        std::fs::create_dir(&alive).expect("mkdir");
        assert_eq!(claims.claim(&alive, "cl-a").expect("claim"), 0);
        assert_eq!(claims.claim(&gone, "cl-b").expect("claim"), 1);
        assert_eq!(claims.claim(&gone, "cl-c").expect("claim"), 2);
        assert!(claims.claim(&alive, "cl-d").is_err(), "all taken");
        assert_eq!(claims.owned(&alive), vec![(0, "cl-a".to_owned())]);
        // cl-c's namespace is still there: kept.
        assert_eq!(claims.free_orphans(|_, id| id == "cl-c"), 1);
        assert_eq!(claims.claim(&alive, "cl-e").expect("freed number"), 1);
        claims.release(0);
        assert_eq!(claims.claim(&alive, "cl-f").expect("released number"), 0);
    }
}
