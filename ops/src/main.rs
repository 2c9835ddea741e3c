//! corralctl: the operator CLI for corral.
//!
//! Nouns are modules: `ipvs` works standalone against the local kernel (no daemon needed),
//! `vrrp` talks to a running corrald over its admin socket.
//! Exit codes: 0 ok, 1 failure, 2 usage (clap's own).

mod ipvs_cmd;
mod vrrp_cmd;

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "corralctl", version, about = "Operate corral directors and the local IPVS table")]
struct Cli {
    /// The admin socket of the corrald to talk to (commands that need a daemon).
    #[arg(long, global = true, default_value = node::config::DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The local kernel's IPVS table, ipvsadm-compatible (root, no daemon needed).
    Ipvs {
        #[command(subcommand)]
        cmd: ipvs_cmd::IpvsCmd,
    },
    /// VRRP instances of a running corrald.
    Vrrp {
        #[command(subcommand)]
        cmd: vrrp_cmd::VrrpCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Ipvs { cmd } => ipvs_cmd::run(cmd),
        Cmd::Vrrp { cmd } => vrrp_cmd::run(cmd, cli.socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corralctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
