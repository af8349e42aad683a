//! The revocation list: revoked token keys (`jti`, or the SHA-256 of the
//! token, see [`crate::jwt::revocation_key`]), each with the moment it may be
//! forgotten, and its append-only log on disk.
//!
//! `exp` here is that moment, in unix seconds: an entry counts as revoked
//! while `now < exp` and is gone afterwards, even before a sweep removes it.
//! Choosing it is the caller's job: the token's `exp` plus the policy's
//! leeway ([`crate::jwt::Policy::revocation_expiry`]), the last second any
//! policy could still accept the token.
//!
//! # Storage
//!
//! The API takes key strings; what is stored is a [`KeyHash`], the first
//! 16 bytes of the key's SHA-256, inline (no per-entry allocation): 24 bytes
//! per map slot whatever the key's length. Two different keys share a hash
//! with probability about n²/2¹²⁹ (for n = 10⁹ keys, under 10⁻²¹), and
//! finding such a pair on purpose means a 2⁶⁴-step birthday search on
//! SHA-256. A collision could only make an unrevoked token look revoked (a
//! 401, fail closed) or let `remove` of one key lift the other's entry (an
//! admin action); a revoked key always finds its own entry.
//!
//! Lookups go to a `DashMap` (sharded, no global lock); the hash is already
//! uniform, so the map uses it as its own hash (`KeyHasher`). Expiry is
//! O(expired entries): a coarse index, one bucket (a `Vec` of hashes) per
//! expiry second, gives the sweep exactly the entries whose time has come,
//! never a scan of the live ones, and frees each bucket whole. After a sweep
//! that leaves the map under a quarter of its capacity the map is shrunk, so
//! memory goes back to the allocator (big tables are their own mappings,
//! returned to the OS) instead of staying sized for the peak.
//! Mutations (revoke, remove, sweep) take the index lock, so the map and the
//! index always agree; they are rare next to lookups.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::jwt::{AuthError, Claims};

mod log;

pub use log::{LogEvent, LogKey, Replay, RevocationLog, COMPACT_MIN_LINES};

/// A revocation key as the list stores it: the first 16 bytes of the
/// SHA-256 of the key string. Shown and parsed as 32 lowercase hex digits
/// (the log's `"h"` field).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyHash([u8; 16]);

impl KeyHash {
    /// The stored form of `key`.
    pub fn of(key: &str) -> KeyHash {
        KeyHash::of_bytes(key.as_bytes())
    }

    fn of_bytes(key: &[u8]) -> KeyHash {
        let digest = Sha256::digest(key);
        let mut h = [0u8; 16];
        h.copy_from_slice(&digest[..16]);
        KeyHash(h)
    }

    /// Parses the 32-hex-digit form (either case); `None` otherwise.
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16)
            .ok()
            .map(|v| KeyHash(v.to_be_bytes()))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", u128::from_be_bytes(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl Hash for KeyHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(low));
    }
}

/// The map's hasher: a [`KeyHash`] is already a uniform SHA-256 output, so
/// its first 8 bytes are the hash (no second hashing on every lookup). Only
/// the admin API inserts keys, so crafted-collision flooding is not a
/// concern; other input still gets mixed (FNV-1a), for completeness.
#[derive(Debug, Clone, Copy)]
struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for KeyHasher {
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// A new entry (201 on the admin API).
    Inserted,
    /// Already revoked (200); a later `exp` extends the entry.
    AlreadyRevoked,
    /// `exp` is not after `now`: the token is already unusable, nothing kept.
    AlreadyExpired,
}

/// Expiry index: the hashes expiring at each second. One `Vec` per second
/// keeps it at 16 bytes an entry and lets a sweep free whole buckets.
#[derive(Debug, Default)]
struct Index {
    buckets: BTreeMap<u64, Vec<KeyHash>>,
    len: usize,
}

impl Index {
    fn insert(&mut self, key: KeyHash, exp: u64) {
        self.buckets.entry(exp).or_default().push(key);
        self.len += 1;
    }

    /// Drops `key` from `exp`'s bucket: a scan of that bucket only (keys
    /// expiring in the same second), for the rare remove or extension.
    fn remove(&mut self, key: KeyHash, exp: u64) {
        let Some(bucket) = self.buckets.get_mut(&exp) else {
            return;
        };
        let Some(i) = bucket.iter().position(|k| *k == key) else {
            return;
        };
        bucket.swap_remove(i);
        self.len -= 1;
        if bucket.is_empty() {
            self.buckets.remove(&exp);
        } else if bucket.capacity() >= 64 && bucket.len() < bucket.capacity() / 4 {
            bucket.shrink_to(bucket.len() * 2);
        }
    }
}

/// Maps smaller than this (in slots) are shrunk only once empty: a rehash
/// is not worth it.
const SHRINK_MIN_CAPACITY: usize = 4096;

#[derive(Debug, Default)]
pub struct RevocationList {
    map: DashMap<KeyHash, u64, BuildHasherDefault<KeyHasher>>,
    index: Mutex<Index>,
}

impl RevocationList {
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self) -> MutexGuard<'_, Index> {
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
        self.revoke_hash(KeyHash::of(key), exp, now)
    }

    /// [`RevocationList::revoke`] for a key already in its stored form (a
    /// replayed log entry).
    pub fn revoke_hash(&self, key: KeyHash, exp: u64, now: u64) -> RevokeOutcome {
        if exp <= now {
            return RevokeOutcome::AlreadyExpired;
        }
        let mut index = self.index();
        let existing = self.map.get(&key).map(|e| *e);
        match existing {
            Some(old) if old > now => {
                if exp > old {
                    index.remove(key, old);
                    index.insert(key, exp);
                    self.map.insert(key, exp);
                }
                RevokeOutcome::AlreadyRevoked
            }
            Some(old) => {
                // Expired but not swept yet: a fresh revocation.
                index.remove(key, old);
                index.insert(key, exp);
                self.map.insert(key, exp);
                RevokeOutcome::Inserted
            }
            None => {
                index.insert(key, exp);
                self.map.insert(key, exp);
                RevokeOutcome::Inserted
            }
        }
    }

    /// True while `key` is revoked at `now`. Lock-free with respect to the
    /// index; this is the per-request check (one SHA-256 block for a `jti`,
    /// then one map probe).
    pub fn is_revoked(&self, key: &str, now: u64) -> bool {
        self.map.get(&KeyHash::of(key)).is_some_and(|e| now < *e)
    }

    /// The per-request check after a token's signature and claims passed:
    /// `Err(AuthError::Revoked)` while its key
    /// ([`crate::jwt::revocation_key`]) is revoked. No allocation: without a
    /// `jti` the key (the token's SHA-256 in hex) is built on the stack.
    pub fn check_token(&self, claims: &Claims, token: &str, now: u64) -> Result<(), AuthError> {
        let key = match claims.jti() {
            Some(jti) => KeyHash::of(jti),
            None => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let digest = Sha256::digest(token.as_bytes());
                let mut hex = [0u8; 64];
                for (i, b) in digest.iter().enumerate() {
                    hex[2 * i] = DIGITS[usize::from(b >> 4)];
                    hex[2 * i + 1] = DIGITS[usize::from(b & 15)];
                }
                KeyHash::of_bytes(&hex)
            }
        };
        let revoked = self.map.get(&key).is_some_and(|e| now < *e);
        if revoked {
            Err(AuthError::Revoked)
        } else {
            Ok(())
        }
    }

    /// The entry's `exp`, if `key` is revoked at `now`.
    pub fn get(&self, key: &str, now: u64) -> Option<u64> {
        self.map
            .get(&KeyHash::of(key))
            .map(|e| *e)
            .filter(|exp| now < *exp)
    }

    /// [`RevocationList::get`] by hash.
    pub fn get_hash(&self, key: KeyHash, now: u64) -> Option<u64> {
        self.map.get(&key).map(|e| *e).filter(|exp| now < *exp)
    }

    /// Un-revokes `key`; false if there was no entry.
    pub fn remove(&self, key: &str) -> bool {
        self.remove_hash(KeyHash::of(key))
    }

    /// `remove` by hash (entries replicated from another gate).
    pub fn remove_hash(&self, key: KeyHash) -> bool {
        let mut index = self.index();
        match self.map.remove(&key) {
            Some((k, exp)) => {
                index.remove(k, exp);
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
        self.index().len
    }

    /// Slots the map has room for (memory is about 25 bytes a slot).
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Forgets every entry whose `exp` is at or before `now`, and returns how
    /// many. Cost: O(k) map removals for k expired entries plus O(log n) per
    /// expiry second; live entries are not visited. Each expired bucket is
    /// freed whole, and when the map is left under a quarter full it is
    /// shrunk (a rehash of the live entries, one shard at a time). Run it
    /// from one periodic task (e.g. every second).
    pub fn sweep(&self, now: u64) -> usize {
        let mut index = self.index();
        let mut removed = 0;
        while let Some(bucket) = index.buckets.first_entry() {
            if *bucket.key() > now {
                break;
            }
            let (exp, keys) = bucket.remove_entry();
            index.len -= keys.len();
            for key in keys {
                if self.map.remove_if(&key, |_, e| *e == exp).is_some() {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            let capacity = self.map.capacity();
            let len = self.map.len();
            // An empty map is freed whatever its size.
            if len < capacity / 4 && (capacity >= SHRINK_MIN_CAPACITY || len == 0) {
                self.map.shrink_to_fit();
            }
        }
        removed
    }

    /// Every entry live at `now`, `(key, exp)`, for compacting the log.
    pub fn snapshot(&self, now: u64) -> Vec<(KeyHash, u64)> {
        self.map
            .iter()
            .filter(|e| now < *e.value())
            .map(|e| (*e.key(), *e.value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::jwt::revocation_key;

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
        assert_send_sync::<crate::jwt::Policy>();
        assert_send_sync::<RevocationLog>();
    }

    #[test]
    fn snapshot_lists_live_entries() {
        let l = RevocationList::new();
        l.revoke("a", 100, 0);
        l.revoke("b", 200, 0);
        let mut s = l.snapshot(150);
        s.sort();
        assert_eq!(s, vec![(KeyHash::of("b"), 200)]);
    }

    #[test]
    fn key_hash_is_sha256_prefix_and_hex_round_trips() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a3...
        let h = KeyHash::of("abc");
        assert_eq!(h.to_string(), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(KeyHash::from_hex(&h.to_string()), Some(h));
        assert_eq!(
            KeyHash::from_hex("BA7816BF8F01CFEA414140DE5DAE2223"),
            Some(h)
        );
        assert_eq!(KeyHash::from_hex("ba7816bf8f01cfea414140de5dae222"), None);
        assert_eq!(KeyHash::from_hex("+a7816bf8f01cfea414140de5dae2223"), None);
        assert_eq!(KeyHash::from_hex("za7816bf8f01cfea414140de5dae2223"), None);
        assert_ne!(KeyHash::of("abd"), h);
    }

    #[test]
    fn revoke_hash_matches_revoke_by_string() {
        let l = RevocationList::new();
        l.revoke_hash(KeyHash::of("k"), 100, 0);
        assert!(l.is_revoked("k", 50));
        assert_eq!(l.revoke("k", 100, 10), RevokeOutcome::AlreadyRevoked);
        assert!(l.remove("k"));
        assert_eq!(l.index_len(), 0);
    }

    #[test]
    fn remove_from_a_shared_second_keeps_the_others() {
        let l = RevocationList::new();
        for i in 0..1000 {
            l.revoke(&format!("k{i}"), 100, 0);
        }
        for i in (0..1000).step_by(2) {
            assert!(l.remove(&format!("k{i}")));
        }
        assert_eq!(l.len(), 500);
        assert_eq!(l.index_len(), 500);
        assert!(l.is_revoked("k1", 0) && !l.is_revoked("k0", 0));
        assert_eq!(l.sweep(100), 500);
        assert_eq!(l.index_len(), 0);
    }

    #[test]
    fn map_shrinks_after_a_sweep_leaves_it_mostly_empty() {
        let l = RevocationList::new();
        for i in 0..100_000u64 {
            l.revoke(&format!("k{i}"), 10 + i % 5, 0);
        }
        for i in 0..100u64 {
            l.revoke(&format!("long{i}"), 1000, 0);
        }
        let full = l.capacity();
        assert!(full >= 100_100);
        assert_eq!(l.sweep(14), 100_000);
        assert!(l.capacity() < full / 16, "{} of {full}", l.capacity());
        assert!(l.is_revoked("long7", 14));
        assert_eq!(l.sweep(1000), 100);
        assert_eq!(l.capacity(), 0);
        assert_eq!(l.index_len(), 0);
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
