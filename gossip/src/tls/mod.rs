//! The cluster PKI: one CA per cluster, node certificates signed by it, join tokens that pin
//! the CA by fingerprint, and the rustls configurations that enforce "members of this CA only".
//!
//! Why a private CA instead of a shared secret: QUIC needs TLS anyway, and a CA lets each node
//! prove its own name (the certificate's SAN) while a single root decides membership.

mod ca;
mod config;
mod pin;
mod token;

pub use ca::{validate_node_name, ClusterCa, NodeCredentials, CLUSTER_SERVER_NAME};
#[cfg(test)]
pub(crate) use config::anonymous_client_config;
pub use config::{cert_node_name, crypto_provider, peer_node_name};
pub(crate) use config::{client_config, join_client_config, server_config, server_config_requiring_client_cert};
pub use token::{Fingerprint, JoinToken, MemoryTokens, TokenValidator, Why};

/// Errors of the PKI layer; each names the file or the item at fault so an operator can act.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the data dir could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// rcgen refused to build, parse or sign something.
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// rustls refused a configuration (bad key, bad chain).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A PEM file held nothing usable.
    #[error("{path}: {why}")]
    BadPem {
        /// The file at fault.
        path: std::path::PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A node name cannot be used as a certificate SAN.
    #[error("invalid node name {name:?}: {why}")]
    BadName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        why: &'static str,
    },
    /// A join token string could not be parsed.
    #[error("invalid join token: {0}")]
    BadToken(String),
    /// The verifier builder refused the root store.
    #[error("TLS verifier: {0}")]
    Verifier(String),
}
