//! Who the client is: the TCP peer, or — when the peer is a configured
//! trusted proxy (`http.trusted_proxies`) — the right-most
//! `X-Forwarded-For` entry that is not a trusted proxy. A client cannot
//! pick its own address by sending the header: it is believed only from a
//! trusted peer, and only up to the first hop that is not one.
//!
//! Used for every per-client decision: connection limits behind a proxy,
//! device binding of transfer tokens, the dev issuer's peer check.
//!
//! Must not: count or refuse anything (the callers do).

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::util::{IpNet, canonical};

pub struct Proxies {
    trusted: Vec<IpNet>,
}

impl Proxies {
    /// From validated CIDRs (config checked every one already).
    pub fn new<'a>(cidrs: impl IntoIterator<Item = &'a String>) -> Proxies {
        Proxies {
            trusted: cidrs
                .into_iter()
                .filter_map(|p| IpNet::parse(p).ok())
                .collect(),
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// The client's address. A malformed header from a trusted proxy counts
    /// as no header (the proxy's own address is used).
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let cidrs = ["127.0.0.1".to_string(), "10.1.0.0/16".to_string()];
        let p = Proxies::new(&cidrs);
        let untrusted: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(p.client_ip(untrusted, &xff("1.2.3.4")), untrusted);
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            p.client_ip(proxy, &xff("6.6.6.6, 1.2.3.4, 10.1.2.3")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(p.client_ip(proxy, &xff("garbage")), proxy);
        assert_eq!(p.client_ip(proxy, &HeaderMap::new()), proxy);
    }
}
