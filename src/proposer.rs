//! Group commit on the leader: many concurrent commands become one Raft entry.
//!
//! Handlers hand commands to the [`Proposer`]; its task takes every command waiting (up to
//! `max_batch`), stamps the batch with the leader's clock and proposes it as one entry, with up
//! to `max_in_flight_entries` entries outstanding. Combined with the log store's grouped fsync,
//! throughput under many clients is far above one write per fsync.
//!
//! This module must not decide anything about keys; it only batches and stamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// When the last entry was proposed, as ms since `epoch` (see [`Proposer::idle_for`]).
    last_proposal: Arc<AtomicU64>,
    epoch: Instant,
}

impl Proposer {
    pub fn start(raft: Raft, clock: Clock, max_batch: usize, max_in_flight: usize) -> Self {
        let (queue, waiting) = mpsc::channel(max_batch * 4);
        let (last_proposal, epoch) = (Arc::new(AtomicU64::new(0)), Instant::now());
        let batching = Batching {
            max_batch,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            last_proposal: last_proposal.clone(),
            epoch,
        };
        tokio::spawn(run(raft, clock, waiting, batching));
        Proposer { queue, last_proposal, epoch }
    }

    /// How long since this node last proposed an entry (as leader).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_proposal.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
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

/// How the proposer's task batches.
struct Batching {
    max_batch: usize,
    in_flight: Arc<Semaphore>,
    last_proposal: Arc<AtomicU64>,
    epoch: Instant,
}

async fn run(raft: Raft, clock: Clock, mut waiting: mpsc::Receiver<(Command, Reply)>, batching: Batching) {
    let Batching { max_batch, in_flight, last_proposal, epoch } = batching;
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
        last_proposal.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
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
