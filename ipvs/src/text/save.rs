//! Printing the rule format exactly as `ipvsadm -Sn` does (ipvsadm 1.31 `print_service_entry`
//! with `FMT_RULE | FMT_NUMERIC`), so the two tools' outputs can be compared byte for byte.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::order::{c_cmp_dests, c_cmp_services, glibc_qsort};
use crate::model::*;

/// What to print beyond ipvsadm's own output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveOptions {
    /// Append `-x`/`-y` to real servers with connection thresholds. `ipvsadm -S` never
    /// prints them (a save it makes loses them); both `ipvsadm -R` and our parser read them.
    pub thresholds: bool,
}

/// Prints a table exactly as `ipvsadm -Sn` does.
///
/// The table's own (key) order stands in for the kernel's dump order that ipvsadm sorts; the
/// two give the same result except for address sets on which ipvsadm's comparator has cycles
/// (see [`super::order`]). With the kernel's order at hand use [`save_ordered`].
pub fn save(table: &Table) -> String {
    save_ordered(table.services.values(), SaveOptions::default())
}

/// Prints services given in the kernel's dump order (as `Client::status` returns them) the
/// way `ipvsadm -Sn` prints them: sorted by ipvsadm's comparator with glibc's merge sort.
pub fn save_ordered<'a>(services: impl IntoIterator<Item = &'a Service>, opts: SaveOptions) -> String {
    let mut out = String::new();
    let mut svcs: Vec<&Service> = services.into_iter().collect();
    glibc_qsort(&mut svcs, |a, b| c_cmp_services(&a.key, &b.key));
    for svc in svcs {
        let arg = service_arg(&svc.key);
        let _ = write!(out, "-A {arg} -s {}", svc.scheduler);
        if let Some(p) = &svc.persistence {
            let _ = write!(out, " -p {}", p.timeout);
            if let Some(mask) = svc.persistence_mask() {
                let _ = write!(out, " -M {mask}");
            }
        }
        if let Some(pe) = &svc.pe_name {
            let _ = write!(out, " --pe {pe}");
        }
        if svc.one_packet {
            out.push_str(" -o");
        }
        // ipvsadm tests the flag bits, then prints the names it knows (possibly none).
        if svc.sched_flags != SchedFlags::default() {
            let _ = write!(out, " -b {}", sched_flag_names(&svc.scheduler, &svc.sched_flags).join(","));
        }
        out.push('\n');
        let mut dests: Vec<&Dest> = svc.dests.values().collect();
        glibc_qsort(&mut dests, |a, b| c_cmp_dests(&a.key, &b.key));
        for d in dests {
            let _ = write!(out, "-a {arg} -r {} {} -w {}", SocketAddr::new(d.key.addr, d.key.port), forward_flag(&d.forward), d.weight);
            if let Forward::Tunnel(t) = &d.forward {
                match t {
                    Tunnel::Ipip => out.push_str(" --tun-type ipip"),
                    Tunnel::Gue { port, flags } => {
                        let _ = write!(out, " --tun-type gue --tun-port {port}{}", tun_flag_opt(flags));
                    }
                    Tunnel::Gre { flags } => {
                        let _ = write!(out, " --tun-type gre{}", tun_flag_opt(flags));
                    }
                }
            }
            if opts.thresholds {
                if d.upper_threshold != 0 {
                    let _ = write!(out, " -x {}", d.upper_threshold);
                }
                if d.lower_threshold != 0 {
                    let _ = write!(out, " -y {}", d.lower_threshold);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// How ipvsadm names a service in rules: `-t 192.0.2.1:80`, `--sctp-service …`, `-f 7 -6`.
pub fn service_arg(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr { protocol, addr } => {
            let flag = match protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            format!("{flag} {addr}")
        }
        ServiceKey::Fwmark { family: Family::Inet, mark } => format!("-f {mark}"),
        ServiceKey::Fwmark { family: Family::Inet6, mark } => format!("-f {mark} -6"),
    }
}

/// Scheduler flag names as ipvsadm's `print_sched_flags` prints them for this scheduler
/// (sh and mh name their two flags; other schedulers show flag-1..3).
pub fn sched_flag_names(sched: &str, f: &SchedFlags) -> Vec<&'static str> {
    let mut v = Vec::new();
    match sched {
        "sh" | "mh" => {
            let (n1, n2) = if sched == "sh" { ("sh-fallback", "sh-port") } else { ("mh-fallback", "mh-port") };
            if f.flag1 {
                v.push(n1);
            }
            if f.flag2 {
                v.push(n2);
            }
        }
        _ => {
            for (on, n) in [(f.flag1, "flag-1"), (f.flag2, "flag-2"), (f.flag3, "flag-3")] {
                if on {
                    v.push(n);
                }
            }
        }
    }
    v
}

/// ipvsadm prints `tun_flags_opts[tun_flags]`: exactly one checksum option for gue and gre.
fn tun_flag_opt(f: &TunFlags) -> &'static str {
    match (f.csum, f.remcsum) {
        (false, false) => " --tun-nocsum",
        (true, false) => " --tun-csum",
        (false, true) => " --tun-remcsum",
        // No ipvsadm can set both (the options are exclusive); print both rather than lose one.
        (true, true) => " --tun-csum --tun-remcsum",
    }
}

fn forward_flag(f: &Forward) -> &'static str {
    match f {
        Forward::Masq => "-m",
        Forward::Tunnel(_) => "-i",
        Forward::Route | Forward::Local | Forward::Bypass => "-g",
    }
}
