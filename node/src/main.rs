//! corrald: the corral director daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use node::config::Config;
use tokio::signal::unix::{signal, SignalKind};

/// The corral director daemon: VRRP (keepalived-compatible), cluster membership and Raft,
/// health checks, and the cluster's rules in the kernel's IPVS.
#[derive(Parser, Debug)]
#[command(name = "corrald", version)]
struct Args {
    /// The node's TOML configuration file.
    #[arg(short, long, default_value = "/etc/corral/corrald.toml")]
    config: PathBuf,
    /// Validate the configuration, print the result and exit (0 valid, 1 invalid).
    #[arg(long)]
    config_test: bool,
    /// Disaster recovery, with corrald stopped: make this node the only Raft voter, keeping
    /// its rules, verdicts and CA, when a majority of the voters is gone for good. Prints what
    /// it did and exits; start corrald normally afterwards.
    #[arg(long, conflicts_with = "config_test")]
    force_new_cluster: bool,
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
    if let Err(e) = node::vrrp_driver::check_supported(&config) {
        eprintln!("corrald: {}: {e:#}", args.config.display());
        return ExitCode::from(1);
    }
    let scripts = match node::scripts::policy_from(&config.node) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("corrald: invalid configuration: {}: {e}", args.config.display());
            return ExitCode::from(1);
        }
    };
    if args.config_test {
        println!(
            "{}: configuration OK ({} VRRP instance(s), {} sync group(s), {} track script(s), {} track file(s))",
            args.config.display(),
            config.vrrp.len(),
            config.vrrp_sync_group.len(),
            config.track_script.len(),
            config.track_file.len()
        );
        return ExitCode::SUCCESS;
    }
    if args.force_new_cluster {
        return match node::cluster::force_new_cluster(&config) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("corrald: --force-new-cluster: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            // openraft logs every failed heartbeat to a dead peer at ERROR; corrald reports
            // membership and leadership changes itself.
            // After a storage error (a full disk) Raft has stopped here and openraft says so
            // with every message from the leader (`raft_inner`); corrald says it once.
            "info,openraft=error,openraft::replication=off,openraft::engine=off,openraft::raft::raft_inner=off".into()
        }))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_nofile();
    node::scripts::init(scripts);
    // The current-thread runtime below runs on this thread; the threads it creates set their
    // own scheduling (node::realtime).
    node::realtime::init(config.node.realtime_priority, "main");
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corrald: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config, args.config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corrald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Health checks open a socket per attempt: lift the soft open-files limit to the hard one
/// (1024 by default on many systems, too few for thousands of checks), as daemons commonly do.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let board = Arc::new(Mutex::new(Vec::new()));
    let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(1);
    let cluster = match &config.cluster {
        Some(_) => Some(node::cluster::Cluster::start(&config, stop_tx.clone()).await?),
        None => None,
    };
    let director = match (&config.director, &cluster) {
        (Some(d), Some(c)) => {
            let dir = node::director::Director::start(d, &config.node.data_dir).map_err(|e| anyhow::anyhow!("[director]: {e}"))?;
            node::director::follow_state(dir.tx.clone(), &c.sm);
            // keepalived's RS/VS lines, for notify_fifo and lvs_notify_fifo readers.
            node::lvs_events::follow(&c.sm);
            // The VRRP role only drives the connection-sync daemon: no sync interface, no
            // polling of the status board (10 wake-ups a second for nothing).
            if d.sync_interface.is_some() {
                tokio::spawn(node::director::feed_vrrp(dir.tx.clone(), board.clone(), d.sync_instance.clone()));
            }
            Some(dir)
        }
        _ => None,
    };
    let health = cluster.as_ref().map(|c| node::health::Health::start(c.clone()));
    let director_status = director.as_ref().map(|d| d.status.clone());
    let admin = node::admin::Admin { board: board.clone(), cluster: cluster.clone(), director: director_status.clone(), health };
    if let Some(addr) = config.node.metrics_listen {
        node::metrics::serve(addr, admin.clone()).await?;
    }
    admin.serve_quic()?;
    tokio::spawn(admin.clone().publish_reports());
    let listener = node::admin::bind(&config.node.admin_socket)?;
    tokio::spawn(node::admin::serve(listener, admin));
    let sources = node::service_manager::Sources { board: board.clone(), cluster: cluster.clone(), director: director_status };
    let signal_sources = sources.clone();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    node::service_manager::reloading();
                    let outcome = reload(&path, &reload_tx).await;
                    node::service_manager::reloaded(&outcome, &signal_sources);
                }
            }
        }
        tracing::info!("stopping: releasing mastership");
        node::service_manager::stopping();
        let _ = stop_tx.send(()).await;
    });
    let socket = config.node.admin_socket.clone();
    let config_flush = config.director.as_ref().is_some_and(|d| d.flush_on_stop);
    // VRRP runs on its own thread and runtime: its timers (adverts every few ms, the
    // master-down timer) must not wait behind Raft, QUIC, health checks or the admin API.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let heartbeat = node::service_manager::Heartbeat::default();
    let epoch = std::time::Instant::now();
    let lifecycle = node::vrrp_driver::Lifecycle {
        started: Some(started_tx),
        heartbeat: node::service_manager::watchdog().map(|w| (heartbeat.clone(), epoch, node::service_manager::beat_interval(w))),
    };
    let vrrp_board = board.clone();
    std::thread::Builder::new().name("vrrp".into()).spawn(move || {
        node::realtime::enter("vrrp");
        let r = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(node::vrrp_driver::run(config, vrrp_board, stop_rx, reload_rx, lifecycle)),
            Err(e) => Err(anyhow::anyhow!("VRRP runtime: {e}")),
        };
        let _ = done_tx.send(r);
    })?;
    // Ready for systemd once the admin socket answers (bound above) and the VRRP instances
    // have started; a VRRP start that fails ends the daemon below instead.
    let ended_early = tokio::select! {
        started = started_rx => {
            if started.is_ok() {
                node::service_manager::ready(&sources.line());
                tokio::spawn(node::service_manager::run(sources, heartbeat, epoch));
            }
            None
        }
        r = &mut done_rx => Some(r),
    };
    let result = match ended_early {
        Some(r) => r,
        None => done_rx.await,
    }
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the VRRP thread ended without a result")));
    if let Some(d) = director {
        let flush = config_flush;
        tokio::task::spawn_blocking(move || d.stop(flush)).await.ok();
    }
    if let Some(c) = cluster {
        c.shutdown().await;
    }
    let _ = std::fs::remove_file(socket);
    result
}

/// Reads the file again for a SIGHUP and hands it to the VRRP thread; the outcome is what
/// systemd's reload reports. VRRP instances are reloaded, with the [node] settings the VRRP
/// thread owns (the notify FIFOs, `notify_priority_changes`, gratuitous ARP/NA pacing); other
/// [node], [cluster] and [director] settings need a restart.
async fn reload(path: &std::path::Path, tx: &tokio::sync::mpsc::Sender<node::vrrp_driver::Reload>) -> Result<(), String> {
    let config = Config::load(path).map_err(|e| {
        tracing::error!("SIGHUP: keeping the running configuration: {e}");
        e.to_string()
    })?;
    tracing::info!("SIGHUP: reloading {}", path.display());
    let (done, outcome) = tokio::sync::oneshot::channel();
    tx.send(node::vrrp_driver::Reload { config, done: Some(done) }).await.map_err(|_| "VRRP has stopped".to_string())?;
    outcome.await.unwrap_or_else(|_| Err("VRRP stopped during the reload".into()))
}
