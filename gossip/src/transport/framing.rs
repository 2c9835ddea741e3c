//! Length-prefixed framing for request/response streams: `u32` big-endian length, then bytes.
//! Responses carry one status byte first so a handler's refusal reaches the caller as text.

use quinn::{RecvStream, SendStream};

use super::TransportError;

/// Status byte of a response frame: the handler succeeded.
pub(crate) const STATUS_OK: u8 = 0;
/// Status byte of a response frame: the handler (or the transport) refused; body is UTF-8.
pub(crate) const STATUS_ERR: u8 = 1;

/// Writes one frame. Refuses (instead of truncating) a body above `limit`.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    body: &[u8],
    limit: usize,
) -> Result<(), TransportError> {
    if body.len() > limit {
        return Err(TransportError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| TransportError::TooLarge {
        len: body.len(),
        limit,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(TransportError::from_write)?;
    send.write_all(body)
        .await
        .map_err(TransportError::from_write)?;
    Ok(())
}

/// Reads the stream's one frame and then its end; a length above `limit` is refused before
/// any allocation.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<Vec<u8>, TransportError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(TransportError::from_read)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(TransportError::TooLarge { len, limit });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(TransportError::from_read)?;
    // A request/response stream carries one frame: read its end too. The peer finishes right
    // after the frame, so the FIN normally arrived with its last bytes and this returns at
    // once. A receive stream dropped before its end makes quinn send STOP_SENDING: one more
    // ack-eliciting packet per request and per response, which the peer then acknowledges.
    let mut extra = [0u8; 1];
    match recv.read(&mut extra).await {
        Ok(None) => Ok(body),
        Ok(Some(_)) => Err(TransportError::Protocol(
            "bytes after the frame (a stream carries one frame)".into(),
        )),
        Err(e) => Err(TransportError::from_read(quinn::ReadExactError::ReadError(
            e,
        ))),
    }
}

/// Splits a response body into the handler's verdict.
pub(crate) fn decode_response(frame: Vec<u8>) -> Result<Vec<u8>, TransportError> {
    match frame.split_first() {
        Some((&STATUS_OK, rest)) => Ok(rest.to_vec()),
        Some((&STATUS_ERR, rest)) => Err(TransportError::Remote(
            String::from_utf8_lossy(rest).into_owned(),
        )),
        Some((other, _)) => Err(TransportError::Protocol(format!(
            "unknown response status byte {other}"
        ))),
        None => Err(TransportError::Protocol("empty response frame".into())),
    }
}

/// Builds a response body from a handler result, replaced by a refusal when it would exceed
/// `limit` (the body limit; the status byte comes on top), so the caller hears why.
pub(crate) fn encode_response_within(result: Result<Vec<u8>, String>, limit: usize) -> Vec<u8> {
    let body = encode_response(result);
    if body.len() > limit.saturating_add(1) {
        return encode_response(Err(format!(
            "response of {} bytes exceeds the limit of {limit}",
            body.len() - 1
        )));
    }
    body
}

/// Builds a response body from a handler result.
pub(crate) fn encode_response(result: Result<Vec<u8>, String>) -> Vec<u8> {
    let (status, mut body) = match result {
        Ok(b) => (STATUS_OK, b),
        Err(e) => (STATUS_ERR, e.into_bytes()),
    };
    body.insert(0, status);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_status_is_checked() {
        assert_eq!(
            decode_response(encode_response(Ok(b"hi".to_vec()))).unwrap(),
            b"hi"
        );
        let e = decode_response(encode_response(Err("nope".into()))).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = decode_response(vec![7, 1]).unwrap_err();
        assert!(e.to_string().contains("status byte 7"), "{e}");
        assert!(decode_response(vec![])
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}
