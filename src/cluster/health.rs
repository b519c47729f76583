//! Per-box failure state: what makes a dead box cost one timeout instead of one per request.
//!
//! A box is `Up` until a request to it fails at the transport level (refused, reset, timed out) or
//! with a gateway error from a proxy in front of it. It is then `Down` for a back-off period during
//! which every request fails at once, without touching the network. When the period ends, exactly
//! one request is let through as a probe: success brings the box back up, failure doubles the
//! back-off (up to a cap). Concurrent requests during the probe fail fast instead of piling onto a
//! box that may be stalled — the failure mode Nydus users hit, where waiters silently started their
//! own transfers against a slow backend.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long a box stays down after its first failure; doubled on each failed probe.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a box stays down between probes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The state of one box as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Requests go through.
    Up,
    /// Requests fail fast until `until`; then one probe is allowed.
    Down {
        /// When the next probe may go.
        until: Instant,
        /// The current back-off, doubled on each failed probe.
        backoff: Duration,
        /// Whether a probe is in flight (others keep failing fast meanwhile).
        probing: bool,
        /// The failure that put the box down, for error messages and `status`.
        cause: String,
    },
}

/// Thread-safe failure state of one box.
#[derive(Debug)]
pub struct Health {
    state: Mutex<HealthState>,
}

/// A request was refused without trying because the box is down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// How long until the next probe may go.
    pub retry_in: Duration,
    /// Why the box is down.
    pub cause: String,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            state: Mutex::new(HealthState::Up),
        }
    }
}

impl Health {
    /// Asks to send a request now: `Ok` to go ahead (normally, or as the one probe), `Err` to
    /// fail fast.
    pub fn admit(&self, now: Instant) -> Result<(), Refusal> {
        let mut state = lock(&self.state);
        match &mut *state {
            HealthState::Up => Ok(()),
            HealthState::Down {
                until,
                probing,
                cause,
                ..
            } => {
                if now >= *until && !*probing {
                    *probing = true;
                    Ok(())
                } else {
                    Err(Refusal {
                        retry_in: until.saturating_duration_since(now),
                        cause: cause.clone(),
                    })
                }
            }
        }
    }

    /// The box answered: it is up.
    pub fn record_success(&self) {
        *lock(&self.state) = HealthState::Up;
    }

    /// The box failed at the transport level: down for the first back-off, or, if this was a
    /// failed probe, for twice the previous one.
    pub fn record_failure(&self, now: Instant, cause: String) {
        let mut state = lock(&self.state);
        let backoff = match &*state {
            HealthState::Up => FIRST_BACKOFF,
            HealthState::Down {
                backoff, probing, ..
            } => {
                if *probing {
                    (*backoff * 2).min(MAX_BACKOFF)
                } else {
                    *backoff
                }
            }
        };
        *state = HealthState::Down {
            until: now + backoff,
            backoff,
            probing: false,
            cause,
        };
    }

    /// A snapshot, for `status` and tests.
    pub fn state(&self) -> HealthState {
        lock(&self.state).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_box_fails_fast_then_allows_one_probe() {
        let h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.admit(t0), Ok(()));
        h.record_failure(t0, "connection refused".into());
        let refusal = h.admit(t0 + Duration::from_millis(10)).unwrap_err();
        assert_eq!(refusal.cause, "connection refused");
        assert!(refusal.retry_in <= FIRST_BACKOFF);
        let later = t0 + FIRST_BACKOFF;
        assert_eq!(h.admit(later), Ok(()), "the probe goes");
        assert!(h.admit(later).is_err(), "only one probe at a time");
        h.record_success();
        assert_eq!(h.state(), HealthState::Up);
        assert_eq!(h.admit(later), Ok(()));
    }

    #[test]
    fn failed_probes_double_the_backoff_up_to_the_cap() {
        let h = Health::default();
        let mut now = Instant::now();
        h.record_failure(now, "timeout".into());
        let mut expected = FIRST_BACKOFF;
        for _ in 0..10 {
            now += expected;
            assert_eq!(h.admit(now), Ok(()));
            h.record_failure(now, "timeout".into());
            expected = (expected * 2).min(MAX_BACKOFF);
            match h.state() {
                HealthState::Down { backoff, until, .. } => {
                    assert_eq!(backoff, expected);
                    assert_eq!(until, now + expected);
                }
                HealthState::Up => panic!("still down"),
            }
        }
        assert_eq!(expected, MAX_BACKOFF);
    }

    #[test]
    fn concurrent_failures_do_not_extend_the_backoff() {
        let h = Health::default();
        let now = Instant::now();
        h.record_failure(now, "a".into());
        h.record_failure(now, "b".into());
        match h.state() {
            HealthState::Down { backoff, .. } => assert_eq!(backoff, FIRST_BACKOFF),
            HealthState::Up => panic!("down"),
        }
    }
}
