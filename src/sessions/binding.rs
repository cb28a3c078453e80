//! Device binding: which address a request comes from, and its ASN.
//!
//! A transfer token is bound to the client IP seen when it was minted (or to
//! that IP's autonomous system), and checked against the IP seen when it is
//! redeemed. `X-Forwarded-For` is believed only when the TCP peer is a
//! configured trusted proxy, and then only up to the first hop that is not
//! one: a client cannot pick its own address by sending the header.
//!
//! Must not: decide what a mismatch means (the session graph does).

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::TransferSettings;
use crate::util::{IpNet, canonical};

pub struct Binding {
    trusted: Vec<IpNet>,
    asn: Vec<(IpNet, u32)>,
}

impl Binding {
    /// From validated settings (config checked every network already).
    pub fn new(settings: &TransferSettings) -> Binding {
        Binding {
            trusted: settings
                .trusted_proxies
                .iter()
                .filter_map(|p| IpNet::parse(p).ok())
                .collect(),
            asn: settings
                .asn_ranges
                .iter()
                .filter_map(|r| IpNet::parse(&r.cidr).ok().map(|n| (n, r.asn)))
                .collect(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the peer, or, behind trusted proxies, the
    /// right-most `X-Forwarded-For` entry that is not a trusted proxy. A
    /// malformed header from a trusted proxy counts as no header.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            for part in text.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(canonical(ip)),
                    Err(_) => return peer,
                }
            }
        }
        hops.into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    /// The ASN of the most specific configured range holding `ip`.
    pub fn asn_of(&self, ip: IpAddr) -> Option<u32> {
        self.asn
            .iter()
            .filter(|(net, _)| net.contains(ip))
            .max_by_key(|(net, _)| net.prefix())
            .map(|(_, asn)| *asn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AsnRange, Config, Mode};

    fn binding(trusted: &[&str]) -> Binding {
        let mut t = Config::defaults(Mode::Dev).transfer;
        t.trusted_proxies = trusted.iter().map(|s| s.to_string()).collect();
        t.asn_ranges = vec![
            AsnRange {
                cidr: "10.0.0.0/8".into(),
                asn: 100,
            },
            AsnRange {
                cidr: "10.9.0.0/16".into(),
                asn: 200,
            },
        ];
        Binding::new(&t)
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let b = binding(&["127.0.0.1", "10.1.0.0/16"]);
        let untrusted: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(b.client_ip(untrusted, &xff("1.2.3.4")), untrusted);
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            b.client_ip(proxy, &xff("6.6.6.6, 1.2.3.4, 10.1.2.3")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(b.client_ip(proxy, &xff("garbage")), proxy);
        assert_eq!(b.client_ip(proxy, &HeaderMap::new()), proxy);
    }

    #[test]
    fn asn_is_the_most_specific_range() {
        let b = binding(&[]);
        assert_eq!(b.asn_of("10.9.1.1".parse().unwrap()), Some(200));
        assert_eq!(b.asn_of("10.8.1.1".parse().unwrap()), Some(100));
        assert_eq!(b.asn_of("192.0.2.1".parse().unwrap()), None);
    }
}
