//! E2B sandbox ids ↔ capsule ids, in one place: a sandbox id is the capsule id without its
//! `cl-` prefix (25 characters of `[0-9a-z]`), so it survives host routing
//! (`{port}-{sandboxID}.{domain}`: no `-`, no `.`).

use crate::ids::is_capsule_id;

/// Prefix of every capsule id.
const CAPSULE_PREFIX: &str = "cl-";

/// The capsule id of E2B sandbox id `sandbox_id`, or `None` when it cannot be one.
pub fn capsule_id(sandbox_id: &str) -> Option<String> {
    let id = format!("{CAPSULE_PREFIX}{sandbox_id}");
    is_capsule_id(&id).then_some(id)
}

/// The E2B sandbox id of capsule `capsule_id`.
pub fn sandbox_id(capsule_id: &str) -> &str {
    capsule_id
        .strip_prefix(CAPSULE_PREFIX)
        .unwrap_or(capsule_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::new_capsule_id;

    #[test]
    fn ids_map_both_ways() {
        let cl = new_capsule_id();
        let sbx = sandbox_id(&cl);
        assert_eq!(sbx.len(), 25);
        assert!(sbx
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_eq!(capsule_id(sbx).as_deref(), Some(cl.as_str()));
        for bad in [
            "",
            "abc",
            "cl-0123456789abcdefghijklmno",
            "0123456789ABCDEFGHIJKLMNO",
        ] {
            assert_eq!(capsule_id(bad), None, "{bad}");
        }
    }
}
