//! Health checkers for corral: keepalived's TCP_CHECK, HTTP_GET, SSL_GET, UDP_CHECK, PING_CHECK,
//! DNS_CHECK, SMTP_CHECK and MISC_CHECK, on tokio, with no thread per check (thousands per core).
//!
//! # Layout
//! - [`def`]: the configuration side. [`CheckDef`] is serde-tagged (`type = "http"`) and
//!   `Eq + Hash`, so identical checks are found and run once. [`Timing`] holds keepalived's knobs.
//! - [`result`]: what an attempt says: [`CheckResult`] with latency and a typed [`FailReason`].
//! - One module per probe: `tcp`, [`halfopen`] (`tcp_half_open`), `http` (+ `tls`), `udp`,
//!   `icmp`, `dns`, `smtp`, `script`. Each
//!   does a single attempt; [`Checker`] wraps them with retries into a round.
//! - [`scheduler`]: [`Scheduler`] runs rounds on intervals with spread start times, applies
//!   rise/fall, deduplicates definitions, and sends [`Event`]s on state changes.
//! - [`stats`]: atomic counters; `StatsSnapshot` is what a metrics exporter reads (corrald's
//!   encodes them with `prometheus-client`).
//!
//! # Use
//! ```no_run
//! # async fn demo() {
//! use check::{CheckDef, Scheduler};
//! let (sched, mut events) = Scheduler::<String>::new();
//! sched.add("vs1/rs1".into(), CheckDef::tcp("10.0.0.5:80".parse().unwrap())).unwrap();
//! while let Some(ev) = events.recv().await {
//!     println!("{} went {:?} -> {:?}: {}", ev.id, ev.from, ev.to, ev.result);
//! }
//! # }
//! ```
#![warn(missing_docs)]

mod checker;
mod connect;
pub mod def;
pub mod dns;
pub mod halfopen;
mod http;
mod icmp;
pub mod result;
mod rounds;
pub mod scheduler;
mod script;
mod smtp;
pub mod script_policy;
pub mod stats;
mod tcp;
mod tls;
mod udp;

pub use checker::{check_once, Checker, DefError};
pub use def::{CheckDef, Timing};
pub use result::{CheckResult, DnsFailure, FailReason, Phase, ReasonKind};
pub use scheduler::{Event, Options, Scheduler, State, Status, Tracker};
pub use script_policy::ScriptPolicy;
pub use stats::StatsSnapshot;
