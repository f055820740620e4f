//! HTTP Digest authentication (RFC 7616 / RFC 2617), client side, as Atlas API keys need it.
//!
//! Why not the `digest_auth` crate (0.3.1, read in full before deciding):
//! - it prefers `qop=auth-int` whenever a server offers it, while Atlas is specified for
//!   `qop=auth` and auth-int would hash the body;
//! - its parser is case-sensitive for the scheme (`Digest`), parameter names and algorithm
//!   names, keeps whitespace around `=` in names, and cannot pick a Digest challenge out of a
//!   header that also carries another scheme;
//! - its `AuthContext`/`AuthorizationHeader` derive `Debug` with the password / response inside,
//!   which this project forbids for anything that may reach a log line;
//! - nonce reuse there is just a counter on the parsed header; the caching policy (per
//!   credentials, fall back on stale/rejected nonces) is ours anyway.
//!
//! What is left is small: a tolerant challenge parser and the response hash, both tested against
//! the published RFC vectors below. MD5 and SHA-256 (non-`-sess`) are supported, qop `auth` or
//! none (RFC 2069); anything else is "no usable challenge".

use md5::Md5;
use sha2::{Digest as _, Sha256};

/// Hash used by a challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hex(self, data: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data.as_bytes())),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data.as_bytes())),
        }
    }
}

/// A parsed `WWW-Authenticate: Digest ...` challenge we can answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth` (we never use auth-int).
    pub qop_auth: bool,
    /// The server says the previous nonce expired but the credentials were fine.
    pub stale: bool,
}

/// One `scheme param=value, ...` entry of a `WWW-Authenticate` header.
#[derive(Debug, PartialEq)]
struct RawChallenge {
    scheme: String,
    params: Vec<(String, String)>,
}

/// Splits header values into challenges. Tolerates: quoted or bare values, any order, any
/// case of names, whitespace around `=` and `,`, backslash escapes in quoted strings, empty
/// values (`domain=""`), and several challenges (of any scheme) in one header value.
fn split_challenges(value: &str) -> Vec<RawChallenge> {
    let chars: Vec<char> = value.chars().collect();
    let mut i = 0;
    let mut out: Vec<RawChallenge> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' && chars[i] != ',' {
            i += 1;
        }
        let token: String = chars[start..i].iter().collect();
        let mut j = i;
        skip_ws(&mut j);
        if j < chars.len() && chars[j] == '=' {
            // A parameter of the current challenge.
            i = j + 1;
            skip_ws(&mut i);
            let mut val = String::new();
            if i < chars.len() && chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    val.push(chars[i]);
                    i += 1;
                }
                i += 1; // closing quote (or end of input: tolerate a missing one)
            } else {
                while i < chars.len() && chars[i] != ',' && !chars[i].is_whitespace() {
                    val.push(chars[i]);
                    i += 1;
                }
            }
            if let Some(last) = out.last_mut() {
                last.params.push((token.to_ascii_lowercase(), val));
            }
        } else if !token.is_empty() {
            out.push(RawChallenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        } else {
            i += 1; // a stray '=' or similar: skip it rather than loop forever
        }
    }
    out
}

/// Finds the first Digest challenge we can answer among `WWW-Authenticate` header values.
pub(crate) fn parse_challenge<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    values
        .into_iter()
        .flat_map(split_challenges)
        .filter(|c| c.scheme == "digest")
        .find_map(|c| usable(&c))
}

fn usable(raw: &RawChallenge) -> Option<Challenge> {
    let get = |name: &str| {
        raw.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let algorithm = match get("algorithm").map(str::to_ascii_uppercase).as_deref() {
        None | Some("MD5") => Algorithm::Md5,
        Some("SHA-256") => Algorithm::Sha256,
        Some(_) => return None,
    };
    let qop_auth = match get("qop") {
        None => false,
        Some(list) => {
            let offers_auth = list
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case("auth"));
            // A qop list without "auth" (auth-int only) cannot be answered with qop=auth.
            if !offers_auth {
                return None;
            }
            true
        }
    };
    Some(Challenge {
        realm: get("realm")?.to_owned(),
        nonce: get("nonce").filter(|n| !n.is_empty())?.to_owned(),
        opaque: get("opaque").map(str::to_owned),
        algorithm,
        qop_auth,
        stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
    })
}

/// The `response=` value.
pub(crate) fn response(
    ch: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let h = ch.algorithm;
    let ha1 = h.hex(&format!("{username}:{}:{password}", ch.realm));
    let ha2 = h.hex(&format!("{method}:{uri}"));
    if ch.qop_auth {
        h.hex(&format!("{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}", ch.nonce))
    } else {
        h.hex(&format!("{ha1}:{}:{ha2}", ch.nonce))
    }
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The full `Authorization` header value. It contains the username (public key) and a hash
/// bound to the password, so it must never be logged; callers hand it straight to the request.
pub(crate) fn authorization(
    ch: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let resp = response(ch, username, password, method, uri, nc, cnonce);
    let mut out = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={}, response=\"{}\"",
        quote(username),
        quote(&ch.realm),
        quote(&ch.nonce),
        quote(uri),
        ch.algorithm.name(),
        resp
    );
    if ch.qop_auth {
        out.push_str(&format!(", qop=auth, nc={nc:08x}, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = &ch.opaque {
        out.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
    }
    out
}

/// A fresh client nonce: 16 random bytes, hex.
pub(crate) fn new_cnonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str) -> Option<Challenge> {
        parse_challenge([h])
    }

    #[test]
    fn atlas_challenge_as_recorded() {
        let ch = one(r#"Digest realm="MMS Public API", domain="", nonce="abcDEF123/+=", algorithm=MD5, qop="auth", stale=false"#).unwrap();
        assert_eq!(ch.realm, "MMS Public API");
        assert_eq!(ch.nonce, "abcDEF123/+=");
        assert_eq!(ch.algorithm, Algorithm::Md5);
        assert!(ch.qop_auth);
        assert!(!ch.stale);
        assert_eq!(ch.opaque, None);
    }

    #[test]
    fn challenge_shapes() {
        // Bare values, other order, stale=true, opaque, lower-case scheme and names.
        let ch = one(r#"digest NONCE=n1,qop=auth,STALE=TRUE,opaque="op",realm=r"#).unwrap();
        assert_eq!(ch.realm, "r");
        assert_eq!(ch.nonce, "n1");
        assert!(ch.stale && ch.qop_auth);
        assert_eq!(ch.opaque.as_deref(), Some("op"));
        // Whitespace around '=' and ',', escapes inside quotes, qop list with auth-int first.
        let ch = one(
            "Digest realm = \"a \\\"q\\\" b\" ,  nonce= \"x,y\" , qop=\"auth-int, auth\" ,algorithm=md5",
        )
        .unwrap();
        assert_eq!(ch.realm, "a \"q\" b");
        assert_eq!(ch.nonce, "x,y");
        assert!(ch.qop_auth);
        // No qop (RFC 2069), SHA-256.
        let ch = one(r#"Digest realm="r", nonce="n", algorithm=SHA-256"#).unwrap();
        assert!(!ch.qop_auth);
        assert_eq!(ch.algorithm, Algorithm::Sha256);
        // Digest after another scheme in the same header value, and across several values.
        let ch = one(r#"Bearer realm="atlas", error="invalid_token", Digest realm="r2", nonce="n2", qop="auth""#)
            .unwrap();
        assert_eq!((ch.realm.as_str(), ch.nonce.as_str()), ("r2", "n2"));
        let ch =
            parse_challenge([r#"Basic realm="x""#, r#"Digest realm="r3", nonce="n3""#]).unwrap();
        assert_eq!(ch.nonce, "n3");
        // An unterminated quote is tolerated.
        assert_eq!(one(r#"Digest realm="r", nonce="n"#).unwrap().nonce, "n");
    }

    #[test]
    fn unusable_challenges() {
        for h in [
            "",
            "Basic realm=\"x\"",
            "Digest",
            r#"Digest realm="r""#,                                // no nonce
            r#"Digest nonce="n""#,                                // no realm
            r#"Digest realm="r", nonce="""#,                      // empty nonce
            r#"Digest realm="r", nonce="n", algorithm=MD5-sess"#, // unsupported
            r#"Digest realm="r", nonce="n", qop="auth-int""#,     // auth-int only
            "=,=,,\"",
        ] {
            assert_eq!(one(h), None, "{h}");
        }
    }

    #[test]
    fn rfc2617_published_vector() {
        // RFC 2617 section 3.5.
        let ch = one(r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#).unwrap();
        let r = response(
            &ch,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_md5_vector() {
        // RFC 7616 section 3.9.1 (MD5 and SHA-256 examples).
        let ch = one(r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#).unwrap();
        let r = response(
            &ch,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
        let mut sha = ch.clone();
        sha.algorithm = Algorithm::Sha256;
        let r = response(
            &sha,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn authorization_header_carries_what_the_server_needs() {
        let ch =
            one(r#"Digest realm="MMS Public API", nonce="n\"x", qop="auth", opaque="o""#).unwrap();
        let h = authorization(&ch, "pub", "priv", "POST", "/a?b=c", 7, "cn");
        assert!(h.starts_with("Digest username=\"pub\", realm=\"MMS Public API\", nonce=\"n\\\"x\", uri=\"/a?b=c\", algorithm=MD5, response=\""));
        assert!(h.contains(", qop=auth, nc=00000007, cnonce=\"cn\""));
        assert!(h.ends_with(", opaque=\"o\""));
        assert!(!h.contains("priv"));
        let cn = new_cnonce();
        assert_eq!(cn.len(), 32);
        assert_ne!(cn, new_cnonce());
    }
}
