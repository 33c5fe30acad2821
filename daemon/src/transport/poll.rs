//! The request-queue worker's adaptive polling window.
//!
//! After a pass over the request queue the worker keeps looking at the ring for a while (the
//! window) before it re-enables the driver's notifications and sleeps on the kick eventfd. The
//! window follows what happened to the next request:
//! - it came within the window: the window was right, it stays;
//! - it came after the worker went to sleep, soon enough that a longer window might have
//!   caught it: the window grows (at least doubling, at least to the wait seen, at most to the
//!   maximum);
//! - it came much later than the maximum: polling could not have caught it and only burned
//!   CPU, so the window halves, and drops to zero below [`START`];
//! - it came after a window that already was the maximum: the window closes and stays closed
//!   for a few requests (a back-off that doubles, up to [`MAX_BACKOFF`], each time a
//!   full window catches nothing, and resets when a window catches a request). This is what
//!   stops a worker that shares a core with the spinning vCPU from holding the guest up: the
//!   vCPU only sends its next request once the poll gives the core back, every poll misses,
//!   and polling then costs more than the wake-up it saves;
//! - the worker lost its CPU while polling (preempted: something else wants the core, maybe
//!   the very vCPU that is to send the next request): the window halves too.
//!
//! This is the rule QEMU's AioContext applies to its `poll-max-ns` window (grow when a wait was
//! longer than the window but shorter than the maximum, shrink when it was longer than the
//! maximum), with differences measured necessary here. The wait the worker sees after a sleep
//! includes its own wake-up (runnable but not yet running), which says nothing about the guest
//! and on the busy host of docs/BENCHMARKS.md is 26 us at the median and 315 us at p99: with
//! QEMU's rule a guest that sends every 5 us never got a window there. The worker cannot
//! subtract it (its run delay is in /proc/thread-self/schedstat, which its seccomp filter may
//! not open), so a miss counts as "soon" up to [`GROW_LIMIT`] times the maximum, and a
//! miss after a window that already was the maximum shrinks it instead. Growth jumps to the observed wait, and a single long wait (a guest timer tick, a
//! preempted vCPU) halves the window rather than resetting it. An idle guest costs nothing:
//! the window only runs after a pass, and a worker whose guest stops sending sleeps after at
//! most one window.
//!
//! The window is a pure state machine (no clock): the worker feeds it what it measured.

use std::time::Duration;

/// The smallest non-zero window (below it a shrinking window drops to zero).
pub const START: Duration = Duration::from_micros(4);
/// A miss up to this many times the maximum after the previous request grows the window (the
/// wait includes the worker's own wake-up).
pub const GROW_LIMIT: u32 = 4;

/// Longest back-off, in misses: after this many polls at the maximum that caught nothing in a
/// row, the window stays closed for this many requests before it may open again.
pub const MAX_BACKOFF: u32 = 64;

/// The adaptive polling window, bounded by a maximum (zero: never polls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    current: Duration,
    /// Misses to sit out (window closed) before the window may grow again.
    backoff: u32,
    /// The next back-off: doubles each time a full window caught nothing, back to 1 when a
    /// window catches a request.
    penalty: u32,
}

impl PollWindow {
    /// A window that starts closed and grows up to `max`.
    pub fn new(max: Duration) -> Self {
        PollWindow {
            max,
            current: Duration::ZERO,
            backoff: 0,
            penalty: 1,
        }
    }

    /// How long the worker polls after its next pass.
    pub fn current(&self) -> Duration {
        self.current
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The next request came after the worker had gone to sleep, `waited` after the previous
    /// one (the worker's wake-up included).
    pub fn missed(&mut self, waited: Duration) {
        if self.max.is_zero() {
            return;
        }
        if self.current >= self.max && waited > self.max {
            // A whole maximum window caught nothing: the guest's gap is longer, or the polling
            // itself held it up (a worker spinning on the core of the vCPU that is to send
            // the next request). Close and sit out a few requests before trying again, longer
            // each time this repeats.
            self.current = Duration::ZERO;
            self.backoff = self.penalty;
            self.penalty = self.penalty.saturating_mul(2).min(MAX_BACKOFF);
            return;
        }
        if waited > self.max.saturating_mul(GROW_LIMIT) {
            self.shrink();
            return;
        }
        if self.backoff > 0 {
            self.backoff -= 1;
            return;
        }
        let doubled = self.current.saturating_mul(2);
        self.current = doubled.max(START).max(waited).min(self.max);
    }

    /// A poll caught a request: the window is worth its CPU.
    pub fn caught(&mut self) {
        self.penalty = 1;
    }

    /// The worker lost its CPU while polling.
    pub fn preempted(&mut self) {
        self.shrink();
    }

    fn shrink(&mut self) {
        let half = self.current / 2;
        self.current = if half < START { Duration::ZERO } else { half };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn starts_closed_and_grows_on_each_miss() {
        let mut w = PollWindow::new(us(50));
        assert_eq!(w.current(), Duration::ZERO);
        // A short wait opens the window at its smallest size.
        w.observe_all(&[1]);
        assert_eq!(w.current(), START);
        // Each later miss at least doubles it, at least to the wait.
        w.missed(us(3));
        assert_eq!(w.current(), us(8));
        w.missed(us(30));
        assert_eq!(w.current(), us(30));
        w.missed(us(31));
        assert_eq!(w.current(), us(50), "doubling is capped at the maximum");
        w.missed(us(50));
        assert_eq!(w.current(), us(50));
    }

    #[test]
    fn a_miss_counts_the_wake_up_as_soon() {
        // A closed window and a wait of 150 us (a 5 us gap plus the worker's wake-up on a busy
        // host): up to 4 times the maximum still opens the window, to the maximum.
        let mut w = PollWindow::new(us(50));
        w.missed(us(150));
        assert_eq!(w.current(), us(50));
        // But a miss after a full-maximum window means the gap is longer: close, and sit out
        // the next miss.
        w.missed(us(150));
        assert_eq!(w.current(), Duration::ZERO);
        w.missed(us(30));
        assert_eq!(w.current(), Duration::ZERO);
        w.missed(us(30));
        assert_eq!(w.current(), us(30));
        // A wait past 4 times the maximum always shrinks.
        w.missed(us(201));
        assert_eq!(w.current(), us(15));
        w.missed(us(200));
        assert_eq!(w.current(), us(50));
    }

    #[test]
    fn full_windows_that_catch_nothing_back_off_longer_each_time() {
        // The worker shares a core with the vCPU: the guest's next request only comes once a
        // poll has given the core back, 10 us after its end.
        let mut w = PollWindow::new(us(50));
        let mut polled = Duration::ZERO;
        let mut opened = 0;
        for _ in 0..1000 {
            if !w.current().is_zero() {
                opened += 1;
            }
            polled += w.current();
            w.missed(w.current() + us(10));
        }
        // Back-offs of 1, 2, 4, ... 64 requests: the window is open for a few percent of them.
        assert!(opened < 100, "window open for {opened} of 1000 requests");
        assert!(polled < us(50 * 100), "{polled:?}");
        // A window that catches a request resets the back-off.
        w.caught();
        let mut w2 = w;
        for _ in 0..200 {
            if !w2.current().is_zero() {
                break;
            }
            w2.missed(us(20));
        }
        assert!(!w2.current().is_zero());
    }

    #[test]
    fn waits_past_the_maximum_shrink_it_to_zero() {
        let mut w = PollWindow::new(us(64));
        w.missed(us(32));
        assert_eq!(w.current(), us(32));
        for want in [16, 8, 4, 0, 0] {
            w.missed(us(257));
            assert_eq!(w.current(), us(want));
        }
        // A wait of exactly the maximum could have been caught: it grows the window.
        w.missed(us(64));
        assert_eq!(w.current(), us(64));
        // An idle guest (one wait of hours) after a full window: closed.
        w.missed(Duration::from_secs(3600));
        assert_eq!(w.current(), Duration::ZERO);
        // Before the maximum was reached, a long wait only halves it.
        let mut w = PollWindow::new(us(64));
        w.missed(us(40));
        w.missed(Duration::from_secs(3600));
        assert_eq!(w.current(), us(20));
    }

    #[test]
    fn preemption_shrinks_it() {
        let mut w = PollWindow::new(us(50));
        w.missed(us(40));
        w.preempted();
        assert_eq!(w.current(), us(20));
        for _ in 0..3 {
            w.preempted();
        }
        assert_eq!(w.current(), Duration::ZERO);
        w.preempted();
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn zero_maximum_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        for n in [0, 1, 4, 100, 1_000_000] {
            w.missed(us(n));
            assert_eq!(w.current(), Duration::ZERO);
        }
    }

    #[test]
    fn the_window_never_exceeds_the_maximum() {
        // Deterministic pseudo-random waits and preemptions around the maximum.
        let max = us(40);
        let mut w = PollWindow::new(max);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(17) {
                w.preempted();
            } else {
                w.missed(Duration::from_nanos(x % 120_000));
            }
            assert!(w.current() <= max);
            assert!(w.current().is_zero() || w.current() >= START);
        }
    }

    /// A guest sending a request every `gap`, against a worker whose window is `window`:
    /// requests within the window are caught (no change), the others are misses.
    fn run(w: &mut PollWindow, gap: Duration, n: usize) -> usize {
        let mut misses = 0;
        for _ in 0..n {
            if gap > w.current() {
                misses += 1;
                w.missed(gap);
            }
        }
        misses
    }

    #[test]
    fn a_steady_guest_settles_on_its_gap() {
        // After one wake-up the window covers the gap and every later request is caught.
        let mut w = PollWindow::new(us(50));
        assert_eq!(run(&mut w, us(12), 100), 1);
        assert_eq!(w.current(), us(12));
        // The guest speeds up: the window stays (it still catches everything).
        assert_eq!(run(&mut w, us(3), 100), 0);
        // It slows down far past the maximum: the window closes after a few misses.
        assert_eq!(run(&mut w, us(300), 100), 100);
        assert_eq!(w.current(), Duration::ZERO);
    }

    #[test]
    fn a_guest_just_past_the_maximum_gets_little_polling() {
        // Requests every 100 us, a 50 us maximum: every request is a miss; after each full
        // window the back-off grows, so polling costs less and less.
        let mut w = PollWindow::new(us(50));
        let mut polled = Duration::ZERO;
        for _ in 0..1000 {
            polled += w.current();
            w.missed(us(100));
        }
        assert!(polled <= us(50 * 1000) / 10, "{polled:?}");
    }

    #[test]
    fn a_slow_guest_gets_no_window() {
        // Requests every 300 us with a 50 us maximum: polling would only burn CPU.
        let mut w = PollWindow::new(us(50));
        for _ in 0..10 {
            w.missed(us(300));
            assert_eq!(w.current(), Duration::ZERO);
        }
    }

    impl PollWindow {
        fn observe_all(&mut self, waits_us: &[u64]) {
            for &n in waits_us {
                self.missed(us(n));
            }
        }
    }
}
