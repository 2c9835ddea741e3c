//! `corralctl apply | get services | vs … | rs … | status`: the cluster's LVS rules and the
//! directors that program them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use node::api::{Request, ResponseBody};

use crate::remote::call;
use node::rules::{Edit, Forwarding, MarkFamily, RealServer, RuleSet, VirtualServer};

use crate::ipvs_cmd::Output;

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetOutput {
    Table,
    Json,
    Toml,
}

#[derive(Subcommand)]
pub enum GetCmd {
    /// The replicated rules (`-o toml` and `-o json` are valid `apply -f` input).
    Services {
        #[arg(short, long, value_enum, default_value = "toml")]
        output: GetOutput,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Fwd {
    Nat,
    Dr,
    Tunnel,
}

impl From<Fwd> for Forwarding {
    fn from(f: Fwd) -> Self {
        match f {
            Fwd::Nat => Forwarding::Nat,
            Fwd::Dr => Forwarding::Dr,
            Fwd::Tunnel => Forwarding::Tunnel,
        }
    }
}

#[derive(Subcommand)]
pub enum VsCmd {
    /// Add a virtual server: VIP:PORT, or --fwmark N. One that exists is refused (`edit` changes
    /// it; replacing it would drop its real servers), as `ipvsadm -A` refuses it.
    Add {
        /// VIP:PORT (omit with --fwmark).
        address: Option<SocketAddr>,
        #[arg(long)]
        fwmark: Option<u32>,
        /// IPv6 firewall-mark service.
        #[arg(long)]
        ipv6: bool,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        #[arg(long, default_value = "wlc")]
        scheduler: String,
        /// ipvsadm's `-b`: sh-port,sh-fallback / mh-port,mh-fallback / flag-1..3.
        #[arg(long, value_delimiter = ',')]
        scheduler_flags: Vec<String>,
        #[arg(long, value_enum, default_value = "nat")]
        forwarding: Fwd,
        /// Persistence timeout (humantime: 360s, 5m).
        #[arg(long)]
        persistence: Option<String>,
        #[arg(long)]
        sorry_server: Option<SocketAddr>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Change settings of a virtual server (VIP:PORT, udp:VIP:PORT or fwmark:N), keeping its
    /// real servers, checks and what is not named, like `ipvsadm -E`.
    Edit {
        service: String,
        #[arg(long)]
        scheduler: Option<String>,
        /// ipvsadm's `-b` (comma-separated); `""` clears them.
        #[arg(long)]
        scheduler_flags: Option<String>,
        #[arg(long, value_enum)]
        forwarding: Option<Fwd>,
        /// Persistence timeout (humantime: 360s, 5m); `off` turns persistence off.
        #[arg(long)]
        persistence: Option<String>,
        #[arg(long, conflicts_with = "no_sorry_server")]
        sorry_server: Option<SocketAddr>,
        /// Remove the sorry server.
        #[arg(long)]
        no_sorry_server: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Remove a virtual server: VIP:PORT, udp:VIP:PORT or fwmark:N.
    Del {
        service: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum RsCmd {
    /// Add (or replace) a real server of SERVICE (VIP:PORT, udp:VIP:PORT or fwmark:N).
    Add {
        service: String,
        address: SocketAddr,
        #[arg(long, default_value_t = 1)]
        weight: i32,
        #[arg(long, value_enum)]
        forwarding: Option<Fwd>,
        #[arg(long)]
        inhibit_on_failure: bool,
        /// Health check as an inline TOML table without target, e.g.
        /// '{ type = "http", path = "/health", interval = "2s", fall = 3 }'.
        #[arg(long)]
        check: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every real server: committed health verdict and each observer's latest result.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Remove a real server.
    Del {
        service: String,
        address: SocketAddr,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Set a real server's weight.
    Weight {
        service: String,
        address: SocketAddr,
        weight: i32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Weight 0: no new connections; established ones finish.
    Drain {
        service: String,
        address: SocketAddr,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

fn print_applied(body: &ResponseBody, output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(body)?);
        return Ok(());
    }
    let ResponseBody::Applied { revision, dry_run, changes } = body else { bail!("unexpected answer") };
    for c in changes {
        println!("{c}");
    }
    match (dry_run, revision) {
        (true, _) => eprintln!("dry run: {} change(s) to every director's IPVS, nothing written", changes.len()),
        (false, Some(r)) if changes.is_empty() => eprintln!("no change (revision {r})"),
        (false, Some(r)) => eprintln!("{} change(s) committed as revision {r}", changes.len()),
        (false, None) => eprintln!("{} change(s)", changes.len()),
    }
    Ok(())
}

pub fn apply(socket: &Path, file: &PathBuf, dry_run: bool, output: Output) -> Result<()> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("read stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?
    };
    let rules = if text.trim_start().starts_with('{') {
        let r: RuleSet = serde_json::from_str(&text).with_context(|| format!("{}: not valid rules JSON", file.display()))?;
        r.validate().map_err(|(segs, m)| anyhow::anyhow!("{}: key `{}`: {m}", file.display(), node::config::key_path(&segs)))?;
        r
    } else {
        RuleSet::parse(file, &text).map_err(|e| anyhow::anyhow!("{e}"))?
    };
    let body = call(socket, &Request::Apply { rules, dry_run }, TIMEOUT)?;
    print_applied(&body, output)
}

pub fn get(socket: &Path, cmd: GetCmd) -> Result<()> {
    let GetCmd::Services { output } = cmd;
    let ResponseBody::Services { revision, rules } = call(socket, &Request::GetServices, TIMEOUT)? else {
        bail!("unexpected answer")
    };
    match output {
        GetOutput::Json => println!("{}", serde_json::to_string_pretty(&rules)?),
        GetOutput::Toml => print!("# revision {revision}\n{}", node::rules::to_toml(&rules)),
        GetOutput::Table => {
            for vs in &rules.virtual_servers {
                let name = match (vs.address, vs.fwmark) {
                    (Some(a), _) => format!("{:?} {a}", vs.protocol).to_uppercase(),
                    (_, Some(m)) => format!("FWM {m}"),
                    _ => "?".into(),
                };
                let group = if vs.group.is_empty() { String::new() } else { format!(" (group: {})", vs.group.join(", ")) };
                println!("{name} {} {:?}{group}", vs.scheduler, vs.forwarding);
                for rs in &vs.real_servers {
                    println!("  -> {} weight {}", rs.address, rs.weight);
                }
            }
        }
    }
    Ok(())
}

fn edit(socket: &Path, edit: Edit, dry_run: bool, output: Output) -> Result<()> {
    let req = if dry_run { Request::PreviewEdit { edit } } else { Request::Edit { edit } };
    let body = call(socket, &req, TIMEOUT)?;
    print_applied(&body, output)
}

pub fn vs(socket: &Path, cmd: VsCmd, dry_run: bool) -> Result<()> {
    match cmd {
        VsCmd::Add { address, fwmark, ipv6, protocol, scheduler, scheduler_flags, forwarding, persistence, sorry_server, output } => {
            let protocol = match protocol.as_str() {
                "tcp" => ipvs::Protocol::Tcp,
                "udp" => ipvs::Protocol::Udp,
                "sctp" => ipvs::Protocol::Sctp,
                p => bail!("--protocol {p:?}: tcp, udp or sctp"),
            };
            let persistence_timeout = persistence
                .map(|p| node::config::parse_duration(&p).map_err(|e| anyhow::anyhow!("--persistence: {e}")))
                .transpose()?;
            let vs = VirtualServer {
                address,
                fwmark,
                group: Vec::new(),
                family: if ipv6 { MarkFamily::Inet6 } else { MarkFamily::Inet },
                protocol,
                scheduler,
                forwarding: forwarding.into(),
                persistence_timeout,
                persistence_granularity: None,
                one_packet: false,
                scheduler_flags,
                persistence_engine: None,
                tunnel: None,
                sorry_server,
                sorry_server_forwarding: None,
                sorry_server_inhibit: false,
                quorum: 1,
                hysteresis: 0,
                alpha: false,
                omega: false,
                check: None,
                quorum_up: None,
                quorum_down: None,
                real_servers: Vec::new(),
            };
            RuleSet { virtual_servers: vec![vs.clone()], ..Default::default() }
                .validate()
                .map_err(|(segs, m)| anyhow::anyhow!("{}: {m}", node::config::key_path(&segs)))?;
            edit(socket, Edit::VsAdd { vs: Box::new(vs) }, dry_run, output)
        }
        VsCmd::Edit { service, scheduler, scheduler_flags, forwarding, persistence, sorry_server, no_sorry_server, output } => {
            let persistence_timeout = match persistence.as_deref() {
                None => None,
                Some("off" | "none" | "0") => Some(None),
                Some(p) => Some(Some(node::config::parse_duration(p).map_err(|e| anyhow::anyhow!("--persistence: {e}"))?)),
            };
            let sorry_server = if no_sorry_server { Some(None) } else { sorry_server.map(Some) };
            let forwarding = forwarding.map(Into::into);
            let scheduler_flags = scheduler_flags.map(|f| f.split(',').map(str::trim).filter(|w| !w.is_empty()).map(String::from).collect::<Vec<_>>());
            if scheduler.is_none() && scheduler_flags.is_none() && forwarding.is_none() && persistence_timeout.is_none() && sorry_server.is_none() {
                bail!("vs edit {service}: nothing to change (--scheduler, --scheduler-flags, --forwarding, --persistence, --sorry-server or --no-sorry-server)");
            }
            edit(socket, Edit::VsEdit { service, scheduler, scheduler_flags, forwarding, persistence_timeout, sorry_server }, dry_run, output)
        }
        VsCmd::Del { service, output } => edit(socket, Edit::VsDel { service }, dry_run, output),
    }
}

pub fn rs(socket: &Path, cmd: RsCmd, dry_run: bool) -> Result<()> {
    match cmd {
        RsCmd::List { output } => rs_list(socket, output),
        RsCmd::Add { service, address, weight, forwarding, inhibit_on_failure, check, output } => {
            let check = check
                .map(|c| {
                    #[derive(serde::Deserialize)]
                    struct Wrap {
                        check: serde_json::Value,
                    }
                    toml::from_str::<Wrap>(&format!("check = {c}")).map(|w| w.check).map_err(|e| anyhow::anyhow!("--check {c:?}: {}", e.message()))
                })
                .transpose()?;
            let rs = RealServer {
                address,
                weight,
                forwarding: forwarding.map(Into::into),
                tunnel: None,
                upper_threshold: 0,
                lower_threshold: 0,
                inhibit_on_failure,
                check,
                notify_up: None,
                notify_down: None,
            };
            edit(socket, Edit::RsAdd { service, rs }, dry_run, output)
        }
        RsCmd::Del { service, address, output } => edit(socket, Edit::RsDel { service, address }, dry_run, output),
        RsCmd::Weight { service, address, weight, output } => edit(socket, Edit::RsWeight { service, address, weight }, dry_run, output),
        RsCmd::Drain { service, address, output } => edit(socket, Edit::RsDrain { service, address }, dry_run, output),
    }
}

pub fn status(socket: &Path, output: Output) -> Result<()> {
    let body = call(socket, &Request::Status, TIMEOUT)?;
    let ResponseBody::Status { revision, nodes } = &body else { bail!("unexpected answer") };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!("cluster revision {revision}");
    println!("{:<12} {:<8} {:<8} {:>8} {:>6} {:<8} {:<20} ERROR", "NODE", "STATE", "RAFT", "APPLIED", "DRIFT", "SYNC", "VRRP");
    for n in nodes {
        let d = n.report.as_ref().and_then(|r| r.director.clone());
        let vrrp: Vec<String> = n.report.as_ref().map(|r| r.vrrp.iter().map(|(k, v)| format!("{k}={v}")).collect()).unwrap_or_default();
        println!(
            "{:<12} {:<8} {:<8} {:>8} {:>6} {:<8} {:<20} {}",
            n.name,
            n.state,
            n.raft,
            d.as_ref().map(|d| d.applied_revision.to_string()).unwrap_or_else(|| "-".into()),
            d.as_ref().map(|d| d.drift_repairs.to_string()).unwrap_or_else(|| "-".into()),
            d.as_ref().and_then(|d| d.sync_daemon.clone()).unwrap_or_else(|| "-".into()),
            if vrrp.is_empty() { "-".into() } else { vrrp.join(",") },
            {
                // A member gossip calls dead or left is not asked; any other one did not answer.
                let stale = match n.state.as_str() {
                    "dead" | "left" => format!("(gossip says {}: its last gossiped report)", n.state),
                    _ => "(did not answer: its last gossiped report)".into(),
                };
                let raft = n.report.as_ref().and_then(|r| r.raft_error.clone());
                let errors: Vec<String> = raft.into_iter().chain(d.and_then(|d| d.last_error)).collect();
                let error = (!errors.is_empty()).then(|| errors.join("; "));
                match (n.report.is_some() && !n.report_live, error) {
                    (false, e) => e.unwrap_or_default(),
                    (true, None) => stale,
                    (true, Some(e)) => format!("{e} {stale}"),
                }
            }
        );
    }
    Ok(())
}

fn rs_list(socket: &Path, output: Output) -> Result<()> {
    let body = call(socket, &Request::RsList, TIMEOUT)?;
    let ResponseBody::RsList { revision, rows } = &body else { bail!("unexpected answer") };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    println!("cluster revision {revision}");
    println!("{:<26} {:<24} {:>6} {:<6} {:<10} OBSERVERS (latest local result)", "SERVICE", "REAL SERVER", "WEIGHT", "CHECK", "VERDICT");
    for r in rows {
        let verdict = if r.committed || r.verdict == "unchecked" { r.verdict.clone() } else { format!("{}?", r.verdict) };
        let obs: Vec<String> = r
            .observers
            .iter()
            .map(|o| match &o.result {
                None => format!("{}: no answer", o.node),
                Some(l) => format!("{}: {} ({})", o.node, l.state, l.last.as_deref().unwrap_or("no round yet")),
            })
            .collect();
        println!(
            "{:<26} {:<24} {:>6} {:<6} {:<10} {}",
            r.service,
            r.address.to_string(),
            r.weight,
            r.check.as_deref().unwrap_or("-"),
            verdict,
            if obs.is_empty() { "-".into() } else { obs.join("; ") }
        );
        if !r.reason.is_empty() {
            println!("{:<26} {:<24} {:>6} {:<6} {:<10} committed because: {}", "", "", "", "", "", r.reason);
        }
        if let Some(w) = r.script_weight {
            println!("{:<26} {:<24} {:>6} {:<6} {:<10} IPVS weight {w}: set by the check script (misc_dynamic)", "", "", "", "", "");
        }
    }
    Ok(())
}

pub fn metrics(socket: &Path) -> Result<()> {
    let body = call(socket, &Request::Metrics, TIMEOUT)?;
    let ResponseBody::Metrics { text } = body else { bail!("unexpected answer") };
    print!("{text}");
    Ok(())
}
