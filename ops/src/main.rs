//! corralctl: the operator CLI for corral.
//!
//! Nouns are modules: `ipvs` works standalone against the local kernel (no daemon needed),
//! `vrrp` talks to a running corrald over its admin socket.
//! Exit codes: 0 ok, 1 failure, 2 usage (clap's own).

mod cluster_cmd;
mod director_cmd;
mod ipvs_cmd;
mod remote;
mod vrrp_cmd;

use std::path::PathBuf;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "corralctl", version, about = "Operate corral directors and the local IPVS table")]
struct Cli {
    /// The admin socket of the corrald to talk to (commands that need a daemon).
    #[arg(long, global = true, default_value = node::config::DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
    /// Talk to a member's QUIC endpoint (IP:PORT) instead of a local socket; needs --cert-dir.
    #[arg(long, global = true, requires = "cert_dir")]
    remote: Option<std::net::SocketAddr>,
    /// A directory with a cluster certificate (node.pem, node.key, ca.pem), e.g. a node's data_dir.
    #[arg(long, global = true)]
    cert_dir: Option<PathBuf>,
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
    /// Replace the cluster's whole rule set with FILE (TOML or JSON; `-` = stdin).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the changes every director would make; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: ipvs_cmd::Output,
    },
    /// Show replicated state (`get services`).
    Get {
        #[command(subcommand)]
        cmd: director_cmd::GetCmd,
    },
    /// Edit virtual servers (one Raft entry per edit).
    Vs {
        #[command(subcommand)]
        cmd: director_cmd::VsCmd,
        /// Validate and print what would change in every director's IPVS; write nothing.
        #[arg(long, global = true)]
        dry_run: bool,
    },
    /// Edit real servers (one Raft entry per edit).
    Rs {
        #[command(subcommand)]
        cmd: director_cmd::RsCmd,
        /// Validate and print what would change in every director's IPVS; write nothing.
        #[arg(long, global = true)]
        dry_run: bool,
    },
    /// Every director: applied revision, drift repairs, sync daemon, VRRP states, last error.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: ipvs_cmd::Output,
    },
    /// This node's counters as OpenMetrics text, what Prometheus scrapes (VRRP, checks, verdicts, cluster, director).
    Metrics,
    /// Cluster members as the node sees them (gossip state and Raft role).
    Members {
        #[arg(short, long, value_enum, default_value = "table")]
        output: ipvs_cmd::Output,
    },
    /// Announce the node to another seed (`ip:port` of a member).
    Join {
        seed: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: ipvs_cmd::Output,
    },
    /// Leave the cluster gracefully (out of Raft, gossip "left") and stop the node's corrald.
    Leave {
        #[arg(short, long, value_enum, default_value = "table")]
        output: ipvs_cmd::Output,
    },
    /// Remove a node from the Raft membership now (e.g. a machine that will not come back).
    Remove {
        node: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: ipvs_cmd::Output,
    },
    /// Raft consensus status.
    Raft {
        #[command(subcommand)]
        cmd: cluster_cmd::RaftCmd,
    },
    /// Join tokens.
    Token {
        #[command(subcommand)]
        cmd: cluster_cmd::TokenCmd,
    },
    /// The replicated key/value section (a placeholder the director's rules will replace).
    Kv {
        #[command(subcommand)]
        cmd: cluster_cmd::KvCmd,
    },
    /// VRRP instances of a running corrald.
    Vrrp {
        #[command(subcommand)]
        cmd: vrrp_cmd::VrrpCmd,
    },
    /// Print a shell completion script: `source <(corralctl completion bash)`, or install it as
    /// /usr/share/bash-completion/completions/corralctl (zsh, fish, elvish, powershell too).
    Completion { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let (Some(addr), Some(dir)) = (cli.remote, cli.cert_dir.clone()) {
        remote::set_remote(addr, dir);
    }
    let result = match cli.cmd {
        Cmd::Ipvs { cmd } => ipvs_cmd::run(cmd),
        Cmd::Vrrp { cmd } => vrrp_cmd::run(cmd, cli.socket),
        Cmd::Apply { file, dry_run, output } => director_cmd::apply(&cli.socket, &file, dry_run, output),
        Cmd::Get { cmd } => director_cmd::get(&cli.socket, cmd),
        Cmd::Vs { cmd, dry_run } => director_cmd::vs(&cli.socket, cmd, dry_run),
        Cmd::Rs { cmd, dry_run } => director_cmd::rs(&cli.socket, cmd, dry_run),
        Cmd::Status { output } => director_cmd::status(&cli.socket, output),
        Cmd::Metrics => director_cmd::metrics(&cli.socket),
        Cmd::Members { output } => cluster_cmd::members(&cli.socket, output),
        Cmd::Join { seed, output } => cluster_cmd::simple(&cli.socket, node::api::Request::Join { seed }, output),
        Cmd::Leave { output } => cluster_cmd::simple(&cli.socket, node::api::Request::Leave, output),
        Cmd::Remove { node, output } => cluster_cmd::simple(&cli.socket, node::api::Request::Remove { node }, output),
        Cmd::Raft { cmd } => cluster_cmd::raft(&cli.socket, cmd),
        Cmd::Token { cmd } => cluster_cmd::token(&cli.socket, cmd),
        Cmd::Kv { cmd } => cluster_cmd::kv(&cli.socket, cmd),
        Cmd::Completion { shell } => {
            // Into memory first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "corralctl", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corralctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (conflicting flags, bad defaults), at test time.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The bash script `corralctl completion bash` prints, sourced by bash and asked as bash
    /// asks it at a TAB.
    #[test]
    fn bash_completion_offers_the_subcommands() {
        let mut script = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "corralctl", &mut script);
        let file = std::env::temp_dir().join(format!("corralctl-completion-{}.bash", std::process::id()));
        std::fs::write(&file, &script).unwrap();
        let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; _corralctl corralctl '{cur}' '{prev}'; echo \"${{COMPREPLY[@]}}\"",
                    file.display()
                ))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
        };
        let top = complete("corralctl r", 1, "r", "corralctl");
        let rs = complete("corralctl rs ''", 2, "", "rs");
        let _ = std::fs::remove_file(&file);
        for want in ["rs", "raft", "remove"] {
            assert!(top.contains(&want.to_owned()), "{top:?}");
        }
        for want in ["add", "del", "weight", "drain"] {
            assert!(rs.contains(&want.to_owned()), "{rs:?}");
        }
    }
}
