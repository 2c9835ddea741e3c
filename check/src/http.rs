//! HTTP_GET and SSL_GET: one GET, the status must be accepted and, if a digest is configured, the
//! MD5 of the body must match (keepalived `genhash` prints the same hex).
//!
//! The client is deliberately tiny: HTTP/1.1 with `Connection: close`, one request per
//! connection, head parsed with `httparse`, body streamed into MD5 (never held in memory) and
//! only read at all when a digest is asked for. Body framing: chunked, Content-Length, or until
//! close.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use rustls::pki_types::ServerName;

use crate::checker::{parse_hex, DefError};
use crate::def::{HttpCheck, HttpsCheck, Timing};
use crate::result::{FailReason, Phase};
use crate::tcp::connect;
use crate::tls;

/// Largest response head we accept; a backend sending more is broken or hostile.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size line or trailer line.
const MAX_LINE: usize = 4096;
/// Most headers httparse will parse.
const MAX_HEADERS: usize = 64;
const READ_CHUNK: usize = 16 * 1024;

struct TlsSetup {
    connector: TlsConnector,
    name: ServerName<'static>,
}

pub(crate) struct HttpProbe {
    target: SocketAddr,
    request: Vec<u8>,
    status: Vec<u16>,
    digest: Option<String>,
    tls: Option<TlsSetup>,
}

fn header_safe(field: &'static str, s: &str) -> Result<(), DefError> {
    if s.is_empty() || s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(DefError::invalid(field, "must be non-empty, without spaces or control characters"));
    }
    Ok(())
}

impl HttpProbe {
    pub(crate) fn new(def: &HttpCheck, tls: Option<&HttpsCheck>) -> Result<Self, DefError> {
        header_safe("path", &def.path)?;
        if !def.path.starts_with('/') {
            return Err(DefError::invalid("path", "must start with /"));
        }
        let host = match &def.virtualhost {
            Some(v) => {
                header_safe("virtualhost", v)?;
                v.clone()
            }
            None => def.target.to_string(),
        };
        let digest = match &def.digest {
            Some(d) => {
                let bytes = parse_hex("digest", d)?;
                if bytes.len() != 16 {
                    return Err(DefError::invalid("digest", "an MD5 digest is 32 hex digits"));
                }
                Some(d.trim().to_ascii_lowercase())
            }
            None => None,
        };
        if let Some(bad) = def.status.iter().find(|s| !(100..=999).contains(*s)) {
            return Err(DefError::invalid("status", format!("{bad} is not an HTTP status")));
        }
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: corral-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            def.path,
            env!("CARGO_PKG_VERSION"),
        )
        .into_bytes();
        let tls = match tls {
            Some(t) => Some(TlsSetup {
                connector: TlsConnector::from(tls::client_config(t)?),
                name: tls::server_name(t)?,
            }),
            None => None,
        };
        Ok(HttpProbe { target: def.target, request, status: def.status.clone(), digest, tls })
    }

    pub(crate) async fn attempt(&self, timing: &Timing) -> Result<(), FailReason> {
        let stream = connect(self.target, timing.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        let deadline = Instant::now() + timing.read_timeout();
        let work = async {
            match &self.tls {
                None => self.exchange(stream).await,
                Some(t) => {
                    let s = t
                        .connector
                        .connect(t.name.clone(), stream)
                        .await
                        .map_err(tls::handshake_error)?;
                    self.exchange(s).await
                }
            }
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(FailReason::Timeout(Phase::Read)),
        }
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(&self, io: S) -> Result<(), FailReason> {
        let mut conn = Conn { io, buf: Vec::with_capacity(4096), eof: false };
        conn.io.write_all(&self.request).await.map_err(read_err)?;
        conn.io.flush().await.map_err(read_err)?;
        let head = conn.read_head().await?;
        let accepted = if self.status.is_empty() {
            (200..300).contains(&head.status)
        } else {
            self.status.contains(&head.status)
        };
        if !accepted {
            return Err(FailReason::BadStatus(head.status));
        }
        let Some(expected) = &self.digest else { return Ok(()) };
        let mut md5 = md5::Context::new();
        let no_body = head.status / 100 == 1 || head.status == 204 || head.status == 304;
        if !no_body {
            match head.framing {
                Framing::Chunked => conn.read_chunked(&mut md5).await?,
                Framing::Length(n) => conn.read_exact_into(n, &mut md5).await?,
                Framing::Close => conn.read_to_end(&mut md5).await?,
            }
        }
        let got = format!("{:x}", md5.finalize());
        if &got != expected {
            return Err(FailReason::BadDigest { expected: expected.clone(), got });
        }
        Ok(())
    }
}

fn read_err(e: std::io::Error) -> FailReason {
    FailReason::from_io(&e, Phase::Read)
}

fn bad(msg: impl Into<String>) -> FailReason {
    FailReason::BadResponse(msg.into())
}

enum Framing {
    Chunked,
    Length(u64),
    Close,
}

struct Head {
    status: u16,
    framing: Framing,
}

/// A connection with a read buffer; `buf` holds received bytes not consumed yet.
struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    eof: bool,
}

impl<S: AsyncRead + Unpin> Conn<S> {
    /// Read more into `buf`; returns false at end of stream. A TLS peer that closes without
    /// close_notify is treated as end of stream: many servers do it, and the framing checks below
    /// catch a truncated body anyway.
    async fn fill(&mut self) -> Result<bool, FailReason> {
        if self.eof {
            return Ok(false);
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let r = self.io.read(&mut self.buf[old..]).await;
        let n = match r {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => {
                self.buf.truncate(old);
                return Err(read_err(e));
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    async fn read_head(&mut self) -> Result<Head, FailReason> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let framing = framing(resp.headers)?;
                    self.buf.drain(..len);
                    // 1xx interim responses (100 Continue) come before the real one.
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    return Ok(Head { status, framing });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(bad(format!("unparsable HTTP response head: {e}"))),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad(format!("response head longer than {MAX_HEAD} bytes")));
            }
            if !self.fill().await? {
                return Err(if self.buf.is_empty() {
                    bad("connection closed without a response")
                } else {
                    bad("connection closed in the middle of the response head")
                });
            }
        }
    }

    async fn read_exact_into(&mut self, mut n: u64, md5: &mut md5::Context) -> Result<(), FailReason> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill().await? {
                return Err(bad(format!("body truncated: {n} bytes missing")));
            }
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            md5.consume(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    async fn read_to_end(&mut self, md5: &mut md5::Context) -> Result<(), FailReason> {
        loop {
            md5.consume(&self.buf);
            self.buf.clear();
            if !self.fill().await? {
                return Ok(());
            }
        }
    }

    /// One CRLF-terminated line (without the CRLF), at most [`MAX_LINE`] long.
    async fn read_line(&mut self) -> Result<String, FailReason> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let line = &self.buf[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let text = String::from_utf8_lossy(line).into_owned();
                self.buf.drain(..=end);
                return Ok(text);
            }
            scanned = self.buf.len();
            if scanned > MAX_LINE {
                return Err(bad("chunk line too long"));
            }
            if !self.fill().await? {
                return Err(bad("body truncated inside chunked encoding"));
            }
        }
    }

    async fn read_chunked(&mut self, md5: &mut md5::Context) -> Result<(), FailReason> {
        loop {
            let line = self.read_line().await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if size == 0 {
                // Trailer section: header lines up to an empty one.
                while !self.read_line().await?.is_empty() {}
                return Ok(());
            }
            self.read_exact_into(size, md5).await?;
            if !self.read_line().await?.is_empty() {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, FailReason> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value);
            if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("chunked")) {
                return Ok(Framing::Chunked);
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            let n: u64 = v.parse().map_err(|_| bad(format!("bad Content-Length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

