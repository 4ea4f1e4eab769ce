//! The global cap on concurrent containers, with a fair queue (DESIGN §7; user-problems R10).
//!
//! A session holds a [`SlotPermit`] from before it creates a container until that container is
//! gone (a kill-then-respawn keeps it). The permit is a drop guard: however its holder ends — a
//! graceful stop, a failed handler, a panic — dropping its state gives the slot back. When all
//! slots are taken, [`ContainerSlots::acquire`] waits in arrival order (tokio's semaphore is
//! fair: a released permit goes to the oldest waiter). Sessions with an idle container give
//! their slot up when [`ContainerSlots::waiting`] says someone waits.
//!
//! This module knows nothing of session actors: a waiting session awaits the future in a task
//! of its own and receives the permit as a message.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One of the container slots, held until dropped.
#[derive(Debug)]
pub struct SlotPermit {
    _permit: OwnedSemaphorePermit,
}

/// The slot pool shared by all sessions of a service.
#[derive(Debug, Clone)]
pub struct ContainerSlots {
    cap: usize,
    semaphore: Arc<Semaphore>,
    /// Sessions currently waiting in [`ContainerSlots::acquire`].
    waiting: Arc<AtomicUsize>,
}

/// Counts a waiter for as long as it waits, including when its future is dropped.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ContainerSlots {
    /// A pool of `cap` slots (at least one).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self { cap, semaphore: Arc::new(Semaphore::new(cap)), waiting: Arc::new(AtomicUsize::new(0)) }
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A slot now, if one is free and nobody waits for one (fairness: no overtaking the queue).
    pub fn try_acquire(&self) -> Option<SlotPermit> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.semaphore.clone().try_acquire_owned().ok().map(|p| SlotPermit { _permit: p })
    }

    /// Joins the queue: returns how many sessions wait ahead, and a future that resolves with the
    /// slot in arrival order. Dropping the future leaves the queue.
    pub fn acquire(&self) -> (usize, impl Future<Output = SlotPermit> + Send + 'static) {
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = Waiting(self.waiting.clone());
        let semaphore = self.semaphore.clone();
        let fut = async move {
            let _guard = guard;
            // The semaphore is never closed, so acquiring cannot fail.
            let permit = semaphore.acquire_owned().await.expect("container slot semaphore is never closed");
            SlotPermit { _permit: permit }
        };
        (ahead, fut)
    }

    /// Sessions waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Slots held.
    pub fn held(&self) -> usize {
        self.cap - self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_fair_and_released_on_drop() {
        let slots = ContainerSlots::new(1);
        let first = slots.try_acquire().expect("a free slot");
        assert!(slots.try_acquire().is_none());
        let (ahead_a, a) = slots.acquire();
        let (ahead_b, b) = slots.acquire();
        assert_eq!((ahead_a, ahead_b, slots.waiting()), (0, 1, 2));
        let a = tokio::spawn(a);
        let b = tokio::spawn(b);
        tokio::task::yield_now().await;
        drop(first);
        let pa = a.await.unwrap();
        assert!(!b.is_finished(), "the second waiter must not overtake the first");
        assert_eq!(slots.held(), 1);
        drop(pa);
        let pb = b.await.unwrap();
        assert_eq!(slots.waiting(), 0);
        drop(pb);
        assert_eq!(slots.held(), 0);
        // A dropped waiter leaves the queue.
        let hold = slots.try_acquire().unwrap();
        let (_, gone) = slots.acquire();
        assert_eq!(slots.waiting(), 1);
        drop(gone);
        assert_eq!(slots.waiting(), 0);
        drop(hold);
        assert!(slots.try_acquire().is_some());
    }
}
