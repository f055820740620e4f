//! Command-line flags of the operator process. Every flag has an environment equivalent
//! (`LINKTOKEN_<FLAG>`), so the Helm chart can set either.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::duration::{format_duration, parse_duration, parse_positive_duration};
use super::leader::LeaderConfig;
use crate::source::AllowedSources;

pub const DEFAULT_ATLAS_URL: &str = "https://cloud.mongodb.com";
pub const DEFAULT_LEADER_ELECTION_ID: &str = "linktoken-operator-leader";
/// Where Kubernetes mounts the pod's namespace for in-cluster clients.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Flags of `linktoken-operator`. Parse with [`Flags::parse`] (exits with usage on error) or
/// [`Flags::try_parse_from`] (tests).
#[derive(Debug, Clone, Parser)]
// A flag given twice takes its last value, so a wrapper's defaults (a chart's, a test
// harness's) can be overridden by appending, as with kube components' flags.
#[command(name = "linktoken-operator", version, about, long_about = None, args_override_self = true)]
pub struct Flags {
    /// Base URL of the Atlas Admin API (Atlas for Government: https://cloud.mongodbgov.com).
    /// Operator-wide on purpose: a LinkToken author must not be able to send credentials elsewhere.
    #[arg(long, env = "LINKTOKEN_ATLAS_URL", default_value = DEFAULT_ATLAS_URL, value_parser = AtlasUrlParser)]
    pub atlas_url: url::Url,

    /// Comma-separated namespaces to watch; empty watches all namespaces.
    #[arg(long, env = "LINKTOKEN_WATCH_NAMESPACES", default_value = "", value_parser = parse_namespaces)]
    pub watch_namespaces: WatchNamespaces,

    /// Elect a leader with a Lease so only one replica reconciles at a time.
    #[arg(long, env = "LINKTOKEN_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease [default: the pod's namespace, from POD_NAMESPACE
    /// or the service-account mount, else "default"]. Use `Flags::lease_namespace()`.
    #[arg(long, env = "LINKTOKEN_LEADER_ELECTION_NAMESPACE", value_parser = parse_dns_label)]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(long, env = "LINKTOKEN_LEADER_ELECTION_ID", default_value = DEFAULT_LEADER_ELECTION_ID, value_parser = parse_dns_subdomain)]
    pub leader_election_id: String,

    /// How long a Lease stays valid after its last renewal: a standby takes over this long
    /// after a leader stopped renewing (crashed, frozen, partitioned).
    #[arg(long, env = "LINKTOKEN_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_positive_duration)]
    pub leader_election_lease_duration: Duration,

    /// The leader steps down when it could not renew its Lease for this long; must be less
    /// than the lease duration, so it stops before a standby may take over.
    #[arg(long, env = "LINKTOKEN_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_positive_duration)]
    pub leader_election_renew_deadline: Duration,

    /// How often a standby tries to acquire the Lease (and a leader retries a failed renewal);
    /// must be less than the renew deadline.
    #[arg(long, env = "LINKTOKEN_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_positive_duration)]
    pub leader_election_retry_period: Duration,

    /// Address of the /metrics endpoint: `:8080`, `127.0.0.1:8080`, `[::]:8080`, or `0` to disable.
    #[arg(long, env = "LINKTOKEN_METRICS_BIND_ADDRESS", default_value = ":8080", value_parser = parse_bind_address)]
    pub metrics_bind_address: BindAddress,

    /// Address of /healthz and /readyz: `:8081`, `127.0.0.1:8081`, or `0` to disable.
    #[arg(long, env = "LINKTOKEN_HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081", value_parser = parse_bind_address)]
    pub health_probe_bind_address: BindAddress,

    /// Maximum number of LinkTokens reconciled at the same time (>= 1).
    #[arg(long, env = "LINKTOKEN_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Periodic resync of every LinkToken (e.g. 30s, 10m, 1h).
    #[arg(long, env = "LINKTOKEN_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_positive_duration)]
    pub resync_interval: Duration,

    /// Log format: one JSON object or one human-readable line per event.
    #[arg(long, env = "LINKTOKEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Timeout for establishing a connection to Atlas (TCP + TLS).
    #[arg(long, env = "LINKTOKEN_ATLAS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub atlas_connect_timeout: Duration,

    /// Timeout for a whole Atlas request, connection and response body included.
    #[arg(long, env = "LINKTOKEN_ATLAS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub atlas_request_timeout: Duration,

    /// First retry delay after a transient Atlas failure (5xx, timeout, 429 without
    /// Retry-After); doubles per consecutive failure, with jitter.
    #[arg(long, env = "LINKTOKEN_RETRY_BASE_DELAY", default_value = "2s", value_parser = parse_positive_duration)]
    pub retry_base_delay: Duration,

    /// Cap of the retry delay after transient Atlas failures.
    #[arg(long, env = "LINKTOKEN_RETRY_MAX_DELAY", default_value = "5m", value_parser = parse_positive_duration)]
    pub retry_max_delay: Duration,

    /// After a LinkToken's creation, how long a missing credentials Secret is reported as
    /// Reconciling (kstatus: InProgress) before Stalled (Failed): a Secret delivered by
    /// ExternalSecret or a later GitOps step lands after the LinkToken. 0 disables it.
    #[arg(long, env = "LINKTOKEN_CREDENTIALS_GRACE", default_value = "2m", value_parser = parse_duration)]
    pub credentials_grace: Duration,

    /// PEM file of CA certificates trusted for Atlas (and an HTTPS proxy) in addition to the
    /// platform's roots: an Ops Manager private CA, a TLS-intercepting proxy's CA. A file that
    /// cannot be read or holds no usable certificate stops the operator at start-up.
    #[arg(long, env = "LINKTOKEN_ATLAS_CA_FILE", value_name = "PATH")]
    pub atlas_ca_file: Option<PathBuf>,

    /// Accept an `http://` --atlas-url for a host that is not loopback. Credentials (API key
    /// digests, service-account secrets) and link tokens would cross the network in cleartext:
    /// only for a simulator or a TLS-terminating sidecar on a trusted network.
    #[arg(long, env = "LINKTOKEN_ALLOW_INSECURE_ATLAS_URL")]
    pub allow_insecure_atlas_url: bool,

    /// How long in-flight reconciles may run after SIGTERM before the process exits anyway.
    /// Keep it below the pod's terminationGracePeriodSeconds (30s by default).
    #[arg(long, env = "LINKTOKEN_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Comma-separated base URLs of the sources (Cloud Manager, Ops Manager) a LinkToken's
    /// spec.source.url may name. Any other URL gets SourceNotAllowed and no request at all:
    /// the source call carries credentials and the token, and a LinkToken author must not
    /// choose where they go. Compared exactly (scheme, host, port, path); http:// only for
    /// loopback.
    #[arg(long, env = "LINKTOKEN_ALLOWED_SOURCE_URLS", default_value = crate::api::source::CLOUD_MANAGER_URL, value_parser = parse_allowed_sources)]
    pub allowed_source_urls: AllowedSources,
}

impl Flags {
    /// Checks across flags that clap's per-flag parsers cannot: `http://` only for loopback
    /// hosts unless `--allow-insecure-atlas-url`; consistent leader-election timings.
    pub fn validate(&self) -> Result<(), String> {
        check_atlas_url_scheme(&self.atlas_url, self.allow_insecure_atlas_url)?;
        self.check_leader_timings()
    }

    /// The leader-election settings of these flags, for a process identified by `identity`.
    pub fn leader_config(&self, identity: String) -> LeaderConfig {
        LeaderConfig::new(
            self.lease_namespace(),
            self.leader_election_id.clone(),
            identity,
        )
        .with_timings(
            self.leader_election_lease_duration,
            self.leader_election_renew_deadline,
            self.leader_election_retry_period,
        )
    }

    /// Checked even without `--leader-elect`, so turning it on later cannot meet a bad value.
    fn check_leader_timings(&self) -> Result<(), String> {
        let (lease, deadline, retry) = (
            self.leader_election_lease_duration,
            self.leader_election_renew_deadline,
            self.leader_election_retry_period,
        );
        if deadline >= lease {
            return Err(format!(
                "--leader-election-renew-deadline ({}) must be less than --leader-election-lease-duration ({}): \
                 the leader must step down before a standby may take over",
                format_duration(deadline),
                format_duration(lease)
            ));
        }
        if retry >= deadline {
            return Err(format!(
                "--leader-election-retry-period ({}) must be less than --leader-election-renew-deadline ({})",
                format_duration(retry),
                format_duration(deadline)
            ));
        }
        LeaderConfig::new("validate", "validate", "validate")
            .with_timings(lease, deadline, retry)
            .validate()
            .map_err(|e| format!("leader election: {e}"))
    }

    /// Parses the command line and validates it; prints usage and exits 2 on error.
    pub fn parse_and_validate() -> Self {
        let flags = Flags::parse();
        if let Err(e) = flags.validate() {
            use clap::CommandFactory;
            Flags::command()
                .error(clap::error::ErrorKind::ValueValidation, e)
                .exit();
        }
        flags
    }

    /// Namespace of the leader-election Lease: the flag, else the pod's own namespace.
    pub fn lease_namespace(&self) -> String {
        resolve_lease_namespace(
            self.leader_election_namespace.as_deref(),
            std::env::var("POD_NAMESPACE").ok().as_deref(),
            Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE),
        )
    }
}

/// Precedence: explicit flag, `POD_NAMESPACE` (downward API), the service-account mount, `default`.
pub(crate) fn resolve_lease_namespace(
    flag: Option<&str>,
    pod_namespace_env: Option<&str>,
    sa_file: &Path,
) -> String {
    let non_empty = |s: &str| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    flag.and_then(non_empty)
        .or_else(|| pod_namespace_env.and_then(non_empty))
        .or_else(|| {
            std::fs::read_to_string(sa_file)
                .ok()
                .and_then(|s| non_empty(&s))
        })
        .unwrap_or_else(|| "default".to_string())
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Namespaces to watch; empty means all namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchNamespaces(pub Vec<String>);

impl WatchNamespaces {
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// A listen address, or disabled (`0`), in controller-runtime's notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindAddress {
    Disabled,
    Addr(SocketAddr),
}

impl BindAddress {
    pub fn socket_addr(self) -> Option<SocketAddr> {
        match self {
            BindAddress::Disabled => None,
            BindAddress::Addr(a) => Some(a),
        }
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddress::Disabled => f.write_str("0"),
            BindAddress::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// `:8080` binds every IPv4 interface (as in controller-runtime); `host:port` takes an IP
/// literal (`[::]:8080` for IPv6); `0` disables the endpoint.
pub fn parse_bind_address(s: &str) -> Result<BindAddress, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(BindAddress::Disabled);
    }
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in bind address {s:?}"))?;
        return Ok(BindAddress::Addr(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
        )));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid port in bind address {s:?}"))?;
        return Ok(BindAddress::Addr(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        )));
    }
    s.parse::<SocketAddr>().map(BindAddress::Addr).map_err(|_| {
        format!("invalid bind address {s:?}: use :PORT, IP:PORT, [IPv6]:PORT or 0 to disable")
    })
}

/// The Atlas base URL: absolute http(s), no query or fragment (paths are appended to it).
/// Errors never repeat a password (or user name) written into the URL.
pub fn parse_atlas_url(s: &str) -> Result<url::Url, String> {
    let shown = crate::atlas::redact_url_userinfo(s.trim());
    let u = url::Url::parse(s.trim()).map_err(|e| format!("invalid Atlas URL {shown:?}: {e}"))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(format!(
            "invalid Atlas URL {shown:?}: scheme must be https (or http for a local simulator)"
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid Atlas URL {shown:?}: missing host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        // Credentials come from each LinkToken's Secret, never from the URL (it is logged).
        return Err(format!(
            "invalid Atlas URL {shown:?}: must not contain credentials"
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "invalid Atlas URL {shown:?}: must not have a query or fragment"
        ));
    }
    Ok(u)
}

/// clap's own error for a rejected value repeats the value, which for a URL may carry a
/// password: this parser reports `parse_atlas_url`'s (redacted) message only.
#[derive(Clone, Copy, Debug)]
pub struct AtlasUrlParser;

impl clap::builder::TypedValueParser for AtlasUrlParser {
    type Value = url::Url;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<url::Url, clap::Error> {
        let fail = |m: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("--atlas-url: {m}\n"),
            )
            .with_cmd(cmd)
        };
        let s = value
            .to_str()
            .ok_or_else(|| fail("invalid Atlas URL: not UTF-8".into()))?;
        parse_atlas_url(s).map_err(fail)
    }
}

/// `http://` sends every credential and link token in cleartext: accepted for loopback hosts
/// (a simulator next to the operator) or when explicitly allowed.
pub fn check_atlas_url_scheme(u: &url::Url, allow_insecure: bool) -> Result<(), String> {
    if u.scheme() == "https" || allow_insecure || crate::atlas::transport::is_loopback(u) {
        return Ok(());
    }
    Err(format!(
        "--atlas-url {u} uses http:// for a host that is not loopback: credentials and link tokens would travel in cleartext; use https://, or set --allow-insecure-atlas-url if you really mean it"
    ))
}

/// Comma list of namespaces; blanks are dropped so `""` and `a,,b` behave as users expect.
pub fn parse_allowed_sources(s: &str) -> Result<AllowedSources, String> {
    AllowedSources::parse(s)
}

pub fn parse_namespaces(s: &str) -> Result<WatchNamespaces, String> {
    let mut out: Vec<String> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ns = parse_dns_label(part)?;
        if !out.contains(&ns) {
            out.push(ns);
        }
    }
    Ok(WatchNamespaces(out))
}

/// A namespace name (RFC 1123 label): catches typos at startup instead of as RBAC errors later.
pub fn parse_dns_label(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid namespace {s:?}: must be a lowercase RFC 1123 label (a-z, 0-9, '-', at most 63 characters)"
        ))
    }
}

/// A Lease name (RFC 1123 subdomain).
pub fn parse_dns_subdomain(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| parse_dns_label(l).is_ok());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid name {s:?}: must be a lowercase RFC 1123 subdomain"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap reads LINKTOKEN_* from the process environment, which is global: tests that parse
    /// hold this lock so `env_equivalents` never leaks its variables into another test.
    static ENV_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn parse_raw(args: &[&str]) -> Result<Flags, clap::Error> {
        let mut v = vec!["linktoken-operator"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v)
    }

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        parse_raw(args)
    }

    #[test]
    fn defaults() {
        let f = parse(&[]).unwrap();
        assert_eq!(f.atlas_url.as_str(), "https://cloud.mongodb.com/");
        assert!(f.watch_namespaces.is_all());
        assert!(!f.leader_elect);
        assert_eq!(f.leader_election_namespace, None);
        assert_eq!(f.leader_election_id, "linktoken-operator-leader");
        assert_eq!(
            f.metrics_bind_address,
            BindAddress::Addr("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            f.health_probe_bind_address,
            BindAddress::Addr("0.0.0.0:8081".parse().unwrap())
        );
        assert_eq!(f.concurrency, 8);
        assert_eq!(f.resync_interval, Duration::from_secs(600));
        assert_eq!(f.log_format, LogFormat::Text);
        assert_eq!(f.atlas_connect_timeout, Duration::from_secs(10));
        assert_eq!(f.atlas_request_timeout, Duration::from_secs(30));
        assert_eq!(f.shutdown_timeout, Duration::from_secs(25));
        assert!(!f.allow_insecure_atlas_url);
        assert_eq!(f.atlas_ca_file, None);
        assert_eq!(f.validate(), Ok(()));
        // The flags' defaults are the elector's own.
        assert_eq!(
            f.leader_config("me".into()),
            LeaderConfig::new(f.lease_namespace(), DEFAULT_LEADER_ELECTION_ID, "me")
        );
    }

    #[test]
    fn every_flag_parses() {
        let f = parse(&[
            "--atlas-url=https://cloud.mongodbgov.com",
            "--watch-namespaces=team-a, team-b,,team-a",
            "--leader-elect",
            "--leader-election-namespace=ops",
            "--leader-election-id=my-lease",
            "--metrics-bind-address=127.0.0.1:9090",
            "--health-probe-bind-address=0",
            "--concurrency=2",
            "--resync-interval=1h30m",
            "--log-format=json",
            "--atlas-connect-timeout=3s",
            "--atlas-request-timeout=1m",
            "--shutdown-timeout=0s",
            "--atlas-ca-file=/etc/linktoken/ca/ca.crt",
            "--leader-election-lease-duration=1m",
            "--leader-election-renew-deadline=40s",
            "--leader-election-retry-period=5s",
        ])
        .unwrap();
        assert_eq!(f.validate(), Ok(()));
        let lc = f.leader_config("me".into());
        assert_eq!(lc.lease_duration, Duration::from_secs(60));
        assert_eq!(lc.renew_deadline, Duration::from_secs(40));
        assert_eq!(lc.retry_period, Duration::from_secs(5));
        assert_eq!(lc.renew_interval, Duration::from_secs(20));
        assert_eq!(lc.lease_name, "my-lease");
        assert_eq!(f.atlas_url.host_str(), Some("cloud.mongodbgov.com"));
        assert_eq!(f.watch_namespaces.names(), ["team-a", "team-b"]);
        assert!(f.leader_elect);
        assert_eq!(f.lease_namespace(), "ops");
        assert_eq!(f.leader_election_id, "my-lease");
        assert_eq!(
            f.metrics_bind_address.socket_addr(),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(f.health_probe_bind_address, BindAddress::Disabled);
        assert_eq!(f.concurrency, 2);
        assert_eq!(f.resync_interval, Duration::from_secs(5400));
        assert_eq!(f.log_format, LogFormat::Json);
        assert_eq!(f.atlas_connect_timeout, Duration::from_secs(3));
        assert_eq!(f.atlas_request_timeout, Duration::from_secs(60));
        assert_eq!(f.shutdown_timeout, Duration::ZERO);
        assert_eq!(
            f.atlas_ca_file.as_deref(),
            Some(Path::new("/etc/linktoken/ca/ca.crt"))
        );
    }

    #[test]
    fn env_equivalents() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let vars = [
            ("LINKTOKEN_ATLAS_URL", "http://127.0.0.1:9000/base"),
            ("LINKTOKEN_WATCH_NAMESPACES", "a,b"),
            ("LINKTOKEN_LEADER_ELECT", "true"),
            ("LINKTOKEN_LEADER_ELECTION_NAMESPACE", "lease-ns"),
            ("LINKTOKEN_LEADER_ELECTION_ID", "env-lease"),
            ("LINKTOKEN_METRICS_BIND_ADDRESS", ":9100"),
            ("LINKTOKEN_HEALTH_PROBE_BIND_ADDRESS", "[::1]:9101"),
            ("LINKTOKEN_CONCURRENCY", "3"),
            ("LINKTOKEN_RESYNC_INTERVAL", "30s"),
            ("LINKTOKEN_LOG_FORMAT", "json"),
            ("LINKTOKEN_ATLAS_CONNECT_TIMEOUT", "2s"),
            ("LINKTOKEN_ATLAS_REQUEST_TIMEOUT", "4s"),
            ("LINKTOKEN_SHUTDOWN_TIMEOUT", "5s"),
            ("LINKTOKEN_ATLAS_CA_FILE", "/ca/bundle.pem"),
            ("LINKTOKEN_LEADER_ELECTION_LEASE_DURATION", "30s"),
            ("LINKTOKEN_LEADER_ELECTION_RENEW_DEADLINE", "20s"),
            ("LINKTOKEN_LEADER_ELECTION_RETRY_PERIOD", "3s"),
        ];
        // SAFETY: every test that reads these variables holds ENV_LOCK, as this one does.
        unsafe {
            for (k, v) in vars {
                std::env::set_var(k, v);
            }
        }
        let from_env = parse_raw(&[]);
        // A flag on the command line wins over its environment variable.
        let overridden = parse_raw(&["--concurrency=5", "--log-format=text"]);
        // SAFETY: as above.
        unsafe {
            std::env::set_var("LINKTOKEN_LEADER_ELECT", "false");
        }
        let elect_false = parse_raw(&[]);
        // SAFETY: as above.
        unsafe {
            for (k, _) in vars {
                std::env::remove_var(k);
            }
        }

        let f = from_env.unwrap();
        assert_eq!(f.atlas_url.as_str(), "http://127.0.0.1:9000/base");
        assert_eq!(f.watch_namespaces.names(), ["a", "b"]);
        assert!(f.leader_elect);
        assert_eq!(f.lease_namespace(), "lease-ns");
        assert_eq!(f.leader_election_lease_duration, Duration::from_secs(30));
        assert_eq!(f.leader_election_renew_deadline, Duration::from_secs(20));
        assert_eq!(f.leader_election_retry_period, Duration::from_secs(3));
        assert_eq!(f.leader_election_id, "env-lease");
        assert_eq!(
            f.metrics_bind_address.socket_addr(),
            Some("0.0.0.0:9100".parse().unwrap())
        );
        assert_eq!(
            f.health_probe_bind_address.socket_addr(),
            Some("[::1]:9101".parse().unwrap())
        );
        assert_eq!(f.concurrency, 3);
        assert_eq!(f.resync_interval, Duration::from_secs(30));
        assert_eq!(f.log_format, LogFormat::Json);
        assert_eq!(f.atlas_connect_timeout, Duration::from_secs(2));
        assert_eq!(f.atlas_request_timeout, Duration::from_secs(4));
        assert_eq!(f.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(
            f.atlas_ca_file.as_deref(),
            Some(Path::new("/ca/bundle.pem"))
        );

        let o = overridden.unwrap();
        assert_eq!(o.concurrency, 5);
        assert_eq!(o.log_format, LogFormat::Text);
        assert!(!elect_false.unwrap().leader_elect);
    }

    #[test]
    fn an_empty_ca_file_is_refused_naming_the_flag() {
        // Set but empty is a mistake in whatever rendered it (a chart value left blank), not
        // "no CA file": the operator would otherwise fail later on every https call.
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: every test that reads these variables holds ENV_LOCK, as this one does.
        unsafe { std::env::set_var("LINKTOKEN_ATLAS_CA_FILE", "") };
        let f = parse_raw(&[]);
        // SAFETY: as above.
        unsafe { std::env::remove_var("LINKTOKEN_ATLAS_CA_FILE") };
        let e = f.unwrap_err().to_string();
        assert!(e.contains("--atlas-ca-file"), "{e}");
    }

    fn err_of(args: &[&str]) -> String {
        parse(args).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_fail_with_clear_errors() {
        let e = err_of(&["--atlas-url=ftp://cloud.mongodb.com"]);
        assert!(
            e.contains("--atlas-url") && e.contains("scheme must be https"),
            "{e}"
        );
        let e = err_of(&["--atlas-url=not a url"]);
        assert!(e.contains("invalid Atlas URL"), "{e}");
        let e = err_of(&["--atlas-url=https://user:pw@cloud.mongodb.com"]);
        assert!(e.contains("credentials"), "{e}");
        let e = err_of(&["--concurrency=0"]);
        assert!(e.contains("--concurrency"), "{e}");
        let e = err_of(&["--resync-interval=10"]);
        assert!(e.contains("missing unit"), "{e}");
        let e = err_of(&["--resync-interval=0s"]);
        assert!(e.contains("greater than zero"), "{e}");
        let e = err_of(&["--log-format=yaml"]);
        assert!(e.contains("--log-format") && e.contains("json"), "{e}");
        let e = err_of(&["--metrics-bind-address=8080"]);
        assert!(e.contains("invalid bind address"), "{e}");
        let e = err_of(&["--metrics-bind-address=:99999"]);
        assert!(e.contains("invalid port"), "{e}");
        let e = err_of(&["--watch-namespaces=Team_A"]);
        assert!(e.contains("RFC 1123"), "{e}");
        let e = err_of(&["--leader-election-id=Bad Name"]);
        assert!(e.contains("subdomain"), "{e}");
    }

    #[test]
    fn leader_election_timings_must_be_ordered_and_positive() {
        let invalid = |args: &[&str]| parse(args).unwrap().validate().unwrap_err();
        let e = invalid(&["--leader-election-lease-duration=10s"]);
        assert!(
            e.contains("--leader-election-renew-deadline (10s) must be less than --leader-election-lease-duration (10s)"),
            "{e}"
        );
        let e = invalid(&["--leader-election-renew-deadline=20s"]);
        assert!(
            e.contains("must be less than --leader-election-lease-duration"),
            "{e}"
        );
        let e = invalid(&["--leader-election-retry-period=10s"]);
        assert!(
            e.contains("--leader-election-retry-period (10s) must be less than --leader-election-renew-deadline (10s)"),
            "{e}"
        );
        // Whole seconds in the Lease: a sub-second lease is refused by the elector's own check.
        let e = invalid(&[
            "--leader-election-lease-duration=900ms",
            "--leader-election-renew-deadline=600ms",
            "--leader-election-retry-period=100ms",
        ]);
        assert!(e.contains("at least 1s"), "{e}");
        for flag in [
            "--leader-election-lease-duration=0s",
            "--leader-election-renew-deadline=0s",
            "--leader-election-retry-period=0s",
        ] {
            let e = err_of(&[flag]);
            assert!(e.contains("greater than zero"), "{flag}: {e}");
        }
        // Shorter than the defaults, consistently: fine.
        let f = parse(&[
            "--leader-election-lease-duration=3s",
            "--leader-election-renew-deadline=2s",
            "--leader-election-retry-period=500ms",
        ])
        .unwrap();
        assert_eq!(f.validate(), Ok(()));
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let f = parse(&["--retry-max-delay=5s", "--retry-max-delay=10m"]).unwrap();
        assert_eq!(f.retry_max_delay, Duration::from_secs(600));
    }

    #[test]
    fn atlas_url_passwords_are_never_echoed() {
        for url in [
            "https://user:hunter2secret@cloud.mongodb.com",
            "https://user:hunter2secret@cloud.mongodb.com/?x=1",
            "http://user:hunter2secret@10.0.0.1:8080/base",
            "ftp://user:hunter2secret@cloud.mongodb.com",
            "https://user:hunter2secret@",
            "https://:hunter2secret@host:notaport",
            "user:hunter2secret@cloud.mongodb.com",
            "https://us@er:hunter2secret@cloud.mongodb.com",
        ] {
            let e = err_of(&[&format!("--atlas-url={url}")]);
            assert!(!e.contains("hunter2secret"), "{url}: {e}");
            assert!(e.contains("Atlas URL"), "{url}: {e}");
        }
    }

    #[test]
    fn http_is_only_for_loopback_unless_allowed() {
        for ok in [
            "https://cloud.mongodb.com",
            "http://127.0.0.1:8090",
            "http://127.1.2.3",
            "http://[::1]:8090",
            "http://localhost:8090",
            "http://LOCALHOST",
        ] {
            let f = parse(&[&format!("--atlas-url={ok}")]).unwrap();
            assert_eq!(f.validate(), Ok(()), "{ok}");
        }
        for bad in [
            "http://cloud.mongodb.com",
            "http://10.0.0.1:8090",
            "http://[::2]",
            "http://localhost.example.com",
            "http://0.0.0.0:8090",
        ] {
            let f = parse(&[&format!("--atlas-url={bad}")]).unwrap();
            let e = f.validate().unwrap_err();
            assert!(e.contains("--allow-insecure-atlas-url"), "{bad}: {e}");
            let f = parse(&[&format!("--atlas-url={bad}"), "--allow-insecure-atlas-url"]).unwrap();
            assert_eq!(f.validate(), Ok(()), "{bad}");
        }
    }

    #[test]
    fn bind_address_forms() {
        assert_eq!(parse_bind_address("0"), Ok(BindAddress::Disabled));
        assert_eq!(
            parse_bind_address(":0"),
            Ok(BindAddress::Addr("0.0.0.0:0".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("localhost:8080"),
            Ok(BindAddress::Addr("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_bind_address("[::]:8080"),
            Ok(BindAddress::Addr("[::]:8080".parse().unwrap()))
        );
        assert!(parse_bind_address("").is_err());
        assert!(parse_bind_address("example.com:80").is_err());
        assert_eq!(BindAddress::Disabled.to_string(), "0");
    }

    #[test]
    fn empty_watch_namespaces_means_all() {
        assert!(parse_namespaces("").unwrap().is_all());
        assert!(parse_namespaces(" , ").unwrap().is_all());
        let f = parse(&["--watch-namespaces="]).unwrap();
        assert!(f.watch_namespaces.is_all());
    }

    #[test]
    fn lease_namespace_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let sa = dir.path().join("namespace");
        let missing = dir.path().join("missing");
        std::fs::write(&sa, "from-file\n").unwrap();
        assert_eq!(
            resolve_lease_namespace(Some("flag"), Some("env"), &sa),
            "flag"
        );
        assert_eq!(resolve_lease_namespace(None, Some("env"), &sa), "env");
        assert_eq!(resolve_lease_namespace(None, Some(""), &sa), "from-file");
        assert_eq!(resolve_lease_namespace(None, None, &sa), "from-file");
        assert_eq!(resolve_lease_namespace(None, None, &missing), "default");
    }
}
