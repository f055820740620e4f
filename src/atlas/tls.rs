//! Which certificate authorities the Atlas client trusts.
//!
//! The platform's roots, read by rustls-native-certs: the system store (on Linux the bundle and
//! directory OpenSSL would use, e.g. `/etc/ssl/certs/ca-certificates.crt` in the image), or
//! only `SSL_CERT_FILE` / `SSL_CERT_DIR` when either is set. Plus the PEM certificates of an
//! optional `--atlas-ca-file`, added to those (an Ops Manager private CA, a TLS-intercepting
//! proxy's CA). No list is compiled into the binary, so what the pod trusts is what its image
//! and mounts say.
//!
//! Loading is I/O at start-up only; what to make of the result ([`assemble`], [`parse_ca_pem`])
//! is pure and unit tested.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the client's trust could not be set up: a start-up error, never a per-request one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("--atlas-ca-file {path}: cannot read it: {reason}")]
    Read { path: String, reason: String },
    #[error("--atlas-ca-file {path}: not a PEM file: {reason}")]
    Pem { path: String, reason: String },
    #[error(
        "--atlas-ca-file {path}: holds no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks)"
    )]
    NoCertificate { path: String },
    #[error("--atlas-ca-file {path}: certificate {index} cannot be a trust anchor: {reason}")]
    InvalidCertificate {
        path: String,
        index: usize,
        reason: String,
    },
    #[error(
        "no trusted root certificates for an https Atlas URL: the platform's store is empty or unreadable{errors} and no --atlas-ca-file is set; mount a CA bundle and point SSL_CERT_FILE or --atlas-ca-file at it"
    )]
    NoRoots { errors: String },
}

/// The roots the client trusts, and where they came from (for the start-up log).
#[derive(Debug, Clone)]
pub struct TrustRoots {
    pub(crate) certs: Vec<CertificateDer<'static>>,
    /// Usable roots from the platform's store.
    pub platform: usize,
    /// Platform certificates rustls cannot use as anchors (old stores hold a few); skipped,
    /// as every TLS client does.
    pub platform_skipped: usize,
    /// What went wrong reading the platform's store (a missing `SSL_CERT_FILE`, say).
    pub platform_errors: Vec<String>,
    /// Roots from `--atlas-ca-file`.
    pub ca_file: usize,
}

/// What the platform's store yielded.
pub(crate) struct PlatformStore {
    pub certs: Vec<CertificateDer<'static>>,
    pub errors: Vec<String>,
}

impl TrustRoots {
    /// Reads the platform's store and `ca_file`. `https`: the Atlas URL is https, so having no
    /// root at all is an error now rather than a TLS failure on every request later.
    pub fn load(ca_file: Option<&Path>, https: bool) -> Result<TrustRoots, TrustError> {
        let extra = match ca_file {
            None => Vec::new(),
            Some(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| TrustError::Read {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                parse_ca_pem(&shown, &bytes)?
            }
        };
        let native = rustls_native_certs::load_native_certs();
        let platform = PlatformStore {
            certs: native.certs,
            errors: native.errors.iter().map(ToString::to_string).collect(),
        };
        assemble(platform, extra, https)
    }
}

/// The certificates of a CA file the user named: every one must be usable as a root, and there
/// must be at least one (an empty or wrong file is a mistake to report, not to ignore).
/// Non-certificate PEM sections (a private key, say) are ignored.
pub(crate) fn parse_ca_pem(
    path: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let mut certs = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = item.map_err(|e| TrustError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut probe = RootCertStore::empty();
        probe
            .add(cert.clone())
            .map_err(|e| TrustError::InvalidCertificate {
                path: path.to_owned(),
                index: i + 1,
                reason: e.to_string(),
            })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(TrustError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Platform roots (unusable ones skipped) plus the CA file's; none at all is an error when the
/// Atlas URL is https.
pub(crate) fn assemble(
    platform: PlatformStore,
    ca_file: Vec<CertificateDer<'static>>,
    https: bool,
) -> Result<TrustRoots, TrustError> {
    let mut usable = Vec::with_capacity(platform.certs.len() + ca_file.len());
    let mut skipped = 0;
    for cert in platform.certs {
        let mut probe = RootCertStore::empty();
        if probe.add(cert.clone()).is_ok() {
            usable.push(cert);
        } else {
            skipped += 1;
        }
    }
    let platform_count = usable.len();
    let ca_file_count = ca_file.len();
    if https && platform_count == 0 && ca_file_count == 0 {
        let errors = if platform.errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", platform.errors.join("; "))
        };
        return Err(TrustError::NoRoots { errors });
    }
    usable.extend(ca_file);
    Ok(TrustRoots {
        certs: usable,
        platform: platform_count,
        platform_skipped: skipped,
        platform_errors: platform.errors,
        ca_file: ca_file_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        params.self_signed(&key).unwrap()
    }

    #[test]
    fn a_bundle_of_certificates_is_read_and_other_sections_ignored() {
        let (a, b) = (ca(), ca());
        let pem = format!(
            "# a comment\n{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
            a.pem(),
            b.pem()
        );
        let certs = parse_ca_pem("ca.pem", pem.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), a.der().as_ref());
    }

    #[test]
    fn a_file_without_certificates_is_an_error_naming_the_file() {
        for content in [
            "",
            "not pem at all",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let e = parse_ca_pem("/etc/ca/ca.pem", content.as_bytes()).unwrap_err();
            assert_eq!(
                e,
                TrustError::NoCertificate {
                    path: "/etc/ca/ca.pem".into()
                }
            );
            assert!(
                e.to_string().contains("--atlas-ca-file /etc/ca/ca.pem"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_corrupt_certificate_is_an_error() {
        let bad = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
        let e = parse_ca_pem("ca.pem", bad.as_bytes()).unwrap_err();
        assert!(
            matches!(e, TrustError::InvalidCertificate { index: 1, .. }),
            "{e:?}"
        );
        let e = parse_ca_pem(
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(matches!(e, TrustError::Pem { .. }), "{e:?}");
    }

    #[test]
    fn roots_are_the_platform_ones_plus_the_ca_file() {
        let platform = PlatformStore {
            certs: vec![ca().der().clone(), CertificateDer::from(vec![1, 2, 3])],
            errors: vec![],
        };
        let extra = vec![ca().der().clone()];
        let t = assemble(platform, extra, true).unwrap();
        assert_eq!((t.platform, t.platform_skipped, t.ca_file), (1, 1, 1));
        assert_eq!(t.certs.len(), 2);
    }

    #[test]
    fn no_root_at_all_fails_for_https_only() {
        let empty = || PlatformStore {
            certs: vec![],
            errors: vec!["failed to read PEM from file: /nope".into()],
        };
        let e = assemble(empty(), vec![], true).unwrap_err();
        assert!(e.to_string().contains("/nope"), "{e}");
        assert!(e.to_string().contains("--atlas-ca-file"), "{e}");
        // A CA file alone is enough.
        assert_eq!(
            assemble(empty(), vec![ca().der().clone()], true)
                .unwrap()
                .ca_file,
            1
        );
        // http:// (a simulator on loopback) needs no root.
        assert_eq!(assemble(empty(), vec![], false).unwrap().certs.len(), 0);
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let e = TrustRoots::load(Some(Path::new("/nonexistent/ca.pem")), true).unwrap_err();
        assert!(matches!(e, TrustError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
