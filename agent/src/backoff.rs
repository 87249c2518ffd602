//! Reconnect back-off: exponential with full jitter (a uniform delay in
//! `[0, min(cap, base·2^attempt)]`), so a fleet that lost its coordinator does not come
//! back in lock-step.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, and counts an attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let frac: f64 = rand::random();
        ceiling.mul_f64(frac)
    }

    /// After a success: start again from the base.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_are_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d <= c, "delay {d:?} above its ceiling {c:?}");
            ceilings.push(c);
        }
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[3], Duration::from_secs(4));
        assert_eq!(*ceilings.last().expect("some"), Duration::from_secs(30));
        // Full jitter: many draws at the cap are spread, not all at the top.
        let mut capped = Backoff::new(Duration::from_secs(30), Duration::from_secs(30));
        let draws: Vec<_> = (0..200).map(|_| capped.next_delay()).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(20)));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_sleep_never_exceeds_the_cap_in_virtual_time() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for _ in 0..50 {
            let start = tokio::time::Instant::now();
            tokio::time::sleep(b.next_delay()).await;
            assert!(start.elapsed() <= Duration::from_secs(30));
        }
    }
}
