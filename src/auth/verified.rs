//! A bounded cache of *signature* verifications, keyed by the token's SHA-256.
//!
//! Several tabs of one SPA authenticate with the same token, and reconnect
//! storms replay it; an RS256 or EdDSA check costs 20–50 µs each time. What
//! is cached is only "this exact token carried a valid signature and these
//! claims": the caller still checks `exp` against the clock on every hit, and
//! revocation (watermarks) is decided elsewhere on every use — a cached
//! token that was logged out is refused exactly as an uncached one.
//!
//! Entries live at most [`MAX_AGE_SECS`], so a key removed from a JWKS stops
//! vouching for its tokens soon after, and the cache holds at most
//! [`MAX_ENTRIES`] (new tokens are simply verified in full when it is full).
//!
//! Must not: cache failures (an attacker could fill it), or decide anything.

use dashmap::DashMap;

use super::Principal;

/// How long a verification is trusted without re-checking the signature.
pub const MAX_AGE_SECS: i64 = 300;
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct VerifiedTokens {
    entries: DashMap<[u8; 32], (Principal, i64)>,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl VerifiedTokens {
    /// The principal of a token verified before, if still trusted at `now`
    /// (seconds) and not expired.
    pub fn get(&self, token: &str, now: i64) -> Option<Principal> {
        let entry = self.entries.get(&digest(token))?;
        let (principal, until) = entry.value();
        (now < *until && now < principal.exp).then(|| principal.clone())
    }

    pub fn insert(&self, token: &str, principal: &Principal, now: i64) {
        if self.entries.len() >= MAX_ENTRIES {
            return;
        }
        let until = (now + MAX_AGE_SECS).min(principal.exp);
        self.entries
            .insert(digest(token), (principal.clone(), until));
    }

    /// Drops entries no longer trusted; returns how many.
    pub fn expire(&self, now: i64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, (_, until)| *until > now);
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::IssuerId;

    fn principal(exp: i64) -> Principal {
        Principal {
            issuer: IssuerId(0),
            sub: "alice".into(),
            sid: None,
            iat: 0,
            exp,
            client_id: None,
            aud: Vec::new().into(),
        }
    }

    #[test]
    fn hits_until_expiry_or_max_age_and_only_for_the_same_token() {
        let c = VerifiedTokens::default();
        c.insert("a.b.c", &principal(10_000), 1_000);
        assert!(c.get("a.b.c", 1_000).is_some());
        assert!(c.get("a.b.d", 1_000).is_none());
        // Trusted for MAX_AGE_SECS only.
        assert!(c.get("a.b.c", 1_000 + MAX_AGE_SECS).is_none());
        // Never past exp.
        c.insert("x.y.z", &principal(1_010), 1_000);
        assert!(c.get("x.y.z", 1_009).is_some());
        assert!(c.get("x.y.z", 1_010).is_none());
        assert_eq!(c.expire(1_000 + MAX_AGE_SECS), 2);
    }
}
