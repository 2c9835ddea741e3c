//! The minimal list of operations that turns one IPVS table into another.
//!
//! Minimal matters twice: a rule change on a 10k-service table must cost one netlink request,
//! not a rebuild, and an edit in place keeps the kernel's connection state and counters where a
//! delete + add would drop them. The kernel edits every service setting (scheduler, flags,
//! persistence, persistence engine) and every destination setting (weight, thresholds,
//! forwarding) in place, so only a changed key is ever a delete + add.

use crate::model::{Dest, Forward, Op, Service, Table};

/// Operations that turn `from` (usually the kernel's table) into `to` (the desired one).
///
/// Order: destination deletions, service deletions (the kernel drops their destinations), then
/// service additions each followed by its destinations, then edits. Deleting first frees
/// connection-threshold capacity and never leaves a moment with two conflicting entries.
pub fn diff(from: &Table, to: &Table) -> Vec<Op> {
    let mut dels = Vec::new();
    let mut svc_dels = Vec::new();
    let mut adds = Vec::new();
    let mut edits = Vec::new();
    for (key, old) in &from.services {
        match to.services.get(key) {
            None => svc_dels.push(Op::DelService(*key)),
            Some(new) => {
                for dkey in old.dests.keys() {
                    if !new.dests.contains_key(dkey) {
                        dels.push(Op::DelDest(*key, *dkey));
                    }
                }
            }
        }
    }
    for (key, new) in &to.services {
        match from.services.get(key) {
            None => push_service(&mut adds, new),
            Some(old) => {
                if !old.same_settings(new) {
                    edits.push(Op::EditService(settings_only(new)));
                }
                for (dkey, d) in &new.dests {
                    match old.dests.get(dkey) {
                        None => adds.push(Op::AddDest(*key, *d)),
                        Some(o) if !same_dest(o, d) => edits.push(Op::EditDest(*key, *d)),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    dels.extend(svc_dels);
    dels.extend(adds);
    dels.extend(edits);
    dels
}

/// Operations that make every service of `file` exactly as written and leave the kernel's
/// other services alone: `corralctl ipvs restore` without `--flush`.
pub fn merge(kernel: &Table, file: &Table) -> Vec<Op> {
    let mut touched = Table::default();
    for key in file.services.keys() {
        if let Some(s) = kernel.services.get(key) {
            touched.insert(s.clone());
        }
    }
    diff(&touched, file)
}

/// The kernel turns every forwarding method of a real server whose address is local to the
/// director into `Local` (`__ip_vs_update_dest`), so a `Local` in `from` matches any wanted
/// method: an edit would change nothing and the diff would never settle.
fn same_dest(from: &Dest, to: &Dest) -> bool {
    from == to || (from.forward == Forward::Local && *from == Dest { forward: Forward::Local, ..*to })
}

fn push_service(ops: &mut Vec<Op>, s: &Service) {
    ops.push(Op::AddService(settings_only(s)));
    for d in s.dests.values() {
        ops.push(Op::AddDest(s.key, *d));
    }
}

/// A service op carries settings only; destinations travel as their own ops.
fn settings_only(s: &Service) -> Service {
    Service { dests: Default::default(), ..s.clone() }
}

/// Applies `ops` to an in-memory model of IPVS, with the kernel's rules (adding what exists or
/// editing what does not is an error). A model, named as such: for unit tests and for scale
/// benchmarks with more directors than the VM holds; never a stand-in for the kernel in a test
/// of the kernel.
pub fn apply_in_memory(table: &mut Table, ops: &[Op]) -> Result<(), String> {
    for op in ops {
        match op {
            Op::AddService(s) => {
                if table.services.contains_key(&s.key) {
                    return Err(format!("{op}: exists"));
                }
                table.insert(settings_only(s));
            }
            Op::EditService(s) => {
                let cur = table.services.get_mut(&s.key).ok_or(format!("{op}: missing"))?;
                let dests = std::mem::take(&mut cur.dests);
                *cur = Service { dests, ..s.clone() };
            }
            Op::DelService(k) => {
                table.services.remove(k).ok_or(format!("{op}: missing"))?;
            }
            Op::AddDest(k, d) => {
                let s = table.services.get_mut(k).ok_or(format!("{op}: no service"))?;
                if s.dests.insert(d.key, *d).is_some() {
                    return Err(format!("{op}: exists"));
                }
            }
            Op::EditDest(k, d) => {
                let s = table.services.get_mut(k).ok_or(format!("{op}: no service"))?;
                let cur = s.dests.get_mut(&d.key).ok_or(format!("{op}: missing"))?;
                *cur = *d;
            }
            Op::DelDest(k, d) => {
                let s = table.services.get_mut(k).ok_or(format!("{op}: no service"))?;
                s.dests.remove(d).ok_or(format!("{op}: missing"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::model::*;

    fn svc_key(i: u8) -> ServiceKey {
        if i % 5 == 4 {
            ServiceKey::Fwmark { family: Family::Inet, mark: i as u32 }
        } else {
            ServiceKey::Addr {
                protocol: if i.is_multiple_of(2) { Protocol::Tcp } else { Protocol::Udp },
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), 80),
            }
        }
    }

    fn arb_forward() -> impl Strategy<Value = Forward> {
        let flags = (any::<bool>(), any::<bool>()).prop_map(|(csum, remcsum)| TunFlags { nocsum: !(csum || remcsum), csum, remcsum });
        prop_oneof![
            Just(Forward::Masq),
            Just(Forward::Route),
            Just(Forward::Tunnel(Tunnel::Ipip)),
            (1u16..3, flags.clone()).prop_map(|(port, flags)| Forward::Tunnel(Tunnel::Gue { port, flags })),
            flags.prop_map(|flags| Forward::Tunnel(Tunnel::Gre { flags })),
        ]
    }

    fn arb_dest() -> impl Strategy<Value = Dest> {
        (0u8..6, any::<bool>(), 0i32..4, 0u32..3, 0u32..2, arb_forward()).prop_map(|(host, v6, weight, upper, lower, forward)| {
            let addr = if v6 { IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host as u16)) } else { IpAddr::V4(Ipv4Addr::new(198, 51, 100, host)) };
            Dest { key: DestKey { addr, port: 80 }, forward, weight, upper_threshold: upper, lower_threshold: lower }
        })
    }

    fn arb_service() -> impl Strategy<Value = Service> {
        (
            0u8..8,
            prop_oneof![Just("rr"), Just("wlc"), Just("mh")],
            proptest::option::of((1u32..3, prop_oneof![Just(0xffff_ffffu32), Just(0xffff_ff00u32)])),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            proptest::option::of(Just("sip")),
            proptest::collection::vec(arb_dest(), 0..5),
        )
            .prop_map(|(k, sched, persist, (one_packet, flag1, flag2), pe, dests)| {
                let mut s = Service::new(svc_key(k), sched);
                s.persistence = persist.map(|(t, netmask)| Persistence { timeout: t * 100, netmask });
                s.pe_name = pe.filter(|_| s.persistence.is_some()).map(String::from);
                s.one_packet = one_packet;
                s.sched_flags = SchedFlags { flag1, flag2, flag3: false };
                for d in dests {
                    s.dests.insert(d.key, d);
                }
                s
            })
    }

    /// Random tables over a small key space (so two tables overlap), every setting varied.
    pub(crate) fn arb_table() -> impl Strategy<Value = Table> {
        proptest::collection::vec(arb_service(), 0..6).prop_map(|v| {
            let mut t = Table::default();
            for s in v {
                t.insert(s);
            }
            t
        })
    }

    proptest! {
        #[test]
        fn applying_the_diff_yields_the_target(a in arb_table(), b in arb_table()) {
            let ops = diff(&a, &b);
            let mut t = a.clone();
            apply_in_memory(&mut t, &ops).map_err(TestCaseError::fail)?;
            prop_assert_eq!(t, b);
        }

        #[test]
        fn diff_of_a_table_with_itself_is_empty(a in arb_table()) {
            prop_assert!(diff(&a, &a).is_empty());
        }

        #[test]
        fn diff_is_deterministic_and_ordered(a in arb_table(), b in arb_table()) {
            let ops = diff(&a, &b);
            prop_assert_eq!(&ops, &diff(&a.clone(), &b.clone()));
            // Phases: dest deletions, service deletions, additions, edits; never a DelDest of a deleted service.
            let phase = |op: &Op| match op {
                Op::DelDest(..) => 0,
                Op::DelService(_) => 1,
                Op::AddService(_) | Op::AddDest(..) => 2,
                Op::EditService(_) | Op::EditDest(..) => 3,
            };
            prop_assert!(ops.windows(2).all(|w| phase(&w[0]) <= phase(&w[1])), "{:?}", ops);
            for op in &ops {
                if let Op::DelDest(k, _) = op {
                    prop_assert!(b.services.contains_key(k));
                }
            }
        }

        #[test]
        fn merge_leaves_other_services_alone(kernel in arb_table(), file in arb_table()) {
            let ops = merge(&kernel, &file);
            let mut t = kernel.clone();
            apply_in_memory(&mut t, &ops).map_err(TestCaseError::fail)?;
            for (k, s) in &t.services {
                match file.services.get(k) {
                    Some(f) => prop_assert_eq!(s, f),
                    None => prop_assert_eq!(Some(s), kernel.services.get(k)),
                }
            }
        }
    }

    #[test]
    fn one_weight_change_is_one_edit() {
        let mut a = Table::default();
        let mut s = Service::new(svc_key(1), "wlc");
        for h in 0..10 {
            let d = Dest::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, h)), 80);
            s.dests.insert(d.key, d);
        }
        a.insert(s);
        let mut b = a.clone();
        let svc = b.services.values_mut().next().unwrap();
        svc.dests.values_mut().nth(3).unwrap().weight = 7;
        let ops = diff(&a, &b);
        assert_eq!(ops.len(), 1);
        assert!(matches!(ops[0], Op::EditDest(_, d) if d.weight == 7));
    }

    #[test]
    fn scheduler_change_is_an_edit_not_a_rebuild() {
        let mut a = Table::default();
        let mut s = Service::new(svc_key(1), "wlc");
        let d = Dest::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 80);
        s.dests.insert(d.key, d);
        a.insert(s);
        let mut b = a.clone();
        b.services.values_mut().next().unwrap().scheduler = "mh".into();
        let ops = diff(&a, &b);
        assert_eq!(ops.len(), 1);
        assert!(matches!(&ops[0], Op::EditService(s) if s.scheduler == "mh" && s.dests.is_empty()));
    }

    #[test]
    fn a_local_real_server_matches_any_method() {
        let mut a = Table::default();
        let mut s = Service::new(svc_key(1), "wlc");
        let mut d = Dest::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 80);
        d.forward = Forward::Local;
        s.dests.insert(d.key, d);
        a.insert(s);
        let mut b = a.clone();
        b.services.values_mut().next().unwrap().dests.values_mut().next().unwrap().forward = Forward::Masq;
        assert!(diff(&a, &b).is_empty(), "the kernel would report Local again");
        b.services.values_mut().next().unwrap().dests.values_mut().next().unwrap().weight = 9;
        assert_eq!(diff(&a, &b).len(), 1, "other settings still count");
    }

    #[test]
    fn deleting_a_service_is_one_op() {
        let mut a = Table::default();
        let mut s = Service::new(svc_key(1), "wlc");
        for h in 0..3 {
            let d = Dest::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, h)), 80);
            s.dests.insert(d.key, d);
        }
        a.insert(s);
        assert_eq!(diff(&a, &Table::default()), vec![Op::DelService(svc_key(1))]);
    }
}
