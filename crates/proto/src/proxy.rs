//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2),
//! decoded sans-IO.
//!
//! A load balancer that speaks the PROXY protocol sends one header at the start of
//! every connection it opens to a backend, saying who the real client is. [`decode`]
//! looks at the bytes received so far and answers [`Decoded::Incomplete`] (offer
//! them again with more appended), [`Decoded::Complete`] (the header and how many
//! bytes it took; the application's bytes follow) or an error. It rejects as early
//! as it can: the first byte that cannot start a header is an error, so a client that
//! talks to a PROXY-only port directly is closed at once instead of waiting for a
//! timeout.
//!
//! What the spec asks of a receiver, and what [`ProxyHeader::source`] says:
//! - v1 `TCP4`/`TCP6` and v2 `PROXY` over `INET`/`INET6` `STREAM`: the client is the
//!   header's source address;
//! - v1 `UNKNOWN`, v2 `LOCAL` (the proxy's own health checks) and v2 `PROXY` with an
//!   unspecified, `UNIX` or datagram address block: the header carries no usable
//!   client address (`source` is `None`) and the connection's own endpoints apply.
//!
//! ```
//! use c10k_proto::proxy::{decode, Decoded, ProxyProtocol};
//!
//! let input = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.1\r\n";
//! assert!(matches!(decode(&input[..10], ProxyProtocol::Any), Ok(Decoded::Incomplete)));
//! let Ok(Decoded::Complete { header, len }) = decode(input, ProxyProtocol::Any) else {
//!     panic!("a complete header");
//! };
//! assert_eq!(header.source, Some("192.0.2.1:56324".parse().unwrap()));
//! assert_eq!(&input[len..], b"GET / HTTP/1.1\r\n");
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that starts a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, `\r\n` included (the spec's limit).
pub const V1_MAX_LEN: usize = 107;
/// The longest version 2 header accepted, the 16 fixed bytes included. The format
/// allows 65,551; what proxies send (addresses plus a few TLVs: ALPN, authority,
/// unique id, TLS details, cloud endpoint ids) stays far below this, and a connection
/// may hold this much unconsumed while its header arrives.
pub const V2_MAX_LEN: usize = 4096;

const V1_PREFIX: &[u8] = b"PROXY ";

/// Which header versions a listener accepts (`--proxy-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// No header: the connection starts with the application's bytes.
    #[default]
    Off,
    /// Version 1 (text) only.
    V1,
    /// Version 2 (binary) only.
    V2,
    /// Either version, told apart by the first byte.
    Any,
}

impl ProxyProtocol {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Any => "any",
        }
    }

    fn accepts(self, version: u8) -> bool {
        matches!(
            (self, version),
            (ProxyProtocol::Any, _) | (ProxyProtocol::V1, 1) | (ProxyProtocol::V2, 2)
        )
    }
}

impl std::fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ProxyProtocol::Off),
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            "any" => Ok(ProxyProtocol::Any),
            _ => Err(format!(
                "unknown PROXY protocol setting '{s}': use off, v1, v2 or any"
            )),
        }
    }
}

/// What the header asks of the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The proxy relays a client (v1 always; v2 `PROXY`).
    Proxy,
    /// The proxy talks for itself, a health check say (v2 `LOCAL`): use the
    /// connection's own endpoints.
    Local,
}

/// One type-length-value extension of a version 2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    /// The type (`PP2_TYPE_ALPN` = 0x01, `PP2_TYPE_AUTHORITY` = 0x02...).
    pub kind: u8,
    /// The value.
    pub value: Vec<u8>,
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// `PROXY` or `LOCAL`.
    pub command: Command,
    /// The client's address, when the header carries a usable one (see the module
    /// documentation); otherwise the connection's own peer applies.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, alongside `source`.
    pub destination: Option<SocketAddr>,
    /// Version 2 extensions, in order (empty for version 1 and `LOCAL`).
    pub tlvs: Vec<Tlv>,
}

/// Progress of [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The bytes so far are a valid beginning: offer them again with more.
    Incomplete,
    /// A whole header: the first `len` input bytes; the application's bytes follow.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Bytes it took.
        len: usize,
    },
}

/// Why the bytes are not an acceptable header. The connection should be closed
/// without a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes do not start with either header's signature (a client talking to the
    /// port directly, or a proxy not configured to send a header).
    #[error("no PROXY protocol header (the connection does not start with one)")]
    NotProxy,
    /// A header of a version this listener does not accept.
    #[error("PROXY protocol v{got} header, but the listener accepts {accepts} only")]
    WrongVersion {
        /// The version received.
        got: u8,
        /// What the listener accepts.
        accepts: ProxyProtocol,
    },
    /// The header is longer than allowed ([`V1_MAX_LEN`], [`V2_MAX_LEN`]).
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
    /// The header breaks the format.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Decode the header at the start of `input`, accepting the versions `accept` allows
/// (with [`ProxyProtocol::Off`] nothing is accepted: every input is
/// [`ProxyError::NotProxy`]).
pub fn decode(input: &[u8], accept: ProxyProtocol) -> Result<Decoded, ProxyError> {
    if accept == ProxyProtocol::Off {
        return Err(ProxyError::NotProxy);
    }
    let Some(&first) = input.first() else {
        return Ok(Decoded::Incomplete);
    };
    let version = match first {
        b'P' => 1,
        b'\r' => 2,
        _ => return Err(ProxyError::NotProxy),
    };
    // Check the signature as far as it has arrived before the version: a stray
    // "P..." is "no header", not "wrong version".
    let signature: &[u8] = if version == 1 {
        V1_PREFIX
    } else {
        &V2_SIGNATURE
    };
    let n = input.len().min(signature.len());
    if input[..n] != signature[..n] {
        return Err(ProxyError::NotProxy);
    }
    if !accept.accepts(version) {
        return Err(ProxyError::WrongVersion {
            got: version,
            accepts: accept,
        });
    }
    if n < signature.len() {
        return Ok(Decoded::Incomplete);
    }
    if version == 1 {
        decode_v1(input)
    } else {
        decode_v2(input)
    }
}

fn decode_v1(input: &[u8]) -> Result<Decoded, ProxyError> {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if input.len() >= V1_MAX_LEN {
            return Err(ProxyError::TooLong(V1_MAX_LEN));
        }
        // No LF yet: a CR anywhere but in the last byte is not followed by LF.
        if window[..window.len() - 1].contains(&b'\r') {
            return Err(ProxyError::Malformed("CR not followed by LF"));
        }
        return Ok(Decoded::Incomplete);
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ProxyError::Malformed("line not ended by CRLF"));
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    if line.contains(&b'\r') {
        return Err(ProxyError::Malformed("CR not followed by LF"));
    }
    let line =
        std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 header is not ASCII"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().unwrap_or("");
    let (source, destination) = match proto {
        // "the receiver must ignore anything presented before the CRLF is found"
        "UNKNOWN" => (None, None),
        "TCP4" | "TCP6" => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyError::Malformed(
                    "v1 TCP needs four fields after the protocol",
                ));
            };
            let (src, dst): (IpAddr, IpAddr) = if proto == "TCP4" {
                (
                    src.parse::<Ipv4Addr>()
                        .map_err(|_| ProxyError::Malformed("bad v1 TCP4 source address"))?
                        .into(),
                    dst.parse::<Ipv4Addr>()
                        .map_err(|_| ProxyError::Malformed("bad v1 TCP4 destination address"))?
                        .into(),
                )
            } else {
                (
                    src.parse::<Ipv6Addr>()
                        .map_err(|_| ProxyError::Malformed("bad v1 TCP6 source address"))?
                        .into(),
                    dst.parse::<Ipv6Addr>()
                        .map_err(|_| ProxyError::Malformed("bad v1 TCP6 destination address"))?
                        .into(),
                )
            };
            (
                Some(SocketAddr::new(src, parse_port(sport)?)),
                Some(SocketAddr::new(dst, parse_port(dport)?)),
            )
        }
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    Ok(Decoded::Complete {
        header: ProxyHeader {
            version: 1,
            command: Command::Proxy,
            source,
            destination,
            tlvs: Vec::new(),
        },
        len: lf + 1,
    })
}

/// A v1 port: decimal digits, no sign, no leading zero, at most 65535.
fn parse_port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::Malformed("bad v1 port");
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn decode_v2(input: &[u8]) -> Result<Decoded, ProxyError> {
    if input.len() < 16 {
        // The version and command byte can be checked as soon as it arrives.
        if let Some(&vc) = input.get(12) {
            check_version_command(vc)?;
        }
        return Ok(Decoded::Incomplete);
    }
    let command = check_version_command(input[12])?;
    let family = input[13];
    let body_len = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let len = 16 + body_len;
    if len > V2_MAX_LEN {
        return Err(ProxyError::TooLong(V2_MAX_LEN));
    }
    if input.len() < len {
        return Ok(Decoded::Incomplete);
    }
    let body = &input[16..len];
    if command == Command::Local {
        // "the receiver must accept this connection as valid and must use the real
        // connection endpoints and discard the protocol block including the family".
        return Ok(Decoded::Complete {
            header: ProxyHeader {
                version: 2,
                command,
                source: None,
                destination: None,
                tlvs: Vec::new(),
            },
            len,
        });
    }
    let addr_len = match family >> 4 {
        0x0 => 0,   // AF_UNSPEC
        0x1 => 12,  // AF_INET: 4 + 4 + 2 + 2
        0x2 => 36,  // AF_INET6: 16 + 16 + 2 + 2
        0x3 => 216, // AF_UNIX: 108 + 108
        _ => return Err(ProxyError::Malformed("v2 address family is not 0 to 3")),
    };
    let transport = family & 0x0f;
    if transport > 2 {
        return Err(ProxyError::Malformed("v2 transport is not 0 to 2"));
    }
    if body.len() < addr_len {
        return Err(ProxyError::Malformed(
            "v2 length shorter than its address block",
        ));
    }
    let (addrs, mut rest) = body.split_at(addr_len);
    // Only a stream over IPv4 or IPv6 names a TCP client; for the rest the connection's
    // own endpoints apply (the spec lets a receiver accept and use them).
    let stream = transport == 1;
    let (source, destination) = match (family >> 4, stream) {
        (0x1, true) => {
            let ip = |i: usize| IpAddr::from([addrs[i], addrs[i + 1], addrs[i + 2], addrs[i + 3]]);
            let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (0x2, true) => {
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&addrs[i..i + 16]);
                IpAddr::from(o)
            };
            let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        _ => (None, None),
    };
    let mut tlvs = Vec::new();
    while !rest.is_empty() {
        let [kind, hi, lo, ..] = *rest else {
            return Err(ProxyError::Malformed("v2 TLV header cut short"));
        };
        let n = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(value) = rest.get(3..3 + n) else {
            return Err(ProxyError::Malformed("v2 TLV longer than the header"));
        };
        tlvs.push(Tlv {
            kind,
            value: value.to_vec(),
        });
        rest = &rest[3 + n..];
    }
    Ok(Decoded::Complete {
        header: ProxyHeader {
            version: 2,
            command,
            source,
            destination,
            tlvs,
        },
        len,
    })
}

fn check_version_command(vc: u8) -> Result<Command, ProxyError> {
    if vc >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version nibble is not 2"));
    }
    match vc & 0x0f {
        0 => Ok(Command::Local),
        1 => Ok(Command::Proxy),
        _ => Err(ProxyError::Malformed(
            "v2 command is neither LOCAL nor PROXY",
        )),
    }
}

#[cfg(test)]
mod tests;
