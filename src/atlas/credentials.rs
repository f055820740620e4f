//! Credentials read from a Kubernetes Secret's data, in the two shapes the Atlas Kubernetes
//! Operator uses, so existing Secrets work unchanged:
//! - `publicApiKey` + `privateApiKey`: a programmatic API key (HTTP Digest);
//! - `clientId` + `clientSecret`: a service account (OAuth 2.0 client credentials).
//!
//! An `orgId` key (AKO writes one) and any other key are ignored. Errors name keys, never values.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest as _, Sha256};

use super::redact::SecretString;

pub const PUBLIC_API_KEY: &str = "publicApiKey";
pub const PRIVATE_API_KEY: &str = "privateApiKey";
pub const CLIENT_ID: &str = "clientId";
pub const CLIENT_SECRET: &str = "clientSecret";

/// Why a Secret's data is not usable credentials (-> Ready reason `CredentialsInvalid`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Some keys of the chosen kind are absent or empty. Lists key names only.
    #[error("credentials Secret is missing or has empty keys: {}", .missing.join(", "))]
    MissingKeys { missing: Vec<&'static str> },
    /// Neither kind is present.
    #[error(
        "credentials Secret has neither {PUBLIC_API_KEY}+{PRIVATE_API_KEY} (API key) nor {CLIENT_ID}+{CLIENT_SECRET} (service account)"
    )]
    NoCredentials,
    /// Keys of both kinds are present: which one to use would be a guess.
    #[error(
        "credentials Secret holds both an API key ({PUBLIC_API_KEY}/{PRIVATE_API_KEY}) and a service account ({CLIENT_ID}/{CLIENT_SECRET}); keep only one"
    )]
    BothKinds,
    /// A value is not printable ASCII (Atlas keys and ids always are; anything else cannot be
    /// sent in an HTTP header).
    #[error("credentials Secret key {key} must be printable ASCII")]
    InvalidCharacters { key: &'static str },
}

/// Which authentication scheme a set of credentials uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialsKind {
    /// Programmatic API key: HTTP Digest.
    ApiKey,
    /// Service account: OAuth 2.0 client credentials, then Bearer.
    ServiceAccount,
}

/// A hash of the credentials: a cache key (nonces, bearer tokens) and a way to notice rotation.
/// SHA-256 over a domain-separated encoding of kind and values; shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The fingerprint of these credentials as used at one place (a token endpoint URL): a
    /// cache key that keeps the same account's tokens from two servers apart.
    pub fn scoped(&self, scope: &str) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"linktoken-operator/credentials-scope/v1\0");
        h.update(self.0);
        h.update(scope.as_bytes());
        Fingerprint(h.finalize().into())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form: enough to correlate, and a hash reveals nothing of the secret anyway.
        write!(f, "Fingerprint({}…)", &self.to_hex()[..12])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Borrowed credential values, by scheme. Deliberately not Debug.
pub(crate) enum AuthParts<'a> {
    Digest {
        username: &'a str,
        password: &'a str,
    },
    ClientCredentials {
        client_id: &'a str,
        client_secret: &'a str,
    },
}

#[derive(Clone)]
enum Inner {
    ApiKey {
        public_key: SecretString,
        private_key: SecretString,
    },
    ServiceAccount {
        client_id: SecretString,
        client_secret: SecretString,
    },
}

/// Atlas credentials. Debug and Display show the kind and a fingerprint prefix only.
#[derive(Clone)]
pub struct Credentials {
    inner: Inner,
    fingerprint: Fingerprint,
}

impl Credentials {
    /// A programmatic API key (Digest auth).
    pub fn api_key(public_key: impl Into<String>, private_key: impl Into<String>) -> Self {
        Self::build(Inner::ApiKey {
            public_key: SecretString::new(public_key.into()),
            private_key: SecretString::new(private_key.into()),
        })
    }

    /// A service account (OAuth 2.0 client credentials).
    pub fn service_account(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self::build(Inner::ServiceAccount {
            client_id: SecretString::new(client_id.into()),
            client_secret: SecretString::new(client_secret.into()),
        })
    }

    /// Reads a Secret's `data`. Values are trimmed of surrounding whitespace, because Secrets
    /// made with `echo` or a heredoc often end in a newline, which would otherwise become part of
    /// the key and fail as a 401 that is hard to diagnose; Atlas keys never contain whitespace.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, CredentialsError> {
        let get = |key: &'static str| -> Result<Option<String>, CredentialsError> {
            match data.get(key) {
                None => Ok(None),
                Some(bytes) => {
                    let text = std::str::from_utf8(bytes)
                        .map_err(|_| CredentialsError::InvalidCharacters { key })?
                        .trim();
                    if !text.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
                        return Err(CredentialsError::InvalidCharacters { key });
                    }
                    Ok((!text.is_empty()).then(|| text.to_owned()))
                }
            }
        };
        let public_key = get(PUBLIC_API_KEY)?;
        let private_key = get(PRIVATE_API_KEY)?;
        let client_id = get(CLIENT_ID)?;
        let client_secret = get(CLIENT_SECRET)?;

        let api_any = public_key.is_some() || private_key.is_some();
        let sa_any = client_id.is_some() || client_secret.is_some();
        match (api_any, sa_any) {
            (true, true) => Err(CredentialsError::BothKinds),
            (false, false) => Err(CredentialsError::NoCredentials),
            (true, false) => match (public_key, private_key) {
                (Some(p), Some(s)) => Ok(Self::api_key(p, s)),
                (p, _) => Err(CredentialsError::MissingKeys {
                    missing: vec![if p.is_none() {
                        PUBLIC_API_KEY
                    } else {
                        PRIVATE_API_KEY
                    }],
                }),
            },
            (false, true) => match (client_id, client_secret) {
                (Some(i), Some(s)) => Ok(Self::service_account(i, s)),
                (i, _) => Err(CredentialsError::MissingKeys {
                    missing: vec![if i.is_none() {
                        CLIENT_ID
                    } else {
                        CLIENT_SECRET
                    }],
                }),
            },
        }
    }

    pub fn kind(&self) -> CredentialsKind {
        match self.inner {
            Inner::ApiKey { .. } => CredentialsKind::ApiKey,
            Inner::ServiceAccount { .. } => CredentialsKind::ServiceAccount,
        }
    }

    /// Stable hash of kind and values; changes whenever any value changes.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The values, for the request signer only.
    pub(crate) fn auth_parts(&self) -> AuthParts<'_> {
        match &self.inner {
            Inner::ApiKey {
                public_key,
                private_key,
            } => AuthParts::Digest {
                username: public_key.expose(),
                password: private_key.expose(),
            },
            Inner::ServiceAccount {
                client_id,
                client_secret,
            } => AuthParts::ClientCredentials {
                client_id: client_id.expose(),
                client_secret: client_secret.expose(),
            },
        }
    }

    fn build(inner: Inner) -> Self {
        let (tag, a, b) = match &inner {
            Inner::ApiKey {
                public_key,
                private_key,
            } => ("api-key", public_key.expose(), private_key.expose()),
            Inner::ServiceAccount {
                client_id,
                client_secret,
            } => (
                "service-account",
                client_id.expose(),
                client_secret.expose(),
            ),
        };
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let mut h = Sha256::new();
        h.update(b"linktoken-operator/credentials/v1\0");
        for part in [tag, a, b] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        Credentials {
            inner,
            fingerprint: Fingerprint(h.finalize().into()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("kind", &self.kind())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind() {
            CredentialsKind::ApiKey => "API key",
            CredentialsKind::ServiceAccount => "service account",
        };
        write!(f, "{kind} credentials [redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn api_key_secret_is_read_and_org_id_ignored() {
        let c = Credentials::from_secret_data(&data(&[
            ("publicApiKey", "pubkey"),
            ("privateApiKey", "privkey\n"),
            ("orgId", "0123456789abcdef01234567"),
        ]))
        .unwrap();
        assert_eq!(c.kind(), CredentialsKind::ApiKey);
        assert!(matches!(
            c.auth_parts(),
            AuthParts::Digest {
                username: "pubkey",
                password: "privkey"
            }
        ));
    }

    #[test]
    fn service_account_secret_is_read() {
        let c = Credentials::from_secret_data(&data(&[
            ("clientId", "mdb_sa_id_x"),
            ("clientSecret", "mdb_sa_sk_y"),
        ]))
        .unwrap();
        assert_eq!(c.kind(), CredentialsKind::ServiceAccount);
        assert!(matches!(
            c.auth_parts(),
            AuthParts::ClientCredentials {
                client_id: "mdb_sa_id_x",
                client_secret: "mdb_sa_sk_y"
            }
        ));
    }

    #[test]
    fn broken_secrets_are_rejected_naming_keys_only() {
        let cases: Vec<(Vec<(&str, &str)>, CredentialsError)> = vec![
            (vec![], CredentialsError::NoCredentials),
            (vec![("orgId", "x")], CredentialsError::NoCredentials),
            (
                vec![("publicApiKey", "secretpub")],
                CredentialsError::MissingKeys {
                    missing: vec!["privateApiKey"],
                },
            ),
            (
                vec![("publicApiKey", "secretpub"), ("privateApiKey", "  ")],
                CredentialsError::MissingKeys {
                    missing: vec!["privateApiKey"],
                },
            ),
            (
                vec![("privateApiKey", "secretpriv")],
                CredentialsError::MissingKeys {
                    missing: vec!["publicApiKey"],
                },
            ),
            (
                vec![("clientSecret", "secretsk")],
                CredentialsError::MissingKeys {
                    missing: vec!["clientId"],
                },
            ),
            (
                vec![("clientId", "secretid"), ("clientSecret", "")],
                CredentialsError::MissingKeys {
                    missing: vec!["clientSecret"],
                },
            ),
            (
                vec![
                    ("publicApiKey", "a"),
                    ("privateApiKey", "b"),
                    ("clientId", "c"),
                    ("clientSecret", "d"),
                ],
                CredentialsError::BothKinds,
            ),
            (
                vec![("publicApiKey", "a"), ("clientSecret", "d")],
                CredentialsError::BothKinds,
            ),
        ];
        for (pairs, want) in cases {
            let got = Credentials::from_secret_data(&data(&pairs)).unwrap_err();
            assert_eq!(got, want, "{pairs:?}");
            let msg = got.to_string();
            assert!(!msg.contains("secret"), "message leaks a value: {msg}");
        }
        let mut bad = BTreeMap::new();
        bad.insert("publicApiKey".to_string(), vec![0xff, 0xfe]);
        bad.insert("privateApiKey".to_string(), b"x".to_vec());
        assert_eq!(
            Credentials::from_secret_data(&bad).unwrap_err(),
            CredentialsError::InvalidCharacters {
                key: "publicApiKey"
            }
        );
        let ctl = data(&[("clientId", "a\u{7}b"), ("clientSecret", "s")]);
        assert_eq!(
            Credentials::from_secret_data(&ctl).unwrap_err(),
            CredentialsError::InvalidCharacters { key: "clientId" }
        );
    }

    #[test]
    fn fingerprint_tracks_every_value_and_the_kind() {
        let a = Credentials::api_key("u", "p");
        assert_eq!(
            a.fingerprint(),
            Credentials::api_key("u", "p").fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            Credentials::api_key("u", "q").fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            Credentials::api_key("up", "").fingerprint()
        );
        assert_ne!(
            a.fingerprint(),
            Credentials::service_account("u", "p").fingerprint()
        );
        assert_eq!(a.fingerprint().to_hex().len(), 64);
        let fp = a.fingerprint();
        assert_ne!(fp.scoped("https://a/api/oauth/token"), fp);
        assert_ne!(
            fp.scoped("https://a/api/oauth/token"),
            fp.scoped("https://b/api/oauth/token")
        );
        assert_eq!(fp.scoped("x"), a.fingerprint().scoped("x"));
    }

    #[test]
    fn credentials_are_redacted() {
        let a = Credentials::api_key("PUBLICKEY", "PRIVATEKEY");
        let s = Credentials::service_account("CLIENTID", "CLIENTSECRET");
        for shown in [
            format!("{a:?}"),
            format!("{a}"),
            format!("{a:#?}"),
            format!("{s:?}"),
            format!("{s}"),
        ] {
            for secret in ["PUBLICKEY", "PRIVATEKEY", "CLIENTID", "CLIENTSECRET"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }
}
