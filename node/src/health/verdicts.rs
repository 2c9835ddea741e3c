//! The pure part of consensus health checking: who observes a real server (rendezvous hashing
//! over the live members), how committed verdicts are stored, and how the leader folds the
//! observers' claims into verdict changes. No I/O here, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::rules::{RsCheck, Verdict, Verdicts};

/// Namespace of committed verdicts in the replicated state, keyed by [`crate::rules::rs_key`].
pub const NS_VERDICTS: &str = "verdicts";

/// A committed verdict as stored in Raft (versioned postcard, `raft::codec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub up: bool,
    /// Wall-clock time of the commit (seconds since the epoch), for operators.
    pub since_unix: u64,
    /// The observers whose agreement committed it.
    pub agreed: Vec<String>,
    /// How many observers the real server had then.
    pub observers: u32,
    /// The first agreeing observer's failure reason (empty when up).
    pub reason: String,
    /// MISC_CHECK `misc_dynamic` weight agreed by a majority of the observers (replaces the
    /// configured weight while up).
    pub weight: Option<u32>,
}

/// A [`VerdictRecord`] as written before dynamic weights existed (postcard has no optional
/// trailing fields, so such records are read with this shape).
#[derive(Deserialize)]
struct VerdictRecordV0 {
    up: bool,
    since_unix: u64,
    agreed: Vec<String>,
    observers: u32,
    reason: String,
}

impl VerdictRecord {
    /// Decodes a stored record, of either shape.
    pub fn decode(bytes: &[u8]) -> Result<VerdictRecord, raft::codec::CodecError> {
        raft::codec::decode::<VerdictRecord>("verdict", bytes).or_else(|e| match raft::codec::decode::<VerdictRecordV0>("verdict", bytes) {
            Ok(o) => Ok(VerdictRecord { up: o.up, since_unix: o.since_unix, agreed: o.agreed, observers: o.observers, reason: o.reason, weight: None }),
            Err(_) => Err(e),
        })
    }

    /// What the desired table needs of it.
    pub fn verdict(&self) -> Verdict {
        Verdict { up: self.up, weight: self.weight }
    }
}

/// The committed verdicts in `state` (records that do not decode are skipped and logged: a
/// newer build's record must not take a backend down here).
pub fn committed(state: &raft::ClusterState) -> BTreeMap<String, VerdictRecord> {
    state
        .namespace(NS_VERDICTS)
        .filter_map(|(k, v)| match VerdictRecord::decode(v) {
            Ok(r) => Some((k.clone(), r)),
            Err(e) => {
                tracing::warn!(key = %k, error = %e, "verdict record ignored");
                None
            }
        })
        .collect()
}

/// Each virtual server's committed quorum state, under [`crate::rules::quorum_key`]: `lost` or
/// `up` (see `rules::quorum_key` on why it is kept).
pub const NS_QUORUM: &str = "quorum";

/// The committed quorum states as verdicts (`up` = has quorum), keyed by `quorum_key`.
pub fn quorum_of(state: &raft::ClusterState) -> Verdicts {
    state.namespace(NS_QUORUM).map(|(k, v)| (k.clone(), Verdict { up: v.as_slice() != b"lost", weight: None })).collect()
}

/// The verdict map the desired table is computed from: real servers' verdicts and virtual
/// servers' quorum states.
pub fn verdicts_of(state: &raft::ClusterState) -> Verdicts {
    let mut v: Verdicts = committed(state).into_iter().map(|(k, r)| (k, r.verdict())).collect();
    v.extend(quorum_of(state));
    v
}

/// FNV-1a, fixed here (not `std`'s randomly seeded hasher) because every node must compute
/// the same observers.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Finalizer (splitmix64) so near-identical names still spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The `k` members (by name) that observe `subject`: highest-random-weight hashing, so each
/// subject's observers are spread evenly and a member joining or dying moves only the subjects
/// it gains or loses. All members when there are `k` or fewer.
pub fn observers<'a>(subject: &str, members: &'a [String], k: usize) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = members.iter().map(|m| (fnv(&[m.as_bytes(), subject.as_bytes()]), m.as_str())).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().take(k.max(1)).map(|(_, m)| m).collect()
}

/// What a check subject is hashed by: the definition itself, so identical checks used by
/// several virtual servers land on the same observers and run once there.
pub fn subject(c: &RsCheck) -> String {
    match c.defs.as_slice() {
        [one] => serde_json::to_string(one),
        several => serde_json::to_string(several),
    }
    .unwrap_or_else(|_| c.key.clone())
}

/// One observer's current opinion about a real server that differs from the committed verdict
/// (observers send only those: the report stays small when everyone agrees).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub up: bool,
    /// Why the check fails (empty when up).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The weight this observer's MISC_CHECK script last asked for (`misc_dynamic`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl Claim {
    /// The claim an observer whose local state is `up` (with `weight`) makes against
    /// `committed`, or none when it agrees. An observer without a script weight has no opinion
    /// on the weight.
    pub fn against(committed: Verdict, up: bool, weight: Option<u32>, reason: impl FnOnce() -> String) -> Option<Claim> {
        let weight_differs = up && committed.up && weight.is_some() && weight != committed.weight;
        (up != committed.up || weight_differs).then(|| Claim { up, reason: if up { String::new() } else { reason() }, weight: weight.filter(|_| up) })
    }
}

/// What an observer sends the Raft leader.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObserverReport {
    pub v: u32,
    pub node: String,
    /// [`crate::rules::rs_key`] → claim, for real servers whose local state (after rise/fall)
    /// differs from the committed verdict.
    pub claims: BTreeMap<String, Claim>,
}

/// A verdict change the leader should commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    pub key: String,
    pub up: bool,
    /// The dynamic weight to commit with it.
    pub weight: Option<u32>,
    pub agreed: Vec<String>,
    pub observers: u32,
    pub reason: String,
}

/// The committed verdict of `c`, or its default before anything was committed.
pub fn current(c: &RsCheck, committed: &Verdicts) -> Verdict {
    committed.get(&c.key).copied().unwrap_or(if c.default_up { Verdict::UP } else { Verdict::DOWN })
}

/// Folds claims into verdict changes: a real server's verdict flips only when a strict
/// majority of its current observers claim the opposite of what is committed. An observer
/// that has no opinion yet (just assigned, just restarted) counts against the change, which
/// is what keeps restarts and reassignments from flapping anything. A MISC_CHECK's dynamic
/// weight follows the same rule: it changes when a strict majority of the observers report
/// a weight other than the committed one, to the lower median of their weights (so one
/// observer's odd reading cannot pick it).
pub fn fold(checks: &[RsCheck], members: &[String], k: usize, committed: &Verdicts, claims: &BTreeMap<String, ObserverReport>) -> Vec<Flip> {
    let mut out = Vec::new();
    // Only real servers somebody disagrees about can change: skip the rest cheaply.
    let claimed: BTreeSet<&str> = claims.values().flat_map(|r| r.claims.keys().map(String::as_str)).collect();
    for c in checks.iter().filter(|c| claimed.contains(c.key.as_str())) {
        let now = current(c, committed);
        let obs = observers(&subject(c), members, k);
        let claim_of = |o: &str| claims.get(o).and_then(|r| r.claims.get(&c.key));
        let agreeing = |pred: &dyn Fn(&Claim) -> bool| {
            let mut a: Vec<(String, &Claim)> = obs.iter().filter_map(|o| claim_of(o).filter(|cl| pred(cl)).map(|cl| (o.to_string(), cl))).collect();
            a.sort_by(|x, y| x.0.cmp(&y.0));
            (a.len() * 2 > obs.len()).then_some(a)
        };
        let flipped = agreeing(&|cl| cl.up != now.up);
        let reweighed = || agreeing(&|cl| cl.up && now.up && cl.weight.is_some_and(|w| Some(w) != now.weight));
        let Some(agreed) = flipped.or_else(reweighed) else { continue };
        let up = agreed[0].1.up;
        let mut weights: Vec<u32> = agreed.iter().filter_map(|(_, cl)| cl.weight).collect();
        weights.sort_unstable();
        let weight = if up { weights.get(weights.len().saturating_sub(1) / 2).copied().or(now.weight) } else { now.weight };
        let reason = agreed.iter().map(|(_, cl)| cl.reason.clone()).find(|r| !r.is_empty()).unwrap_or_default();
        out.push(Flip { key: c.key.clone(), up, weight, agreed: agreed.into_iter().map(|(o, _)| o).collect(), observers: obs.len() as u32, reason });
    }
    out
}

/// Verdict records for real servers that no longer have a check (removed from the rules):
/// deleted so the state does not grow forever.
pub fn stale<'a>(checks: &[RsCheck], committed: impl Iterator<Item = &'a String>) -> Vec<String> {
    let live: BTreeSet<&str> = checks.iter().map(|c| c.key.as_str()).collect();
    committed.filter(|k| !live.contains(k.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("d{i}")).collect()
    }

    fn check(key: &str, port: u16) -> RsCheck {
        RsCheck {
            key: key.into(),
            defs: vec![check::CheckDef::tcp(format!("198.51.100.1:{port}").parse().unwrap())],
            default_up: true,
            notify_up: None,
            notify_down: None,
        }
    }

    fn report(node: &str, claims: &[(&str, bool)]) -> (String, ObserverReport) {
        (
            node.into(),
            ObserverReport {
                v: 1,
                node: node.into(),
                claims: claims.iter().map(|(k, up)| (k.to_string(), Claim { up: *up, reason: if *up { "" } else { "refused" }.into(), weight: None })).collect(),
            },
        )
    }

    #[test]
    fn observers_are_stable_spread_and_move_minimally() {
        let m = names(10);
        let a = observers("x", &m, 3);
        assert_eq!(a.len(), 3);
        assert_eq!(a, observers("x", &m, 3), "deterministic");
        let mut shuffled = m.clone();
        shuffled.reverse();
        assert_eq!(a, observers("x", &shuffled, 3), "independent of member order");
        assert_eq!(observers("x", &names(2), 3).len(), 2, "all members when fewer than k");
        // Spread: 3000 subjects over 10 members, k = 3 → about 900 each.
        let mut load = BTreeMap::new();
        for s in 0..3000 {
            for o in observers(&format!("s{s}"), &m, 3) {
                *load.entry(o.to_string()).or_insert(0) += 1;
            }
        }
        assert!(load.values().all(|n| (700..1100).contains(n)), "{load:?}");
        // A member dying moves only the subjects it observed.
        let without: Vec<String> = m.iter().filter(|n| *n != "d4").cloned().collect();
        for s in 0..500 {
            let s = format!("s{s}");
            let before = observers(&s, &m, 3);
            let after = observers(&s, &without, 3);
            if !before.contains(&"d4") {
                assert_eq!(before, after);
            } else {
                assert_eq!(before.iter().filter(|o| after.contains(o)).count(), 2);
            }
        }
    }

    #[test]
    fn a_majority_of_observers_flips_a_verdict_and_a_minority_does_not() {
        let m = names(3);
        let checks = vec![check("a", 80)];
        let none = Verdicts::new();
        // One director cannot reach the backend (its route is broken): nothing changes.
        let claims: BTreeMap<_, _> = [report("d1", &[("a", false)])].into();
        assert!(fold(&checks, &m, 3, &none, &claims).is_empty());
        // Two of three agree: down.
        let claims: BTreeMap<_, _> = [report("d1", &[("a", false)]), report("d2", &[("a", false)])].into();
        let f = fold(&checks, &m, 3, &none, &claims);
        assert_eq!(f.len(), 1);
        assert!(!f[0].up);
        assert_eq!(f[0].agreed, vec!["d1", "d2"]);
        assert_eq!(f[0].reason, "refused");
        // Once committed down, the same claims change nothing (no re-commit loop).
        let mut down = Verdicts::new();
        down.insert("a".into(), Verdict::DOWN);
        assert!(fold(&checks, &m, 3, &down, &claims).is_empty());
        // Back up needs a majority too.
        let claims: BTreeMap<_, _> = [report("d3", &[("a", true)])].into();
        assert!(fold(&checks, &m, 3, &down, &claims).is_empty());
        let claims: BTreeMap<_, _> = [report("d3", &[("a", true)]), report("d1", &[("a", true)])].into();
        assert!(fold(&checks, &m, 3, &down, &claims)[0].up);
    }

    fn weigh(node: &str, key: &str, weight: u32) -> (String, ObserverReport) {
        let (n, mut r) = report(node, &[(key, true)]);
        r.claims.get_mut(key).unwrap().weight = Some(weight);
        (n, r)
    }

    #[test]
    fn a_dynamic_weight_needs_a_majority_and_takes_the_lower_median() {
        let m = names(3);
        let checks = vec![check("a", 80)];
        let none = Verdicts::new();
        // One observer's script asks for weight 5: nothing changes.
        let claims: BTreeMap<_, _> = [weigh("d1", "a", 5)].into();
        assert!(fold(&checks, &m, 3, &none, &claims).is_empty());
        // Two of three (5 and 9): the lower median, 5; the verdict stays up.
        let claims: BTreeMap<_, _> = [weigh("d1", "a", 5), weigh("d2", "a", 9)].into();
        let f = fold(&checks, &m, 3, &none, &claims);
        assert_eq!((f.len(), f[0].up, f[0].weight), (1, true, Some(5)));
        // Committed 5: d1 agrees (sends no claim), d2 alone cannot move it.
        let five: Verdicts = [("a".to_string(), Verdict { up: true, weight: Some(5) })].into();
        let claims: BTreeMap<_, _> = [weigh("d2", "a", 9)].into();
        assert!(fold(&checks, &m, 3, &five, &claims).is_empty());
        // Going down keeps the weight for when it comes back; coming back with weights picks anew.
        let claims: BTreeMap<_, _> = [report("d1", &[("a", false)]), report("d3", &[("a", false)])].into();
        let f = fold(&checks, &m, 3, &five, &claims);
        assert_eq!((f[0].up, f[0].weight), (false, Some(5)));
        let down5: Verdicts = [("a".to_string(), Verdict { up: false, weight: Some(5) })].into();
        let claims: BTreeMap<_, _> = [report("d1", &[("a", true)]), weigh("d2", "a", 2)].into();
        let f = fold(&checks, &m, 3, &down5, &claims);
        assert_eq!((f[0].up, f[0].weight), (true, Some(2)));
        let claims: BTreeMap<_, _> = [report("d1", &[("a", true)]), report("d2", &[("a", true)])].into();
        assert_eq!(fold(&checks, &m, 3, &down5, &claims)[0].weight, Some(5), "no weight reported: the last one stays");
    }

    #[test]
    fn observers_claim_only_disagreements() {
        let up5 = Verdict { up: true, weight: Some(5) };
        let r = || "refused".to_string();
        assert_eq!(Claim::against(up5, true, Some(5), r), None);
        assert_eq!(Claim::against(up5, true, None, r), None, "no script weight: no opinion on it");
        assert_eq!(Claim::against(up5, true, Some(6), r).unwrap().weight, Some(6));
        let down = Claim::against(up5, false, Some(6), r).unwrap();
        assert_eq!((down.up, down.reason.as_str(), down.weight), (false, "refused", None));
        assert_eq!(Claim::against(Verdict::DOWN, false, None, r), None);
        assert!(Claim::against(Verdict::DOWN, true, None, r).unwrap().up);
    }

    #[test]
    fn records_written_before_weights_still_decode() {
        #[derive(Serialize)]
        struct Old {
            up: bool,
            since_unix: u64,
            agreed: Vec<String>,
            observers: u32,
            reason: String,
        }
        let old = raft::codec::encode("verdict", &Old { up: false, since_unix: 7, agreed: vec!["d1".into()], observers: 3, reason: "refused".into() }).unwrap();
        let r = VerdictRecord::decode(&old).unwrap();
        assert_eq!((r.up, r.since_unix, r.weight, r.reason.as_str()), (false, 7, None, "refused"));
        let new = VerdictRecord { weight: Some(4), ..r };
        assert_eq!(VerdictRecord::decode(&raft::codec::encode("verdict", &new).unwrap()).unwrap(), new);
        assert!(VerdictRecord::decode(&old[..old.len() - 2]).is_err(), "truncated is still an error");
    }

    #[test]
    fn claims_from_non_observers_do_not_count() {
        let m = names(5);
        let checks = vec![check("a", 80)];
        let obs = observers(&subject(&checks[0]), &m, 1);
        let outsider = m.iter().find(|n| !obs.contains(&n.as_str())).unwrap();
        let claims: BTreeMap<_, _> = [report(outsider, &[("a", false)])].into();
        assert!(fold(&checks, &m, 1, &Verdicts::new(), &claims).is_empty());
        let claims: BTreeMap<_, _> = [report(obs[0], &[("a", false)])].into();
        assert_eq!(fold(&checks, &m, 1, &Verdicts::new(), &claims).len(), 1);
    }

    #[test]
    fn alpha_starts_down_and_stale_records_are_found() {
        let mut c = check("a", 80);
        c.default_up = false;
        let m = names(1);
        let claims: BTreeMap<_, _> = [report("d1", &[("a", true)])].into();
        assert!(fold(&[c.clone()], &m, 3, &Verdicts::new(), &claims)[0].up);
        let keys = ["a".to_string(), "gone".to_string()];
        assert_eq!(stale(&[c], keys.iter()), vec!["gone".to_string()]);
    }

    #[test]
    fn identical_checks_share_observers() {
        let m = names(7);
        let a = check("TCP 192.0.2.1:80 -> 198.51.100.1:80", 80);
        let b = check("TCP 192.0.2.2:80 -> 198.51.100.1:80", 80);
        assert_eq!(observers(&subject(&a), &m, 3), observers(&subject(&b), &m, 3));
    }
}
