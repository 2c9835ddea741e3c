//! Callbacks used by Storage API

use std::io;

use tokio::sync::oneshot;

use crate::async_runtime::AsyncOneshotSendExt;
use crate::raft_state::io_state::log_io_id::LogIOId;
use crate::type_config::alias::OneshotSenderOf;
use crate::LogId;
use crate::RaftTypeConfig;
use crate::StorageIOError;

/// A oneshot callback for completion of log io operation.
pub struct LogFlushed<C>
where C: RaftTypeConfig
{
    log_io_id: LogIOId<C::NodeId>,
    to: FlushedTo<C>,
}

/// corral patch: who hears of the flush. `Waiter` is openraft 0.9's own path (RaftCore awaits
/// the flush); `Core` is a leader's own append, reported to RaftCore as a notification while it
/// goes on replicating (see `RaftCore::append_to_log_leading`).
enum FlushedTo<C>
where C: RaftTypeConfig
{
    Waiter(OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>),
    Core {
        tx: tokio::sync::mpsc::UnboundedSender<crate::core::notify::Notify<C>>,
        vote: crate::Vote<C::NodeId>,
        last_log_id: LogId<C::NodeId>,
    },
}

impl<C> LogFlushed<C>
where C: RaftTypeConfig
{
    pub(crate) fn new(
        log_io_id: LogIOId<C::NodeId>,
        tx: OneshotSenderOf<C, Result<LogIOId<C::NodeId>, io::Error>>,
    ) -> Self {
        Self {
            log_io_id,
            to: FlushedTo::Waiter(tx),
        }
    }

    /// corral patch: a callback that reports the flush of a leader's own entries to RaftCore.
    pub(crate) fn to_core(
        vote: crate::Vote<C::NodeId>,
        last_log_id: LogId<C::NodeId>,
        tx: tokio::sync::mpsc::UnboundedSender<crate::core::notify::Notify<C>>,
    ) -> Self {
        Self {
            log_io_id: LogIOId::new(vote.clone(), Some(last_log_id.clone())),
            to: FlushedTo::Core { tx, vote, last_log_id },
        }
    }

    /// Report log io completion event.
    ///
    /// It will be called when the log is successfully appended to the storage or an error occurs.
    pub fn log_io_completed(self, result: Result<(), io::Error>) {
        let tx = match self.to {
            FlushedTo::Waiter(tx) => tx,
            FlushedTo::Core { tx, vote, last_log_id } => {
                if let Err(e) = &result {
                    tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
                }
                let notify = crate::core::notify::Notify::LocalLogFlushed {
                    vote,
                    last_log_id,
                    result: result.map_err(|e| StorageIOError::write_logs(anyerror::AnyError::error(e))),
                };
                // RaftCore gone: nothing is waiting for this flush any more.
                let _ = tx.send(notify);
                return;
            }
        };
        let res = if let Err(e) = result {
            tracing::error!("LogFlush error: {}, while flushing upto {}", e, self.log_io_id);
            tx.send(Err(e))
        } else {
            tx.send(Ok(self.log_io_id))
        };

        if let Err(e) = res {
            tracing::error!("failed to send log io completion event: {:?}", e);
        }
    }
}

/// A oneshot callback for completion of applying logs to state machine.
pub struct LogApplied<C>
where C: RaftTypeConfig
{
    last_log_id: LogId<C::NodeId>,
    tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
}

impl<C> LogApplied<C>
where C: RaftTypeConfig
{
    #[allow(dead_code)]
    pub(crate) fn new(
        last_log_id: LogId<C::NodeId>,
        tx: oneshot::Sender<Result<(LogId<C::NodeId>, Vec<C::R>), StorageIOError<C::NodeId>>>,
    ) -> Self {
        Self { last_log_id, tx }
    }

    /// Report apply io completion event.
    ///
    /// It will be called when the log is successfully applied to the state machine or an error
    /// occurs.
    pub fn completed(self, result: Result<Vec<C::R>, StorageIOError<C::NodeId>>) {
        let res = match result {
            Ok(x) => {
                tracing::debug!("LogApplied upto {}", self.last_log_id);
                let resp = (self.last_log_id.clone(), x);
                self.tx.send(Ok(resp))
            }
            Err(e) => {
                tracing::error!("LogApplied error: {}, while applying upto {}", e, self.last_log_id);
                self.tx.send(Err(e))
            }
        };

        if let Err(_e) = res {
            tracing::error!("failed to send apply complete event, last_log_id: {}", self.last_log_id);
        }
    }
}
