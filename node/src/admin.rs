//! The admin API server: JSON lines over a Unix socket, mode 0600 (root only), and the same
//! requests over QUIC (mutual TLS, cluster certificates) for remote callers and for writes a
//! follower forwards to the leader.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gossip::transport::{Alpn, Peer, StreamHandler};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::api::{decode_request, encode_response, Request, Response, ResponseBody};
use crate::cluster::Cluster;
use crate::vrrp_driver::StatusBoard;

/// Whether a changed node report is gossiped now. Gossip only keeps the fallback that `status`
/// shows for a member that does not answer, and every copy costs the whole cluster: each
/// member passes it on several times (SWIM dissemination). The report changes with every
/// applied revision, so during a burst of rule changes each copy would be stale within
/// milliseconds, and making it costs the directors CPU right when the changes need it
/// (docs/BENCHMARKS.md, propagation Round 9: ≈ 0–3 ms less CPU per change with 5 directors
/// without them; the p99 did not move beyond the noise).
/// So: the first report at once; later ones at least [`crate::api::REPORT_GOSSIP_SPACING`]
/// apart, once the report has stayed the same for [`crate::api::REPORT_GOSSIP_QUIET`], or
/// after [`crate::api::REPORT_GOSSIP_MAX_DELAY`] of changes.
pub fn report_gossip_due(now: Instant, published_at: Option<Instant>, stable_since: Instant, differs_since: Instant) -> bool {
    use crate::api::{REPORT_GOSSIP_MAX_DELAY, REPORT_GOSSIP_QUIET, REPORT_GOSSIP_SPACING};
    let Some(last) = published_at else { return true };
    if now.duration_since(last) < REPORT_GOSSIP_SPACING {
        return false;
    }
    now.duration_since(stable_since) >= REPORT_GOSSIP_QUIET || now.duration_since(differs_since) >= REPORT_GOSSIP_MAX_DELAY
}

/// Binds the socket (replacing a stale one).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("bind admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// How long `status` waits for a member's own report before showing its gossiped copy.
const REPORT_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Asks the member at `addr` for its report (admin service over QUIC, mutual TLS).
async fn ask_report(transport: &gossip::transport::Transport, addr: std::net::SocketAddr) -> Result<crate::api::NodeReport, String> {
    match crate::cluster::admin_call(transport, addr, &Request::Report, Some(REPORT_ASK_TIMEOUT)).await.map_err(|e| e.to_string())? {
        ResponseBody::Report { report } => Ok(report),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

/// Answers admin requests from whichever door they came in.
#[derive(Clone)]
pub struct Admin {
    pub board: StatusBoard,
    pub cluster: Option<Arc<Cluster>>,
    pub director: Option<Arc<std::sync::Mutex<crate::director::DirectorStatus>>>,
    pub health: Option<Arc<crate::health::Health>>,
}

impl Admin {
    /// One request → one response; errors are phrased for the operator.
    pub async fn handle(&self, req: Request) -> Response {
        match self.dispatch(req).await {
            Ok(result) => Response::Ok { result },
            Err(message) => Response::Error { message },
        }
    }

    async fn dispatch(&self, req: Request) -> Result<ResponseBody, String> {
        if let Request::VrrpStatus = req {
            return Ok(ResponseBody::VrrpStatus { instances: self.board.lock().unwrap_or_else(|p| p.into_inner()).clone() });
        }
        if let Request::Metrics = req {
            return Ok(ResponseBody::Metrics { text: self.metrics() });
        }
        let c = self
            .cluster
            .as_ref()
            .ok_or("this node runs standalone (no [cluster] in its configuration)")?;
        match req {
            Request::VrrpStatus => unreachable!("answered above"),
            Request::Members => Ok(ResponseBody::Members { members: c.members() }),
            Request::RaftStatus => Ok(ResponseBody::RaftStatus(c.raft_status())),
            Request::TokenList => Ok(ResponseBody::Tokens { tokens: c.tokens() }),
            Request::KvList => Ok(c.kv()),
            Request::GetServices => Ok(ResponseBody::Services { revision: c.sm.current().revision, rules: c.current_rules()? }),
            Request::Status => Ok(self.status(c).await),
            Request::Report => Ok(ResponseBody::Report { report: self.report() }),
            Request::Join { seed } => c.announce(&seed).await,
            Request::Observe { .. } => Err("health reports are accepted only from cluster members over QUIC".into()),
            Request::LocalChecks => Ok(ResponseBody::LocalChecks { results: self.health()?.local_results() }),
            Request::RsList => Ok(ResponseBody::RsList { revision: c.sm.current().revision, rows: self.health()?.rs_list().await }),
            Request::Metrics => unreachable!("answered above"),
            Request::Leave => c.leave().await,
            Request::Forwarded { inner } => {
                if matches!(*inner, Request::Forwarded { .. }) {
                    return Err("nested forward refused".into());
                }
                c.execute_as_leader(&inner).await.map_err(|e| e.to_string())
            }
            r if r.needs_leader() => c.on_leader(&r).await,
            r => Err(format!("{r:?}: not handled")),
        }
    }

    fn health(&self) -> Result<&Arc<crate::health::Health>, String> {
        self.health.as_ref().ok_or_else(|| "health checking is not running on this node".to_string())
    }

    /// Everything the node counts, as OpenMetrics text ([`crate::metrics`]).
    pub fn metrics(&self) -> String {
        let mut x = crate::metrics::Exposition::default();
        let vrrp = self.board.lock().unwrap_or_else(|p| p.into_inner()).clone();
        crate::metrics::vrrp(&mut x, &vrrp);
        if let Some(h) = &self.health {
            h.metrics(&mut x);
        }
        if let Some(c) = &self.cluster {
            crate::metrics::cluster(&mut x, &c.raft_status(), &c.members());
            x.single("corral_cluster_bad_messages_total", "Raft/admin messages refused: undecodable, or a Raft request speaking for another node than its certificate's.", "counter", c.bad_messages.load(std::sync::atomic::Ordering::Relaxed));
            x.single(
                "corral_gossip_bad_packets_total",
                "Gossip packets dropped as undecodable, malformed, refused or impersonating.",
                "counter",
                c.gossip_bad_packets.load(std::sync::atomic::Ordering::Relaxed),
            );
            x.single("corral_cluster_revision", "Revision of the replicated state applied here.", "gauge", c.sm.current().revision);
        }
        if let Some(d) = &self.director {
            let d = d.lock().unwrap_or_else(|p| p.into_inner()).clone();
            x.single("corral_director_applied_revision", "Revision whose rules are in IPVS.", "gauge", d.applied_revision);
            x.single("corral_director_drift_repairs_total", "Reconciles that repaired a drifted IPVS table.", "counter", d.drift_repairs);
            x.single("corral_director_kernel_objects", "Services and real servers in the kernel after the last reconcile.", "gauge", d.kernel_objects);
            x.single("corral_director_error", "1 while the last reconcile failed.", "gauge", u8::from(d.last_error.is_some()));
        }
        x.finish()
    }

    /// This node's own report (also gossiped).
    pub fn report(&self) -> crate::api::NodeReport {
        crate::api::NodeReport {
            v: 1,
            director: self.director.as_ref().map(|d| d.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            vrrp: self.board.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|i| (i.name.clone(), i.state.clone())).collect(),
            raft_error: self.cluster.as_ref().and_then(|c| c.raft_stopped()),
        }
    }

    /// Every member's report as of now: asked of each member gossip does not call dead or
    /// left, in parallel; one that does not answer within [`REPORT_ASK_TIMEOUT`] shows its last
    /// gossiped copy, marked as such.
    async fn status(&self, c: &Cluster) -> ResponseBody {
        let members = c.members();
        let mut asks = tokio::task::JoinSet::new();
        for m in &members {
            let reachable = m.state == "alive" || m.state == "suspect";
            if m.name == c.name || !reachable {
                continue;
            }
            let Ok(addr) = m.addr.parse::<std::net::SocketAddr>() else { continue };
            let (transport, name) = (c.transport.clone(), m.name.clone());
            asks.spawn(async move { (name, ask_report(&transport, addr).await) });
        }
        let mut live = std::collections::BTreeMap::new();
        live.insert(c.name.clone(), self.report());
        while let Some(done) = asks.join_next().await {
            match done {
                Ok((name, Ok(report))) => {
                    live.insert(name, report);
                }
                Ok((name, Err(e))) => tracing::debug!(node = %name, error = %e, "status: no live report"),
                Err(e) => tracing::debug!(error = %e, "status: report task"),
            }
        }
        let mut gossiped = c.reports().await;
        let nodes = members
            .into_iter()
            .map(|m| {
                let (report, report_live) = match live.remove(&m.name) {
                    Some(r) => (Some(r), true),
                    None => (gossiped.remove(&m.name), false),
                };
                crate::api::NodeStatus { report, report_live, name: m.name, state: m.state, raft: m.raft }
            })
            .collect();
        ResponseBody::Status { revision: c.sm.current().revision, nodes }
    }

    /// Gossips this node's report when it changes (checked every 500 ms; when, see
    /// [`report_gossip_due`]): the fallback `status` shows for a member that does not answer.
    pub async fn publish_reports(self) {
        let Some(c) = self.cluster.clone() else { return };
        let mut published: Option<crate::api::NodeReport> = None;
        let mut published_at: Option<Instant> = None;
        // The report as last seen and since when it has not changed; since when it has
        // differed from the published copy.
        let mut seen: Option<crate::api::NodeReport> = None;
        let mut stable_since = Instant::now();
        let mut differs_since: Option<Instant> = None;
        let mut tick = crate::ticks::aligned(2 * crate::ticks::GRID);
        loop {
            tick.tick().await;
            let r = self.report();
            let now = Instant::now();
            if seen.as_ref() != Some(&r) {
                seen = Some(r.clone());
                stable_since = now;
            }
            if published.as_ref() == Some(&r) {
                differs_since = None;
                continue;
            }
            let differs = *differs_since.get_or_insert(now);
            if report_gossip_due(now, published_at, stable_since, differs) {
                c.publish_report(&r).await;
                published = Some(r);
                published_at = Some(now);
                differs_since = None;
            }
        }
    }

    /// The QUIC side: the peer is a cluster member (its certificate proved it).
    pub fn quic_handler(&self) -> StreamHandler {
        let me = self.clone();
        Arc::new(move |peer: Peer, body: Vec<u8>| {
            let me = me.clone();
            Box::pin(async move {
                let line = String::from_utf8_lossy(&body);
                let resp = match decode_request(&line) {
                    Ok(Request::Observe { report }) => match &me.health {
                        Some(h) if report.node == peer.name => {
                            h.receive(report);
                            Response::Ok { result: ResponseBody::Done { message: "noted".into(), revision: None } }
                        }
                        Some(h) => {
                            h.refuse(&format!("{} sent a report in the name of {}", peer.name, report.node));
                            Response::Error { message: "a report must come from the node it names".into() }
                        }
                        None => Response::Error { message: "health checking is not running on this node".into() },
                    },
                    Ok(req) => {
                        tracing::debug!(peer = %peer.name, ?req, "remote admin request");
                        me.handle(req).await
                    }
                    Err(message) => {
                        tracing::warn!(peer = %peer.name, %message, "bad remote admin request");
                        Response::Error { message }
                    }
                };
                Ok(encode_response(&resp).into_bytes())
            })
        })
    }

    /// Registers [`Admin::quic_handler`] on the cluster endpoint.
    pub fn serve_quic(&self) -> Result<()> {
        if let Some(c) = &self.cluster {
            c.transport.register_handler(Alpn::Admin, self.quic_handler())?;
        }
        Ok(())
    }
}

/// Serves the Unix socket until the task is dropped.
pub async fn serve(listener: UnixListener, admin: Admin) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match decode_request(&line) {
                    Ok(req) => admin.handle(req).await,
                    Err(message) => Response::Error { message },
                };
                if w.write_all(encode_response(&resp).as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::report_gossip_due;
    use crate::api::{REPORT_GOSSIP_MAX_DELAY, REPORT_GOSSIP_QUIET, REPORT_GOSSIP_SPACING};

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_first_report_goes_at_once() {
        let t = Instant::now();
        assert!(report_gossip_due(t, None, t, t));
    }

    #[test]
    fn a_report_that_keeps_changing_waits_for_the_burst_to_end_or_the_max_delay() {
        let t0 = Instant::now();
        let published = Some(t0);
        // Changed at 10 s, and changing every tick since: not before 10 s + the max delay.
        let differs = t0 + S(10);
        for ms in (10_000..10_000 + REPORT_GOSSIP_MAX_DELAY.as_millis() as u64).step_by(500) {
            let now = t0 + Duration::from_millis(ms);
            assert!(!report_gossip_due(now, published, now, differs), "gossiped during the burst at {ms} ms");
        }
        let end = differs + REPORT_GOSSIP_MAX_DELAY;
        assert!(report_gossip_due(end, published, end, differs));
    }

    #[test]
    fn a_changed_report_goes_once_it_is_quiet_and_spaced() {
        let t0 = Instant::now();
        let published = Some(t0);
        let changed = t0 + S(1);
        // Quiet long enough but too soon after the last copy.
        let now = changed + REPORT_GOSSIP_QUIET;
        assert!(now.duration_since(t0) < REPORT_GOSSIP_SPACING);
        assert!(!report_gossip_due(now, published, changed, changed));
        // Spaced, but the report changed just now.
        let now = t0 + REPORT_GOSSIP_SPACING;
        assert!(!report_gossip_due(now, published, now, changed));
        // Spaced and quiet.
        let quiet_since = now - REPORT_GOSSIP_QUIET;
        assert!(report_gossip_due(now, published, quiet_since, changed));
    }
}
