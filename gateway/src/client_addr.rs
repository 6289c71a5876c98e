//! Whose connection this is: the address a client is limited
//! (`limits.connects_per_s_per_address`) and logged by.
//!
//! A peer that connects directly is the client. A peer in
//! `http.trusted_proxies` (an ingress controller, a load balancer) connects
//! for many clients, and says which: in a PROXY header before the request
//! (`http.proxy_protocol`), or in `Forwarded` / `X-Forwarded-For`. The
//! address is found by walking back from the peer, through trusted proxies
//! only, to the first address that is not one: everything to the left of it
//! was written by someone who is not trusted and could be forged.

use std::net::IpAddr;

use switchboard_config::HttpSettings;
use switchboard_protocol::proxy::{forwarded_for, x_forwarded_for};

/// Where a connection comes from, before its request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The TCP peer (an IPv4-mapped address as the IPv4 address it is).
    pub peer: IpAddr,
    /// The peer is in `http.trusted_proxies`.
    pub trusted: bool,
    /// The client a trusted peer's PROXY header named.
    pub proxied: Option<IpAddr>,
}

impl Origin {
    pub fn new(peer: IpAddr, http: &HttpSettings) -> Self {
        let peer = peer.to_canonical();
        Self {
            peer,
            trusted: http.is_trusted_proxy(peer),
            proxied: None,
        }
    }

    /// The client's address, given a request's `Forwarded` and
    /// `X-Forwarded-For` values (each joined, if repeated). Headers are
    /// read only when the connection came through trusted proxies.
    pub fn client(
        &self,
        http: &HttpSettings,
        forwarded: Option<&str>,
        x_forwarded: Option<&str>,
    ) -> IpAddr {
        if !self.trusted {
            return self.peer;
        }
        let mut nearest = self.peer;
        if let Some(proxied) = self.proxied {
            let proxied = proxied.to_canonical();
            if !http.is_trusted_proxy(proxied) {
                return proxied;
            }
            // A chain of proxies (a CDN, then the load balancer): the
            // headers the trusted one passed on tell the rest.
            nearest = proxied;
        }
        let by_forwarded = forwarded.map(|v| walk(http, nearest, &forwarded_for(v)));
        let by_x_forwarded = x_forwarded.map(|v| walk(http, nearest, &x_forwarded_for(v)));
        match (by_forwarded, by_x_forwarded) {
            (None, None) => nearest,
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) if a == b => a,
            // A proxy writes one of the two and passes the other on as the
            // client sent it: which one is its own cannot be told, so a
            // disagreement believes neither (a client cannot pick its
            // address by adding the header its proxy does not write).
            (Some(a), Some(b)) => {
                tracing::debug!(
                    peer = %self.peer,
                    forwarded = %a,
                    x_forwarded_for = %b,
                    "Forwarded and X-Forwarded-For disagree; using the proxy's address"
                );
                nearest
            }
        }
    }
}

/// From `nearest` (a trusted proxy), the hops right to left: the first one
/// that is not a trusted proxy is the client. A hop that is not an address
/// (`unknown`, an obfuscated name, garbage) ends the walk at the proxy that
/// wrote it; if every hop is trusted, the left-most is the client.
fn walk(http: &HttpSettings, nearest: IpAddr, hops: &[Option<IpAddr>]) -> IpAddr {
    let mut at = nearest;
    for hop in hops.iter().rev() {
        let Some(ip) = hop else {
            return at;
        };
        at = ip.to_canonical();
        if !http.is_trusted_proxy(at) {
            return at;
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(trusted: &[&str]) -> HttpSettings {
        HttpSettings {
            trusted_proxies: trusted.iter().map(|c| c.parse().unwrap()).collect(),
            ..HttpSettings::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = http(&["10.0.0.0/8"]);
        let o = Origin::new(ip("198.51.100.9"), &h);
        assert!(!o.trusted);
        assert_eq!(
            o.client(&h, Some("for=203.0.113.1"), Some("203.0.113.2")),
            ip("198.51.100.9")
        );
        // Even a PROXY address, had one been taken, is not believed.
        let o = Origin {
            proxied: Some(ip("203.0.113.3")),
            ..o
        };
        assert_eq!(o.client(&h, None, None), ip("198.51.100.9"));
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let h = http(&["10.0.0.0/8", "192.0.2.0/24"]);
        let o = Origin::new(ip("10.0.0.2"), &h);
        // The client put a forged address first; the ingress appended the
        // address it saw, then an internal hop appended its own.
        let xff = "1.1.1.1, 203.0.113.7, 192.0.2.10";
        assert_eq!(o.client(&h, None, Some(xff)), ip("203.0.113.7"));
        assert_eq!(
            o.client(&h, Some("for=1.1.1.1, for=203.0.113.7"), None),
            ip("203.0.113.7")
        );
        // No header: the proxy itself.
        assert_eq!(o.client(&h, None, None), ip("10.0.0.2"));
        // Every hop trusted: the left-most.
        assert_eq!(
            o.client(&h, None, Some("10.9.9.9, 10.0.0.3")),
            ip("10.9.9.9")
        );
        // An unknown hop: the proxy that wrote it.
        assert_eq!(
            o.client(&h, None, Some("203.0.113.7, unknown, 10.0.0.3")),
            ip("10.0.0.3")
        );
        assert_eq!(o.client(&h, Some(r#"for="_hidden""#), None), ip("10.0.0.2"));
        // An IPv4 client written as IPv4-mapped IPv6.
        assert_eq!(
            o.client(&h, None, Some("::ffff:203.0.113.7")),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn both_headers_must_agree() {
        let h = http(&["10.0.0.0/8"]);
        let o = Origin::new(ip("10.0.0.2"), &h);
        assert_eq!(
            o.client(&h, Some("for=203.0.113.7"), Some("203.0.113.7")),
            ip("203.0.113.7")
        );
        // The proxy wrote X-Forwarded-For; the client added a Forwarded.
        assert_eq!(
            o.client(&h, Some("for=198.51.100.1"), Some("203.0.113.7")),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn a_proxy_header_names_the_client_and_a_trusted_one_defers_to_headers() {
        let h = http(&["10.0.0.0/8", "192.0.2.0/24"]);
        let nlb = Origin {
            proxied: Some(ip("203.0.113.7")),
            ..Origin::new(ip("10.0.0.2"), &h)
        };
        // The headers come from the client: not believed.
        assert_eq!(nlb.client(&h, None, Some("1.1.1.1")), ip("203.0.113.7"));
        // A CDN (192.0.2.x, trusted) in front of the load balancer.
        let cdn = Origin {
            proxied: Some(ip("192.0.2.5")),
            ..nlb
        };
        assert_eq!(cdn.client(&h, None, Some("203.0.113.8")), ip("203.0.113.8"));
        assert_eq!(cdn.client(&h, None, None), ip("192.0.2.5"));
    }

    #[test]
    fn a_dual_stack_peer_is_matched_as_ipv4() {
        let h = http(&["127.0.0.1/32"]);
        let o = Origin::new(ip("::ffff:127.0.0.1"), &h);
        assert!(o.trusted);
        assert_eq!(o.peer, ip("127.0.0.1"));
    }
}
