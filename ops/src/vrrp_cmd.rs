//! `corralctl vrrp …`: VRRP instances of a running corrald, over its admin socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use node::api::{Request, ResponseBody};

use crate::remote::call;

use crate::ipvs_cmd::Output;

#[derive(Subcommand)]
pub enum VrrpCmd {
    /// Each instance's state, priority, master and counters.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

pub fn run(cmd: VrrpCmd, socket: PathBuf) -> Result<()> {
    match cmd {
        VrrpCmd::Status { output } => {
            let ResponseBody::VrrpStatus { instances } = call(&socket, &Request::VrrpStatus, Duration::from_secs(5))? else {
                anyhow::bail!("corrald answered vrrp status with something else")
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&instances)?),
                Output::Table => {
                    println!("{:<12} {:<10} {:>4} {:>2} {:<7} {:>8} {:<16} {:>10} {:>10}", "INSTANCE", "INTERFACE", "VRID", "V", "STATE", "PRIORITY", "MASTER", "SENT", "RECEIVED");
                    for i in &instances {
                        let master = i.master.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
                        let prio = if i.effective_priority == i.base_priority {
                            i.base_priority.to_string()
                        } else {
                            format!("{}({})", i.effective_priority, i.base_priority)
                        };
                        let c = |k: &str| i.counters.get(k).copied().unwrap_or(0);
                        println!(
                            "{:<12} {:<10} {:>4} {:>2} {:<7} {:>8} {:<16} {:>10} {:>10}",
                            i.name, i.interface, i.vrid, i.version, i.state, prio, master, c("adverts_sent"), c("adverts_received")
                        );
                        let drops: Vec<String> =
                            i.counters.iter().filter(|(k, v)| k.starts_with("drop_") && **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
                        if !drops.is_empty() {
                            println!("  dropped: {}", drops.join(" "));
                        }
                    }
                }
            }
            Ok(())
        }
    }
}
