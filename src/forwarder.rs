//! Group forwarding on a follower: writes that reach a follower travel to the leader in
//! batches, one internal request for many commands.
//!
//! Handlers on a follower hand their command to the [`Forwarder`]; its task takes every command
//! waiting (up to `max_batch`) and sends them in one `/internal/propose` call, with up to
//! `max_in_flight` calls outstanding, so commands arriving while a call is in flight join the
//! next one. The leader proposes them through its own [`crate::proposer::Proposer`], which puts
//! them in as few log entries as it can. One client alone still sees one call per request.
//!
//! This module must not decide anything about keys, nor retry: [`crate::node::Node::write`]
//! decides what to do with a failed forward.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::network::{ForwardError, PeerClient};
use crate::sm::model::{Command, Outcome};

type Reply = oneshot::Sender<Result<Outcome, ForwardError>>;

/// The handle a follower's handlers use to send writes to the leader.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::Sender<(String, Command, Reply)>,
}

impl Forwarder {
    pub fn start(peers: PeerClient, timeout: Duration, max_batch: usize, max_in_flight: usize) -> Self {
        let (queue, waiting) = mpsc::channel(max_batch * 4);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        tokio::spawn(run(peers, timeout, waiting, max_batch, in_flight));
        Forwarder { queue }
    }

    /// Sends `command` to the leader at internal address `addr` and waits for its outcome.
    pub async fn propose(&self, addr: String, command: Command) -> Result<Outcome, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((addr, command, reply))
            .await
            .map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))?;
        answer.await.map_err(|_| ForwardError::Transport("the forwarded write was dropped".into()))?
    }
}

async fn run(
    peers: PeerClient,
    timeout: Duration,
    mut waiting: mpsc::Receiver<(String, Command, Reply)>,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = waiting.recv().await {
        // Wait for room first, so that commands arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut by_leader: BTreeMap<String, (Vec<Command>, Vec<Reply>)> = BTreeMap::new();
        let mut add = |(addr, command, reply): (String, Command, Reply)| {
            let batch = by_leader.entry(addr).or_default();
            batch.0.push(command);
            batch.1.push(reply);
        };
        add(first);
        for _ in 1..max_batch {
            match waiting.try_recv() {
                Ok(item) => add(item),
                Err(_) => break,
            }
        }
        let peers = peers.clone();
        tokio::spawn(async move {
            for (addr, (commands, replies)) in by_leader {
                match peers.propose(&addr, &commands, timeout).await {
                    Ok(outcomes) if outcomes.len() == replies.len() => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Ok(_) => {
                        let error =
                            ForwardError::Transport("the leader answered a different number of outcomes".into());
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
            drop(permit);
        });
    }
}
