//! `<transport tls>`: TLS for the forward input with rustls (ring provider).
//!
//! Parameters as Fluentd's server transport section: `cert_path` (PEM, the chain in order),
//! `private_key_path` (PEM: PKCS#8, PKCS#1 or SEC1), `ca_path` (PEM CA certificates that sign
//! client certificates), `client_cert_auth` (require and verify a client certificate),
//! `version` (default `TLSv1_2`, meaning exactly TLS 1.2 as in Fluentd) or `min_version` +
//! `max_version`. Files are read at configuration time so `--dry-run` reports them.
//!
//! Not supported, and refused with a clear error rather than ignored: encrypted private keys
//! (`private_key_passphrase`), generated or CA-signed-on-the-fly certificates
//! (`ca_cert_path`, `ca_private_key_path`, `generate_*`, or no `cert_path` at all), `ciphers`
//! (OpenSSL cipher strings), `cert_verifier`, `ensure_fips`, and TLS 1.0/1.1.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};

use crate::config::{ConfigError, Element};

/// Parameters of Fluentd's TLS transport that sluice refuses (with why).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("private_key_passphrase", "encrypted private keys are not supported; decrypt the key (openssl pkey -in key.pem -out plain.pem)"),
    ("ca_cert_path", "generating certificates signed by a CA is not supported; give cert_path and private_key_path"),
    ("ca_private_key_path", "generating certificates signed by a CA is not supported; give cert_path and private_key_path"),
    ("ca_private_key_passphrase", "generating certificates signed by a CA is not supported"),
    ("cert_verifier", "custom Ruby certificate verifiers are not supported"),
    ("ciphers", "OpenSSL cipher lists are not supported; rustls uses its safe default suites"),
    ("generate_private_key_length", "generating self-signed certificates is not supported"),
    ("generate_cert_country", "generating self-signed certificates is not supported"),
    ("generate_cert_state", "generating self-signed certificates is not supported"),
    ("generate_cert_locality", "generating self-signed certificates is not supported"),
    ("generate_cert_common_name", "generating self-signed certificates is not supported"),
    ("generate_cert_expiration", "generating self-signed certificates is not supported"),
    ("generate_cert_digest", "generating self-signed certificates is not supported"),
    ("cert_thumbprint", "Windows certificate stores are not supported"),
    ("cert_logical_store_name", "Windows certificate stores are not supported"),
    ("cert_use_enterprise_store", "Windows certificate stores are not supported"),
];

const VERSIONS: &[&str] = &[
    "TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3", "TLS1_1", "TLS1_2", "TLS1_3",
];

fn version(name: &str) -> Option<u8> {
    match name {
        "TLSv1_2" | "TLS1_2" => Some(2),
        "TLSv1_3" | "TLS1_3" => Some(3),
        _ => None,
    }
}

fn file_error(p: &crate::config::Param, what: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::at(
        &p.value_pos,
        format!("{}: cannot read {what} from {}: {e}", p.key, p.value),
    )
}

/// Builds the rustls server configuration from a `<transport tls>` section.
pub fn configure(t: &Element) -> Result<Arc<ServerConfig>, ConfigError> {
    for (key, why) in UNSUPPORTED {
        if let Some(p) = t.param(key) {
            return Err(ConfigError::at(&p.key_pos, format!("{key}: {why}")));
        }
    }
    if t.bool("ensure_fips")? == Some(true) {
        let p = t.peek("ensure_fips").expect("was read");
        return Err(ConfigError::at(
            &p.value_pos,
            "ensure_fips: FIPS mode is not supported",
        ));
    }
    if t.bool("insecure")? == Some(true) {
        let p = t.peek("insecure").expect("was read");
        return Err(ConfigError::at(
            &p.value_pos,
            "insecure: TLS 1.0/1.1 and weak ciphers are not supported",
        ));
    }
    let ver = t.enumeration("version", VERSIONS)?.unwrap_or("TLSv1_2");
    let min = t.enumeration("min_version", VERSIONS)?;
    let max = t.enumeration("max_version", VERSIONS)?;
    let (lo, hi) = match (min, max) {
        (None, None) => (ver, ver),
        (Some(a), Some(b)) => (a, b),
        (None, Some(_)) => {
            return Err(ConfigError::at(
                &t.pos,
                "When you set max_version, must set min_version together",
            ))
        }
        (Some(_), None) => {
            return Err(ConfigError::at(
                &t.pos,
                "When you set min_version, must set max_version together",
            ))
        }
    };
    let (Some(lo_v), Some(hi_v)) = (version(lo), version(hi)) else {
        return Err(ConfigError::at(
            &t.pos,
            format!(
                "TLS versions below 1.2 are not supported (got {lo}..{hi}); use TLSv1_2 or TLSv1_3"
            ),
        ));
    };
    let mut versions: Vec<&'static SupportedProtocolVersion> = Vec::new();
    if lo_v <= 2 && hi_v >= 2 {
        versions.push(&rustls::version::TLS12);
    }
    if hi_v >= 3 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        return Err(ConfigError::at(&t.pos, "min_version is above max_version"));
    }

    let cert_p = t.param("cert_path").cloned().ok_or_else(|| {
        ConfigError::at(
            &t.pos,
            "<transport tls> needs cert_path and private_key_path (generated self-signed certificates are not supported)",
        )
    })?;
    let key_p = t
        .param("private_key_path")
        .cloned()
        .ok_or_else(|| ConfigError::at(&t.pos, "<transport tls> needs private_key_path"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_p.value)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(&cert_p, "certificates", e))?;
    if certs.is_empty() {
        return Err(file_error(
            &cert_p,
            "certificates",
            "no PEM certificate found",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_p.value)
        .map_err(|e| file_error(&key_p, "a private key", e))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| ConfigError::at(&t.pos, format!("TLS: {e}")))?;
    let client_cert_auth = t.bool("client_cert_auth")?.unwrap_or(false);
    let ca = t.param("ca_path").cloned();
    let builder = match (client_cert_auth, ca) {
        (true, None) => {
            return Err(ConfigError::at(
                &t.pos,
                "client_cert_auth needs ca_path (the CA that signs client certificates)",
            ))
        }
        (true, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&ca.value)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error(&ca, "CA certificates", e))?;
            for c in cas {
                roots
                    .add(c)
                    .map_err(|e| file_error(&ca, "CA certificates", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(&ca, "CA certificates", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        // Without client_cert_auth, Fluentd loads ca_path into a store it never uses for a
        // server; checking the file still catches typos.
        (false, Some(ca)) => {
            CertificateDer::pem_file_iter(&ca.value)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error(&ca, "CA certificates", e))?;
            builder.with_no_client_auth()
        }
        (false, None) => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&key_p, "a key matching cert_path", e))?;
    Ok(Arc::new(cfg))
}

/// Runs the TLS handshake of an accepted connection within `limit`; the error is the warning to
/// log before closing the connection.
pub async fn handshake<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    limit: std::time::Duration,
) -> Result<tokio_rustls::server::TlsStream<S>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(format!("TLS handshake failed, closing connection: {e}")),
        Err(_) => Err("TLS handshake timed out, closing connection".into()),
    }
}
