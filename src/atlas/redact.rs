//! Secret-carrying values that cannot be printed by accident.
//!
//! Every credential, bearer token and link token lives in one of these wrappers, so `{:?}`,
//! `{}` and `tracing` fields show `[redacted]` whatever the caller does. Reading the value takes
//! an explicit, greppable call (`expose`).

use std::fmt;
use std::sync::Arc;

const REDACTED: &str = "[redacted]";

/// A string that never shows itself in Debug or Display. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretString(Arc<str>);

impl SecretString {
    pub(crate) fn new(value: impl Into<Arc<str>>) -> Self {
        SecretString(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A live-migration link token as Atlas returned it. It is shown once by Atlas and grants access
/// to an org, so it is only ever read through [`LinkTokenValue::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct LinkTokenValue(SecretString);

impl LinkTokenValue {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        LinkTokenValue(SecretString::new(value))
    }

    /// The token itself: the one way to read it (to write it into the token Secret).
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for LinkTokenValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkTokenValue({REDACTED})")
    }
}

impl fmt::Display for LinkTokenValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// An OAuth access token minted for a service account.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BearerToken(SecretString);

impl BearerToken {
    pub(crate) fn new(value: impl Into<Arc<str>>) -> Self {
        BearerToken(SecretString::new(value))
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken({REDACTED})")
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// The URL text with anything between `://` and the last `@` of the authority replaced, so a
/// password typed into the URL never reaches an error message or a log.
pub fn redact_url_userinfo(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        // No scheme separator: still hide a `user:pass@` prefix.
        return match s
            .find(['/', '?', '#'])
            .map_or(s, |end| &s[..end])
            .rfind('@')
        {
            Some(at) => format!("[redacted]@{}", &s[at + 1..]),
            None => s.to_string(),
        };
    };
    let rest = &s[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}[redacted]@{}", &s[..start], &rest[at + 1..]),
        None => s.to_string(),
    }
}

/// Every `scheme://user:password@host` in a free text (an error chain, a message from the
/// network) with its user info replaced: the authority ends at `/` or whitespace.
pub(crate) fn redact_userinfo_in_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            out.push_str("[redacted]@");
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Shortest word taken for the credential of a `Basic` or `Bearer` scheme: base64 of
/// `id:secret` and bearer tokens are longer; shorter words after the scheme name are prose
/// ("Basic authentication failed").
const MIN_SCHEME_CREDENTIAL: usize = 16;

/// The credential after `Basic` or `Bearer` (any case) in a text whose words are separated by
/// single spaces, as an `Authorization` header would carry it, replaced: a server echoing the
/// header it received cannot put the credential into a status or a log.
pub(crate) fn redact_auth_credentials(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut after_scheme = false;
    for word in s.split(' ') {
        let token68 = word
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
            .count();
        let token68 = token68 + word[token68..].bytes().take_while(|b| *b == b'=').count();
        if after_scheme && token68 >= MIN_SCHEME_CREDENTIAL {
            out.push(format!("{REDACTED}{}", &word[token68..]));
        } else {
            out.push(word.to_string());
        }
        after_scheme = word.eq_ignore_ascii_case("basic") || word.eq_ignore_ascii_case("bearer");
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_themselves() {
        let token = LinkTokenValue::new("lt-very-secret");
        let bearer = BearerToken::new("eyJ-secret-jwt");
        let s = SecretString::new("hunter2");
        for shown in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{token:#?}"),
            format!("{bearer:?}"),
            format!("{bearer}"),
            format!("{s:?}"),
            format!("{s}"),
        ] {
            assert!(shown.contains("[redacted]"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert_eq!(token.expose(), "lt-very-secret");
        assert_eq!(bearer.expose(), "eyJ-secret-jwt");
    }

    #[test]
    fn url_user_info_is_removed() {
        assert_eq!(
            redact_url_userinfo("https://u:p@h/x@y"),
            "https://[redacted]@h/x@y"
        );
        assert_eq!(
            redact_url_userinfo("https://a@b:pw@h:1?q"),
            "https://[redacted]@h:1?q"
        );
        assert_eq!(redact_url_userinfo("https://h/x@y"), "https://h/x@y");
        assert_eq!(redact_url_userinfo("u:pw@h"), "[redacted]@h");
        assert_eq!(redact_url_userinfo("no url"), "no url");
    }

    #[test]
    fn userinfo_is_removed_from_urls_in_text() {
        assert_eq!(
            redact_userinfo_in_text("proxy http://user:pw@proxy:3128/x failed"),
            "proxy http://[redacted]@proxy:3128/x failed"
        );
        assert_eq!(redact_userinfo_in_text("no url here"), "no url here");
        assert_eq!(
            redact_userinfo_in_text("https://host/a@b"),
            "https://host/a@b"
        );
        assert_eq!(
            redact_userinfo_in_text("a http://u:p@h b ftp://x@y"),
            "a http://[redacted]@h b ftp://[redacted]@y"
        );
    }

    #[test]
    fn scheme_credentials_are_removed() {
        let long = "A".repeat(MIN_SCHEME_CREDENTIAL);
        for (input, want) in [
            (format!("Bearer {long}"), "Bearer [redacted]".to_string()),
            (
                format!("BASIC {long}==, then"),
                "BASIC [redacted], then".to_string(),
            ),
            (
                format!("bearer {long}\""),
                "bearer [redacted]\"".to_string(),
            ),
            ("Bearer short".to_string(), "Bearer short".to_string()),
            (format!("Token {long}"), format!("Token {long}")),
            (format!("{long} Bearer"), format!("{long} Bearer")),
        ] {
            assert_eq!(redact_auth_credentials(&input), want, "{input}");
        }
    }
}
