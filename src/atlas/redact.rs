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
}
