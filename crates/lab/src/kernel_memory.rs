//! The kernel's memory for sockets, read before and after idle connections open, so that
//! a report shows the whole cost of a connection and not only the server's user space.
//!
//! Two sources, both machine-wide:
//! - `/proc/net/sockstat`: `TCP: ... mem N`, the pages charged to TCP socket buffers
//!   (receive and send queues); near zero for idle connections, large for busy ones;
//! - `/proc/slabinfo` (root only): the slab objects every TCP connection holds: the
//!   socket itself (`TCP`, `TCPv6`), its inode (`sock_inode_cache`), its open file
//!   (`filp`), its dentry, an epoll registration (`eventpoll_epi`), and the bind bucket.
//!   `active_objs x objsize` per cache.
//!
//! On loopback both ends of every connection live in this kernel, and the load's end
//! holds the same objects (a socket, an inode, a file, an epoll registration) as the
//! server's. The figure is therefore per connection *pair*; the server's share is about
//! half of it.

use serde::Serialize;

/// The slab caches a TCP connection's objects live in.
pub const SLABS: [&str; 8] = [
    "TCP",
    "TCPv6",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "eventpoll_pwq",
    "tcp_bind_bucket",
];

/// One reading of the kernel's socket memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KernelMemory {
    /// TCP sockets in use (`/proc/net/sockstat`, `TCP: inuse`).
    pub tcp_inuse: u64,
    /// Bytes charged to TCP socket buffers (`TCP: mem` pages x page size).
    pub tcp_buffer_bytes: u64,
    /// Bytes of the slab objects in [`SLABS`]; `None` when `/proc/slabinfo` cannot be
    /// read (it needs root).
    pub slab_bytes: Option<u64>,
}

impl KernelMemory {
    /// Reads this machine's.
    pub fn read() -> Self {
        let page = crate::resolution::page_bytes();
        let (tcp_inuse, mem_pages) = std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .map(|t| parse_sockstat(&t))
            .unwrap_or_default();
        let slab_bytes = std::fs::read_to_string("/proc/slabinfo")
            .ok()
            .and_then(|t| parse_slabinfo(&t, &SLABS));
        KernelMemory {
            tcp_inuse,
            tcp_buffer_bytes: mem_pages * page,
            slab_bytes,
        }
    }

    /// Buffers and slab objects together (slab only when readable).
    pub fn total_bytes(&self) -> u64 {
        self.tcp_buffer_bytes + self.slab_bytes.unwrap_or(0)
    }
}

/// What opening `conns` connections cost the kernel, per connection (both ends of
/// loopback: see the module documentation).
#[derive(Debug, Clone, Serialize)]
pub struct KernelMemoryGrowth {
    /// Before the connections opened.
    pub before: KernelMemory,
    /// With them open.
    pub after: KernelMemory,
    /// `(after - before).total_bytes() / conns`, bytes; null when it shrank (other
    /// activity on the machine freed more than the connections took).
    pub bytes_per_conn: Option<f64>,
    /// The socket-buffer part of it, bytes.
    pub buffer_bytes_per_conn: Option<f64>,
    /// The slab part of it, bytes (null without `/proc/slabinfo`).
    pub slab_bytes_per_conn: Option<f64>,
}

impl KernelMemoryGrowth {
    /// The growth from `before` to `after` over `conns` connections.
    pub fn new(before: KernelMemory, after: KernelMemory, conns: usize) -> Self {
        let per = |b: u64, a: u64| (a > b && conns > 0).then(|| (a - b) as f64 / conns as f64);
        let slab = match (before.slab_bytes, after.slab_bytes) {
            (Some(b), Some(a)) => per(b, a),
            _ => None,
        };
        KernelMemoryGrowth {
            before,
            after,
            bytes_per_conn: per(before.total_bytes(), after.total_bytes()),
            buffer_bytes_per_conn: per(before.tcp_buffer_bytes, after.tcp_buffer_bytes),
            slab_bytes_per_conn: slab,
        }
    }
}

/// `(inuse, mem pages)` of the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat(text: &str) -> (u64, u64) {
    let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) else {
        return (0, 0);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("inuse"), field("mem"))
}

/// The bytes of the named caches in `/proc/slabinfo` (`active_objs x objsize`), or
/// `None` if the text is not slabinfo.
pub fn parse_slabinfo(text: &str, caches: &[&str]) -> Option<u64> {
    if !text.starts_with("slabinfo") {
        return None;
    }
    let mut total = 0u64;
    for line in text.lines().skip(2) {
        let mut w = line.split_whitespace();
        let (Some(name), Some(active), Some(_num), Some(size)) =
            (w.next(), w.next(), w.next(), w.next())
        else {
            continue;
        };
        if caches.contains(&name) {
            let active: u64 = active.parse().unwrap_or(0);
            let size: u64 = size.parse().unwrap_or(0);
            total += active * size;
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_and_slabinfo_parse() {
        let sockstat =
            "sockets: used 180\nTCP: inuse 7 orphan 0 tw 2 alloc 9 mem 12\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat(sockstat), (7, 12));
        assert_eq!(parse_sockstat("nothing"), (0, 0));
        let slab = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\n\
                    TCP 100 120 2432 13 8 : tunables 0 0 0\n\
                    filp 1000 1100 256 16 1 : tunables 0 0 0\n\
                    kmalloc-64 5000 5000 64 64 1 : tunables 0 0 0\n";
        assert_eq!(parse_slabinfo(slab, &SLABS), Some(100 * 2432 + 1000 * 256));
        assert_eq!(parse_slabinfo("not slabinfo", &SLABS), None);
    }

    #[test]
    fn growth_per_connection() {
        let before = KernelMemory {
            tcp_inuse: 10,
            tcp_buffer_bytes: 4096,
            slab_bytes: Some(1_000_000),
        };
        let after = KernelMemory {
            tcp_inuse: 2010,
            tcp_buffer_bytes: 8192,
            slab_bytes: Some(9_000_000),
        };
        let g = KernelMemoryGrowth::new(before, after, 1000);
        assert_eq!(g.slab_bytes_per_conn, Some(8000.0));
        assert_eq!(g.buffer_bytes_per_conn, Some(4.096));
        assert_eq!(g.bytes_per_conn, Some(8004.096));
        let shrank = KernelMemoryGrowth::new(after, before, 1000);
        assert_eq!(shrank.bytes_per_conn, None);
        let no_slab = KernelMemoryGrowth::new(
            KernelMemory {
                slab_bytes: None,
                ..before
            },
            after,
            1000,
        );
        assert_eq!(no_slab.slab_bytes_per_conn, None);
    }

    #[test]
    fn this_machine_reads() {
        let k = KernelMemory::read();
        // Root on Linux: slabinfo is readable; sockstat always is.
        assert!(k.tcp_inuse < 10_000_000);
        if rustix::process::geteuid().is_root() {
            assert!(k.slab_bytes.is_some_and(|b| b > 0), "{k:?}");
        }
    }
}
