//! Password hashing (argon2id) and the constant-cost check for unknown names.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// Longest password accepted; hashing cost must not depend on a client's whim.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Hashes a password into a PHC string with argon2id's recommended parameters
/// (19 MiB, 2 passes).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `phc`. Malformed hashes never match.
pub fn verify(phc: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Burns the time of one verification, so an unknown user name costs what a
/// wrong password costs and names cannot be probed by timing.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash("wharf-dummy-password").unwrap_or_default());
    let _ = verify(phc, password);
}

/// A random secret of 32 bytes, URL-safe base64, with a readable prefix.
pub fn random_secret(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a random secret (see [`wharf_meta::Credential`]).
pub fn secret_hash(secret: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "s3cret "));
        assert!(!verify("not a hash", "s3cret"));
        assert!(!verify(&h, &"x".repeat(MAX_PASSWORD_LEN + 1)));
    }

    #[test]
    fn secrets_are_random() {
        let a = random_secret("wharf_");
        assert!(a.starts_with("wharf_") && a.len() == 6 + 43);
        assert_ne!(a, random_secret("wharf_"));
        assert_eq!(secret_hash(&a).len(), 32);
    }
}
