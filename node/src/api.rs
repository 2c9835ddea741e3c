//! The admin API between `corralctl` and `corrald`: one JSON request and one JSON response
//! per line over a Unix socket (mode 0600, root only).
//!
//! JSON rather than postcard here because operators debug this socket with `socat`, and the
//! same types serialize `corralctl … -o json`. Versioned by the `v` field so an old
//! `corralctl` talking to a new daemon gets a clear error instead of a misparse.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Bumped when a request or response changes incompatibly.
pub const API_VERSION: u32 = 1;

/// A request envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

/// What `corralctl` can ask of a running node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Every VRRP instance's state, priority, master and counters.
    VrrpStatus,
    /// Cluster members as this node sees them (gossip state + Raft role).
    Members,
    /// Raft: leader, term, indexes, voters, learners, replication lag.
    RaftStatus,
    /// A new join token (written through Raft, valid on every member).
    TokenCreate {
        /// humantime (`"1h"`); absent = never expires.
        ttl: Option<String>,
        #[serde(default)]
        description: String,
    },
    /// Join tokens (ids, expiry, revoked); never the secrets.
    TokenList,
    /// Revokes a token by id.
    TokenRevoke { id: String },
    /// Announce this node to another seed.
    Join { seed: String },
    /// Leave the cluster gracefully and stop this daemon.
    Leave,
    /// Remove a node from the Raft membership at once.
    Remove { node: String },
    /// Sets a key in the opaque key/value section (replaced by the director's rules later).
    KvPut { key: String, value: String },
    /// Reads the key/value section as applied on this node.
    KvList,
    /// Replaces the whole rule set (validated, diffed, one Raft entry); `dry_run` only diffs.
    Apply { rules: crate::rules::RuleSet, #[serde(default)] dry_run: bool },
    /// The rule set as replicated (valid `apply` input).
    GetServices,
    /// One edit of the rule set (`corralctl vs …` / `rs …`).
    Edit { edit: crate::rules::Edit },
    /// The same, validated and diffed only (`--dry-run`). A request of its own, not a flag on
    /// `Edit`: a node that does not know it refuses it rather than commit the edit.
    PreviewEdit { edit: crate::rules::Edit },
    /// Per node: applied revision, drift, last error, VRRP and sync-daemon state.
    Status,
    /// This node's own report, as of now: `status` asks every member for it (a gossiped copy
    /// is only the fallback for a member that does not answer).
    Report,
    /// An observer's health claims for the Raft leader (cluster members over QUIC only; the
    /// sender must be the node its certificate names).
    Observe { report: crate::health::verdicts::ObserverReport },
    /// This node's latest results for the checks it observes.
    LocalChecks,
    /// Every real server with its verdict and its observers' latest results.
    RsList,
    /// Prometheus text exposition of this node's counters.
    Metrics,
    /// A request another member forwarded to this node because it is the Raft leader; never
    /// forwarded again (no loops).
    Forwarded { inner: Box<Request> },
}

impl Request {
    /// Requests that change replicated state run on the Raft leader.
    pub fn needs_leader(&self) -> bool {
        matches!(
            self,
            Request::TokenCreate { .. }
                | Request::TokenRevoke { .. }
                | Request::Remove { .. }
                | Request::KvPut { .. }
                | Request::Apply { .. }
                | Request::Edit { .. }
                | Request::PreviewEdit { .. }
        )
    }
}

/// The daemon's answer: a result or an error message for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { result: ResponseBody },
    Error { message: String },
}

/// Successful results, one variant per request kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResponseBody {
    VrrpStatus { instances: Vec<VrrpInstanceStatus> },
    Members { members: Vec<MemberStatus> },
    RaftStatus(RaftStatus),
    /// A created token: the only time its secret is shown.
    TokenCreated { token: String, info: TokenInfo },
    Tokens { tokens: Vec<TokenInfo> },
    /// A change that went through Raft (or a local action, revision absent).
    Done { message: String, revision: Option<u64> },
    Kv { revision: u64, entries: std::collections::BTreeMap<String, String> },
    /// Result of `apply` / an edit: the changes to every director's IPVS, in ipvsadm's words.
    Applied { revision: Option<u64>, dry_run: bool, changes: Vec<String> },
    Services { revision: u64, rules: crate::rules::RuleSet },
    Status { revision: u64, nodes: Vec<NodeStatus> },
    Report { report: NodeReport },
    LocalChecks { results: std::collections::BTreeMap<String, crate::health::LocalResult> },
    RsList { revision: u64, rows: Vec<crate::health::RsRow> },
    Metrics { text: String },
}

/// One director in `corralctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// Gossip state as seen from the answering node.
    pub state: String,
    pub raft: String,
    /// What the node reported about itself (absent: no report yet).
    pub report: Option<NodeReport>,
    /// The report is the node's answer to this status request; false: the node did not answer
    /// and `report` is the last copy it gossiped (see [`crate::admin::report_gossip_due`]: a
    /// second after the node's last change, up to [`REPORT_GOSSIP_MAX_DELAY`] during a burst).
    #[serde(default)]
    pub report_live: bool,
}

/// Least time between two gossiped copies of a node's report. Gossip only keeps a fallback
/// for members that do not answer `status`: the report changes with every applied revision,
/// and gossiping each change cost a third of a rule change's CPU on five directors.
pub const REPORT_GOSSIP_SPACING: std::time::Duration = std::time::Duration::from_secs(5);
/// A changed report is gossiped once it has stayed the same this long (a burst of changes is
/// over), see [`crate::admin::report_gossip_due`].
pub const REPORT_GOSSIP_QUIET: std::time::Duration = std::time::Duration::from_secs(1);
/// ... or once it has differed from the gossiped copy this long (changes that never stop).
pub const REPORT_GOSSIP_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

/// What each node gossips about itself (its metadata), JSON with a version field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub v: u32,
    pub director: Option<crate::director::DirectorStatus>,
    /// VRRP instance → state.
    pub vrrp: std::collections::BTreeMap<String, String>,
    /// Why Raft stopped on this node, if it did ([`crate::cluster::Cluster::raft_stopped`]):
    /// the node then follows no rule change or verdict until restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_error: Option<String>,
}

/// One member as `corralctl members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    /// QUIC endpoint `ip:port`.
    pub addr: String,
    /// `alive`, `suspect`, `dead` or `left` (gossip's view from the answering node).
    pub state: String,
    /// `leader`, `voter`, `learner` or `none`.
    pub raft: String,
    /// Gossip identity generation (start time in ms); changes when the node restarts.
    pub incarnation: u64,
}

/// `corralctl raft status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// The answering node.
    pub node: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_log_index: u64,
    /// Highest index applied here (everything up to it is committed).
    pub applied_index: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// Per follower: entries behind the leader's log (leader only; absent elsewhere).
    pub lag: std::collections::BTreeMap<String, u64>,
    /// Time since a quorum last acknowledged the leader (leader only).
    pub millis_since_quorum_ack: Option<u64>,
    /// Why Raft stopped on this node (a storage error such as a full data_dir); the figures
    /// above are then as they were when it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// A join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub created_unix: u64,
    pub expires_unix: Option<u64>,
    pub revoked: bool,
    pub description: String,
}

/// One VRRP instance as `corralctl vrrp status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpInstanceStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub version: u8,
    /// `INIT`, `BACKUP`, `MASTER` or `FAULT`.
    pub state: String,
    /// Configured priority.
    pub base_priority: u8,
    /// After tracked interfaces and scripts.
    pub effective_priority: u8,
    /// The master we last heard from (or our own address when master).
    pub master: Option<IpAddr>,
    pub virtual_ips: Vec<String>,
    /// Counters by name: adverts sent/received, drops per reason, transitions.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Why a call to the daemon failed, phrased for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin socket {path} does not exist: is corrald running? (pick another node with --socket PATH)")]
    NoSocket { path: String },
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("talking to corrald at {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("corrald sent a response this corralctl cannot read: {0}")]
    Decode(String),
    #[error("{0}")]
    Remote(String),
}

/// Sends one request to the daemon behind `socket` and waits (bounded) for its answer.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<ResponseBody, ClientError> {
    let path = socket.display().to_string();
    if !socket.exists() {
        return Err(ClientError::NoSocket { path });
    }
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect { path: path.clone(), source })?;
    let io = |source| ClientError::Io { path: path.clone(), source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = encode_request(request);
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    if reply.is_empty() {
        return Err(ClientError::Decode("corrald closed the connection without an answer".into()));
    }
    decode_response(&reply)
}

/// Encodes one request line (no newline), as sent on the socket or forwarded over QUIC.
pub fn encode_request(req: &Request) -> String {
    serde_json::to_string(&Envelope { v: API_VERSION, body: req.clone() })
        .unwrap_or_else(|e| format!("{{\"v\":{API_VERSION},\"op\":\"encode error: {e}\"}}"))
}

/// Decodes one response line into its result or the daemon's error message.
pub fn decode_response(line: &str) -> Result<ResponseBody, ClientError> {
    let env: Envelope<Response> = serde_json::from_str(line).map_err(|e| ClientError::Decode(e.to_string()))?;
    if env.v != API_VERSION {
        return Err(ClientError::Decode(format!("API version {} (this client speaks {API_VERSION})", env.v)));
    }
    match env.body {
        Response::Ok { result } => Ok(result),
        Response::Error { message } => Err(ClientError::Remote(message)),
    }
}

/// Decodes one request line; the error text goes back to the client verbatim.
pub fn decode_request(line: &str) -> Result<Request, String> {
    let env: Envelope<serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))?;
    if env.v != API_VERSION {
        return Err(format!("unsupported API version {} (corrald speaks {API_VERSION})", env.v));
    }
    serde_json::from_value(env.body).map_err(|e| format!("unknown or malformed request: {e}"))
}

/// Encodes one response line (with its newline).
pub fn encode_response(resp: &Response) -> String {
    let mut s = serde_json::to_string(&Envelope { v: API_VERSION, body: resp.clone() })
        .unwrap_or_else(|e| format!("{{\"v\":{API_VERSION},\"status\":\"error\",\"message\":\"encode: {e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let line = serde_json::to_string(&Envelope { v: API_VERSION, body: Request::VrrpStatus }).unwrap();
        assert_eq!(line, r#"{"v":1,"op":"vrrp_status"}"#);
        assert_eq!(decode_request(&line).unwrap(), Request::VrrpStatus);
    }

    #[test]
    fn bad_requests_are_named() {
        assert!(decode_request("not json").unwrap_err().contains("malformed"));
        assert!(decode_request(r#"{"v":9,"op":"vrrp_status"}"#).unwrap_err().contains("version 9"));
        assert!(decode_request(r#"{"v":1,"op":"launch_missiles"}"#).unwrap_err().contains("unknown"));
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let e = call(Path::new("/nonexistent/corral.sock"), &Request::VrrpStatus, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("is corrald running"), "{e}");
    }
}
