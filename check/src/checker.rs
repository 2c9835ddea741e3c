//! A validated, ready-to-run check: [`CheckDef::prepare`] builds it once, the scheduler calls
//! [`Checker::attempt`] every round.

use std::time::Duration;

use tokio::time::Instant;

use crate::connect::Connector;
use crate::halfopen::{self, Prober};
use crate::def::{CheckDef, Timing};
use crate::result::CheckResult;
use crate::{dns, http, icmp, script, smtp, tcp, udp};

/// A definition that cannot run, found when it is registered rather than at the first attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefError {
    /// A field has a value the check cannot use.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// Field name as in the configuration.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The CA certificates could not be loaded.
    #[error("CA certificates: {0}")]
    Ca(String),
    /// The TLS client configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl DefError {
    pub(crate) fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        DefError::Invalid { field, why: why.into() }
    }
}

/// The longest interval, timeout or retry delay a check accepts: a day.
pub(crate) const MAX_KNOB: Duration = Duration::from_secs(24 * 3600);

/// Scripted outcomes for scheduler tests: each call pops one result.
#[cfg(test)]
pub(crate) type FakeProbe = std::sync::Arc<dyn Fn() -> CheckResult + Send + Sync>;

/// What the attempts of one scheduler share: the TCP check's in-flight connects and the
/// half-open check's raw sockets. Each part starts at its first use.
#[derive(Debug, Default)]
pub(crate) struct AttemptIo {
    pub(crate) connector: Connector,
    pub(crate) prober: Prober,
    /// Who runs script checks (the node's `script_user`, `enable_script_security`).
    pub(crate) scripts: crate::ScriptPolicy,
}

pub(crate) enum Probe {
    Tcp(tcp::TcpProbe),
    TcpHalfOpen(halfopen::HalfOpenProbe),
    Http(Box<http::HttpProbe>),
    Udp(udp::UdpProbe),
    Icmp(icmp::IcmpProbe),
    Dns(dns::DnsProbe),
    Smtp(smtp::SmtpProbe),
    Script(script::ScriptProbe),
    #[cfg(test)]
    Fake(FakeProbe),
}

/// A runnable check. Cheap to share (`Arc` inside where it matters); one per distinct definition.
pub struct Checker {
    probe: Probe,
    timing: Timing,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").field("timing", &self.timing).finish_non_exhaustive()
    }
}

impl CheckDef {
    /// Validate the definition and do the per-definition setup (TLS config, encoded DNS query,
    /// HTTP request bytes) so each attempt only does I/O.
    pub fn prepare(&self) -> Result<Checker, DefError> {
        let timing = self.timing().clone();
        if timing.interval.is_zero() {
            return Err(DefError::invalid("interval", "must be more than zero"));
        }
        if timing.rise == 0 || timing.fall == 0 {
            return Err(DefError::invalid("rise/fall", "must be at least 1"));
        }
        // Instants are computed by adding these to the clock; a sane bound keeps that from
        // overflowing (which would stop every half-open check, run by one driver, not just this).
        let knobs = [
            ("interval", Some(timing.interval)),
            ("connect_timeout", Some(timing.connect_timeout)),
            ("read_timeout", timing.read_timeout),
            ("delay_before_retry", Some(timing.delay_before_retry)),
        ];
        for (field, d) in knobs {
            if d.is_some_and(|d| d > MAX_KNOB) {
                return Err(DefError::invalid(field, format!("must be at most {}", humantime::format_duration(MAX_KNOB))));
            }
        }
        let probe = match self {
            CheckDef::Tcp(c) => Probe::Tcp(tcp::TcpProbe::new(c)),
            CheckDef::TcpHalfOpen(c) => Probe::TcpHalfOpen(halfopen::HalfOpenProbe::new(c)?),
            CheckDef::Http(c) => Probe::Http(Box::new(http::HttpProbe::new(c, None)?)),
            CheckDef::Https(c) => Probe::Http(Box::new(http::HttpProbe::new(&c.http, Some(c))?)),
            CheckDef::Udp(c) => Probe::Udp(udp::UdpProbe::new(c)?),
            CheckDef::Icmp(c) => Probe::Icmp(icmp::IcmpProbe::new(c)?),
            CheckDef::Dns(c) => Probe::Dns(dns::DnsProbe::new(c)?),
            CheckDef::Smtp(c) => Probe::Smtp(smtp::SmtpProbe::new(c)?),
            CheckDef::Script(c) => Probe::Script(script::ScriptProbe::new(c)?),
        };
        Ok(Checker { probe, timing })
    }
}

impl CheckDef {
    /// What [`CheckDef::prepare`] refuses, without its side effects: an HTTPS check's TLS part
    /// (CA files or the system's CA bundle read and parsed, a client configuration built) is
    /// left out, so validating thousands of definitions stays cheap and touches no files.
    pub fn validate(&self) -> Result<(), DefError> {
        match self {
            CheckDef::Https(c) => {
                CheckDef::Http(c.http.clone()).prepare()?;
                crate::tls::server_name(c).map(|_| ())
            }
            other => other.prepare().map(|_| ()),
        }
    }
}

impl Checker {
    #[cfg(test)]
    pub(crate) fn fake(timing: Timing, f: FakeProbe) -> Self {
        Checker { probe: Probe::Fake(f), timing }
    }

    /// The half-open probe, if this is a `tcp_half_open` check (the scheduler hands those to the
    /// prober's driver); otherwise the checker back.
    pub(crate) fn into_half_open(self) -> Result<(halfopen::HalfOpenProbe, Timing), Checker> {
        match self.probe {
            Probe::TcpHalfOpen(p) => Ok((p, self.timing)),
            probe => Err(Checker { probe, timing: self.timing }),
        }
    }

    /// The half-open probe back into a checker (when the prober could not take it).
    pub(crate) fn from_half_open(p: halfopen::HalfOpenProbe, timing: Timing) -> Checker {
        Checker { probe: Probe::TcpHalfOpen(p), timing }
    }

    /// The timing knobs of the definition this was built from.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// One attempt, no retries: the building block of a round. Never panics on network input;
    /// every failure comes back as a [`crate::FailReason`].
    pub async fn attempt(&self) -> CheckResult {
        self.attempt_in(&AttemptIo::default()).await
    }

    /// [`Checker::attempt`] with the scheduler's connector and half-open prober.
    pub(crate) async fn attempt_in(&self, io: &AttemptIo) -> CheckResult {
        let start = Instant::now();
        let t = &self.timing;
        let outcome = match &self.probe {
            Probe::Tcp(p) => p.attempt(t, &io.connector).await.map(|()| None),
            Probe::TcpHalfOpen(p) => p.attempt(t, &io.prober).await.map(|()| None),
            Probe::Http(p) => p.attempt(t).await.map(|()| None),
            Probe::Udp(p) => p.attempt(t).await.map(|()| None),
            Probe::Icmp(p) => p.attempt(t).await.map(|()| None),
            Probe::Dns(p) => p.attempt(t).await.map(|()| None),
            Probe::Smtp(p) => p.attempt(t).await.map(|()| None),
            Probe::Script(p) => p.attempt(t, &io.scripts).await,
            #[cfg(test)]
            Probe::Fake(f) => {
                let r = f();
                return r;
            }
        };
        let latency: Duration = start.elapsed();
        match outcome {
            Ok(weight) => CheckResult { latency, error: None, weight },
            Err(reason) => CheckResult::failed(latency, reason),
        }
    }

    /// One round on its own, with the scheduler's semantics (its own rounds also start on its
    /// grid): attempts until one succeeds or `retries` extra attempts have failed, sleeping
    /// `delay_before_retry` between them. Each attempt's result is passed to `each` (for
    /// counters); the round's verdict is the last attempt.
    pub async fn round(&self, mut each: impl FnMut(&CheckResult)) -> CheckResult {
        let io = AttemptIo::default();
        let mut retries_left = self.timing.retries;
        loop {
            let r = self.attempt_in(&io).await;
            each(&r);
            if r.is_ok() || retries_left == 0 {
                return r;
            }
            retries_left -= 1;
            tokio::time::sleep(self.timing.delay_before_retry).await;
        }
    }
}

/// Prepare `def` and run a single attempt: handy for `corralctl check test` style one-offs.
pub async fn check_once(def: &CheckDef) -> Result<CheckResult, DefError> {
    Ok(def.prepare()?.attempt().await)
}

/// Decode hex (either case, no separators) for payloads and digests.
pub(crate) fn parse_hex(field: &'static str, s: &str) -> Result<Vec<u8>, DefError> {
    let s = s.trim();
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(DefError::invalid(field, "hex needs an even number of digits"));
    }
    let digit = |c: u8| -> Result<u8, DefError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(DefError::invalid(field, format!("{:?} is not a hex digit", c as char))),
        }
    };
    pairs.map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duration that would overflow the clock when added to it is refused at definition,
    /// with the knob named, instead of panicking in the loop that runs the checks.
    #[test]
    fn absurd_durations_are_refused_with_the_knob_named() {
        let base = || CheckDef::TcpHalfOpen(crate::def::TcpHalfOpenCheck { target: "192.0.2.1:80".parse().unwrap(), timing: Timing::default() });
        assert!(base().prepare().is_ok());
        let huge = Duration::from_secs(u64::MAX / 2);
        let cases: [(&str, fn(&mut Timing, Duration)); 4] = [
            ("interval", |t, d| t.interval = d),
            ("connect_timeout", |t, d| t.connect_timeout = d),
            ("read_timeout", |t, d| t.read_timeout = Some(d)),
            ("delay_before_retry", |t, d| t.delay_before_retry = d),
        ];
        for (field, set) in cases {
            let mut def = base();
            set(def.timing_mut(), huge);
            let e = def.prepare().err().unwrap_or_else(|| panic!("{field} = {huge:?} accepted"));
            assert!(e.to_string().contains(field), "{field}: {e}");
            let mut def = base();
            set(def.timing_mut(), MAX_KNOB);
            assert!(def.prepare().is_ok(), "{field} = one day is fine");
        }
    }
}
