//! TLS for the listener: the rustls server configuration from the PEM files
//! of `http.tls`, and the certificate's validity for `config check`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsFiles, TlsVersion};

/// The server configuration: the chain and the key, which must match, with
/// ALPN for HTTP/2 when `http2`.
pub fn server_config(t: &TlsFiles, http2: bool) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.certificate)
        .with_context(|| format!("reading certificate {}", t.certificate.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", t.certificate.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", t.certificate.display());
    }
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .with_context(|| format!("reading private key {}", t.key.display()))?;
    let versions: &[&rustls::SupportedProtocolVersion] = match t.minimum {
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "certificate {} and key {} do not form a usable pair",
                t.certificate.display(),
                t.key.display()
            )
        })?;
    sc.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(sc)
}

pub fn acceptor(t: &TlsFiles, http2: bool) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(server_config(t, http2)?)))
}

/// A warning if the first certificate of the chain is expired or not yet
/// valid; `Ok(None)` if it is valid now.
pub fn validity(cert: &Path) -> anyhow::Result<Option<String>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(first) = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificate {}", cert.display()))?
        .next()
    else {
        return Ok(None);
    };
    let der = first.with_context(|| format!("parsing certificate {}", cert.display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    let v = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    Ok(if v.not_after < now {
        Some(format!(
            "{} expired on {}: clients will refuse it",
            cert.display(),
            v.not_after
        ))
    } else if v.not_before > now {
        Some(format!(
            "{} is not valid before {}",
            cert.display(),
            v.not_before
        ))
    } else {
        None
    })
}
