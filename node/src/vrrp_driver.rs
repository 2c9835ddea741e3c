//! Runs the configured VRRP instances: one tokio task owns every instance's sans-IO core and
//! wakes at the earliest deadline; one reader task per socket forwards received adverts.
//!
//! Today: IPv4 and IPv6, VRRPv2 and v3, multicast or unicast peers, gratuitous ARP and
//! unsolicited NA, virtual MACs (`use_vmac`), notify scripts for instances and sync groups,
//! tracked interfaces (link events) and scripts with keepalived's weights, FAULT while the
//! instance's own interface is down, sync groups, priority-0 release on SIGTERM.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;
use vrrp::group::SyncGroup;
use vrrp::instance::{Action, Instance, InstanceConfig, State};
use vrrp::sys::garp::{self, ArpSender};
use vrrp::sys::socket::VrrpSocket;
use vrrp::sys::vip::Vips;
use vrrp::sys::vmac::{Vmac, Vmacs};
use vrrp::wire::{self, Auth, Packet, Repr, RxContext, V3Checksum, Version};

use crate::api::VrrpInstanceStatus;
use crate::config::{self, Config, SyncGroupConfig, VrrpInstanceConfig};

/// What `corralctl vrrp status` reads; refreshed after every event.
pub type StatusBoard = Arc<Mutex<Vec<VrrpInstanceStatus>>>;

/// The raw sockets by (interface, IPv6?, pinned source): an index into this list is half of a
/// dispatch key. Instances with a `unicast_src_ip` get a socket per source (the source is the
/// socket's), the others share one per interface and family.
type Sockets = Vec<SocketSlot>;

/// One raw socket and its reader. A slot is never removed (its index is half of a dispatch
/// key); once its device is gone (a vmac deleted, an interface deleted and re-created) it is
/// closed: no key, no socket, no reader.
struct SocketSlot {
    key: (String, bool, Option<IpAddr>),
    socket: Option<Arc<AsyncFd<VrrpSocket>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl SocketSlot {
    fn close(&mut self) {
        self.key.0.clear();
        self.socket = None;
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

/// What a sync group needs to hear about after an instance acted.
#[derive(Debug, Clone, Copy)]
enum GroupEvent {
    Changed(State, State),
    WantMaster,
}

impl AsMut<Instance> for Running {
    fn as_mut(&mut self) -> &mut Instance {
        &mut self.inst
    }
}

/// A sync group as the driver runs it: the sans-IO rules, the config (notify scripts) and the
/// state its scripts were last told.
struct Group {
    sync: SyncGroup,
    conf: SyncGroupConfig,
    notified: Option<State>,
}

/// Performs instance `i`'s actions, then lets its sync groups react, and performs the actions of
/// every member they forced, until nothing is left to do; then runs the notify scripts of every
/// group whose state changed.
async fn step(i: usize, running: &mut [Running], groups: &mut [Group], vips: &Vips, out: &mut Outbox) {
    if groups.is_empty() {
        // The common case, per advert: nothing to cascade to.
        perform(&mut running[i], vips, out).await;
        return;
    }
    let mut queue = vec![i];
    while let Some(k) = queue.pop() {
        let events = perform(&mut running[k], vips, out).await;
        let now = Instant::now().into_std();
        for e in events {
            for g in groups.iter() {
                let forced = match e {
                    GroupEvent::Changed(from, to) => g.sync.on_change(now, running, k, from, to),
                    GroupEvent::WantMaster => g.sync.on_want_master(now, running, k),
                };
                queue.extend(forced);
            }
        }
    }
    // Cheap (a few members per group), and a forced member may sit in another group too.
    for g in groups.iter_mut() {
        let state = g.sync.state(|m| running[m].inst.state());
        if state.is_some() && state != g.notified {
            g.notified = state;
            if let Some(to) = state {
                tracing::info!(group = %g.conf.name, "sync group is now {}", to.as_str());
                spawn_scripts(notify_commands(&Hooks::group(&g.conf), &g.conf.name, to, 0));
                crate::notify_fifo::write("GROUP", &g.conf.name, to.as_str(), 0);
            }
        }
    }
}

struct Running {
    conf: VrrpInstanceConfig,
    inst: Instance,
    socket: Arc<AsyncFd<VrrpSocket>>,
    /// Index of `socket` in the driver's socket list: with the VRID, the dispatch key.
    sock_index: usize,
    /// Where the VIPs go, [0] the instance's own (its interface or vmac), then each other
    /// interface a VIP names with `dev`: gratuitous ARP/NA leave on the VIP's own link.
    links: Vec<VipLink>,
    /// The virtual MAC interface, deleted when the instance stops.
    vmac: Option<Vmac>,
    /// Every address the instance moves, advertised and excluded ones.
    vips: Vec<PlacedVip>,
    checksum: V3Checksum,
    /// Bumped whenever the instance leaves MASTER: pending gratuitous ARP/NA repeats of an
    /// earlier mastership stop, or a router that just stepped down would keep pointing hosts
    /// at itself after the real master announced (a failover race seen under load).
    mastership: Arc<std::sync::atomic::AtomicU64>,
    /// Set while a timer expiry is performed: (the deadline, when the driver woke for it), so
    /// a takeover can report where its microseconds went.
    fired: Option<(std::time::Instant, std::time::Instant)>,
    /// The state the driver last acted on (its last `StateChanged`).
    acted_state: State,
    /// Peers already warned about for speaking the other VRRP version (bounded).
    version_warned: Vec<IpAddr>,
    /// The next `garp_master_refresh` while master.
    garp_refresh_at: Option<std::time::Instant>,
    /// `virtual_routes`, interfaces resolved, with their rtnetlink connection (none: no routes).
    routes: Option<(vrrp::sys::route::Routes, Vec<vrrp::sys::route::VirtualRoute>)>,
    /// Every interface the instance uses, with the index it had when resolved
    /// ([`interfaces_changed`]).
    names: Vec<(String, u32)>,
    /// Why the instance could not be pointed at its re-created interface: held in FAULT.
    detached: Option<String>,
}

/// Refuses the configuration keys the driver does not implement yet, naming them, so
/// `--config-test` and a reload fail loudly instead of running half a config. Every key of
/// `[[vrrp]]` is implemented today; the hook stays for the next one.
pub fn check_supported(_cfg: &Config) -> Result<()> {
    Ok(())
}

/// One interface VIPs go on.
struct VipLink {
    ifindex: u32,
    arp: ArpSender,
    /// The source MAC of gratuitous ARP/NA: the interface's, or the virtual MAC. All zero (a
    /// loopback, a tunnel) means the link has no neighbours to tell.
    mac: [u8; 6],
}

/// A VIP with the link it goes on ([`Running::links`]) and its label/scope.
struct PlacedVip {
    addr: IpAddr,
    prefix: u8,
    link: usize,
    extras: vrrp::sys::vip::AddrExtras,
}

/// Whether a VIP's `dev` is where the instance's own VIPs go: its home (the vmac with
/// `use_vmac`), or its interface, which under `use_vmac` also means the vmac (the VIP must
/// answer with the virtual MAC, as keepalived moves it there).
fn is_home(v: &VrrpInstanceConfig, dev: &str) -> bool {
    dev == v.vip_home() || dev == v.interface
}

fn instance_config(v: &VrrpInstanceConfig, primary: IpAddr) -> Result<InstanceConfig> {
    // Only the advertised VIPs are the protocol's; the excluded ones are the driver's alone.
    let vips = v.virtual_ips.iter().map(|s| config::parse_vip(s).map(|p| p.addr)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    let c = InstanceConfig {
        name: v.name.clone(),
        vrid: v.vrid,
        version: if v.version == 2 { Version::V2 } else { Version::V3 },
        priority: v.priority,
        advert_interval: v.advert_interval,
        preempt: v.preempt,
        preempt_delay: v.preempt_delay,
        accept: v.accept,
        primary,
        vips,
        unicast_peers: v.unicast_peers.iter().map(|p| p.parse()).collect::<Result<_, _>>()?,
        auth: match &v.auth_pass {
            Some(p) => Auth::simple(p).context("auth_pass must be 1..=8 bytes")?,
            None => Auth::None,
        },
    };
    c.validate().with_context(|| format!("vrrp instance {:?}", v.name))?;
    Ok(c)
}

/// The host-side checks of [`build`] that need no change to the host ([`resolve`]): the
/// interface and its address to send from, every `dev` a VIP or route names, and
/// `unicast_src_ip` being an address of this host.
async fn precheck(v: &VrrpInstanceConfig, vips: &Vips) -> Result<()> {
    resolve(v, vips).await.map(|_| ())
}

/// What an instance needs from the host, looked up by name: checked before anything is made,
/// and again when an interface it uses was re-created.
struct Resolved {
    ifindex: u32,
    /// The adverts' source (and the tie-breaker).
    primary: IpAddr,
    /// The other interfaces VIPs name with `dev`.
    other_devs: Vec<String>,
    routes: Option<(vrrp::sys::route::Routes, Vec<vrrp::sys::route::VirtualRoute>)>,
    /// Every interface name used, with the index it had: a different index later means the
    /// interface was deleted and made again.
    names: Vec<(String, u32)>,
    /// The instance's addresses (`virtual_ips` and `virtual_ips_excluded`), parsed once.
    specs: Vec<crate::config::VipSpec>,
}

async fn resolve(v: &VrrpInstanceConfig, vips: &Vips) -> Result<Resolved> {
    let ifindex = vrrp::sys::ifindex(&v.interface).with_context(|| format!("vrrp instance {:?}: interface {}", v.name, v.interface))?;
    let mut names = vec![(v.interface.clone(), ifindex)];
    let specs = v.all_vips().map_err(anyhow::Error::msg)?;
    let exclude: Vec<IpAddr> = specs.iter().map(|p| p.addr).collect();
    let v6 = v.is_v6();
    // IPv4 adverts come from the interface's primary address, IPv6 ones from its
    // link-local address (RFC 5798 §5.1.2.1), unless unicast_src_ip names one.
    let primary = match v.unicast_src_ip {
        Some(src) => {
            if !vips.is_local(src).await {
                anyhow::bail!("vrrp instance {:?}: unicast_src_ip {src} is not an address of this host", v.name);
            }
            src
        }
        None => vips
            .primary(ifindex, v6, &exclude)
            .await
            .with_context(|| format!("{} has no {} address to send adverts from", v.interface, if v6 { "IPv6 link-local" } else { "IPv4" }))?,
    };
    let mut vroutes = Vec::new();
    for s in &v.virtual_routes {
        let rs = config::parse_route(s).map_err(anyhow::Error::msg)?;
        let ifindex = match &rs.dev {
            Some(d) => {
                let i = vrrp::sys::ifindex(d).with_context(|| format!("vrrp instance {:?}: virtual route {s:?}: dev {d}", v.name))?;
                names.push((d.clone(), i));
                Some(i)
            }
            None => None,
        };
        vroutes.push(vrrp::sys::route::VirtualRoute {
            kind: rs.kind,
            dest: rs.dest,
            prefix: rs.prefix,
            via: rs.via,
            src: rs.src,
            ifindex,
            metric: rs.metric,
            table: rs.table,
            scope: rs.scope,
            onlink: rs.onlink,
        });
    }
    let routes = match vroutes.is_empty() {
        true => None,
        false => Some((vrrp::sys::route::Routes::new().context("open rtnetlink")?, vroutes)),
    };
    let mut other_devs: Vec<String> = Vec::new();
    for s in &specs {
        if let Some(d) = s.dev.as_ref().filter(|d| !is_home(v, d) && !other_devs.contains(d)) {
            let i = vrrp::sys::ifindex(d).with_context(|| format!("vrrp instance {:?}: virtual IP {}: dev {d}", v.name, s.addr))?;
            names.push((d.clone(), i));
            other_devs.push(d.clone());
        }
    }
    Ok(Resolved { ifindex, primary, other_devs, routes, names, specs })
}

/// The instance's vmac (`use_vmac`), made on its interface.
async fn make_vmac(v: &VrrpInstanceConfig, primary: IpAddr, vmacs: &mut Vmacs, vips: &Vips) -> Result<Option<Vmac>> {
    let Some(name) = v.vmac_ifname() else { return Ok(None) };
    let link_local = match primary {
        IpAddr::V6(p6) => Some(p6),
        IpAddr::V4(_) => None,
    };
    let m = vmacs.create(&v.interface, &name, v.vrid, link_local, vips).await.with_context(|| format!("vrrp instance {:?}", v.name))?;
    tracing::info!(instance = %v.name, "vmac {} ({}) is up on {}", m.name, mac_string(m.mac), v.interface);
    Ok(Some(m))
}

/// The instance's socket (shared with the others of its interface, family and source) and the
/// links its VIPs and gratuitous ARP/NA go on. With use_vmac everything but the primary address
/// lives on the vmac: the socket (a frame carrying our own virtual MAC as source reaches only
/// the vmac), the VIPs and the gratuitous ARP/NA, all with the virtual MAC as source.
async fn attach(
    v: &VrrpInstanceConfig,
    res: &Resolved,
    vmac: &Option<Vmac>,
    sockets: &mut Sockets,
    tx: &mpsc::Sender<(usize, Vec<vrrp::sys::socket::Received>)>,
) -> Result<(usize, Arc<AsyncFd<VrrpSocket>>, Vec<VipLink>)> {
    let (ifname, ifindex, mac) = match vmac {
        Some(m) => (m.name.clone(), m.ifindex, m.mac),
        None => (v.interface.clone(), res.ifindex, vrrp::sys::mac_of(&v.interface)?),
    };
    let key = (ifname.clone(), v.is_v6(), v.unicast_src_ip);
    let open = sockets.iter().position(|s| s.key == key).and_then(|i| Some((i, sockets[i].socket.clone()?)));
    let (sock_index, socket) = match open {
        Some(found) => found,
        None => {
            let pinned = vmac.is_some() || v.unicast_src_ip.is_some();
            let raw = match (res.primary, pinned) {
                (IpAddr::V4(p4), false) => VrrpSocket::open_v4(&ifname, p4),
                (IpAddr::V4(p4), true) => VrrpSocket::open_v4_pinned(&ifname, p4),
                (IpAddr::V6(p6), _) => VrrpSocket::open_v6(&ifname, p6),
            }
            .with_context(|| format!("raw socket on {ifname}"))?;
            let socket = Arc::new(async_fd(raw)?);
            let reader = spawn_reader(sockets.len(), socket.clone(), tx.clone());
            sockets.push(SocketSlot { key, socket: Some(socket.clone()), reader: Some(reader) });
            (sockets.len() - 1, socket)
        }
    };
    let mut links = vec![VipLink { ifindex, arp: ArpSender::open(ifindex)?, mac }];
    for d in &res.other_devs {
        let ifindex = vrrp::sys::ifindex(d)?;
        links.push(VipLink { ifindex, arp: ArpSender::open(ifindex)?, mac: vrrp::sys::mac_of(d)? });
    }
    Ok((sock_index, socket, links))
}

/// Sets up one instance: its vmac if configured, its (shared) socket, ARP/NA sender and
/// sans-IO core.
async fn build(
    v: &VrrpInstanceConfig,
    vips: &Vips,
    vmacs: &mut Vmacs,
    sockets: &mut Sockets,
    tx: &mpsc::Sender<(usize, Vec<vrrp::sys::socket::Received>)>,
) -> Result<Running> {
    let mut res = resolve(v, vips).await?;
    let inst = Instance::new(instance_config(v, res.primary)?)?;
    let vmac = make_vmac(v, res.primary, vmacs, vips).await?;
    let (sock_index, socket, links) = match attach(v, &res, &vmac, sockets, tx).await {
        Ok(parts) => parts,
        Err(e) => {
            if let Some(m) = &vmac {
                let _ = vmacs.delete(m).await;
            }
            return Err(e);
        }
    };
    let placed = std::mem::take(&mut res.specs)
        .into_iter()
        .map(|s| PlacedVip {
            addr: s.addr,
            prefix: s.prefix,
            link: s.dev.as_ref().filter(|d| !is_home(v, d)).and_then(|d| res.other_devs.iter().position(|o| o == d)).map_or(0, |k| k + 1),
            extras: vrrp::sys::vip::AddrExtras { label: s.label, scope: s.scope },
        })
        .collect();
    let checksum = match v.v3_checksum {
        config::V3Checksum::PseudoHeader => V3Checksum::PseudoHeader,
        config::V3Checksum::Plain => V3Checksum::Plain,
    };
    Ok(Running {
        conf: v.clone(),
        inst,
        socket,
        sock_index,
        links,
        vmac,
        vips: placed,
        checksum,
        mastership: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        fired: None,
        acted_state: State::Initialize,
        version_warned: Vec::new(),
        garp_refresh_at: None,
        routes: res.routes.take(),
        names: res.names,
        detached: None,
    })
}

/// Re-attaches the instances whose interfaces were deleted and made again, and retries the
/// detached ones; true when any instance's socket or links changed (the dispatch table follows).
async fn follow_recreated(
    running: &mut [Running],
    vips: &Vips,
    vmacs: &mut Vmacs,
    sockets: &mut Sockets,
    tx: &mpsc::Sender<(usize, Vec<vrrp::sys::socket::Received>)>,
) -> bool {
    let mut moved = false;
    for r in running.iter_mut() {
        if r.detached.is_none() && !interfaces_changed(r) {
            continue;
        }
        moved = true;
        match reattach(r, vips, vmacs, sockets, tx).await {
            Ok(()) => {
                tracing::info!(instance = %r.conf.name, interface = %r.conf.interface, "interface made again: the instance uses the new one");
                // Deleted and made again between two link reports, a master's VIPs went with
                // the old device: through FAULT, so the tracking applied next starts it afresh.
                if r.inst.state() != State::Fault {
                    r.inst.set_tracking(Instant::now().into_std(), true, 0);
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if r.detached.as_ref() != Some(&e) {
                    tracing::warn!(instance = %r.conf.name, "interface made again but not usable yet, held in FAULT: {e}");
                }
                r.detached = Some(e);
            }
        }
    }
    moved
}

/// Whether an interface the instance uses was deleted and made again since it was resolved
/// (same name, another index): its socket, ARP sender and vmac point at a device that is gone.
/// A deleted interface not yet back is not "changed": link tracking holds the instance in
/// FAULT until it is.
fn interfaces_changed(r: &Running) -> bool {
    r.names.iter().any(|(name, index)| matches!(vrrp::sys::ifindex(name), Ok(i) if i != *index))
}

/// Points a running instance at its re-created interfaces: a new socket, links, vmac and
/// routes, and the new primary address; its state, counters and timers stay (it is in FAULT
/// while the link was gone, and link tracking lets it out). On failure (the interface is back
/// without its address yet) it is detached: held in FAULT and tried again.
async fn reattach(r: &mut Running, vips: &Vips, vmacs: &mut Vmacs, sockets: &mut Sockets, tx: &mpsc::Sender<(usize, Vec<vrrp::sys::socket::Received>)>) -> Result<()> {
    let v = r.conf.clone();
    let mut res = resolve(&v, vips).await?;
    // The old socket's device is gone: close it, so the new one is opened by key.
    if let Some(slot) = sockets.get_mut(r.sock_index) {
        if slot.key.0 == v.interface || r.vmac.as_ref().is_some_and(|m| m.name == slot.key.0) {
            slot.close();
        }
    }
    // A vmac goes with the interface under it; forget the old one, make it again.
    if let Some(old) = r.vmac.take() {
        let _ = vmacs.delete(&old).await;
    }
    let vmac = make_vmac(&v, res.primary, vmacs, vips).await?;
    let (sock_index, socket, links) = match attach(&v, &res, &vmac, sockets, tx).await {
        Ok(parts) => parts,
        Err(e) => {
            if let Some(m) = &vmac {
                let _ = vmacs.delete(m).await;
            }
            return Err(e);
        }
    };
    r.inst.set_primary(res.primary)?;
    r.socket = socket;
    r.sock_index = sock_index;
    r.links = links;
    r.vmac = vmac;
    r.routes = res.routes.take();
    r.names = res.names;
    r.detached = None;
    Ok(())
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Stops an instance for good: releases it (priority 0, VIPs removed), deletes its vmac and
/// retires the vmac's socket, whose device is gone (a re-created vmac needs a new one).
async fn retire(mut r: Running, vips: &Vips, vmacs: &mut Vmacs, sockets: &mut Sockets) {
    r.inst.shutdown(Instant::now().into_std());
    let mut out = Outbox::default();
    perform(&mut r, vips, &mut out).await;
    out.flush();
    if let Some(m) = r.vmac.take() {
        if let Err(e) = vmacs.delete(&m).await {
            tracing::error!(instance = %r.conf.name, "{e}");
        }
        // The slot stays (indices are dispatch keys) but no configuration can name it again.
        if let Some(slot) = sockets.get_mut(r.sock_index) {
            slot.close();
        }
    }
}

/// (socket, VRID) -> instance: a received advert finds its instance in O(1), which matters
/// with hundreds of instances at 10 ms adverts on one link.
fn dispatch_table(running: &[Running]) -> std::collections::HashMap<(usize, u8), usize> {
    running.iter().enumerate().map(|(i, r)| ((r.sock_index, r.conf.vrid), i)).collect()
}

/// The configured sync groups over `running`; a group whose config is unchanged keeps what its
/// scripts were last told (`previous`), so a reload does not re-announce it.
fn sync_groups(cfg: &Config, running: &mut [Running], previous: &[Group]) -> Vec<Group> {
    let groups: Vec<Group> = cfg
        .vrrp_sync_group
        .iter()
        .map(|g| Group {
            sync: SyncGroup {
                name: g.name.clone(),
                members: g.members.iter().filter_map(|m| running.iter().position(|r| &r.conf.name == m)).collect(),
            },
            conf: g.clone(),
            notified: previous.iter().find(|p| p.conf == *g).and_then(|p| p.notified),
        })
        .collect();
    for r in running.iter_mut() {
        r.inst.set_gated(false);
    }
    for g in &groups {
        g.sync.install(running);
    }
    groups
}

/// Priority subtracted while quorum fencing says this node is in a minority (0 = off).
fn fence_drop(cfg: &Config) -> i32 {
    cfg.cluster.as_ref().map(|c| i32::from(c.fence_priority_drop)).unwrap_or(0)
}

/// Starts tracking `cfg`'s objects; `kept_scripts`: track scripts' results carried over a
/// reload (see [`crate::tracking::initial`]).
fn start_tracker(
    cfg: &Config,
    running: &mut [Running],
    kept_scripts: &BTreeMap<String, bool>,
) -> (mpsc::Receiver<crate::tracking::Snapshot>, Option<tokio::task::JoinHandle<()>>) {
    let snap = crate::tracking::initial(cfg, kept_scripts);
    for r in running.iter_mut() {
        apply_tracking(r, cfg, &snap);
    }
    let (track_tx, track_rx) = mpsc::channel(16);
    // Every instance tracks at least its own interface (down means FAULT, as in keepalived).
    let tracked = !cfg.vrrp.is_empty() || fence_drop(cfg) > 0;
    let handle = tracked.then(|| tokio::spawn(crate::tracking::run(cfg.clone(), snap, track_tx)));
    (track_rx, handle)
}

/// Feeds one instance the tracking state in `snap`: its own interface (weight 0, like
/// keepalived: an instance cannot work on a link that is down), its tracked interfaces and
/// scripts, and quorum fencing.
fn apply_tracking(r: &mut Running, cfg: &Config, snap: &crate::tracking::Snapshot) {
    let own = config::TrackInterface::Name(r.conf.interface.clone());
    let ifaces: Vec<config::TrackInterface> = std::iter::once(own).chain(r.conf.track_interfaces.iter().cloned()).collect();
    let tracked = crate::tracking::Tracked {
        ifaces: &ifaces,
        scripts: &r.conf.track_scripts,
        script_defs: &cfg.track_script,
        files: &r.conf.track_files,
        file_defs: &cfg.track_file,
        processes: &r.conf.track_processes,
        process_defs: &cfg.track_process,
    };
    let (fault, adjust) = crate::tracking::effect(&tracked, snap);
    // Not attached to its re-created interface yet: nothing to send from.
    let fault = fault || r.detached.is_some();
    let adjust = adjust - if snap.quorum_lost { fence_drop(cfg) } else { 0 };
    let before = r.inst.priority();
    r.inst.set_tracking(Instant::now().into_std(), fault, adjust);
    let now = r.inst.priority();
    if cfg.node.notify_priority_changes && now != before {
        // keepalived's words: MASTER_PRIORITY as master, BACKUP_PRIORITY in any other state
        // (FAULT too); none before the instance has started.
        let word = match r.inst.state() {
            State::Master => Some("MASTER_PRIORITY"),
            State::Initialize => None,
            _ => Some("BACKUP_PRIORITY"),
        };
        if let Some(word) = word {
            crate::notify_fifo::write("INSTANCE", &r.conf.name, word, now);
        }
    }
}

/// A configuration read on SIGHUP, and who waits for its outcome (systemd's reload).
pub struct Reload {
    pub config: Config,
    /// Told `Ok` once the new instances run, or why the file was refused (nothing changed) or
    /// which instances could not start.
    pub done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

/// How the daemon around the VRRP thread follows it (systemd's readiness and watchdog).
#[derive(Default)]
pub struct Lifecycle {
    /// Told once the configured instances have started.
    pub started: Option<tokio::sync::oneshot::Sender<()>>,
    /// Beaten every `interval` from the thread's loop (its time from `epoch`), so the watchdog
    /// sees this runtime alive even when no instance has anything to do.
    pub heartbeat: Option<(crate::service_manager::Heartbeat, std::time::Instant, Duration)>,
}

/// Runs until `shutdown` resolves, then releases mastership (priority 0) and removes VIPs.
/// A new configuration on `reload` replaces only the instances whose settings changed: the
/// others keep their state and their VIPs.
pub async fn run(
    mut cfg: Config,
    board: StatusBoard,
    mut shutdown: mpsc::Receiver<()>,
    mut reload: mpsc::Receiver<Reload>,
    lifecycle: Lifecycle,
) -> Result<()> {
    check_supported(&cfg)?;
    set_pacing(&cfg.node);
    crate::notify_fifo::open(crate::notify_fifo::Paths::of(&cfg.node)).map_err(anyhow::Error::msg)?;
    crate::tracking::init_files(&cfg);
    let vips = Vips::new().context("open rtnetlink")?;
    let mut vmacs = Vmacs::new().context("open rtnetlink")?;
    // Batches of datagrams, as each reader got them from one recvmmsg.
    let (tx, mut rx) = mpsc::channel::<(usize, Vec<vrrp::sys::socket::Received>)>(1024);
    // One socket per interface, shared by its instances: every raw socket gets a copy of every
    // VRRP packet on the link, so a socket per instance would multiply the work by the count.
    let mut sockets: Sockets = Vec::new();
    let mut running = Vec::new();
    for v in cfg.vrrp.iter() {
        match build(v, &vips, &mut vmacs, &mut sockets, &tx).await {
            Ok(r) => running.push(r),
            Err(e) => {
                // Leave nothing behind: the vmacs already made go with the error.
                for r in running {
                    retire(r, &vips, &mut vmacs, &mut sockets).await;
                }
                return Err(e);
            }
        }
    }
    let mut groups = sync_groups(&cfg, &mut running, &[]);
    let mut dispatch = dispatch_table(&running);
    // Tracked objects: read once now (an instance whose interface is down starts in FAULT),
    // then watched by their own task.
    let (mut track_rx, mut tracker) = start_tracker(&cfg, &mut running, &BTreeMap::new());
    // The latest tracking snapshot, for instances re-attached between two of them.
    let mut last_snap = crate::tracking::Snapshot::default();
    let mut last_retry = std::time::Instant::now();
    let now = Instant::now().into_std();
    for r in &mut running {
        // Stale VIPs from a crash must not linger on a backup.
        if let Some((routes, list)) = &r.routes {
            for rt in list {
                let _ = routes.del(rt).await;
            }
        }
        for v in &r.vips {
            let _ = vips.del(r.links[v.link].ifindex, v.addr, v.prefix).await;
        }
        r.inst.startup(now);
    }
    let mut out = Outbox::default();
    for i in 0..running.len() {
        step(i, &mut running, &mut groups, &vips, &mut out).await;
    }
    out.flush();
    publish(&running, &board);
    if let Some(tx) = lifecycle.started {
        let _ = tx.send(());
    }
    let (heartbeat, mut beat) = match lifecycle.heartbeat {
        Some((hb, epoch, every)) => {
            hb.beat(epoch);
            (Some((hb, epoch)), Some(tokio::time::interval(every)))
        }
        None => (None, None),
    };
    // The status board is refreshed on a tick, not per packet: with hundreds of instances
    // at 10 ms adverts, rebuilding it per event would cost more than the protocol itself.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut timer = DeadlineTimer::new().context("timerfd for VRRP deadlines")?;
    // The earliest deadline over all instances, or earlier: it is recomputed in full only when
    // the timer fires or many instances may have changed. A received advert only pushes its
    // own instance's deadline (later, as a rule), so it is merged in O(1); a deadline that
    // moved later costs at most one early wake-up, which finds nothing due and re-arms.
    let mut next = earliest(&running);
    loop {
        timer.arm(next);
        let mut rescan = true;
        tokio::select! {
            _ = timer.expired() => {
                let now = std::time::Instant::now();
                for i in 0..running.len() {
                    if let Some(t) = running[i].inst.poll_timeout().filter(|t| *t <= now) {
                        running[i].fired = Some((t, now));
                        running[i].inst.handle_timeout(now);
                        step(i, &mut running, &mut groups, &vips, &mut out).await;
                        running[i].fired = None;
                    }
                }
            }
            Some((sock, pkts)) = rx.recv() => {
                // One clock read per batch: its datagrams arrived together.
                let now = std::time::Instant::now();
                for pkt in pkts {
                // Dispatch by VRID among the instances of that interface.
                let vrid = pkt.payload.get(1).copied();
                match vrid.and_then(|v| dispatch.get(&(sock, v)).copied()) {
                    Some(i) => {
                        receive(&mut running[i], pkt, now);
                        step(i, &mut running, &mut groups, &vips, &mut out).await;
                        if groups.is_empty() {
                            // Only instance i can have moved.
                            next = min_opt(next, wake_at(&running[i]));
                            rescan = false;
                        }
                    }
                    // An instance of this link on a sibling socket (its own unicast_src_ip) owns
                    // the VRID: that socket got the packet too, nothing to count here.
                    None if vrid.is_some_and(|v| {
                        let ifname = &sockets[sock].key.0;
                        running.iter().any(|r| r.conf.vrid == v && r.sock_index != sock && sockets[r.sock_index].key.0 == *ifname)
                    }) => {}
                    None => {
                        // Not ours (another router's VRID, or too short to say): count it on
                        // the interface's first instance so it is visible somewhere.
                        let reason = if vrid.is_none() { wire::DropReason::Truncated } else { wire::DropReason::VridMismatch };
                        if let Some(r) = running.iter_mut().find(|r| r.sock_index == sock) {
                            r.inst.count_drop(reason);
                        }
                    }
                }
            }}
            Some(snap) = track_rx.recv() => {
                // A link event may be an interface made again under the same name.
                if follow_recreated(&mut running, &vips, &mut vmacs, &mut sockets, &tx).await {
                    dispatch = dispatch_table(&running);
                }
                for i in 0..running.len() {
                    apply_tracking(&mut running[i], &cfg, &snap);
                    step(i, &mut running, &mut groups, &vips, &mut out).await;
                }
                last_snap = snap;
            }
            Some(Reload { config: new, done }) = reload.recv() => {
                let refuse = |e: anyhow::Error, done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>| {
                    tracing::error!("reload refused, nothing changed: {e:#}");
                    if let Some(tx) = done {
                        let _ = tx.send(Err(format!("{e:#}")));
                    }
                };
                if let Err(e) = check_supported(&new) {
                    refuse(e, done);
                    continue;
                }
                // What this host must have for the new or changed instances (interfaces,
                // `dev`s, unicast_src_ip) is checked before any instance is released: a typo
                // must not leave the node without an instance it was running.
                let mut missing = None;
                for v in new.vrrp.iter().filter(|v| !running.iter().any(|r| r.conf == **v)) {
                    if let Err(e) = precheck(v, &vips).await {
                        missing = Some(e);
                        break;
                    }
                }
                if let Some(e) = missing {
                    refuse(e, done);
                    continue;
                }
                // Last of the checks: a refused reload leaves the FIFO as it was too.
                if let Err(e) = crate::notify_fifo::open(crate::notify_fifo::Paths::of(&new.node)) {
                    refuse(anyhow::Error::msg(e), done);
                    continue;
                }
                set_pacing(&new.node);
                // Release and drop the instances that are gone or changed.
                let mut kept = Vec::new();
                for r in std::mem::take(&mut running) {
                    if new.vrrp.iter().any(|v| *v == r.conf) {
                        kept.push(r);
                    } else {
                        tracing::info!(instance = %r.conf.name, "reload: instance removed or changed, releasing it");
                        // Removed, not changed (a changed one comes back under its name).
                        let deleted = !new.vrrp.iter().any(|v| v.name == r.conf.name);
                        let notice = deleted.then(|| deletion_notice(&r)).flatten();
                        retire(r, &vips, &mut vmacs, &mut sockets).await;
                        // After the VIPs are gone, as keepalived sends them.
                        if let Some((name, word, priority, scripts)) = notice {
                            crate::notify_fifo::write("INSTANCE", &name, word, priority);
                            spawn_scripts(scripts);
                        }
                    }
                }
                running = kept;
                let mut failed = Vec::new();
                for v in &new.vrrp {
                    if running.iter().any(|r| r.conf == *v) {
                        continue;
                    }
                    match build(v, &vips, &mut vmacs, &mut sockets, &tx).await {
                        Ok(r) => running.push(r),
                        Err(e) => {
                            tracing::error!(instance = %v.name, "reload: {e:#}");
                            failed.push(format!("instance {}: {e:#}", v.name));
                        }
                    }
                }
                // Keep the configured order (status listings, group indices).
                running.sort_by_key(|r| new.vrrp.iter().position(|v| v.name == r.conf.name));
                // Scripts defined as before keep their results.
                let kept_scripts: BTreeMap<String, bool> = new
                    .track_script
                    .iter()
                    .filter(|d| cfg.track_script.contains(d))
                    .filter_map(|d| Some((d.name.clone(), *last_snap.scripts.get(&d.name)?)))
                    .collect();
                cfg = new;
                groups = sync_groups(&cfg, &mut running, &groups);
                dispatch = dispatch_table(&running);
                if let Some(t) = tracker.take() {
                    t.abort();
                }
                (track_rx, tracker) = start_tracker(&cfg, &mut running, &kept_scripts);
                let now = Instant::now().into_std();
                for i in 0..running.len() {
                    if running[i].inst.state() == State::Initialize {
                        running[i].inst.startup(now);
                        step(i, &mut running, &mut groups, &vips, &mut out).await;
                    }
                }
                publish(&running, &board);
                tracing::info!("reload: {} instance(s) running", running.len());
                if let Some(tx) = done {
                    let _ = tx.send(if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) });
                }
            }
            _ = async { beat.as_mut().expect("guarded").tick().await }, if beat.is_some() => {
                if let Some((hb, epoch)) = &heartbeat {
                    hb.beat(*epoch);
                }
                rescan = false;
            }
            // With no instance (a director-only node) there is nothing to refresh: the board
            // was published empty, and a reload that adds instances publishes it again.
            _ = tick.tick(), if !running.is_empty() => {
                // An instance whose re-created interface was not usable yet (its address comes
                // after the link): tried again each second.
                if running.iter().any(|r| r.detached.is_some()) && last_retry.elapsed() >= Duration::from_secs(1) {
                    last_retry = std::time::Instant::now();
                    if follow_recreated(&mut running, &vips, &mut vmacs, &mut sockets, &tx).await {
                        dispatch = dispatch_table(&running);
                        for i in 0..running.len() {
                            apply_tracking(&mut running[i], &cfg, &last_snap);
                            step(i, &mut running, &mut groups, &vips, &mut out).await;
                        }
                    }
                }
                refresh_garps(&mut running, std::time::Instant::now());
                publish(&running, &board);
                rescan = false;
            }
            _ = shutdown.recv() => break,
        }
        // Adverts of one wake-up leave together: one sendmmsg per socket.
        out.flush();
        if rescan {
            next = earliest(&running);
        }
    }
    // keepalived's STOP notifications, with the priority each instance had.
    let mut stop_scripts = Vec::new();
    let mut stop_lines = Vec::new();
    for r in &running {
        stop_scripts.extend(end_commands(&Hooks::instance(&r.conf), &r.conf.name, End::Stop, r.inst.priority()));
        stop_lines.push(("INSTANCE", r.conf.name.clone(), r.inst.priority()));
    }
    for g in groups.iter() {
        stop_scripts.extend(end_commands(&Hooks::group(&g.conf), &g.conf.name, End::Stop, 0));
        stop_lines.push(("GROUP", g.conf.name.clone(), 0));
    }
    for r in &mut running {
        r.inst.shutdown(Instant::now().into_std());
        perform(r, &vips, &mut out).await;
    }
    out.flush();
    publish(&running, &board);
    for r in running {
        retire(r, &vips, &mut vmacs, &mut sockets).await;
    }
    // After the VIPs are gone, as keepalived runs them.
    for (kind, name, priority) in stop_lines {
        crate::notify_fifo::write(kind, &name, "STOP", priority);
    }
    run_scripts_waiting(stop_scripts, STOP_SCRIPTS_WAIT).await;
    Ok(())
}

/// When the driver must wake for an instance: a master's next advert rounded up to the
/// [`ADVERT_GRID`], every other deadline (Master_Down, the failover itself) exactly.
fn wake_at(r: &Running) -> Option<std::time::Instant> {
    let t = r.inst.poll_timeout()?;
    Some(if r.inst.state() == State::Master { advert_grid(t) } else { t })
}

/// Masters' advert deadlines are rounded up to this grid so adverts due within the same
/// step go out in one wake-up: 256 masters at 10 ms would otherwise wake the thread 25,600
/// times a second through the timerfd (tokio's 1 ms wheel batched them the same way). An
/// advert is at most this late; the receivers' Master_Down_Interval is three intervals.
const ADVERT_GRID: Duration = Duration::from_millis(1);

fn advert_grid(t: std::time::Instant) -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    let since = t.saturating_duration_since(epoch).as_nanos();
    let step = ADVERT_GRID.as_nanos();
    epoch + Duration::from_nanos(u64::try_from(since.div_ceil(step) * step).unwrap_or(u64::MAX))
}

/// The earliest wake-up any instance needs.
fn earliest(running: &[Running]) -> Option<std::time::Instant> {
    running.iter().filter_map(wake_at).min()
}

fn min_opt(a: Option<std::time::Instant>, b: Option<std::time::Instant>) -> Option<std::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A timerfd holding the driver's next deadline.
///
/// Why not `tokio::time::sleep_until`: tokio's timer wheel has 1 ms granularity and rounds
/// deadlines up, and its `epoll_wait` timeout is in whole milliseconds, so a Master_Down expiry
/// fired 0.7 to 1.6 ms after its deadline (measured). A timerfd is a kernel hrtimer: it wakes
/// the runtime within tens of microseconds, and the sans-IO core still gets the time as an
/// `Instant` argument (its clock stays injected).
struct DeadlineTimer {
    fd: AsyncFd<TimerFd>,
    /// What the timerfd is set to (`None`: disarmed, or fired and not re-armed).
    armed: Option<std::time::Instant>,
}

struct TimerFd(std::os::fd::OwnedFd);

impl std::os::fd::AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

impl DeadlineTimer {
    #[allow(deprecated)] // AsyncFd::new: TimerFd owns its fd (OwnedFd closes it on drop).
    fn new() -> std::io::Result<DeadlineTimer> {
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(DeadlineTimer { fd: AsyncFd::new(TimerFd(owned))?, armed: None })
    }

    /// Sets the timer to `at` (a deadline in the past fires at once; `None` disarms); a system
    /// call only when the deadline changed.
    fn arm(&mut self, at: Option<std::time::Instant>) {
        if at == self.armed {
            return;
        }
        self.armed = at;
        let value = match at {
            None => Duration::ZERO,
            // `std::time::Instant` is CLOCK_MONOTONIC on Linux, like the timerfd; a zero
            // it_value would disarm it, so "now" is 1 ns.
            Some(t) => t.saturating_duration_since(std::time::Instant::now()).max(Duration::from_nanos(1)),
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: value.as_secs() as libc::time_t, tv_nsec: value.subsec_nanos() as libc::c_long },
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref());
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            // Cannot happen with a valid fd and spec; never wait forever on it.
            tracing::error!("timerfd_settime: {}", std::io::Error::last_os_error());
            self.armed = None;
        }
    }

    /// Resolves when the armed deadline passes (cancel-safe: an expiry not yet read stays).
    async fn expired(&mut self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            let mut ticks = [0u8; 8];
            let fd = std::os::fd::AsRawFd::as_raw_fd(guard.get_inner());
            let n = unsafe { libc::read(fd, ticks.as_mut_ptr() as *mut libc::c_void, 8) };
            if n == 8 {
                self.armed = None;
                return;
            }
            // EAGAIN: re-armed after the expiry was signalled (re-arming clears it).
            guard.clear_ready();
        }
    }
}

/// Reads one socket: each time it is readable, what is queued (up to 64 datagrams) goes to the
/// driver as one batch, so a backup of hundreds of instances pays one system call and one
/// channel message per batch rather than per advert.
fn spawn_reader(index: usize, socket: Arc<AsyncFd<VrrpSocket>>, tx: mpsc::Sender<(usize, Vec<vrrp::sys::socket::Received>)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut batch = vrrp::sys::socket::RecvBatch::new(64);
        loop {
            let Ok(mut guard) = socket.readable().await else { return };
            match guard.try_io(|s| s.get_ref().recv_many(&mut batch)) {
                Ok(Ok(got)) => {
                    let mut good = Vec::with_capacity(got.len());
                    for r in got {
                        match r {
                            Ok(r) => good.push(r),
                            Err(e) => tracing::warn!("vrrp receive: {e}"),
                        }
                    }
                    if !good.is_empty() && tx.send((index, good)).await.is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::warn!("vrrp receive: {e}"),
                Err(_would_block) => continue,
            }
        }
    })
}

fn receive(r: &mut Running, pkt: vrrp::sys::socket::Received, now: std::time::Instant) {
    let version = r.inst.config().version;
    let cx = RxContext { version, src: pkt.src, dst: pkt.dst, ttl: pkt.ttl, v3_checksum: r.checksum };
    let parsed = Packet::new_checked(&pkt.payload[..]).and_then(|p| {
        // Another VRID on the same link is not ours and not an error worth more than a count.
        if p.vrid() != r.inst.config().vrid {
            return Err(wire::DropReason::VridMismatch);
        }
        Repr::parse(&p, &cx)
    });
    match parsed {
        Ok(repr) => r.inst.handle_advert(now, pkt.src, &repr),
        Err(reason) => {
            if reason == wire::DropReason::BadVersion {
                warn_other_version(r, &pkt);
            }
            r.inst.count_drop(reason)
        }
    }
}

/// A router of the same VRID speaking the other VRRP version is the classic silent split brain
/// of a keepalived migration (keepalived defaults to version 2, corral to 3): each drops the
/// other's adverts, and both become master. The drop is counted like any other; this says so
/// in words, once per peer.
fn warn_other_version(r: &mut Running, pkt: &vrrp::sys::socket::Received) {
    let theirs = pkt.payload.first().map(|b| b >> 4).unwrap_or(0);
    let ours = r.conf.version;
    if !(2..=3).contains(&theirs) || theirs == ours || r.version_warned.contains(&pkt.src) || r.version_warned.len() >= 16 {
        return;
    }
    r.version_warned.push(pkt.src);
    tracing::warn!(
        instance = %r.conf.name,
        vrid = r.conf.vrid,
        peer = %pkt.src,
        "VRRP instance {} runs version {ours} and drops the version-{theirs} adverts {} sends for VRID {}: neither router hears the other, so both can become master. \
         keepalived's default is vrrp_version 2: set `version = {theirs}` on this instance, or the same version on the peer",
        r.conf.name,
        pkt.src,
        r.conf.vrid
    );
}

/// Adverts waiting for the end of the driver's turn, when they leave with one `sendmmsg` per
/// socket: a master of 256 instances at 10 ms sends ~26 adverts per wake-up.
#[derive(Default)]
struct Outbox {
    queue: Vec<(Arc<AsyncFd<VrrpSocket>>, Vec<u8>, IpAddr)>,
}

impl Outbox {
    /// Sends what is queued, in order, batching runs of adverts for the same socket.
    fn flush(&mut self) {
        let mut rest = &self.queue[..];
        while let Some((sock, _, _)) = rest.first() {
            let run = rest.iter().take_while(|(s, _, _)| Arc::ptr_eq(s, sock)).count();
            let msgs: Vec<(&[u8], IpAddr)> = rest[..run].iter().map(|(_, b, d)| (&b[..], *d)).collect();
            for (k, e) in sock.get_ref().send_many(&msgs) {
                let (bytes, dst) = msgs[k];
                tracing::warn!(vrid = bytes.get(1).copied().unwrap_or(0), "send advert to {dst}: {e}");
            }
            rest = &rest[run..];
        }
        self.queue.clear();
    }
}

/// One gratuitous ARP (IPv4 VIP) or unsolicited NA (IPv6 VIP), for the link it leaves on.
struct GarpFrame {
    /// Index into `Running::links`.
    link: usize,
    bytes: Vec<u8>,
    /// An IPv6 neighbour advertisement (paced by `gna_interval`, not `garp_interval`).
    na: bool,
}

/// Gratuitous ARP / unsolicited NA for every VIP the instance moves (the core knows only the
/// advertised ones), each for its own link with that link's MAC.
fn garp_frames(r: &Running) -> Vec<GarpFrame> {
    r.vips
        .iter()
        .filter(|v| r.links[v.link].mac != [0; 6])
        .map(|v| {
            let mac = r.links[v.link].mac;
            let (bytes, na) = match v.addr {
                IpAddr::V4(v4) => (garp::frame(mac, v4).to_vec(), false),
                IpAddr::V6(v6) => (garp::na_frame(mac, v6).to_vec(), true),
            };
            GarpFrame { link: v.link, bytes, na }
        })
        .collect()
}

fn send_garps(r: &Running, frames: &[GarpFrame]) {
    for f in frames {
        if let Err(e) = r.links[f.link].arp.send(&f.bytes) {
            tracing::warn!(instance = %r.conf.name, "gratuitous ARP / NA: {e}");
        }
    }
}

/// keepalived's `vrrp_garp_interval` / `vrrp_gna_interval` (`[node] garp_interval`,
/// `gna_interval`): the least time between two gratuitous ARPs (resp. NAs) on one interface,
/// whichever instances send them. Switches police ARP: Cisco's dynamic ARP inspection, for
/// one, shuts a port that sends more than 15 a second by default, which the bursts of a sync
/// group's instances taking over together, back to back, exceed. One pacer for the driver:
/// every instance's messages on an interface queue behind each other.
#[derive(Debug, Default)]
struct Pacer {
    garp: Duration,
    gna: Duration,
    /// (ifindex, NA?) → when the next message of that kind may leave that interface.
    next: HashMap<(u32, bool), std::time::Instant>,
}

impl Pacer {
    fn gap(&self, na: bool) -> Duration {
        if na {
            self.gna
        } else {
            self.garp
        }
    }

    fn paced(&self) -> bool {
        !self.garp.is_zero() || !self.gna.is_zero()
    }

    /// Whether a message of kind `na` may leave `ifindex` at `now`.
    fn free(&self, ifindex: u32, na: bool, now: std::time::Instant) -> bool {
        self.next.get(&(ifindex, na)).is_none_or(|n| *n <= now)
    }

    /// Takes the first slot at or after `earliest` for a message of kind `na` on `ifindex`.
    fn reserve(&mut self, ifindex: u32, na: bool, earliest: std::time::Instant) -> std::time::Instant {
        let gap = self.gap(na);
        if gap.is_zero() {
            return earliest;
        }
        let slot = self.next.get(&(ifindex, na)).map_or(earliest, |n| (*n).max(earliest));
        self.next.insert((ifindex, na), slot + gap);
        slot
    }
}

static PACER: std::sync::LazyLock<std::sync::Mutex<Pacer>> = std::sync::LazyLock::new(Default::default);

fn pacer() -> std::sync::MutexGuard<'static, Pacer> {
    PACER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the pacing from the node's configuration (at start and on reload).
fn set_pacing(node: &crate::config::NodeSection) {
    let mut p = pacer();
    (p.garp, p.gna) = (node.garp_interval, node.gna_interval);
}

/// The messages of `rounds` rounds of `frames` frames, as (round, frame index). `skip` leaves
/// out the first round's first `skip` messages (sent by the caller).
fn garp_rounds(frames: usize, rounds: u32, skip: usize) -> Vec<(u32, usize)> {
    (0..rounds).flat_map(|k| (0..frames).filter(move |i| k > 0 || *i >= skip).map(move |i| (k, i))).collect()
}

/// Sends `plan` (from [`garp_rounds`]) from a task of its own, each message in the pacer's
/// next free slot of its interface, each round at least `round_gap` after the previous round
/// began, with senders opened for it: the protocol never waits on a paced burst. It stops
/// when the instance leaves MASTER (its mastership epoch moves). `began`: when the caller
/// sent the first round's first message, if it did.
fn spawn_garps(r: &Running, frames: Vec<GarpFrame>, plan: Vec<(u32, usize)>, round_gap: Duration, began: Option<std::time::Instant>) {
    if plan.is_empty() {
        return;
    }
    let ifindexes: Vec<u32> = r.links.iter().map(|l| l.ifindex).collect();
    let epoch = r.mastership.clone();
    let mine = epoch.load(std::sync::atomic::Ordering::Relaxed);
    let name = r.conf.name.clone();
    tokio::spawn(async move {
        // A link whose sender cannot be opened misses its messages; the others do not.
        let arps: Vec<Option<ArpSender>> = ifindexes.iter().map(|i| ArpSender::open(*i).ok()).collect();
        let (mut round, mut round_began, mut not_before) = (0, began, std::time::Instant::now());
        for (k, i) in plan {
            if k != round {
                round = k;
                not_before = round_began.unwrap_or_else(std::time::Instant::now) + round_gap;
                round_began = None;
            }
            let f = &frames[i];
            // Reserved only once due: a slot taken ahead of time (the next round's, a second
            // away) would hold back every message due before it.
            tokio::time::sleep_until(not_before.into()).await;
            let at = pacer().reserve(ifindexes[f.link], f.na, std::time::Instant::now());
            round_began.get_or_insert(at);
            tokio::time::sleep_until(at.into()).await;
            if epoch.load(std::sync::atomic::Ordering::Relaxed) != mine {
                return; // no longer the master that scheduled these
            }
            if let Some(Some(a)) = arps.get(f.link) {
                if let Err(e) = a.send(&f.bytes) {
                    tracing::warn!(instance = %name, "gratuitous ARP / NA: {e}");
                }
            }
        }
    });
}

/// `garp_master_refresh`: the masters whose refresh is due send their gratuitous ARP/NA
/// again. Checked on the driver's status tick (50 ms), plenty for a period of seconds.
fn refresh_garps(running: &mut [Running], now: std::time::Instant) {
    for r in running.iter_mut() {
        let Some(at) = r.garp_refresh_at.filter(|at| *at <= now) else { continue };
        if r.inst.state() != State::Master {
            r.garp_refresh_at = None;
            continue;
        }
        let frames = garp_frames(r);
        if !pacer().paced() {
            for _ in 0..r.conf.garp_master_refresh_repeat {
                send_garps(r, &frames);
            }
        } else {
            let plan = garp_rounds(frames.len(), r.conf.garp_master_refresh_repeat, 0);
            spawn_garps(r, frames, plan, Duration::ZERO, None);
        }
        // From the due time, not from now: no drift over a long mastership (but no burst to
        // catch up after a stall).
        let next = at + r.conf.garp_master_refresh;
        r.garp_refresh_at = Some(if next <= now { now + r.conf.garp_master_refresh } else { next });
    }
}

/// Queues one advert to the group or to each unicast peer.
fn send_advert(r: &Running, repr: &Repr, out: &mut Outbox) {
    let src = r.inst.config().primary;
    let group = [if src.is_ipv6() { IpAddr::V6(wire::MULTICAST_V6) } else { IpAddr::V4(wire::MULTICAST_V4) }];
    let peers = &r.inst.config().unicast_peers;
    let dsts: &[IpAddr] = if peers.is_empty() { &group } else { peers };
    for &dst in dsts {
        out.queue.push((r.socket.clone(), repr.to_bytes(src, dst, r.checksum), dst));
    }
}

/// Performs instance `r`'s actions. Adverts go to `out` (sent at the end of the driver's
/// turn), except that everything queued is sent before this waits for the kernel.
async fn perform(r: &mut Running, vips: &Vips, out: &mut Outbox) -> Vec<GroupEvent> {
    let mut events = Vec::new();
    // Takeover timing (debug log): when the advert, the VIPs and the first GARP went out.
    let (mut t_advert, mut t_vips, mut t_garp, mut took_over) = (None, None, None, false);
    let mut pending = Vec::new();
    let mut add_routes = false;
    // On a takeover the hosts hear first, as with keepalived (its vrrp_state_master_tx adds the
    // VIPs and sends the gratuitous ARP/NA, then the advert): the first advert is held until
    // the first gratuitous ARP/NA is out. RFC 5798 §6.4.2 lists both as one event's actions;
    // the other routers learn of the new master ~0.1 ms later, which no timer can notice.
    let taking_over = r.inst.state() == State::Master && r.acted_state != State::Master;
    let mut held = Vec::new();
    while let Some(action) = r.inst.poll_action() {
        match action {
            Action::SendAdvert(repr) if taking_over && t_garp.is_none() => held.push(repr),
            Action::SendAdvert(repr) => {
                send_advert(r, &repr, out);
                t_advert.get_or_insert_with(std::time::Instant::now);
            }
            Action::AddVips(_) => {
                // The kernel adds each address inside the send; the acknowledgements are read
                // after the gratuitous ARP/NA that follow, so the first GARP waits for no
                // round trip through the runtime, and goes out with the VIPs already in place.
                for v in &r.vips {
                    match vips.add_now(r.links[v.link].ifindex, v.addr, v.prefix, &v.extras) {
                        Ok(pa) => pending.push(pa),
                        Err(e) => tracing::error!(instance = %r.conf.name, "{e}"),
                    }
                }
                t_vips = Some(std::time::Instant::now());
                add_routes = true;
            }
            Action::RemoveVips(_) => {
                out.flush();
                add_routes = false;
                if let Some((routes, list)) = &r.routes {
                    for rt in list {
                        if let Err(e) = routes.del(rt).await {
                            tracing::error!(instance = %r.conf.name, "virtual route: {e}");
                        }
                    }
                }
                for v in &r.vips {
                    if let Err(e) = vips.del(r.links[v.link].ifindex, v.addr, v.prefix).await {
                        tracing::error!(instance = %r.conf.name, "{e}");
                    }
                }
            }
            Action::SendGratuitous(_) => {
                let frames = garp_frames(r);
                // What of the first round may leave now leaves now, in order (all of it,
                // unpaced); the rest follow from the task, in the pacer's slots.
                let now = std::time::Instant::now();
                let first = {
                    let mut p = pacer();
                    let mut n = 0;
                    for f in &frames {
                        let ifindex = r.links[f.link].ifindex;
                        if !p.free(ifindex, f.na, now) {
                            break;
                        }
                        p.reserve(ifindex, f.na, now);
                        n += 1;
                    }
                    n
                };
                send_garps(r, &frames[..first]);
                t_garp.get_or_insert_with(std::time::Instant::now);
                for repr in held.drain(..) {
                    send_advert(r, &repr, out);
                    t_advert.get_or_insert_with(std::time::Instant::now);
                }
                // The rest go out later without holding up the protocol: repeats `garp_delay`
                // apart (at least 10 ms).
                let round_gap = r.conf.garp_delay.max(Duration::from_millis(10));
                let plan = garp_rounds(frames.len(), r.conf.garp_repeat.max(1), first);
                spawn_garps(r, frames, plan, round_gap, (first > 0).then_some(now));
            }
            Action::StateChanged { from, to, priority } => {
                if from == State::Master {
                    r.mastership.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                r.garp_refresh_at = (to == State::Master && !r.conf.garp_master_refresh.is_zero())
                    .then(|| std::time::Instant::now() + r.conf.garp_master_refresh);
                took_over |= to == State::Master;
                r.acted_state = to;
                tracing::info!(instance = %r.conf.name, "{} -> {} (priority {priority})", from.as_str(), to.as_str());
                spawn_scripts(notify_commands(&Hooks::instance(&r.conf), &r.conf.name, to, priority));
                if to != State::Initialize {
                    crate::notify_fifo::write("INSTANCE", &r.conf.name, to.as_str(), priority);
                }
                events.push(GroupEvent::Changed(from, to));
            }
            Action::WantMaster => events.push(GroupEvent::WantMaster),
        }
    }
    for repr in held.drain(..) {
        send_advert(r, &repr, out);
    }
    if !pending.is_empty() {
        // The takeover's first advert leaves now, not after the acknowledgements.
        out.flush();
        match tokio::time::timeout(Duration::from_secs(2), vips.add_acks(pending)).await {
            Ok(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::error!(instance = %r.conf.name, "{e}");
                }
            }
            Err(_) => tracing::error!(instance = %r.conf.name, "no answer from the kernel to adding the VIPs within 2 s"),
        }
    }
    // Routes after the VIPs (a `src VIP` route needs the address) and after the takeover's
    // gratuitous ARP/NA and advert, which they must not delay.
    if add_routes {
        if let Some((routes, list)) = &r.routes {
            for rt in list {
                if let Err(e) = routes.add(rt).await {
                    tracing::error!(instance = %r.conf.name, "virtual route: {e}");
                }
            }
        }
    }
    if let (true, Some((deadline, woke))) = (took_over, r.fired) {
        let us = |t: Option<std::time::Instant>| t.map_or(-1, |t| t.saturating_duration_since(deadline).as_micros() as i64);
        tracing::debug!(
            instance = %r.conf.name,
            "takeover timing (µs after the timer's deadline): woke {}, VIPs added {}, first GARP sent {}, advert sent {}",
            us(Some(woke)), us(t_vips), us(t_garp), us(t_advert)
        );
    }
    events
}

/// The notify hooks of an instance or a sync group (the same keys in both sections, but for
/// `notify_deleted`, which only instances have).
struct Hooks<'a> {
    /// `INSTANCE` or `GROUP`: the first argument of `notify`.
    kind: &'static str,
    master: Option<&'a str>,
    backup: Option<&'a str>,
    fault: Option<&'a str>,
    stop: Option<&'a str>,
    deleted: Option<&'a str>,
    notify: Option<&'a str>,
}

impl<'a> Hooks<'a> {
    fn instance(v: &'a VrrpInstanceConfig) -> Hooks<'a> {
        Hooks {
            kind: "INSTANCE",
            master: v.notify_master.as_deref(),
            backup: v.notify_backup.as_deref(),
            fault: v.notify_fault.as_deref(),
            stop: v.notify_stop.as_deref(),
            deleted: v.notify_deleted.as_deref(),
            notify: v.notify.as_deref(),
        }
    }
    fn group(g: &'a SyncGroupConfig) -> Hooks<'a> {
        Hooks {
            kind: "GROUP",
            master: g.notify_master.as_deref(),
            backup: g.notify_backup.as_deref(),
            fault: g.notify_fault.as_deref(),
            stop: g.notify_stop.as_deref(),
            deleted: None,
            notify: g.notify.as_deref(),
        }
    }
}

/// keepalived's notify conventions: the state's own script as written, then `notify` with
/// `{INSTANCE|GROUP} NAME {MASTER|BACKUP|FAULT} PRIORITY` (a group's priority is always 0).
fn notify_commands(h: &Hooks, name: &str, to: State, priority: u8) -> Vec<String> {
    let specific = match to {
        State::Master => h.master,
        State::Backup => h.backup,
        State::Fault => h.fault,
        State::Initialize => None,
    };
    let mut cmds: Vec<String> = specific.map(|s| vec![s.to_owned()]).unwrap_or_default();
    if let Some(n) = h.notify {
        if to != State::Initialize {
            cmds.push(format!("{n} {} {} {} {priority}", h.kind, shell_quote(name), to.as_str()));
        }
    }
    cmds
}

/// How an instance or group ends, for its last notify (keepalived's STOP and DELETED states).
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// corrald stops (SIGTERM, SIGINT).
    Stop,
    /// A reload removed it from the configuration.
    Deleted,
}

/// [`notify_commands`] for an [`End`]: `notify_stop` / `notify_deleted` as written (an empty
/// one only asks for the state, as keepalived's bare `notify_deleted`), then
/// `notify KIND NAME STOP|DELETED PRIORITY`.
fn end_commands(h: &Hooks, name: &str, end: End, priority: u8) -> Vec<String> {
    let (specific, word) = match end {
        End::Stop => (h.stop, "STOP"),
        End::Deleted => (h.deleted, "DELETED"),
    };
    let mut cmds: Vec<String> = specific.filter(|s| !s.trim().is_empty()).map(|s| vec![s.to_owned()]).unwrap_or_default();
    if let Some(n) = h.notify {
        cmds.push(format!("{n} {} {} {word} {priority}", h.kind, shell_quote(name)));
    }
    cmds
}

/// What a reload that removes instance `r` announces, as keepalived does: DELETED when the
/// instance has `notify_deleted` (its script, `notify … DELETED …`), otherwise FAULT (its
/// `notify_fault`, `notify … FAULT …`: scripts written for MASTER/BACKUP/FAULT see it go), and
/// nothing when it already was in FAULT. (name, FIFO word, priority, scripts).
fn deletion_notice(r: &Running) -> Option<(String, &'static str, u8, Vec<String>)> {
    let (name, priority, h) = (&r.conf.name, r.inst.priority(), Hooks::instance(&r.conf));
    if r.conf.notify_deleted.is_some() {
        return Some((name.clone(), "DELETED", priority, end_commands(&h, name, End::Deleted, priority)));
    }
    (r.acted_state != State::Fault).then(|| (name.clone(), "FAULT", priority, notify_commands(&h, name, State::Fault, priority)))
}

/// How long a stopping corrald waits for its STOP scripts: under systemd (the default
/// `KillMode=control-group`) whatever still runs when the main process exits is killed with it.
/// Below the unit's `TimeoutStopSec` (30 s) with room for the rest of the shutdown.
const STOP_SCRIPTS_WAIT: Duration = Duration::from_secs(10);

/// Runs the commands as [`spawn_scripts`] does, then waits for all of them, at most `limit`.
async fn run_scripts_waiting(cmds: Vec<String>, limit: Duration) {
    let mut children = Vec::new();
    for cmd in cmds {
        let Some(mut c) = crate::scripts::shell(&cmd, "notify") else { continue };
        match c.spawn() {
            Ok(child) => children.push((cmd, child)),
            Err(e) => tracing::warn!("notify {cmd:?}: {e}"),
        }
    }
    let deadline = tokio::time::Instant::now() + limit;
    for (cmd, mut child) in children {
        if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
            tracing::warn!("notify {cmd:?} still runs after {}; not waiting for it", humantime::format_duration(limit));
        }
    }
}

/// Runs the commands through `/bin/sh -c` without waiting for them: a slow script must never
/// hold up an advert. A reaper task collects each exit status.
fn spawn_scripts(cmds: Vec<String>) {
    for cmd in cmds {
        let Some(mut c) = crate::scripts::shell(&cmd, "notify") else { continue };
        match c.spawn() {
            Ok(mut child) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(e) => tracing::warn!("notify {cmd:?}: {e}"),
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Refreshes the status board. It runs on a 50 ms tick with hundreds of instances, so it
/// updates the entries in place and allocates only when something new appears (a state
/// name, a drop reason, a reload's new instance list): rebuilding every entry each tick cost
/// a backup of 256 instances more allocations than all its received adverts.
fn publish(running: &[Running], board: &StatusBoard) {
    let mut list = board.lock().unwrap();
    let same = list.len() == running.len() && list.iter().zip(running).all(|(s, r)| s.name == r.conf.name);
    if !same {
        *list = running.iter().map(status_of).collect();
        return;
    }
    for (s, r) in list.iter_mut().zip(running) {
        refresh_status(s, r);
    }
}

fn status_of(r: &Running) -> VrrpInstanceStatus {
    let mut s = VrrpInstanceStatus {
        name: r.conf.name.clone(),
        interface: String::new(),
        vrid: 0,
        version: 0,
        state: String::new(),
        base_priority: 0,
        effective_priority: 0,
        master: None,
        virtual_ips: Vec::new(),
        counters: BTreeMap::new(),
    };
    refresh_status(&mut s, r);
    s
}

fn refresh_status(s: &mut VrrpInstanceStatus, r: &Running) {
    fn set(map: &mut BTreeMap<String, u64>, key: &str, value: u64) {
        match map.get_mut(key) {
            Some(v) => *v = value,
            None => {
                map.insert(key.to_owned(), value);
            }
        }
    }
    fn set_string(to: &mut String, from: &str) {
        if to != from {
            from.clone_into(to);
        }
    }
    set_string(&mut s.interface, &r.conf.interface);
    set_string(&mut s.state, r.inst.state().as_str());
    if s.virtual_ips != r.conf.virtual_ips {
        s.virtual_ips.clone_from(&r.conf.virtual_ips);
    }
    s.vrid = r.conf.vrid;
    s.version = r.conf.version;
    s.base_priority = r.conf.priority;
    s.effective_priority = r.inst.priority();
    s.master = r.inst.master();
    let c = r.inst.counters();
    let fixed = [
        ("adverts_sent", c.adverts_sent),
        ("adverts_received", c.adverts_received),
        ("priority_zero_sent", c.priority_zero_sent),
        ("priority_zero_received", c.priority_zero_received),
        ("became_master", c.became_master),
        ("released_master", c.released_master),
        ("lower_priority_masters", c.lower_priority_masters),
    ];
    // A reload may have replaced the instance under the same name: no drop reason of the old
    // one may linger.
    s.counters.retain(|k, _| c.drops.contains_key(k) || fixed.iter().any(|(name, _)| name == k));
    for (reason, n) in &c.drops {
        set(&mut s.counters, reason, *n);
    }
    for (name, n) in fixed {
        set(&mut s.counters, name, n);
    }
}

/// Registers the socket with tokio. `AsyncFd::new` is deprecated in this tokio for types that do
/// not prove fd ownership; `VrrpSocket` owns its fd and closes it on drop, which is the contract.
#[allow(deprecated)]
fn async_fd(s: VrrpSocket) -> std::io::Result<AsyncFd<VrrpSocket>> {
    AsyncFd::new(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_pacer_spaces_each_interfaces_messages_whichever_instance_sends_them() {
        let t0 = std::time::Instant::now();
        let mut p = Pacer { garp: ms(100), gna: ms(5), ..Default::default() };
        assert!(p.paced() && !Pacer::default().paced());
        // Two instances' ARPs on interface 2 queue behind each other; interface 3 and NAs are
        // paced apart from them.
        assert_eq!(p.reserve(2, false, t0), t0);
        assert!(!p.free(2, false, t0) && p.free(3, false, t0) && p.free(2, true, t0));
        assert_eq!(p.reserve(2, false, t0), t0 + ms(100), "the other instance's first ARP waits");
        assert_eq!(p.reserve(2, false, t0 + ms(50)), t0 + ms(200));
        assert_eq!(p.reserve(3, false, t0), t0);
        assert_eq!(p.reserve(2, true, t0), t0);
        assert_eq!(p.reserve(2, true, t0), t0 + ms(5));
        // Later than the queue: at its own time.
        assert_eq!(p.reserve(2, false, t0 + ms(900)), t0 + ms(900));
        assert!(p.free(2, false, t0 + ms(1000)));
        // Unpaced: always at once.
        let mut free = Pacer::default();
        assert_eq!((free.reserve(2, false, t0), free.reserve(2, false, t0)), (t0, t0));
    }

    #[test]
    fn garp_rounds_leave_out_what_was_sent_and_space_the_rounds() {
        assert_eq!(garp_rounds(3, 2, 1), vec![(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
        assert_eq!(garp_rounds(2, 1, 2), vec![]);
        assert_eq!(garp_rounds(2, 2, 0), vec![(0, 0), (0, 1), (1, 0), (1, 1)]);
        assert!(garp_rounds(0, 3, 0).is_empty());
    }

    #[test]
    fn advert_deadlines_round_up_to_one_grid_step_at_most() {
        let t0 = std::time::Instant::now() + Duration::from_millis(5);
        let ts: Vec<_> = (0..50).map(|i| t0 + Duration::from_micros(37 * i)).collect();
        for t in &ts {
            let g = advert_grid(*t);
            assert!(g >= *t && g - *t < ADVERT_GRID, "{:?}", g - *t);
            assert_eq!(advert_grid(g), g, "on the grid: unchanged");
        }
        // 50 deadlines spread over 1.8 ms need at most 3 wake-ups.
        let wakes: std::collections::BTreeSet<_> = ts.iter().map(|t| advert_grid(*t)).collect();
        assert!(wakes.len() <= 3, "{}", wakes.len());
    }

    fn group() -> SyncGroupConfig {
        SyncGroupConfig {
            name: "G 1".into(),
            members: vec!["A".into()],
            notify_master: Some("/bin/m".into()),
            notify_backup: None,
            notify_fault: Some("/bin/f x".into()),
            notify_stop: Some("/bin/s".into()),
            notify: Some("/bin/n".into()),
        }
    }

    #[test]
    fn group_notify_follows_keepalived_conventions() {
        let g = group();
        let h = Hooks::group(&g);
        assert_eq!(notify_commands(&h, &g.name, State::Master, 0), vec!["/bin/m".to_owned(), "/bin/n GROUP 'G 1' MASTER 0".into()]);
        assert_eq!(notify_commands(&h, &g.name, State::Backup, 0), vec!["/bin/n GROUP 'G 1' BACKUP 0".to_owned()]);
        assert_eq!(notify_commands(&h, &g.name, State::Fault, 0), vec!["/bin/f x".to_owned(), "/bin/n GROUP 'G 1' FAULT 0".into()]);
        assert!(notify_commands(&h, &g.name, State::Initialize, 0).is_empty());
        assert_eq!(end_commands(&h, &g.name, End::Stop, 0), vec!["/bin/s".to_owned(), "/bin/n GROUP 'G 1' STOP 0".into()]);
        assert_eq!(end_commands(&h, &g.name, End::Deleted, 0), vec!["/bin/n GROUP 'G 1' DELETED 0".to_owned()], "groups have no notify_deleted");
    }

    #[tokio::test]
    async fn notify_scripts_run_with_their_arguments() {
        let dir = std::env::temp_dir().join(format!("corral-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let script = dir.join("notify.sh");
        std::fs::write(&script, format!("#!/bin/sh\nprintf '[%s]' \"$@\" >> {o}\necho >> {o}\n", o = out.display())).unwrap();
        let mut g = group();
        g.notify_master = None;
        g.notify_fault = None;
        let mut path = std::ffi::OsString::from("/bin/sh ");
        path.push(&script);
        g.notify = Some(path.into_string().unwrap());
        spawn_scripts(notify_commands(&Hooks::group(&g), "it's G", State::Fault, 0));
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.ends_with('\n') {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(text, "[GROUP][it's G][FAULT][0]\n", "the name arrives as one argument, quotes intact");
    }
}
