//! The buckets of one limit: a bounded, sharded hash map from [`Key`] to
//! governor's GCRA state, plus the shared overflow bucket, behind governor's
//! [`StateStore`] trait (the cap and housekeeping are described in the
//! `ratelimit` module docs, under "Bounded memory").
//!
//! The buckets live in our own map rather than governor's dashmap store, so
//! that a check costs one hash, one shard read lock and (almost always) one
//! cache line: each slot holds the key and governor's state (its GCRA
//! `InMemoryState`, one atomic) side by side, 32 bytes aligned to 32. With
//! 1 M live keys the table is far larger than the CPU caches, so the cache
//! (and TLB) misses per check decide the cost; hashbrown under dashmap takes
//! two (control bytes, then the entry). Shards as dashmap sizes them (4 per
//! core, a power of two), each a linear-probing table at most 3/4 full,
//! doubled when it would pass that; housekeeping removes buckets by
//! rebuilding a shard's table (`retain_recent`, same size) or rebuilding it
//! smaller (`shrink_to_fit`), one shard at a time, so it briefly needs one
//! shard's table twice. Tables of 4 MiB and more are advised to the kernel
//! as transparent huge pages (`hugepages.rs`): at 1 M keys most of a
//! check's time was TLB misses.
//!
//! The hash is two rounds of a multiply-and-fold (the high and low halves
//! of a 64×64→128-bit product, XORed) over the key's words, keyed by three
//! per-process random seeds (drawn from
//! [`RandomState`](std::hash::RandomState)). It is not SipHash: `Value`
//! keys are already SipHash outputs under a secret key, and IP keys
//! need only be spread well, but IPs are chosen by clients (an IPv6 client
//! holds whole /48s), and linear probing degrades badly when many keys land
//! on one slot. The seeds are why a client cannot aim keys at one slot
//! offline; learning them would take timing measurements through the proxy.
//! The damage is bounded anyway: `max_keys` caps the keys of each limit.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

use super::key::{value_hasher, Key};

/// The bucket map plus the overflow bucket, shared between governor's
/// limiter (which owns a [`Store`]) and [`RateLimit`](super::RateLimit)
/// (for metrics).
pub(super) struct Buckets {
    map: BucketMap,
    /// Live keys in `map`: raised on insert, recounted by housekeeping.
    live: AtomicUsize,
    max_keys: usize,
    overflow: InMemoryState,
    overflow_checks: AtomicU64,
}

impl Buckets {
    /// No buckets yet; at most `max_keys` of them (then the overflow bucket).
    pub(super) fn new(max_keys: usize) -> Self {
        Buckets {
            map: BucketMap::new(),
            live: AtomicUsize::new(0),
            max_keys,
            overflow: InMemoryState::default(),
            overflow_checks: AtomicU64::new(0),
        }
    }

    /// Bucket slots allocated.
    pub(super) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Checks that went to the overflow bucket since start.
    pub(super) fn overflow_checks(&self) -> u64 {
        self.overflow_checks.load(Ordering::Relaxed)
    }
}

/// governor state store: our bucket map with a cap on the number of keys.
pub(super) struct Store(Arc<Buckets>);

impl Store {
    pub(super) fn new(buckets: Arc<Buckets>) -> Self {
        Store(buckets)
    }
}

impl StateStore for Store {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let s = &*self.0;
        let hash = s.map.seeds.hash(key);
        let shard = s.map.shard(hash);
        // Fast path: the key has a bucket. One hash, one read lock, one
        // probe (usually one cache line), then governor's CAS on the state
        // stored in that same line. The read guard is dropped at the end of
        // this block, before the write lock below.
        {
            let table = read(shard);
            if let Some(slot) = table.find(key, hash) {
                return slot.state.measure_and_replace(&NotKeyed::NonKey, f);
            }
        }
        if s.live.load(Ordering::Relaxed) >= s.max_keys {
            s.overflow_checks.fetch_add(1, Ordering::Relaxed);
            return s.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut table = write(shard);
        let (slot, inserted) = table.find_or_insert(*key, hash, s.map.seeds);
        if inserted {
            s.live.fetch_add(1, Ordering::Relaxed);
        }
        slot.state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        let s = &*self.0;
        let drop_below = u64::from(drop_below);
        let mut live = 0;
        for shard in s.map.shards.iter() {
            let mut table = write(shard);
            // Same rule as governor's own stores: a bucket whose theoretical
            // arrival time is at or before `drop_below` is a fresh bucket.
            let slots = table.slots.len();
            table.rebuild(slots, s.map.seeds, |state| state_nanos(state) > drop_below);
            live += table.len;
        }
        s.live.store(live, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        let s = &*self.0;
        for shard in s.map.shards.iter() {
            let mut table = write(shard);
            let slots = Table::slots_for(table.len);
            if slots < table.slots.len() {
                table.rebuild(slots, s.map.seeds, |_| true);
            }
        }
    }

    fn len(&self) -> usize {
        self.0.map.shards.iter().map(|s| read(s).len).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.map.shards.iter().all(|s| read(s).len == 0)
    }
}

/// governor's stored value (the theoretical arrival time, 0 = fresh),
/// read without changing it.
fn state_nanos(state: &InMemoryState) -> u64 {
    let read = state.measure_and_replace(&NotKeyed::NonKey, |prev| {
        Err::<((), Nanos), u64>(prev.map_or(0, u64::from))
    });
    match read {
        Ok(()) => 0,
        Err(nanos) => nanos,
    }
}

/// Per-process random seeds of the bucket map's hash (see the module docs).
#[derive(Clone, Copy)]
struct Seeds([u64; 3]);

impl Seeds {
    fn get() -> Seeds {
        static SEEDS: OnceLock<Seeds> = OnceLock::new();
        *SEEDS.get_or_init(|| {
            let h = value_hasher();
            Seeds([0u8, 1, 2].map(|i| h.hash_one(("ratelimit map seed", i))))
        })
    }

    /// Two rounds of a keyed multiply-and-fold over the key's words.
    #[inline]
    fn hash(self, key: &Key) -> u64 {
        let [s0, s1, s2] = self.0;
        let (tag, a, b) = match *key {
            Key::V4(ip) => (1, u64::from(ip), 0),
            Key::V6(hi, lo) => (2, hi, lo),
            Key::Value(v) => (3, v, 0),
        };
        fold_mul(fold_mul(a ^ s0, b ^ s1) ^ tag, s2)
    }
}

/// The 128-bit product of `a` and `b`, high half XOR low half.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The buckets: a fixed number of shards, each an open-addressing table
/// behind a read/write lock. Bits 32.. of the hash pick the shard, the low
/// bits the slot.
struct BucketMap {
    shards: Box<[Shard]>,
    shard_mask: usize,
    seeds: Seeds,
}

/// One shard on its own cache lines, so that two shards' locks never share
/// one.
#[repr(align(128))]
struct Shard(RwLock<Table>);

impl BucketMap {
    fn new() -> Self {
        // As many shards as dashmap would use: 4 per core, a power of two.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let n = (cores * 4).next_power_of_two().min(1024);
        BucketMap {
            shards: (0..n)
                .map(|_| Shard(RwLock::new(Table::with_slots(MIN_SLOTS))))
                .collect(),
            shard_mask: n - 1,
            seeds: Seeds::get(),
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 32) as usize & self.shard_mask]
    }

    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| read(s).slots.len()).sum()
    }
}

// Nothing panics while a shard is locked (short of allocation failure,
// which aborts), so a poisoned lock still holds a consistent table.
fn read(shard: &Shard) -> RwLockReadGuard<'_, Table> {
    shard.0.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, Table> {
    shard.0.write().unwrap_or_else(PoisonError::into_inner)
}

const MIN_SLOTS: usize = 8;

/// One bucket: the key and governor's state side by side, 32 bytes aligned
/// to 32, so a lookup that finds its key at the first probe touches one
/// cache line for the key and the state.
#[derive(Default)]
#[repr(align(32))]
struct Slot {
    key: Option<Key>,
    state: InMemoryState,
}

/// Linear probing over a power-of-two array of slots, at most 3/4 full (so
/// a probe always ends at an empty slot). Removal is by rebuilding
/// (housekeeping only), so there are no tombstones.
struct Table {
    slots: Box<[Slot]>,
    len: usize,
}

impl Table {
    fn with_slots(n: usize) -> Self {
        debug_assert!(n.is_power_of_two() && n >= MIN_SLOTS);
        let mut slots = Vec::with_capacity(n);
        // Before the first write, so the first touches fault in huge pages.
        crate::hugepages::advise(&slots);
        slots.resize_with(n, Slot::default);
        Table {
            slots: slots.into_boxed_slice(),
            len: 0,
        }
    }

    /// The fewest slots that hold `len` keys within the load limit.
    fn slots_for(len: usize) -> usize {
        let mut n = MIN_SLOTS;
        while len > n / 4 * 3 {
            n *= 2;
        }
        n
    }

    #[inline]
    fn find(&self, key: &Key, hash: u64) -> Option<&Slot> {
        self.find_index(key, hash).map(|i| &self.slots[i])
    }

    fn find_index(&self, key: &Key, hash: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            match &self.slots[i].key {
                None => return None,
                Some(k) if k == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// The slot of `key`, inserting a fresh bucket when there is none
    /// (`true`), growing first if that would pass the load limit.
    fn find_or_insert(&mut self, key: Key, hash: u64, seeds: Seeds) -> (&Slot, bool) {
        if let Some(i) = self.find_index(&key, hash) {
            return (&self.slots[i], false);
        }
        if Table::slots_for(self.len + 1) > self.slots.len() {
            let slots = self.slots.len() * 2;
            self.rebuild(slots, seeds, |_| true);
        }
        let i = self.place(
            Slot {
                key: Some(key),
                state: InMemoryState::default(),
            },
            hash,
        );
        self.len += 1;
        (&self.slots[i], true)
    }

    /// Puts a slot whose key is absent into the first empty slot of its
    /// probe sequence; returns the index. `len` is the caller's.
    fn place(&mut self, slot: Slot, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i].key.is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        i
    }

    /// Moves the buckets that `keep` accepts into a new array of `slots`
    /// slots (the state moves with its key).
    fn rebuild(&mut self, slots: usize, seeds: Seeds, keep: impl Fn(&InMemoryState) -> bool) {
        let old = std::mem::replace(self, Table::with_slots(slots));
        for slot in old.slots.into_vec() {
            if let Some(key) = &slot.key {
                if keep(&slot.state) {
                    let hash = seeds.hash(key);
                    self.place(slot, hash);
                    self.len += 1;
                }
            }
        }
        debug_assert!(Table::slots_for(self.len) <= self.slots.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::test_support::{ipk, limit, per_sec};
    use std::time::Duration;

    #[test]
    fn max_keys_overflow_shares_one_bucket() {
        let mut p = per_sec(1);
        p.max_keys = 2;
        let (l, clock) = limit("per_ip", p);
        let (a, b, c, d) = (
            ipk("1.0.0.1"),
            ipk("1.0.0.2"),
            ipk("1.0.0.3"),
            ipk("1.0.0.4"),
        );
        l.check(&a).unwrap();
        l.check(&b).unwrap();
        assert_eq!(l.len(), 2);
        // Third and fourth keys share the overflow bucket.
        l.check(&c).unwrap();
        assert!(l.check(&d).is_err());
        assert!(l.check(&c).is_err());
        assert_eq!(l.len(), 2, "the map did not grow");
        assert_eq!(l.overflow_checks(), 3);
        // Existing keys keep their own buckets.
        assert!(l.check(&a).is_err());
        clock.advance(Duration::from_secs(1));
        l.check(&a).unwrap();
        l.check(&c).unwrap();
        assert!(l.check(&d).is_err());
        // Once idle buckets are dropped, new keys get their own again.
        clock.advance(Duration::from_secs(10));
        l.housekeeping();
        assert_eq!(l.len(), 0);
        l.check(&c).unwrap();
        l.check(&d).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.overflow_checks(), 5);
    }

    #[test]
    fn max_keys_holds_under_concurrent_floods() {
        let mut p = per_sec(1);
        p.max_keys = 100;
        let (l, _clock) = limit("per_ip", p);
        let threads = 4u32;
        std::thread::scope(|s| {
            for t in 0..threads {
                let l = &l;
                s.spawn(move || {
                    for i in 0..10_000u32 {
                        let _ = l.check(&Key::V4(t << 24 | i));
                    }
                });
            }
        });
        assert!(l.len() >= 100);
        assert!(l.len() <= 100 + threads as usize, "{}", l.len());
        assert_eq!(l.overflow_checks(), 40_000 - l.len() as u64);
    }

    #[test]
    fn housekeeping_forgets_idle_keys_and_shrinks() {
        let (l, clock) = limit("per_ip", per_sec(10));
        for i in 0..5000u32 {
            l.check(&Key::V4(i)).unwrap();
        }
        assert_eq!(l.len(), 5000);
        let before = l.capacity();
        assert!(before >= 5000);
        // Not yet idle long enough: everything kept.
        l.housekeeping();
        assert_eq!(l.len(), 5000);
        // One key stays busy; the rest go idle past a full refill.
        clock.advance(Duration::from_secs(2));
        l.check(&Key::V4(7)).unwrap();
        l.housekeeping();
        assert_eq!(l.len(), 1);
        assert!(l.capacity() < before / 10, "{} -> {}", before, l.capacity());
        // A forgotten key starts fresh; the busy one kept its state.
        assert_eq!(l.check(&Key::V4(8)).unwrap().remaining, 9);
        assert_eq!(l.check(&Key::V4(7)).unwrap().remaining, 8);
    }

    #[test]
    fn bucket_table_probes_wrap_and_rebuild() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::align_of::<Slot>(), 32);
        let seeds = Seeds::get();
        let mut t = Table::with_slots(MIN_SLOTS);
        // Every key with the same hash, aimed at the last slot: probes wrap
        // around the end of the array, and the table grows past 3/4 full.
        let hash = (MIN_SLOTS - 1) as u64;
        for i in 0..20u32 {
            let (_, inserted) = t.find_or_insert(Key::V4(i), hash, seeds);
            assert!(inserted);
            let (_, inserted) = t.find_or_insert(Key::V4(i), hash, seeds);
            assert!(!inserted);
        }
        assert_eq!(t.len, 20);
        assert_eq!(t.slots.len(), 32);
        // Grows placed the earlier keys by their real hash, the later ones
        // sit at the fake one; a rebuild places every key by its real hash.
        t.rebuild(32, seeds, |_| true);
        for i in 0..20u32 {
            assert!(t.find(&Key::V4(i), seeds.hash(&Key::V4(i))).is_some());
        }
        assert!(t.find(&Key::V4(20), seeds.hash(&Key::V4(20))).is_none());
        assert!(t.find(&Key::Value(1), seeds.hash(&Key::Value(1))).is_none());
        t.rebuild(Table::slots_for(t.len), seeds, |_| true);
        assert_eq!((t.len, t.slots.len()), (20, 32));
        t.rebuild(MIN_SLOTS, seeds, |_| false);
        assert_eq!(t.len, 0);
        assert_eq!(Table::slots_for(0), MIN_SLOTS);
        assert_eq!(Table::slots_for(6), MIN_SLOTS);
        assert_eq!(Table::slots_for(7), 2 * MIN_SLOTS);
        // Variants with the same words are different keys.
        let v6 = Key::V6(5, 0);
        t.find_or_insert(Key::V4(5), seeds.hash(&Key::V4(5)), seeds);
        assert!(t.find(&v6, seeds.hash(&v6)).is_none());
        assert!(t.find(&Key::Value(5), seeds.hash(&Key::Value(5))).is_none());
    }
}
