//! Fluentd's retry state for buffered outputs: when to retry a failed flush, when to switch to
//! the `<secondary>`, and when to give up.
//!
//! # Model
//!
//! The state is **output-wide**, not per chunk (reference §3.1): the first failed flush of any
//! chunk creates one [`RetryState`]; every later failure of any chunk updates that same state; any
//! successful write clears it. While it exists, flush workers write nothing before
//! [`RetryState::next_time`] and then write one chunk (the queue head).
//!
//! Everything here is pure: no I/O, no sleeping, no clock reads. Every method that depends on the
//! time takes `now` (the caller passes [`crate::time::Clock::now`]), so schedules are tested with
//! a fake clock. Times are [`EventTime`]s; internally they are kept as integer nanoseconds, so a
//! worker that wakes exactly at `next_time` compares equal to it (no float rounding).
//!
//! * [`RetryPolicy`] — the `retry_*` parameters of a `<buffer>` section plus whether the output
//!   has a `<secondary>`; it computes the un-randomized intervals (§3.2) and the secondary budget
//!   (§3.4).
//! * [`RetryState`] — one retry episode, created at the first failure. [`RetryState::on_failure`]
//!   applies a later failure: it *steps* when the failure happens at or after `next_time`, and only
//!   re-schedules otherwise (another worker failed first; Fluentd PR #3203).
//!   [`RetryState::limit_reached`] is the give-up decision (§3.3);
//!   [`RetryState::should_use_secondary`] says where the next write goes (§3.4);
//!   [`RetryState::log_fields`] gives `retry_times`/`next_retry_time` for the warning.
//! * [`OutputRetry`] — the output-wide slot holding an optional state, with the create / update /
//!   give-up / clear sequence of Fluentd's `update_retry_state` and `commit_write`, so flush workers
//!   only report "failed at `now`" or "succeeded".
//!
//! Giving up is only a decision here. What happens to the queue (sluice moves every queued chunk
//! to the backup directory instead of deleting it) is the caller's business.

use std::fmt;

use crate::buffer::config::{BufferConfig, RetryType};
use crate::event::EventTime;
use crate::time::Zone;

/// Nanoseconds per second, for the internal integer time line.
const NANOS: i128 = 1_000_000_000;

/// Fluentd's `randomize_width`: retry waits vary by ±12.5 %.
const RANDOMIZE_WIDTH: f64 = 0.125;

/// An instant as integer nanoseconds since the epoch.
fn to_nanos(t: EventTime) -> i128 {
    t.sec as i128 * NANOS + t.nsec as i128
}

/// A duration in float seconds as nanoseconds. Huge or infinite values saturate (`as` from a
/// float saturates in Rust), which keeps their order against every real instant.
fn secs_to_nanos(secs: f64) -> i128 {
    (secs * 1e9).round() as i128
}

/// Back to an [`EventTime`], clamping instants beyond what it can hold.
fn from_nanos(n: i128) -> EventTime {
    let sec = n.div_euclid(NANOS);
    if sec > i64::MAX as i128 {
        return EventTime::new(i64::MAX, 999_999_999);
    }
    if sec < i64::MIN as i128 {
        return EventTime::new(i64::MIN, 0);
    }
    EventTime::new(sec as i64, n.rem_euclid(NANOS) as u32)
}

/// A source of uniform random numbers in `[0, 1)`, injectable so randomized schedules can be
/// tested exactly. Any `FnMut() -> f64 + Send` closure is one.
pub trait RandomSource: Send {
    /// The next number, uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64;
}

impl<F: FnMut() -> f64 + Send> RandomSource for F {
    fn next_unit(&mut self) -> f64 {
        self()
    }
}

/// The production random source: SplitMix64, a tiny generator that is plenty for spreading retry
/// times of several outputs apart (no new dependency needed).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator with a fixed seed (reproducible sequences).
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// A generator seeded from the process's random hasher keys and the wall clock, so outputs
    /// and restarts do not retry in lockstep.
    pub fn from_entropy() -> SplitMix64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        let now = EventTime::now();
        h.write_i64(now.sec);
        h.write_u32(now.nsec);
        SplitMix64::new(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl RandomSource for SplitMix64 {
    fn next_unit(&mut self) -> f64 {
        // 53 random bits scaled into [0, 1): every value is exact and below 1.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The retry parameters of one output, as read from its `<buffer>` section, plus whether it has a
/// `<secondary>`. Kept separate from [`BufferConfig`] so the state machine depends only on what
/// it uses and tests can state a policy directly.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// `retry_type`: how the interval grows.
    pub retry_type: RetryType,
    /// `retry_wait`, seconds: the first wait, and the constant factor of exponential backoff.
    pub wait: f64,
    /// `retry_exponential_backoff_base`.
    pub base: f64,
    /// `retry_max_interval`, seconds: cap of one exponential interval (before randomization).
    pub max_interval: Option<f64>,
    /// `retry_timeout`, seconds after the first failure.
    pub timeout: f64,
    /// `retry_max_times`: retries after the first attempt.
    pub max_times: Option<u64>,
    /// `retry_forever`: never give up, never switch to the secondary.
    pub forever: bool,
    /// `retry_randomize`: vary each wait but the first by ±12.5 %.
    pub randomize: bool,
    /// `retry_secondary_threshold` when the output has a `<secondary>`, `None` otherwise. Assumed
    /// to be inside (0, 1); configuration rejects anything else.
    pub secondary_threshold: Option<f64>,
}

impl RetryPolicy {
    /// The policy of an output with this buffer configuration, with or without a `<secondary>`.
    pub fn from_config(cfg: &BufferConfig, has_secondary: bool) -> RetryPolicy {
        RetryPolicy {
            retry_type: cfg.retry_type,
            wait: cfg.retry_wait,
            base: cfg.retry_exponential_backoff_base,
            max_interval: cfg.retry_max_interval,
            timeout: cfg.retry_timeout,
            max_times: cfg.retry_max_times,
            forever: cfg.retry_forever,
            randomize: cfg.retry_randomize,
            secondary_threshold: has_secondary.then_some(cfg.retry_secondary_threshold),
        }
    }

    /// Whether failing retries move to the secondary at some point: there is a `<secondary>` and
    /// `retry_forever` is off (with `retry_forever`, Fluentd sends only unrecoverable errors to the
    /// secondary).
    pub fn switches_to_secondary(&self) -> bool {
        self.secondary_threshold.is_some() && !self.forever
    }

    /// The un-randomized wait scheduled by the step that leaves `k` as the exponent (§3.2):
    /// periodic: `retry_wait`; exponential: `retry_wait * base^k`, capped at `retry_max_interval`,
    /// and, if the power is not finite, the value of the largest exponent below `k` that is.
    /// The very first wait (at creation) is always `retry_wait` and does not come from here.
    pub fn interval(&self, k: u64) -> f64 {
        match self.retry_type {
            RetryType::Periodic => self.wait,
            RetryType::ExponentialBackoff => {
                let raw = |j: u64| self.wait * self.base.powf(j as f64);
                let v = raw(k);
                if let Some(max) = self.max_interval {
                    if v > max {
                        return max;
                    }
                }
                if v.is_finite() {
                    return v;
                }
                // Finiteness of |base|^j only ever goes from true to false as j grows, so the
                // largest finite exponent below k is found by bisection instead of counting down.
                if !raw(0).is_finite() {
                    return f64::MAX;
                }
                let (mut lo, mut hi) = (0u64, k);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if raw(mid).is_finite() {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                raw(lo)
            }
        }
    }

    /// Seconds of retrying after which the secondary takes over, before the threshold is applied
    /// (§3.4): `retry_timeout`, or the total of the first `retry_max_times` intervals when that is
    /// smaller (periodic: `retry_wait * retry_max_times`).
    pub fn secondary_budget(&self) -> f64 {
        let Some(n) = self.max_times else {
            return self.timeout;
        };
        let by_steps = match self.retry_type {
            RetryType::Periodic => self.wait * n as f64,
            RetryType::ExponentialBackoff => {
                let mut sum = 0.0;
                for i in 0..n {
                    let interval = self.interval(i);
                    // With a base of at least 1 the intervals never shrink, so equal first and
                    // last intervals mean a constant tail (capped, or base 1): add it at once
                    // when it is too long to walk. Short tails are summed one by one, as Fluentd
                    // does, to get the same float result.
                    let remaining = n - i;
                    if remaining > 1_000_000 && self.base >= 1.0 && interval == self.interval(n - 1)
                    {
                        sum += interval * remaining as f64;
                        break;
                    }
                    let next = sum + interval;
                    // Past the timeout the result is the timeout anyway; an unchanged sum stays
                    // unchanged (shrinking or zero intervals). Either way, stop early.
                    if next >= self.timeout || next == sum {
                        sum = next;
                        break;
                    }
                    sum = next;
                }
                sum
            }
        };
        if by_steps < self.timeout {
            by_steps
        } else {
            self.timeout
        }
    }
}

/// The retry fields of Fluentd's `failed to flush the buffer.` warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLogFields {
    /// `retry_times=`: the number of steps so far (0 after the first failure).
    pub retry_times: u64,
    /// `next_retry_time=`: the next attempt, rounded to whole seconds (half up, as Ruby's
    /// `Time#round`), as epoch seconds.
    pub next_retry_time: i64,
}

impl RetryLogFields {
    /// `next_retry_time` as Fluentd prints it (Ruby's `Time#inspect` of a whole second in the
    /// process zone): `2016-04-13 18:34:01 -0700`.
    pub fn next_retry_time_text(&self, zone: &Zone) -> String {
        zone.strftime(
            EventTime::new(self.next_retry_time, 0),
            "%Y-%m-%d %H:%M:%S %z",
        )
    }

    /// `retry_times=<k> next_retry_time=<time>`, the part of the warning this module knows;
    /// the caller appends `chunk=` and the error.
    pub fn text(&self, zone: &Zone) -> String {
        format!(
            "retry_times={} next_retry_time={}",
            self.retry_times,
            self.next_retry_time_text(zone)
        )
    }
}

/// One retry episode of an output: from its first failed flush until a write succeeds or the
/// output gives up.
pub struct RetryState {
    policy: RetryPolicy,
    start: i128,
    steps: u64,
    next_time: i128,
    timeout_at: i128,
    transition_at: Option<i128>,
    transition_steps: Option<u64>,
    reached_timeout: bool,
    timed_out: bool,
    rng: Box<dyn RandomSource>,
}

impl fmt::Debug for RetryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryState")
            .field("policy", &self.policy)
            .field("start", &self.start())
            .field("steps", &self.steps)
            .field("next_time", &self.next_time())
            .field("timeout_at", &self.timeout_at())
            .field("secondary_transition_at", &self.secondary_transition_at())
            .field("secondary_transition_steps", &self.transition_steps)
            .field("reached_timeout", &self.reached_timeout)
            .field("timed_out", &self.timed_out)
            .finish_non_exhaustive()
    }
}

impl RetryState {
    /// The state created by the first failure, at `now`, with a random source seeded from
    /// entropy. `next_time = now + retry_wait`, never randomized, capped by nothing.
    pub fn new(policy: RetryPolicy, now: EventTime) -> RetryState {
        RetryState::with_random(policy, now, Box::new(SplitMix64::from_entropy()))
    }

    /// [`RetryState::new`] with a chosen random source (tests, reproducible runs).
    pub fn with_random(
        policy: RetryPolicy,
        now: EventTime,
        rng: Box<dyn RandomSource>,
    ) -> RetryState {
        let start = to_nanos(now);
        let transition_at = match policy.secondary_threshold {
            Some(threshold) if policy.switches_to_secondary() => {
                Some(start.saturating_add(secs_to_nanos(policy.secondary_budget() * threshold)))
            }
            _ => None,
        };
        RetryState {
            start,
            steps: 0,
            next_time: start.saturating_add(secs_to_nanos(policy.wait)),
            timeout_at: start.saturating_add(secs_to_nanos(policy.timeout)),
            transition_at,
            transition_steps: None,
            reached_timeout: false,
            timed_out: false,
            rng,
            policy,
        }
    }

    /// The policy this state follows.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// When the first failure happened.
    pub fn start(&self) -> EventTime {
        from_nanos(self.start)
    }

    /// Steps taken: failures at or after their `next_time`, after the first. Logged as
    /// `retry_times`.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// When the next attempt is due: flush workers sleep until then and write one chunk.
    pub fn next_time(&self) -> EventTime {
        from_nanos(self.next_time)
    }

    /// `start + retry_timeout`.
    pub fn timeout_at(&self) -> EventTime {
        from_nanos(self.timeout_at)
    }

    /// When writes move to the secondary: `start + budget * retry_secondary_threshold` (§3.4).
    /// `None` without a `<secondary>` or with `retry_forever`.
    pub fn secondary_transition_at(&self) -> Option<EventTime> {
        self.transition_at.map(from_nanos)
    }

    /// The step count at which the state moved to the secondary, once it has.
    pub fn secondary_transition_steps(&self) -> Option<u64> {
        self.transition_steps
    }

    /// Whether a step has already happened on the secondary side (the backoff restarted there).
    pub fn on_secondary(&self) -> bool {
        self.transition_steps.is_some()
    }

    /// Whether a flush worker may write now (`now >= next_time`).
    pub fn is_due(&self, now: EventTime) -> bool {
        to_nanos(now) >= self.next_time
    }

    /// Whether a write attempted at `now` goes to the secondary: the state already moved there,
    /// or `now` is at or after the transition time. Never with `retry_forever`.
    pub fn should_use_secondary(&self, now: EventTime) -> bool {
        match self.transition_at {
            Some(at) => self.on_secondary() || to_nanos(now) >= at,
            None => false,
        }
    }

    /// Applies a failure (of any chunk, by any worker) at `now`, after the first: at or after
    /// `next_time` it steps; before it (another worker failed meanwhile) it only reschedules from
    /// `now` without counting a retry, so concurrent failures do not burn the retry budget.
    /// Returns whether it stepped. Check [`RetryState::limit_reached`] afterwards.
    pub fn on_failure(&mut self, now: EventTime) -> bool {
        if to_nanos(now) >= self.next_time {
            self.step(now);
            true
        } else {
            self.recalc_next_time(now);
            false
        }
    }

    /// One retry step at `now`: counts it, moves to the secondary if `now` is at or after the
    /// transition time (restarting the backoff exponent there), schedules the next attempt and
    /// records whether the schedule has hit `timeout_at` (the first time schedules one last
    /// attempt there; the second time means time is up).
    pub fn step(&mut self, now: EventTime) {
        self.steps += 1;
        if let Some(at) = self.transition_at {
            if !self.on_secondary() && to_nanos(now) >= at {
                self.transition_steps = Some(self.steps);
            }
        }
        self.next_time = self.calc_next_time(now);
        if self.reached_timeout {
            self.timed_out = self.next_time >= self.timeout_at;
        } else {
            self.reached_timeout = self.next_time >= self.timeout_at;
        }
    }

    /// Reschedules from `now` with the current step count, without stepping.
    pub fn recalc_next_time(&mut self, now: EventTime) {
        self.next_time = self.calc_next_time(now);
    }

    /// The give-up decision (§3.3), valid right after creation or after
    /// [`RetryState::on_failure`]: never with `retry_forever`; otherwise when `steps` reached
    /// `retry_max_times`, or when a step scheduled at `timeout_at` for the second time (the
    /// attempt at exactly `timeout_at` failed).
    pub fn limit_reached(&self) -> bool {
        if self.policy.forever {
            return false;
        }
        self.timed_out || self.policy.max_times.is_some_and(|n| self.steps >= n)
    }

    /// `retry_times` and `next_retry_time` for `failed to flush the buffer.` (and
    /// `… with secondary output.`), and `retry_times` for `Hit limit for retries.`.
    pub fn log_fields(&self) -> RetryLogFields {
        RetryLogFields {
            retry_times: self.steps,
            next_retry_time: self
                .next_time
                .saturating_add(NANOS / 2)
                .div_euclid(NANOS)
                .clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        }
    }

    /// `now + randomize(interval)` for the current side, capped: at `timeout_at` without a
    /// switching secondary (uncapped with `retry_forever`), at the transition time on the
    /// primary, at `timeout_at` on the secondary, whose exponent restarts at 0.
    fn calc_next_time(&mut self, now: EventTime) -> i128 {
        let now = to_nanos(now);
        let k = match self.transition_steps {
            Some(at_steps) => self.steps - at_steps,
            None => self.steps,
        };
        let interval = self.randomize(self.policy.interval(k));
        let naive = now.saturating_add(secs_to_nanos(interval));
        let cap = if self.policy.forever {
            None
        } else {
            match (self.transition_at, self.on_secondary()) {
                (Some(at), false) => Some(at),
                _ => Some(self.timeout_at),
            }
        };
        match cap {
            Some(cap) if naive >= cap => cap,
            _ => naive,
        }
    }

    /// `x` varied uniformly within `[x * 0.875, x * 1.125)`, when randomization is on.
    fn randomize(&mut self, x: f64) -> f64 {
        if !self.policy.randomize {
            return x;
        }
        let r = self.rng.next_unit();
        x + x * RANDOMIZE_WIDTH * (2.0 * r - 1.0)
    }
}

/// What a failed flush means for the output, as decided by [`OutputRetry::failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Keep retrying: warn `failed to flush the buffer.` (`… with secondary output.` if the write
    /// went to the secondary) with these fields, and wait for the next attempt.
    Retry(RetryLogFields),
    /// Give up: error `Hit limit for retries. dropping all chunks in the buffer queue.
    /// retry_times=<retry_times> records=…`; every queued chunk leaves the queue (sluice: to the
    /// backup directory). The retry state is already cleared.
    GiveUp {
        /// `retry_times=` of the give-up log.
        retry_times: u64,
    },
}

/// The output-wide retry slot: no state while flushes succeed, one [`RetryState`] while they
/// fail. It reproduces the sequence Fluentd's output runs around the state, so flush workers
/// (behind one mutex) only report outcomes.
pub struct OutputRetry {
    policy: RetryPolicy,
    state: Option<RetryState>,
    make_rng: fn() -> Box<dyn RandomSource>,
}

impl fmt::Debug for OutputRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputRetry")
            .field("policy", &self.policy)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The production random source for each new retry state.
fn entropy_rng() -> Box<dyn RandomSource> {
    Box::new(SplitMix64::from_entropy())
}

impl OutputRetry {
    /// An output that is not retrying, with entropy-seeded randomization.
    pub fn new(policy: RetryPolicy) -> OutputRetry {
        OutputRetry::with_rng(policy, entropy_rng)
    }

    /// [`OutputRetry::new`] with a chosen random source for every state it creates.
    pub fn with_rng(policy: RetryPolicy, make_rng: fn() -> Box<dyn RandomSource>) -> OutputRetry {
        OutputRetry {
            policy,
            state: None,
            make_rng,
        }
    }

    /// The policy states are created with.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The current retry state, if the output is retrying.
    pub fn state(&self) -> Option<&RetryState> {
        self.state.as_ref()
    }

    /// Whether the output is in retry state (emits then do not wake flush workers).
    pub fn is_retrying(&self) -> bool {
        self.state.is_some()
    }

    /// When the next retry is due, while retrying.
    pub fn next_time(&self) -> Option<EventTime> {
        self.state.as_ref().map(RetryState::next_time)
    }

    /// Whether a flush worker may write a chunk at `now`: not retrying, or the retry is due.
    pub fn may_flush(&self, now: EventTime) -> bool {
        self.state.as_ref().is_none_or(|s| s.is_due(now))
    }

    /// Whether a write starting at `now` goes to the secondary (decided before the write, as
    /// Fluentd's `try_flush` does).
    pub fn should_use_secondary(&self, now: EventTime) -> bool {
        self.state
            .as_ref()
            .is_some_and(|s| s.should_use_secondary(now))
    }

    /// A flush (or a delayed commit that timed out) failed at `now`. Creates the state on the
    /// first failure, otherwise updates it ([`RetryState::on_failure`]); then gives up if the
    /// limit is reached, clearing the state.
    pub fn failed(&mut self, now: EventTime) -> FailureOutcome {
        let state = match &mut self.state {
            Some(state) => {
                state.on_failure(now);
                state
            }
            None => self.state.insert(RetryState::with_random(
                self.policy.clone(),
                now,
                (self.make_rng)(),
            )),
        };
        if state.limit_reached() {
            let retry_times = state.steps();
            self.state = None;
            FailureOutcome::GiveUp { retry_times }
        } else {
            FailureOutcome::Retry(state.log_fields())
        }
    }

    /// A write succeeded: clears the retry state. Returns whether there was one, i.e. whether to
    /// warn `retry succeeded.` (or `retry succeeded by secondary.` when the secondary wrote).
    pub fn succeeded(&mut self) -> bool {
        self.state.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::config::{ChunkKeys, OutputDefaults};
    use crate::config::parser::parse_str;
    use crate::time::{Clock, FakeClock};

    /// 2016-04-13 18:33:31 -0700, the first failure of Fluentd's tests.
    const T0: i64 = 1_460_597_611;
    const EPS: f64 = 1e-6;

    /// A policy from `<buffer>` parameters, read by the real configuration code.
    fn policy(params: &str, has_secondary: bool) -> RetryPolicy {
        let text = format!("<match **>\n<buffer>\n{params}\n</buffer>\n</match>\n");
        let root = parse_str(&text, "t.conf", ".".into()).unwrap();
        let m = &root.elements[0];
        let b = m.elements.iter().find(|e| e.name == "buffer").unwrap();
        let defaults = OutputDefaults {
            chunk_keys: ChunkKeys::default(),
            buffer_type: "memory",
            timekey: None,
            chunk_limit_size: None,
            flush_at_shutdown: None,
            plugin: "null",
        };
        let cfg = BufferConfig::from_section(b, m, &defaults).unwrap();
        RetryPolicy::from_config(&cfg, has_secondary)
    }

    fn no_random() -> Box<dyn RandomSource> {
        Box::new(|| panic!("randomization is off"))
    }

    fn offset(t: EventTime) -> f64 {
        (to_nanos(t) - T0 as i128 * NANOS) as f64 / 1e9
    }

    #[derive(Debug)]
    struct Attempt {
        at: f64,
        secondary: bool,
        retry_times: u64,
    }

    #[derive(Debug)]
    struct Run {
        attempts: Vec<Attempt>,
        /// (offset, retry_times) of the give-up.
        gave_up: Option<(f64, u64)>,
        retry: OutputRetry,
    }

    /// A flush worker against a destination that always fails: the first write fails at T0;
    /// every later write happens as soon as the retry is due (exactly at `next_time`, or at once if
    /// that is already past), on the side the state picks. Stops at give-up or after `max`
    /// attempts.
    fn run_failing(policy: RetryPolicy, max: usize) -> Run {
        let clock = FakeClock::at(T0);
        let mut retry = OutputRetry::with_rng(policy, no_random);
        let mut attempts = Vec::new();
        while attempts.len() < max {
            let now = clock.now();
            assert!(retry.may_flush(now));
            let secondary = retry.should_use_secondary(now);
            match retry.failed(now) {
                FailureOutcome::Retry(fields) => {
                    attempts.push(Attempt {
                        at: offset(now),
                        secondary,
                        retry_times: fields.retry_times,
                    });
                    let next = retry.next_time().unwrap();
                    assert!(!retry.may_flush(now) || next <= now);
                    if next > now {
                        clock.set(next);
                    }
                }
                FailureOutcome::GiveUp { retry_times } => {
                    attempts.push(Attempt {
                        at: offset(now),
                        secondary,
                        retry_times,
                    });
                    assert!(!retry.is_retrying());
                    return Run {
                        attempts,
                        gave_up: Some((offset(now), retry_times)),
                        retry,
                    };
                }
            }
        }
        Run {
            attempts,
            gave_up: None,
            retry,
        }
    }

    fn assert_times(run: &Run, expected: &[f64]) {
        let got: Vec<f64> = run.attempts.iter().map(|a| a.at).collect();
        assert_eq!(got.len(), expected.len(), "attempts {got:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() < EPS,
                "attempts {got:?}, expected {expected:?}"
            );
        }
        for (i, a) in run.attempts.iter().enumerate() {
            assert_eq!(a.retry_times, i as u64, "{a:?}");
        }
    }

    fn pow2_minus_1(upto: u32) -> Vec<f64> {
        (1..=upto).map(|k| (2f64).powi(k as i32) - 1.0).collect()
    }

    fn assert_gave_up(run: &Run, at: f64, retry_times: u64) {
        let (g, r) = run.gave_up.expect("gave up");
        assert!((g - at).abs() < EPS, "gave up at {g}");
        assert_eq!(r, retry_times);
    }

    #[test]
    fn scenario_81_periodic_max_times_2() {
        let run = run_failing(
            policy(
                "retry_type periodic\nretry_wait 1s\nretry_max_times 2\nretry_randomize false",
                false,
            ),
            100,
        );
        assert_times(&run, &[0.0, 1.0, 2.0]);
        assert_gave_up(&run, 2.0, 2);
    }

    #[test]
    fn scenario_83_exponential_timeout_3600() {
        let p = policy("retry_timeout 3600\nretry_randomize false", false);
        let mut expected = vec![0.0];
        expected.extend(pow2_minus_1(11));
        expected.push(3600.0);
        let run = run_failing(p.clone(), 100);
        assert_eq!(run.attempts.len(), 13);
        assert_times(&run, &expected);
        assert_gave_up(&run, 3600.0, 12);

        // The wait scheduled after the attempt at +2047 is 1553 s (capped at timeout_at).
        let mut s = RetryState::with_random(p, EventTime::new(T0, 0), no_random());
        while offset(s.next_time()) < 2047.0 {
            let now = s.next_time();
            s.on_failure(now);
        }
        assert!((offset(s.next_time()) - 2047.0).abs() < EPS);
        let now = s.next_time();
        s.on_failure(now);
        assert!((offset(s.next_time()) - offset(now) - 1553.0).abs() < EPS);
        assert!(!s.limit_reached());
    }

    #[test]
    fn scenario_84_exponential_max_times_5() {
        let run = run_failing(
            policy("retry_max_times 5\nretry_randomize false", false),
            100,
        );
        assert_times(&run, &[0.0, 1.0, 3.0, 7.0, 15.0, 31.0]);
        assert_gave_up(&run, 31.0, 5);
    }

    #[test]
    fn scenario_86_periodic_timeout_120() {
        let run = run_failing(
            policy(
                "retry_type periodic\nretry_wait 30\nretry_timeout 120\nretry_randomize false",
                false,
            ),
            100,
        );
        assert_times(&run, &[0.0, 30.0, 60.0, 90.0, 120.0]);
        assert_gave_up(&run, 120.0, 4);

        // The wall-clock stamps of the reference: first failure 18:33:31 -0700.
        let zone = Zone::Fixed(-7 * 3600);
        let mut s = RetryState::with_random(
            policy(
                "retry_type periodic\nretry_wait 30\nretry_timeout 120\nretry_randomize false",
                false,
            ),
            EventTime::new(T0, 0),
            no_random(),
        );
        let mut stamps = vec![s.log_fields().next_retry_time_text(&zone)];
        while !s.limit_reached() {
            let now = s.next_time();
            s.on_failure(now);
            if !s.limit_reached() {
                stamps.push(s.log_fields().next_retry_time_text(&zone));
            }
        }
        assert_eq!(
            stamps,
            [
                "2016-04-13 18:34:01 -0700",
                "2016-04-13 18:34:31 -0700",
                "2016-04-13 18:35:01 -0700",
                "2016-04-13 18:35:31 -0700",
            ]
        );
        assert_eq!(
            zone.strftime(s.next_time(), "%H:%M:%S"),
            "18:35:31",
            "give-up time"
        );
    }

    #[test]
    fn scenario_87_periodic_max_times_10() {
        let run = run_failing(
            policy(
                "retry_type periodic\nretry_wait 3\nretry_max_times 10\nretry_randomize false",
                false,
            ),
            100,
        );
        let expected: Vec<f64> = (0..=10).map(|i| 3.0 * i as f64).collect();
        assert_times(&run, &expected);
        assert_gave_up(&run, 30.0, 10);
    }

    #[test]
    fn scenario_88_max_times_0_gives_up_at_once() {
        let run = run_failing(
            policy("retry_max_times 0\nretry_randomize false", false),
            100,
        );
        assert_times(&run, &[0.0]);
        assert_gave_up(&run, 0.0, 0);
    }

    #[test]
    fn scenario_89_forever_ignores_timeout_and_max_times() {
        for secondary in [false, true] {
            let run = run_failing(
                policy(
                    "retry_forever true\nretry_timeout 3600\nretry_max_times 10\nretry_randomize false",
                    secondary,
                ),
                16,
            );
            assert!(run.gave_up.is_none());
            assert_eq!(run.attempts.len(), 16);
            assert!(run.attempts.last().unwrap().at > 3600.0);
            assert!(run.attempts.iter().all(|a| !a.secondary));
            let s = run.retry.state().unwrap();
            assert!(s.steps() > 10);
            assert_eq!(s.steps(), 15);
            assert!(s.secondary_transition_at().is_none());
            // Uncapped: the next wait is 2^15 s, past timeout_at.
            assert!((offset(s.next_time()) - (32767.0 + 32768.0)).abs() < EPS);
        }
    }

    #[test]
    fn scenario_91_secondary_switch_at_48() {
        // Exponential wait 1, timeout 60, secondary: primary attempts t0, +1, +3, +7, +15, +31,
        // then the write at +48 (0.8 x 60) goes to the secondary.
        let p = policy(
            "retry_type exponential_backoff\nretry_wait 1\nretry_timeout 60\nretry_randomize false",
            true,
        );
        let run = run_failing(p.clone(), 7);
        assert_times(&run, &[0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 48.0]);
        let sides: Vec<bool> = run.attempts.iter().map(|a| a.secondary).collect();
        assert_eq!(sides, [false, false, false, false, false, false, true]);

        // The secondary succeeds there: "retry succeeded by secondary.", state cleared.
        let mut retry = run.retry;
        assert!(retry.succeeded());
        assert!(!retry.is_retrying());
        assert!(!retry.succeeded());

        // The secondary fails too: backoff restarts (+49, +51, +55), then +60 and give-up.
        let run = run_failing(p, 100);
        assert_times(
            &run,
            &[0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 48.0, 49.0, 51.0, 55.0, 60.0],
        );
        assert!(run.attempts[6..].iter().all(|a| a.secondary));
        assert_gave_up(&run, 60.0, 10);

        // Periodic wait 3, timeout 60: attempts every 3 s, the one at +48 is the first on the
        // secondary.
        let run = run_failing(
            policy(
                "retry_type periodic\nretry_wait 3\nretry_timeout 60\nretry_randomize false",
                true,
            ),
            100,
        );
        let first_secondary = run.attempts.iter().find(|a| a.secondary).unwrap();
        assert!((first_secondary.at - 48.0).abs() < EPS);
        assert!(run
            .attempts
            .iter()
            .all(|a| a.secondary == (a.at >= 48.0 - EPS)));
        assert_gave_up(&run, 60.0, 20);
    }

    #[test]
    fn scenario_92_max_times_with_secondary() {
        let p = policy("retry_max_times 10\nretry_randomize false", true);
        assert!((p.secondary_budget() - 1023.0).abs() < EPS);
        let run = run_failing(p, 100);
        let mut expected = vec![0.0];
        expected.extend(pow2_minus_1(9));
        expected.push(818.4);
        assert_times(&run, &expected);
        assert!(run.attempts[..10].iter().all(|a| !a.secondary));
        assert!(run.attempts[10].secondary);
        assert_gave_up(&run, 818.4, 10);
    }

    #[test]
    fn scenario_93_defaults_72h() {
        let p = policy("retry_randomize false", false);
        assert_eq!(p.timeout, 259_200.0);
        let run = run_failing(p, 100);
        let mut expected = vec![0.0];
        expected.extend(pow2_minus_1(17));
        expected.push(259_200.0);
        assert_eq!(expected.len(), 19);
        assert_times(&run, &expected);
        assert_gave_up(&run, 259_200.0, 18);
    }

    /// Fluentd's own scenario tables (test_retry_state.rb): offsets of the retries (after the
    /// first failure) and whether each went to the secondary.
    #[test]
    fn fluentd_scenario_tables_with_secondary() {
        let table = |params: &str, secondary: bool| {
            let run = run_failing(policy(params, secondary), 1000);
            assert!(run.gave_up.is_some());
            run.attempts[1..]
                .iter()
                .map(|a| (a.at, a.secondary))
                .collect::<Vec<_>>()
        };
        let check = |got: Vec<(f64, bool)>, want: &[(f64, bool)]| {
            assert_eq!(got.len(), want.len(), "{got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!((g.0 - w.0).abs() < EPS && g.1 == w.1, "{got:?}");
            }
        };

        // Timeout 100 with secondary: 1, 3, 7, 15, 31, 63 primary; 80, 81, 83, 87, 95, 100.
        check(
            table("retry_timeout 100\nretry_randomize false", true),
            &[
                (1.0, false),
                (3.0, false),
                (7.0, false),
                (15.0, false),
                (31.0, false),
                (63.0, false),
                (80.0, true),
                (81.0, true),
                (83.0, true),
                (87.0, true),
                (95.0, true),
                (100.0, true),
            ],
        );

        // Wait 2, base 3, timeout 1000 with secondary.
        check(
            table(
                "retry_timeout 1000\nretry_wait 2\nretry_exponential_backoff_base 3\nretry_randomize false",
                true,
            ),
            &[
                (2.0, false),
                (8.0, false),
                (26.0, false),
                (80.0, false),
                (242.0, false),
                (728.0, false),
                (800.0, true),
                (802.0, true),
                (808.0, true),
                (826.0, true),
                (880.0, true),
                (1000.0, true),
            ],
        );

        // Defaults with secondary: the switch at 207360 (0.8 x 72 h), then 1, 2, 4, … again.
        let got = table("retry_randomize false", true);
        let mut want: Vec<(f64, bool)> = pow2_minus_1(17).into_iter().map(|t| (t, false)).collect();
        for t in [
            207_360.0, 207_361.0, 207_363.0, 207_367.0, 207_375.0, 207_391.0, 207_423.0, 207_487.0,
            207_615.0, 207_871.0, 208_383.0, 209_407.0, 211_455.0, 215_551.0, 223_743.0, 240_127.0,
            259_200.0,
        ] {
            want.push((t, true));
        }
        check(got, &want);

        // retry_max_times 30 and retry_max_interval 3600 with secondary: budget 68895 s, the
        // switch at 55116, give-up at step 30.
        let got = table(
            "retry_max_times 30\nretry_max_interval 3600\nretry_randomize false",
            true,
        );
        assert_eq!(got.len(), 30);
        let mut want: Vec<(f64, bool)> = pow2_minus_1(12).into_iter().map(|t| (t, false)).collect();
        for k in 13..=26 {
            want.push((4095.0 + 3600.0 * (k - 12) as f64, false));
        }
        want.extend([
            (55_116.0, true),
            (55_117.0, true),
            (55_119.0, true),
            (55_123.0, true),
        ]);
        check(got, &want);
    }

    #[test]
    fn failure_before_next_time_does_not_step() {
        let p = policy("retry_randomize false", true);
        let t0 = EventTime::new(T0, 0);
        let mut s = RetryState::with_random(p, t0, no_random());
        assert!((offset(s.next_time()) - 1.0).abs() < EPS);
        assert!(!s.is_due(EventTime::new(T0, 500_000_000)));

        // Another worker fails at +0.5: no step, rescheduled from now with the same exponent.
        assert!(!s.on_failure(EventTime::new(T0, 500_000_000)));
        assert_eq!(s.steps(), 0);
        assert!((offset(s.next_time()) - 1.5).abs() < EPS);

        // Due exactly at next_time: steps.
        let now = s.next_time();
        assert!(s.is_due(now));
        assert!(s.on_failure(now));
        assert_eq!(s.steps(), 1);
        assert!((offset(s.next_time()) - 3.5).abs() < EPS);

        // A failure just before next_time again does not count.
        let early = from_nanos(to_nanos(s.next_time()) - 1);
        assert!(!s.on_failure(early));
        assert_eq!(s.steps(), 1);

        // Through OutputRetry: the failing writer early does not burn a retry.
        let mut retry = OutputRetry::with_rng(
            policy("retry_max_times 1\nretry_randomize false", false),
            no_random,
        );
        assert!(matches!(retry.failed(t0), FailureOutcome::Retry(f) if f.retry_times == 0));
        let early = EventTime::new(T0, 999_999_999);
        assert!(!retry.may_flush(early));
        assert!(matches!(retry.failed(early), FailureOutcome::Retry(f) if f.retry_times == 0));
        let now = retry.next_time().unwrap();
        assert_eq!(retry.failed(now), FailureOutcome::GiveUp { retry_times: 1 });
    }

    #[test]
    fn first_wait_is_never_randomized_and_later_waits_are() {
        let p = policy("retry_wait 10", false);
        assert!(p.randomize);
        let t0 = EventTime::new(T0, 0);

        // r = 0 gives the lowest factor, 0.875.
        let mut s = RetryState::with_random(p.clone(), t0, Box::new(|| 0.0));
        assert!((offset(s.next_time()) - 10.0).abs() < EPS);
        let now = s.next_time();
        s.on_failure(now);
        assert!((offset(s.next_time()) - (10.0 + 20.0 * 0.875)).abs() < EPS);

        // r just below 1 stays just below the 1.125 factor.
        // (Closer to 1 than ~1e-15 the float sum itself rounds up to 1.125x, in Fluentd too.)
        let below_one = 0.999_999;
        let mut s = RetryState::with_random(p.clone(), t0, Box::new(move || below_one));
        assert!((offset(s.next_time()) - 10.0).abs() < EPS);
        let now = s.next_time();
        s.on_failure(now);
        let wait = offset(s.next_time()) - 10.0;
        assert!(wait < 20.0 * 1.125 && wait > 20.0 * 1.124, "{wait}");

        // A reschedule before next_time is randomized too.
        let mut s = RetryState::with_random(p.clone(), t0, Box::new(|| 0.0));
        s.on_failure(EventTime::new(T0 + 1, 0));
        assert!((offset(s.next_time()) - (1.0 + 10.0 * 0.875)).abs() < EPS);

        // The production generator stays in [0.875x, 1.125x); the first wait stays exact.
        for seed in 0..50u64 {
            let mut s = RetryState::with_random(p.clone(), t0, Box::new(SplitMix64::new(seed)));
            assert_eq!(s.next_time(), EventTime::new(T0 + 10, 0));
            for _ in 0..8 {
                let now = s.next_time();
                let k = s.steps() + 1;
                s.on_failure(now);
                let wait = (to_nanos(s.next_time()) - to_nanos(now)) as f64 / 1e9;
                let x = p.interval(k);
                assert!(
                    wait >= x * 0.875 - 1e-6 && wait < x * 1.125,
                    "{wait} vs {x}"
                );
            }
        }
        let mut g = SplitMix64::from_entropy();
        let samples: Vec<f64> = (0..10_000).map(|_| g.next_unit()).collect();
        assert!(samples.iter().all(|r| (0.0..1.0).contains(r)));
        assert!(samples.iter().any(|r| *r < 0.1) && samples.iter().any(|r| *r > 0.9));
    }

    #[test]
    fn max_interval_caps_before_randomization() {
        // Fluentd's test: wait 0.1, forever, max_interval 100; `now` stays at the start.
        let p = policy(
            "retry_wait 0.1\nretry_timeout 300\nretry_forever true\nretry_max_interval 100\nretry_randomize false",
            false,
        );
        let t0 = EventTime::new(T0, 0);
        let mut s = RetryState::with_random(p.clone(), t0, no_random());
        assert!((offset(s.next_time()) - 0.1).abs() < EPS);
        for i in 1..10 {
            s.step(t0);
            assert_eq!(s.steps(), i);
            assert!((offset(s.next_time()) - 0.1 * 2f64.powi(i as i32)).abs() < EPS);
        }
        s.step(t0);
        assert!((offset(s.next_time()) - 100.0).abs() < EPS);
        s.step(t0);
        assert!((offset(s.next_time()) - 100.0).abs() < EPS);

        // Randomization comes after the cap, so a wait can exceed max_interval by < 12.5 %.
        let mut p = p;
        p.randomize = true;
        let below_one = 0.999_999;
        let mut s = RetryState::with_random(p, t0, Box::new(move || below_one));
        for _ in 0..12 {
            s.step(t0);
        }
        let wait = offset(s.next_time());
        assert!(wait > 100.0 && wait < 112.5, "{wait}");

        // The first wait is retry_wait even when it is above retry_max_interval.
        let p = policy(
            "retry_wait 5\nretry_max_interval 2\nretry_randomize false",
            false,
        );
        let mut s = RetryState::with_random(p.clone(), t0, no_random());
        assert!((offset(s.next_time()) - 5.0).abs() < EPS);
        let now = s.next_time();
        s.on_failure(now);
        assert!((offset(s.next_time()) - 7.0).abs() < EPS);
        assert_eq!(p.interval(0), 2.0);
        assert_eq!(p.interval(40), 2.0);
    }

    #[test]
    fn overflowing_power_uses_largest_finite_value() {
        let p = policy("retry_forever true\nretry_randomize false", false);
        let largest = 2f64.powi(1023);
        assert_eq!(p.interval(1023), largest);
        assert_eq!(p.interval(1024), largest);
        assert_eq!(p.interval(5000), largest);
        assert_eq!(p.interval(u64::MAX), largest);

        // wait 10: 10 x 2^1021 overflows already, so 10 x 2^1020.
        let p10 = policy(
            "retry_wait 10\nretry_forever true\nretry_randomize false",
            false,
        );
        assert_eq!(p10.interval(1023), 10.0 * 2f64.powi(1020));
        assert_eq!(p10.interval(3000), 10.0 * 2f64.powi(1020));

        // With a cap, infinity is simply capped.
        let capped = policy("retry_max_interval 60\nretry_randomize false", false);
        assert_eq!(capped.interval(5000), 60.0);

        // Stepping that far neither panics nor loses the order of times.
        let t0 = EventTime::new(T0, 0);
        let mut s = RetryState::with_random(p, t0, no_random());
        for _ in 0..1030 {
            s.step(t0);
        }
        assert_eq!(s.steps(), 1030);
        assert!(s.next_time() > EventTime::new(T0 + 1_000_000_000, 0));
        assert!(!s.limit_reached());
        let _ = s.log_fields();

        // A huge retry_max_times does not make the secondary budget loop forever.
        let mut huge = policy("retry_randomize false", true);
        huge.max_times = Some(u64::MAX);
        assert_eq!(huge.secondary_budget(), 259_200.0);
        huge.base = 0.5;
        assert!((huge.secondary_budget() - 2.0).abs() < EPS);
        // Constant (capped) intervals with a timeout far away: the tail is added at once.
        huge.base = 2.0;
        huge.max_interval = Some(0.001);
        huge.timeout = 1e300;
        huge.max_times = Some(4_000_000_000);
        assert!((huge.secondary_budget() - 4_000_000.0).abs() < 1e-3);
    }

    #[test]
    fn periodic_secondary_budget_with_max_times() {
        let p = policy(
            "retry_type periodic\nretry_wait 3\nretry_timeout 100\nretry_max_times 5\nretry_randomize false",
            true,
        );
        assert_eq!(p.secondary_budget(), 15.0);
        let s = RetryState::with_random(p, EventTime::new(T0, 0), no_random());
        assert!((offset(s.secondary_transition_at().unwrap()) - 12.0).abs() < EPS);
        assert!((offset(s.timeout_at()) - 100.0).abs() < EPS);
        assert!(!s.should_use_secondary(EventTime::new(T0 + 11, 999_999_999)));
        assert!(s.should_use_secondary(EventTime::new(T0 + 12, 0)));
        assert!(!s.on_secondary());

        let p = policy("retry_randomize false", false);
        let s = RetryState::with_random(p, EventTime::new(T0, 0), no_random());
        assert!(s.secondary_transition_at().is_none());
        assert!(!s.should_use_secondary(EventTime::new(T0 + 1_000_000, 0)));
    }

    #[test]
    fn timeout_shorter_than_wait() {
        // The first wait is not capped; the step after it schedules at timeout_at (already past),
        // so the worker retries at once and gives up.
        let run = run_failing(
            policy(
                "retry_type periodic\nretry_wait 10\nretry_timeout 5\nretry_randomize false",
                false,
            ),
            100,
        );
        assert_times(&run, &[0.0, 10.0, 10.0]);
        assert_gave_up(&run, 10.0, 2);
    }

    #[test]
    fn give_up_clears_and_a_new_failure_starts_over() {
        // Flush workers share the slot behind a mutex.
        fn shareable<T: Send>() {}
        shareable::<OutputRetry>();
        shareable::<std::sync::Mutex<OutputRetry>>();
        let p = policy("retry_max_times 1\nretry_randomize false", false);
        let clock = FakeClock::at(T0);
        let mut retry = OutputRetry::with_rng(p, no_random);
        assert!(retry.may_flush(clock.now()));
        assert!(!retry.succeeded());
        assert!(matches!(
            retry.failed(clock.now()),
            FailureOutcome::Retry(_)
        ));
        clock.advance(1.0);
        assert_eq!(
            retry.failed(clock.now()),
            FailureOutcome::GiveUp { retry_times: 1 }
        );
        assert!(!retry.is_retrying());
        assert!(retry.next_time().is_none());
        clock.advance(100.0);
        let FailureOutcome::Retry(f) = retry.failed(clock.now()) else {
            panic!("new episode");
        };
        assert_eq!(f.retry_times, 0);
        assert_eq!(retry.state().unwrap().start(), EventTime::new(T0 + 101, 0));
        assert_eq!(f.next_retry_time, T0 + 102);
    }

    #[test]
    fn log_fields_round_half_up() {
        let zone = Zone::utc();
        let p = policy("retry_wait 0.5\nretry_randomize false", false);
        let s = RetryState::with_random(p, EventTime::new(T0, 0), no_random());
        assert_eq!(
            s.log_fields(),
            RetryLogFields {
                retry_times: 0,
                next_retry_time: T0 + 1
            }
        );
        assert_eq!(
            s.log_fields().text(&zone),
            "retry_times=0 next_retry_time=2016-04-14 01:33:32 +0000"
        );
        let p = policy("retry_wait 0.499\nretry_randomize false", false);
        let s = RetryState::with_random(p, EventTime::new(T0, 0), no_random());
        assert_eq!(s.log_fields().next_retry_time, T0);
    }
}
