//! Group commit on the leader: many concurrent commands become one Raft entry.
//!
//! Handlers hand commands to the [`Proposer`]; its task takes every command waiting (up to
//! `max_batch`), stamps the batch with the leader's clock and proposes it as one entry, with up
//! to `max_in_flight_entries` entries outstanding. Combined with the log store's grouped fsync,
//! throughput under many clients is far above one write per fsync.
//!
//! This module must not decide anything about keys; it only batches and stamps.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::Clock;
use crate::network::ForwardError;
use crate::raft_types::{NodeId, NodeInfo, Raft, Request};
use crate::sm::model::{Command, Outcome};

type Reply = oneshot::Sender<Result<Outcome, ForwardError>>;

/// The handle handlers use to propose on this node (which must be the leader).
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<(Command, Reply)>,
}

impl Proposer {
    pub fn start(raft: Raft, clock: Clock, max_batch: usize, max_in_flight: usize) -> Self {
        let (queue, waiting) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(raft, clock, waiting, max_batch, Arc::new(Semaphore::new(max_in_flight))));
        Proposer { queue }
    }

    /// Proposes `command` and waits for its outcome.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((command, reply))
            .await
            .map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))?;
        answer.await.map_err(|_| ForwardError::Transport("the proposal was dropped".into()))?
    }
}

async fn run(
    raft: Raft,
    clock: Clock,
    mut waiting: mpsc::Receiver<(Command, Reply)>,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = waiting.recv().await {
        // Wait for room first, so that commands arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut commands = vec![first.0];
        let mut replies = vec![first.1];
        while commands.len() < max_batch {
            match waiting.try_recv() {
                Ok((command, reply)) => {
                    commands.push(command);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        crate::metrics::global().proposed(commands.len());
        let request = Request { time: clock.now_ms(), commands };
        let raft = raft.clone();
        tokio::spawn(async move {
            let result = raft.client_write(request).await;
            drop(permit);
            match result {
                Ok(written) => {
                    let mut outcomes = written.data.outcomes.into_iter();
                    for reply in replies {
                        let outcome = outcomes.next().ok_or_else(|| {
                            ForwardError::Transport("entry answered fewer outcomes than commands".into())
                        });
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    let error = classify(e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// A failed proposal is either "not the leader" (the entry may still commit under the next
/// leader, which the request id makes harmless) or a node fault.
fn classify(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardError::NotLeader { leader: f.leader_id },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => ForwardError::Unavailable(e.to_string()),
        RaftError::Fatal(e) => ForwardError::Unavailable(format!("raft stopped: {e}")),
    }
}
