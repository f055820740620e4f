//! Prometheus metrics of the operator (prefix `linktoken_`), encoded in the OpenMetrics text format.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::api::Reason;

/// Content type of [`Metrics::encode`]'s output. prometheus-client writes OpenMetrics (counters
/// as `_total` samples of a `counter` family, `# EOF` trailer); Prometheus parses it by this type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

// ---- Label values: every one comes from a closed set ----------------------------------------
//
// Status codes and errorCodes come from the network (Atlas, a source, or a proxy in between):
// a label value made of them as sent would let a broken or hostile server add series without
// bound. Each label is mapped onto the sets below, here and nowhere else; docs/operations.md
// lists them. `result` and `reason` are enums of this crate (`ReconcileResult`, `Reason`), and
// `version` is the build's.

/// The label value of anything outside a closed set.
pub const OTHER: &str = "other";

/// The `error_code` values besides [`OTHER`] and `""` (no errorCode): the codes the Atlas and
/// source contracts name (the OpenAPI examples and research notes in the product contract, the
/// live recordings, what atlas-sim answers as Atlas or as Cloud Manager / Ops Manager) and the
/// OAuth 2.0 token endpoint's `error` values (RFC 6749 section 5.2, plus `access_denied`, which
/// Atlas sends when a service account holds too many tokens).
pub const KNOWN_ERROR_CODES: [&str; 33] = [
    // Atlas Admin API, link tokens.
    "CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK",
    "ORG_NOT_FOUND",
    "RATE_LIMITED",
    "RATE_LIMITED_TOKEN_BUCKET",
    "RESOURCE_NOT_FOUND",
    "UNEXPECTED_ERROR",
    "USER_UNAUTHORIZED",
    "NOT_ORG_GROUP_CREATOR",
    "CANNOT_CHANGE_GROUP_NAME",
    "VALIDATION_ERROR",
    "INVALID_ATTRIBUTE",
    "INVALID_IP_ADDRESS_OR_CIDR_NOTATION",
    "INVALID_JSON",
    "INVALID_JSON_ATTRIBUTE",
    "INVALID_PATH_PARAMETER",
    "INVALID_QUERY_PARAMETER",
    "INVALID_VERSION_DATE",
    "MALFORMED_JSON",
    "MISSING_ATTRIBUTE",
    "METHOD_NOT_ALLOWED",
    "UNSUPPORTED_MEDIA_TYPE",
    "VERSION_GONE",
    // Cloud Manager / Ops Manager, migrationLink (undocumented; as atlas-sim models them).
    "INVALID_LINK_TOKEN",
    "MIGRATION_LINK_ALREADY_EXISTS",
    "MIGRATION_LINK_NOT_FOUND",
    "USER_CANNOT_ACCESS_ORGANIZATION",
    // OAuth 2.0 token endpoint (Atlas, and a Cloud Manager source).
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
];

/// The `status` values kept as their number: the statuses the contracts name (successes, the
/// ApiError statuses, gateway errors). Any other status becomes its class (`1xx` .. `5xx`), a
/// number outside 100..=599 becomes [`OTHER`], and no response at all is `none`.
pub const KNOWN_STATUSES: [u16; 20] = [
    200, 201, 202, 204, 400, 401, 403, 404, 405, 406, 408, 409, 410, 415, 429, 500, 501, 502, 503,
    504,
];

/// The `status` value of a request that got no response (timeout, connection or TLS failure).
pub const NO_RESPONSE: &str = "none";

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `method` values besides [`OTHER`]: the methods the clients send.
pub const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// The `error_code` label of an errorCode (already sanitised by the client): itself when it
/// is one of [`KNOWN_ERROR_CODES`], `""` when there is none, else [`OTHER`].
pub fn error_code_label(code: Option<&str>) -> &'static str {
    match code {
        None | Some("") => "",
        Some(c) => KNOWN_ERROR_CODES
            .iter()
            .find(|k| **k == c)
            .copied()
            .unwrap_or(OTHER),
    }
}

/// The `status` label of an HTTP status (None: no response).
pub fn status_label(status: Option<u16>) -> String {
    match status {
        None => NO_RESPONSE.to_string(),
        Some(s) if KNOWN_STATUSES.contains(&s) => s.to_string(),
        Some(s @ 100..=599) => STATUS_CLASSES[usize::from(s / 100 - 1)].to_string(),
        Some(_) => OTHER.to_string(),
    }
}

/// Every value [`status_label`] can return.
pub fn status_labels() -> Vec<String> {
    KNOWN_STATUSES
        .iter()
        .map(u16::to_string)
        .chain(STATUS_CLASSES.iter().map(|c| c.to_string()))
        .chain([OTHER.to_string(), NO_RESPONSE.to_string()])
        .collect()
}

/// The `method` label of an HTTP method, in any case.
pub fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or(OTHER)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AtlasRequestLabels {
    method: String,
    status: String,
    error_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// How one reconcile ended: the `result` label of `linktoken_reconciles_total` and
/// `linktoken_reconcile_duration_seconds`. The only values the operator emits; every one exists
/// from startup at 0, so an alert on any of them works before the first occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReconcileResult {
    /// The token Secret holds a token for the current spec (Ready=True).
    Ready,
    /// Not Ready yet; retried on a timer (a transient Atlas or rate-limit failure, an org
    /// owned by another LinkToken, a revocation Atlas refused for now).
    Requeue,
    /// Not Ready, and retrying cannot help until someone changes something (Stalled=True).
    Stalled,
    /// The reconcile failed on the Kubernetes API or with an unexpected error; retried with
    /// exponential backoff. The log line names the cause.
    Error,
    /// The LinkToken is gone or being deleted, and cleanup finished (token revoked or retained,
    /// finalizer released).
    Deleted,
}

impl ReconcileResult {
    pub const ALL: [ReconcileResult; 5] = [
        ReconcileResult::Ready,
        ReconcileResult::Requeue,
        ReconcileResult::Stalled,
        ReconcileResult::Error,
        ReconcileResult::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Ready => "ready",
            ReconcileResult::Requeue => "requeue",
            ReconcileResult::Stalled => "stalled",
            ReconcileResult::Error => "error",
            ReconcileResult::Deleted => "deleted",
        }
    }
}

impl std::fmt::Display for ReconcileResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Reconciles include Atlas calls bounded by the request timeout (30s default): 5ms .. ~41s.
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// One Atlas HTTP call: 10ms .. ~41s.
fn atlas_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: HistogramFamily<ResultLabels>,
    atlas_requests: Family<AtlasRequestLabels, Counter>,
    atlas_request_duration: HistogramFamily<MethodLabels>,
    source_requests: Family<AtlasRequestLabels, Counter>,
    tokens_issued: Counter,
    tokens_revoked: Counter,
    source_unlinks_skipped: Counter,
    linktokens: Family<ReasonLabels, Gauge>,
    leader: Gauge,
    /// Object key -> its last reported Ready reason, so a reason change or a deletion moves
    /// exactly one object between gauge series (a bare inc/dec API drifts on missed events).
    tracked: Mutex<HashMap<String, Reason>>,
}

/// The operator's metrics. Cheap to clone; every clone updates the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("linktoken");

        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of LinkTokens by result (ready, requeue, stalled, error, deleted)",
            reconciles.clone(),
        );
        let reconcile_duration: HistogramFamily<ResultLabels> =
            Family::new_with_constructor(reconcile_histogram);
        // prometheus-client omits families without series; creating the documented results at 0
        // lets `rate(linktoken_reconciles_total{result="error"}[5m])` work before the first error.
        for result in ReconcileResult::ALL {
            let labels = ResultLabels {
                result: result.as_str().to_string(),
            };
            let _ = reconciles.get_or_create(&labels);
            let _ = reconcile_duration.get_or_create(&labels);
        }
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconcile of a LinkToken, by result",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let atlas_requests = Family::<AtlasRequestLabels, Counter>::default();
        registry.register(
            "atlas_requests",
            "Atlas Admin API requests by HTTP method, status (none: no response) and Atlas errorCode",
            atlas_requests.clone(),
        );
        let atlas_request_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(atlas_histogram);
        registry.register_with_unit(
            "atlas_request_duration",
            "Duration of Atlas Admin API requests by HTTP method",
            Unit::Seconds,
            atlas_request_duration.clone(),
        );
        let source_requests = Family::<AtlasRequestLabels, Counter>::default();
        registry.register(
            "source_requests",
            "Cloud Manager / Ops Manager (spec.source) requests by HTTP method, status (none: no response) and errorCode",
            source_requests.clone(),
        );
        let tokens_issued = Counter::default();
        registry.register(
            "tokens_issued",
            "Link tokens issued (POST accepted by Atlas)",
            tokens_issued.clone(),
        );
        let tokens_revoked = Counter::default();
        registry.register(
            "tokens_revoked",
            "Link tokens revoked (DELETE accepted by Atlas)",
            tokens_revoked.clone(),
        );
        let source_unlinks_skipped = Counter::default();
        registry.register(
            "source_unlinks_skipped",
            "Links left at a source when their LinkToken went away (UnlinkSkipped: the source credentials were gone, e.g. with the namespace, or refused)",
            source_unlinks_skipped.clone(),
        );
        let linktokens = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "linktokens",
            "LinkTokens by Ready condition reason",
            linktokens.clone(),
        );
        // Every reason exists from the start at 0, so alerts like `linktokens{reason="X"} > 0`
        // see a series instead of an absent one.
        for reason in Reason::ALL {
            linktokens.get_or_create(&reason_labels(reason)).set(0);
        }
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 when this replica holds the leader Lease (or runs without leader election)",
            leader.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Version of the running operator (always 1)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);

        Metrics {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                reconcile_duration,
                atlas_requests,
                atlas_request_duration,
                source_requests,
                tokens_issued,
                tokens_revoked,
                source_unlinks_skipped,
                linktokens,
                leader,
                tracked: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Records one finished reconcile.
    pub fn observe_reconcile(&self, result: ReconcileResult, duration: Duration) {
        let labels = ResultLabels {
            result: result.as_str().to_string(),
        };
        self.inner.reconciles.get_or_create(&labels).inc();
        self.inner
            .reconcile_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records one HTTP request to a source (spec.source): as [`Metrics::observe_atlas_request`],
    /// counted apart so Atlas's numbers stay Atlas's.
    pub fn observe_source_request(
        &self,
        method: &str,
        status: Option<u16>,
        error_code: Option<&str>,
    ) {
        self.inner
            .source_requests
            .get_or_create(&request_labels(method, status, error_code))
            .inc();
    }

    /// Records one Atlas HTTP request. `status` is `None` when no response arrived (timeout,
    /// connection or TLS failure). `error_code` is the ApiError `errorCode`, if any. All three
    /// are folded into their closed sets ([`method_label`], [`status_label`],
    /// [`error_code_label`]).
    pub fn observe_atlas_request(
        &self,
        method: &str,
        status: Option<u16>,
        error_code: Option<&str>,
        duration: Duration,
    ) {
        let labels = request_labels(method, status, error_code);
        self.inner.atlas_requests.get_or_create(&labels).inc();
        self.inner
            .atlas_request_duration
            .get_or_create(&MethodLabels {
                method: labels.method,
            })
            .observe(duration.as_secs_f64());
    }

    pub fn token_issued(&self) {
        self.inner.tokens_issued.inc();
    }

    pub fn token_revoked(&self) {
        self.inner.tokens_revoked.inc();
    }

    /// A link left at a source on deletion: its Warning event may not be publishable (a
    /// namespace being deleted takes no new events), so it is counted here too.
    pub fn source_unlink_skipped(&self) {
        self.inner.source_unlinks_skipped.inc();
    }

    /// Reports the current Ready reason of one LinkToken (`key`, e.g. `namespace/name`);
    /// `None` when the object is gone. Idempotent: reporting the same reason twice counts once.
    pub fn track(&self, key: &str, reason: Option<Reason>) {
        let mut tracked = self.tracked();
        let previous = match reason {
            Some(r) => tracked.insert(key.to_string(), r),
            None => tracked.remove(key),
        };
        if previous == reason {
            return;
        }
        if let Some(old) = previous {
            self.inner
                .linktokens
                .get_or_create(&reason_labels(old))
                .dec();
        }
        if let Some(new) = reason {
            self.inner
                .linktokens
                .get_or_create(&reason_labels(new))
                .inc();
        }
    }

    /// Replaces all tracked state with a full snapshot (key -> reason), e.g. after a relist.
    /// Keys absent from the snapshot are forgotten.
    pub fn track_all(&self, snapshot: &BTreeMap<String, Reason>) {
        let mut tracked = self.tracked();
        tracked.clear();
        tracked.extend(snapshot.iter().map(|(k, r)| (k.clone(), *r)));
        let mut counts: BTreeMap<Reason, i64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
        for r in tracked.values() {
            *counts.entry(*r).or_default() += 1;
        }
        for (reason, n) in counts {
            self.inner
                .linktokens
                .get_or_create(&reason_labels(reason))
                .set(n);
        }
    }

    /// Forgets every tracked LinkToken whose key `keep` rejects (objects that vanished while
    /// a watch was down, so no delete event ever came for them).
    pub fn retain_tracked(&self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .tracked()
            .keys()
            .filter(|k| !keep(k))
            .cloned()
            .collect();
        for key in gone {
            self.track(&key, None);
        }
    }

    /// The number of tracked LinkTokens per reason (what the gauge shows).
    pub fn linktokens_by_reason(&self) -> BTreeMap<Reason, i64> {
        let tracked = self.tracked();
        let mut counts = BTreeMap::new();
        for r in tracked.values() {
            *counts.entry(*r).or_default() += 1;
        }
        counts
    }

    pub fn set_leader(&self, leading: bool) {
        self.inner.leader.set(i64::from(leading));
    }

    /// The exposition in OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be an encoder bug, and a
        // partial scrape is better than a crashed process.
        if let Err(e) = encode(&mut out, &self.inner.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    fn tracked(&self) -> MutexGuard<'_, HashMap<String, Reason>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing all metrics, so keep going with the inner value.
        self.inner
            .tracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn reason_labels(reason: Reason) -> ReasonLabels {
    ReasonLabels {
        reason: reason.as_str().to_string(),
    }
}

fn request_labels(
    method: &str,
    status: Option<u16>,
    error_code: Option<&str>,
) -> AtlasRequestLabels {
    AtlasRequestLabels {
        method: method_label(method).to_string(),
        status: status_label(status),
        error_code: error_code_label(error_code).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn exposes_every_family_with_prefix() {
        let m = Metrics::new();
        let text = m.encode();
        for family in [
            "# TYPE linktoken_reconciles counter",
            "# TYPE linktoken_reconcile_duration_seconds histogram",
            "# TYPE linktoken_tokens_issued counter",
            "# TYPE linktoken_tokens_revoked counter",
            "# TYPE linktoken_linktokens gauge",
            "# TYPE linktoken_leader gauge",
            "# TYPE linktoken_build_info gauge",
        ] {
            assert!(has_line(&text, family), "missing {family:?} in\n{text}");
        }
        assert!(has_line(&text, "linktoken_tokens_issued_total 0"), "{text}");
        assert!(
            has_line(&text, r#"linktoken_reconciles_total{result="stalled"} 0"#),
            "{text}"
        );
        // Atlas families appear with their first request (label values are not known before).
        assert!(!text.contains("linktoken_atlas_requests"), "{text}");
        assert!(has_line(&text, "linktoken_leader 0"), "{text}");
        assert!(
            has_line(&text, r#"linktoken_linktokens{reason="AtlasForbidden"} 0"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn source_requests_are_counted_apart_from_atlas() {
        let m = Metrics::new();
        m.observe_source_request("post", Some(200), None);
        m.observe_source_request("GET", Some(404), Some("MIGRATION_LINK_NOT_FOUND"));
        let text = m.encode();
        for line in [
            r#"linktoken_source_requests_total{method="POST",status="200",error_code=""} 1"#,
            r#"linktoken_source_requests_total{method="GET",status="404",error_code="MIGRATION_LINK_NOT_FOUND"} 1"#,
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("linktoken_atlas_requests_total{"), "{text}");
    }

    #[test]
    fn records_reconciles_requests_and_tokens() {
        let m = Metrics::new();
        m.observe_reconcile(ReconcileResult::Ready, Duration::from_millis(20));
        m.observe_reconcile(ReconcileResult::Ready, Duration::from_millis(30));
        m.observe_reconcile(ReconcileResult::Error, Duration::from_secs(2));
        m.observe_atlas_request("post", Some(201), None, Duration::from_millis(150));
        m.observe_atlas_request(
            "DELETE",
            Some(409),
            Some("CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK"),
            Duration::from_millis(80),
        );
        m.observe_atlas_request("POST", None, None, Duration::from_secs(10));
        m.observe_atlas_request("POST", Some(502), Some("<html>bad gateway"), Duration::ZERO);
        m.token_issued();
        m.token_revoked();
        m.token_revoked();
        m.set_leader(true);

        let text = m.encode();
        for line in [
            r#"linktoken_reconciles_total{result="ready"} 2"#,
            r#"linktoken_reconciles_total{result="error"} 1"#,
            r#"linktoken_reconcile_duration_seconds_count{result="ready"} 2"#,
            r#"linktoken_reconcile_duration_seconds_bucket{le="0.04",result="ready"} 2"#,
            "# TYPE linktoken_atlas_requests counter",
            "# TYPE linktoken_atlas_request_duration_seconds histogram",
            r#"linktoken_atlas_requests_total{method="POST",status="201",error_code=""} 1"#,
            r#"linktoken_atlas_requests_total{method="DELETE",status="409",error_code="CANNOT_DELETE_ORG_ACTIVE_LIVE_MIGRATION_ATLAS_ORG_LINK"} 1"#,
            r#"linktoken_atlas_requests_total{method="POST",status="none",error_code=""} 1"#,
            r#"linktoken_atlas_requests_total{method="POST",status="502",error_code="other"} 1"#,
            r#"linktoken_atlas_request_duration_seconds_count{method="POST"} 3"#,
            r#"linktoken_atlas_request_duration_seconds_count{method="DELETE"} 1"#,
            "linktoken_tokens_issued_total 1",
            "linktoken_tokens_revoked_total 2",
            "linktoken_leader 1",
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn linktokens_gauge_follows_reason_changes_and_deletions() {
        let m = Metrics::new();
        m.track("ns/a", Some(Reason::Issuing));
        m.track("ns/b", Some(Reason::Issuing));
        m.track("ns/a", Some(Reason::TokenIssued));
        m.track("ns/a", Some(Reason::TokenIssued)); // repeated report: no double count
        m.track("ns/b", Some(Reason::AtlasUnavailable));
        m.track("ns/b", None); // deleted
        m.track("ns/never-seen", None); // deleting an unknown key is harmless
        m.track("ns/c", Some(Reason::OrgConflict));
        m.retain_tracked(|k| k != "ns/c"); // vanished without a delete event
        assert_eq!(m.linktokens_by_reason().get(&Reason::OrgConflict), None);

        let text = m.encode();
        for line in [
            r#"linktoken_linktokens{reason="TokenIssued"} 1"#,
            r#"linktoken_linktokens{reason="Issuing"} 0"#,
            r#"linktoken_linktokens{reason="AtlasUnavailable"} 0"#,
        ] {
            assert!(has_line(&text, line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            m.linktokens_by_reason(),
            BTreeMap::from([(Reason::TokenIssued, 1)])
        );

        m.track_all(&BTreeMap::from([
            ("x/1".to_string(), Reason::OrgConflict),
            ("x/2".to_string(), Reason::OrgConflict),
        ]));
        let text = m.encode();
        assert!(
            has_line(&text, r#"linktoken_linktokens{reason="OrgConflict"} 2"#),
            "{text}"
        );
        assert!(
            has_line(&text, r#"linktoken_linktokens{reason="TokenIssued"} 0"#),
            "{text}"
        );
        // Incremental tracking continues correctly from the snapshot.
        m.track("x/1", None);
        assert!(has_line(
            &m.encode(),
            r#"linktoken_linktokens{reason="OrgConflict"} 1"#
        ));
    }

    #[test]
    fn clones_share_one_registry() {
        let m = Metrics::new();
        m.clone().token_issued();
        assert!(has_line(&m.encode(), "linktoken_tokens_issued_total 1"));
    }

    #[test]
    fn error_codes_are_bounded() {
        assert_eq!(error_code_label(None), "");
        assert_eq!(error_code_label(Some("")), "");
        for known in KNOWN_ERROR_CODES {
            assert_eq!(error_code_label(Some(known)), known);
        }
        for unknown in [
            "rate limited",
            "RATE_LIMITED ",
            "rate_limited",
            "SHAPED_LIKE_A_CODE_BUT_UNKNOWN",
            "OTHER",
            "other",
            "INVALID_",
            &"A".repeat(65),
        ] {
            assert_eq!(error_code_label(Some(unknown)), OTHER, "{unknown:?}");
        }
    }

    #[test]
    fn statuses_and_methods_are_bounded() {
        let all = status_labels();
        for s in 0..=u16::MAX {
            let label = status_label(Some(s));
            assert!(all.contains(&label), "{s} -> {label}");
        }
        assert_eq!(status_label(None), "none");
        assert_eq!(status_label(Some(201)), "201");
        assert_eq!(status_label(Some(418)), "4xx");
        assert_eq!(status_label(Some(599)), "5xx");
        assert_eq!(status_label(Some(302)), "3xx");
        assert_eq!(status_label(Some(99)), "other");
        assert_eq!(status_label(Some(600)), "other");
        assert_eq!(status_labels().len(), KNOWN_STATUSES.len() + 7);
        assert_eq!(method_label("post"), "POST");
        assert_eq!(method_label("PATCH"), "other");
        assert_eq!(method_label("GET\n"), "other");
    }

    #[test]
    fn hostile_answers_add_no_series() {
        let m = Metrics::new();
        for i in 0..500u16 {
            let code = format!("RANDOM_CODE_{i}");
            m.observe_atlas_request("POST", Some(100 + i), Some(&code), Duration::ZERO);
            m.observe_source_request("POST", Some(100 + i), Some(&code));
        }
        let text = m.encode();
        let series = |family: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .count()
        };
        // 100..=599: the known statuses and the five classes, each with `other`.
        let bound = KNOWN_STATUSES.len() + STATUS_CLASSES.len();
        assert_eq!(series("linktoken_atlas_requests_total"), bound, "{text}");
        assert_eq!(series("linktoken_source_requests_total"), bound, "{text}");
        assert!(!text.contains("RANDOM_CODE"), "{text}");
    }

    #[test]
    fn the_operations_page_lists_every_label_value() {
        let doc = include_str!("../../docs/operations.md");
        for v in KNOWN_ERROR_CODES
            .iter()
            .map(|c| c.to_string())
            .chain(status_labels())
            .chain(METHODS.iter().map(|m| m.to_string()))
        {
            assert!(
                doc.contains(&format!("`{v}`")),
                "docs/operations.md lacks `{v}`"
            );
        }
    }
}
