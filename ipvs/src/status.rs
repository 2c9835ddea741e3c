//! What the kernel reports beyond the desired state: counters, connection counts,
//! timeouts, the sync daemon. Read-only views; nothing here is ever "applied".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{DestKey, Service};

/// Traffic counters and rate estimates (`IPVS_STATS_ATTR_*`, 64-bit variant when the kernel has it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    /// Connections per second (kernel estimator).
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    /// Bytes per second.
    pub inbps: u64,
    pub outbps: u64,
}

/// A real server as the kernel sees it right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestStatus {
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
    pub stats: Stats,
}

/// A virtual service with its settings, dests, counters and per-dest status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: Service,
    pub stats: Stats,
    pub dests: BTreeMap<DestKey, DestStatus>,
}

/// Connection timeouts in seconds (`ipvsadm --set TCP TCPFIN UDP`); 0 in a set request means "leave as is".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// `IPVS_CMD_GET_INFO`: the kernel's IPVS version and connection hash table size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Encoded as the kernel does: (major << 16) | (minor << 8) | patch.
    pub version: u32,
    pub conn_tab_size: u32,
}

/// Role of a connection-sync daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncRole {
    Master,
    Backup,
}

/// A connection-sync daemon (`--start-daemon`), as started or as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncDaemon {
    pub role: SyncRole,
    /// Multicast interface (`--mcast-interface`).
    pub interface: String,
    /// Sync ID (`--syncid`), 0..=255.
    pub sync_id: u8,
    /// Max sync message size (`--sync-maxlen`), 0 = kernel default.
    pub max_len: u16,
    /// Multicast group (`--mcast-group`), None = the kernel default 224.0.0.81.
    pub group: Option<std::net::IpAddr>,
    /// UDP port (`--mcast-port`), 0 = default 8848.
    pub port: u16,
    /// Multicast TTL (`--mcast-ttl`), 0 = default 1.
    pub ttl: u8,
}
