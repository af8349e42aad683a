//! The revocation list: revoked token keys (`jti`, or the SHA-256 of the
//! token, see [`crate::jwt::revocation_key`]), each with the moment it may be
//! forgotten, and its append-only log on disk.
//!
//! `exp` here is that moment, in unix seconds: an entry counts as revoked
//! while `now < exp` and is gone afterwards, even before a sweep removes it.
//! Choosing it is the caller's job: the token's `exp` plus the policy's
//! leeway ([`crate::jwt::JwtPolicy::revocation_expiry`]), the last second any
//! policy could still accept the token.
//!
//! Lookups go to a `DashMap` (sharded, no global lock). Expiry is
//! O(expired entries): an ordered `(exp, key)` index gives the sweep exactly
//! the entries whose time has come, never a scan of the live ones.
//! Mutations (revoke, remove, sweep) take the index lock, so the map and the
//! index always agree; they are rare next to lookups.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;

use crate::jwt::{revocation_key, AuthError, Claims};

mod log;

pub use log::{LogEvent, Replay, RevocationLog, COMPACT_MIN_LINES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// A new entry (201 on the admin API).
    Inserted,
    /// Already revoked (200); a later `exp` extends the entry.
    AlreadyRevoked,
    /// `exp` is not after `now`: the token is already unusable, nothing kept.
    AlreadyExpired,
}

#[derive(Debug, Default)]
pub struct RevocationList {
    map: DashMap<Arc<str>, u64>,
    index: Mutex<BTreeSet<(u64, Arc<str>)>>,
}

impl RevocationList {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self) -> MutexGuard<'_, BTreeSet<(u64, Arc<str>)>> {
        // Map and index are updated together under this lock; after a panic
        // elsewhere the worst case is an index item whose entry is gone,
        // which the sweep tolerates.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Revokes `key` until `exp`.
    pub fn revoke(&self, key: &str, exp: u64, now: u64) -> RevokeOutcome {
        if exp <= now {
            return RevokeOutcome::AlreadyExpired;
        }
        let mut index = self.index();
        let existing = self.map.get(key).map(|e| *e);
        match existing {
            Some(old) if old > now => {
                if exp > old {
                    let k = self.stored_key(key);
                    index.remove(&(old, k.clone()));
                    index.insert((exp, k.clone()));
                    self.map.insert(k, exp);
                }
                RevokeOutcome::AlreadyRevoked
            }
            Some(old) => {
                // Expired but not swept yet: a fresh revocation.
                let k = self.stored_key(key);
                index.remove(&(old, k.clone()));
                index.insert((exp, k.clone()));
                self.map.insert(k, exp);
                RevokeOutcome::Inserted
            }
            None => {
                let k: Arc<str> = Arc::from(key);
                index.insert((exp, k.clone()));
                self.map.insert(k, exp);
                RevokeOutcome::Inserted
            }
        }
    }

    /// The key as stored, so map and index share one allocation.
    fn stored_key(&self, key: &str) -> Arc<str> {
        self.map
            .get(key)
            .map(|e| e.key().clone())
            .unwrap_or_else(|| Arc::from(key))
    }

    /// True while `key` is revoked at `now`. Lock-free with respect to the
    /// index; this is the per-request check.
    pub fn is_revoked(&self, key: &str, now: u64) -> bool {
        self.map.get(key).is_some_and(|e| now < *e)
    }

    /// The per-request check after a token's signature and claims passed:
    /// `Err(AuthError::Revoked)` while its key ([`revocation_key`]) is
    /// revoked. No allocation when the token has a `jti`.
    pub fn check_token(&self, claims: &Claims, token: &str, now: u64) -> Result<(), AuthError> {
        let revoked = match claims.jti() {
            Some(jti) => self.is_revoked(jti, now),
            None => self.is_revoked(&revocation_key(claims, token), now),
        };
        if revoked {
            Err(AuthError::Revoked)
        } else {
            Ok(())
        }
    }

    /// The entry's `exp`, if `key` is revoked at `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<u64> {
        self.map.get(key).map(|e| *e).filter(|exp| now < *exp)
    }

    /// Un-revokes `key`; false if there was no entry.
    pub fn remove(&self, key: &str) -> bool {
        let mut index = self.index();
        match self.map.remove(key) {
            Some((k, exp)) => {
                index.remove(&(exp, k));
                true
            }
            None => false,
        }
    }

    /// Entries held, including any past their `exp` not swept yet.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Items in the expiry index (equal to `len()`; for tests and metrics).
    pub fn index_len(&self) -> usize {
        self.index().len()
    }

    /// Forgets every entry whose `exp` is at or before `now`, and returns how
    /// many. Cost: O(k log n) for k expired entries; live entries are not
    /// visited. Run it from one periodic task (e.g. every second).
    pub fn sweep(&self, now: u64) -> usize {
        let mut index = self.index();
        let mut removed = 0;
        while let Some((exp, _)) = index.first() {
            if *exp > now {
                break;
            }
            let Some((exp, key)) = index.pop_first() else {
                break;
            };
            if self.map.remove_if(&key, |_, e| *e == exp).is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// Every entry live at `now`, `(key, exp)`, for compacting the log.
    pub fn snapshot(&self, now: u64) -> Vec<(String, u64)> {
        self.map
            .iter()
            .filter(|e| now < *e.value())
            .map(|e| (e.key().to_string(), *e.value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_outcomes() {
        let l = RevocationList::new();
        assert_eq!(l.revoke("a", 100, 50), RevokeOutcome::Inserted);
        assert_eq!(l.revoke("a", 100, 60), RevokeOutcome::AlreadyRevoked);
        assert_eq!(l.revoke("b", 50, 50), RevokeOutcome::AlreadyExpired);
        assert_eq!(l.revoke("b", 10, 50), RevokeOutcome::AlreadyExpired);
        assert!(!l.is_revoked("b", 50));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn entry_disappears_at_its_exp_without_a_sweep() {
        let l = RevocationList::new();
        l.revoke("jti-1", 1002, 1000);
        assert!(l.is_revoked("jti-1", 1000));
        assert!(l.is_revoked("jti-1", 1001));
        assert_eq!(l.get("jti-1", 1001), Some(1002));
        assert!(!l.is_revoked("jti-1", 1002));
        assert_eq!(l.get("jti-1", 1002), None);
        assert_eq!(l.len(), 1, "still held until swept");
        assert_eq!(l.sweep(1001), 0);
        assert_eq!(l.sweep(1002), 1);
        assert_eq!(l.len(), 0);
        assert_eq!(l.index_len(), 0);
    }

    #[test]
    fn later_exp_extends_and_old_index_item_is_replaced() {
        let l = RevocationList::new();
        l.revoke("k", 100, 0);
        assert_eq!(l.revoke("k", 200, 10), RevokeOutcome::AlreadyRevoked);
        assert_eq!(l.get("k", 150), Some(200));
        assert_eq!(l.revoke("k", 150, 10), RevokeOutcome::AlreadyRevoked);
        assert_eq!(l.get("k", 150), Some(200), "an earlier exp never shortens");
        assert_eq!(l.index_len(), 1);
        assert_eq!(l.sweep(100), 0);
        assert!(l.is_revoked("k", 199));
        assert_eq!(l.sweep(200), 1);
    }

    #[test]
    fn expired_unswept_entry_is_revoked_afresh() {
        let l = RevocationList::new();
        l.revoke("k", 100, 0);
        assert_eq!(l.revoke("k", 300, 150), RevokeOutcome::Inserted);
        assert_eq!(l.index_len(), 1);
        assert_eq!(l.sweep(200), 0);
        assert!(l.is_revoked("k", 299));
    }

    #[test]
    fn remove_and_get() {
        let l = RevocationList::new();
        l.revoke("k", 100, 0);
        assert!(l.remove("k"));
        assert!(!l.remove("k"));
        assert!(!l.is_revoked("k", 1));
        assert_eq!(l.index_len(), 0);
        assert_eq!(l.sweep(u64::MAX), 0);
    }

    #[test]
    fn sweep_touches_only_expired_entries() {
        let l = RevocationList::new();
        let now = 1_000_000;
        for i in 0..100_000u64 {
            l.revoke(&format!("live-{i}"), now + 10 + (i % 1000), now);
        }
        for i in 0..10u64 {
            l.revoke(&format!("dying-{i}"), now + 1 + i % 3, now);
        }
        assert_eq!(l.len(), 100_010);
        // At now + 5 exactly the 10 short entries are due.
        assert_eq!(l.sweep(now + 5), 10);
        assert_eq!(l.len(), 100_000);
        assert_eq!(l.index_len(), 100_000);
        assert!(l.is_revoked("live-0", now + 5));
        assert!(!l.is_revoked("dying-0", now + 5));
        // A second sweep at the same time finds nothing and stops at once.
        assert_eq!(l.sweep(now + 5), 0);
        // The first live entries go at their own time.
        assert_eq!(l.sweep(now + 10), 100);
    }

    #[test]
    fn check_token_by_jti_or_hash() {
        let l = RevocationList::new();
        let with_jti = Claims::from_payload(br#"{"exp":100,"jti":"j1"}"#).unwrap();
        let without = Claims::from_payload(br#"{"exp":100}"#).unwrap();
        assert_eq!(l.check_token(&with_jti, "t1", 0), Ok(()));
        l.revoke("j1", 100, 0);
        assert_eq!(l.check_token(&with_jti, "t1", 0), Err(AuthError::Revoked));
        assert_eq!(l.check_token(&with_jti, "t1", 100), Ok(()));
        assert_eq!(l.check_token(&without, "t2", 0), Ok(()));
        l.revoke(&revocation_key(&without, "t2"), 100, 0);
        assert_eq!(l.check_token(&without, "t2", 0), Err(AuthError::Revoked));
        assert_eq!(l.check_token(&without, "t3", 0), Ok(()));
    }

    #[test]
    fn shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RevocationList>();
        assert_send_sync::<crate::jwt::JwtPolicy>();
        assert_send_sync::<RevocationLog>();
    }

    #[test]
    fn snapshot_lists_live_entries() {
        let l = RevocationList::new();
        l.revoke("a", 100, 0);
        l.revoke("b", 200, 0);
        let mut s = l.snapshot(150);
        s.sort();
        assert_eq!(s, vec![("b".to_string(), 200)]);
    }

    #[test]
    fn concurrent_revokes_and_sweeps_stay_consistent() {
        let l = Arc::new(RevocationList::new());
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let l = l.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..2000u64 {
                    l.revoke(&format!("k{}", i % 500), 10 + (i + t) % 50, 0);
                    if i % 7 == 0 {
                        l.remove(&format!("k{}", (i * 3) % 500));
                    }
                    if i % 100 == 0 {
                        l.sweep(i / 100);
                    }
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.len(), l.index_len());
        l.sweep(u64::MAX);
        assert_eq!(l.len(), 0);
        assert_eq!(l.index_len(), 0);
    }
}
