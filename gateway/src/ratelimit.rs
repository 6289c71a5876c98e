use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(per_s: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(per_s),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Whether the bucket has refilled completely (it can be forgotten).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// New connections per source address: one bucket per address seen
/// recently; full buckets are forgotten, so the map holds only addresses
/// that connected in the last seconds.
#[derive(Debug)]
pub struct AddressLimiter {
    per_s: u32,
    burst: u32,
    buckets: HashMap<IpAddr, TokenBucket>,
    pruned: Instant,
}

impl AddressLimiter {
    pub fn new(per_s: u32, burst: u32) -> Self {
        Self {
            per_s,
            burst,
            buckets: HashMap::new(),
            pruned: Instant::now(),
        }
    }

    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.pruned) > Duration::from_secs(10) {
            self.buckets.retain(|_, b| !b.is_full(now));
            self.pruned = now;
        }
        let (per_s, burst) = (self.per_s, self.burst);
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(per_s, burst))
            .take(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 3);
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(150)));
    }

    #[test]
    fn addresses_are_limited_apart_and_forgotten_when_full() {
        let t0 = Instant::now();
        let mut l = AddressLimiter::new(1, 2);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert!(l.allow(a, t0) && l.allow(a, t0));
        assert!(!l.allow(a, t0));
        assert!(l.allow(b, t0));
        let later = t0 + Duration::from_secs(11);
        assert!(l.allow(a, later));
        assert_eq!(l.buckets.len(), 1, "b refilled and was forgotten");
    }
}
