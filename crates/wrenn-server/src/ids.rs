//! Identifiers and names (contract §3).

use rand::Rng;

/// A new capsule id: `cl-` + a UUIDv4 as 25 base36 digits.
pub fn new_capsule_id() -> String {
    let mut n = uuid::Uuid::new_v4().as_u128();
    let mut digits = [b'0'; 25];
    for d in digits.iter_mut().rev() {
        let r = (n % 36) as u8;
        *d = if r < 10 { b'0' + r } else { b'a' + r - 10 };
        n /= 36;
    }
    // base36 of u128 fits in 25 digits; the buffer is ASCII by construction.
    format!("cl-{}", String::from_utf8_lossy(&digits))
}

/// Whether `s` is a well-formed capsule id.
pub fn is_capsule_id(s: &str) -> bool {
    s.len() == 28
        && s.starts_with("cl-")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// Whether `s` is a safe name: `^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$`.
pub fn is_safe_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `prefix` + `n` random lowercase hex digits.
pub fn random_hex(prefix: &str, n: usize) -> String {
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    for _ in 0..n {
        let v: u8 = rng.gen_range(0..16);
        s.push(char::from_digit(u32::from(v), 16).unwrap_or('0'));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsule_ids_are_well_formed_and_distinct() {
        let a = new_capsule_id();
        let b = new_capsule_id();
        assert!(is_capsule_id(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_capsule_id("cl-ABC"));
        assert!(!is_capsule_id("cl-0000000000000000000000000/"));
        assert!(!is_capsule_id("xx-0000000000000000000000000"));
    }

    #[test]
    fn safe_names() {
        assert!(is_safe_name("minimal"));
        assert!(is_safe_name("a.b_c-d"));
        assert!(!is_safe_name(""));
        assert!(!is_safe_name("-x"));
        assert!(!is_safe_name("a/b"));
        assert!(!is_safe_name(&"a".repeat(65)));
        assert!(is_safe_name(&"a".repeat(64)));
    }
}
