//! Request validation: a create request becomes a [`ValidCreate`] (defaults applied, bounds
//! checked) before anything is reserved or recorded.

use std::collections::BTreeMap;

use wrenn_runtime::Backend;
use wrenn_types::api::CreateCapsuleRequest;

use super::error::{CapsuleError, CapsuleResult};
use crate::ids;

/// Default template (contract §14; `minimal` is ours).
pub const DEFAULT_TEMPLATE: &str = "minimal";
/// Default CPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Upper bound on CPUs per capsule.
pub const MAX_VCPUS: i64 = 64;
/// Upper bound on memory per capsule (256 GiB).
pub const MAX_MEMORY_MB: i64 = 262_144;
/// Metadata keys the server sets itself.
pub const RESERVED_METADATA: [&str; 5] = [
    "kernel_version",
    "warm_pool",
    "vmm_version",
    "agent_version",
    "envd_version",
];

/// A create request with defaults applied and every bound checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCreate {
    /// Template name as asked (a base template or one of the team's snapshots).
    pub template: String,
    /// CPUs (a snapshot's own sizes win over these).
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mb: u32,
    /// Inactivity timeout, s; 0 = none.
    pub timeout_sec: u32,
    /// The caller's metadata, `None` when empty.
    pub metadata: Option<BTreeMap<String, String>>,
    /// The backend asked for; `None` = the server's default.
    pub backend: Option<Backend>,
}

impl TryFrom<CreateCapsuleRequest> for ValidCreate {
    type Error = CapsuleError;

    fn try_from(req: CreateCapsuleRequest) -> CapsuleResult<Self> {
        let template = req.template.unwrap_or_else(|| DEFAULT_TEMPLATE.to_owned());
        if !ids::is_safe_name(&template) {
            return Err(CapsuleError::Invalid(format!(
                "invalid template name {template:?}"
            )));
        }
        let vcpus = match req.vcpus {
            None => DEFAULT_VCPUS,
            Some(v) if v <= 0 => DEFAULT_VCPUS,
            Some(v) if v > MAX_VCPUS => {
                return Err(CapsuleError::Invalid(format!(
                    "vcpus must be at most {MAX_VCPUS}"
                )))
            }
            Some(v) => v as u32,
        };
        let memory_mb = match req.memory_mb {
            None => DEFAULT_MEMORY_MB,
            Some(v) if v <= 0 => DEFAULT_MEMORY_MB,
            Some(v) if v < 32 => {
                return Err(CapsuleError::Invalid(
                    "memory_mb must be at least 32".into(),
                ))
            }
            Some(v) if v > MAX_MEMORY_MB => {
                return Err(CapsuleError::Invalid(format!(
                    "memory_mb must be at most {MAX_MEMORY_MB}"
                )))
            }
            Some(v) => v as u32,
        };
        let timeout_sec = match req.timeout_sec.unwrap_or(0) {
            t if t <= 0 => 0,
            t if t < 60 => 60,
            t => u32::try_from(t).unwrap_or(u32::MAX),
        };
        let backend = match req.runtime.as_deref() {
            None => None,
            Some(name) => Some(Backend::parse(name).ok_or_else(|| {
                CapsuleError::Invalid(format!(
                    "runtime must be one of: {}",
                    Backend::ALL.map(Backend::as_str).join(", ")
                ))
            })?),
        };
        Ok(Self {
            template,
            vcpus,
            memory_mb,
            timeout_sec,
            metadata: validate_metadata(req.metadata)?,
            backend,
        })
    }
}

/// A malformed capsule id is refused before any lookup.
pub fn check_id(id: &str) -> CapsuleResult<()> {
    if ids::is_capsule_id(id) {
        Ok(())
    } else {
        Err(CapsuleError::Invalid(format!("invalid capsule id {id:?}")))
    }
}

fn validate_metadata(
    m: Option<BTreeMap<String, String>>,
) -> CapsuleResult<Option<BTreeMap<String, String>>> {
    let Some(m) = m else { return Ok(None) };
    if m.len() > 20 {
        return Err(CapsuleError::Invalid(
            "metadata has more than 20 keys".into(),
        ));
    }
    for (k, v) in &m {
        if !ids::is_safe_name(k) {
            return Err(CapsuleError::Invalid(format!("invalid metadata key {k:?}")));
        }
        if RESERVED_METADATA.contains(&k.as_str()) {
            return Err(CapsuleError::Invalid(format!(
                "metadata key {k:?} is reserved"
            )));
        }
        if v.chars().count() > 64 {
            return Err(CapsuleError::Invalid(format!(
                "metadata value of {k:?} is longer than 64 characters"
            )));
        }
    }
    Ok(if m.is_empty() { None } else { Some(m) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_rules() {
        let ok = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert!(validate_metadata(Some(ok)).is_ok());
        let reserved = BTreeMap::from([("agent_version".to_owned(), "x".to_owned())]);
        assert!(validate_metadata(Some(reserved)).is_err());
        let long = BTreeMap::from([("k".to_owned(), "x".repeat(65))]);
        assert!(validate_metadata(Some(long)).is_err());
        let bad_key = BTreeMap::from([("a/b".to_owned(), "x".to_owned())]);
        assert!(validate_metadata(Some(bad_key)).is_err());
        let many: BTreeMap<_, _> = (0..21).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(validate_metadata(Some(many)).is_err());
    }

    #[test]
    fn defaults_and_bounds() {
        let empty: CreateCapsuleRequest =
            serde_json::from_str("{}").expect("an empty request parses");
        let v = ValidCreate::try_from(empty).expect("defaults are valid");
        assert_eq!(
            (v.template.as_str(), v.vcpus, v.memory_mb, v.timeout_sec),
            (DEFAULT_TEMPLATE, DEFAULT_VCPUS, DEFAULT_MEMORY_MB, 0)
        );
        let short: CreateCapsuleRequest =
            serde_json::from_str(r#"{"timeout_sec": 5, "vcpus": 0}"#).expect("parses");
        let v = ValidCreate::try_from(short).expect("valid");
        assert_eq!((v.timeout_sec, v.vcpus), (60, DEFAULT_VCPUS));
        for bad in [
            r#"{"memory_mb": 16}"#,
            r#"{"vcpus": 65}"#,
            r#"{"template": "../x"}"#,
        ] {
            let req: CreateCapsuleRequest = serde_json::from_str(bad).expect("parses");
            assert!(
                matches!(ValidCreate::try_from(req), Err(CapsuleError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
