//! What the node counts, in Prometheus's text format (0.0.4): `corralctl metrics` prints it,
//! and with `[node] metrics_listen` corrald serves it over HTTP at `/metrics` for Prometheus
//! to scrape, as the keepalived exporter does for keepalived. VRRP is there on every node
//! (state, priorities, adverts, drops by reason, transitions); Raft, gossip, health checks and
//! the director on cluster members.

use std::fmt::Display;
use std::net::SocketAddr;

use anyhow::Context;

use crate::api::{MemberStatus, RaftStatus, VrrpInstanceStatus};

/// A text exposition being written: one `HELP`/`TYPE` header per family, then its samples.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts a family (`kind`: `counter` or `gauge`).
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        self.0.push_str(&format!("# HELP {name} {}\n# TYPE {name} {kind}\n", help.replace('\\', "\\\\").replace('\n', "\\n")));
    }

    /// One sample of the family started last, label values escaped as the format requires.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            self.0.push('{');
            self.0.push_str(&l.join(","));
            self.0.push('}');
        }
        self.0.push_str(&format!(" {value}\n"));
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: &str, value: impl Display) {
        self.family(name, help, kind);
        self.sample(name, &[], value);
    }

    /// Text written elsewhere in the same format (the health checker's families).
    pub fn raw(&mut self, text: &str) {
        self.0.push_str(text);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The VRRP states a `corral_vrrp_state` sample can name (one is 1, the others 0 per instance).
const STATES: [&str; 4] = ["INIT", "BACKUP", "MASTER", "FAULT"];

/// Per instance: its state (one sample per state, the current one 1), priorities, counters,
/// and drops by reason.
pub fn vrrp(x: &mut Exposition, instances: &[VrrpInstanceStatus]) {
    // Every sample names its instance by these, then any labels of its own.
    let sample = |x: &mut Exposition, name: &str, i: &VrrpInstanceStatus, extra: &[(&str, &str)], value: u64| {
        let vrid = i.vrid.to_string();
        let mut l = vec![("instance", i.name.as_str()), ("interface", i.interface.as_str()), ("vrid", vrid.as_str())];
        l.extend_from_slice(extra);
        x.sample(name, &l, value);
    };
    x.family("corral_vrrp_state", "VRRP instance state: 1 for the current one.", "gauge");
    for i in instances {
        for s in STATES {
            sample(x, "corral_vrrp_state", i, &[("state", s)], u64::from(i.state == s));
        }
    }
    let gauges: [(&str, &str, fn(&VrrpInstanceStatus) -> u64); 2] = [
        ("corral_vrrp_priority", "Configured priority.", |i| u64::from(i.base_priority)),
        ("corral_vrrp_effective_priority", "Priority after tracked objects and quorum fencing.", |i| u64::from(i.effective_priority)),
    ];
    for (name, help, get) in gauges {
        x.family(name, help, "gauge");
        for i in instances {
            sample(x, name, i, &[], get(i));
        }
    }
    let counters = [
        ("adverts_sent", "Adverts sent."),
        ("adverts_received", "Valid adverts received."),
        ("priority_zero_sent", "Priority-0 adverts sent (mastership released)."),
        ("priority_zero_received", "Priority-0 adverts received."),
        ("became_master", "Transitions to MASTER."),
        ("released_master", "Transitions out of MASTER."),
        ("lower_priority_masters", "Adverts from a master of lower priority (preempted)."),
    ];
    for (key, help) in counters {
        let name = format!("corral_vrrp_{key}_total");
        x.family(&name, help, "counter");
        for i in instances {
            sample(x, &name, i, &[], i.counters.get(key).copied().unwrap_or(0));
        }
    }
    x.family("corral_vrrp_dropped_total", "Packets dropped, by reason (bad checksum, TTL, authentication, version, ...).", "counter");
    for i in instances {
        for (reason, n) in i.counters.iter().filter(|(k, _)| !counters.iter().any(|(c, _)| c == k)) {
            sample(x, "corral_vrrp_dropped_total", i, &[("reason", reason.strip_prefix("drop_").unwrap_or(reason))], *n);
        }
    }
}

/// Raft (role, term, indexes, followers' lag, stopped) and gossip (members by state).
pub fn cluster(x: &mut Exposition, raft: &RaftStatus, members: &[MemberStatus]) {
    x.single("corral_raft_leader", "1 while this node is the Raft leader.", "gauge", u8::from(raft.role == "leader"));
    x.single("corral_raft_voter", "1 while this node is a Raft voter.", "gauge", u8::from(raft.voters.contains(&raft.node)));
    x.single("corral_raft_term", "Current Raft term.", "gauge", raft.term);
    x.single("corral_raft_last_log_index", "Last index in this node's Raft log.", "gauge", raft.last_log_index);
    x.single("corral_raft_applied_index", "Last index applied to this node's state.", "gauge", raft.applied_index);
    x.single("corral_raft_voters", "Voters in the Raft membership.", "gauge", raft.voters.len());
    x.single("corral_raft_stopped", "1 when Raft stopped on this node (a storage error): it follows no change until restarted.", "gauge", u8::from(raft.stopped.is_some()));
    x.family("corral_raft_follower_lag", "Entries a follower is behind the leader's log (on the leader).", "gauge");
    for (peer, lag) in &raft.lag {
        x.sample("corral_raft_follower_lag", &[("peer", peer)], lag);
    }
    x.family("corral_gossip_members", "Members gossip knows, by state.", "gauge");
    for state in ["alive", "suspect", "dead", "left"] {
        x.sample("corral_gossip_members", &[("state", state)], members.iter().filter(|m| m.state == state).count());
    }
}

/// Serves `GET /metrics` on `addr` (anything else: 404) until the daemon ends. Bound here so a
/// taken port is a start-up error, not a silent absence.
pub async fn serve(addr: SocketAddr, admin: crate::admin::Admin) -> anyhow::Result<()> {
    use hyper::{body::Incoming, Request, Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("[node] metrics_listen {addr}"))?;
    tracing::info!(%addr, "metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let admin = admin.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(http_body_util::Full::new(hyper::body::Bytes::from(admin.metrics())))
                        } else {
                            Response::builder().status(StatusCode::NOT_FOUND).body(http_body_util::Full::new(hyper::body::Bytes::from("not found: try /metrics\n")))
                        };
                        resp
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_each_family_has_its_header() {
        let mut x = Exposition::default();
        x.family("corral_x", "What\nit is.", "gauge");
        x.sample("corral_x", &[("instance", "a\"b\\c\nd")], 1);
        assert_eq!(x.finish(), "# HELP corral_x What\\nit is.\n# TYPE corral_x gauge\ncorral_x{instance=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn vrrp_state_is_one_sample_per_state_and_drops_are_by_reason() {
        let i = VrrpInstanceStatus {
            name: "VI_1".into(),
            interface: "eth0".into(),
            vrid: 51,
            version: 3,
            state: "MASTER".into(),
            base_priority: 150,
            effective_priority: 100,
            master: None,
            virtual_ips: vec![],
            counters: [("adverts_sent".to_string(), 7u64), ("drop_bad_ttl".to_string(), 2)].into_iter().collect(),
        };
        let mut x = Exposition::default();
        vrrp(&mut x, &[i]);
        let text = x.finish();
        for line in [
            "corral_vrrp_state{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\",state=\"MASTER\"} 1",
            "corral_vrrp_state{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\",state=\"BACKUP\"} 0",
            "corral_vrrp_effective_priority{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 100",
            "corral_vrrp_adverts_sent_total{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 7",
            "corral_vrrp_became_master_total{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 0",
            "corral_vrrp_dropped_total{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\",reason=\"bad_ttl\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("reason=\"adverts_sent\""), "{text}");
    }
}
