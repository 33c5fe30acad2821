//! The request-queue worker's adaptive polling window.
//!
//! After a pass over the request queue the worker keeps looking at the ring for a while (the
//! window) before it re-enables the driver's notifications and sleeps on the kick eventfd. The
//! window follows how long the worker actually waited for the next request, measured from the
//! end of one pass to the start of the next (polling time plus sleeping time plus the wake-up):
//! - the request came within the window: the window was right, it stays;
//! - it came after the window but within the maximum: a longer window would have caught it
//!   without a wake-up, so the window grows (at least doubling, and at least to the wait seen);
//! - it came after the maximum: polling could not have caught it and only burned CPU, so the
//!   window halves, and drops to zero below [`START`].
//!
//! This is the rule QEMU's AioContext applies to its `poll-max-ns` window (grow when a wait was
//! longer than the window but shorter than the maximum, shrink when it was longer than the
//! maximum), with two differences measured worthwhile here: growth jumps to the observed wait,
//! and a single long wait (a guest timer tick, a preempted vCPU) halves the window rather than
//! resetting it. An idle guest costs nothing: the window only runs after a pass, and a worker
//! whose guest stops sending sleeps after at most one window.
//!
//! The window is a pure state machine (no clock): the worker feeds it the waits it measured.

use std::time::Duration;

/// The smallest non-zero window: a wait-up-to-now that is shorter than this is not worth a
/// window of its own (below it a shrinking window drops to zero).
pub const START: Duration = Duration::from_micros(4);

/// The adaptive polling window, bounded by a maximum (zero: never polls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    current: Duration,
}

impl PollWindow {
    /// A window that starts closed and grows up to `max`.
    pub fn new(max: Duration) -> Self {
        PollWindow {
            max,
            current: Duration::ZERO,
        }
    }

    /// How long the worker polls after its next pass.
    pub fn current(&self) -> Duration {
        self.current
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The worker waited `waited` between the end of a pass and the next request.
    pub fn observe(&mut self, waited: Duration) {
        if self.max.is_zero() || waited <= self.current {
            return;
        }
        if waited > self.max {
            let half = self.current / 2;
            self.current = if half < START { Duration::ZERO } else { half };
            return;
        }
        let doubled = self.current.saturating_mul(2);
        self.current = doubled.max(START).max(waited).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn starts_closed_and_grows_to_the_wait_seen() {
        let mut w = PollWindow::new(us(50));
        assert_eq!(w.current(), Duration::ZERO);
        // A short wait opens the window at its smallest size.
        w.observe(us(1));
        assert_eq!(w.current(), START);
        // Waits within the window leave it alone.
        w.observe(us(3));
        assert_eq!(w.current(), START);
        // A longer wait within the maximum: at least double, at least the wait.
        w.observe(us(5));
        assert_eq!(w.current(), us(8));
        w.observe(us(30));
        assert_eq!(w.current(), us(30));
        w.observe(us(31));
        assert_eq!(w.current(), us(50), "doubling is capped at the maximum");
        w.observe(us(50));
        assert_eq!(w.current(), us(50));
    }

    #[test]
    fn waits_past_the_maximum_shrink_it_to_zero() {
        let mut w = PollWindow::new(us(64));
        w.observe(us(64));
        assert_eq!(w.current(), us(64));
        for want in [32, 16, 8, 4, 0, 0] {
            w.observe(us(65));
            assert_eq!(w.current(), us(want));
        }
        // A wait of exactly the maximum could have been caught: it grows the window.
        w.observe(us(64));
        assert_eq!(w.current(), us(64));
        // An idle guest (one wait of hours) costs one halving, not a reset per second.
        w.observe(Duration::from_secs(3600));
        assert_eq!(w.current(), us(32));
    }

    #[test]
    fn zero_maximum_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        for n in [0, 1, 4, 100, 1_000_000] {
            w.observe(us(n));
            assert_eq!(w.current(), Duration::ZERO);
        }
    }

    #[test]
    fn the_window_never_exceeds_the_maximum() {
        // Deterministic pseudo-random waits around the maximum.
        let max = us(40);
        let mut w = PollWindow::new(max);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.observe(Duration::from_nanos(x % 120_000));
            assert!(w.current() <= max);
            assert!(w.current().is_zero() || w.current() >= START);
        }
    }

    #[test]
    fn a_steady_guest_settles_on_its_gap() {
        // A guest that sends a request every 12 us: after a few wake-ups the window covers the
        // gap and stays (every later request is caught by polling).
        let mut w = PollWindow::new(us(50));
        let mut missed = 0;
        for _ in 0..100 {
            if w.current() < us(12) {
                missed += 1;
            }
            w.observe(us(12));
        }
        assert!(missed <= 2, "{missed} wake-ups");
        assert_eq!(w.current(), us(12));
    }

    #[test]
    fn a_slow_guest_gets_no_window() {
        // Requests every 200 us with a 50 us maximum: polling would only burn CPU.
        let mut w = PollWindow::new(us(50));
        for _ in 0..10 {
            w.observe(us(200));
            assert_eq!(w.current(), Duration::ZERO);
        }
    }
}
