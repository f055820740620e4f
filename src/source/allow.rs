//! Which source URLs the operator may call: the cluster admin's allow-list
//! (`--allowed-source-urls`, default Cloud Manager only).
//!
//! `spec.source.url` is written by whoever may edit a LinkToken, and the source call carries
//! credentials (a Digest answer for an API key, a service account's secret in a Basic header at
//! the token endpoint) and the link token itself. Without a list set by someone who may read
//! every Secret anyway, a LinkToken author could make the operator send them to a host of their
//! choosing, or probe in-cluster services with the operator's network position. So a URL is
//! called only when it equals an entry of the list: scheme, host and port (the scheme's default
//! when absent) and path compared after normalisation, nothing matched by prefix or pattern.

use std::fmt;

use url::Url;

use crate::api::source::CLOUD_MANAGER_URL;

/// One allowed base URL, normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
    /// Without a trailing slash; empty for the root.
    path: String,
}

impl Origin {
    fn parse(raw: &str) -> Result<Origin, String> {
        let url = Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let scheme = url.scheme().to_string();
        if scheme != "https" && scheme != "http" {
            return Err(format!("{raw:?}: only https:// (or http:// on loopback)"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{raw:?}: no user info"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{raw:?}: no query or fragment"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{raw:?}: no host"))?
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{raw:?}: no port"))?;
        Ok(Origin {
            scheme,
            host,
            port,
            path: url.path().trim_end_matches('/').to_string(),
        })
    }

    fn is_loopback(&self) -> bool {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare == "localhost"
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match self.scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        write!(f, "{}://{}", self.scheme, self.host)?;
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
    }
}

/// The source URLs the operator may call. Never empty: an admin who wants no source at all
/// leaves Cloud Manager's URL (no LinkToken can then reach anything else) or denies
/// `spec.source` by admission policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedSources {
    origins: Vec<Origin>,
}

impl Default for AllowedSources {
    /// Cloud Manager only.
    fn default() -> Self {
        AllowedSources::parse(CLOUD_MANAGER_URL).unwrap_or(AllowedSources {
            origins: Vec::new(),
        })
    }
}

impl AllowedSources {
    /// A comma-separated list of base URLs. http:// only for a loopback host (a local
    /// simulator): credentials would cross the network in clear otherwise.
    pub fn parse(list: &str) -> Result<AllowedSources, String> {
        let mut origins = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let origin = Origin::parse(raw)?;
            if origin.scheme == "http" && !origin.is_loopback() {
                return Err(format!(
                    "{raw:?}: http:// only for a loopback host (127.0.0.1, localhost, [::1])"
                ));
            }
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        if origins.is_empty() {
            return Err(
                "at least one source URL (Cloud Manager: https://cloud.mongodb.com)".into(),
            );
        }
        Ok(AllowedSources { origins })
    }

    /// Whether `url` (a LinkToken's spec.source.url, or a link recorded in its status) is on
    /// the list. A URL that does not parse is not.
    pub fn permits(&self, url: &str) -> bool {
        Origin::parse(url).is_ok_and(|o| self.origins.contains(&o))
    }
}

/// `url` in the form the allow-list compares (scheme, lower-case host, port when not the
/// scheme's default, path without a trailing slash); None when it does not parse as one.
/// Two spellings of one source give the same string, so it also keys a source org's claim.
pub fn normalize(url: &str) -> Option<String> {
    Origin::parse(url).ok().map(|o| o.to_string())
}

impl fmt::Display for AllowedSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, o) in self.origins.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{o}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_allows_cloud_manager_only() {
        let a = AllowedSources::default();
        assert_eq!(a.to_string(), "https://cloud.mongodb.com");
        for ok in [
            "https://cloud.mongodb.com",
            "https://cloud.mongodb.com/",
            "https://CLOUD.mongodb.com:443",
        ] {
            assert!(a.permits(ok), "{ok}");
        }
        for refused in [
            "https://cloud.mongodb.com.evil.example",
            "https://evil.example/cloud.mongodb.com",
            "https://cloud.mongodb.com:8443",
            "http://cloud.mongodb.com",
            "https://cloud.mongodb.com/other",
            "https://user@cloud.mongodb.com",
            "https://cloud.mongodb.com?x=1",
            "http://127.0.0.1:8092",
            "http://kubernetes.default.svc",
            "not a url",
            "",
        ] {
            assert!(!a.permits(refused), "{refused}");
        }
    }

    #[test]
    fn entries_match_exactly_after_normalisation() {
        let a = AllowedSources::parse(
            " https://om.example.com:8443 ,http://127.0.0.1:8092/,https://om.example.com:8443",
        )
        .unwrap();
        assert_eq!(
            a.to_string(),
            "https://om.example.com:8443,http://127.0.0.1:8092"
        );
        assert!(a.permits("https://om.example.com:8443/"));
        assert!(a.permits("http://127.0.0.1:8092"));
        assert!(!a.permits("https://om.example.com"));
        assert!(!a.permits("http://127.0.0.1:8093"));
        assert!(!a.permits("https://127.0.0.1:8092"));
        let with_path = AllowedSources::parse("https://gw.example/opsmanager").unwrap();
        assert!(with_path.permits("https://gw.example/opsmanager/"));
        assert!(!with_path.permits("https://gw.example"));
        assert!(!with_path.permits("https://gw.example/opsmanager/x"));
        let v6 = AllowedSources::parse("http://[::1]:9000").unwrap();
        assert!(v6.permits("http://[::1]:9000/"));
    }

    #[test]
    fn the_list_refuses_what_would_leak_credentials() {
        for bad in [
            "",
            " , ",
            "http://om.example.com",
            "ftp://om.example.com",
            "https://u:p@om.example.com",
            "https://om.example.com?q",
            "https://om.example.com#f",
            "om.example.com",
        ] {
            assert!(AllowedSources::parse(bad).is_err(), "{bad:?}");
        }
    }
}
