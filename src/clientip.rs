//! Who the client is: its IP address from the socket, or from `X-Forwarded-For` / `Forwarded`
//! when the socket peer is a trusted proxy (a load balancer or CDN in front of the gateway),
//! and what of that address may leave: anonymized (IPv4 /24, IPv6 /48) or in full, and never a
//! private, loopback or link-local address, which would make vendors geolocate nowhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

/// CIDR ranges whose forwarding headers are believed (`--trusted-proxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address. Forwarding headers count only when the peer is trusted; then the
/// right-most address that is not itself a trusted proxy is the client (entries to its left
/// were written by the client and can be anything).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer };
        for part in s.split(',') {
            match parse_addr(part) {
                Some(ip) => chain.push(ip),
                None => return rightmost_untrusted(&chain, trusted).unwrap_or(peer),
            }
        }
    }
    if chain.is_empty() {
        for v in headers.get_all(FORWARDED) {
            let Ok(s) = v.to_str() else { return peer };
            for element in s.split(',') {
                let forv = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| v.trim().trim_matches('"'))
                });
                if let Some(ip) = forv.and_then(parse_addr) {
                    chain.push(ip);
                }
            }
        }
    }
    rightmost_untrusted(&chain, trusted)
        .or(chain.first().copied())
        .unwrap_or(peer)
}

fn rightmost_untrusted(chain: &[IpAddr], trusted: &TrustedProxies) -> Option<IpAddr> {
    chain
        .iter()
        .rev()
        .copied()
        .find(|ip| !trusted.contains(*ip))
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from dual-stack sockets) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Keeps the first `v4_bits` / `v6_bits` of an address and zeroes the rest.
pub fn truncate(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let bits = u32::from(v4_bits.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let bits = u32::from(v6_bits.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// The anonymized form used by default: IPv4 /24, IPv6 /48.
pub fn anonymize(ip: IpAddr) -> IpAddr {
    truncate(ip, 24, 48)
}

/// Whether an address can be geolocated: not private, loopback, link-local, shared (CGNAT),
/// unspecified, broadcast or multicast. Documentation ranges (192.0.2.0/24, 2001:db8::/32)
/// count as public so examples and tests can use them.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_broadcast()
                || a.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted(&[])),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted(&["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.7"));
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &t), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_header_is_read() {
        let mut h = HeaderMap::new();
        h.insert(
            FORWARDED,
            HeaderValue::from_static("for=\"[2001:db8:cafe::17]:4711\";proto=https"),
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted(&["127.0.0.0/8"])),
            ip("2001:db8:cafe::17")
        );
    }

    #[test]
    fn garbage_in_chain_stops_at_last_good() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, not-an-ip"),
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &h, &trusted(&["127.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn truncation_and_publicness() {
        assert_eq!(anonymize(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(
            anonymize(ip("2001:db8:1234:5678::1")),
            ip("2001:db8:1234::")
        );
        assert_eq!(anonymize(ip("::ffff:203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(truncate(ip("203.0.113.77"), 16, 32), ip("203.0.0.0"));
        for p in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "0.0.0.0",
        ] {
            assert!(!is_public(ip(p)), "{p}");
        }
        for p in ["8.8.8.8", "203.0.113.7", "2a00:1450::1"] {
            assert!(is_public(ip(p)), "{p}");
        }
    }
}
