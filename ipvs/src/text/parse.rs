//! Reading the rule format: every option `ipvsadm -R` accepts on `-A`, `-a` and `-C` lines,
//! with ipvsadm's own validation (`commands_v_options`, `tunnel_types_v_options`,
//! `process_options`) so a file we accept is a file ipvsadm accepts, and means the same.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use crate::model::*;

/// A parsed rule file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleFile {
    /// The services and real servers the file defines (after its last `-C`).
    pub table: Table,
    /// The file contained `-C` (clear): the result should be exactly this table.
    pub clear: bool,
}

/// Why a rule file was rejected: the operator needs the line to fix, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// ipvsadm's longest accepted persistence timeout (`MAX_TIMEOUT`, 31 days).
const MAX_TIMEOUT: u32 = 86400 * 31;
/// ipvsadm's default persistence timeout when `-p` has no value (`IPVS_SVC_PERSISTENT_TIMEOUT`).
const DEFAULT_PERSISTENCE: u32 = 360;
/// Kernel name buffers are 16 bytes with the NUL (`IP_VS_SCHEDNAME_MAXLEN`, `IP_VS_PENAME_MAXLEN`).
const NAME_MAX: usize = 15;

/// Parses a whole rule file; nothing is returned unless every line is valid.
///
/// Accepts both `ipvsadm -Sn` output and `ipvsadm -S` output: port names are looked up in
/// /etc/services, host names through the system resolver (IPv4 only, as ipvsadm does).
/// Blank lines and `#` comments (whole line or trailing) are skipped; a leading word `ipvsadm`
/// is ignored, so a file of `ipvsadm -A …` commands reads too.
pub fn parse(text: &str) -> Result<RuleFile, ParseError> {
    let mut file = RuleFile::default();
    for (i, raw) in text.lines().enumerate() {
        let mut tokens: Vec<&str> = raw.split_whitespace().take_while(|t| !t.starts_with('#')).collect();
        if tokens.first() == Some(&"ipvsadm") {
            tokens.remove(0);
        }
        if tokens.is_empty() {
            continue;
        }
        parse_line(&tokens, &mut file).map_err(|message| ParseError { line: i + 1, message })?;
    }
    Ok(file)
}

/// Parses a virtual service as ipvsadm names it on the command line (`-t VIP:PORT`,
/// `-u …`, `--sctp-service …`, `-f MARK [-6]`), for commands like `corralctl ipvs zero`.
pub fn parse_service_key(tokens: &[&str]) -> Result<ServiceKey, String> {
    let mut o = Opts::default();
    let mut it = Tokens::new(tokens);
    while let Some(tok) = it.next_option()? {
        if !o.service_option(&tok, &mut it)? {
            return Err(format!("{} is not a service option (-t, -u, --sctp-service, -f, -6)", tok.name));
        }
    }
    o.key(true)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Command {
    AddService,
    AddDest,
    Clear,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Route,
    Masq,
    Tunnel,
}

/// One option word, with an attached `--long=value` if there was one.
struct Tok<'a> {
    name: &'a str,
    inline: Option<&'a str>,
}

struct Tokens<'a, 'b> {
    toks: &'b [&'a str],
    pos: usize,
}

impl<'a, 'b> Tokens<'a, 'b> {
    fn new(toks: &'b [&'a str]) -> Self {
        Tokens { toks, pos: 0 }
    }

    fn next_option(&mut self) -> Result<Option<Tok<'a>>, String> {
        let Some(t) = self.toks.get(self.pos).copied() else { return Ok(None) };
        self.pos += 1;
        if !t.starts_with('-') || t == "-" {
            return Err(format!("unexpected argument {t:?}"));
        }
        Ok(Some(match t.strip_prefix("--").and_then(|l| l.split_once('=')) {
            Some((name, v)) => Tok { name: &t[..name.len() + 2], inline: Some(v) },
            None => Tok { name: t, inline: None },
        }))
    }

    /// The option's required value.
    fn value(&mut self, tok: &Tok<'a>) -> Result<&'a str, String> {
        if let Some(v) = tok.inline {
            return Ok(v);
        }
        let v = self.toks.get(self.pos).copied().ok_or_else(|| format!("option {} needs a value", tok.name))?;
        self.pos += 1;
        Ok(v)
    }

    /// An optional value, as popt takes it: the next word unless it looks like an option.
    fn optional_value(&mut self, tok: &Tok<'a>) -> Option<&'a str> {
        if tok.inline.is_some() {
            return tok.inline;
        }
        let v = self.toks.get(self.pos).copied().filter(|v| !v.starts_with('-'))?;
        self.pos += 1;
        Some(v)
    }
}

/// Everything one line said, before it is checked against the command.
#[derive(Default)]
struct Opts<'a> {
    seen: Vec<&'static str>,
    proto: Option<(Protocol, &'a str)>,
    fwmark: Option<u32>,
    ipv6: bool,
    sched: Option<String>,
    persistent: Option<u32>,
    netmask: Option<&'a str>,
    sched_flags: Option<&'a str>,
    one_packet: bool,
    pe: Option<String>,
    real: Option<&'a str>,
    method: Option<Method>,
    weight: Option<i32>,
    upper: u32,
    lower: u32,
    tun_type: Option<&'a str>,
    tun_port: Option<u16>,
    tun_nocsum: bool,
    tun_csum: bool,
    tun_remcsum: bool,
}

impl<'a> Opts<'a> {
    /// ipvsadm's `set_option`: every option at most once per line.
    fn once(&mut self, name: &'static str) -> Result<(), String> {
        if self.seen.contains(&name) {
            return Err(format!("multiple {name} options"));
        }
        self.seen.push(name);
        Ok(())
    }

    fn has(&self, name: &str) -> bool {
        self.seen.contains(&name)
    }

    /// Handles the options that name a virtual service; false if `tok` is not one.
    fn service_option(&mut self, tok: &Tok<'a>, it: &mut Tokens<'a, '_>) -> Result<bool, String> {
        let proto = match tok.name {
            "-t" | "--tcp-service" => Protocol::Tcp,
            "-u" | "--udp-service" => Protocol::Udp,
            "--sctp-service" => Protocol::Sctp,
            "-f" | "--fwmark-service" => {
                self.once("service (-t/-u/--sctp-service/-f)")?;
                let v = it.value(tok)?;
                let m = v.parse::<u32>().ok().filter(|m| *m > 0);
                self.fwmark = Some(m.ok_or(format!("invalid fwmark value {v:?} (1..4294967295)"))?);
                return Ok(true);
            }
            "-6" | "--ipv6" => {
                if self.fwmark.is_none() {
                    return Err("-6 used before -f (it marks a firewall-mark service as IPv6)".into());
                }
                self.ipv6 = true;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        self.once("service (-t/-u/--sctp-service/-f)")?;
        self.proto = Some((proto, it.value(tok)?));
        Ok(true)
    }

    /// The virtual service the line names.
    fn key(&self, zero_port_ok: bool) -> Result<ServiceKey, String> {
        match (self.proto, self.fwmark) {
            (None, None) => Err("no virtual service (-t, -u, --sctp-service or -f)".into()),
            (Some(_), Some(_)) => unreachable!("once() allows one service option"),
            (None, Some(mark)) => Ok(ServiceKey::Fwmark { family: if self.ipv6 { Family::Inet6 } else { Family::Inet }, mark }),
            (Some((protocol, text)), None) => {
                let (ip, port) = parse_endpoint(text, protocol).map_err(|e| format!("illegal virtual server address[:port] {text:?}: {e}"))?;
                let port = port.unwrap_or(0);
                if port == 0 && !zero_port_ok {
                    return Err(format!("zero port specified for non-persistent service {text:?} (add :PORT or -p)"));
                }
                Ok(ServiceKey::Addr { protocol, addr: SocketAddr::new(ip, port) })
            }
        }
    }
}

fn parse_line(tokens: &[&str], file: &mut RuleFile) -> Result<(), String> {
    let mut cmd: Option<Command> = None;
    let mut o = Opts::default();
    let mut it = Tokens::new(tokens);
    while let Some(tok) = it.next_option()? {
        let mut set_cmd = |c: Command| match cmd {
            Some(_) => Err(format!("{}: only one command per line", tok.name)),
            None => {
                cmd = Some(c);
                Ok(())
            }
        };
        if o.service_option(&tok, &mut it)? {
            continue;
        }
        match tok.name {
            "-A" | "--add-service" => set_cmd(Command::AddService)?,
            "-a" | "--add-server" => set_cmd(Command::AddDest)?,
            "-C" | "--clear" => set_cmd(Command::Clear)?,
            "-s" | "--scheduler" => {
                o.once("-s")?;
                let v = it.value(&tok)?;
                if v.is_empty() || v.len() > NAME_MAX {
                    return Err(format!("bad scheduler name {v:?} (1..{NAME_MAX} characters)"));
                }
                o.sched = Some(v.to_owned());
            }
            "-p" | "--persistent" => {
                o.once("-p")?;
                o.persistent = Some(match it.optional_value(&tok) {
                    None => DEFAULT_PERSISTENCE,
                    Some(v) => v
                        .parse()
                        .ok()
                        .filter(|t| (1..=MAX_TIMEOUT).contains(t))
                        .ok_or(format!("invalid persistence timeout {v:?} (1..{MAX_TIMEOUT} seconds)"))?,
                });
            }
            "-M" | "--netmask" => {
                o.once("-M")?;
                o.netmask = Some(it.value(&tok)?);
            }
            "-b" | "--sched-flags" => {
                o.once("-b")?;
                o.sched_flags = Some(it.value(&tok)?);
            }
            "-o" | "--ops" => {
                o.once("-o")?;
                o.one_packet = true;
            }
            "--pe" => {
                o.once("--pe")?;
                let v = it.value(&tok)?;
                if v.is_empty() || v.len() > NAME_MAX {
                    return Err(format!("bad persistence engine name {v:?} (1..{NAME_MAX} characters)"));
                }
                o.pe = Some(v.to_owned());
            }
            "-r" | "--real-server" => {
                o.once("-r")?;
                o.real = Some(it.value(&tok)?);
            }
            "-g" | "--gatewaying" | "-m" | "--masquerading" | "-i" | "--ipip" => {
                o.once("forwarding method (-g/-m/-i)")?;
                o.method = Some(match tok.name {
                    "-g" | "--gatewaying" => Method::Route,
                    "-m" | "--masquerading" => Method::Masq,
                    _ => Method::Tunnel,
                });
            }
            "-w" | "--weight" => {
                o.once("-w")?;
                let v = it.value(&tok)?;
                o.weight = Some(v.parse().ok().filter(|w| (0..=65535).contains(w)).ok_or(format!("illegal weight {v:?} (0..65535)"))?);
            }
            "-x" | "--u-threshold" => {
                o.once("-x")?;
                o.upper = threshold(it.value(&tok)?, "upper")?;
            }
            "-y" | "--l-threshold" => {
                o.once("-y")?;
                o.lower = threshold(it.value(&tok)?, "lower")?;
            }
            "--tun-type" => {
                o.once("--tun-type")?;
                o.tun_type = Some(it.value(&tok)?);
            }
            "--tun-port" => {
                o.once("--tun-port")?;
                let v = it.value(&tok)?;
                o.tun_port = Some(v.parse().ok().filter(|p| *p > 0).ok_or(format!("illegal tunnel port {v:?} (1..65535)"))?);
            }
            "--tun-nocsum" => {
                o.once("--tun-nocsum")?;
                o.tun_nocsum = true;
            }
            "--tun-csum" => {
                o.once("--tun-csum")?;
                o.tun_csum = true;
            }
            "--tun-remcsum" => {
                o.once("--tun-remcsum")?;
                o.tun_remcsum = true;
            }
            "-E" | "--edit-service" | "-e" | "--edit-server" | "-D" | "--delete-service" | "-d" | "--delete-server" => {
                return Err(format!("{} is not supported in a rule file (a rule file holds -A, -a and -C lines: write the wanted state)", tok.name))
            }
            other => return Err(format!("unknown or unsupported option {other:?} (a rule file holds -A, -a and -C lines)")),
        }
    }
    match cmd.ok_or("no command: a rule line starts with -A, -a or -C")? {
        Command::Clear => {
            if tokens.len() != 1 {
                return Err("-C takes no options".into());
            }
            file.clear = true;
            file.table = Table::default();
            Ok(())
        }
        Command::AddService => add_service(&o, file),
        Command::AddDest => add_dest(&o, file),
    }
}

fn threshold(v: &str, which: &str) -> Result<u32, String> {
    v.parse::<u32>().ok().filter(|t| *t <= i32::MAX as u32).ok_or(format!("illegal {which} threshold {v:?} (0..{})", i32::MAX))
}

fn add_service(o: &Opts, file: &mut RuleFile) -> Result<(), String> {
    for dest_only in ["-r", "forwarding method (-g/-m/-i)", "-w", "-x", "-y", "--tun-type", "--tun-port", "--tun-nocsum", "--tun-csum", "--tun-remcsum"] {
        if o.has(dest_only) {
            return Err(format!("{dest_only} is a real-server option: it belongs on -a lines"));
        }
    }
    let key = o.key(o.persistent.is_some())?;
    if file.table.services.contains_key(&key) {
        return Err(format!("service {key} is defined twice"));
    }
    if o.one_packet && !matches!(key, ServiceKey::Fwmark { .. } | ServiceKey::Addr { protocol: Protocol::Udp, .. }) {
        return Err("one-packet scheduling (-o) is only for UDP virtual services".into());
    }
    let mut svc = Service::new(key, o.sched.clone().unwrap_or_else(|| "wlc".into()));
    let v6 = key.family() == Family::Inet6;
    // ipvsadm accepts -M without -p and then drops it (the kernel keeps no netmask without
    // persistence); we refuse it rather than silently lose a setting.
    match (o.persistent, o.netmask) {
        (None, Some(_)) => return Err("-M needs -p (the netmask is a persistence granularity)".into()),
        (None, None) => {}
        (Some(timeout), mask) => {
            let netmask = match mask {
                None if v6 => 128,
                None => 0xffff_ffff,
                Some(m) if v6 => m.parse().ok().filter(|p| (1..=128).contains(p)).ok_or(format!("illegal IPv6 netmask {m:?} (a prefix length 1..128)"))?,
                Some(m) => u32::from(m.parse::<Ipv4Addr>().map_err(|_| format!("illegal persistent netmask {m:?}"))?),
            };
            svc.persistence = Some(Persistence { timeout, netmask });
        }
    }
    if o.pe.is_some() && o.persistent.is_none() {
        return Err("--pe needs -p (a persistence engine extends persistence)".into());
    }
    svc.pe_name = o.pe.clone();
    svc.one_packet = o.one_packet;
    if let Some(flags) = o.sched_flags {
        svc.sched_flags = sched_flags(&svc.scheduler, flags)?;
    }
    file.table.insert(svc);
    Ok(())
}

/// ipvsadm's `parse_sched_flags` (`-b sh-fallback,sh-port`): the sh-/mh- names only with their
/// scheduler. Public for rule formats that take the same words (corral's `scheduler_flags`).
pub fn sched_flags(sched: &str, text: &str) -> Result<SchedFlags, String> {
    let mut f = SchedFlags::default();
    for name in text.split(',').filter(|s| !s.is_empty()) {
        let needs = match name {
            "flag-1" => {
                f.flag1 = true;
                None
            }
            "flag-2" => {
                f.flag2 = true;
                None
            }
            "flag-3" => {
                f.flag3 = true;
                None
            }
            "sh-fallback" | "mh-fallback" => {
                f.flag1 = true;
                Some(&name[..2])
            }
            "sh-port" | "mh-port" => {
                f.flag2 = true;
                Some(&name[..2])
            }
            other => return Err(format!("invalid scheduler flag {other:?} (flag-1, flag-2, flag-3, sh-fallback, sh-port, mh-fallback, mh-port)")),
        };
        if let Some(s) = needs {
            if s != sched {
                return Err(format!("scheduler flag {name:?} needs scheduler {s:?}, not {sched:?}"));
            }
        }
    }
    if f == SchedFlags::default() {
        return Err(format!("no scheduler flag in {text:?}"));
    }
    Ok(f)
}

fn add_dest(o: &Opts, file: &mut RuleFile) -> Result<(), String> {
    for svc_only in ["-s", "-p", "-M", "-o", "--pe", "-b"] {
        if o.has(svc_only) {
            return Err(format!("{svc_only} is a service option: it belongs on -A lines"));
        }
    }
    // The service may be a persistent port-0 one; whether it exists is checked below.
    let key = o.key(true)?;
    let real = o.real.ok_or("-a needs -r ADDRESS[:PORT]")?;
    let proto = match key {
        ServiceKey::Addr { protocol, .. } => protocol,
        ServiceKey::Fwmark { .. } => Protocol::Tcp,
    };
    let (addr, port) = parse_endpoint(real, proto).map_err(|e| format!("illegal real server address[:port] {real:?}: {e}"))?;
    let method = o.method.unwrap_or(Method::Route);
    let port = match key {
        // ipvsadm: direct routing and tunnels cannot change the port, so the real server
        // gets the service's port whatever was written.
        ServiceKey::Addr { addr: vip, .. } if method != Method::Masq => vip.port(),
        ServiceKey::Addr { addr: vip, .. } => port.unwrap_or(vip.port()),
        ServiceKey::Fwmark { .. } => port.unwrap_or(0),
    };
    if Family::of(&addr) != key.family() && method != Method::Tunnel {
        return Err(format!("real server {addr} is of another address family than {key}: allowed only for tunneling servers (-i)"));
    }
    let tunnel_opts = o.tun_type.is_some() || o.tun_port.is_some() || o.tun_nocsum || o.tun_csum || o.tun_remcsum;
    if tunnel_opts && method != Method::Tunnel {
        return Err("tunnel options conflict with the forwarding method (they need -i)".into());
    }
    let forward = match method {
        Method::Route => Forward::Route,
        Method::Masq => Forward::Masq,
        Method::Tunnel => Forward::Tunnel(tunnel(o)?),
    };
    let svc = file.table.services.get_mut(&key).ok_or(format!("service {key} is not defined (an -A line must come first)"))?;
    let dkey = DestKey { addr, port };
    if svc.dests.contains_key(&dkey) {
        return Err(format!("real server {dkey} is defined twice for {key}"));
    }
    svc.dests.insert(dkey, Dest { key: dkey, forward, weight: o.weight.unwrap_or(1), upper_threshold: o.upper, lower_threshold: o.lower });
    Ok(())
}

/// ipvsadm's `tunnel_types_v_options`: gue needs --tun-port and takes one checksum option,
/// gre takes --tun-nocsum or --tun-csum, ipip takes none.
fn tunnel(o: &Opts) -> Result<Tunnel, String> {
    let csum_opts = [(o.tun_nocsum, "--tun-nocsum"), (o.tun_csum, "--tun-csum"), (o.tun_remcsum, "--tun-remcsum")];
    let given: Vec<&str> = csum_opts.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
    if given.len() > 1 {
        return Err(format!("the option {} conflicts with {}", given[1], given[0]));
    }
    // The kernel has no "nocsum" bit: it is the absence of the other two.
    let flags = TunFlags { nocsum: !(o.tun_csum || o.tun_remcsum), csum: o.tun_csum, remcsum: o.tun_remcsum };
    match o.tun_type.unwrap_or("ipip") {
        "ipip" => match given.first().copied().or(o.tun_port.map(|_| "--tun-port")) {
            Some(opt) => Err(format!("illegal {opt} option with the ipip tunnel type")),
            None => Ok(Tunnel::Ipip),
        },
        "gue" => Ok(Tunnel::Gue { port: o.tun_port.ok_or("you need to supply --tun-port for the gue tunnel type")?, flags }),
        "gre" => {
            if o.tun_port.is_some() {
                return Err("illegal --tun-port option with the gre tunnel type".into());
            }
            if o.tun_remcsum {
                return Err("illegal --tun-remcsum option with the gre tunnel type".into());
            }
            Ok(Tunnel::Gre { flags })
        }
        other => Err(format!("illegal tunnel type {other:?} (ipip, gue, gre)")),
    }
}

/// ipvsadm's `parse_service`: `ADDR`, `ADDR:PORT`, `[V6]:PORT` or a bare IPv6 address;
/// the port may be a number or a service name, the address a host name (IPv4).
fn parse_endpoint(s: &str, proto: Protocol) -> Result<(IpAddr, Option<u16>), String> {
    if s.is_empty() || s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an address".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or("missing ']'")?;
        let p = p.strip_prefix(':').ok_or("a bracketed IPv6 address needs :PORT after ']'")?;
        let ip: std::net::Ipv6Addr = h.parse().map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        return Ok((IpAddr::V6(ip), Some(port(p, proto)?)));
    }
    if let Ok(ip) = s.parse::<std::net::Ipv6Addr>() {
        return Ok((IpAddr::V6(ip), None));
    }
    let (host, p) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let ip = match host.parse::<Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => resolve_v4(host)?,
    };
    Ok((IpAddr::V4(ip), p.map(|p| port(p, proto)).transpose()?))
}

fn port(p: &str, proto: Protocol) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) => Ok(n),
        Err(_) => service_port(p, proto).ok_or(format!("{p:?} is not a port number or a known service name")),
    }
}

/// Host names as ipvsadm's `host_to_addr` (gethostbyname, first IPv4 address).
fn resolve_v4(host: &str) -> Result<Ipv4Addr, String> {
    let valid = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!("{host:?} is not an IP address or a host name"));
    }
    let addrs = (host, 0u16).to_socket_addrs().map_err(|e| format!("{host:?} is not an IP address and does not resolve: {e}"))?;
    addrs
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .next()
        .ok_or(format!("host name {host:?} has no IPv4 address"))
}

/// Port names as `getservbyname(name, proto)` finds them in /etc/services.
fn service_port(name: &str, proto: Protocol) -> Option<u16> {
    let want = match proto {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split('#').next()?.split_whitespace();
        let svc = f.next()?;
        let (port, p) = f.next()?.split_once('/')?;
        (p == want && (svc == name || f.any(|alias| alias == name))).then(|| port.parse().ok()).flatten()
    })
}
