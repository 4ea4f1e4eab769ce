//! The liveness verdict on a ready container: a pure function of what its files say.
//!
//! Stuck means work in flight and no sign of life — a heartbeat or a new claim — for longer than
//! the tolerance: `max(claim_stuck_after, declared timeout of the tool in flight)`, capped at the
//! heartbeat ceiling (the declared timeout is untrusted). Reference §1.10's rule (a claim with no
//! heartbeat since) misses a turn that hangs after its first provider event, so the newest sign
//! of life counts, whichever it is. The verdict also says when to look again, so the session
//! arms one timer for that instant instead of polling.

use std::time::Duration;

/// What the session knows about its container's activity, read through the container-file reader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signs {
    /// Age of the newest claim of the current generation still `processing`; `None`: no claims.
    pub newest_claim_age: Option<Duration>,
    /// Age of the heartbeat file, if it exists.
    pub heartbeat_age: Option<Duration>,
    /// Declared timeout of the tool in flight (untrusted).
    pub declared_timeout: Option<Duration>,
    /// Time since the session last saw activity (input, output, a container start).
    pub idle_for: Duration,
    /// Pending triggering inbound rows.
    pub pending: i64,
    /// Sessions waiting for a container slot.
    pub slot_waiters: usize,
}

/// Tolerances, from the service configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerances {
    /// A claim older than this with no sign of life since is stuck (reference §1.10: 60 s).
    pub claim_stuck_after: Duration,
    /// Ceiling of any tolerance (reference §1.10: 30 min).
    pub heartbeat_ceiling: Duration,
    /// A container with no work for this long is stopped.
    pub idle_timeout: Duration,
    /// An idle container gives its slot up after this long when others wait.
    pub yield_after: Duration,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Working or waiting within tolerance; look again after this long.
    Alive {
        /// When to look again.
        check_in: Duration,
    },
    /// Work in flight and silent for too long: kill and respawn.
    Stuck {
        /// Time since the last sign of life.
        silent_for: Duration,
        /// The tolerance passed.
        tolerance: Duration,
    },
    /// No work for the idle timeout: stop.
    Idle,
    /// No work while others wait for a slot: give it up.
    YieldSlot,
}

/// Judges a ready container.
pub fn verdict(signs: &Signs, t: &Tolerances) -> Verdict {
    if let Some(claim_age) = signs.newest_claim_age {
        let silent_for = signs.heartbeat_age.map_or(claim_age, |beat| beat.min(claim_age));
        let tolerance =
            signs.declared_timeout.unwrap_or_default().max(t.claim_stuck_after).min(t.heartbeat_ceiling);
        if silent_for > tolerance {
            return Verdict::Stuck { silent_for, tolerance };
        }
        // Look again just after the tolerance would pass if nothing happens.
        return Verdict::Alive { check_in: tolerance - silent_for + Duration::from_millis(10) };
    }
    if signs.pending > 0 {
        // Input waits but nothing is claimed yet: the runner is about to take it. Silence here
        // is judged once it claims; until then look again at the claim tolerance.
        return Verdict::Alive { check_in: t.claim_stuck_after };
    }
    if signs.idle_for >= t.idle_timeout {
        return Verdict::Idle;
    }
    if signs.slot_waiters > 0 {
        if signs.idle_for >= t.yield_after {
            return Verdict::YieldSlot;
        }
        return Verdict::Alive { check_in: t.yield_after - signs.idle_for };
    }
    Verdict::Alive { check_in: t.idle_timeout - signs.idle_for }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn tol() -> Tolerances {
        Tolerances {
            claim_stuck_after: S(60),
            heartbeat_ceiling: S(1800),
            idle_timeout: S(1800),
            yield_after: S(2),
        }
    }

    #[test]
    fn silence_with_work_in_flight_is_stuck_only_past_the_tolerance() {
        let mut s = Signs { newest_claim_age: Some(S(61)), ..Default::default() };
        assert_eq!(verdict(&s, &tol()), Verdict::Stuck { silent_for: S(61), tolerance: S(60) });
        s.heartbeat_age = Some(S(5));
        assert_eq!(verdict(&s, &tol()), Verdict::Alive { check_in: S(55) + Duration::from_millis(10) });
        // A long tool declared its timeout: wait for it, and no longer.
        s.heartbeat_age = Some(S(300));
        s.declared_timeout = Some(S(600));
        assert!(matches!(verdict(&s, &tol()), Verdict::Alive { .. }));
        s.heartbeat_age = Some(S(601));
        s.newest_claim_age = Some(S(700));
        assert_eq!(verdict(&s, &tol()), Verdict::Stuck { silent_for: S(601), tolerance: S(600) });
        // An absurd declared timeout is capped at the ceiling.
        s.declared_timeout = Some(S(1_000_000));
        s.heartbeat_age = Some(S(1801));
        s.newest_claim_age = Some(S(1801));
        assert_eq!(verdict(&s, &tol()), Verdict::Stuck { silent_for: S(1801), tolerance: S(1800) });
    }

    #[test]
    fn idle_containers_stop_or_yield_their_slot_and_say_when_to_look_again() {
        let mut s = Signs { idle_for: S(100), ..Default::default() };
        assert_eq!(verdict(&s, &tol()), Verdict::Alive { check_in: S(1700) });
        s.slot_waiters = 1;
        assert_eq!(verdict(&s, &tol()), Verdict::YieldSlot);
        s.idle_for = S(1);
        assert_eq!(verdict(&s, &tol()), Verdict::Alive { check_in: S(1) });
        s.slot_waiters = 0;
        s.idle_for = S(1800);
        assert_eq!(verdict(&s, &tol()), Verdict::Idle);
        s.pending = 1;
        assert_eq!(verdict(&s, &tol()), Verdict::Alive { check_in: S(60) });
    }
}
