//! Device binding: the autonomous system of a client address.
//!
//! A transfer token is bound to the client IP seen when it was minted (or to
//! that IP's autonomous system), and checked against the IP seen when it is
//! redeemed; who the client is (behind trusted proxies) is `net::Proxies`'.
//!
//! Must not: decide what a mismatch means (the session graph does).

use std::net::IpAddr;

use crate::config::TransferSettings;
use crate::util::IpNet;

pub struct Binding {
    asn: Vec<(IpNet, u32)>,
}

impl Binding {
    /// From validated settings (config checked every network already).
    pub fn new(settings: &TransferSettings) -> Binding {
        Binding {
            asn: settings
                .asn_ranges
                .iter()
                .filter_map(|r| IpNet::parse(&r.cidr).ok().map(|n| (n, r.asn)))
                .collect(),
        }
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

    #[test]
    fn asn_is_the_most_specific_range() {
        let mut t = Config::defaults(Mode::Dev).transfer;
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
        let b = Binding::new(&t);
        assert_eq!(b.asn_of("10.9.1.1".parse().unwrap()), Some(200));
        assert_eq!(b.asn_of("10.8.1.1".parse().unwrap()), Some(100));
        assert_eq!(b.asn_of("192.0.2.1".parse().unwrap()), None);
    }
}
