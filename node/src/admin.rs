//! The admin API server: JSON lines over a Unix socket, mode 0600 (root only).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::api::{decode_request, encode_response, Request, Response, ResponseBody};
use crate::vrrp_driver::StatusBoard;

/// Binds the socket (replacing a stale one) and serves requests until the task is dropped.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("bind admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, board: StatusBoard) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let board = board.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match decode_request(&line) {
                    Ok(Request::VrrpStatus) => {
                        Response::Ok { result: ResponseBody::VrrpStatus { instances: board.lock().unwrap().clone() } }
                    }
                    Err(message) => Response::Error { message },
                };
                if w.write_all(encode_response(&resp).as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}
