//! Holds this node's elections while a leader streams it a snapshot.
//!
//! openraft 0.9 renews a follower's leader lease on appends and heartbeats, but not on the
//! chunks of a snapshot: it reads them, writes them, and touches the vote only when the last
//! one has been installed. A snapshot of a million keys takes seconds to send and install, so the
//! follower's election timer fires mid-transfer; it has no pre-vote, so it raises its term, the
//! leader sees the higher term in the chunk's answer, steps down, is elected again, and restarts
//! the transfer from the first chunk — forever. [`ElectionHold`] turns the follower's elections
//! off from the first chunk until no chunk has been in flight for a quiet period, after which a
//! dead leader is replaced as usual.
//!
//! This module must not touch the snapshot itself; it only switches openraft's `elect`.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::raft_types::Raft;

/// A chunk's passage through this node, started by [`ElectionHold::chunk`].
pub struct ChunkInFlight(Option<mpsc::UnboundedSender<bool>>);

impl Drop for ChunkInFlight {
    fn drop(&mut self) {
        if let Some(events) = self.0.take() {
            let _ = events.send(false);
        }
    }
}

/// The switch, shared by the internal listener's snapshot route.
#[derive(Clone)]
pub struct ElectionHold {
    events: mpsc::UnboundedSender<bool>,
}

impl ElectionHold {
    /// Starts the task that switches `raft`'s elections; `quiet` is how long after the last
    /// chunk elections come back.
    pub fn start(raft: Raft, quiet: Duration) -> Self {
        let (events, mut rx) = mpsc::unbounded_channel::<bool>();
        tokio::spawn(async move {
            let mut in_flight = 0usize;
            let mut held = false;
            loop {
                let event = if held && in_flight == 0 {
                    match tokio::time::timeout(quiet, rx.recv()).await {
                        Ok(event) => event,
                        Err(_elapsed) => {
                            held = false;
                            raft.runtime_config().elect(true);
                            tracing::info!("snapshot transfer over: elections enabled again");
                            continue;
                        }
                    }
                } else {
                    rx.recv().await
                };
                match event {
                    None => return,
                    Some(true) => {
                        in_flight += 1;
                        if !held {
                            held = true;
                            raft.runtime_config().elect(false);
                            tracing::info!("receiving a snapshot: elections held until it is over");
                        }
                    }
                    Some(false) => in_flight = in_flight.saturating_sub(1),
                }
            }
        });
        ElectionHold { events }
    }

    /// Holds elections until the returned guard is dropped and the quiet period has passed.
    pub fn chunk(&self) -> ChunkInFlight {
        let events = self.events.clone();
        let _ = events.send(true);
        ChunkInFlight(Some(events))
    }
}
