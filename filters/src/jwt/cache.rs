//! The verified-token cache: a token seen before skips its signature check.
//! Bounded (oldest insertion evicted first), keyed by the SHA-256 of the
//! token (the token itself is never stored), and an entry is dropped once
//! the token can no longer be accepted. A hit still has its claims' `exp` and
//! `nbf` checked by the caller with the current clock; revocation is the
//! caller's too. One cache per policy: a token verified by one policy's key
//! says nothing about another's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::Claims;

pub type TokenDigest = [u8; 32];

pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

pub fn token_digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<TokenDigest, Entry>,
    /// Insertion order, for eviction. An item whose `seq` no longer matches
    /// the map's entry is stale and only counts toward the bound.
    order: VecDeque<(TokenDigest, u64)>,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    claims: Claims,
    /// The first second at which the token is refused (`exp + leeway`).
    expires_at: u64,
    seq: u64,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens; 0 disables it.
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data
        // (every update is a single map/deque operation): keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The claims of a cached token still acceptable at `now`, if any.
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<Claims> {
        if self.capacity == 0 {
            return None;
        }
        let mut inner = self.lock();
        let entry = inner.map.get(digest)?;
        if now >= entry.expires_at {
            inner.map.remove(digest);
            return None;
        }
        Some(entry.claims.clone())
    }

    /// Remembers a verified token until `expires_at` (exclusive).
    pub fn insert(&self, digest: TokenDigest, claims: Claims, expires_at: u64, now: u64) {
        if self.capacity == 0 || expires_at <= now {
            return;
        }
        let mut inner = self.lock();
        while inner.order.len() >= self.capacity {
            let Some((old, seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&old).is_some_and(|e| e.seq == seq) {
                inner.map.remove(&old);
            }
        }
        let seq = inner.next_seq;
        inner.next_seq = inner.next_seq.wrapping_add(1);
        inner.order.push_back((digest, seq));
        inner.map.insert(
            digest,
            Entry {
                claims,
                expires_at,
                seq,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims::from_payload(format!(r#"{{"exp":{exp}}}"#).as_bytes()).unwrap()
    }

    #[test]
    fn hit_until_expiry() {
        let c = TokenCache::new(10);
        let d = token_digest("a.b.c");
        c.insert(d, claims(100), 100, 50);
        assert_eq!(c.get(&d, 99).map(|c| c.exp()), Some(100));
        assert!(c.get(&d, 100).is_none());
        assert_eq!(c.len(), 0, "an expired entry is dropped on lookup");
        assert!(c.get(&token_digest("other"), 50).is_none());
    }

    #[test]
    fn never_stores_an_expired_token() {
        let c = TokenCache::new(10);
        c.insert(token_digest("t"), claims(10), 10, 10);
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_oldest_evicted() {
        let c = TokenCache::new(3);
        for i in 0..5 {
            c.insert(token_digest(&format!("t{i}")), claims(1000), 1000, 0);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&token_digest("t0"), 1).is_none());
        assert!(c.get(&token_digest("t1"), 1).is_none());
        assert!(c.get(&token_digest("t4"), 1).is_some());
    }

    #[test]
    fn reinsertions_keep_the_bound() {
        let c = TokenCache::new(2);
        let d = token_digest("same");
        for now in 0..100 {
            c.insert(d, claims(now + 1), now + 1, now);
            assert!(c.get(&d, now + 1).is_none());
        }
        assert!(c.lock().order.len() <= 2);
        // A stale order item does not evict the newer entry of the same token.
        c.insert(d, claims(500), 500, 0);
        c.insert(token_digest("x"), claims(500), 500, 0);
        assert!(c.get(&d, 1).is_some());
    }

    #[test]
    fn capacity_zero_disables() {
        let c = TokenCache::new(0);
        c.insert(token_digest("t"), claims(10), 10, 0);
        assert!(c.get(&token_digest("t"), 1).is_none());
    }
}
