//! The join exchange on ALPN `corral-join/1`: a node with no certificate proves it holds a
//! join token and gets a CA-signed certificate back. Its private key never leaves it (CSR).
//!
//! Wire: one request/response on one bidirectional stream, framed like the other ALPNs,
//! postcard-encoded enums whose variant index is the version tag.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use std::time::Duration;

use quinn::{Connection, Endpoint};
use rcgen::{CertificateParams, KeyPair};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    classify, framing, quic_transport_config, quinn_client, Alpn, Transport, TransportError,
    CLOSE_NO_JOIN,
};
use crate::tls::{self, Fingerprint, JoinToken, NodeCredentials, TlsError, CLUSTER_SERVER_NAME};

/// Join messages are small; anything bigger is not a join request.
const JOIN_FRAME_LIMIT: usize = 64 * 1024;
/// Bound on the whole join exchange, on both sides.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize)]
enum JoinRequest {
    V1 {
        secret: String,
        name: String,
        csr_der: Vec<u8>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum JoinResponse {
    V1Accepted { cert_der: Vec<u8>, ca_der: Vec<u8> },
    V1Refused { reason: String },
}

/// Server side: answers one join request on `conn`, then lets the joiner close.
pub(super) async fn serve(t: &Transport, conn: Connection) {
    let remote = conn.remote_address();
    let service = t
        .inner
        .join
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(service) = service else {
        warn!(%remote, "refused join: this node does not serve joins");
        conn.close(CLOSE_NO_JOIN.into(), b"this node does not serve joins");
        return;
    };
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(TransportError::Lost)?;
        let req = framing::read_frame(&mut recv, JOIN_FRAME_LIMIT).await?;
        let resp = decide(&service, remote, &req);
        let bytes =
            postcard::to_allocvec(&resp).map_err(|e| TransportError::Protocol(e.to_string()))?;
        framing::write_frame(&mut send, &bytes, JOIN_FRAME_LIMIT).await?;
        let _ = send.finish();
        // Wait for the joiner to read the answer and close; dropping first would cut it off.
        conn.closed().await;
        Ok::<(), TransportError>(())
    };
    match tokio::time::timeout(JOIN_TIMEOUT, exchange).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(%remote, error = %e.at(remote), "join exchange failed"),
        Err(_) => warn!(%remote, "join exchange timed out"),
    }
}

fn decide(service: &super::JoinService, remote: SocketAddr, req: &[u8]) -> JoinResponse {
    let refuse = |reason: String| {
        warn!(%remote, %reason, "refused join");
        JoinResponse::V1Refused { reason }
    };
    let (secret, name, csr_der) = match postcard::from_bytes::<JoinRequest>(req) {
        Ok(JoinRequest::V1 {
            secret,
            name,
            csr_der,
        }) => (secret, name, csr_der),
        Err(e) => return refuse(format!("malformed join request: {e}")),
    };
    if let Err(e) = tls::validate_node_name(&name) {
        return refuse(e.to_string());
    }
    if let Err(why) = service.validator.validate(&secret) {
        return refuse(format!("token refused for {name:?}: {why}"));
    }
    if let Err(why) = service.validator.admits_name(&name, remote) {
        return refuse(format!("name {name:?} refused: {why}"));
    }
    match service.ca.sign_csr(&name, &csr_der) {
        Ok(cert) => {
            info!(%remote, %name, "issued a node certificate to a joiner");
            JoinResponse::V1Accepted {
                cert_der: cert.to_vec(),
                ca_der: service.ca.cert_der().to_vec(),
            }
        }
        Err(e) => refuse(e.to_string()),
    }
}

/// Client side of a join, run before the node has credentials: dials `seed` with no
/// certificate, trusts it only if its CA matches the token's fingerprint, sends the token
/// secret, `name` and a CSR for a key generated here, and returns the credentials to save
/// with [`NodeCredentials::save`] before binding the real [`Transport`].
pub async fn join_cluster(
    seed: SocketAddr,
    token: &JoinToken,
    name: &str,
) -> Result<NodeCredentials, TransportError> {
    tls::validate_node_name(name)?;
    let cert_err = |what| move |source| TransportError::Tls(TlsError::Cert { what, source });
    let key = KeyPair::generate().map_err(cert_err("generating the node key"))?;
    let csr = CertificateParams::new(vec![name.to_string()])
        .and_then(|p| p.serialize_request(&key))
        .map_err(cert_err("building the join CSR"))?;
    let request = JoinRequest::V1 {
        secret: token.secret.clone(),
        name: name.to_string(),
        csr_der: csr.der().to_vec(),
    };
    let request =
        postcard::to_allocvec(&request).map_err(|e| TransportError::Protocol(e.to_string()))?;

    let bind: SocketAddr = if seed.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint =
        Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    let cfg = quinn_client(
        tls::join_client_config(token.fingerprint, Alpn::Join.as_bytes())?,
        quic_transport_config(Duration::from_secs(15))?,
    )?;
    let result = tokio::time::timeout(JOIN_TIMEOUT, exchange(&endpoint, cfg, seed, &request))
        .await
        .unwrap_or(Err(TransportError::ConnectTimeout {
            addr: seed,
            after: JOIN_TIMEOUT,
        }));
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let (cert_der, ca_der) = result?;

    // Defense in depth: the CA we were handed must be the one the token pins.
    if Fingerprint::of(&ca_der) != token.fingerprint {
        return Err(TransportError::PeerRejected {
            addr: seed,
            reason: "the CA certificate returned does not match the join token fingerprint".into(),
        });
    }
    Ok(NodeCredentials {
        name: name.to_string(),
        cert_der: cert_der.into(),
        key_der: key.serialize_der(),
        ca_der: ca_der.into(),
    })
}

async fn exchange(
    endpoint: &Endpoint,
    cfg: quinn::ClientConfig,
    seed: SocketAddr,
    request: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), TransportError> {
    let connecting = endpoint
        .connect_with(cfg, seed, CLUSTER_SERVER_NAME)
        .map_err(|e| TransportError::Protocol(format!("cannot dial {seed}: {e}")))?;
    let conn = connecting.await.map_err(|e| classify(seed, e))?;
    let result = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(TransportError::Lost)?;
        framing::write_frame(&mut send, request, JOIN_FRAME_LIMIT).await?;
        let _ = send.finish();
        let frame = framing::read_frame(&mut recv, JOIN_FRAME_LIMIT).await?;
        postcard::from_bytes::<JoinResponse>(&frame)
            .map_err(|e| TransportError::Protocol(format!("malformed join response: {e}")))
    }
    .await
    .map_err(|e| e.at(seed));
    conn.close(0u32.into(), b"join done");
    match result? {
        JoinResponse::V1Accepted { cert_der, ca_der } => Ok((cert_der, ca_der)),
        JoinResponse::V1Refused { reason } => {
            Err(TransportError::JoinRefused { addr: seed, reason })
        }
    }
}
