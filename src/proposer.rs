//! Group commit on the leader: many concurrent commands become one Raft entry.
//!
//! Handlers hand commands to the [`Proposer`]; its task takes every command waiting (up to
//! `max_batch`), stamps the batch with the cluster time ([`crate::clock::ClusterClock`]) and
//! proposes it as one entry, with up to `max_in_flight_entries` entries outstanding. Combined
//! with the log store's grouped fsync, throughput under many clients is far above one write per
//! fsync.
//!
//! A read of time-dependent state asks for a [`Proposer::barrier`]: it joins the next entry (an
//! entry of no commands if nothing else is waiting) and resolves once that entry is applied
//! here. Everything proposed before the barrier, on this leader or an earlier one, has then been
//! applied or will never be, and everything proposed after it is stamped no earlier: the read is
//! linearizable, and so is its notion of "expired".
//!
//! This module must not decide anything about keys; it only batches and stamps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::clock::ClusterClock;
use crate::network::ForwardError;
use crate::raft_types::{NodeId, NodeInfo, Raft, Request};
use crate::sm::model::{Command, Millis, Outcome};
use crate::store::state_machine::{read_state, SharedState};

type Reply = oneshot::Sender<Result<Outcome, ForwardError>>;
type BarrierReply = oneshot::Sender<Result<(), ForwardError>>;

/// What waits in the proposer's queue (commands are most of it; boxing them would cost an
/// allocation each).
#[allow(clippy::large_enum_variant)]
enum Waiting {
    /// A command, and when it must have been proposed by (else it is not proposed at all).
    Command(Command, Reply, Option<Instant>),
    Barrier(BarrierReply),
}

/// The handle handlers use to propose on this node (which must be the leader).
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Waiting>,
    /// When the last entry was proposed, as ms since `epoch` (see [`Proposer::idle_for`]).
    last_proposal: Arc<AtomicU64>,
    epoch: Instant,
}

/// What the proposer's task needs besides its queue.
pub struct Setup {
    pub raft: Raft,
    pub clock: ClusterClock,
    /// The applied state, whose clock is the floor of every stamp.
    pub state: SharedState,
    pub max_batch: usize,
    pub max_in_flight: usize,
}

impl Proposer {
    pub fn start(setup: Setup) -> Self {
        let (queue, waiting) = mpsc::channel(setup.max_batch * 4);
        let (last_proposal, epoch) = (Arc::new(AtomicU64::new(0)), Instant::now());
        tokio::spawn(run(setup, waiting, last_proposal.clone(), epoch));
        Proposer { queue, last_proposal, epoch }
    }

    /// How long since this node last proposed an entry (as leader).
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_proposal.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    async fn enqueue(&self, item: Waiting) -> Result<(), ForwardError> {
        self.queue.send(item).await.map_err(|_| ForwardError::Unavailable("the node is shutting down".into()))
    }

    /// Proposes `command` and waits for its outcome.
    pub async fn propose(&self, command: Command) -> Result<Outcome, ForwardError> {
        self.propose_with(command, None).await
    }

    /// Proposes `command` if it can be handed to Raft before `deadline`, and then waits for its
    /// outcome however long that takes (it commits, or this node stops leading): a caller that
    /// must know whether its command took effect (a sweep) gets a definite answer, and a command
    /// decided from an older view is never proposed late. Not proposed in time: `Unavailable`.
    pub async fn propose_before(&self, command: Command, deadline: Instant) -> Result<Outcome, ForwardError> {
        self.propose_with(command, Some(deadline)).await
    }

    async fn propose_with(&self, command: Command, deadline: Option<Instant>) -> Result<Outcome, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Waiting::Command(command, reply, deadline)).await?;
        answer.await.map_err(|_| ForwardError::Transport("the proposal was dropped".into()))?
    }

    /// Resolves once an entry proposed after this call has been committed and applied here.
    pub async fn barrier(&self) -> Result<(), ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Waiting::Barrier(reply)).await?;
        answer.await.map_err(|_| ForwardError::Transport("the read barrier was dropped".into()))?
    }
}

async fn run(setup: Setup, mut waiting: mpsc::Receiver<Waiting>, last_proposal: Arc<AtomicU64>, epoch: Instant) {
    let Setup { raft, clock, state, max_batch, max_in_flight } = setup;
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    while let Some(first) = waiting.recv().await {
        // Wait for room first, so that commands arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let raft = &raft;
        let mut commands = Vec::new();
        let mut replies = Vec::new();
        let mut barriers = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                // A command whose caller gave up (its request timed out) is not proposed: its
                // outcome is already "unknown" to the caller, and a decision made from an older
                // view (a sweep) must not take effect later.
                Waiting::Command(_, reply, _) if reply.is_closed() => {}
                Waiting::Command(_, reply, Some(deadline)) if Instant::now() >= deadline => {
                    let _ = reply.send(Err(ForwardError::Unavailable("not proposed in time".into())));
                }
                Waiting::Command(command, reply, _) => {
                    commands.push(command);
                    replies.push(reply);
                }
                Waiting::Barrier(reply) if reply.is_closed() => {}
                Waiting::Barrier(reply) => barriers.push(reply),
            }
            if commands.len() + barriers.len() < max_batch {
                next = waiting.try_recv().ok();
            }
        }
        if commands.is_empty() && barriers.is_empty() {
            continue;
        }
        crate::metrics::global().proposed(commands.len());
        last_proposal.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let term = raft.metrics().borrow().current_term;
        let floor: Millis = read_state(&state).store.clock();
        let request = Request { time: clock.stamp(term, floor), commands };
        // Handed to openraft here, in order (so an entry with a barrier comes after every entry
        // proposed before it); the outcome is awaited on its own task.
        // A Raft that stopped (the disk watchdog shut it down) is not asked: openraft would log
        // an error for every call, and nothing can be written anyway.
        let proposed = if raft.metrics().borrow().state == openraft::ServerState::Shutdown {
            Err(openraft::error::Fatal::Stopped)
        } else {
            raft.client_write_ff(request).await
        };
        tokio::spawn(async move {
            let result = match proposed {
                Ok(receiver) => match receiver.await {
                    Ok(result) => result.map_err(RaftError::APIError),
                    Err(_) => Err(RaftError::Fatal(openraft::error::Fatal::Stopped)),
                },
                Err(fatal) => Err(RaftError::Fatal(fatal)),
            };
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
                    for barrier in barriers {
                        let _ = barrier.send(Ok(()));
                    }
                }
                Err(e) => {
                    let error = classify(e);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                    for barrier in barriers {
                        let _ = barrier.send(Err(error.clone()));
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
