use super::*;

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn inet_body(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut b = src.to_vec();
    b.extend_from_slice(&dst);
    b.extend_from_slice(&sport.to_be_bytes());
    b.extend_from_slice(&dport.to_be_bytes());
    b
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    t.extend_from_slice(value);
    t
}

fn complete(input: &[u8], accept: ProxyProtocol) -> (ProxyHeader, usize) {
    match decode(input, accept) {
        Ok(Decoded::Complete { header, len }) => (header, len),
        other => panic!("expected a complete header from {input:?}, got {other:?}"),
    }
}

/// Every proper prefix is Incomplete; the whole is Complete with the same header,
/// also with application bytes after it.
fn every_split(header: &[u8], accept: ProxyProtocol) -> ProxyHeader {
    for cut in 0..header.len() {
        assert_eq!(
            decode(&header[..cut], accept),
            Ok(Decoded::Incomplete),
            "prefix of {cut} bytes"
        );
    }
    let (h, len) = complete(header, accept);
    assert_eq!(len, header.len());
    let mut more = header.to_vec();
    more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let (h2, len2) = complete(&more, accept);
    assert_eq!((h2, len2), (h.clone(), len));
    h
}

#[test]
fn v1_tcp4_at_every_byte_boundary() {
    let input = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n";
    for accept in [ProxyProtocol::V1, ProxyProtocol::Any] {
        let h = every_split(input, accept);
        assert_eq!(h.version, 1);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.7:443".parse().unwrap()));
    }
}

#[test]
fn v1_tcp6_at_every_byte_boundary() {
    let input = b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 65535 0\r\n";
    let h = every_split(input, ProxyProtocol::Any);
    assert_eq!(h.source, Some("[2001:db8::1]:65535".parse().unwrap()));
    assert_eq!(
        h.destination,
        Some("[::ffff:198.51.100.7]:0".parse().unwrap())
    );
}

#[test]
fn v1_unknown_uses_the_connection_addresses() {
    for input in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ] {
        let h = every_split(input, ProxyProtocol::V1);
        assert_eq!(h.source, None);
        assert_eq!(h.destination, None);
    }
}

#[test]
fn v1_longest_header_is_accepted_and_one_more_byte_is_not() {
    // The spec's worst case: UNKNOWN followed by two full IPv6 addresses.
    let a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let long = format!("PROXY UNKNOWN {a} {a} 65535 65535\r\n");
    assert_eq!(long.len(), V1_MAX_LEN);
    every_split(long.as_bytes(), ProxyProtocol::V1);
    let tcp6 = format!("PROXY TCP6 {a} {a} 65535 65535\r\n");
    assert_eq!(
        every_split(tcp6.as_bytes(), ProxyProtocol::V1)
            .source
            .map(|s| s.port()),
        Some(65535)
    );
    let mut junk = b"PROXY UNKNOWN ".to_vec();
    junk.resize(V1_MAX_LEN, b'x');
    assert_eq!(
        decode(&junk, ProxyProtocol::V1),
        Err(ProxyError::TooLong(V1_MAX_LEN))
    );
    junk.extend_from_slice(b"\r\n");
    assert_eq!(
        decode(&junk, ProxyProtocol::V1),
        Err(ProxyError::TooLong(V1_MAX_LEN))
    );
}

#[test]
fn v1_malformed_lines_are_rejected() {
    for bad in [
        &b"PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n"[..],
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 9\r\n",
        b"PROXY TCP4  192.0.2.1 198.51.100.7 56324 443\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.7 56324 443\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.7 56324 443\r\n",
        b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 65536 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 +5 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 0443 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 -1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\rx",
        b"PROXY UDP4 192.0.2.1 198.51.100.7 56324 443\r\n",
        b"PROXY \r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 \xff\r\n",
    ] {
        let got = decode(bad, ProxyProtocol::Any);
        assert!(
            matches!(got, Err(ProxyError::Malformed(_))),
            "{:?} gave {got:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn bad_signatures_are_rejected_at_the_first_wrong_byte() {
    for accept in [ProxyProtocol::V1, ProxyProtocol::V2, ProxyProtocol::Any] {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"G",
            b"*1\r\n$4\r\nPING\r\n",
            b"PROXX",
            b"proxy TCP4",
            b"\r\n\r\n\0\r\nQUIx",
            b"\r\r",
            b"\x00",
        ] {
            assert_eq!(
                decode(bad, accept),
                Err(ProxyError::NotProxy),
                "{accept} {bad:?}"
            );
        }
    }
    assert_eq!(
        decode(b"anything", ProxyProtocol::Off),
        Err(ProxyError::NotProxy)
    );
}

#[test]
fn a_version_the_listener_does_not_accept_is_rejected() {
    assert_eq!(
        decode(b"PROXY ", ProxyProtocol::V2),
        Err(ProxyError::WrongVersion {
            got: 1,
            accepts: ProxyProtocol::V2
        })
    );
    assert_eq!(
        decode(&V2_SIGNATURE, ProxyProtocol::V1),
        Err(ProxyError::WrongVersion {
            got: 2,
            accepts: ProxyProtocol::V1
        })
    );
}

#[test]
fn v2_proxy_inet_with_tlvs_at_every_byte_boundary() {
    let mut body = inet_body([192, 0, 2, 1], [198, 51, 100, 7], 56324, 443);
    body.extend(tlv(0x01, b"h2"));
    body.extend(tlv(0x02, b"example.com"));
    body.extend(tlv(0x04, b""));
    let input = v2(1, 0x11, &body);
    for accept in [ProxyProtocol::V2, ProxyProtocol::Any] {
        let h = every_split(&input, accept);
        assert_eq!(h.version, 2);
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.7:443".parse().unwrap()));
        assert_eq!(
            h.tlvs,
            vec![
                Tlv {
                    kind: 1,
                    value: b"h2".to_vec()
                },
                Tlv {
                    kind: 2,
                    value: b"example.com".to_vec()
                },
                Tlv {
                    kind: 4,
                    value: Vec::new()
                },
            ]
        );
    }
}

#[test]
fn v2_proxy_inet6_at_every_byte_boundary() {
    let src: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
    let mut body = src.octets().to_vec();
    body.extend_from_slice(&dst.octets());
    body.extend_from_slice(&1234u16.to_be_bytes());
    body.extend_from_slice(&80u16.to_be_bytes());
    let h = every_split(&v2(1, 0x21, &body), ProxyProtocol::V2);
    assert_eq!(h.source, Some("[2001:db8::1]:1234".parse().unwrap()));
    assert_eq!(h.destination, Some("[2001:db8::2]:80".parse().unwrap()));
}

#[test]
fn v2_local_ignores_the_address_block_and_its_tlvs() {
    // HAProxy's health checks: LOCAL, AF_UNSPEC, no body.
    let h = every_split(&v2(0, 0x00, &[]), ProxyProtocol::V2);
    assert_eq!(h.command, Command::Local);
    assert_eq!(h.source, None);
    // LOCAL with an address block and TLVs: all discarded, length respected.
    let mut body = inet_body([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
    body.extend(tlv(0xE0, b"x"));
    let input = v2(0, 0x11, &body);
    let h = every_split(&input, ProxyProtocol::Any);
    assert_eq!(
        (h.command, h.source, h.tlvs.len()),
        (Command::Local, None, 0)
    );
}

#[test]
fn v2_unspec_unix_and_datagram_use_the_connection_addresses() {
    let h = every_split(&v2(1, 0x00, &[]), ProxyProtocol::V2);
    assert_eq!((h.command, h.source), (Command::Proxy, None));
    let h = every_split(&v2(1, 0x31, &[0u8; 216]), ProxyProtocol::V2);
    assert_eq!(h.source, None);
    let dgram = v2(1, 0x12, &inet_body([1, 2, 3, 4], [5, 6, 7, 8], 9, 10));
    assert_eq!(every_split(&dgram, ProxyProtocol::V2).source, None);
    let unspec_transport = v2(1, 0x10, &inet_body([1, 2, 3, 4], [5, 6, 7, 8], 9, 10));
    assert_eq!(
        every_split(&unspec_transport, ProxyProtocol::V2).source,
        None
    );
}

#[test]
fn v2_wrong_lengths_and_fields_are_rejected() {
    let inet = inet_body([1, 2, 3, 4], [5, 6, 7, 8], 9, 10);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (v2(1, 0x11, &inet[..11]), "shorter than the INET block"),
        (v2(1, 0x21, &inet), "shorter than the INET6 block"),
        (v2(1, 0x31, &[0u8; 100]), "shorter than the UNIX block"),
        (
            v2(1, 0x11, &[&inet[..], &[0x01, 0x00]].concat()),
            "TLV header cut",
        ),
        (
            v2(1, 0x11, &[&inet[..], &[0x01, 0x00, 0x05, b'a']].concat()),
            "TLV value cut",
        ),
        (v2(1, 0x41, &inet), "family 4"),
        (v2(1, 0x13, &inet), "transport 3"),
        (v2(2, 0x11, &inet), "command 2"),
    ];
    for (input, why) in cases {
        let got = decode(&input, ProxyProtocol::V2);
        assert!(
            matches!(got, Err(ProxyError::Malformed(_))),
            "{why}: {got:?}"
        );
    }
    // A version nibble other than 2 is rejected as soon as its byte arrives.
    let mut v3 = V2_SIGNATURE.to_vec();
    v3.push(0x31);
    assert!(matches!(
        decode(&v3, ProxyProtocol::V2),
        Err(ProxyError::Malformed(_))
    ));
}

#[test]
fn v2_oversize_is_rejected_from_the_length_field() {
    // Rejected from the 16 fixed bytes alone, without waiting for the body.
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&u16::try_from(V2_MAX_LEN - 15).unwrap().to_be_bytes());
    assert_eq!(
        decode(&h, ProxyProtocol::V2),
        Err(ProxyError::TooLong(V2_MAX_LEN))
    );
    // The largest accepted: an INET block and one big TLV filling the rest.
    let mut body = inet_body([1, 2, 3, 4], [5, 6, 7, 8], 9, 10);
    body.extend(tlv(0xEE, &vec![7u8; V2_MAX_LEN - 16 - 12 - 3]));
    let input = v2(1, 0x11, &body);
    assert_eq!(input.len(), V2_MAX_LEN);
    let (h, len) = complete(&input, ProxyProtocol::V2);
    assert_eq!((len, h.tlvs.len()), (V2_MAX_LEN, 1));
}

#[test]
fn settings_parse_and_print() {
    for s in ["off", "v1", "v2", "any"] {
        assert_eq!(s.parse::<ProxyProtocol>().unwrap().to_string(), s);
    }
    assert!(
        "v3".parse::<ProxyProtocol>()
            .unwrap_err()
            .contains("off, v1, v2 or any")
    );
}

/// Found by `fuzz/fuzz_targets/proxy.rs`: a CR inside the line was only noticed while
/// it was the last CR received, so a later CR made the header look incomplete again
/// (an error turned back into "need more").
#[test]
fn regression_fuzz_cr_inside_v1_line_before_a_final_cr() {
    let input = b"PROXY =\r\0\0\0\0\0\0\0?\0\xdc\0\0\0\0\r";
    for cut in 9..=input.len() {
        assert!(
            matches!(
                decode(&input[..cut], ProxyProtocol::Any),
                Err(ProxyError::Malformed(_))
            ),
            "cut {cut}"
        );
    }
}

/// Found by `fuzz/fuzz_targets/proxy.rs`: `UNKNOWN` ignores the rest of its line, and
/// that took in a bare CR (`...\r\r\n`), while the same bytes without the final LF were
/// an error. A CR inside the line is an error at every length now.
#[test]
fn regression_fuzz_bare_cr_inside_an_unknown_line() {
    let input = b"PROXY UNKNOWN Y\r\r\nT-\0";
    for cut in 17..=input.len() {
        assert_eq!(
            decode(&input[..cut], ProxyProtocol::Any),
            Err(ProxyError::Malformed("CR not followed by LF")),
            "cut {cut}"
        );
    }
}

/// Encode a header the way a proxy does (test side only).
fn encode(h: &ProxyHeader) -> Vec<u8> {
    if h.version == 1 {
        return match (h.source, h.destination) {
            (Some(s), Some(d)) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes()
            }
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        };
    }
    let mut body = Vec::new();
    let family = match (h.source, h.destination) {
        (Some(SocketAddr::V4(s)), Some(SocketAddr::V4(d))) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        (Some(SocketAddr::V6(s)), Some(SocketAddr::V6(d))) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x21
        }
        _ => 0x00,
    };
    for t in &h.tlvs {
        body.extend(tlv(t.kind, &t.value));
    }
    let command = u8::from(h.command == Command::Proxy);
    v2(command, family, &body)
}

mod roundtrip {
    use super::*;
    use proptest::prelude::*;

    fn addr_pair() -> impl Strategy<Value = (Option<SocketAddr>, Option<SocketAddr>)> {
        prop_oneof![
            Just((None, None)),
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| (
                    Some(SocketAddr::from((s, sp))),
                    Some(SocketAddr::from((d, dp)))
                )),
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<u16>()
            )
                .prop_map(|(s, d, sp, dp)| (
                    Some(SocketAddr::from((s, sp))),
                    Some(SocketAddr::from((d, dp)))
                )),
        ]
    }

    fn header() -> impl Strategy<Value = ProxyHeader> {
        let tlvs = proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(kind, value)| Tlv { kind, value }),
            0..5,
        );
        (1u8..=2, any::<bool>(), addr_pair(), tlvs).prop_map(|(version, local, addrs, tlvs)| {
            let local = local && version == 2;
            let (source, destination) = if local { (None, None) } else { addrs };
            ProxyHeader {
                version,
                command: if local {
                    Command::Local
                } else {
                    Command::Proxy
                },
                source,
                destination,
                tlvs: if version == 2 && !local {
                    tlvs
                } else {
                    Vec::new()
                },
            }
        })
    }

    proptest! {
        #[test]
        fn encoded_headers_decode_to_themselves_however_split(
            h in header(),
            cut in any::<prop::sample::Index>(),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let bytes = encode(&h);
            let cut = cut.index(bytes.len());
            prop_assert_eq!(decode(&bytes[..cut], ProxyProtocol::Any), Ok(Decoded::Incomplete));
            let mut with_tail = bytes.clone();
            with_tail.extend_from_slice(&tail);
            prop_assert_eq!(
                decode(&with_tail, ProxyProtocol::Any),
                Ok(Decoded::Complete { header: h, len: bytes.len() })
            );
        }
    }
}
