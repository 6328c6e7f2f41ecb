//! Group forwarding on a follower: writes that reach a follower travel to the leader in
//! batches, one internal request for many commands.
//!
//! Handlers on a follower hand their command to the [`Forwarder`]; its task takes every command
//! waiting (up to `max_batch`) and sends them in one `/internal/propose` call, with up to
//! `max_in_flight` calls outstanding, so commands arriving while a call is in flight join the
//! next one. The leader proposes them through its own [`crate::proposer::Proposer`], which puts
//! them in as few log entries as it can. One client alone still sees one call per request.
//!
//! A call never outlives the requests in it: it is bounded by the latest of their deadlines,
//! and abandoned (its slot freed) as soon as every request in it has stopped waiting, e.g.
//! because the node learnt of a new leader and resent them there. A leader that stops answering
//! therefore holds no slot past the moment its callers move on.
//!
//! This module must not decide anything about keys, nor retry: [`crate::node::Node::write`]
//! decides what to do with a failed forward.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::network::{ForwardError, Peer, PeerClient};
use crate::sm::model::{Command, Outcome};

type Reply = oneshot::Sender<Result<Outcome, ForwardError>>;

/// A command waiting to be forwarded: the leader, the command, when its request gives up, and
/// where its outcome goes.
struct Waiting {
    leader: Peer,
    command: Command,
    deadline: Instant,
    reply: Reply,
}

/// The handle a follower's handlers use to send writes to the leader.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<Waiting>,
}

impl Forwarder {
    /// `timeout` bounds any one call, whatever its requests' deadlines.
    pub fn start(peers: PeerClient, timeout: Duration, max_batch: usize, max_in_flight: usize) -> Self {
        let (queue, waiting) = mpsc::channel(max_batch * 4);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        tokio::spawn(run(peers, timeout, waiting, max_batch, in_flight));
        Forwarder { queue }
    }

    /// Sends `command` to the leader and waits for its outcome, until `deadline` at most.
    pub async fn propose(&self, leader: Peer, command: Command, deadline: Instant) -> Result<Outcome, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Waiting { leader, command, deadline, reply })
            .await
            .map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))?;
        answer.await.map_err(|_| ForwardError::Transport("the forwarded write was dropped".into()))?
    }
}

/// One call's worth of commands for one leader.
#[derive(Default)]
struct Batch {
    commands: Vec<Command>,
    replies: Vec<Reply>,
    deadline: Option<Instant>,
}

async fn run(
    peers: PeerClient,
    timeout: Duration,
    mut waiting: mpsc::Receiver<Waiting>,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = waiting.recv().await {
        // Wait for room first, so that commands arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut by_leader: BTreeMap<Peer, Batch> = BTreeMap::new();
        let mut add = |w: Waiting| {
            // A request that already gave up is not sent at all.
            if w.reply.is_closed() {
                return;
            }
            let batch = by_leader.entry(w.leader).or_default();
            batch.commands.push(w.command);
            batch.replies.push(w.reply);
            batch.deadline = Some(batch.deadline.map_or(w.deadline, |d| d.max(w.deadline)));
        };
        add(first);
        for _ in 1..max_batch {
            match waiting.try_recv() {
                Ok(item) => add(item),
                Err(_) => break,
            }
        }
        // One call per leader (two only around a leader change), side by side, so a batch for
        // the new leader never waits behind a call to the old one.
        let permit = Arc::new(permit);
        for (leader, batch) in by_leader {
            let (peers, permit) = (peers.clone(), permit.clone());
            tokio::spawn(async move {
                send(&peers, &leader, batch, timeout).await;
                drop(permit);
            });
        }
    }
}

/// Sends one batch and hands out its outcomes; gives up when every caller has.
async fn send(peers: &PeerClient, leader: &Peer, mut batch: Batch, timeout: Duration) {
    let deadline = batch.deadline.unwrap_or_else(Instant::now);
    let timeout = deadline.saturating_duration_since(Instant::now()).min(timeout);
    let everyone_gave_up = futures::future::join_all(batch.replies.iter_mut().map(|r| r.closed()));
    let outcomes = tokio::select! {
        outcomes = peers.propose(leader, &batch.commands, timeout) => outcomes,
        _ = everyone_gave_up => return,
    };
    match outcomes {
        Ok(outcomes) if outcomes.len() == batch.replies.len() => {
            for (reply, outcome) in batch.replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Ok(_) => {
            let error = ForwardError::Transport("the leader answered a different number of outcomes".into());
            for reply in batch.replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in batch.replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
