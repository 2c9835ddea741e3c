//! `corralctl members | join | leave | remove | raft status | token … | kv …`: the cluster,
//! through a running corrald's admin socket.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Subcommand;
use node::api::{Request, ResponseBody};

use crate::remote::call;

use crate::ipvs_cmd::Output;

/// Writes may wait for an election and a commit; reads answer at once.
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Subcommand)]
pub enum RaftCmd {
    /// Leader, term, log indexes, voters, learners and replication lag.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a join token (printed once; only its hash is stored).
    Create {
        /// Lifetime (humantime: 30m, 1h, 7d); default: no expiry.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List tokens (ids, expiry, revoked).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a token by id: joins with it are refused from now on.
    Revoke {
        id: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum KvCmd {
    /// Set a key (through Raft; printed revision = its log index).
    Put {
        key: String,
        value: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// All keys as applied on this node.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

fn json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn members(socket: &Path, output: Output) -> Result<()> {
    let ResponseBody::Members { members } = call(socket, &Request::Members, TIMEOUT)? else {
        bail!("unexpected answer")
    };
    match output {
        Output::Json => json(&members),
        Output::Table => {
            println!("{:<16} {:<24} {:<8} {:<8}", "NAME", "ADDRESS", "STATE", "RAFT");
            for m in &members {
                println!("{:<16} {:<24} {:<8} {:<8}", m.name, m.addr, m.state, m.raft);
            }
            Ok(())
        }
    }
}

pub fn simple(socket: &Path, req: Request, output: Output) -> Result<()> {
    let body = call(socket, &req, TIMEOUT)?;
    match (output, &body) {
        (Output::Json, b) => json(b),
        (Output::Table, ResponseBody::Done { message, revision }) => {
            match revision {
                Some(r) => println!("{message} (revision {r})"),
                None => println!("{message}"),
            }
            Ok(())
        }
        (Output::Table, other) => json(other),
    }
}

pub fn raft(socket: &Path, cmd: RaftCmd) -> Result<()> {
    let RaftCmd::Status { output } = cmd;
    let ResponseBody::RaftStatus(s) = call(socket, &Request::RaftStatus, TIMEOUT)? else {
        bail!("unexpected answer")
    };
    match output {
        Output::Json => json(&s),
        Output::Table => {
            println!("node:      {} ({})", s.node, s.role);
            if let Some(why) = &s.stopped {
                println!("STOPPED:   {why} (the figures below are from then; restart corrald once the cause is fixed)");
            }
            println!("leader:    {}", s.leader.as_deref().unwrap_or("none"));
            println!("term:      {}", s.term);
            println!("last log:  {}", s.last_log_index);
            println!("applied:   {}", s.applied_index);
            println!("voters:    {}", s.voters.join(", "));
            println!("learners:  {}", if s.learners.is_empty() { "-".into() } else { s.learners.join(", ") });
            if !s.lag.is_empty() {
                let lag: Vec<String> = s.lag.iter().map(|(n, l)| format!("{n}={l}")).collect();
                println!("lag:       {}", lag.join(" "));
            }
            Ok(())
        }
    }
}

pub fn token(socket: &Path, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create { ttl, description, output } => {
            if let Some(t) = &ttl {
                if let Err(e) = humantime_check(t) {
                    bail!("--ttl {t:?}: {e}");
                }
            }
            let body = call(socket, &Request::TokenCreate { ttl, description }, TIMEOUT)?;
            let ResponseBody::TokenCreated { token, info } = &body else { bail!("unexpected answer") };
            match output {
                Output::Json => json(&body),
                Output::Table => {
                    println!("{token}");
                    eprintln!("token id {} created; it is shown only now", info.id);
                    Ok(())
                }
            }
        }
        TokenCmd::List { output } => {
            let ResponseBody::Tokens { tokens } = call(socket, &Request::TokenList, TIMEOUT)? else {
                bail!("unexpected answer")
            };
            match output {
                Output::Json => json(&tokens),
                Output::Table => {
                    println!("{:<14} {:<12} {:<12} {:<8} DESCRIPTION", "ID", "CREATED", "EXPIRES", "REVOKED");
                    for t in &tokens {
                        let exp = t.expires_unix.map(|e| e.to_string()).unwrap_or_else(|| "never".into());
                        println!("{:<14} {:<12} {:<12} {:<8} {}", t.id, t.created_unix, exp, t.revoked, t.description);
                    }
                    Ok(())
                }
            }
        }
        TokenCmd::Revoke { id, output } => simple(socket, Request::TokenRevoke { id }, output),
    }
}

pub fn kv(socket: &Path, cmd: KvCmd) -> Result<()> {
    match cmd {
        KvCmd::Put { key, value, output } => simple(socket, Request::KvPut { key, value }, output),
        KvCmd::List { output } => {
            let body = call(socket, &Request::KvList, TIMEOUT)?;
            let ResponseBody::Kv { revision, entries } = &body else { bail!("unexpected answer") };
            match output {
                Output::Json => json(&body),
                Output::Table => {
                    println!("# revision {revision}");
                    for (k, v) in entries {
                        println!("{k}={v}");
                    }
                    Ok(())
                }
            }
        }
    }
}

fn humantime_check(t: &str) -> Result<(), String> {
    node::config::parse_duration(t).map(|_| ())
}
