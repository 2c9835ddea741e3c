//! `corralctl ipvs …`: ipvsadm's save/restore/list/zero/timeout/daemon on top of the `ipvs`
//! crate, standalone against the local kernel (root, no daemon).
//!
//! `restore` semantics (decided here, documented in `--help`): like `ipvsadm -R` it never
//! touches services the input does not mention, but unlike it each mentioned service ends
//! *exactly* as written (settings edited in place, real servers added, edited or removed), and
//! only the difference is sent. With `--flush`, or a `-C` line in the input, the whole table
//! ends exactly as the input. A bad line rejects the input before anything is sent.

use std::io::Read;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ipvs::client::Client;
use ipvs::listing::{self, Columns};
use ipvs::text::{self, SaveOptions};
use ipvs::{Op, ServiceKey, ServiceStatus, SyncDaemon, SyncRole, Timeouts};

#[derive(Subcommand)]
pub enum IpvsCmd {
    /// Read `ipvsadm -S`/`-Sn` rules on stdin and make the kernel match them, sending only the difference.
    ///
    /// Services in the input end exactly as written (edited in place where possible); services
    /// not in the input are left alone. With --flush (or a `-C` line) the kernel ends with
    /// exactly the input's table. Any bad line rejects the whole input: nothing is applied.
    Restore {
        /// Make the whole table exactly the input (services not in it are deleted).
        #[arg(long)]
        flush: bool,
        /// Print the operations instead of applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the table exactly as `ipvsadm -Sn` does (input for `restore` and `ipvsadm -R`).
    Save {
        /// Also print real servers' -x/-y connection thresholds (ipvsadm -S drops them).
        #[arg(long)]
        thresholds: bool,
    },
    /// List services like `ipvsadm -Ln`.
    List {
        #[command(flatten)]
        layout: Layout,
        /// Full numbers instead of K/M/G suffixes (`--exact`).
        #[arg(long)]
        exact: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Zero the counters of one service (`-t VIP:PORT`, `-u …`, `--sctp-service …`, `-f MARK [-6]`) or of all.
    Zero {
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Remove every service (`ipvsadm -C`).
    Flush,
    /// Connection timeouts (`ipvsadm --set` / `-L --timeout`).
    Timeout {
        #[command(subcommand)]
        cmd: TimeoutCmd,
    },
    /// The kernel's connection-sync daemon (`--start-daemon`, `--stop-daemon`, `-L --daemon`).
    Daemon {
        #[command(subcommand)]
        cmd: DaemonCmd,
    },
}

/// The `ipvsadm -L` layout switches; at most one.
#[derive(Args)]
#[group(multiple = false)]
pub struct Layout {
    /// Packet and byte counters.
    #[arg(long)]
    stats: bool,
    /// Rates (connections, packets, bytes per second).
    #[arg(long)]
    rate: bool,
    /// Upper/lower connection thresholds.
    #[arg(long)]
    thresholds: bool,
    /// Persistent connection templates per real server.
    #[arg(long)]
    persistent_conn: bool,
    /// Tunnel type and options per real server.
    #[arg(long)]
    tun_info: bool,
    /// The connection timeouts.
    #[arg(long)]
    timeout: bool,
    /// The connection table (/proc/net/ip_vs_conn).
    #[arg(short = 'c', long)]
    connections: bool,
    /// The connection-sync daemons.
    #[arg(long)]
    daemon: bool,
}

/// A virtual service named as on ipvsadm's command line (at most one).
#[derive(Args)]
pub struct ServiceArg {
    #[arg(short = 't', long = "tcp-service", value_name = "VIP:PORT", group = "service")]
    tcp: Option<String>,
    #[arg(short = 'u', long = "udp-service", value_name = "VIP:PORT", group = "service")]
    udp: Option<String>,
    #[arg(long = "sctp-service", value_name = "VIP:PORT", group = "service")]
    sctp: Option<String>,
    #[arg(short = 'f', long = "fwmark-service", value_name = "MARK", group = "service")]
    fwmark: Option<String>,
    /// The firewall-mark service is IPv6.
    #[arg(short = '6', long = "ipv6", requires = "fwmark")]
    ipv6: bool,
}

impl ServiceArg {
    fn key(&self) -> Result<Option<ServiceKey>> {
        let (flag, value) = match (&self.tcp, &self.udp, &self.sctp, &self.fwmark) {
            (Some(v), ..) => ("-t", v),
            (_, Some(v), ..) => ("-u", v),
            (_, _, Some(v), _) => ("--sctp-service", v),
            (.., Some(v)) => ("-f", v),
            _ => return Ok(None),
        };
        let mut tokens = vec![flag, value.as_str()];
        if self.ipv6 {
            tokens.push("-6");
        }
        let key = text::parse_service_key(&tokens).map_err(|e| anyhow::anyhow!("bad service `{}`: {e}", tokens.join(" ")))?;
        Ok(Some(key))
    }
}

#[derive(Subcommand)]
pub enum TimeoutCmd {
    /// Print `Timeout (tcp tcpfin udp): …`.
    Get {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Set TCP TCPFIN UDP in seconds (0 leaves one unchanged).
    Set { tcp: u32, tcp_fin: u32, udp: u32 },
}

#[derive(Subcommand)]
pub enum DaemonCmd {
    /// Start the master or backup sync daemon.
    Start {
        #[arg(value_enum)]
        role: Role,
        /// Multicast interface.
        #[arg(long, alias = "interface")]
        mcast_interface: String,
        #[arg(long, default_value_t = 0)]
        syncid: u8,
        /// Maximum sync message size (0 = kernel default).
        #[arg(long, default_value_t = 0)]
        sync_maxlen: u16,
        /// Multicast group (default 224.0.0.81).
        #[arg(long)]
        mcast_group: Option<std::net::IpAddr>,
        /// UDP port (0 = default 8848).
        #[arg(long, default_value_t = 0)]
        mcast_port: u16,
        /// Multicast TTL (0 = default 1).
        #[arg(long, default_value_t = 0)]
        mcast_ttl: u8,
    },
    /// Stop the master or backup sync daemon.
    Stop {
        #[arg(value_enum)]
        role: Role,
    },
    /// Print the running daemons like `ipvsadm -L --daemon`.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    Master,
    Backup,
}

impl From<Role> for SyncRole {
    fn from(r: Role) -> SyncRole {
        match r {
            Role::Master => SyncRole::Master,
            Role::Backup => SyncRole::Backup,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn client() -> Result<Client> {
    Client::new().context("cannot open the kernel's IPVS (run as root on a kernel with ip_vs)")
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run(cmd: IpvsCmd) -> Result<()> {
    match cmd {
        IpvsCmd::Restore { flush, dry_run } => restore(flush, dry_run),
        IpvsCmd::Save { thresholds } => {
            // status() keeps the kernel's dump order, which ipvsadm's sort depends on.
            let st = client()?.status().context("read the kernel's IPVS table")?;
            print!("{}", text::save_ordered(st.iter().map(|s| &s.service), SaveOptions { thresholds }));
            Ok(())
        }
        IpvsCmd::List { layout, exact, output } => list(layout, exact, output),
        IpvsCmd::Zero { service } => {
            let key = service.key()?;
            client()?.zero(key.as_ref()).context("zero counters")?;
            Ok(())
        }
        IpvsCmd::Flush => Ok(client()?.flush().context("flush the IPVS table")?),
        IpvsCmd::Timeout { cmd: TimeoutCmd::Get { output } } => {
            let t = client()?.timeouts().context("read timeouts")?;
            match output {
                Output::Json => print_json(&t),
                Output::Table => {
                print!("{}", listing::timeouts(&t));
                Ok(())
            }
            }
        }
        IpvsCmd::Timeout { cmd: TimeoutCmd::Set { tcp, tcp_fin, udp } } => {
            Ok(client()?.set_timeouts(&Timeouts { tcp, tcp_fin, udp }).context("set timeouts")?)
        }
        IpvsCmd::Daemon { cmd } => daemon(cmd),
    }
}

fn list(l: Layout, exact: bool, output: Output) -> Result<()> {
    if l.connections {
        if output == Output::Json {
            bail!("--connections has no JSON form (it is /proc/net/ip_vs_conn reformatted)");
        }
        let proc = std::fs::read_to_string("/proc/net/ip_vs_conn").context("read /proc/net/ip_vs_conn (is ip_vs loaded?)")?;
        print!("{}", listing::connections(&proc));
        return Ok(());
    }
    let mut c = client()?;
    if l.timeout {
        let t = c.timeouts().context("read timeouts")?;
        return match output {
            Output::Json => print_json(&t),
            Output::Table => {
                print!("{}", listing::timeouts(&t));
                Ok(())
            }
        };
    }
    if l.daemon {
        let ds = c.daemons().context("read sync daemons")?;
        return match output {
            Output::Json => print_json(&ds),
            Output::Table => {
                print!("{}", listing::daemons(&ds));
                Ok(())
            }
        };
    }
    let st = c.status().context("read the kernel's IPVS table")?;
    if output == Output::Json {
        return print_json(&status_json(&st)?);
    }
    let info = c.info().context("read IPVS version")?;
    let cols = match () {
        _ if l.stats => Columns::Stats,
        _ if l.rate => Columns::Rate,
        _ if l.thresholds => Columns::Thresholds,
        _ if l.persistent_conn => Columns::PersistentConn,
        _ if l.tun_info => Columns::TunInfo,
        _ => Columns::Plain,
    };
    print!("{}", listing::list(&info, &st, cols, exact));
    Ok(())
}

/// The JSON form of a listing: services in ipvsadm's order, each with its settings, counters
/// and a list of real servers (settings, connection counts and counters merged). Lists, not
/// maps, because a real server's key is an address and port, not a string.
fn status_json(st: &[ServiceStatus]) -> Result<serde_json::Value> {
    let mut svcs: Vec<&ServiceStatus> = st.iter().collect();
    text::order::glibc_qsort(&mut svcs, |a, b| text::order::c_cmp_services(&a.service.key, &b.service.key));
    let mut out = Vec::new();
    for s in svcs {
        let settings = ipvs::Service { dests: Default::default(), ..s.service.clone() };
        let mut v = serde_json::to_value(&settings)?;
        let mut dests: Vec<&ipvs::Dest> = s.service.dests.values().collect();
        text::order::glibc_qsort(&mut dests, |a, b| text::order::c_cmp_dests(&a.key, &b.key));
        let dests = dests
            .into_iter()
            .map(|d| {
                let mut dv = serde_json::to_value(d)?;
                let status = serde_json::to_value(s.dests.get(&d.key).copied().unwrap_or_default())?;
                if let (Some(dv), serde_json::Value::Object(sv)) = (dv.as_object_mut(), status) {
                    dv.extend(sv);
                }
                Ok(dv)
            })
            .collect::<Result<Vec<_>>>()?;
        v["dests"] = serde_json::Value::Array(dests);
        v["stats"] = serde_json::to_value(s.stats)?;
        out.push(v);
    }
    Ok(serde_json::Value::Array(out))
}

fn restore(flush: bool, dry_run: bool) -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("read rules from stdin")?;
    let file = text::parse(&input).context("rules rejected, nothing applied")?;
    let mut c = client()?;
    let started = Instant::now();
    let kernel = c.table().context("read the kernel's IPVS table")?;
    let ops: Vec<Op> = if flush || file.clear { ipvs::diff(&kernel, &file.table) } else { ipvs::merge(&kernel, &file.table) };
    let read = started.elapsed();
    if dry_run {
        for op in &ops {
            println!("{op}");
        }
        eprintln!("corralctl: {} operation(s) would be applied (dry run, nothing sent)", ops.len());
        return Ok(());
    }
    let report = c.apply(&ops).context("apply the rules")?;
    eprintln!(
        "corralctl: applied {} operation(s) in {} netlink request(s), {} sendmsg call(s); read {:.1} ms, total {:.1} ms",
        ops.len(),
        report.requests,
        report.sendmsg_calls,
        read.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn daemon(cmd: DaemonCmd) -> Result<()> {
    let mut c = client()?;
    match cmd {
        DaemonCmd::Start { role, mcast_interface, syncid, sync_maxlen, mcast_group, mcast_port, mcast_ttl } => {
            if let Some(g) = mcast_group {
                if !g.is_multicast() {
                    bail!("--mcast-group {g} is not a multicast address");
                }
            }
            let d = SyncDaemon {
                role: role.into(),
                interface: mcast_interface,
                sync_id: syncid,
                max_len: sync_maxlen,
                group: mcast_group,
                port: mcast_port,
                ttl: mcast_ttl,
            };
            Ok(c.start_daemon(&d)?)
        }
        DaemonCmd::Stop { role } => Ok(c.stop_daemon(role.into())?),
        DaemonCmd::Status { output } => {
            let ds = c.daemons().context("read sync daemons")?;
            match output {
                Output::Json => print_json(&ds),
                Output::Table => {
                print!("{}", listing::daemons(&ds));
                Ok(())
            }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: IpvsCmd,
    }

    fn parse(args: &[&str]) -> Result<IpvsCmd, clap::Error> {
        T::try_parse_from(std::iter::once("ipvs").chain(args.iter().copied())).map(|t| t.cmd)
    }

    #[test]
    fn zero_takes_ipvsadm_service_options() {
        let IpvsCmd::Zero { service } = parse(&["zero", "-t", "192.0.2.1:80"]).unwrap() else { panic!() };
        assert_eq!(service.key().unwrap().unwrap().to_string(), "TCP 192.0.2.1:80");
        let IpvsCmd::Zero { service } = parse(&["zero", "-f", "7", "-6"]).unwrap() else { panic!() };
        assert_eq!(service.key().unwrap().unwrap().to_string(), "FWM 7 IPv6");
        let IpvsCmd::Zero { service } = parse(&["zero"]).unwrap() else { panic!() };
        assert!(service.key().unwrap().is_none());
        let IpvsCmd::Zero { service } = parse(&["zero", "-u", "192.0.2.1"]).unwrap() else { panic!() };
        assert_eq!(service.key().unwrap().unwrap().to_string(), "UDP 192.0.2.1:0", "a persistent port-0 service");
        let IpvsCmd::Zero { service } = parse(&["zero", "-u", "80"]).unwrap() else { panic!() };
        assert!(service.key().unwrap_err().to_string().contains("bad service `-u 80`"));
        assert!(parse(&["zero", "-t", "192.0.2.1:80", "-u", "192.0.2.1:53"]).is_err(), "one service at most");
        assert!(parse(&["zero", "-6"]).is_err(), "-6 needs -f");
    }

    #[test]
    fn list_layouts_are_exclusive() {
        assert!(parse(&["list", "--stats", "--rate"]).is_err());
        assert!(parse(&["list", "--timeout", "-c"]).is_err());
        assert!(parse(&["list", "--stats", "--exact", "-o", "json"]).is_ok());
        assert!(parse(&["list", "--tun-info"]).is_ok());
    }

    #[test]
    fn json_listing_has_lists_of_real_servers() {
        let t = text::parse("-A -t 192.0.2.1:80 -s rr\n-a -t 192.0.2.1:80 -r 198.51.100.1 -m -w 3\n").unwrap().table;
        let st: Vec<ServiceStatus> = t
            .services
            .into_values()
            .map(|s| ServiceStatus { dests: s.dests.keys().map(|k| (*k, Default::default())).collect(), service: s, stats: Default::default() })
            .collect();
        let v = status_json(&st).unwrap();
        assert_eq!(v[0]["scheduler"], "rr");
        assert_eq!(v[0]["dests"][0]["weight"], 3);
        assert_eq!(v[0]["dests"][0]["active_conns"], 0);
        assert_eq!(v[0]["dests"][0]["key"]["addr"], "198.51.100.1");
        assert!(serde_json::to_string(&v).is_ok());
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        let e = parse(&["restore", "--bogus"]).err().unwrap();
        assert_eq!(e.exit_code(), 2);
    }
}
