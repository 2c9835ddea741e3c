//! Where corralctl sends daemon requests: the local admin socket (default), or with
//! `--remote IP:PORT --cert-dir DIR` a member's QUIC endpoint, authenticated with a certificate of
//! the cluster (a node's data directory holds one: node.pem, node.key, ca.pem).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use gossip::tls::NodeCredentials;
use gossip::transport::{Alpn, Transport, TransportConfig};
use node::api::{ClientError, Request, ResponseBody};

static REMOTE: OnceLock<(SocketAddr, PathBuf)> = OnceLock::new();

/// Sends every later request to `addr` over QUIC with the credentials in `cert_dir`.
pub fn set_remote(addr: SocketAddr, cert_dir: PathBuf) {
    let _ = REMOTE.set((addr, cert_dir));
}

/// One request to the chosen node.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<ResponseBody, ClientError> {
    match REMOTE.get() {
        None => node::api::call(socket, req, timeout),
        Some((addr, dir)) => remote(*addr, dir, req, timeout),
    }
}

fn remote(addr: SocketAddr, dir: &Path, req: &Request, timeout: Duration) -> Result<ResponseBody, ClientError> {
    let err = |what: &str, e: &dyn std::fmt::Display| ClientError::Remote(format!("{what}: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| err("tokio runtime", &e))?;
    rt.block_on(async {
        let creds = NodeCredentials::load(dir).map_err(|e| err(&format!("credentials in {}", dir.display()), &e))?;
        let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
        let t = Transport::bind(TransportConfig::new(bind, creds)).map_err(|e| err("QUIC endpoint", &e))?;
        let body = node::api::encode_request(req);
        let reply = tokio::time::timeout(timeout, t.request(addr, Alpn::Admin, body.as_bytes()))
            .await
            .map_err(|_| ClientError::Remote(format!("{addr} did not answer within {timeout:?}")))?
            .map_err(|e| err(&format!("{addr}"), &e))?;
        t.close(Duration::from_millis(100)).await;
        node::api::decode_response(&String::from_utf8_lossy(&reply))
    })
}
