//! What the node counts, as an OpenMetrics text exposition (the format Prometheus scrapes),
//! encoded by `prometheus-client`: `corralctl metrics` prints it, and with `[node]
//! metrics_listen` corrald serves it over HTTP at `/metrics` for Prometheus to scrape, as the
//! keepalived exporter does for keepalived. VRRP is there on every node (state, priorities,
//! adverts, drops by reason, transitions); Raft, gossip, health checks and the director on
//! cluster members.
//!
//! The figures live in the daemon's own structures (the VRRP status board, Raft's metrics, the
//! checker's atomics), so each scrape reads them into an [`Exposition`], which hands them to a
//! `prometheus-client` registry as a collector of constant metrics.

use std::net::SocketAddr;

use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::api::{MemberStatus, RaftStatus, VrrpInstanceStatus};

/// The content type of [`Exposition::finish`]'s text, for the HTTP answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape's figures, family by family, until [`Exposition::finish`] encodes them.
#[derive(Default)]
pub struct Exposition(Vec<Family>);

#[derive(Debug)]
struct Family {
    /// Without a counter's `_total`, which the encoder adds to its samples.
    name: String,
    help: String,
    counter: bool,
    samples: Vec<(Vec<(String, Escaped)>, u64)>,
}

impl Exposition {
    /// Starts a family (`kind`: `counter` or `gauge`). A counter's name may end in `_total`
    /// (its samples' name): the family is named without it, as OpenMetrics wants.
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        let counter = kind == "counter";
        let name = if counter { name.strip_suffix("_total").unwrap_or(name) } else { name };
        self.0.push(Family { name: name.to_owned(), help: help.replace('\\', "\\\\").replace('\n', "\\n").replace('"', "\\\""), counter, samples: Vec::new() });
    }

    /// One sample of the family started last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        let value = value.to_u64();
        let family = self.0.last_mut().expect("a sample follows its family");
        debug_assert!(name.starts_with(&family.name), "{name} sampled in family {}", family.name);
        family.samples.push((labels.iter().map(|(k, v)| ((*k).to_owned(), Escaped((*v).to_owned()))).collect(), value));
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, help: &str, kind: &str, value: impl SampleValue) {
        self.family(name, help, kind);
        self.sample(name, &[], value);
    }

    /// The OpenMetrics text (ending in `# EOF`).
    pub fn finish(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot(self.0)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encoding into a String");
        out
    }
}

/// What the daemon's figures come as (counts, indexes, flags).
pub trait SampleValue {
    fn to_u64(self) -> u64;
}

macro_rules! sample_value {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn to_u64(self) -> u64 {
                u64::try_from(self).unwrap_or(u64::MAX)
            }
        }
    )*};
}
sample_value!(u8, u16, u32, u64, usize);

impl SampleValue for &u64 {
    fn to_u64(self) -> u64 {
        *self
    }
}

impl SampleValue for bool {
    fn to_u64(self) -> u64 {
        u64::from(self)
    }
}

/// The families of one scrape, as `prometheus-client` asks a collector for them.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = if f.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut metric = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            match f.samples.as_slice() {
                // `name value`, not `name{} value`.
                [(labels, v)] if labels.is_empty() => encode_value(metric, f.counter, *v)?,
                samples => {
                    for (labels, v) in samples {
                        encode_value(metric.encode_family(labels)?, f.counter, *v)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn encode_value(m: MetricEncoder<'_>, counter: bool, v: u64) -> Result<(), std::fmt::Error> {
    if counter {
        ConstCounter::new(v).encode(m)
    } else {
        ConstGauge::new(v).encode(m)
    }
}

/// A label value as the text format needs it (`\`, `"` and newlines escaped): instance and
/// node names come from configuration files and peers. `prometheus-client` writes label values
/// as given.
#[derive(Debug, Clone)]
struct Escaped(String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
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
    x.single(
        "corral_vrrp_notify_fifo_dropped_total",
        "VRRP lines notify_fifo or vrrp_notify_fifo could not take (the reader stopped reading), dropped instead of waited for.",
        "counter",
        crate::notify_fifo::dropped_total(),
    );
    x.single(
        "corral_lvs_notify_fifo_dropped_total",
        "RS and VS lines notify_fifo or lvs_notify_fifo could not take (the reader stopped reading), dropped instead of waited for.",
        "counter",
        crate::notify_fifo::dropped_lvs_total(),
    );
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
                                .header("content-type", CONTENT_TYPE)
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
        x.sample("corral_x", &[("instance", "a\"b\\c\nd")], 1u64);
        x.single("corral_y_total", "Counted.", "counter", 7u64);
        x.family("corral_z", "None yet.", "gauge");
        assert_eq!(
            x.finish(),
            "# HELP corral_x What\\nit is.\n# TYPE corral_x gauge\ncorral_x{instance=\"a\\\"b\\\\c\\nd\"} 1\n\
             # HELP corral_y Counted.\n# TYPE corral_y counter\ncorral_y_total 7\n\
             # HELP corral_z None yet.\n# TYPE corral_z gauge\n# EOF\n"
        );
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
