//! The `ipvsadm -Ln` family of layouts (plain, `--stats`, `--rate`, `--thresholds`,
//! `--persistent-conn`, `--tun-info`, `--timeout`, `--connections`, `--daemon`), column for
//! column as ipvsadm 1.31 prints them, so scripts and eyes that read ipvsadm's output read ours.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::*;
use crate::status::*;
use crate::text::order::{c_cmp_dests, c_cmp_services, glibc_qsort};
use crate::text::sched_flag_names;

/// Which columns a listing shows (ipvsadm's `FMT_*` listing flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// Forward, weight, active and inactive connections.
    Plain,
    /// `--stats`: conns, packets and bytes in/out.
    Stats,
    /// `--rate`: CPS, PPS, BPS.
    Rate,
    /// `--thresholds`: upper and lower connection thresholds.
    Thresholds,
    /// `--persistent-conn`: persistent connection templates per real server.
    PersistentConn,
    /// `--tun-info`: the tunnel type, port and checksum mode.
    TunInfo,
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v >> 16, (v >> 8) & 0xff, v & 0xff)
}

/// `TCP  192.0.2.1:80`, `FWM  7 IPv6`.
fn service_name(key: &ServiceKey) -> String {
    match key {
        ServiceKey::Addr { protocol, addr } => {
            let p = match protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Sctp => "SCTP",
            };
            format!("{p:<4} {addr}")
        }
        ServiceKey::Fwmark { family: Family::Inet, mark } => format!("FWM  {mark}"),
        ServiceKey::Fwmark { family: Family::Inet6, mark } => format!("FWM  {mark} IPv6"),
    }
}

fn forward_name(f: &Forward) -> &'static str {
    match f {
        Forward::Masq => "Masq",
        Forward::Local => "Local",
        Forward::Tunnel(_) => "Tunnel",
        Forward::Route => "Route",
        // ipvsadm has no name for it and would print "(null)".
        Forward::Bypass => "(null)",
    }
}

/// ipvsadm's `fwd_tun_info`: `ipip`, `gue:6080:-c`, `gre:+c`, or `n/a`.
fn tun_info(f: &Forward) -> String {
    let csum = |fl: &TunFlags| match (fl.csum, fl.remcsum) {
        (false, false) => "-c",
        (true, false) => "+c",
        _ => "r+c",
    };
    match f {
        Forward::Tunnel(Tunnel::Ipip) => "ipip".into(),
        Forward::Tunnel(Tunnel::Gue { port, flags }) => format!("gue:{port}:{}", csum(flags)),
        Forward::Tunnel(Tunnel::Gre { flags }) => format!("gre:{}", csum(flags)),
        _ => "n/a".into(),
    }
}

/// ipvsadm's `print_largenum`: 9 columns, K/M/G/T suffixes unless `exact`.
fn largenum(out: &mut String, n: u64, exact: bool) {
    if exact {
        let len = n.to_string().len();
        let _ = write!(out, "{:>w$}", n, w = if len <= 8 { 9 } else { len + 1 });
        return;
    }
    let _ = match n {
        n if n < 100_000_000 => write!(out, "{n:>9}"),
        n if n < 1_000_000_000 => write!(out, "{:>8}K", n / 1000),
        n if n < 100_000_000_000 => write!(out, "{:>8}M", n / 1_000_000),
        n if n < 100_000_000_000_000 => write!(out, "{:>8}G", n / 1_000_000_000),
        n => write!(out, "{:>8}T", n / 1_000_000_000_000),
    };
}

fn title(out: &mut String, cols: Columns) {
    let _ = match cols {
        Columns::Stats => writeln!(
            out,
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        ),
        Columns::Rate => writeln!(
            out,
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        ),
        Columns::Thresholds => writeln!(
            out,
            "{:<33} {:<10} {:<10} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        ),
        Columns::PersistentConn => writeln!(
            out,
            "{:<33} {:<9} {:<11} {:<10} {:<10}\n  -> RemoteAddress:Port",
            "Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn", "InActConn"
        ),
        Columns::TunInfo => writeln!(
            out,
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn"
        ),
        Columns::Plain => writeln!(
            out,
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"
        ),
    };
}

/// The service line of the layouts that show the scheduler (all but stats and rate).
fn service_settings(out: &mut String, svc: &Service) {
    let _ = write!(out, "{} {}", service_name(&svc.key), svc.scheduler);
    if svc.sched_flags != SchedFlags::default() {
        let _ = write!(out, " ({})", sched_flag_names(&svc.scheduler, &svc.sched_flags).join(","));
    }
    if let Some(p) = &svc.persistence {
        let _ = write!(out, " persistent {}", p.timeout);
        if let Some(mask) = svc.persistence_mask() {
            let _ = write!(out, " mask {mask}");
        }
        if let Some(pe) = &svc.pe_name {
            let _ = write!(out, " pe {pe}");
        }
    }
    if svc.one_packet {
        out.push_str(" ops");
    }
}

/// The whole `ipvsadm -Ln [--stats|--rate|--thresholds|--persistent-conn|--tun-info] [--exact]`
/// listing. `services` in the kernel's dump order (as `Client::status` returns them): ipvsadm
/// sorts that order with its own comparator, and so do we (see [`crate::text::order`]).
pub fn list(info: &Info, services: &[ServiceStatus], cols: Columns, exact: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "IP Virtual Server version {} (size={})", version_string(info.version), info.conn_tab_size);
    title(&mut out, cols);
    let mut svcs: Vec<&ServiceStatus> = services.iter().collect();
    glibc_qsort(&mut svcs, |a, b| c_cmp_services(&a.service.key, &b.service.key));
    for st in svcs {
        let svc = &st.service;
        let s = &st.stats;
        match cols {
            Columns::Stats | Columns::Rate => {
                let _ = write!(out, "{:<33}", service_name(&svc.key));
                let v = if cols == Columns::Stats {
                    [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes]
                } else {
                    [s.cps, s.inpps, s.outpps, s.inbps, s.outbps]
                };
                for n in v {
                    largenum(&mut out, n, exact);
                }
            }
            _ => service_settings(&mut out, svc),
        }
        out.push('\n');
        let mut dests: Vec<&Dest> = svc.dests.values().collect();
        glibc_qsort(&mut dests, |a, b| c_cmp_dests(&a.key, &b.key));
        for d in dests {
            let ds = st.dests.get(&d.key).copied().unwrap_or_default();
            let addr = SocketAddr::new(d.key.addr, d.key.port).to_string();
            let x = &ds.stats;
            let _ = match cols {
                Columns::Stats => {
                    let _ = write!(out, "  -> {addr:<28}");
                    for n in [x.conns, x.inpkts, x.outpkts, x.inbytes, x.outbytes] {
                        largenum(&mut out, n, exact);
                    }
                    writeln!(out)
                }
                Columns::Rate => {
                    // ipvsadm prints the three rates of a real server unabbreviated.
                    let _ = write!(out, "  -> {addr:<28} {:>8} {:>8} {:>8}", x.cps, x.inpps, x.outpps);
                    largenum(&mut out, x.inbps, exact);
                    largenum(&mut out, x.outbps, exact);
                    writeln!(out)
                }
                Columns::Thresholds => writeln!(
                    out,
                    "  -> {addr:<28} {:<10} {:<10} {:<10} {:<10}",
                    d.upper_threshold, d.lower_threshold, ds.active_conns, ds.inactive_conns
                ),
                Columns::PersistentConn => writeln!(
                    out,
                    "  -> {addr:<28} {:<9} {:<11} {:<10} {:<10}",
                    d.weight, ds.persistent_conns, ds.active_conns, ds.inactive_conns
                ),
                Columns::TunInfo => writeln!(
                    out,
                    "  -> {addr:<28} {:<7} {:<13} {:<6} {:<10} {:<10}",
                    forward_name(&d.forward),
                    tun_info(&d.forward),
                    d.weight,
                    ds.active_conns,
                    ds.inactive_conns
                ),
                Columns::Plain => writeln!(
                    out,
                    "  -> {addr:<28} {:<7} {:<6} {:<10} {:<10}",
                    forward_name(&d.forward),
                    d.weight,
                    ds.active_conns,
                    ds.inactive_conns
                ),
            };
        }
    }
    out
}

/// `ipvsadm -L --timeout`.
pub fn timeouts(t: &Timeouts) -> String {
    format!("Timeout (tcp tcpfin udp): {} {} {}\n", t.tcp, t.tcp_fin, t.udp)
}

/// `ipvsadm -L --daemon`: like ipvsadm, a field the kernel reported as 0 (or no group) is left out.
pub fn daemons(ds: &[SyncDaemon]) -> String {
    let mut out = String::new();
    // ipvsadm prints the master slot, then the backup slot.
    for role in [SyncRole::Master, SyncRole::Backup] {
        for d in ds.iter().filter(|d| d.role == role) {
            let name = match d.role {
                SyncRole::Master => "master",
                SyncRole::Backup => "backup",
            };
            let _ = write!(out, "{name} sync daemon (mcast={}, syncid={}", d.interface, d.sync_id);
            if d.max_len != 0 {
                let _ = write!(out, ", maxlen={}", d.max_len);
            }
            if let Some(g) = d.group {
                let _ = write!(out, ", group={g}");
            }
            if d.port != 0 {
                let _ = write!(out, ", port={}", d.port);
            }
            if d.ttl != 0 {
                let _ = write!(out, ", ttl={}", d.ttl);
            }
            out.push_str(")\n");
        }
    }
    out
}

/// `ipvsadm -Lnc`: the kernel's connection table from `/proc/net/ip_vs_conn`, reformatted.
/// Lines that do not parse are skipped (the kernel writes none).
pub fn connections(proc_text: &str) -> String {
    let mut out = format!("IPVS connection entries\npro expire {:<11} {:<18} {:<18} {}\n", "state", "source", "virtual", "destination");
    for line in proc_text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let ep = |a: &str, p: &str| -> Option<String> {
            let port = u16::from_str_radix(p, 16).ok()?;
            let ip: IpAddr = if a.len() == 8 && !a.contains(':') {
                Ipv4Addr::from(u32::from_str_radix(a, 16).ok()?).into()
            } else {
                a.parse::<Ipv6Addr>().ok()?.into()
            };
            Some(SocketAddr::new(ip, port).to_string())
        };
        let (Some(src), Some(vip), Some(dst), Ok(expire)) = (ep(f[1], f[2]), ep(f[3], f[4]), ep(f[5], f[6]), f[8].parse::<u32>())
        else {
            continue;
        };
        let expire = format!("{:02}:{:02}", expire / 60, expire % 60);
        let _ = writeln!(out, "{:<3} {expire:<6} {:<11} {src:<18} {vip:<18} {dst}", f[0], f[7]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse;

    fn statuses(text: &str) -> Vec<ServiceStatus> {
        parse(text)
            .unwrap()
            .table
            .services
            .into_values()
            .map(|s| ServiceStatus { dests: s.dests.keys().map(|k| (*k, DestStatus::default())).collect(), service: s, stats: Stats::default() })
            .collect()
    }

    const INFO: Info = Info { version: 0x010201, conn_tab_size: 4096 };

    /// Captured from `ipvsadm -Ln` in the VM lab for the same rules as text::tests::IPVSADM_SN.
    #[test]
    fn plain_listing_matches_ipvsadm() {
        let got = list(&INFO, &statuses(crate::text::tests::IPVSADM_SN), Columns::Plain, false);
        let expect = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  192.0.2.1:80 wlc
  -> 198.51.100.1:80              Masq    3      0          0         
  -> 198.51.100.2:8080            Masq    0      0          0         
TCP  192.0.2.2:443 rr persistent 300 mask 255.255.255.0
  -> 198.51.100.3:443             Route   1      0          0         
  -> 198.51.100.4:443             Tunnel  1      0          0         
  -> 198.51.100.5:443             Tunnel  1      0          0         
  -> 198.51.100.6:443             Tunnel  1      0          0         
TCP  192.0.2.3:80 rr persistent 60
UDP  192.0.2.1:53 mh (mh-fallback,mh-port) ops
UDP  192.0.2.4:5060 rr persistent 30 pe sip
SCTP 192.0.2.5:3868 rr
TCP  [2001:db8::10]:80 lc persistent 200
  -> [2001:db8::20]:80            Masq    5      0          0         
FWM  7 sh (sh-port)
  -> 198.51.100.1:0               Route   2      0          0         
FWM  8 IPv6 rr persistent 100 mask 64
  -> [2001:db8::1]:0              Route   1      0          0         
";
        assert_eq!(got, expect);
    }

    #[test]
    fn stats_listing_matches_ipvsadm() {
        let mut st = statuses("-A -t 192.0.2.1:80 -s wlc\n-a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 3\n");
        st[0].stats.conns = 123_456_789;
        let got = list(&INFO, &st, Columns::Stats, false);
        let expect = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  192.0.2.1:80                  123456K        0        0        0        0
  -> 198.51.100.1:80                     0        0        0        0        0
";
        assert_eq!(got, expect);
        let exact = list(&INFO, &st, Columns::Stats, true);
        assert!(exact.contains(&format!("{:<33} 123456789        0", "TCP  192.0.2.1:80")), "{exact}");
    }

    #[test]
    fn timeouts_and_daemons() {
        assert_eq!(timeouts(&Timeouts { tcp: 900, tcp_fin: 120, udp: 300 }), "Timeout (tcp tcpfin udp): 900 120 300\n");
        let m = SyncDaemon {
            role: SyncRole::Master,
            interface: "lo".into(),
            sync_id: 0,
            max_len: 1472,
            group: Some("224.0.0.81".parse().unwrap()),
            port: 8848,
            ttl: 1,
        };
        let b = SyncDaemon { role: SyncRole::Backup, interface: "eth1".into(), sync_id: 7, max_len: 0, group: None, port: 0, ttl: 0 };
        assert_eq!(
            daemons(&[b, m]),
            "master sync daemon (mcast=lo, syncid=0, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n\
             backup sync daemon (mcast=eth1, syncid=7)\n"
        );
    }

    #[test]
    fn connections_from_proc() {
        let proc = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n\
                    TCP C0000264 D431 C0000201 0050 C6336401 0050 ESTABLISHED 899\n\
                    UDP 2001:0db8:0000:0000:0000:0000:0000:0064 0035 2001:0db8:0000:0000:0000:0000:0000:0001 0035 C6336401 0035 UDP         6000\n";
        let got = connections(proc);
        assert_eq!(
            got,
            "IPVS connection entries\n\
             pro expire state       source             virtual            destination\n\
             TCP 14:59  ESTABLISHED 192.0.2.100:54321  192.0.2.1:80       198.51.100.1:80\n\
             UDP 100:00 UDP         [2001:db8::64]:53  [2001:db8::1]:53   198.51.100.1:53\n"
        );
    }

    fn one_service_with_counters() -> Vec<ServiceStatus> {
        let mut st = statuses(
            "-A -t 192.0.2.1:80 -s wlc -p 60\n\
             -a -t 192.0.2.1:80 -r 198.51.100.1:80 -m -w 3 -x 100 -y 10\n\
             -a -t 192.0.2.1:80 -r 198.51.100.2:80 -i --tun-type gue --tun-port 6080 --tun-remcsum\n",
        );
        let d1 = st[0].dests.values_mut().next().unwrap();
        d1.active_conns = 5;
        d1.inactive_conns = 2;
        d1.persistent_conns = 4;
        d1.stats = Stats { cps: 123_456_789, inpps: 2, outpps: 3, inbps: 400_000_000, outbps: 5, ..Stats::default() };
        st
    }

    #[test]
    fn rate_listing_prints_real_server_rates_unabbreviated() {
        let got = list(&INFO, &one_service_with_counters(), Columns::Rate, false);
        let expect = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  192.0.2.1:80                        0        0        0        0        0
  -> 198.51.100.1:80              123456789        2        3  400000K        5
  -> 198.51.100.2:80                     0        0        0        0        0
";
        assert_eq!(got, expect);
    }

    #[test]
    fn thresholds_persistent_conn_and_tunnel_layouts() {
        let st = one_service_with_counters();
        assert_eq!(
            list(&INFO, &st, Columns::Thresholds, false),
            "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn 
  -> RemoteAddress:Port
TCP  192.0.2.1:80 wlc persistent 60
  -> 198.51.100.1:80              100        10         5          2         
  -> 198.51.100.2:80              0          0          0          0         
"
        );
        assert_eq!(
            list(&INFO, &st, Columns::PersistentConn, false),
            "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn 
  -> RemoteAddress:Port
TCP  192.0.2.1:80 wlc persistent 60
  -> 198.51.100.1:80              3         4           5          2         
  -> 198.51.100.2:80              1         0           0          0         
"
        );
        assert_eq!(
            list(&INFO, &st, Columns::TunInfo, false),
            "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn
TCP  192.0.2.1:80 wlc persistent 60
  -> 198.51.100.1:80              Masq    n/a           3      5          2         
  -> 198.51.100.2:80              Tunnel  gue:6080:r+c  1      0          0         
"
        );
    }
}
