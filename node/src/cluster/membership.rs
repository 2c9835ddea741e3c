//! Raft membership follows gossip. Only the leader acts, one change per round (openraft
//! serializes membership changes anyway), re-evaluated every 500 ms and on every gossip event:
//!
//! 1. a member gossip reports alive that Raft does not know becomes a learner (unless an
//!    operator removed that identity);
//!    a member gossip finds at another address than Raft has is given the new one;
//! 2. a member that announced a graceful leave is removed;
//! 3. a voter gossip has reported dead for longer than `dead_grace` is demoted to learner;
//! 4. while there are fewer voters than the target (configured, or 3 — 5 once 5+ members are
//!    alive), the caught-up alive learner with the smallest name is promoted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::{ChangeMembers, ServerState};
use raft::{node_id_for, Node, NodeId};

use super::records::{RemovedRecord, NS_REMOVED};
use super::{Cluster, Liveness};

/// Learners more than this many entries behind are not promoted yet (they would stall commits).
const PROMOTE_MAX_LAG: u64 = 100;

impl Cluster {
    pub(super) async fn membership_loop(self: Arc<Self>) {
        let mut tick = crate::ticks::aligned(2 * crate::ticks::GRID);
        loop {
            tokio::select! {
                _ = self.poke.notified() => {}
                _ = tick.tick() => {}
            }
            if let Err(e) = self.membership_round().await {
                tracing::warn!(error = %e, "membership change");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn membership_round(&self) -> Result<(), String> {
        let m = self.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_leader != Some(self.id) {
            return Ok(());
        }
        let stored = m.membership_config.clone();
        let mem = stored.membership();
        if mem.get_joint_config().len() > 1 {
            return Ok(()); // a change is in flight
        }
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let seen = self.seen();
        let state = self.sm.current();

        // 1. Alive members unknown to Raft join as learners.
        for (name, s) in &seen {
            let id = node_id_for(name);
            if s.state != Liveness::Alive || mem.get_node(&id).is_some() {
                continue;
            }
            if let Some(b) = state.get(NS_REMOVED, name) {
                if let Ok(r) = raft::codec::decode::<RemovedRecord>("removed", b) {
                    if s.id.incarnation <= r.incarnation {
                        continue;
                    }
                }
            }
            let node = Node { name: name.clone(), addr: s.id.addr.to_string() };
            tracing::info!(%name, "adding learner");
            self.raft.add_learner(id, node, false).await.map_err(|e| e.to_string())?;
            return Ok(());
        }

        // 1b. A member that came back at another address (a re-addressed machine, a
        // replacement with the same name): Raft must send to where gossip, which authenticated
        // it, now finds it, or it never hears from the leader again. Only while Raft does not
        // reach it (behind the leader's log): a second process under a live member's name (a
        // copied data_dir) must not take its place.
        let last = m.last_log_index.unwrap_or(0);
        for (id, node) in mem.nodes() {
            let Some(s) = seen.get(&node.name).filter(|s| s.state == Liveness::Alive && *id != self.id) else { continue };
            let matched = m.replication.as_ref().and_then(|r| r.get(id)).map(|l| l.map_or(0, |l| l.index));
            let now = s.id.addr.to_string();
            if now != node.addr && matched.is_some_and(|i| i < last) {
                tracing::info!(name = %node.name, from = %node.addr, to = %now, "member moved: updating its Raft address");
                let moved = Node { name: node.name.clone(), addr: now };
                self.raft.change_membership(ChangeMembers::SetNodes([(*id, moved)].into()), false).await.map_err(|e| e.to_string())?;
                return Ok(());
            }
        }

        // 2./3. Departed and long-dead members.
        for (id, node) in mem.nodes() {
            if *id == self.id {
                continue;
            }
            let Some(s) = seen.get(&node.name) else { continue };
            let is_voter = voters.contains(id);
            if s.state == Liveness::Left {
                tracing::info!(name = %node.name, "removing a member that left");
                let change =
                    if is_voter { ChangeMembers::RemoveVoters([*id].into()) } else { ChangeMembers::RemoveNodes([*id].into()) };
                self.raft.change_membership(change, false).await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            if is_voter && s.state == Liveness::Dead && s.since.elapsed() >= self.cfg.dead_grace && voters.len() > 1 {
                tracing::warn!(name = %node.name, dead_for = ?s.since.elapsed(), "demoting a dead voter to learner");
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([*id].into()), true)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
        }

        // 4. Promote up to the target.
        let alive = 1 + seen.values().filter(|s| s.state == Liveness::Alive && s.id.name != self.name).count();
        let target = self.cfg.voters.unwrap_or(if alive >= 5 { 5 } else { 3 });
        if voters.len() >= target {
            return Ok(());
        }
        let last = m.last_log_index.unwrap_or(0);
        let mut candidates: Vec<(&String, NodeId)> = mem
            .learner_ids()
            .filter_map(|id| {
                let n = mem.get_node(&id)?;
                let s = seen.get(&n.name)?;
                if s.state != Liveness::Alive {
                    return None;
                }
                let matched = m.replication.as_ref()?.get(&id)?.map(|l| l.index).unwrap_or(0);
                (last.saturating_sub(matched) <= PROMOTE_MAX_LAG).then_some((&n.name, id))
            })
            .collect();
        candidates.sort();
        if let Some((name, id)) = candidates.first() {
            tracing::info!(%name, voters = voters.len(), target, "promoting learner to voter");
            self.raft
                .change_membership(ChangeMembers::AddVoterIds([*id].into()), true)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
