//! HTTP Digest (RFC 7616 subset) as the Atlas Admin API speaks it: MD5, qop="auth",
//! realm "MMS Public API". Nonces may be reused with an increasing nc until they expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};
use rand::RngCore;

pub const REALM: &str = "MMS Public API";

/// Nonces kept at most; expired ones are pruned first, so this only bites under a flood.
const MAX_NONCES: usize = 100_000;

/// The parameters of an `Authorization: Digest ...` header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DigestParams {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

/// Parses the value of an Authorization header; `None` when it is not a Digest header or a
/// required parameter is missing.
pub fn parse_authorization(value: &str) -> Option<DigestParams> {
    let (scheme, rest) = value.trim().split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    let mut params = HashMap::new();
    for (k, v) in split_params(rest)? {
        params.insert(k.to_ascii_lowercase(), v);
    }
    let mut take = |k: &str| params.remove(k);
    Some(DigestParams {
        username: take("username")?,
        realm: take("realm")?,
        nonce: take("nonce")?,
        uri: take("uri")?,
        response: take("response")?,
        algorithm: take("algorithm"),
        qop: take("qop"),
        nc: take("nc"),
        cnonce: take("cnonce"),
    })
}

/// Splits `k=v, k="quoted, value"` pairs; quoted strings may hold commas and `\"` escapes.
fn split_params(input: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

pub fn md5_hex(input: &str) -> String {
    hex::encode(Md5::digest(input.as_bytes()))
}

/// The expected `response` for qop=auth.
pub fn expected_response(p: &DigestParams, method: &str, password: &str) -> String {
    let ha1 = md5_hex(&format!("{}:{}:{}", p.username, p.realm, password));
    let ha2 = md5_hex(&format!("{method}:{}", p.uri));
    md5_hex(&format!(
        "{ha1}:{}:{}:{}:{}:{ha2}",
        p.nonce,
        p.nc.as_deref().unwrap_or(""),
        p.cnonce.as_deref().unwrap_or(""),
        p.qop.as_deref().unwrap_or(""),
    ))
}

/// Constant-time comparison, so response checking leaks no timing about the expected value.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `WWW-Authenticate` value, in the exact parameter order Atlas sends.
pub fn challenge(nonce: &str, stale: bool) -> String {
    format!(
        "Digest realm=\"{REALM}\", domain=\"\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\", stale={stale}"
    )
}

#[derive(Debug)]
struct NonceEntry {
    issued: Instant,
    last_nc: u64,
}

/// What a correctly computed Digest response says about its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    /// Unknown or expired nonce: answer 401 with `stale=true` so the client retries silently.
    Stale,
    /// nc not greater than the last one accepted for this nonce.
    Replayed,
}

#[derive(Debug)]
pub struct NonceStore {
    lifetime: Duration,
    nonces: HashMap<String, NonceEntry>,
}

impl NonceStore {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            nonces: HashMap::new(),
        }
    }

    pub fn issue(&mut self, now: Instant) -> String {
        if self.nonces.len() >= MAX_NONCES {
            let lifetime = self.lifetime;
            self.nonces
                .retain(|_, e| now.saturating_duration_since(e.issued) < lifetime);
            if self.nonces.len() >= MAX_NONCES {
                self.nonces.clear();
            }
        }
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        // 32 characters, like the nonces Atlas hands out.
        let nonce = hex::encode(bytes);
        self.nonces.insert(
            nonce.clone(),
            NonceEntry {
                issued: now,
                last_nc: 0,
            },
        );
        nonce
    }

    /// Checks and, when fresh, records `nc` for `nonce`.
    pub fn check(&mut self, nonce: &str, nc: u64, now: Instant) -> NonceCheck {
        let Some(entry) = self.nonces.get_mut(nonce) else {
            return NonceCheck::Stale;
        };
        if now.saturating_duration_since(entry.issued) >= self.lifetime {
            self.nonces.remove(nonce);
            return NonceCheck::Stale;
        }
        if nc <= entry.last_nc {
            return NonceCheck::Replayed;
        }
        entry.last_nc = nc;
        NonceCheck::Fresh
    }

    pub fn len(&self) -> usize {
        self.nonces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nonces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_params_with_commas() {
        let p = parse_authorization(
            r#"Digest username="k", realm="MMS Public API", nonce="n1", uri="/a?b=1,2", response="r", algorithm=MD5, qop=auth, nc=00000001, cnonce="c""#,
        )
        .expect("parses");
        assert_eq!(p.uri, "/a?b=1,2");
        assert_eq!(p.nc.as_deref(), Some("00000001"));
        assert_eq!(p.qop.as_deref(), Some("auth"));
        assert!(parse_authorization("Basic abc").is_none());
        assert!(parse_authorization("Digest username=\"k\"").is_none());
    }

    #[test]
    fn rfc2617_example_response() {
        // The worked example of RFC 2617 section 3.5.
        let p = DigestParams {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            response: String::new(),
            algorithm: None,
            qop: Some("auth".into()),
            nc: Some("00000001".into()),
            cnonce: Some("0a4f113b".into()),
        };
        assert_eq!(
            expected_response(&p, "GET", "Circle Of Life"),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn nonce_nc_must_increase_and_expire() {
        let t0 = Instant::now();
        let mut s = NonceStore::new(Duration::from_secs(10));
        let n = s.issue(t0);
        assert_eq!(s.check(&n, 1, t0), NonceCheck::Fresh);
        assert_eq!(s.check(&n, 2, t0), NonceCheck::Fresh);
        assert_eq!(s.check(&n, 2, t0), NonceCheck::Replayed);
        assert_eq!(s.check("other", 1, t0), NonceCheck::Stale);
        assert_eq!(
            s.check(&n, 3, t0 + Duration::from_secs(11)),
            NonceCheck::Stale
        );
    }
}
