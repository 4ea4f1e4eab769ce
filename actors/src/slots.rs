//! The global cap on concurrent containers, with a fair queue (DESIGN §7; user-problems R10).
//!
//! A session actor holds a slot from before it creates a container until that container is gone
//! (a kill-then-respawn keeps it). When all slots are taken, sessions queue in arrival order;
//! a released slot goes to the head of the queue, whose actor is sent
//! [`SessionMessage::SlotGranted`]. Session actors with an idle container give their slot up when
//! someone is waiting.

use crate::actors::session::SessionMessage;
use parking_lot::Mutex;
use ractor::ActorRef;
use std::collections::{HashSet, VecDeque};

/// The answer to [`ContainerSlots::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// The session holds a slot now.
    Granted,
    /// The session waits; `ahead` sessions are before it.
    Queued {
        /// Sessions ahead in the queue.
        ahead: usize,
    },
}

#[derive(Default)]
struct Inner {
    holders: HashSet<String>,
    queue: VecDeque<(String, ActorRef<SessionMessage>)>,
}

/// The slot pool shared by all session actors of a service.
pub struct ContainerSlots {
    cap: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ContainerSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock();
        f.debug_struct("ContainerSlots")
            .field("cap", &self.cap)
            .field("held", &inner.holders.len())
            .field("queued", &inner.queue.len())
            .finish()
    }
}

impl ContainerSlots {
    /// A pool of `cap` slots (at least one).
    pub fn new(cap: usize) -> Self {
        Self { cap: cap.max(1), inner: Mutex::new(Inner::default()) }
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Takes a slot for `session`, or queues it (once) behind the sessions already waiting.
    pub fn acquire(&self, session: &str, actor: &ActorRef<SessionMessage>) -> Acquire {
        let mut inner = self.inner.lock();
        if inner.holders.contains(session) {
            return Acquire::Granted;
        }
        if let Some(pos) = inner.queue.iter().position(|(s, _)| s == session) {
            return Acquire::Queued { ahead: pos };
        }
        if inner.holders.len() < self.cap && inner.queue.is_empty() {
            inner.holders.insert(session.to_string());
            return Acquire::Granted;
        }
        inner.queue.push_back((session.to_string(), actor.clone()));
        Acquire::Queued { ahead: inner.queue.len() - 1 }
    }

    /// Gives up `session`'s slot (or its place in the queue) and hands free slots to the queue.
    pub fn release(&self, session: &str) {
        let mut inner = self.inner.lock();
        inner.holders.remove(session);
        inner.queue.retain(|(s, _)| s != session);
        while inner.holders.len() < self.cap {
            let Some((next, actor)) = inner.queue.pop_front() else { break };
            // A queued actor that is gone simply loses its turn.
            if actor.cast(SessionMessage::SlotGranted).is_ok() {
                inner.holders.insert(next);
            }
        }
    }

    /// Sessions waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Slots held.
    pub fn held(&self) -> usize {
        self.inner.lock().holders.len()
    }
}
