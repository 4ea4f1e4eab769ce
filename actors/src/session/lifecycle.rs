//! The container slot of one session as a pure state machine (no I/O, no clock of its own).
//!
//! ```text
//!            spawn                started                hello(g)
//!   Gone ───────────▶ Spawning ───────────▶ Starting ─────────────▶ Ready
//!    ▲                  │  │                  │  │                    │
//!    │   gone(exit)     │  │ kill             │  │ kill / no hello    │ kill (stuck, idle, …)
//!    └──────────────────┘  └───────────▶ Stopping{then} ◀────────────┘
//!    ▲                                        │
//!    └──────────────── gone(exit) ────────────┘
//! ```
//!
//! The session actor feeds it events and carries out the [`Action`]s it returns; times are given
//! as [`Instant`]s by the caller, so tests drive it under tokio's paused clock. At most one
//! container per session (DESIGN §5 invariant 4) follows from the shape: a spawn is only possible
//! from `Gone`, and `Gone` is only re-entered on the old container's exit.

use std::time::{Duration, Instant};

/// What happens after a killed container is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Start a replacement (after the old one is removed).
    Respawn,
    /// Stay without a container until work arrives.
    Stay,
}

/// Who or what asked a container to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopCause {
    /// An operator or the embedding program (`Service::kill_container`), with its reason.
    Requested(String),
    /// Work in flight and no sign of life for longer than the tolerance.
    Stuck {
        /// Time since the last sign of life.
        silent_for: Duration,
        /// The tolerance that was passed.
        tolerance: Duration,
    },
    /// No work for the idle timeout.
    Idle,
    /// Idle while other sessions wait for a container slot.
    YieldSlot,
    /// The runner never said hello within the start timeout.
    NoHello(Duration),
    /// The session was quarantined or paused.
    Hold(String),
    /// The session actor is stopping (host shutdown or idle stop).
    Shutdown,
}

impl std::fmt::Display for StopCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopCause::Requested(r) => write!(f, "requested: {r}"),
            StopCause::Stuck { silent_for, tolerance } => write!(
                f,
                "stuck: no agent activity for {silent_for:?} with work in flight (tolerance {tolerance:?})"
            ),
            StopCause::Idle => f.write_str("idle"),
            StopCause::YieldSlot => f.write_str("idle while other sessions wait for a container slot"),
            StopCause::NoHello(t) => write!(f, "no hello within {t:?}"),
            StopCause::Hold(r) => write!(f, "session held: {r}"),
            StopCause::Shutdown => f.write_str("session stopping"),
        }
    }
}

/// How a container ended, as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerExit {
    /// It never ran: create or start failed.
    StartFailed(String),
    /// Its process ended.
    Ended {
        /// Exit code, when the runtime could tell.
        code: Option<i64>,
        /// The signal that ended it, when the code says so (128 + n, Docker's and the shells'
        /// convention).
        signal: Option<i32>,
        /// The kernel's OOM killer ended it.
        oom_killed: bool,
        /// Set when the host asked it to stop.
        requested: Option<StopCause>,
    },
    /// The runtime lost track of it (the wait failed); it was removed.
    Lost(String),
}

impl ContainerExit {
    /// An exit from a runtime status: `code`, OOM flag, and the stop request if any.
    pub fn ended(code: Option<i64>, oom_killed: bool, requested: Option<StopCause>) -> Self {
        let signal = code.filter(|c| (129..=192).contains(c)).map(|c| (c - 128) as i32);
        ContainerExit::Ended { code, signal, oom_killed, requested }
    }

    /// The host asked for this exit.
    pub fn requested(&self) -> bool {
        matches!(self, ContainerExit::Ended { requested: Some(_), .. })
    }
}

impl std::fmt::Display for ContainerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerExit::StartFailed(e) => write!(f, "start failed: {e}"),
            ContainerExit::Lost(e) => write!(f, "lost: {e}"),
            ContainerExit::Ended { code, signal, oom_killed, requested } => {
                match requested {
                    Some(cause) => write!(f, "stopped ({cause})")?,
                    None => f.write_str("exited")?,
                }
                if *oom_killed {
                    f.write_str(", killed by the OOM killer")?;
                }
                match (code, signal) {
                    (_, Some(s)) => write!(f, ", signal {s}"),
                    (Some(c), None) => write!(f, ", code {c}"),
                    (None, None) => Ok(()),
                }
            }
        }
    }
}

/// The phase of the session's container slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No container.
    Gone,
    /// A container actor was spawned; create and start are in flight.
    Spawning {
        /// Its generation.
        generation: i64,
        /// When the spawn began.
        since: Instant,
    },
    /// The container runs; its runner has not said hello yet.
    Starting {
        /// Its generation.
        generation: i64,
        /// When the spawn began (the hello deadline counts from here).
        since: Instant,
    },
    /// The runner said hello: it reads its input.
    Ready {
        /// Its generation.
        generation: i64,
        /// When the spawn began.
        since: Instant,
        /// When it said hello.
        ready_at: Instant,
    },
    /// Asked to stop; `then` says what follows its exit.
    Stopping {
        /// Its generation.
        generation: i64,
        /// When the spawn began.
        since: Instant,
        /// Whether it had said hello.
        was_ready: bool,
        /// What follows its exit.
        then: Then,
        /// Why it is stopping.
        cause: StopCause,
    },
}

/// What the caller must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Tell the container actor to stop, with this cause.
    Stop(StopCause),
    /// Start a new container (the slot is `Gone`).
    Spawn,
}

/// What the caller learns when a container is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// Generation of the container that ended.
    pub generation: i64,
    /// Not a failure: asked to stop (other than for a missing hello), or it had come up and ran
    /// a while (an idle container killed by an operator or the OOM killer is replaced at once, not
    /// backed off).
    pub clean: bool,
    /// It had said hello.
    pub was_ready: bool,
    /// What the stop request said should follow (`None`: it ended by itself).
    pub then: Option<Then>,
}

/// Below this run time a container that said hello and then died is a crash loop candidate.
pub const MIN_HEALTHY_RUN: Duration = Duration::from_secs(10);

impl Phase {
    /// Generation of the container in the slot, if any.
    pub fn generation(&self) -> Option<i64> {
        match self {
            Phase::Gone => None,
            Phase::Spawning { generation, .. }
            | Phase::Starting { generation, .. }
            | Phase::Ready { generation, .. }
            | Phase::Stopping { generation, .. } => Some(*generation),
        }
    }

    /// The runner said hello and no stop was asked.
    pub fn is_ready(&self) -> bool {
        matches!(self, Phase::Ready { .. })
    }

    /// A spawn began.
    pub fn spawned(&mut self, generation: i64, now: Instant) {
        debug_assert!(matches!(self, Phase::Gone), "spawn only from Gone");
        *self = Phase::Spawning { generation, since: now };
    }

    /// The container actor reported it started the container.
    pub fn started(&mut self) {
        if let Phase::Spawning { generation, since } = *self {
            *self = Phase::Starting { generation, since };
        }
    }

    /// A runner of `generation` said hello. Returns false (and changes nothing) for a stale or
    /// unexpected hello.
    pub fn hello(&mut self, generation: i64, now: Instant) -> bool {
        match *self {
            Phase::Spawning { generation: g, since } | Phase::Starting { generation: g, since }
                if g == generation =>
            {
                *self = Phase::Ready { generation, since, ready_at: now };
                true
            }
            _ => false,
        }
    }

    /// A kill was asked. A second kill only upgrades `Stay` to `Respawn`; a kill with
    /// `Respawn` on an empty slot spawns.
    pub fn kill(&mut self, cause: StopCause, then: Then) -> Action {
        match self {
            Phase::Gone => {
                if then == Then::Respawn {
                    Action::Spawn
                } else {
                    Action::None
                }
            }
            Phase::Stopping { then: t, .. } => {
                if then == Then::Respawn {
                    *t = Then::Respawn;
                }
                Action::None
            }
            Phase::Spawning { generation, since } | Phase::Starting { generation, since } => {
                let (generation, since) = (*generation, *since);
                *self = Phase::Stopping { generation, since, was_ready: false, then, cause: cause.clone() };
                Action::Stop(cause)
            }
            Phase::Ready { generation, since, .. } => {
                let (generation, since) = (*generation, *since);
                *self = Phase::Stopping { generation, since, was_ready: true, then, cause: cause.clone() };
                Action::Stop(cause)
            }
        }
    }

    /// When the hello deadline passes, if one is running.
    pub fn hello_deadline(&self, start_timeout: Duration) -> Option<Instant> {
        match self {
            Phase::Spawning { since, .. } | Phase::Starting { since, .. } => Some(*since + start_timeout),
            _ => None,
        }
    }

    /// Checks the hello deadline at `now`: a container that never said hello is killed.
    pub fn check_hello(&mut self, now: Instant, start_timeout: Duration) -> Action {
        match self.hello_deadline(start_timeout) {
            Some(deadline) if now >= deadline => self.kill(StopCause::NoHello(start_timeout), Then::Stay),
            _ => Action::None,
        }
    }

    /// The container is gone. Returns `None` for an exit of a container not in the slot.
    pub fn gone(&mut self, generation: i64, exit: &ContainerExit, now: Instant) -> Option<Gone> {
        if self.generation() != Some(generation) {
            return None;
        }
        let old = std::mem::replace(self, Phase::Gone);
        let (since, was_ready, then, asked) = match old {
            Phase::Gone => return None,
            Phase::Spawning { since, .. } | Phase::Starting { since, .. } => (since, false, None, false),
            Phase::Ready { since, .. } => (since, true, None, false),
            // A container killed for never saying hello failed; any other stop was asked for.
            Phase::Stopping { since, was_ready, then, cause, .. } => {
                (since, was_ready, Some(then), !matches!(cause, StopCause::NoHello(_)))
            }
        };
        let exited_zero = matches!(exit, ContainerExit::Ended { code: Some(0), .. });
        let clean = asked || (was_ready && (exited_zero || now.duration_since(since) >= MIN_HEALTHY_RUN));
        Some(Gone { generation, clean, was_ready, then })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, sleep};

    const START: Duration = Duration::from_secs(60);

    fn std_now() -> std::time::Instant {
        Instant::now().into_std()
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_goes_through_every_phase_and_only_its_own_hello_counts() {
        let mut p = Phase::Gone;
        assert_eq!(p.kill(StopCause::Idle, Then::Stay), Action::None);
        p.spawned(3, std_now());
        assert!(!p.hello(2, std_now()), "a stale generation's hello is ignored");
        p.started();
        assert!(matches!(p, Phase::Starting { generation: 3, .. }));
        assert!(p.hello(3, std_now()));
        assert!(p.is_ready());
        assert!(!p.hello(3, std_now()), "a second hello changes nothing");
        sleep(Duration::from_secs(11)).await;
        let exit = ContainerExit::ended(Some(1), false, None);
        let gone = p.gone(3, &exit, std_now()).unwrap();
        assert_eq!(gone, Gone { generation: 3, clean: true, was_ready: true, then: None });
        assert_eq!(p, Phase::Gone);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_that_never_says_hello_is_killed_at_its_deadline_and_is_not_clean() {
        let mut p = Phase::Gone;
        p.spawned(1, std_now());
        p.started();
        sleep(START - Duration::from_secs(1)).await;
        assert_eq!(p.check_hello(std_now(), START), Action::None);
        sleep(Duration::from_secs(1)).await;
        assert_eq!(p.check_hello(std_now(), START), Action::Stop(StopCause::NoHello(START)));
        assert!(matches!(p, Phase::Stopping { then: Then::Stay, was_ready: false, .. }));
        assert_eq!(p.check_hello(std_now(), START), Action::None, "no second stop");
        let gone = p.gone(1, &ContainerExit::ended(Some(137), false, None), std_now()).unwrap();
        assert!(!gone.clean && !gone.was_ready, "no hello is a failure, even though the host stopped it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_crash_after_hello_is_not_clean_and_kills_upgrade_to_respawn() {
        let mut p = Phase::Gone;
        p.spawned(1, std_now());
        p.hello(1, std_now());
        sleep(Duration::from_secs(2)).await;
        let gone = p.gone(1, &ContainerExit::ended(Some(2), false, None), std_now()).unwrap();
        assert!(!gone.clean);

        p.spawned(2, std_now());
        p.hello(2, std_now());
        assert_eq!(p.kill(StopCause::Idle, Then::Stay), Action::Stop(StopCause::Idle));
        assert_eq!(p.kill(StopCause::Requested("op".into()), Then::Respawn), Action::None);
        assert!(p.gone(1, &ContainerExit::Lost("x".into()), std_now()).is_none(), "an old generation's exit");
        let gone = p.gone(2, &ContainerExit::ended(Some(0), false, None), std_now()).unwrap();
        assert_eq!(gone.then, Some(Then::Respawn));
        assert_eq!(p.kill(StopCause::Requested("op".into()), Then::Respawn), Action::Spawn);
    }

    #[test]
    fn exits_name_code_signal_oom_and_requester() {
        let e = ContainerExit::ended(Some(137), true, Some(StopCause::Idle));
        assert_eq!(e.to_string(), "stopped (idle), killed by the OOM killer, signal 9");
        assert_eq!(ContainerExit::ended(Some(3), false, None).to_string(), "exited, code 3");
        assert!(matches!(
            ContainerExit::ended(Some(143), false, None),
            ContainerExit::Ended { signal: Some(15), .. }
        ));
    }
}
