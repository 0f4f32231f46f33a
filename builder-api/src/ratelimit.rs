//! Rate limits per key (webhook budgets per app id): a token bucket per key, in memory.
//!
//! The buckets live in this process only: with several replicas each enforces its own budget, so
//! the effective limit is the configured one times the replica count. That is enough for what the
//! limit is for — one noisy project (a push loop, a misconfigured mirror) must not flood the queue
//! and the store — and needs no shared state.
//!
//! Own code, not `governor`: a delivery to several apps costs all or none; governor can't refund.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};


pub struct RateLimiter {
    /// Tokens added per second; 0 disables the limit.
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_minute` tokens a minute per key on average (0: no limit), at most `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> RateLimiter {
        let per_sec = f64::from(per_minute) / 60.0;
        // A burst below 1 would refuse everything; the rate alone then sets it.
        let burst = f64::from(burst.max(1));
        RateLimiter { per_sec, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token from the bucket of every app in `apps`, all or none (a delivery reaching
    /// two apps is one delivery). Err is how long until every one of them has a token again.
    pub fn take(&self, apps: &[i64]) -> Result<(), Duration> {
        self.take_at(apps, Instant::now())
    }

    fn take_at(&self, apps: &[i64], now: Instant) -> Result<(), Duration> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = Duration::ZERO;
        let mut refilled = Vec::with_capacity(apps.len());
        for id in apps {
            let b = buckets.get(id).copied().unwrap_or(Bucket { tokens: self.burst, at: now });
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            let tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
            if tokens < 1.0 {
                wait = wait.max(Duration::from_secs_f64((1.0 - tokens) / self.per_sec));
            }
            refilled.push((*id, tokens));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        for (id, tokens) in refilled {
            buckets.insert(id, Bucket { tokens: tokens - 1.0, at: now });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(rate, burst)
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let l = limiter(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            l.take_at(&[1], t0).unwrap();
        }
        let wait = l.take_at(&[1], t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        // Another app has its own bucket.
        l.take_at(&[2], t0).unwrap();
        // One second later one token is back, not more.
        let t1 = t0 + Duration::from_secs(1);
        l.take_at(&[1], t1).unwrap();
        assert!(l.take_at(&[1], t1).is_err());
    }

    #[test]
    fn all_or_none_and_zero_disables() {
        let l = limiter(60, 1);
        let t0 = Instant::now();
        l.take_at(&[1], t0).unwrap();
        // App 1 is empty, so app 2 must not be charged for the refused delivery.
        assert!(l.take_at(&[1, 2], t0).is_err());
        l.take_at(&[2], t0).unwrap();
        let off = limiter(0, 1);
        for _ in 0..1000 {
            off.take_at(&[1], t0).unwrap();
        }
    }
}
