//! Retry spacing: exponential backoff with "equal jitter". After the n-th failed
//! attempt the next one waits a random time between half of and the whole of
//! `retry_base_ms · 2^(n-1)`, so retries of many deliveries that failed together (a
//! receiver that was down) spread out instead of arriving in waves.

use std::time::Duration;

use rand::Rng;

/// The longest single wait, whatever the configuration: one day.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// The wait before the attempt after failed attempt number `attempt` (1-based).
///
/// Invariant: `ceiling / 2 <= delay <= ceiling` with
/// `ceiling = min(base_ms · 2^(attempt-1), MAX_DELAY)`; never overflows.
pub fn retry_delay(base_ms: u64, attempt: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = ceiling_ms(base_ms, attempt);
    let floor = ceiling / 2;
    Duration::from_millis(rng.random_range(floor..=ceiling))
}

/// `min(base_ms · 2^(attempt-1), MAX_DELAY)` in milliseconds.
pub fn ceiling_ms(base_ms: u64, attempt: u32) -> u64 {
    let doublings = attempt.saturating_sub(1).min(63);
    base_ms
        .saturating_mul(1u64 << doublings)
        .min(MAX_DELAY.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stay_within_their_jitter_band() {
        let mut rng = rand::rng();
        for attempt in 1..=8u32 {
            let ceiling = 10_000u64 << (attempt - 1);
            assert_eq!(ceiling_ms(10_000, attempt), ceiling);
            for _ in 0..200 {
                let d = retry_delay(10_000, attempt, &mut rng).as_millis() as u64;
                assert!(
                    (ceiling / 2..=ceiling).contains(&d),
                    "attempt {attempt}: {d} ms outside [{}, {ceiling}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_retries() {
        let mut rng = rand::rng();
        let seen: std::collections::HashSet<u128> = (0..50)
            .map(|_| retry_delay(10_000, 3, &mut rng).as_millis())
            .collect();
        assert!(
            seen.len() > 10,
            "jitter produced only {} values",
            seen.len()
        );
    }

    #[test]
    fn huge_attempts_and_bases_are_capped_without_overflow() {
        let mut rng = rand::rng();
        assert_eq!(ceiling_ms(10_000, 1_000), MAX_DELAY.as_millis() as u64);
        assert_eq!(ceiling_ms(u64::MAX, 2), MAX_DELAY.as_millis() as u64);
        assert!(retry_delay(u64::MAX, u32::MAX, &mut rng) <= MAX_DELAY);
        assert_eq!(ceiling_ms(1, 0), 1, "attempt 0 is treated as the first");
    }
}
