//! Validated types of the OCI Distribution and Image specifications.
//!
//! Everything a client sends is parsed into one of these types at the edge of the
//! server, so the layers below never see an unvalidated name, tag or digest.
//! This crate does no I/O.

mod digest;
pub mod manifest;
pub mod media;
mod name;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use name::{NameError, Reference, ReferenceError, RepoName, Tag, is_name_component};
