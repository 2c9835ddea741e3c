//! The cluster CA and node credentials, persisted as PEM files in the node's data dir.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use super::token::Fingerprint;
use super::TlsError;

/// The DNS name every node certificate carries besides its own name. Clients dial peers by
/// address without knowing their names (seeds, gossip targets), so they verify this shared
/// name; the node's own name stays in the first SAN for authorization.
pub const CLUSTER_SERVER_NAME: &str = "corral.cluster";

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const NODE_CERT: &str = "node.pem";
const NODE_KEY: &str = "node.key";

/// The cluster's certificate authority. Holding it lets a node issue certificates (bootstrap
/// and serving joins); every node only needs its public certificate to verify peers.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint().to_string())
            .finish_non_exhaustive()
    }
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Cert { what, source }
}

fn read(path: PathBuf) -> Result<String, TlsError> {
    fs::read_to_string(&path).map_err(|source| TlsError::Io { path, source })
}

fn write(path: PathBuf, data: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let res = opts
        .open(&path)
        .and_then(|mut f| f.write_all(data.as_bytes()));
    res.map_err(|source| TlsError::Io { path, source })
}

fn pem_certs(path: &Path, text: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    let certs = certs.map_err(|e| TlsError::BadPem {
        path: path.into(),
        why: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            path: path.into(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Checks that a node name can be a DNS SAN (lowercase letters, digits, '-' and '.', 1..=63
/// bytes): the name ends up in certificates and in peer authorization, so refuse early.
pub fn validate_node_name(name: &str) -> Result<(), TlsError> {
    let bad = |why| {
        Err(TlsError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 bytes long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("only lowercase letters, digits, '-' and '.' are allowed");
    }
    if name.starts_with(['-', '.']) || name.ends_with(['-', '.']) {
        return bad("must not start or end with '-' or '.'");
    }
    if name == CLUSTER_SERVER_NAME {
        return bad("reserved for the shared cluster SAN");
    }
    Ok(())
}

impl ClusterCa {
    /// Creates a fresh CA (ECDSA P-256). Done once, by the node that bootstraps the cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("corral cluster CA {cluster_name}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("self-signing the CA"))?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        })
    }

    /// Whether `dir` holds a CA key (only nodes that may issue certificates do).
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(CA_KEY).exists()
    }

    /// Loads `ca.pem` + `ca.key` from the data dir.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(dir.join(CA_CERT))?;
        let key_pem = read(dir.join(CA_KEY))?;
        Self::from_pem(&dir.join(CA_CERT), cert_pem, &key_pem)
    }

    /// The CA as PEM text (certificate, private key), e.g. to replicate it so that every
    /// member can serve joins, not only the node that created it.
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_pem.clone(), self.key.serialize_pem())
    }

    /// Rebuilds a CA from [`ClusterCa::to_pem`] output; `origin` labels errors.
    pub fn from_pem(origin: &Path, cert_pem: String, key_pem: &str) -> Result<Self, TlsError> {
        let cert_der = pem_certs(origin, &cert_pem)?.remove(0);
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err("parsing ca.key"))?;
        // Parse it once now so a corrupt file fails at load, not at the first join.
        Issuer::from_ca_cert_der(&cert_der, &key).map_err(cert_err("parsing ca.pem"))?;
        Ok(Self {
            cert_der,
            cert_pem,
            key,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into the data dir.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.into(),
            source,
        })?;
        write(dir.join(CA_CERT), &self.cert_pem, false)?;
        write(dir.join(CA_KEY), &self.key.serialize_pem(), true)
    }

    /// The CA certificate (DER), the trust root every node verifies peers against.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate DER: what a join token pins.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    fn node_params(name: &str) -> Result<CertificateParams, TlsError> {
        validate_node_name(name)?;
        let mut params = CertificateParams::new(vec![name.to_string(), CLUSTER_SERVER_NAME.into()])
            .map_err(cert_err("building node certificate parameters"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, TlsError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(cert_err("loading the CA as issuer"))
    }

    /// Issues a node certificate with a fresh key pair (used at bootstrap and by tests).
    pub fn issue(&self, name: &str) -> Result<NodeCredentials, TlsError> {
        let key = KeyPair::generate().map_err(cert_err("generating a node key"))?;
        let cert = Self::node_params(name)?
            .signed_by(&key, &self.issuer()?)
            .map_err(cert_err("signing the node certificate"))?;
        Ok(NodeCredentials {
            name: name.to_string(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
            ca_der: self.cert_der.clone(),
        })
    }

    /// Signs a joining node's CSR. Only the CSR's public key is used (its signature is checked
    /// by rcgen): names and usages come from `name`, so a joiner cannot ask for more.
    pub fn sign_csr(
        &self,
        name: &str,
        csr_der: &[u8],
    ) -> Result<CertificateDer<'static>, TlsError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(cert_err("parsing the join CSR"))?;
        let cert = Self::node_params(name)?
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(cert_err("signing the joiner's certificate"))?;
        Ok(cert.der().clone())
    }
}

/// What a node needs to take part in the cluster: its name, its CA-signed certificate and key,
/// and the CA certificate it trusts. Persisted as `node.pem` (cert then CA), `node.key`, `ca.pem`.
#[derive(Clone)]
pub struct NodeCredentials {
    /// The node name, also the first SAN of `cert_der`.
    pub name: String,
    /// The node certificate (DER), signed by the cluster CA.
    pub cert_der: CertificateDer<'static>,
    /// The node's private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The cluster CA certificate (DER).
    pub ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredentials")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeCredentials {
    /// Whether the data dir already holds node credentials (restart vs. first start).
    pub fn exist_in(dir: &Path) -> bool {
        dir.join(NODE_CERT).exists() && dir.join(NODE_KEY).exists() && dir.join(CA_CERT).exists()
    }

    /// Loads the node credentials from the data dir; the name is read back from the cert SAN.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(NODE_CERT);
        let cert_der = pem_certs(&cert_path, &read(cert_path.clone())?)?.remove(0);
        let ca_path = dir.join(CA_CERT);
        let ca_der = pem_certs(&ca_path, &read(ca_path.clone())?)?.remove(0);
        let key_pem = read(dir.join(NODE_KEY))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err("parsing node.key"))?;
        let name = super::config::cert_node_name(&cert_der).ok_or_else(|| TlsError::BadPem {
            path: cert_path,
            why: "certificate carries no node name SAN".into(),
        })?;
        Ok(Self {
            name,
            cert_der,
            key_der: key.serialize_der(),
            ca_der,
        })
    }

    /// Writes `node.pem`, `node.key` (0600) and `ca.pem` into the data dir.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.into(),
            source,
        })?;
        let key = KeyPair::try_from(self.key_der.as_slice())
            .map_err(cert_err("re-reading the node key"))?;
        write(
            dir.join(NODE_CERT),
            &to_pem("CERTIFICATE", &self.cert_der),
            false,
        )?;
        write(dir.join(NODE_KEY), &key.serialize_pem(), true)?;
        write(
            dir.join(CA_CERT),
            &to_pem("CERTIFICATE", &self.ca_der),
            false,
        )
    }

    /// The key in the form rustls takes.
    pub(crate) fn rustls_key(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }

    /// The chain presented to peers: the node cert then the CA, so a joiner can pin the CA.
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone(), self.ca_der.clone()]
    }
}

fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gossip-ca-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn ca_and_node_round_trip_through_the_data_dir() {
        let dir = tmpdir("rt");
        let ca = ClusterCa::generate("test").unwrap();
        ca.save(&dir).unwrap();
        let node = ca.issue("node-1").unwrap();
        node.save(&dir).unwrap();
        let ca2 = ClusterCa::load(&dir).unwrap();
        assert_eq!(ca2.fingerprint(), ca.fingerprint());
        let node2 = NodeCredentials::load(&dir).unwrap();
        assert_eq!(node2.name, "node-1");
        assert_eq!(node2.cert_der, node.cert_der);
        assert_eq!(node2.key_der, node.key_der);
        // The reloaded CA can still sign.
        ca2.issue("node-2").unwrap();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_names_are_refused_with_a_reason() {
        let ca = ClusterCa::generate("test").unwrap();
        for bad in ["", "Node", "a b", "-x", "x.", CLUSTER_SERVER_NAME] {
            let err = ca.issue(bad).unwrap_err().to_string();
            assert!(err.contains("invalid node name"), "{bad}: {err}");
        }
    }

    #[test]
    fn garbage_csr_is_an_error_not_a_panic() {
        let ca = ClusterCa::generate("test").unwrap();
        let err = ca
            .sign_csr("node-1", b"\x30\x03garbage")
            .unwrap_err()
            .to_string();
        assert!(err.contains("parsing the join CSR"), "{err}");
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = tmpdir("missing");
        let err = ClusterCa::load(&dir).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }
}
