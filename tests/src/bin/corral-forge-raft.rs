//! Lab tool for the Raft sender check: sends one AppendEntries heartbeat to a member over a
//! connection authenticated with the certificate in CERT_DIR (a node's data_dir), speaking for
//! the node named CLAIM in TERM. Prints `accepted: …` with openraft's answer, or `refused: …`
//! with the receiver's error. A member must refuse a request that speaks for another node.
//!
//! ```text
//! corral-forge-raft CERT_DIR TO_IP:PORT CLAIM TERM
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use gossip::tls::NodeCredentials;
use gossip::transport::TcpRequests;
use gossip::{Alpn, TransportConfig};
use raft::network::{RpcRequest, RpcResponse};
use raft::openraft::raft::AppendEntriesRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, to, claim, term] = args.as_slice() else {
        eprintln!("usage: corral-forge-raft CERT_DIR TO_IP:PORT CLAIM TERM");
        std::process::exit(2);
    };
    let creds = NodeCredentials::load(&PathBuf::from(dir)).expect("certificate in CERT_DIR");
    let to: SocketAddr = to.parse().expect("TO_IP:PORT");
    let term: u64 = term.parse().expect("TERM");
    let client = TcpRequests::bind(TransportConfig::new("0.0.0.0:0".parse().unwrap(), creds), Alpn::Raft).expect("bind");
    let req = RpcRequest::AppendEntries(AppendEntriesRequest {
        vote: raft::openraft::Vote::new_committed(term, raft::node_id_for(claim)),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    });
    let body = raft::codec::encode("forged request", &req).expect("encode");
    match client.request(to, &body).await {
        Ok(answer) => match raft::codec::decode::<RpcResponse>("answer", &answer) {
            Ok(r) => println!("accepted: {r:?}"),
            Err(e) => println!("accepted, undecodable answer: {e}"),
        },
        Err(e) => println!("refused: {e}"),
    }
}
