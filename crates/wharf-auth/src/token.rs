//! JSON Web Tokens as Docker's token specification uses them: compact JWS,
//! signed by Wharf with ES256, or by an external issuer (RS*, PS*, ES256/384)
//! whose keys come from a certificate bundle or a JWKS document.
//!
//! Written over ring (already linked for TLS) rather than a JWT crate: the
//! format is three base64url parts, and pinning the accepted algorithms to the
//! configured keys closes the classic `alg` confusion holes by construction.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::scope::AccessEntry;

/// Longest token accepted: its size is the client's to choose.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_S: i64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(String),
    #[error("token issuer is not trusted")]
    Issuer,
    #[error("token is for another service")]
    Audience,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("{0}")]
    Key(String),
}

/// `aud` may be one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, s: &str) -> bool {
        match self {
            Audience::One(a) => a == s,
            Audience::Many(v) => v.iter().any(|a| a == s),
        }
    }
}

/// The claims Wharf issues and checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<AccessEntry>,
    /// `refresh` on Wharf's refresh tokens, which grant no access themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wharf_use: Option<String>,
    /// `pat:<name>` when issued to a personal access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wharf_via: Option<String>,
    /// Refresh tokens: when the login happened, in milliseconds (`iat` has
    /// whole seconds, too coarse to compare with a password change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wharf_login_ms: Option<i64>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

/// A public key tokens may be signed with.
#[derive(Debug, Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    material: KeyMaterial,
    /// The certificate (DER) the key came from, to match a token's `x5c`.
    cert: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    /// An uncompressed P-256 point.
    P256(Vec<u8>),
    P384(Vec<u8>),
    /// A PKCS#1 RSAPublicKey.
    RsaDer(Vec<u8>),
    RsaParts {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

impl VerifyKey {
    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        use signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA256,
            RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256,
            RSA_PSS_2048_8192_SHA384, RSA_PSS_2048_8192_SHA512, RsaParameters, UnparsedPublicKey,
        };
        let rsa = |p: &'static RsaParameters| -> Result<(), TokenError> {
            match &self.material {
                KeyMaterial::RsaDer(der) => UnparsedPublicKey::new(p, der).verify(msg, sig),
                KeyMaterial::RsaParts { n, e } => {
                    signature::RsaPublicKeyComponents { n, e }.verify(p, msg, sig)
                }
                _ => return Err(TokenError::BadSignature),
            }
            .map_err(|_| TokenError::BadSignature)
        };
        match (alg, &self.material) {
            ("ES256", KeyMaterial::P256(k)) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k)
                .verify(msg, sig)
                .map_err(|_| TokenError::BadSignature),
            ("ES384", KeyMaterial::P384(k)) => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, k)
                .verify(msg, sig)
                .map_err(|_| TokenError::BadSignature),
            ("RS256", _) => rsa(&RSA_PKCS1_2048_8192_SHA256),
            ("RS384", _) => rsa(&RSA_PKCS1_2048_8192_SHA384),
            ("RS512", _) => rsa(&RSA_PKCS1_2048_8192_SHA512),
            ("PS256", _) => rsa(&RSA_PSS_2048_8192_SHA256),
            ("PS384", _) => rsa(&RSA_PSS_2048_8192_SHA384),
            ("PS512", _) => rsa(&RSA_PSS_2048_8192_SHA512),
            _ => Err(TokenError::BadSignature),
        }
    }

    fn accepts(&self, alg: &str) -> bool {
        matches!(
            (alg, &self.material),
            ("ES256", KeyMaterial::P256(_))
                | ("ES384", KeyMaterial::P384(_))
                | (
                    "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512",
                    KeyMaterial::RsaDer(_) | KeyMaterial::RsaParts { .. }
                )
        )
    }

    /// Keys from the PEM certificates in a bundle (distribution's
    /// `rootcertbundle`). Each key's id is the libtrust fingerprint that
    /// distribution's token servers put in `kid`.
    pub fn from_cert_bundle(pem: &str) -> Result<Vec<VerifyKey>, TokenError> {
        let mut keys = Vec::new();
        for der in pem_blocks(pem, "CERTIFICATE")? {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| TokenError::Key(format!("certificate in bundle: {e}")))?;
            let spki = cert.public_key();
            let material = spki_material(spki)?;
            keys.push(VerifyKey {
                kid: Some(libtrust_kid(spki.raw)),
                material,
                cert: Some(der.clone()),
            });
        }
        if keys.is_empty() {
            return Err(TokenError::Key("no certificate in the bundle".into()));
        }
        Ok(keys)
    }

    /// Keys of a JWKS document (`{"keys": [...]}`); keys of other types are skipped.
    pub fn from_jwks(json: &str) -> Result<Vec<VerifyKey>, TokenError> {
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            #[serde(default)]
            kid: Option<String>,
            #[serde(default)]
            crv: Option<String>,
            #[serde(default)]
            x: Option<String>,
            #[serde(default)]
            y: Option<String>,
            #[serde(default)]
            n: Option<String>,
            #[serde(default)]
            e: Option<String>,
        }
        let doc: Jwks =
            serde_json::from_str(json).map_err(|e| TokenError::Key(format!("JWKS: {e}")))?;
        let b64 = |s: &Option<String>| -> Result<Vec<u8>, TokenError> {
            URL_SAFE_NO_PAD
                .decode(s.as_deref().unwrap_or("").trim_end_matches('='))
                .map_err(|_| TokenError::Key("JWKS: bad base64url".into()))
        };
        let mut keys = Vec::new();
        for k in doc.keys {
            let material = match (k.kty.as_str(), k.crv.as_deref()) {
                ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                    let mut point = vec![4u8];
                    point.extend(b64(&k.x)?);
                    point.extend(b64(&k.y)?);
                    if crv == "P-256" {
                        KeyMaterial::P256(point)
                    } else {
                        KeyMaterial::P384(point)
                    }
                }
                ("RSA", _) => KeyMaterial::RsaParts {
                    n: b64(&k.n)?,
                    e: b64(&k.e)?,
                },
                _ => continue,
            };
            keys.push(VerifyKey {
                kid: k.kid,
                material,
                cert: None,
            });
        }
        if keys.is_empty() {
            return Err(TokenError::Key("JWKS holds no usable key".into()));
        }
        Ok(keys)
    }
}

fn spki_material(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyMaterial, TokenError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    };
    let alg = &spki.algorithm.algorithm;
    let bits = spki.subject_public_key.data.to_vec();
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return Ok(KeyMaterial::RsaDer(bits));
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&OID_EC_P256) {
            return Ok(KeyMaterial::P256(bits));
        }
        if curve.as_ref() == Some(&OID_NIST_EC_P384) {
            return Ok(KeyMaterial::P384(bits));
        }
    }
    Err(TokenError::Key(
        "certificate key is neither RSA nor EC P-256/P-384".into(),
    ))
}

/// libtrust's key id: the first 240 bits of SHA-256 over the DER
/// SubjectPublicKeyInfo, base32, in groups of four joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    use sha2::Digest;
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = sha2::Sha256::digest(spki_der);
    let mut out = String::new();
    let (mut buf, mut nbits) = (0u32, 0);
    for &b in &hash[..30] {
        buf = (buf << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(ALPHABET[((buf >> nbits) & 31) as usize] as char);
        }
    }
    let groups: Vec<&str> = out
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    groups.join(":")
}

/// The DER contents of every `-----BEGIN {label}-----` block.
pub fn pem_blocks(pem: &str, label: &str) -> Result<Vec<Vec<u8>>, TokenError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(i) = rest.find(&begin) {
        let after = &rest[i + begin.len()..];
        let j = after
            .find(&end)
            .ok_or_else(|| TokenError::Key(format!("unterminated PEM {label}")))?;
        let body: String = after[..j].split_whitespace().collect();
        out.push(
            STANDARD
                .decode(body)
                .map_err(|_| TokenError::Key(format!("bad base64 in PEM {label}")))?,
        );
        rest = &after[j + end.len()..];
    }
    Ok(out)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or(""));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Wharf's own ES256 signing key.
pub struct Signer {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl Signer {
    /// Loads the PKCS#8 PEM key at `path`, or generates one and writes it
    /// there with mode 0600 (never readable by others, even briefly).
    pub fn load_or_create(path: &Path) -> Result<Signer, TokenError> {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let io = |e: std::io::Error| TokenError::Key(format!("{}: {e}", path.display()));
        let der = match std::fs::read_to_string(path) {
            Ok(pem) => pem_blocks(&pem, "PRIVATE KEY")?
                .into_iter()
                .next()
                .ok_or_else(|| TokenError::Key(format!("{}: no PRIVATE KEY", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng)
                    .map_err(|_| TokenError::Key("generating a key failed".into()))?;
                write_private(path, pem_encode("PRIVATE KEY", doc.as_ref()).as_bytes())
                    .map_err(io)?;
                tracing::info!(path = %path.display(), "generated a token signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let pair = EcdsaKeyPair::from_pkcs8(alg, &der, &rng).map_err(|e| {
            TokenError::Key(format!("{}: not a P-256 PKCS#8 key: {e}", path.display()))
        })?;
        let kid = jwk_thumbprint(pair.public_key().as_ref());
        Ok(Signer { pair, kid, rng })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key to verify this signer's tokens with.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey {
            kid: Some(self.kid.clone()),
            material: KeyMaterial::P256(self.pair.public_key().as_ref().to_vec()),
            cert: None,
        }
    }

    /// The public key as a JWKS document, for other services to verify with.
    pub fn jwks(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65]),
        }]})
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        let payload = serde_json::to_vec(claims).map_err(|_| TokenError::Malformed)?;
        out.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let sig = self
            .pair
            .sign(&self.rng, out.as_bytes())
            .map_err(|_| TokenError::Key("signing failed".into()))?;
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        Ok(out)
    }
}

/// RFC 7638 thumbprint of a P-256 public key (uncompressed point).
fn jwk_thumbprint(point: &[u8]) -> String {
    use sha2::Digest;
    let (x, y) = (
        URL_SAFE_NO_PAD.encode(point.get(1..33).unwrap_or_default()),
        URL_SAFE_NO_PAD.encode(point.get(33..65).unwrap_or_default()),
    );
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks tokens against a set of keys, an issuer and an audience.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    issuer: String,
    audience: String,
}

impl Verifier {
    pub fn new(keys: Vec<VerifyKey>, issuer: String, audience: String) -> Verifier {
        Verifier {
            keys,
            issuer,
            audience,
        }
    }

    /// Verifies signature, issuer, audience, expiry and not-before at `now_s`.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let dec = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|_| TokenError::Malformed);
        let header: Header = serde_json::from_slice(&dec(h)?).map_err(|_| TokenError::Malformed)?;
        let sig = dec(s)?;
        let signed = &token[..h.len() + 1 + p.len()];
        let leaf = match header.x5c.as_ref().and_then(|c| c.first()) {
            Some(c) => Some(STANDARD.decode(c).map_err(|_| TokenError::Malformed)?),
            None => None,
        };
        if !self.keys.iter().any(|k| k.accepts(&header.alg)) {
            return Err(TokenError::Algorithm(header.alg.chars().take(20).collect()));
        }
        // x5c: the leaf must be one of the trusted certificates (no chain
        // building). kid: the key with that id first; issuers compute ids
        // differently, so then every key of the algorithm (the signature is
        // what proves the token either way).
        let verifies = |k: &&VerifyKey| k.verify(&header.alg, signed.as_bytes(), &sig).is_ok();
        let usable = || self.keys.iter().filter(|k| k.accepts(&header.alg));
        let ok = match (&leaf, &header.kid) {
            (Some(leaf), _) => usable()
                .filter(|k| k.cert.as_deref() == Some(leaf.as_slice()))
                .any(|k| verifies(&k)),
            (None, Some(kid)) => {
                usable()
                    .filter(|k| k.kid.as_ref() == Some(kid))
                    .any(|k| verifies(&k))
                    || usable()
                        .filter(|k| k.kid.as_ref() != Some(kid))
                        .any(|k| verifies(&k))
            }
            (None, None) => usable().any(|k| verifies(&k)),
        };
        if !ok {
            return Err(TokenError::BadSignature);
        }
        let claims: Claims = serde_json::from_slice(&dec(p)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenError::Audience);
        }
        if claims.exp <= now_s - LEEWAY_S {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now_s + LEEWAY_S || claims.iat > now_s + LEEWAY_S {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "wharf".into(),
            sub: "alice".into(),
            aud: Audience::One("registry".into()),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "1".into(),
            access: vec![],
            wharf_use: None,
            wharf_via: None,
            wharf_login_ms: None,
        }
    }

    fn signer() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::load_or_create(&dir.path().join("token.key")).unwrap();
        (dir, s)
    }

    #[test]
    fn sign_verify_and_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, s) = signer();
        let path = dir.path().join("token.key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Loading again gives the same key.
        let again = Signer::load_or_create(&path).unwrap();
        assert_eq!(again.kid(), s.kid());
        let v = Verifier::new(vec![again.verify_key()], "wharf".into(), "registry".into());
        let now = 1_700_000_000;
        let t = s.sign(&claims(now)).unwrap();
        assert_eq!(v.verify(&t, now).unwrap(), claims(now));
        // The JWKS of the signer verifies too.
        let jwks = VerifyKey::from_jwks(&s.jwks().to_string()).unwrap();
        let v2 = Verifier::new(jwks, "wharf".into(), "registry".into());
        assert!(v2.verify(&t, now).is_ok());
    }

    #[test]
    fn rejects_tampering_expiry_audience_issuer() {
        let (_d, s) = signer();
        let v = Verifier::new(vec![s.verify_key()], "wharf".into(), "registry".into());
        let now = 1_700_000_000;
        let t = s.sign(&claims(now)).unwrap();
        // Swap the payload for one granting more: the signature no longer holds.
        let mut evil = claims(now);
        evil.sub = "admin".into();
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&evil).unwrap()),
            parts[2]
        );
        assert!(matches!(
            v.verify(&forged, now),
            Err(TokenError::BadSignature)
        ));
        // alg "none" and HMAC are never accepted.
        for alg in ["none", "HS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let t2 = format!("{h}.{}.", parts[1]);
            assert!(v.verify(&t2, now).is_err(), "{alg}");
        }
        assert!(matches!(
            v.verify(&t, now + 300 + LEEWAY_S),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            v.verify(&t, now - 2 * LEEWAY_S),
            Err(TokenError::NotYetValid)
        ));
        let other_aud = Verifier::new(vec![s.verify_key()], "wharf".into(), "other".into());
        assert!(matches!(
            other_aud.verify(&t, now),
            Err(TokenError::Audience)
        ));
        let other_iss = Verifier::new(vec![s.verify_key()], "evil".into(), "registry".into());
        assert!(matches!(other_iss.verify(&t, now), Err(TokenError::Issuer)));
        // Another key's signature fails.
        let (_d2, s2) = signer();
        let t3 = s2.sign(&claims(now)).unwrap();
        assert!(v.verify(&t3, now).is_err());
        for junk in ["", "a.b", "a.b.c.d", "...", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(v.verify(junk, now).is_err());
        }
    }

    /// An RSA key and a self-signed certificate for it, made by openssl as an
    /// external token server's operator would.
    fn openssl_rsa(dir: &Path) -> (Vec<u8>, String) {
        let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
        let st = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=token-issuer",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed for this test (scripts/test.sh installs it)");
        assert!(st.success());
        let der = pem_blocks(&std::fs::read_to_string(&key).unwrap(), "PRIVATE KEY")
            .unwrap()
            .remove(0);
        (der, std::fs::read_to_string(&cert).unwrap())
    }

    fn rs256(der: &[u8], header: serde_json::Value, claims: &Claims) -> String {
        let pair = signature::RsaKeyPair::from_pkcs8(der).unwrap();
        let mut t = URL_SAFE_NO_PAD.encode(header.to_string());
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()));
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            t.as_bytes(),
            &mut sig,
        )
        .unwrap();
        t.push('.');
        t.push_str(&URL_SAFE_NO_PAD.encode(sig));
        t
    }

    #[test]
    fn external_issuer_with_a_certificate_bundle_and_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let (der, cert_pem) = openssl_rsa(dir.path());
        let keys = VerifyKey::from_cert_bundle(&cert_pem).unwrap();
        let kid = keys[0].kid.clone().unwrap();
        let v = Verifier::new(keys, "wharf".into(), "registry".into());
        let now = 1_700_000_000;
        let c = claims(now);
        let cert_der = pem_blocks(&cert_pem, "CERTIFICATE").unwrap().remove(0);
        // distribution's token servers: x5c with the certificate, or a kid.
        let x5c = rs256(
            &der,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [STANDARD.encode(&cert_der)]}),
            &c,
        );
        assert_eq!(v.verify(&x5c, now).unwrap(), c);
        let with_kid = rs256(&der, serde_json::json!({"alg": "RS256", "kid": kid}), &c);
        assert!(v.verify(&with_kid, now).is_ok());
        let plain = rs256(
            &der,
            serde_json::json!({"alg": "RS256", "kid": "some-other-id"}),
            &c,
        );
        assert!(
            v.verify(&plain, now).is_ok(),
            "an unknown kid still verifies by signature"
        );
        // A certificate in x5c that is not in the bundle is refused even if it signed.
        let other = tempfile::tempdir().unwrap();
        let (der2, cert2) = openssl_rsa(other.path());
        let cert2_der = pem_blocks(&cert2, "CERTIFICATE").unwrap().remove(0);
        let foreign = rs256(
            &der2,
            serde_json::json!({"alg": "RS256", "x5c": [STANDARD.encode(&cert2_der)]}),
            &c,
        );
        assert!(matches!(
            v.verify(&foreign, now),
            Err(TokenError::BadSignature)
        ));
        let foreign_plain = rs256(&der2, serde_json::json!({"alg": "RS256"}), &c);
        assert!(v.verify(&foreign_plain, now).is_err());
        // ES256 against an RSA-only bundle: the algorithm is not accepted.
        let (_d, es) = signer();
        assert!(matches!(
            v.verify(&es.sign(&c).unwrap(), now),
            Err(TokenError::Algorithm(_))
        ));

        // The same key as a JWKS document (n and e from the certificate).
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
        let x509_parser::public_key::PublicKey::RSA(rsa) = cert.public_key().parsed().unwrap()
        else {
            panic!("not RSA")
        };
        let trim = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": "skipped"},
            {"kty": "RSA", "kid": "k1", "n": URL_SAFE_NO_PAD.encode(trim(rsa.modulus)), "e": URL_SAFE_NO_PAD.encode(trim(rsa.exponent))}
        ]});
        let vj = Verifier::new(
            VerifyKey::from_jwks(&jwks.to_string()).unwrap(),
            "wharf".into(),
            "registry".into(),
        );
        let t = rs256(&der, serde_json::json!({"alg": "RS256", "kid": "k1"}), &c);
        assert!(vj.verify(&t, now).is_ok());
        assert!(vj.verify(&foreign_plain, now).is_err());
        assert!(VerifyKey::from_jwks(r#"{"keys": []}"#).is_err());
        assert!(VerifyKey::from_cert_bundle("no pem here").is_err());
    }

    #[test]
    fn libtrust_kid_shape() {
        let kid = libtrust_kid(b"anything");
        assert_eq!(kid.len(), 48 + 11);
        assert!(kid.split(':').all(|g| g.len() == 4));
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(t in "\\PC{0,200}") {
            let v = Verifier::new(vec![], "i".into(), "a".into());
            let _ = v.verify(&t, 0);
        }
    }
}
