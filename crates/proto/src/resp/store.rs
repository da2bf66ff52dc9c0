//! The key-value store shared by all RESP connections of a process.
//!
//! Keys are spread over [`SHARDS`] mutex-protected maps by a cheap FNV-1a hash of the
//! key; each map hashes with std's randomly keyed SipHash, so crafted keys can at
//! worst crowd one shard's lock, never degrade a map. Expiry is lazy: an entry whose
//! time has come is treated as absent (and removed) when it is next touched, and each
//! shard also sweeps its expired entries after a number of operations proportional to
//! its size, so expired keys that are never touched again do not pile up.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::codec::{parse_i64, push_i64};

/// The number of independently locked shards of a [`Store`].
pub const SHARDS: usize = 64;

// Multi-key commands mark the shards they need in a `u64`.
const _: () = assert!(SHARDS <= 64);

/// A shard with keys that expire sweeps them after this many operations at least (or
/// as many operations as it has keys, when that is more), keeping sweeps amortized
/// O(1) per operation.
const SWEEP_MIN_OPS: usize = 1024;

/// The data of one key.
#[derive(Debug)]
pub(crate) struct Entry {
    value: Vec<u8>,
    /// Unix milliseconds at which the key disappears.
    expires_at: Option<u64>,
}

impl Entry {
    /// True until the expiry time: a key set to expire at `t` is gone at `t`.
    fn is_live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// When a write should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Whether or not the key exists.
    Always,
    /// Only when the key does not exist (`NX`).
    IfAbsent,
    /// Only when the key exists (`XX`).
    IfPresent,
}

/// What a write does to the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ttl {
    /// The key no longer expires.
    Clear,
    /// The key keeps the expiry it had, if it existed (`KEEPTTL`).
    Keep,
    /// The key expires at this Unix time in milliseconds.
    At(u64),
}

/// Why an increment failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncrError {
    /// The value is not a decimal `i64`.
    NotInteger,
    /// The result would not fit in an `i64`.
    Overflow,
}

/// One shard: a map and the bookkeeping of its expiring keys.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    map: HashMap<Vec<u8>, Entry>,
    /// How many entries have an expiry (exact unless a panic interrupted an update).
    volatile: usize,
    /// Operations since the last sweep.
    ops: usize,
}

impl Shard {
    /// Calls `f` with the key's value, or `None` when it is absent or expired (an
    /// expired entry is removed).
    pub(crate) fn read<R>(
        &mut self,
        key: &[u8],
        now: u64,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> R {
        let expired = match self.map.get(key) {
            Some(entry) if entry.is_live(now) => return f(Some(&entry.value)),
            Some(_) => true,
            None => false,
        };
        if expired {
            self.remove(key);
        }
        f(None)
    }

    /// Writes `value` under `key` if `condition` allows, setting the expiry as `ttl`
    /// says. Calls `on_old` first with the previous value (`None` if absent or
    /// expired). Returns whether the value was written.
    pub(crate) fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        now: u64,
        condition: Condition,
        ttl: Ttl,
        on_old: impl FnOnce(Option<&[u8]>),
    ) -> bool {
        let remove_expired = match self.map.get_mut(key) {
            Some(entry) => {
                let live = entry.is_live(now);
                on_old(live.then_some(entry.value.as_slice()));
                let allowed = match condition {
                    Condition::Always => true,
                    Condition::IfAbsent => !live,
                    Condition::IfPresent => live,
                };
                if allowed {
                    let expires_at = match ttl {
                        Ttl::Keep if live => entry.expires_at,
                        Ttl::Keep | Ttl::Clear => None,
                        Ttl::At(at) => Some(at),
                    };
                    match (entry.expires_at.is_some(), expires_at.is_some()) {
                        (false, true) => self.volatile += 1,
                        (true, false) => self.volatile = self.volatile.saturating_sub(1),
                        _ => {}
                    }
                    entry.expires_at = expires_at;
                    assign(&mut entry.value, value);
                    return true;
                }
                !live
            }
            None => {
                on_old(None);
                if condition == Condition::IfPresent {
                    return false;
                }
                let expires_at = match ttl {
                    Ttl::At(at) => Some(at),
                    Ttl::Keep | Ttl::Clear => None,
                };
                self.insert_new(key.to_vec(), value.to_vec(), expires_at);
                return true;
            }
        };
        if remove_expired {
            self.remove(key);
        }
        false
    }

    /// Adds `delta` to the decimal integer stored under `key` (0 when absent), keeping
    /// its expiry, and returns the new value.
    pub(crate) fn incr(&mut self, key: &[u8], delta: i64, now: u64) -> Result<i64, IncrError> {
        match self.map.get_mut(key) {
            Some(entry) if entry.is_live(now) => {
                let current = parse_i64(&entry.value).ok_or(IncrError::NotInteger)?;
                let next = current.checked_add(delta).ok_or(IncrError::Overflow)?;
                entry.value.clear();
                push_i64(&mut entry.value, next);
                Ok(next)
            }
            Some(entry) => {
                // Expired: the key starts afresh, without an expiry.
                if entry.expires_at.take().is_some() {
                    self.volatile = self.volatile.saturating_sub(1);
                }
                entry.value = Vec::new();
                push_i64(&mut entry.value, delta);
                Ok(delta)
            }
            None => {
                let mut value = Vec::new();
                push_i64(&mut value, delta);
                self.insert_new(key.to_vec(), value, None);
                Ok(delta)
            }
        }
    }

    /// Removes `key`; returns whether it existed (and had not expired).
    pub(crate) fn remove_live(&mut self, key: &[u8], now: u64) -> bool {
        match self.map.remove(key) {
            Some(entry) => {
                if entry.expires_at.is_some() {
                    self.volatile = self.volatile.saturating_sub(1);
                }
                entry.is_live(now)
            }
            None => false,
        }
    }

    /// True if `key` exists and has not expired.
    pub(crate) fn contains(&mut self, key: &[u8], now: u64) -> bool {
        self.read(key, now, |value| value.is_some())
    }

    fn insert_new(&mut self, key: Vec<u8>, value: Vec<u8>, expires_at: Option<u64>) {
        if expires_at.is_some() {
            self.volatile += 1;
        }
        self.map.insert(key, Entry { value, expires_at });
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.map.remove(key)
            && entry.expires_at.is_some()
        {
            self.volatile = self.volatile.saturating_sub(1);
        }
    }

    /// Removes every expired entry; returns how many.
    fn purge(&mut self, now: u64) -> usize {
        self.ops = 0;
        if self.volatile == 0 {
            return 0;
        }
        let before = self.map.len();
        let mut volatile = 0;
        self.map.retain(|_, entry| {
            let live = entry.is_live(now);
            if live && entry.expires_at.is_some() {
                volatile += 1;
            }
            live
        });
        self.volatile = volatile;
        before - self.map.len()
    }

    /// Counts an operation, sweeping expired entries once enough have happened.
    fn tick(&mut self, now: u64) {
        self.ops += 1;
        if self.volatile > 0 && self.ops >= self.map.len().max(SWEEP_MIN_OPS) {
            self.purge(now);
        }
    }

    fn clear(&mut self) {
        *self = Shard::default();
    }
}

/// Replaces `slot` with a copy of `value`, reusing the allocation when it fits without
/// wasting much.
fn assign(slot: &mut Vec<u8>, value: &[u8]) {
    let capacity = slot.capacity();
    if capacity >= value.len() && capacity / 2 <= value.len().max(32) {
        slot.clear();
        slot.extend_from_slice(value);
    } else {
        *slot = value.to_vec();
    }
}

/// The shard a key lives in: FNV-1a, cheap and good enough to spread load.
pub(crate) fn shard_of(key: &[u8]) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash ^ (hash >> 32)) as usize) % SHARDS
}

/// The keys and values of a RESP server, shared by all its connections.
///
/// Times are Unix milliseconds passed in by the caller (a session passes
/// [`Cx::unix_millis`](crate::Cx::unix_millis)); the store never reads a clock.
/// A key set to expire at `t` is absent from time `t` on.
///
/// A shard whose lock was poisoned by a panic is used as it is: every update leaves
/// it consistent, so recovering is safe.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// An empty store of [`SHARDS`] shards.
    pub fn new() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// Locks shard `index`, recovering it if a panic poisoned it.
    pub(crate) fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the shard of `key`, under its lock.
    pub(crate) fn with_key<R>(&self, key: &[u8], now: u64, f: impl FnOnce(&mut Shard) -> R) -> R {
        let mut shard = self.lock(shard_of(key));
        let result = f(&mut shard);
        shard.tick(now);
        result
    }

    /// Locks the shards of all `keys` at once (in shard order, so that two multi-key
    /// commands cannot deadlock), then calls `f` with each key, its position in `keys`
    /// and its shard. Other connections see the whole command or none of it.
    pub(crate) fn with_keys<'k, I>(
        &self,
        keys: I,
        now: u64,
        mut f: impl FnMut(usize, &'k [u8], &mut Shard),
    ) where
        I: Iterator<Item = &'k [u8]> + Clone,
    {
        let mask = keys
            .clone()
            .fold(0u64, |mask, key| mask | 1 << shard_of(key));
        let mut guards: [Option<MutexGuard<'_, Shard>>; SHARDS] =
            std::array::from_fn(|index| (mask >> index & 1 == 1).then(|| self.lock(index)));
        for (position, key) in keys.enumerate() {
            if let Some(shard) = guards[shard_of(key)].as_mut() {
                f(position, key, shard);
            }
        }
        for shard in guards.iter_mut().flatten() {
            shard.tick(now);
        }
    }

    /// The value of `key` at time `now_ms`, if it exists.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        self.with_key(key, now_ms, |shard| {
            shard.read(key, now_ms, |value| value.map(<[u8]>::to_vec))
        })
    }

    /// Sets `key` to `value`, to expire at `expires_at_ms` if given (like `SET`, or
    /// `SET PXAT`).
    pub fn set(&self, key: &[u8], value: &[u8], expires_at_ms: Option<u64>, now_ms: u64) {
        let ttl = expires_at_ms.map_or(Ttl::Clear, Ttl::At);
        self.with_key(key, now_ms, |shard| {
            shard.set(key, value, now_ms, Condition::Always, ttl, |_| {});
        });
    }

    /// Removes `key`; returns whether it existed at time `now_ms`.
    pub fn remove(&self, key: &[u8], now_ms: u64) -> bool {
        self.with_key(key, now_ms, |shard| shard.remove_live(key, now_ms))
    }

    /// The number of keys at time `now_ms`. Expired keys are purged on the way, so this
    /// is O(number of keys) when some keys have an expiry.
    pub fn len(&self, now_ms: u64) -> usize {
        (0..SHARDS)
            .map(|index| {
                let mut shard = self.lock(index);
                shard.purge(now_ms);
                shard.map.len()
            })
            .sum()
    }

    /// True when no key exists at time `now_ms`.
    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.len(now_ms) == 0
    }

    /// Removes every key and releases the memory.
    pub fn clear(&self) {
        for index in 0..SHARDS {
            self.lock(index).clear();
        }
    }

    /// Removes the keys expired at time `now_ms`; returns how many. Sessions expire
    /// keys on their own, so calling this is optional (a server may do it now and then
    /// to reclaim memory sooner).
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        (0..SHARDS)
            .map(|index| self.lock(index).purge(now_ms))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_lazily_at_the_deadline() {
        let store = Store::new();
        store.set(b"k", b"v", Some(1_000), 0);
        assert_eq!(store.get(b"k", 999), Some(b"v".to_vec()));
        assert_eq!(store.get(b"k", 1_000), None);
        // The expired entry was removed on access.
        assert_eq!(store.lock(shard_of(b"k")).map.len(), 0);
        assert_eq!(store.lock(shard_of(b"k")).volatile, 0);
    }

    #[test]
    fn sweeps_untouched_expired_keys() {
        let store = Store::new();
        for i in 0..20_000u32 {
            store.set(format!("k{i}").as_bytes(), b"v", Some(10), 0);
        }
        // Keep touching keys that do not expire; the sweeps drop the expired ones.
        for i in 0..200_000u32 {
            store.set(format!("p{}", i % 1000).as_bytes(), b"v", None, 20);
        }
        let left: usize = (0..SHARDS).map(|i| store.lock(i).map.len()).sum();
        assert_eq!(left, 1000);
        assert_eq!(store.len(20), 1000);
    }

    #[test]
    fn counts_and_purges() {
        let store = Store::new();
        store.set(b"a", b"1", None, 0);
        store.set(b"b", b"2", Some(5), 0);
        store.set(b"c", b"3", Some(50), 0);
        assert_eq!(store.len(0), 3);
        assert_eq!(store.purge_expired(10), 1);
        assert_eq!(store.len(10), 2);
        assert!(store.remove(b"a", 10));
        assert!(!store.remove(b"a", 10));
        assert!(!store.remove(b"c", 50));
        assert!(store.is_empty(50));
        store.set(b"a", b"1", None, 0);
        store.clear();
        assert!(store.is_empty(0));
    }

    #[test]
    fn tracks_expiring_keys_through_updates() {
        let mut shard = Shard::default();
        assert!(shard.set(b"k", b"v", 0, Condition::Always, Ttl::At(10), |_| {}));
        assert_eq!(shard.volatile, 1);
        assert!(shard.set(b"k", b"w", 0, Condition::Always, Ttl::Keep, |_| {}));
        assert_eq!(shard.volatile, 1);
        assert!(shard.set(b"k", b"x", 0, Condition::Always, Ttl::Clear, |_| {}));
        assert_eq!(shard.volatile, 0);
        assert!(shard.set(b"k", b"y", 0, Condition::IfPresent, Ttl::At(10), |_| {}));
        // Expired: XX does not write, and the entry goes away.
        assert!(!shard.set(
            b"k",
            b"z",
            10,
            Condition::IfPresent,
            Ttl::Clear,
            |old| assert!(old.is_none())
        ));
        assert_eq!((shard.map.len(), shard.volatile), (0, 0));
        assert!(shard.set(b"n", b"5", 0, Condition::Always, Ttl::At(10), |_| {}));
        assert_eq!(shard.incr(b"n", 1, 5), Ok(6));
        assert_eq!(shard.volatile, 1);
        assert_eq!(shard.incr(b"n", 1, 10), Ok(1));
        assert_eq!(shard.volatile, 0);
        assert_eq!(shard.incr(b"n", i64::MAX, 10), Err(IncrError::Overflow));
        assert!(shard.set(b"s", b"x", 0, Condition::Always, Ttl::Clear, |_| {}));
        assert_eq!(shard.incr(b"s", 1, 0), Err(IncrError::NotInteger));
    }

    #[test]
    fn reuses_value_allocations_sensibly() {
        let mut slot = Vec::with_capacity(100);
        assign(&mut slot, &[1; 80]);
        assert_eq!(slot.capacity(), 100);
        assign(&mut slot, &[2; 3]);
        assert!(slot.capacity() < 100);
        assert_eq!(slot, [2; 3]);
    }

    #[test]
    fn recovers_a_poisoned_shard() {
        let store = Store::new();
        store.set(b"k", b"v", None, 0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = store.lock(shard_of(b"k"));
            panic!("poison the shard");
        }));
        assert!(result.is_err());
        assert_eq!(store.get(b"k", 0), Some(b"v".to_vec()));
    }
}
