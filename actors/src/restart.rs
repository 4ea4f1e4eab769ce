//! One restart policy for every supervisor of the tree (DESIGN §4).
//!
//! A [`RestartPolicy`] says how a supervisor paces the restarts of a child: exponential backoff
//! between restarts (built on `backon`'s [`ExponentialBuilder`], with optional jitter), a restart
//! budget — at most `max_restarts` restarts within `window`, as OTP's restart intensity; the next
//! failure gives up — and a reset after a quiet period, so a child that failed once a day always
//! restarts after the minimum delay. A [`RestartTracker`] is the per-child (or per-group) state a
//! supervisor keeps: it turns each failure into a [`RestartDecision`].
//!
//! Who uses which policy:
//! - the root supervisor, over its core children together: [`RestartPolicy::core_child`];
//! - the channel supervisor, one tracker per channel account: [`RestartPolicy::channel`];
//! - the session supervisor, one tracker per session, when it resumes a failed session actor:
//!   [`RestartPolicy::session`] — call [`RestartTracker::on_failure`] in `ActorFailed`,
//!   `send_after(delay, Resume)` on [`RestartDecision::RestartAfter`], drop the tracker when the
//!   session stops cleanly;
//! - the session actor, for containers that die without doing any work:
//!   [`RestartPolicy::container_spawn`] — `on_failure` gives the earliest next spawn,
//!   [`RestartTracker::consecutive_failures`] compared with `max_tries` says when to give up on
//!   the waiting messages, and [`RestartTracker::reset`] after a container did work.
//!
//! Time is `tokio::time::Instant`, so tests drive it with paused time.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// How many restarts a child (or a group of children) may use within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBudget {
    /// Restarts allowed within [`RestartBudget::window`]; the failure after them gives up.
    pub max_restarts: usize,
    /// Length of the sliding window the restarts are counted in.
    pub window: Duration,
}

/// How a supervisor paces the restarts of a child. The named constructors give the tree's
/// policies; each says where its numbers come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Delay before the first restart after a quiet period.
    pub min_delay: Duration,
    /// Largest delay before jitter.
    pub max_delay: Duration,
    /// Growth of the delay per consecutive failure (2.0 doubles it).
    pub factor: f32,
    /// Adds a random 0–100 % to each delay (a delay `d` becomes `d..2d`), so children that
    /// failed together — every channel in one network outage — do not restart in lockstep.
    pub jitter: bool,
    /// The restart budget; `None` never gives up (a chat platform may be down for hours).
    pub budget: Option<RestartBudget>,
    /// A child that has run this long since its last restart is healthy again: its next failure
    /// restarts after `min_delay`.
    pub reset_after: Duration,
}

impl RestartPolicy {
    /// The root supervisor's core children (sweeper, session / approval / channel supervisors),
    /// counted together as OTP's restart intensity: 400 ms doubling to 6.4 s, at most 5 restarts
    /// in 60 s, then the service stops rather than flapping (DESIGN §4).
    pub const fn core_child() -> Self {
        Self {
            min_delay: Duration::from_millis(400),
            max_delay: Duration::from_millis(6_400),
            factor: 2.0,
            jitter: false,
            budget: Some(RestartBudget { max_restarts: 5, window: Duration::from_secs(60) }),
            reset_after: Duration::from_secs(60),
        }
    }

    /// A channel actor: 1 s doubling to 5 min with jitter, never giving up (DESIGN §4: a platform
    /// outage must not need an operator); healthy again after 5 min up.
    pub const fn channel() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            factor: 2.0,
            jitter: true,
            budget: None,
            reset_after: Duration::from_secs(300),
        }
    }

    /// A failed session actor, resumed by the session supervisor: 1 s doubling to 60 s with
    /// jitter (many sessions fail together when the store hiccups), never giving up — its
    /// messages' tries bound the work, not the actor's restarts.
    pub const fn session() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
            budget: None,
            reset_after: Duration::from_secs(60),
        }
    }

    /// A container that died without doing any work (a broken image or provider
    /// configuration), respawned by its session actor: 1 s doubling to 60 s. The session gives
    /// up on the waiting messages after `max_tries` consecutive failures
    /// ([`RestartTracker::consecutive_failures`]), so no budget here.
    pub const fn container_spawn() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            factor: 2.0,
            jitter: false,
            budget: None,
            reset_after: Duration::from_secs(60),
        }
    }

    /// A fresh tracker following this policy.
    pub fn tracker(&self) -> RestartTracker {
        RestartTracker::new(*self)
    }

    fn backoff(&self) -> ExponentialBackoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter { builder.with_jitter().build() } else { builder.build() }
    }
}

/// What a supervisor does about one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the child after this delay.
    RestartAfter(Duration),
    /// The restart budget is spent: stop restarting (and escalate).
    GiveUp {
        /// Failures counted within the window, this one included.
        failures: usize,
        /// The budget's window.
        window: Duration,
    },
}

/// The restart state of one child (or of a group sharing one budget).
#[derive(Debug)]
pub struct RestartTracker {
    policy: RestartPolicy,
    backoff: ExponentialBackoff,
    /// Failures within the budget window, oldest first.
    recent: VecDeque<Instant>,
    /// Failures since the last reset.
    consecutive: u32,
    /// When the last restart was scheduled to happen: the quiet period counts from there.
    restarted_at: Option<Instant>,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            backoff: policy.backoff(),
            policy,
            recent: VecDeque::new(),
            consecutive: 0,
            restarted_at: None,
        }
    }

    /// The policy it follows.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Records a failure now and decides: restart after a delay, or give up.
    pub fn on_failure(&mut self) -> RestartDecision {
        let now = Instant::now();
        if self.restarted_at.is_some_and(|at| now.saturating_duration_since(at) >= self.policy.reset_after) {
            self.reset();
        }
        if let Some(budget) = self.policy.budget {
            self.recent.push_back(now);
            while self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= budget.window) {
                self.recent.pop_front();
            }
            if self.recent.len() > budget.max_restarts {
                return RestartDecision::GiveUp { failures: self.recent.len(), window: budget.window };
            }
        }
        self.consecutive = self.consecutive.saturating_add(1);
        // The backoff never ends (`without_max_times`); the fallback only guards the type.
        let delay = self.backoff.next().unwrap_or(self.policy.max_delay);
        // backon multiplies in f32 (100 ms × 2 = 200.000003 ms): whole milliseconds read better.
        let delay = Duration::from_millis((delay.as_secs_f64() * 1_000.0).round() as u64);
        self.restarted_at = Some(now + delay);
        RestartDecision::RestartAfter(delay)
    }

    /// Forgets the consecutive failures (the child proved healthy, e.g. a container did work):
    /// the next failure restarts after `min_delay`. The budget window is kept: it counts restarts
    /// over time, healthy or not.
    pub fn reset(&mut self) {
        self.backoff = self.policy.backoff();
        self.consecutive = 0;
        self.restarted_at = None;
    }

    /// Failures since the last reset (explicit, or by a quiet period), the last one included.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(min_ms: u64, max_ms: u64) -> RestartPolicy {
        RestartPolicy {
            min_delay: Duration::from_millis(min_ms),
            max_delay: Duration::from_millis(max_ms),
            factor: 2.0,
            jitter: false,
            budget: None,
            reset_after: Duration::from_secs(60),
        }
    }

    fn delay(d: RestartDecision) -> Duration {
        match d {
            RestartDecision::RestartAfter(d) => d,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_cap() {
        let mut t = fixed(100, 1_000).tracker();
        let got: Vec<u64> = (0..6).map(|_| delay(t.on_failure()).as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(t.consecutive_failures(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_between_the_delay_and_twice_the_delay() {
        let mut policy = fixed(100, 400);
        policy.jitter = true;
        let mut t = policy.tracker();
        for base in [100u128, 200, 400, 400, 400] {
            let d = delay(t.on_failure()).as_millis();
            assert!((base..=2 * base).contains(&d), "{d} ms not in [{base}, {}]", 2 * base);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_past_the_budget_gives_up_and_old_failures_leave_the_window() {
        let mut policy = fixed(10, 10);
        policy.budget = Some(RestartBudget { max_restarts: 3, window: Duration::from_secs(10) });
        let mut t = policy.tracker();
        for _ in 0..3 {
            delay(t.on_failure());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(t.on_failure(), RestartDecision::GiveUp { failures: 4, window: Duration::from_secs(10) });
        // Spread out, the same number of failures stays within the budget.
        let mut t = policy.tracker();
        for _ in 0..10 {
            delay(t.on_failure());
            tokio::time::advance(Duration::from_secs(4)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_period_after_the_restart_resets_the_backoff() {
        let mut t = fixed(100, 10_000).tracker();
        assert_eq!(delay(t.on_failure()), Duration::from_millis(100));
        assert_eq!(delay(t.on_failure()), Duration::from_millis(200));
        // The child restarts after 200 ms and runs 59.9 s: not yet quiet long enough.
        tokio::time::advance(Duration::from_millis(200) + Duration::from_millis(59_900)).await;
        assert_eq!(delay(t.on_failure()), Duration::from_millis(400));
        // Restarted after 400 ms, then up for a full minute: healthy again.
        tokio::time::advance(Duration::from_millis(400) + Duration::from_secs(60)).await;
        assert_eq!(delay(t.on_failure()), Duration::from_millis(100));
        assert_eq!(t.consecutive_failures(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn reset_starts_over_at_the_minimum_delay() {
        let mut t = fixed(100, 10_000).tracker();
        delay(t.on_failure());
        delay(t.on_failure());
        t.reset();
        assert_eq!(t.consecutive_failures(), 0);
        assert_eq!(delay(t.on_failure()), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tree_policies_match_their_documented_numbers() {
        let mut core = RestartPolicy::core_child().tracker();
        let got: Vec<u64> = (0..5).map(|_| delay(core.on_failure()).as_millis() as u64).collect();
        assert_eq!(got, vec![400, 800, 1_600, 3_200, 6_400]);
        assert!(matches!(core.on_failure(), RestartDecision::GiveUp { failures: 6, .. }));
        let mut spawn = RestartPolicy::container_spawn().tracker();
        let got: Vec<u64> = (0..8).map(|_| delay(spawn.on_failure()).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        let mut channel = RestartPolicy::channel().tracker();
        for _ in 0..20 {
            let d = delay(channel.on_failure());
            assert!(d >= Duration::from_secs(1) && d < Duration::from_secs(600), "{d:?}");
        }
    }
}
