//! keepalived's LVS lines for the notify FIFOs: `RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80
//! DOWN` when a real server's verdict flips, `VS [192.0.2.100]:tcp:80 DOWN` when a virtual
//! server loses its quorum (`UP` when either comes back; `FWM 7` names a firewall-mark
//! service). keepalived writes them on the director whose checker saw the change; here
//! verdicts are the cluster's, so every director writes them when it applies the state that
//! changed them: the lines say what this director's kernel table follows.
//!
//! Each applied state is compared with the one applied before it on this node (every one, in
//! order: the states come from the applying task, not from a `watch` that keeps only the
//! newest). Where this differs from keepalived:
//! - VS lines exist for virtual servers with a `sorry_server` or a `quorum_up`/`quorum_down`
//!   hook only: quorum states are kept for those alone ([`VirtualServer::keeps_quorum`]);
//! - no line for a real server a rule change adds (keepalived writes none either; one it
//!   removes while up gets `RS … DOWN` (and the leader that commits it runs its `notify_down`), and
//!   one whose check it removes while down `RS … UP`, as keepalived's reload writes them);
//! - none for an `alpha` real server's first failed check (it was down already; keepalived
//!   writes DOWN);
//! - none for the state a node starts with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ipvs::{Protocol, ServiceKey};
use raft::ClusterState;

use crate::health::verdicts::{self, NS_QUORUM, NS_VERDICTS};
use crate::rules::{self, RealServer, RuleSet, VirtualServer};

/// Writes the LVS lines of every state this node applies while a FIFO takes them. The state
/// machine hands each applied state over (a channel send); without a FIFO for these lines it
/// hands nothing (one flag read per applied batch).
pub fn follow(sm: &raft::StateMachine) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<Arc<ClusterState>>>();
    let handing = AtomicBool::new(false);
    sm.on_publish(move |s| {
        if crate::notify_fifo::takes_lvs() {
            handing.store(true, Ordering::Relaxed);
            let _ = tx.send(Some(s.clone()));
        } else if handing.swap(false, Ordering::Relaxed) {
            // Stopped: the next state handed over starts afresh, not from a stale one.
            let _ = tx.send(None);
        }
    });
    tokio::spawn(async move {
        let mut before: Option<Arc<ClusterState>> = None;
        while let Some(next) = rx.recv().await {
            if let (Some(b), Some(n)) = (&before, &next) {
                crate::notify_fifo::write_lvs(&lines(b, n));
            }
            before = next;
        }
    });
}

/// The lines for going from `before` to `now`: real servers first (flips, then live ones a
/// rule change removed), then virtual servers (the order keepalived writes a flip and the
/// quorum move it causes).
pub fn lines(before: &ClusterState, now: &ClusterState) -> Vec<String> {
    let same = |ns: &str| before.data.get(ns) == now.data.get(ns);
    let rules_same = same(crate::director::NS_RULES);
    if rules_same && same(NS_VERDICTS) && same(NS_QUORUM) {
        return Vec::new(); // nothing that moves a line: nothing decoded
    }
    let Ok(Some(rules)) = crate::director::rules_of(now) else { return Vec::new() };
    let old_rules = if rules_same { None } else { crate::director::rules_of(before).ok().flatten() };
    let was = old_rules.as_ref().unwrap_or(&rules);
    let (old, new) = (verdicts::verdicts_of(before), verdicts::verdicts_of(now));
    // Every real server as it was, under the rules and verdicts then: the table's own reading
    // (unchecked: always up; alpha: down until a verdict says up).
    let mut was_up: BTreeMap<(ServiceKey, SocketAddr), bool> = BTreeMap::new();
    for vs in &was.virtual_servers {
        let Some(key) = vs.key() else { continue };
        for rs in &vs.real_servers {
            was_up.insert((key, rs.address), was.verdict(vs, &key, rs, &old).up);
        }
    }
    let mut out = Vec::new();
    for vs in &rules.virtual_servers {
        let Some(key) = vs.key() else { continue };
        for rs in &vs.real_servers {
            let up = rules.verdict(vs, &key, rs, &new).up;
            // One added by this change has no line (keepalived writes none either).
            if was_up.get(&(key, rs.address)).is_some_and(|then| *then != up) {
                out.push(rs_line(rs.address, vs, &key, up));
            }
        }
    }
    // Live ones the change removed leave the table: DOWN, as keepalived's reload writes it.
    if old_rules.is_some() {
        for (key, vs, rs) in removed_live(was, &old, &rules) {
            out.push(rs_line(rs.address, vs, &key, false));
        }
    }
    for vs in rules.virtual_servers.iter().filter(|vs| vs.keeps_quorum()) {
        let Some(key) = vs.key() else { continue };
        let q = rules::quorum_key(&key.to_string());
        let up = |v: &rules::Verdicts| v.get(&q).is_none_or(|v| v.up);
        if up(&old) != up(&new) {
            out.push(format!("VS {} {}\n", vs_name(vs, &key), word(up(&new))));
        }
    }
    out
}

/// The real servers of `was` that `now` no longer has and that were up under `was` and the
/// verdicts `old`: they leave the table with the change, which keepalived's reload reports as
/// a real server going down (its FIFO line, and its `notify_down` run by the committing leader).
pub(crate) fn removed_live<'a>(was: &'a RuleSet, old: &rules::Verdicts, now: &RuleSet) -> Vec<(ServiceKey, &'a VirtualServer, &'a RealServer)> {
    let kept: std::collections::BTreeSet<(ServiceKey, SocketAddr)> = now
        .virtual_servers
        .iter()
        .filter_map(|vs| vs.key().map(|key| (key, vs)))
        .flat_map(|(key, vs)| vs.real_servers.iter().map(move |rs| (key, rs.address)))
        .collect();
    let mut out = Vec::new();
    for vs in &was.virtual_servers {
        let Some(key) = vs.key() else { continue };
        for rs in &vs.real_servers {
            if !kept.contains(&(key, rs.address)) && was.verdict(vs, &key, rs, old).up {
                out.push((key, vs, rs));
            }
        }
    }
    out
}

fn rs_line(addr: SocketAddr, vs: &VirtualServer, key: &ServiceKey, up: bool) -> String {
    format!("RS {} {} {}\n", trio(addr, vs.protocol), vs_name(vs, key), word(up))
}

fn word(up: bool) -> &'static str {
    if up {
        "UP"
    } else {
        "DOWN"
    }
}

/// keepalived's name of a virtual server: `[192.0.2.100]:tcp:80`, `[2001:db8::1]:udp:53`,
/// `FWM 7`.
fn vs_name(vs: &VirtualServer, key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr { addr, .. } => trio(*addr, vs.protocol),
        ServiceKey::Fwmark { mark, .. } => format!("FWM {mark}"),
    }
}

/// keepalived's `[address]:protocol:port`.
fn trio(addr: SocketAddr, protocol: Protocol) -> String {
    let p = match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    format!("[{}]:{p}:{}", addr.ip(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    /// A state holding `rules`, real servers' verdict records and quorum states.
    fn state(revision: u64, rules: &RuleSet, verdicts: &[(&str, bool)], quorum: &[(&str, bool)]) -> ClusterState {
        let mut s = ClusterState { revision, ..Default::default() };
        s.data.entry(crate::director::NS_RULES.into()).or_default().insert(crate::director::KEY_RULES.into(), rules::encode(rules));
        for (k, up) in verdicts {
            let rec = verdicts::VerdictRecord { up: *up, since_unix: 0, agreed: Vec::new(), observers: 1, reason: String::new(), weight: None };
            s.data.entry(NS_VERDICTS.into()).or_default().insert(k.to_string(), raft::codec::encode("verdict", &rec).unwrap());
        }
        for (k, up) in quorum {
            s.data.entry(NS_QUORUM.into()).or_default().insert(k.to_string(), if *up { b"up".to_vec() } else { b"lost".to_vec() });
        }
        s
    }

    const RULES: &str = r#"
[[virtual_server]]
address = "192.0.2.100:80"
sorry_server = "198.51.100.99:80"
check = { type = "tcp" }
[[virtual_server.real_server]]
address = "198.51.100.11:80"
[[virtual_server.real_server]]
address = "198.51.100.12:80"
[[virtual_server]]
address = "[2001:db8::1]:53"
protocol = "udp"
alpha = true
check = { type = "tcp", connect_port = 53 }
[[virtual_server.real_server]]
address = "[2001:db8::11]:53"
[[virtual_server]]
fwmark = 7
check = { type = "tcp", connect_port = 80 }
[[virtual_server.real_server]]
address = "198.51.100.21:80"
[[virtual_server.real_server]]
address = "198.51.100.22:80"
"#;

    fn rules() -> RuleSet {
        RuleSet::parse(std::path::Path::new("t.toml"), RULES).unwrap()
    }

    #[test]
    fn flips_and_quorum_moves_are_keepalived_s_lines() {
        let r = rules();
        let rs11 = "TCP 192.0.2.100:80 -> 198.51.100.11:80";
        let v6 = "UDP [2001:db8::1]:53 -> [2001:db8::11]:53";
        let fwm = "FWM 7 -> 198.51.100.21:80";
        let q = "quorum TCP 192.0.2.100:80";
        let s0 = state(1, &r, &[], &[]);
        // A rule change alone: nothing (and nothing decoded).
        assert!(lines(&s0, &state(2, &r, &[], &[])).is_empty());
        // rs11 down (its default was up), the quorum lost with it; the alpha server's first
        // committed `up` is a change from its default (down); the fwmark service's real server.
        let s1 = state(3, &r, &[(rs11, false), (v6, true), (fwm, false)], &[(q, false)]);
        assert_eq!(
            lines(&s0, &s1),
            [
                "RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 DOWN\n",
                "RS [2001:db8::11]:udp:53 [2001:db8::1]:udp:53 UP\n",
                "RS [198.51.100.21]:tcp:80 FWM 7 DOWN\n",
                "VS [192.0.2.100]:tcp:80 DOWN\n",
            ]
        );
        // Back up; an `up` record where the default was up already is no change.
        let s2 = state(4, &r, &[(rs11, true), (v6, true), (fwm, true)], &[(q, true)]);
        assert_eq!(lines(&s1, &s2), ["RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 UP\n", "RS [198.51.100.21]:tcp:80 FWM 7 UP\n", "VS [192.0.2.100]:tcp:80 UP\n"]);
        assert!(lines(&s0, &state(5, &r, &[(rs11, true)], &[(q, true)])).is_empty());
        // A rule change: a live real server removed goes DOWN, a down one removed says
        // nothing, a down one whose check is removed comes UP (back in the table); a weight
        // change alone says nothing. Removing the fwmark service takes its live one down.
        let edit = |from: &str, to: &str| RuleSet::parse(std::path::Path::new("t.toml"), &RULES.replace(from, to)).unwrap();
        let fewer = edit("[[virtual_server.real_server]]\naddress = \"198.51.100.12:80\"\n", "");
        assert_eq!(lines(&s1, &state(6, &fewer, &[(rs11, false), (v6, true), (fwm, false)], &[(q, false)])), ["RS [198.51.100.12]:tcp:80 [192.0.2.100]:tcp:80 DOWN\n"]);
        let s_down12 = state(7, &r, &[(rs11, false), ("TCP 192.0.2.100:80 -> 198.51.100.12:80", false)], &[]);
        assert!(lines(&s_down12, &state(8, &fewer, &[(rs11, false)], &[])).is_empty(), "a down one removed");
        let unchecked = edit("check = { type = \"tcp\" }\n", "");
        assert_eq!(lines(&s1, &state(9, &unchecked, &[(rs11, false), (v6, true), (fwm, false)], &[(q, false)])), ["RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 UP\n"]);
        let heavier = edit("address = \"198.51.100.12:80\"\n", "address = \"198.51.100.12:80\"\nweight = 5\n");
        assert!(lines(&s1, &state(10, &heavier, &[(rs11, false), (v6, true), (fwm, false)], &[(q, false)])).is_empty());
        let no_fwmark = RuleSet::parse(std::path::Path::new("t.toml"), &RULES[..RULES.find("[[virtual_server]]\nfwmark").unwrap()]).unwrap();
        assert_eq!(lines(&s0, &state(11, &no_fwmark, &[], &[])), ["RS [198.51.100.21]:tcp:80 FWM 7 DOWN\n", "RS [198.51.100.22]:tcp:80 FWM 7 DOWN\n"]);
        // The table's reading: no record means the default (up; down for alpha).
        assert_eq!(lines(&s1, &s0), ["RS [198.51.100.11]:tcp:80 [192.0.2.100]:tcp:80 UP\n", "RS [2001:db8::11]:udp:53 [2001:db8::1]:udp:53 DOWN\n", "RS [198.51.100.21]:tcp:80 FWM 7 UP\n", "VS [192.0.2.100]:tcp:80 UP\n"]);
    }
}
