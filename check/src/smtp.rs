//! SMTP_CHECK, as keepalived's: connect, read the greeting (220), say `HELO name` (250), say
//! `QUIT` (221). A mail relay that accepts TCP connections but is overloaded or misconfigured
//! answers 421 or 554 instead of 220, which a TCP check cannot see.
//!
//! Replies are parsed by [`Reply::parse`] (sans-IO, RFC 5321 §4.2: `NNN-text` lines continue,
//! `NNN text` or a bare `NNN` ends one), with a bound on how much a reply may hold, so a server
//! that streams garbage fails the check instead of growing a buffer.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::checker::DefError;
use crate::def::{SmtpCheck, Timing};
use crate::result::{FailReason, Phase};
use crate::tcp::connect;

/// The most one reply (all its lines) may take: servers' greetings and HELO replies are a few
/// hundred bytes; RFC 5321 §4.5.3.1.5 caps a reply line at 512.
const MAX_REPLY: usize = 8192;

/// The longest `helo_name`: a domain name (RFC 1035: 255 octets).
const MAX_HELO: usize = 255;

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    /// The first line, printable ASCII only and cut at 100 characters: what an operator reads in
    /// a failure reason (it comes from the network).
    pub(crate) first_line: String,
}

impl Reply {
    /// A complete reply at the start of `buf` and the bytes it took, `Ok(None)` while more is
    /// needed, or why `buf` cannot start a valid reply.
    pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
        let mut at = 0;
        let mut first: Option<(u16, String)> = None;
        while let Some(end) = buf[at..].iter().position(|&b| b == b'\n') {
            let line = &buf[at..at + end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            at += end + 1;
            let code = line
                .get(..3)
                .filter(|c| c.iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&c[0]))
                .map(|c| c.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
                .ok_or_else(|| format!("not an SMTP reply: {:?}", printable(line)))?;
            match &first {
                Some((c, _)) if *c != code => return Err(format!("reply lines with codes {c} and {code}")),
                Some(_) => {}
                None => first = Some((code, printable(line))),
            }
            match line.get(3) {
                Some(b'-') => continue,
                None | Some(b' ') => {
                    let (code, first_line) = first.expect("set above");
                    return Ok(Some((Reply { code, first_line }, at)));
                }
                Some(_) => return Err(format!("not an SMTP reply: {:?}", printable(line))),
            }
        }
        if buf.len() > MAX_REPLY {
            return Err(format!("a reply longer than {MAX_REPLY} bytes"));
        }
        Ok(None)
    }
}

fn printable(line: &[u8]) -> String {
    line.iter().take(100).map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' }).collect()
}

pub(crate) struct SmtpProbe {
    target: SocketAddr,
    /// `HELO name\r\n`, built once.
    helo: Vec<u8>,
}

impl SmtpProbe {
    pub(crate) fn new(def: &SmtpCheck) -> Result<Self, DefError> {
        let name = &def.helo_name;
        if name.is_empty() || name.len() > MAX_HELO {
            return Err(DefError::invalid("helo_name", format!("1 to {MAX_HELO} characters")));
        }
        // A space, CR or LF would let the name end the command and start another.
        if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(DefError::invalid("helo_name", format!("{c:?}: a host name has no spaces or control characters")));
        }
        Ok(SmtpProbe { target: def.target, helo: format!("HELO {name}\r\n").into_bytes() })
    }

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        let stream = connect(self.target, timing.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + timing.read_timeout();
        match tokio::time::timeout_at(deadline, self.exchange(stream)).await {
            Ok(r) => r,
            Err(_) => Err(FailReason::Timeout(Phase::Read)),
        }
    }

    async fn exchange(&self, mut stream: TcpStream) -> Result<(), FailReason> {
        let mut buf = Vec::with_capacity(512);
        expect(&mut stream, &mut buf, "greeting", 220).await?;
        stream.write_all(&self.helo).await.map_err(io)?;
        expect(&mut stream, &mut buf, "HELO", 250).await?;
        stream.write_all(b"QUIT\r\n").await.map_err(io)?;
        expect(&mut stream, &mut buf, "QUIT", 221).await
    }
}

fn io(e: std::io::Error) -> FailReason {
    FailReason::from_io(&e, Phase::Read)
}

/// Reads the next reply from `stream` (bytes left in `buf` first) and fails unless its code is
/// `want`, naming the step and the server's words.
async fn expect(stream: &mut TcpStream, buf: &mut Vec<u8>, step: &str, want: u16) -> Result<(), FailReason> {
    loop {
        match Reply::parse(buf) {
            Err(e) => return Err(FailReason::BadResponse(format!("SMTP {step}: {e}"))),
            Ok(Some((reply, used))) => {
                buf.drain(..used);
                if reply.code != want {
                    return Err(FailReason::BadResponse(format!("SMTP {step}: expected {want}, got {:?}", reply.first_line)));
                }
                return Ok(());
            }
            Ok(None) => {}
        }
        let old = buf.len();
        buf.resize(old + 1024, 0);
        let n = stream.read(&mut buf[old..]).await.map_err(io);
        buf.truncate(old + *n.as_ref().unwrap_or(&0));
        if n? == 0 {
            return Err(FailReason::BadResponse(format!("SMTP {step}: the server closed the connection")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(Reply, usize)>, String> {
        Reply::parse(s.as_bytes())
    }

    #[test]
    fn replies_single_multi_line_and_partial() {
        let (r, n) = parse("220 mx.example.test ESMTP ready\r\nrest").unwrap().unwrap();
        assert_eq!((r.code, r.first_line.as_str(), n), (220, "220 mx.example.test ESMTP ready", 33));
        let multi = "250-mx.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n";
        let (r, n) = parse(multi).unwrap().unwrap();
        assert_eq!((r.code, n), (250, multi.len()));
        assert_eq!(parse("221\n").unwrap().unwrap().0.code, 221, "a bare code, LF only");
        assert_eq!(parse("250-mx.example.test\r\n250-PIPE").unwrap(), None, "a continuation asks for more");
        assert_eq!(parse("22").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn bad_replies_are_named_and_bounded() {
        assert!(parse("HTTP/1.1 400 Bad Request\r\n").unwrap_err().contains("not an SMTP reply"));
        assert!(parse("999 nope\r\n").unwrap_err().contains("not an SMTP reply"));
        assert!(parse("250x\r\n").unwrap_err().contains("not an SMTP reply"));
        assert!(parse("250-a\r\n550 b\r\n").unwrap_err().contains("codes 250 and 550"));
        let e = parse("220 \u{1b}[31m\r\n").unwrap().unwrap().0.first_line;
        assert_eq!(e, "220 ?[31m", "control characters never reach a log");
        let endless = vec![b'2'; MAX_REPLY + 1];
        assert!(Reply::parse(&endless).unwrap_err().contains("longer than"));
    }

    #[test]
    fn helo_names_that_could_inject_a_command_are_refused() {
        let def = |n: &str| SmtpCheck { target: "192.0.2.1:25".parse().unwrap(), helo_name: n.into(), timing: Timing::default() };
        assert!(SmtpProbe::new(&def("director1.example.test")).is_ok());
        for bad in ["", "a b", "x\r\nMAIL FROM:<a@b>", &"a".repeat(256)] {
            let e = SmtpProbe::new(&def(bad)).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(e.to_string().contains("helo_name"), "{e}");
        }
    }
}
