//! corrald: the corral director daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use node::config::Config;

/// The corral director daemon: VRRP, and (as the cluster issues land) gossip, Raft and IPVS.
#[derive(Parser, Debug)]
#[command(name = "corrald", version)]
struct Args {
    /// The node's TOML configuration file.
    #[arg(short, long, default_value = "/etc/corral/corrald.toml")]
    config: PathBuf,
    /// Validate the configuration, print the result and exit (0 valid, 1 invalid).
    #[arg(long)]
    config_test: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corrald: invalid configuration: {e}");
            return ExitCode::from(1);
        }
    };
    if args.config_test {
        println!(
            "{}: configuration OK ({} VRRP instance(s), {} sync group(s), {} track script(s))",
            args.config.display(),
            config.vrrp.len(),
            config.vrrp_sync_group.len(),
            config.track_script.len()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!("corrald: running the daemon is not implemented yet; only --config-test works");
    ExitCode::from(1)
}
