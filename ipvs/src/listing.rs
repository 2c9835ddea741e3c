//! The `ipvsadm -Ln` family of layouts (plain, `--stats`, `--rate`, `--timeout`,
//! `--connections`, `--daemon`), column for column, so scripts and eyes that read
//! ipvsadm's output read ours.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::*;
use crate::status::*;
use crate::text::{cmp_dests, cmp_services, sched_flag_names};

/// Which counters a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columns {
    /// Forward, weight, active and inactive connections.
    Plain,
    /// Conns, packets and bytes in/out.
    Stats,
    /// Rates: CPS, PPS, BPS.
    Rate,
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
        Forward::Bypass => "Bypass",
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

fn counters(out: &mut String, s: &Stats, cols: Columns, exact: bool) {
    let v = match cols {
        Columns::Stats => [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes],
        Columns::Rate => [s.cps, s.inpps, s.outpps, s.inbps, s.outbps],
        Columns::Plain => return,
    };
    for n in v {
        largenum(out, n, exact);
    }
}

/// The whole `ipvsadm -Ln [--stats|--rate] [--exact]` listing.
pub fn list(info: &Info, services: &[ServiceStatus], cols: Columns, exact: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "IP Virtual Server version {} (size={})", version_string(info.version), info.conn_tab_size);
    match cols {
        Columns::Plain => {
            out.push_str("Prot LocalAddress:Port Scheduler Flags\n");
            out.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
        }
        Columns::Stats => {
            out.push_str("Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n");
            out.push_str("  -> RemoteAddress:Port\n");
        }
        Columns::Rate => {
            out.push_str("Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n");
            out.push_str("  -> RemoteAddress:Port\n");
        }
    }
    let mut svcs: Vec<&ServiceStatus> = services.iter().collect();
    svcs.sort_by(|a, b| cmp_services(&a.service.key, &b.service.key));
    for st in svcs {
        let svc = &st.service;
        let name = service_name(&svc.key);
        if cols == Columns::Plain {
            let _ = write!(out, "{name} {}", svc.scheduler);
            let flags = sched_flag_names(&svc.scheduler, &svc.sched_flags);
            if !flags.is_empty() {
                let _ = write!(out, " ({})", flags.join(","));
            }
            if let Some(p) = &svc.persistence {
                let _ = write!(out, " persistent {}", p.timeout);
                match svc.key.family() {
                    Family::Inet if p.netmask != 0xffff_ffff => {
                        let _ = write!(out, " mask {}", Ipv4Addr::from(p.netmask));
                    }
                    Family::Inet6 if p.netmask != 128 => {
                        let _ = write!(out, " mask {}", p.netmask);
                    }
                    _ => {}
                }
                if let Some(pe) = &svc.pe_name {
                    let _ = write!(out, " pe {pe}");
                }
            }
            if svc.one_packet {
                out.push_str(" ops");
            }
        } else {
            let _ = write!(out, "{name:<33}");
            counters(&mut out, &st.stats, cols, exact);
        }
        out.push('\n');
        let mut dests: Vec<&Dest> = svc.dests.values().collect();
        dests.sort_by(|a, b| cmp_dests(&a.key, &b.key));
        for d in dests {
            let ds = st.dests.get(&d.key).copied().unwrap_or_default();
            let addr = SocketAddr::new(d.key.addr, d.key.port).to_string();
            if cols == Columns::Plain {
                let _ = writeln!(
                    out,
                    "  -> {addr:<28} {:<7} {:<6} {:<10} {:<10}",
                    forward_name(&d.forward),
                    d.weight,
                    ds.active_conns,
                    ds.inactive_conns
                );
            } else {
                let _ = write!(out, "  -> {addr:<28}");
                counters(&mut out, &ds.stats, cols, exact);
                out.push('\n');
            }
        }
    }
    out
}

/// `ipvsadm -L --timeout`.
pub fn timeouts(t: &Timeouts) -> String {
    format!("Timeout (tcp tcpfin udp): {} {} {}\n", t.tcp, t.tcp_fin, t.udp)
}

/// `ipvsadm -L --daemon`.
pub fn daemons(ds: &[SyncDaemon]) -> String {
    let mut out = String::new();
    for d in ds {
        let role = match d.role {
            SyncRole::Master => "master",
            SyncRole::Backup => "backup",
        };
        let group = d.group.map(|g| g.to_string()).unwrap_or_else(|| "224.0.0.81".into());
        let _ = writeln!(
            out,
            "{role} sync daemon (mcast={}, syncid={}, maxlen={}, group={group}, port={}, ttl={})",
            d.interface,
            d.sync_id,
            d.max_len,
            if d.port == 0 { 8848 } else { d.port },
            if d.ttl == 0 { 1 } else { d.ttl }
        );
    }
    out
}

/// `ipvsadm -Lnc`: the kernel's connection table from `/proc/net/ip_vs_conn`, reformatted.
pub fn connections(proc_text: &str) -> String {
    let mut out = String::from("IPVS connection entries\npro expire state       source             virtual            destination\n");
    for line in proc_text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let ep = |a: &str, p: &str| -> Option<String> {
            let port = u16::from_str_radix(p, 16).ok()?;
            let ip: IpAddr = if a.len() == 8 {
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
        let _ = writeln!(
            out,
            "{:<3} {:02}:{:02}  {:<11} {src:<18} {vip:<18} {dst}",
            f[0],
            expire / 60,
            expire % 60,
            f[7]
        );
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
        let d = SyncDaemon { role: SyncRole::Master, interface: "lo".into(), sync_id: 0, max_len: 1472, group: None, port: 8848, ttl: 1 };
        assert_eq!(daemons(&[d]), "master sync daemon (mcast=lo, syncid=0, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n");
    }

    #[test]
    fn connections_from_proc() {
        let proc = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\nTCP C0000264 D431 C0000201 0050 C6336401 0050 ESTABLISHED 899\n";
        let got = connections(proc);
        assert!(got.ends_with("TCP 14:59  ESTABLISHED 192.0.2.100:54321  192.0.2.1:80       198.51.100.1:80\n"), "{got}");
    }
}
