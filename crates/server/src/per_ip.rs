//! `--max-conns-per-ip`: how many connections one client address may hold open at
//! once, counted over every worker of the process.
//!
//! One table behind a mutex: it is touched twice per connection (open and close),
//! never per request, so contention stays far below the cost of the accept itself.
//! An entry disappears when its count drops to zero, so the table holds one entry per
//! client address with a connection open.
//!
//! Addresses are compared whole: an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`)
//! counts as its IPv4 address; IPv6 clients are not grouped by prefix.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per client address, with a ceiling.
#[derive(Debug)]
pub(crate) struct PerIpLimit {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's count; given back on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl PerIpLimit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PerIpLimit {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// The ceiling.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Take a slot for `ip`, or `None` when it already holds `max` connections.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            limit: Arc::clone(self),
            ip,
        })
    }

    /// Connections `ip` holds now.
    #[cfg(test)]
    pub(crate) fn held(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .limit
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_ceiling_and_slots_come_back_on_drop() {
        let limit = PerIpLimit::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = limit.acquire(a).unwrap();
        let _a2 = limit.acquire(a).unwrap();
        assert!(limit.acquire(a).is_none());
        let _b1 = limit.acquire(b).unwrap();
        assert_eq!((limit.held(a), limit.held(b)), (2, 1));
        drop(a1);
        assert!(limit.acquire(a).is_some()); // dropped at once
        assert_eq!(limit.held(a), 1);
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4_and_empty_entries_go() {
        let limit = PerIpLimit::new(1);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let s = limit.acquire(v4).unwrap();
        assert!(limit.acquire(mapped).is_none());
        drop(s);
        assert_eq!(limit.addresses(), 0);
    }
}
