//! Small shared helpers: clocks, randomness, identifiers and a token bucket.
//! Nothing here knows about users, sessions or sockets.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    (now_ms() / 1000) as u64
}

/// Cryptographically secure random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SystemRandom fails only if the OS RNG is unavailable, and then nothing
    // secure can be done at all: aborting is the right answer.
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

/// 128 random bits as 32 lowercase hex digits.
pub fn random_id() -> String {
    crate::auth::api_keys::hex(&random_bytes::<16>())
}

/// 128 random bits as 32 lowercase hex digits, for identifiers that must be
/// unique and unguessable but protect nothing (logout event ids, which a
/// socket can only ack if it received them). Drawn from a per-thread pool
/// that is refilled from the OS 4 KiB at a time: one `getrandom` syscall per
/// 256 ids instead of one per id (it was one per trigger). Secrets (keys,
/// transfer tokens, session ids) keep using `random_bytes`, never pooled.
pub fn unique_id() -> String {
    const POOL: usize = 4096;
    thread_local! {
        static BYTES: std::cell::RefCell<([u8; POOL], usize)> =
            const { std::cell::RefCell::new(([0; POOL], POOL)) };
    }
    BYTES.with_borrow_mut(|(pool, used)| {
        if *used + 16 > POOL {
            *pool = random_bytes();
            *used = 0;
        }
        let id = crate::auth::api_keys::hex(&pool[*used..*used + 16]);
        *used += 16;
        id
    })
}

/// Writes a secret file readable by the owner only, atomically (temp file,
/// fsync, rename), so a crash never leaves a half-written key.
pub fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// One socket's budget of frames: `rate` per second, at most `burst` at
/// once. Owned by the socket's reader (no lock); every socket kind uses it.
/// Kept by hand rather than governor's direct limiter: that one holds its
/// quota and an atomic per instance, and this lives in every parked socket,
/// where the rate and burst come from the app's settings at each call.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    tokens: f32,
    refilled: Instant,
}

impl Budget {
    pub fn new(burst: u32) -> Budget {
        Budget {
            tokens: burst as f32,
            refilled: Instant::now(),
        }
    }

    /// Takes `n` tokens; false when the budget cannot cover them.
    pub fn take(&mut self, n: u32, rate: u32, burst: u32) -> bool {
        if n == 0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f32() * rate as f32;
        self.tokens = (self.tokens + refill).min(burst as f32);
        self.refilled = now;
        self.tokens -= n as f32;
        self.tokens >= 0.0
    }
}

/// Rate limits per key (user, address): governor's GCRA, `rate` per
/// second with bursts of `burst`, one cell per key, forgotten once it has
/// fully recovered so idle keys cost nothing.
pub struct KeyedLimiter<K: std::hash::Hash + Eq + Clone>(governor::DefaultKeyedRateLimiter<K>);

impl<K: std::hash::Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(rate: u32, burst: u32) -> Self {
        let nonzero = |n: u32| std::num::NonZeroU32::new(n.max(1)).expect("at least 1");
        let quota = governor::Quota::per_second(nonzero(rate)).allow_burst(nonzero(burst));
        KeyedLimiter(governor::RateLimiter::dashmap(quota))
    }

    /// Takes one unit of `key`'s allowance if there is one.
    pub fn try_take(&self, key: &K) -> bool {
        self.0.check_key(key).is_ok()
    }

    /// Forgets keys whose allowance is whole again.
    pub fn forget_idle(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }
}

/// The longest identifier (sub, sid, iss, client_id) the hub accepts or
/// stores, from any source: tokens, API requests, configuration.
pub const MAX_ID_BYTES: usize = 255;

/// An identifier a client may choose (sub, sid, client_id): 1 to 255
/// bytes, none of them control characters.
pub fn is_printable_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

/// An identifier from a request body, checked as it is parsed
/// ([`is_printable_id`]): an oversized or control-laden one is refused with
/// a precise error before anything stores it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Id(pub String);

impl TryFrom<String> for Id {
    type Error = String;
    fn try_from(s: String) -> Result<Id, String> {
        if is_printable_id(&s) {
            Ok(Id(s))
        } else {
            Err(format!(
                "identifiers are 1 to {MAX_ID_BYTES} bytes of printable characters"
            ))
        }
    }
}

impl std::ops::Deref for Id {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`) or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (canonical(self.addr), ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Shares equal strings (origins, user agents) between the sockets that
/// carry them, so a socket pays a pointer, not a copy. Bounded: past `cap`
/// distinct strings (or past `max_len` bytes) the shared `overflow` stands
/// for them, so clients inventing strings cannot grow it.
pub struct Interner {
    map: dashmap::DashMap<Arc<str>, ()>,
    cap: usize,
    max_len: usize,
    overflow: Arc<str>,
}

impl Interner {
    pub fn new(cap: usize, max_len: usize) -> Interner {
        Interner {
            map: dashmap::DashMap::new(),
            cap,
            max_len,
            overflow: Arc::from("(not kept)"),
        }
    }

    pub fn get(&self, s: &str) -> Arc<str> {
        if s.len() > self.max_len {
            return self.overflow.clone();
        }
        if let Some(e) = self.map.get(s) {
            return e.key().clone();
        }
        if self.map.len() >= self.cap {
            return self.overflow.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.map.entry(shared.clone()).or_default();
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_networks() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
    }

    #[test]
    fn a_budget_covers_its_burst_then_refuses() {
        let mut b = Budget::new(3);
        assert!(b.take(2, 1, 3));
        assert!(b.take(1, 1, 3));
        assert!(!b.take(1, 1, 3));
        assert!(b.take(0, 1, 3), "nothing costs nothing");
    }

    #[test]
    fn a_key_gets_its_burst_then_is_refused_and_others_are_not() {
        let l = KeyedLimiter::new(1, 3);
        assert!(l.try_take(&"a") && l.try_take(&"a") && l.try_take(&"a"));
        assert!(!l.try_take(&"a"));
        assert!(l.try_take(&"b"));
    }

    #[test]
    fn unique_ids_do_not_repeat_across_pool_refills() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| unique_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn ids_are_random_hex() {
        let a = random_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
    }
}
