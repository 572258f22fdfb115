//! Manifest parsing and validation.
//!
//! Hand-written rather than built on `oci-spec`: the registry needs only the
//! descriptors (to check references) and a few fields (subject, artifactType,
//! annotations), and it must accept Docker schema 2 manifests, Docker lists and
//! OCI 1.1 artifacts alike with one set of rules and precise error messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::media;

/// The OCI spec asks registries to accept manifests of at least 4 MiB.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest is invalid: {0}")]
    Invalid(String),
    #[error("manifest media type {0:?} is not supported")]
    Unsupported(String),
}

/// A content descriptor as it appears in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): config plus layers.
    Image,
    /// An index (OCI index or Docker manifest list): a list of manifests.
    Index,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

fn kind_of(media_type: &str) -> Result<ManifestKind, ManifestError> {
    match media_type {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => Ok(ManifestKind::Image),
        media::OCI_INDEX | media::DOCKER_LIST => Ok(ManifestKind::Index),
        other => Err(ManifestError::Unsupported(other.to_owned())),
    }
}

/// `Content-Type` values that say nothing about the manifest and are ignored.
fn is_generic(content_type: &str) -> bool {
    matches!(
        content_type,
        "" | "application/json" | "application/octet-stream" | "text/plain"
    )
}

impl Manifest {
    /// Parses `body`, sent with `content_type`, into a validated manifest.
    pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| !is_generic(c));
        if let Some(ct) = content_type
            && (ct == media::DOCKER_SCHEMA1 || ct == media::DOCKER_SCHEMA1_SIGNED)
        {
            return Err(ManifestError::Unsupported(ct.to_owned()));
        }
        let raw: Raw =
            serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
        }
        let media_type = match (content_type, raw.media_type.as_deref()) {
            (Some(ct), Some(field)) if ct != field => {
                return Err(ManifestError::Invalid(format!(
                    "Content-Type {ct:?} does not match mediaType {field:?}"
                )));
            }
            (Some(ct), _) => ct.to_owned(),
            (None, Some(field)) => field.to_owned(),
            // Neither says: OCI allows an absent mediaType, so go by shape.
            (None, None) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
            (None, None) if raw.config.is_some() => media::OCI_MANIFEST.to_owned(),
            (None, None) => {
                return Err(ManifestError::Invalid(
                    "cannot tell the manifest type".into(),
                ));
            }
        };
        let kind = kind_of(&media_type)?;
        let m = match kind {
            ManifestKind::Image => {
                if raw.manifests.is_some() {
                    return Err(ManifestError::Invalid(
                        "an image manifest has no manifests field".into(),
                    ));
                }
                let config = raw
                    .config
                    .ok_or_else(|| ManifestError::Invalid("config is required".into()))?;
                let layers = raw
                    .layers
                    .ok_or_else(|| ManifestError::Invalid("layers is required".into()))?;
                Manifest {
                    media_type,
                    kind,
                    config: Some(config),
                    layers,
                    manifests: Vec::new(),
                    subject: raw.subject,
                    artifact_type: raw.artifact_type,
                    annotations: raw.annotations,
                }
            }
            ManifestKind::Index => {
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(ManifestError::Invalid(
                        "an index has no config or layers".into(),
                    ));
                }
                let manifests = raw
                    .manifests
                    .ok_or_else(|| ManifestError::Invalid("manifests is required".into()))?;
                Manifest {
                    media_type,
                    kind,
                    config: None,
                    layers: Vec::new(),
                    manifests,
                    subject: raw.subject,
                    artifact_type: raw.artifact_type,
                    annotations: raw.annotations,
                }
            }
        };
        for d in m.all_descriptors() {
            if d.size < 0 {
                return Err(ManifestError::Invalid(format!(
                    "descriptor {} has a negative size",
                    d.digest
                )));
            }
        }
        if kind == ManifestKind::Index {
            for d in &m.manifests {
                if kind_of(&d.media_type).is_err() {
                    return Err(ManifestError::Invalid(format!(
                        "index entry {} has media type {:?}, not a manifest type",
                        d.digest, d.media_type
                    )));
                }
            }
        }
        Ok(m)
    }

    fn all_descriptors(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(&self.layers)
            .chain(&self.manifests)
            .chain(&self.subject)
    }

    /// Blobs that must exist in the repository: the config and the layers, less
    /// foreign layers (those with `urls`), which live elsewhere by definition.
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(&self.layers)
            .filter(|d| d.urls.as_ref().is_none_or(|u| u.is_empty()))
    }

    /// The `artifactType` a referrers listing reports: the field, else the
    /// config's media type (OCI 1.1, "Listing Referrers").
    pub fn effective_artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image(mt: Option<&str>) -> String {
        let mt = mt
            .map(|m| format!(r#""mediaType":"{m}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,{mt}"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]}}"#
        )
    }

    #[test]
    fn image_by_field_header_or_shape() {
        let m = Manifest::parse(image(Some(media::OCI_MANIFEST)).as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        let m = Manifest::parse(image(None).as_bytes(), Some(media::DOCKER_MANIFEST)).unwrap();
        assert_eq!(m.media_type, media::DOCKER_MANIFEST);
        let m = Manifest::parse(image(None).as_bytes(), Some("application/json")).unwrap();
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        assert_eq!(
            m.effective_artifact_type(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn mismatch_and_garbage_are_invalid() {
        assert!(matches!(
            Manifest::parse(
                image(Some(media::OCI_MANIFEST)).as_bytes(),
                Some(media::DOCKER_MANIFEST)
            ),
            Err(ManifestError::Invalid(_))
        ));
        assert!(matches!(
            Manifest::parse(b"{", None),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::Invalid(_))
        ));
        assert!(matches!(
            Manifest::parse(b"{}", Some(media::DOCKER_SCHEMA1_SIGNED)),
            Err(ManifestError::Unsupported(_))
        ));
        let bad_digest = image(None).replace(D1, "sha256:abc");
        assert!(matches!(
            Manifest::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Json(_))
        ));
        let negative = image(None).replace(r#""size":2"#, r#""size":-2"#);
        assert!(Manifest::parse(negative.as_bytes(), None).is_err());
    }

    #[test]
    fn index_and_subject() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{D1}","size":10,"platform":{{"architecture":"arm64","os":"linux"}}}}],"subject":{{"mediaType":"{}","digest":"{D2}","size":5}},"artifactType":"x/y"}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            media::OCI_MANIFEST
        );
        let m = Manifest::parse(idx.as_bytes(), None).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.manifests.len(), 1);
        assert_eq!(m.subject.as_ref().unwrap().digest.as_str(), D2);
        assert_eq!(m.effective_artifact_type(), Some("x/y"));
        let wrong_child = idx.replacen(media::OCI_MANIFEST, "application/octet-stream", 1);
        assert!(Manifest::parse(wrong_child.as_bytes(), None).is_err());
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let m = image(Some(media::DOCKER_MANIFEST)).replace(
            r#""size":3}"#,
            r#""size":3,"urls":["https://example.com/layer"]}"#,
        );
        let m = Manifest::parse(m.as_bytes(), None).unwrap();
        assert_eq!(m.required_blobs().count(), 1);
    }
}
