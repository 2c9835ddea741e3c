//! rustls configurations: mutual TLS against the cluster CA, one crypto provider (ring).

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::pin::PinnedCaVerifier;
use super::token::Fingerprint;
use super::{NodeCredentials, TlsError, CLUSTER_SERVER_NAME};

/// The one crypto provider of the tree (ring), installed as the process default on first use.
/// Why: with two providers compiled in and none installed rustls panics at the first handshake.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = rustls::crypto::ring::default_provider();
            // Another crate may have installed one first; ours is still used explicitly below.
            let _ = p.clone().install_default();
            Arc::new(p)
        })
        .clone()
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    store.add(ca.clone())?;
    Ok(Arc::new(store))
}

/// Server side: presents the node chain, verifies client certs against the cluster CA. A
/// missing client cert is let through the handshake only so the join ALPN can work; the
/// transport closes every other ALPN that arrives without one (see `transport::accept`).
pub(crate) fn server_config(
    creds: &NodeCredentials,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(creds, alpns, true)
}

/// Server side for TCP request connections: the client must present a certificate signed by
/// the cluster CA (there is no join on TCP, so no anonymous client is let through).
pub(crate) fn server_config_requiring_client_cert(
    creds: &NodeCredentials,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with(creds, &[alpn], false)
}

fn server_config_with(
    creds: &NodeCredentials,
    alpns: &[&[u8]],
    anonymous_clients: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&creds.ca_der)?, provider.clone());
    if anonymous_clients {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain(), creds.rustls_key())?;
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Client side for member-to-member ALPNs: verifies the server against the cluster CA (name
/// [`CLUSTER_SERVER_NAME`]) and presents the node certificate.
pub(crate) fn client_config(
    creds: &NodeCredentials,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(&creds.ca_der)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // not dangerous: a stock WebPki verifier, only built with our provider
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![creds.cert_der.clone()], creds.rustls_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A client that verifies the server against `ca` but has no certificate: only used by tests
/// to prove the server refuses it.
#[cfg(test)]
pub(crate) fn anonymous_client_config(
    ca: &CertificateDer<'static>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// Client side of a join: no certificate yet, the server is trusted only if its chain holds
/// a CA whose SHA-256 equals the token's fingerprint and that CA signed the server cert.
pub(crate) fn join_client_config(
    fingerprint: Fingerprint,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = crypto_provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(fingerprint, provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The node name of a certificate (DER): its first DNS SAN other than the shared cluster
/// name. `None` if the bytes are not a certificate or carry no such SAN.
pub fn cert_node_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) if *d != CLUSTER_SERVER_NAME => Some(d.to_string()),
        _ => None,
    })
}

/// The node name a connected peer proved with its certificate, `None` for an anonymous
/// (joining) peer. Handlers use it to authorize requests by node, not by address.
pub fn peer_node_name(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    cert_node_name(certs.first()?)
}
