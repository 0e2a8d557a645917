//! Users and groups from `/etc/passwd` and `/etc/group`, parsed by hand.
//!
//! Design: the agent is statically linked, so glibc's NSS (`getpwnam`) is unavailable; the
//! capsule's own files are the only source of names.
//! Limitations: no NIS/LDAP, no `/etc/shadow` (never needed).

use std::collections::HashMap;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name (the decimal uid when it has no entry).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (`/` when unknown).
    pub home: String,
    /// Supplementary groups, primary included.
    pub groups: Vec<u32>,
}

/// Looking up a user failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveUserError {
    /// No passwd entry with that name.
    #[error("unknown user: {name}")]
    Unknown {
        /// The requested name.
        name: String,
    },
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Resolves a name or decimal uid; `None` means root.
pub fn resolve(user: Option<&str>) -> Result<User, ResolveUserError> {
    resolve_in(user.unwrap_or("root"), &read(PASSWD), &read(GROUP))
}

fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<User, ResolveUserError> {
    let entries = parse_passwd(passwd);
    let numeric = spec.parse::<u32>().ok();
    let found = entries
        .iter()
        .find(|e| e.name == spec)
        .or_else(|| numeric.and_then(|uid| entries.iter().find(|e| e.uid == uid)));
    let (name, uid, gid, home) = match (found, numeric) {
        (Some(e), _) => (e.name.clone(), e.uid, e.gid, e.home.clone()),
        (None, Some(uid)) => (uid.to_string(), uid, uid, "/".to_string()),
        (None, None) if spec == "root" => ("root".to_string(), 0, 0, "/root".to_string()),
        (None, None) => {
            return Err(ResolveUserError::Unknown {
                name: spec.to_string(),
            })
        }
    };
    let mut groups = vec![gid];
    for g in parse_group(group) {
        if g.members.contains(&name) && !groups.contains(&g.gid) {
            groups.push(g.gid);
        }
    }
    Ok(User {
        name,
        uid,
        gid,
        home,
        groups,
    })
}

/// uid → name and gid → name maps, for file listings.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// Loads both files (missing files give numeric names).
    pub fn load() -> Self {
        let mut names = Self::default();
        for e in parse_passwd(&read(PASSWD)) {
            names.users.entry(e.uid).or_insert(e.name);
        }
        for g in parse_group(&read(GROUP)) {
            names.groups.entry(g.gid).or_insert(g.name);
        }
        names
    }

    /// The user name of `uid`, or its decimal form.
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The group name of `gid`, or its decimal form.
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GR: &str = "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\ndocker:x:999:alice\n";

    #[test]
    fn resolves_by_name_and_uid_with_groups() {
        let u = resolve_in("alice", PW, GR).expect("alice");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(u.groups, vec![1000, 10, 999]);
        let u = resolve_in("65534", PW, GR).expect("uid");
        assert_eq!(u.name, "nobody");
        let u = resolve_in("4242", PW, GR).expect("bare uid");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4242, "/"));
        assert!(resolve_in("mallory", PW, GR).is_err());
        assert_eq!(resolve_in("root", "", "").expect("root").uid, 0);
    }
}
