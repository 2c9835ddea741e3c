//! corralctl: the operator CLI for corral.
//!
//! Nouns are modules: `ipvs` works standalone against the local kernel (no daemon needed),
//! `vrrp` talks to a running corrald over its admin socket.
//! Exit codes: 0 ok, 1 failure, 2 usage (clap's own).

mod ipvs_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "corralctl", version, about = "Operate corral directors and the local IPVS table")]
struct Cli {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Ipvs { cmd } => ipvs_cmd::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corralctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
