//! What a proxy in front of the gateway says about the client: the PROXY
//! protocol header (v1 text, v2 binary) a load balancer writes before the
//! client's bytes, and the `Forwarded` (RFC 7239) and `X-Forwarded-For`
//! request headers an HTTP proxy adds. Parsed here without I/O; whether a
//! peer may be believed is the gateway's decision (`http.trusted_proxies`).
//!
//! The PROXY protocol is specified by HAProxy:
//! <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The first bytes of a v1 header.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Longest v1 header, CRLF included (section 2.1).
pub const V1_MAX_BYTES: usize = 107;

/// The 12 bytes that start a v2 header: chosen so that no HTTP request or
/// TLS handshake starts with them.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest v2 header: the fixed 16 bytes and a 16-bit length.
pub const V2_MAX_BYTES: usize = 16 + u16::MAX as usize;

/// A complete PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes of the header: what follows is the client's own.
    pub len: usize,
    /// The client's address as the proxy saw it. `None` for a connection
    /// the proxy made itself (v2 `LOCAL`: its health checks) or one whose
    /// source it does not know (v1 `UNKNOWN`, v2 `UNSPEC`, a UNIX socket,
    /// a datagram): the TCP peer's address stands for it.
    pub source: Option<SocketAddr>,
}

/// Why the start of a connection is not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Neither signature: the peer sent something else first (an HTTP
    /// request, a TLS handshake).
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(&'static str),
}

/// Parses the PROXY header at the start of `buf`: `Ok(None)` until it is
/// complete. Either version is accepted; anything else is an error as soon
/// as the first bytes show it, so a peer that sends none is refused without
/// waiting for more.
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    if starts_like(buf, &V2_SIGNATURE) {
        return if buf.len() < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    if starts_like(buf, V1_PREFIX) {
        return if buf.len() < V1_PREFIX.len() {
            Ok(None)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyHeaderError::Missing)
}

/// Whether `buf` starts with a PROXY signature (v1 or v2), in full: what a
/// peer that is not trusted to send one is told it got wrong.
pub fn starts_with_proxy_signature(buf: &[u8]) -> bool {
    buf.starts_with(V1_PREFIX) || buf.starts_with(&V2_SIGNATURE)
}

/// `buf` and `signature` agree on their common length (a short `buf` may
/// still become the signature).
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf.get(..n) == signature.get(..n)
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    use ProxyHeaderError::V1;
    let window = buf.get(..buf.len().min(V1_MAX_BYTES)).unwrap_or(buf);
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX_BYTES {
            Err(V1("no CRLF within 107 bytes"))
        } else if window.contains(&b'\n') {
            Err(V1("a bare LF"))
        } else {
            Ok(None)
        };
    };
    let line = window.get(V1_PREFIX.len()..end).unwrap_or_default();
    if !line.is_ascii() {
        return Err(V1("not ASCII"));
    }
    let line = std::str::from_utf8(line).map_err(|_| V1("not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // Whatever follows UNKNOWN is to be ignored (section 2.1).
        return Ok(Some(ProxyHeader { len, source: None }));
    }
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(V1("expected PROXY TCP4|TCP6 SRC DST SPORT DPORT"));
    };
    let ip: IpAddr = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map_err(|_| V1("bad TCP4 source address"))?
            .into(),
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map_err(|_| V1("bad TCP6 source address"))?
            .into(),
        _ => return Err(V1("unknown protocol family")),
    };
    // The destination is checked only for its shape: nothing uses it.
    let dst_ok = match family {
        "TCP4" => dst.parse::<Ipv4Addr>().is_ok(),
        _ => dst.parse::<Ipv6Addr>().is_ok(),
    };
    if !dst_ok {
        return Err(V1("bad destination address"));
    }
    let port = v1_port(sport).ok_or(V1("bad source port"))?;
    v1_port(dport).ok_or(V1("bad destination port"))?;
    Ok(Some(ProxyHeader {
        len,
        source: Some(SocketAddr::new(ip, port)),
    }))
}

/// A decimal port: digits only (`u16::from_str` would take a `+`).
fn v1_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    use ProxyHeaderError::V2;
    let Some(&[ver_cmd, fam, l0, l1]) = buf.get(12..16) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(V2("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(V2("unknown command")),
    };
    let body_len = usize::from(u16::from_be_bytes([l0, l1]));
    let len = 16 + body_len;
    let Some(body) = buf.get(16..len) else {
        return Ok(None);
    };
    if local {
        // The proxy's own connection (a health check): the spec has the
        // receiver discard the family and addresses, whatever they say.
        return Ok(Some(ProxyHeader { len, source: None }));
    }
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(V2("unknown address family or transport"));
    }
    let need = match family {
        1 => 12,  // two IPv4 addresses and two ports
        2 => 36,  // two IPv6 addresses and two ports
        3 => 216, // two UNIX paths of 108 bytes
        _ => 0,
    };
    if body.len() < need {
        return Err(V2("address block shorter than its family needs"));
    }
    // TLVs after the addresses (AWS's VPC endpoint id, GCP's, SSL details)
    // are skipped: nothing here needs them.
    let stream = transport == 1;
    let source = match (family, stream) {
        (1, true) => {
            let a = octets::<4>(body, 0);
            let port = u16::from_be_bytes(octets::<2>(body, 8));
            Some(SocketAddr::new(Ipv4Addr::from(a).into(), port))
        }
        (2, true) => {
            let a = octets::<16>(body, 0);
            let port = u16::from_be_bytes(octets::<2>(body, 32));
            Some(SocketAddr::new(Ipv6Addr::from(a).into(), port))
        }
        _ => None,
    };
    Ok(Some(ProxyHeader { len, source }))
}

/// `N` bytes of `body` from `at`; the caller checked the length, and a
/// short body reads as zeros rather than a panic.
fn octets<const N: usize>(body: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = body.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// The hops of `X-Forwarded-For` values (joined with commas, as repeated
/// headers are), left to right: the client first, then each proxy that
/// passed the request on. `None` for an entry that is not an address
/// (`unknown`, garbage).
pub fn x_forwarded_for(value: &str) -> Vec<Option<IpAddr>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(node_address)
        .collect()
}

/// The `for=` of each element of `Forwarded` values (RFC 7239), left to
/// right. `None` for an element without `for=`, with an obfuscated or
/// `unknown` node, or that does not parse.
pub fn forwarded_for(value: &str) -> Vec<Option<IpAddr>> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|element| {
            split_outside_quotes(element, ';')
                .into_iter()
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| unquote(v.trim()))
                .and_then(node_address)
        })
        .collect()
}

/// Splits on `sep` where it is not inside a quoted-string (a quoted value
/// may hold commas and semicolons). An unterminated quote runs to the end.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(s.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// A token, or a quoted-string without its quotes. `None` for a quote that
/// does not close (or escapes, which no address needs).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        None => Some(v),
        Some(rest) => rest.strip_suffix('"').filter(|inner| !inner.contains('\\')),
    }
}

/// A node as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn node_address(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([ver_cmd, fam]);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend([10, 0, 0, 1]);
        body.extend(port.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        v2(0x21, 0x11, &body)
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n";
        let got = parse_proxy_header(h).unwrap().unwrap();
        assert_eq!(got.len, 44);
        assert_eq!(got.source, Some("203.0.113.7:51234".parse().unwrap()));
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n";
        let got = parse_proxy_header(h).unwrap().unwrap();
        assert_eq!(got.source, Some("[2001:db8::7]:1".parse().unwrap()));
        assert_eq!(got.len, h.len());
        let got = parse_proxy_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nX")
            .unwrap()
            .unwrap();
        assert_eq!((got.len, got.source), (35, None));
        assert_eq!(
            parse_proxy_header(b"PROXY UNKNOWN\r\n").unwrap(),
            Some(ProxyHeader {
                len: 15,
                source: None
            })
        );
    }

    #[test]
    fn v1_in_pieces_is_incomplete_until_the_crlf() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n";
        for n in 0..h.len() {
            assert_eq!(parse_proxy_header(&h[..n]), Ok(None), "{n} bytes");
        }
        assert!(parse_proxy_header(h).unwrap().is_some());
    }

    #[test]
    fn v1_garbage_is_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080 9\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 nowhere 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +80 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 80 -1\r\n",
            b"PROXY TCP4 203.0.113.7  10.0.0.1 80 1\r\n",
            b"PROXY TCP4 203.000.113.7 10.0.0.1 80 1\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 80 1\r\n",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4\n",
            b"PROXY TCP4 \xff.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(
                matches!(parse_proxy_header(bad), Err(ProxyHeaderError::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert_eq!(
            parse_proxy_header(&long),
            Err(ProxyHeaderError::V1("no CRLF within 107 bytes"))
        );
        // A CRLF just past the limit is too late.
        let mut late = b"PROXY UNKNOWN ".to_vec();
        late.resize(V1_MAX_BYTES - 1, b'x');
        late.extend(b"\r\n");
        assert!(parse_proxy_header(&late).is_err());
        late.truncate(V1_MAX_BYTES - 2);
        late.extend(b"\r\n");
        assert!(parse_proxy_header(&late).unwrap().is_some());
    }

    #[test]
    fn anything_else_is_missing_at_once() {
        assert_eq!(
            parse_proxy_header(b"GET / HTTP/1.1\r\n"),
            Err(ProxyHeaderError::Missing)
        );
        assert_eq!(parse_proxy_header(b"G"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            parse_proxy_header(b"\x16\x03\x01"),
            Err(ProxyHeaderError::Missing)
        );
        assert_eq!(parse_proxy_header(b"PROXX"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            parse_proxy_header(b"\r\n\r\n\0\r\nQUIX"),
            Err(ProxyHeaderError::Missing)
        );
        assert_eq!(parse_proxy_header(b""), Ok(None));
        assert_eq!(parse_proxy_header(b"PRO"), Ok(None));
        assert_eq!(parse_proxy_header(b"\r\n\r\n"), Ok(None));
    }

    #[test]
    fn v2_tcp4_tcp6_with_tlvs_in_pieces() {
        let mut h = v2_tcp4([203, 0, 113, 7], 51234);
        h.extend(b"GET");
        for n in 0..h.len() - 3 {
            assert_eq!(parse_proxy_header(&h[..n]), Ok(None), "{n} bytes");
        }
        let got = parse_proxy_header(&h).unwrap().unwrap();
        assert_eq!(got.len, 28);
        assert_eq!(got.source, Some("203.0.113.7:51234".parse().unwrap()));

        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend(Ipv6Addr::LOCALHOST.octets());
        body.extend(4711u16.to_be_bytes());
        body.extend(80u16.to_be_bytes());
        // A TLV (type 0xEA, AWS's VPC endpoint id) after the addresses.
        body.extend([0xEA, 0, 4, b'v', b'p', b'c', b'e']);
        let h = v2(0x21, 0x21, &body);
        let got = parse_proxy_header(&h).unwrap().unwrap();
        assert_eq!(got.len, h.len());
        assert_eq!(got.source, Some("[2001:db8::7]:4711".parse().unwrap()));
    }

    #[test]
    fn v2_local_unspec_unix_and_dgram_keep_the_peer() {
        // LOCAL: a load balancer's health check, addresses (if any) ignored.
        let mut local = v2_tcp4([203, 0, 113, 7], 1);
        local[12] = 0x20;
        assert_eq!(parse_proxy_header(&local).unwrap().unwrap().source, None);
        assert_eq!(
            parse_proxy_header(&v2(0x20, 0x00, &[])).unwrap(),
            Some(ProxyHeader {
                len: 16,
                source: None
            })
        );
        assert_eq!(
            parse_proxy_header(&v2(0x21, 0x00, &[]))
                .unwrap()
                .unwrap()
                .source,
            None
        );
        // LOCAL with whatever family and block: discarded, as specified.
        let odd = v2(0x20, 0xff, &[0u8; 3]);
        assert_eq!(parse_proxy_header(&odd).unwrap().unwrap().source, None);
        let unix = v2(0x21, 0x31, &[0u8; 216]);
        assert_eq!(parse_proxy_header(&unix).unwrap().unwrap().source, None);
        let mut dgram = v2_tcp4([203, 0, 113, 7], 1);
        dgram[13] = 0x12;
        assert_eq!(parse_proxy_header(&dgram).unwrap().unwrap().source, None);
    }

    #[test]
    fn v2_garbage_is_refused() {
        let good = v2_tcp4([203, 0, 113, 7], 1);
        let with = |at: usize, b: u8| {
            let mut h = good.clone();
            h[at] = b;
            h
        };
        for bad in [
            with(12, 0x11), // version 1
            with(12, 0x31), // version 3
            with(12, 0x22), // command 2
            with(13, 0x41), // family 4
            with(13, 0x13), // transport 3
            v2(0x21, 0x11, &[1, 2, 3]),
            v2(0x21, 0x21, &[0u8; 35]),
            v2(0x21, 0x31, &[0u8; 100]),
        ] {
            assert!(
                matches!(parse_proxy_header(&bad), Err(ProxyHeaderError::V2(_))),
                "{bad:?}"
            );
        }
        // The declared length is waited for, and no further.
        let mut h = good.clone();
        h[15] = 200;
        assert_eq!(parse_proxy_header(&h), Ok(None));
        h.resize(16 + 200, 0);
        assert_eq!(parse_proxy_header(&h).unwrap().unwrap().len, 216);
    }

    #[test]
    fn every_prefix_and_byte_flip_is_handled_without_panic() {
        let mut samples = vec![
            v2_tcp4([203, 0, 113, 7], 51234),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n".to_vec(),
        ];
        samples.push(v2(0x21, 0x31, &[7u8; 216]));
        for s in &samples {
            for n in 0..=s.len() {
                let _ = parse_proxy_header(&s[..n]);
            }
            for i in 0..s.len() {
                for b in [0u8, 0x0d, 0x20, 0x21, 0xff] {
                    let mut m = s.clone();
                    m[i] = b;
                    if let Ok(Some(h)) = parse_proxy_header(&m) {
                        assert!(h.len <= m.len());
                    }
                }
            }
        }
    }

    #[test]
    fn x_forwarded_for_hops() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            x_forwarded_for(
                "203.0.113.7, 10.0.0.5,2001:db8::1 , [2001:db8::2]:80, 198.51.100.1:443"
            ),
            vec![
                ip("203.0.113.7"),
                ip("10.0.0.5"),
                ip("2001:db8::1"),
                ip("2001:db8::2"),
                ip("198.51.100.1")
            ]
        );
        assert_eq!(
            x_forwarded_for("unknown, 10.0.0.5, ,"),
            vec![None, ip("10.0.0.5")]
        );
        assert_eq!(x_forwarded_for(""), vec![]);
        assert_eq!(x_forwarded_for("1.2.3.4.5"), vec![None]);
    }

    #[test]
    fn forwarded_for_hops() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // RFC 7239's examples, section 4 and 7.
        assert_eq!(forwarded_for(r#"for="_gazonk""#), vec![None]);
        assert_eq!(
            forwarded_for(r#"For="[2001:db8:cafe::17]:4711""#),
            vec![ip("2001:db8:cafe::17")]
        );
        assert_eq!(
            forwarded_for("for=192.0.2.60;proto=http;by=203.0.113.43"),
            vec![ip("192.0.2.60")]
        );
        assert_eq!(
            forwarded_for("for=192.0.2.43, for=198.51.100.17"),
            vec![ip("192.0.2.43"), ip("198.51.100.17")]
        );
        assert_eq!(
            forwarded_for(
                r#"by=10.0.0.1;host="a,b;c", for=unknown, proto=https, for="10.1.2.3:80""#
            ),
            vec![None, None, None, ip("10.1.2.3")]
        );
        // An unterminated quote swallows the rest: one unknown hop.
        assert_eq!(
            forwarded_for(r#"for=1.2.3.4, host="x, for=5.6.7.8"#),
            vec![ip("1.2.3.4"), None]
        );
        assert_eq!(forwarded_for(r#"for="1.2.3.4"#), vec![None]);
        assert_eq!(forwarded_for("for=\"\u{e9}\""), vec![None]);
    }
}
