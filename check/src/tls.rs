//! TLS client setup for SSL_GET, on rustls with the `ring` provider only (see shared/CRATES.md:
//! a second provider in the tree makes rustls panic at the first handshake).

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::checker::DefError;
use crate::def::HttpsCheck;
use crate::result::FailReason;

/// Where Debian/Ubuntu, RHEL/Fedora and Alpine/SUSE keep the system CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the client config for one HTTPS definition. Built once per definition; rustls keeps a
/// session cache in it, so later attempts resume instead of doing full handshakes.
pub(crate) fn client_config(def: &HttpsCheck) -> Result<Arc<ClientConfig>, DefError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DefError::Tls(e.to_string()))?;
    let config = if def.tls_verify {
        let pem = match (&def.ca_pem, &def.ca_file) {
            (Some(_), Some(_)) => {
                return Err(DefError::invalid("ca_pem", "give ca_pem or ca_file, not both"))
            }
            (Some(pem), None) => pem.clone().into_bytes(),
            (None, Some(path)) => std::fs::read(path)
                .map_err(|e| DefError::Ca(format!("{}: {e}", path.display())))?,
            (None, None) => system_bundle()?,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| DefError::Ca(format!("bad PEM: {e}")))?;
            roots.add(cert).map_err(|e| DefError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(DefError::Ca("no certificate found in the PEM".into()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn system_bundle() -> Result<Vec<u8>, DefError> {
    for path in SYSTEM_BUNDLES {
        if let Ok(pem) = std::fs::read(path) {
            return Ok(pem);
        }
    }
    Err(DefError::Ca(format!(
        "tls_verify is on, no ca_file/ca_pem given and no system bundle in {SYSTEM_BUNDLES:?}"
    )))
}

/// The name to send in SNI and to verify: `sni`, else `virtualhost`, else the target IP.
pub(crate) fn server_name(def: &HttpsCheck) -> Result<ServerName<'static>, DefError> {
    let (field, name) = match (&def.sni, &def.http.virtualhost) {
        (Some(s), _) => ("sni", s.clone()),
        (None, Some(v)) => ("virtualhost", strip_port(v).to_string()),
        (None, None) => return Ok(ServerName::IpAddress(def.http.target.ip().into())),
    };
    ServerName::try_from(name).map_err(|e| DefError::invalid(field, e.to_string()))
}

/// `www.example.org:8443` → `www.example.org` (a Host header may carry a port, SNI may not).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Turn a handshake error into a reason: rustls errors (bad certificate, alert) are `Tls`, a peer
/// that hangs up mid-handshake is `Tls` too since that is what it usually means.
pub(crate) fn handshake_error(err: io::Error) -> FailReason {
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return FailReason::Tls(inner.to_string());
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof => FailReason::Tls("peer closed the connection during the handshake".into()),
        _ => match FailReason::from_io(&err, crate::result::Phase::Read) {
            FailReason::Io(msg) => FailReason::Tls(msg),
            other => other,
        },
    }
}

/// `tls_verify = false`: accept any certificate, but still check the handshake signatures so the
/// session is at least consistent (what keepalived's SSL_GET does, minus its OpenSSL).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn strips_port_not_ipv6() {
        assert_eq!(strip_port("a.example:8443"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("::1"), "::1");
    }
}
