//! One HTTP round trip: send, read a capped body, report to the observer, map transport errors.
//! Knows nothing about authentication; callers add the Authorization header. Where a request
//! goes, through a proxy or not, is decided here too ([`HttpClient`]).

use std::error::Error as _;
use std::time::Instant;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, Url};

use super::error::{ApiFailure, AtlasError, TransportKind, parse_retry_after};
use super::observer::{Endpoint, RequestObserver, RequestRecord};
use super::remote_text;

/// The HTTP clients behind every Atlas and source call, alike but for proxies: one honours the
/// environment's proxies (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as reqwest
/// reads them), the other never uses a proxy. A loopback destination always takes the direct
/// one: a proxy elsewhere cannot reach the operator's own loopback, and an `http://` loopback
/// URL sent to a proxy would carry the Digest exchange, a client secret or a link token across
/// the network in clear.
///
/// Two clients, because reqwest has no rule that says "direct": giving a builder any `Proxy`
/// turns its reading of the environment off, so exempting loopback with a `Proxy` and a
/// `NoProxy` would mean parsing those variables ourselves. Left to reqwest, every other
/// destination behaves exactly as documented.
pub(crate) struct HttpClient {
    env_proxy: reqwest::Client,
    direct: reqwest::Client,
}

impl HttpClient {
    /// Builds both clients from the same settings; `builder` is called twice.
    pub(crate) fn build(
        builder: impl Fn() -> reqwest::ClientBuilder,
    ) -> reqwest::Result<HttpClient> {
        Ok(HttpClient {
            env_proxy: builder().build()?,
            direct: builder().no_proxy().build()?,
        })
    }

    /// The client for a request to `url`.
    fn for_url(&self, url: &Url) -> &reqwest::Client {
        if is_loopback(url) {
            &self.direct
        } else {
            &self.env_proxy
        }
    }
}

/// A loopback host: 127.0.0.0/8, `[::1]` or `localhost` (the URL parser lower-cases names).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A request ready to send. The body is kept so the Digest handshake can send it again.
pub(crate) struct Outgoing<'a> {
    pub method: Method,
    pub url: &'a Url,
    pub headers: HeaderMap,
    pub body: Option<&'a [u8]>,
    pub endpoint: Endpoint,
}

/// A complete response. For non-success statuses the error body is already parsed.
pub(crate) struct Incoming {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub failure: Option<ApiFailure>,
}

/// Bounds of what a response may make us do.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest body read.
    pub max_body_bytes: usize,
    /// Longest `Retry-After` honoured; longer ones are clamped to it.
    pub max_retry_after: std::time::Duration,
}

pub(crate) async fn round_trip(
    http: &HttpClient,
    limits: Limits,
    observer: Option<&dyn RequestObserver>,
    req: Outgoing<'_>,
) -> Result<Incoming, AtlasError> {
    let started = Instant::now();
    let method_name = method_name(&req.method);
    let endpoint = req.endpoint;
    let result = send(http, limits, req).await;
    let duration = started.elapsed();
    let (status, error_code) = match &result {
        Ok(r) => (
            Some(r.status),
            r.failure.as_ref().and_then(|f| f.error_code.as_deref()),
        ),
        Err(e) => (e.http_status(), None),
    };
    tracing::debug!(
        method = method_name,
        endpoint = endpoint.as_str(),
        status,
        error_code,
        duration_ms = duration.as_millis() as u64,
        "atlas round trip"
    );
    if let Some(obs) = observer {
        obs.observe(&RequestRecord {
            method: method_name,
            endpoint,
            status,
            error_code,
            duration,
        });
    }
    result
}

async fn send(
    http: &HttpClient,
    limits: Limits,
    req: Outgoing<'_>,
) -> Result<Incoming, AtlasError> {
    let max_body_bytes = limits.max_body_bytes;
    let endpoint = req.endpoint;
    let mut builder = http
        .for_url(req.url)
        .request(req.method, req.url.clone())
        .headers(req.headers);
    if let Some(body) = req.body {
        builder = builder.body(body.to_vec());
    }
    let mut resp = builder
        .send()
        .await
        .map_err(|e| transport_error(endpoint, &e, false))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let too_large = AtlasError::BodyTooLarge {
        endpoint,
        limit: max_body_bytes,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > max_body_bytes as u64)
    {
        return Err(too_large);
    }
    // Read chunk by chunk so an endless or lying body stops at the cap, not at memory's end.
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(endpoint, &e, true))?
    {
        if body.len() + chunk.len() > max_body_bytes {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    let failure = (!(200..300).contains(&status)).then(|| {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, limits.max_retry_after));
        match endpoint {
            Endpoint::LinkTokens | Endpoint::SourceLink => {
                ApiFailure::from_api_body(status, &body, retry_after)
            }
            Endpoint::OAuthToken => ApiFailure::from_oauth_body(status, &body, retry_after),
        }
    });
    Ok(Incoming {
        status,
        headers,
        body,
        failure,
    })
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::GET => "GET",
        Method::PUT => "PUT",
        _ => "other",
    }
}

/// Maps a reqwest error onto a kind. reqwest exposes timeout/connect/body flags but not TLS, so
/// TLS is recognised in the cause chain: tokio-rustls reports rustls errors as
/// `io::ErrorKind::InvalidData`, and certificate errors name themselves. It only changes the
/// wording; every kind classifies the same way.
fn transport_error(endpoint: Endpoint, e: &reqwest::Error, reading_body: bool) -> AtlasError {
    let chain = cause_chain(e);
    let lower = chain.to_ascii_lowercase();
    let tls = has_invalid_data_io_error(e)
        || ["tls", "certificate", "handshake", "rustls", "webpki"]
            .iter()
            .any(|w| lower.contains(w));
    let kind = if e.is_timeout() {
        if e.is_connect() {
            TransportKind::ConnectTimeout
        } else {
            TransportKind::Timeout
        }
    } else if reading_body || e.is_body() || e.is_decode() {
        TransportKind::BodyRead
    } else if tls {
        TransportKind::Tls
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    AtlasError::Transport {
        endpoint,
        kind,
        detail: chain,
    }
}

/// reqwest's connector wraps the TLS layer's `io::Error` in another `io::Error` (kind Other),
/// and `io::Error::source` skips the wrapped error, so nested io errors are opened by hand.
fn has_invalid_data_io_error(e: &reqwest::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        let mut io = s.downcast_ref::<std::io::Error>();
        while let Some(err) = io {
            if err.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
            io = err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>());
        }
        source = s.source();
    }
    false
}

/// Longest transport error text kept, in characters.
const MAX_CAUSE_CHARS: usize = 300;

/// The causes below reqwest's own message (which carries the URL), joined, as one sanitised
/// line: a proxy URL may hold a password, and a cause may quote what the peer sent.
fn cause_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    remote_text::sanitize(&parts.join(": "), MAX_CAUSE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for url in [
            "http://127.0.0.1:8090",
            "http://127.9.8.7/",
            "https://[::1]:8443/x",
            "http://localhost:8092",
            "https://LOCALHOST/",
        ] {
            assert!(is_loopback(&Url::parse(url).unwrap()), "{url}");
        }
        for url in [
            "https://cloud.mongodb.com",
            "http://128.0.0.1",
            "http://10.0.0.1",
            "http://[::2]",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://0.0.0.0",
        ] {
            assert!(!is_loopback(&Url::parse(url).unwrap()), "{url}");
        }
    }

    #[test]
    fn loopback_goes_direct_and_the_rest_by_the_environment() {
        let http = HttpClient::build(reqwest::Client::builder).unwrap();
        for (url, direct) in [
            ("http://127.0.0.1:8090/api", true),
            ("https://[::1]/api", true),
            ("http://localhost/api", true),
            ("https://cloud.mongodb.com/api", false),
            ("https://om.example:8443/api", false),
        ] {
            let chosen = http.for_url(&Url::parse(url).unwrap());
            assert_eq!(std::ptr::eq(chosen, &http.direct), direct, "{url}");
        }
    }
}
