use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm Wharf can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must have the form algorithm:hex")]
    Malformed,
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {len} lowercase hex characters")]
    BadEncoding { algorithm: &'static str, len: usize },
}

/// A content digest such as `sha256:e3b0…`. Only registered algorithms with a
/// correctly sized lowercase hex encoding are accepted, so a `Digest` can be used
/// directly as a storage path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    // The whole string, `algorithm:hex`, kept to avoid re-formatting on every use.
    full: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part after the colon.
    pub fn hex(&self) -> &str {
        &self.full[self.algorithm.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::from_hash(Algorithm::Sha256, &sha2::Sha256::digest(data))
    }

    /// The digest of `data` with this digest's algorithm.
    pub fn of_same_algorithm(&self, data: &[u8]) -> Digest {
        let mut h = DigestHasher::new(self.algorithm);
        h.update(data);
        h.finish()
    }

    fn from_hash(algorithm: Algorithm, hash: &[u8]) -> Digest {
        Digest {
            algorithm,
            full: format!("{}:{}", algorithm.as_str(), hex::encode(hash)),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Malformed)?;
        // The spec's grammar first; then only the algorithms we can verify.
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
        if !alg_ok || !enc_ok {
            return Err(DigestError::Malformed);
        }
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let len = algorithm.hex_len();
        if enc.len() != len
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadEncoding {
                algorithm: algorithm.as_str(),
                len,
            });
        }
        Ok(Digest {
            algorithm,
            full: s.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

const STATE_VERSION: u8 = 1;

/// An incremental hasher for one of the supported algorithms.
#[derive(Clone)]
pub enum DigestHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => DigestHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => DigestHasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(data),
            DigestHasher::Sha512(h) => h.update(data),
        }
    }

    /// The hasher's internal state, to resume hashing in another process.
    /// Layout: format version, algorithm, then sha2's serialized state.
    pub fn save_state(&self) -> Vec<u8> {
        use sha2::digest::common::hazmat::SerializableState;
        let (alg, state) = match self {
            DigestHasher::Sha256(h) => (0u8, h.serialize().to_vec()),
            DigestHasher::Sha512(h) => (1u8, h.serialize().to_vec()),
        };
        let mut out = Vec::with_capacity(2 + state.len());
        out.extend_from_slice(&[STATE_VERSION, alg]);
        out.extend_from_slice(&state);
        out
    }

    /// Restores a state saved by [`DigestHasher::save_state`]. `None` when the
    /// state comes from another format version or is damaged; the caller then
    /// re-hashes the data from the start.
    pub fn restore_state(saved: &[u8]) -> Option<DigestHasher> {
        use sha2::digest::common::hazmat::SerializableState;
        match saved {
            [STATE_VERSION, 0, rest @ ..] => {
                let arr = rest.try_into().ok()?;
                sha2::Sha256::deserialize(arr)
                    .ok()
                    .map(DigestHasher::Sha256)
            }
            [STATE_VERSION, 1, rest @ ..] => {
                let arr = rest.try_into().ok()?;
                sha2::Sha512::deserialize(arr)
                    .ok()
                    .map(DigestHasher::Sha512)
            }
            _ => None,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            DigestHasher::Sha256(_) => Algorithm::Sha256,
            DigestHasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            DigestHasher::Sha256(h) => Digest::from_hash(Algorithm::Sha256, &h.finalize()),
            DigestHasher::Sha512(h) => Digest::from_hash(Algorithm::Sha512, &h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_hashes() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::sha256_of(b""), d);
        let d512 = DigestHasher::new(Algorithm::Sha512).finish();
        assert_eq!(d512.hex().len(), 128);
        assert_eq!(d512.as_str().parse::<Digest>().unwrap(), d512);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha256:../../../../etc/passwd",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855x",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn state_survives_save_and_restore() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut whole = DigestHasher::new(alg);
            whole.update(b"hello, world");
            let mut h = DigestHasher::new(alg);
            h.update(b"hello, ");
            let mut resumed = DigestHasher::restore_state(&h.save_state()).unwrap();
            resumed.update(b"world");
            assert_eq!(resumed.finish(), whole.finish());
        }
        assert!(DigestHasher::restore_state(b"").is_none());
        assert!(DigestHasher::restore_state(&[9, 0, 1, 2]).is_none());
        let mut cut = DigestHasher::new(Algorithm::Sha256).save_state();
        cut.pop();
        assert!(DigestHasher::restore_state(&cut).is_none());
    }

    proptest! {
        #[test]
        fn any_string_parses_or_errors(s in "\\PC*") {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn hashed_digests_round_trip(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let d = Digest::sha256_of(&data);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }

        #[test]
        fn parsed_digests_are_path_safe(s in "[a-z0-9:./_-]{1,140}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert!(!d.hex().contains('/') && !d.hex().contains('.'));
            }
        }
    }
}
