//! `corralctl ipvs …`: ipvsadm's save/restore/list on top of the `ipvs` crate.

use std::io::Read;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use ipvs::client::Client;
use ipvs::listing::{self, Columns};
use ipvs::{text, Op, ServiceKey, SyncDaemon, SyncRole, Timeouts};

#[derive(Subcommand)]
pub enum IpvsCmd {
    /// Read `ipvsadm -S` rules on stdin and make the kernel match them, sending only the difference.
    ///
    /// Without --flush, services in the input are made exactly as written and others are left
    /// alone; with --flush (or a `-C` line) the kernel ends with exactly the input's table.
    /// Any bad line rejects the whole input: nothing is applied.
    Restore {
        #[arg(long)]
        flush: bool,
        /// Print the operations instead of applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the table in the `ipvsadm -Sn` format (input for `restore` and `ipvsadm -R`).
    Save,
    /// List services like `ipvsadm -Ln`.
    List {
        #[arg(long, conflicts_with_all = ["rate", "timeout", "connections"])]
        stats: bool,
        #[arg(long, conflicts_with_all = ["timeout", "connections"])]
        rate: bool,
        #[arg(long, conflicts_with = "connections")]
        timeout: bool,
        #[arg(long)]
        connections: bool,
        /// Full numbers instead of K/M/G suffixes.
        #[arg(long)]
        exact: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Zero the counters of one service (`-t VIP:PORT` style, e.g. "tcp 192.0.2.1:80" or "fwm 7") or all.
    Zero { service: Option<String> },
    /// Remove every service.
    Flush,
    /// Connection timeouts.
    Timeout {
        #[command(subcommand)]
        cmd: TimeoutCmd,
    },
    /// The kernel's connection-sync daemon.
    Daemon {
        #[command(subcommand)]
        cmd: DaemonCmd,
    },
}

#[derive(Subcommand)]
pub enum TimeoutCmd {
    /// Print `Timeout (tcp tcpfin udp): …`.
    Get,
    /// Set TCP TCPFIN UDP in seconds (0 leaves one unchanged).
    Set { tcp: u32, tcp_fin: u32, udp: u32 },
}

#[derive(Subcommand)]
pub enum DaemonCmd {
    Start {
        #[arg(value_enum)]
        role: Role,
        #[arg(long)]
        interface: String,
        #[arg(long, default_value_t = 0)]
        syncid: u8,
    },
    Stop {
        #[arg(value_enum)]
        role: Role,
    },
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn client() -> Result<Client> {
    Client::new().context("cannot open the kernel's IPVS (run as root on a kernel with ip_vs)")
}

pub fn run(cmd: IpvsCmd) -> Result<()> {
    match cmd {
        IpvsCmd::Restore { flush, dry_run } => restore(flush, dry_run),
        IpvsCmd::Save => {
            print!("{}", text::save(&client()?.table()?));
            Ok(())
        }
        IpvsCmd::List { stats, rate, timeout, connections, exact, output } => {
            let mut c = client()?;
            if timeout {
                let t = c.timeouts()?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&t)?),
                    Output::Table => print!("{}", listing::timeouts(&t)),
                }
                return Ok(());
            }
            if connections {
                let proc = std::fs::read_to_string("/proc/net/ip_vs_conn").context("read /proc/net/ip_vs_conn")?;
                print!("{}", listing::connections(&proc));
                return Ok(());
            }
            let info = c.info()?;
            let st = c.status()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&st)?),
                Output::Table => {
                    let cols = if stats { Columns::Stats } else if rate { Columns::Rate } else { Columns::Plain };
                    print!("{}", listing::list(&info, &st, cols, exact));
                }
            }
            Ok(())
        }
        IpvsCmd::Zero { service } => {
            let key = service.as_deref().map(parse_service).transpose()?;
            client()?.zero(key.as_ref())?;
            Ok(())
        }
        IpvsCmd::Flush => Ok(client()?.flush()?),
        IpvsCmd::Timeout { cmd: TimeoutCmd::Get } => {
            print!("{}", listing::timeouts(&client()?.timeouts()?));
            Ok(())
        }
        IpvsCmd::Timeout { cmd: TimeoutCmd::Set { tcp, tcp_fin, udp } } => {
            Ok(client()?.set_timeouts(&Timeouts { tcp, tcp_fin, udp })?)
        }
        IpvsCmd::Daemon { cmd } => daemon(cmd),
    }
}

/// `tcp 192.0.2.1:80`, `udp [2001:db8::1]:53`, `sctp …`, `fwm 7`, `fwm6 7`.
fn parse_service(s: &str) -> Result<ServiceKey> {
    let (kind, rest) = s.split_once(' ').context("service is written `tcp VIP:PORT`, `udp …`, `sctp …` or `fwm MARK`")?;
    let line = match kind.to_ascii_lowercase().as_str() {
        "tcp" => format!("-A -t {rest}"),
        "udp" => format!("-A -u {rest}"),
        "sctp" => format!("-A --sctp-service {rest}"),
        "fwm" => format!("-A -f {rest}"),
        "fwm6" => format!("-A -f {rest} -6"),
        other => bail!("unknown service kind {other:?} (tcp, udp, sctp, fwm, fwm6)"),
    };
    let t = text::parse(&line).map_err(|e| anyhow::anyhow!("bad service {s:?}: {}", e.message))?;
    Ok(*t.table.services.keys().next().unwrap())
}

fn restore(flush: bool, dry_run: bool) -> Result<()> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("read rules from stdin")?;
    let file = text::parse(&input).context("rejected, nothing applied")?;
    let mut c = client()?;
    let started = Instant::now();
    let kernel = c.table()?;
    let ops: Vec<Op> = if flush || file.clear { ipvs::diff(&kernel, &file.table) } else { ipvs::merge(&kernel, &file.table) };
    let read = started.elapsed();
    if dry_run {
        for op in &ops {
            println!("{op}");
        }
        eprintln!("corralctl: {} operation(s) would be applied (dry run)", ops.len());
        return Ok(());
    }
    let report = c.apply(&ops)?;
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
    let role = |r: Role| match r {
        Role::Master => SyncRole::Master,
        Role::Backup => SyncRole::Backup,
    };
    match cmd {
        DaemonCmd::Start { role: r, interface, syncid } => {
            let d = SyncDaemon { role: role(r), interface, sync_id: syncid, max_len: 0, group: None, port: 0, ttl: 0 };
            Ok(c.start_daemon(&d)?)
        }
        DaemonCmd::Stop { role: r } => Ok(c.stop_daemon(role(r))?),
        DaemonCmd::Status { output } => {
            let ds = c.daemons()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&ds)?),
                Output::Table => print!("{}", listing::daemons(&ds)),
            }
            Ok(())
        }
    }
}
