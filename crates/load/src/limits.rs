//! The two limits that stop a load generator before the server does: open files, and
//! the ephemeral ports of one source address.
//!
//! A connection from one source address to one server address needs a distinct local
//! port, and the kernel hands them out from `net.ipv4.ip_local_port_range` (28,232 ports
//! by default). Beyond that, connections are spread over the source addresses
//! 127.0.0.2, 127.0.0.3... (all of 127/8 is local on Linux), each bound explicitly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Ports of a source address left for everything else on the machine (the server's own
/// clients, sockets in TIME_WAIT from earlier runs).
pub const PORT_MARGIN: usize = 1024;

/// Descriptors needed beyond one per connection (epoll, stdio, files).
pub const FD_MARGIN: u64 = 64;

/// The kernel's ephemeral port range, `(low, high)` inclusive.
pub fn port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>());
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
                _ => None,
            }
        })
        .unwrap_or((32768, 60999))
}

/// Connections per explicitly bound source address: half the ephemeral range, less half
/// the margin (see [`SourcePlan::new`]).
pub fn bound_per_source(ports: usize) -> usize {
    (ports / 2).saturating_sub(PORT_MARGIN / 2).max(1)
}

/// Where each connection comes from: `None` lets the kernel pick (one source is
/// enough), otherwise the address to bind before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePlan {
    /// Connections per source address.
    pub per_source: usize,
    /// The source addresses (empty: the kernel picks, no explicit bind).
    pub sources: Vec<IpAddr>,
}

impl SourcePlan {
    /// Plans `conns` connections to `target` with `ports` usable ephemeral ports per
    /// source address. Errors when they do not fit (non-loopback target beyond one
    /// source's ports, or more than the loopback addresses can carry).
    pub fn new(conns: usize, target: SocketAddr, ports: usize) -> Result<Self, String> {
        let per_source = ports.saturating_sub(PORT_MARGIN).max(1);
        if conns <= per_source {
            return Ok(SourcePlan {
                per_source,
                sources: Vec::new(),
            });
        }
        if !target.ip().is_loopback() || !target.is_ipv4() {
            return Err(format!(
                "{conns} connections need more than one source address ({per_source} ports \
                 each), which only works against a 127.x.y.z target: use --conns {per_source} \
                 or widen net.ipv4.ip_local_port_range"
            ));
        }
        // Bound explicitly, a source address gives only half its range at full speed:
        // `bind(addr, 0)` takes ports of one parity first, then scans the whole range
        // before every further bind (measured: 10-50 us a bind up to 12,000 ports, 7-9 ms
        // from 14,000 on).
        let per_source = bound_per_source(ports);
        let needed = conns.div_ceil(per_source);
        if needed > 250 {
            return Err(format!(
                "{conns} connections would need {needed} source addresses: use fewer"
            ));
        }
        let sources = (0..needed)
            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k as u8)))
            .collect();
        Ok(SourcePlan {
            per_source,
            sources,
        })
    }

    /// The source of connection `i`.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        self.sources.get(i / self.per_source).copied()
    }
}

/// Raises the soft open-files limit to the hard one, and checks that `conns`
/// connections fit: `Err` holds a warning with the exact numbers.
pub fn check_fd_limit(conns: usize) -> Result<u64, String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let mut raised = lim;
        raised.current = lim.maximum;
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    let soft = lim.current.unwrap_or(u64::MAX);
    let need = conns as u64 + FD_MARGIN;
    if soft < need {
        let hard = lim
            .maximum
            .map_or_else(|| "unlimited".to_string(), |h| h.to_string());
        return Err(format!(
            "the open files limit is {soft} (hard limit {hard}) but {conns} connections need \
             at least {need}: raise it (ulimit -n {need}, as root if above the hard limit) or \
             use --conns {}",
            soft.saturating_sub(FD_MARGIN)
        ));
    }
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SocketAddr {
        "127.0.0.1:7000".parse().unwrap()
    }

    #[test]
    fn one_source_while_the_ports_suffice() {
        let p = SourcePlan::new(10_000, target(), 28_232).unwrap();
        assert!(p.sources.is_empty());
        assert_eq!(p.source(9_999), None);
    }

    #[test]
    fn spreads_beyond_one_sources_ports() {
        let p = SourcePlan::new(60_000, target(), 28_232).unwrap();
        // Bound explicitly: half the range each (13,604), so five addresses.
        assert_eq!(p.per_source, 13_604);
        assert_eq!(p.sources.len(), 5);
        assert_eq!(p.source(0), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(p.source(13_604), Some("127.0.0.3".parse().unwrap()));
        assert_eq!(p.source(59_999), Some("127.0.0.6".parse().unwrap()));
    }

    #[test]
    fn remote_targets_cannot_spread() {
        let remote = "192.0.2.1:80".parse().unwrap();
        let err = SourcePlan::new(60_000, remote, 28_232).unwrap_err();
        assert!(err.contains("--conns 27208"), "{err}");
    }

    #[test]
    fn port_range_is_sane() {
        let (lo, hi) = port_range();
        assert!(lo <= hi);
    }

    #[test]
    fn fd_limit_message_has_the_numbers() {
        let err = check_fd_limit(usize::MAX / 2).unwrap_err();
        assert!(err.contains("ulimit -n"), "{err}");
        assert!(check_fd_limit(10).is_ok());
    }
}
