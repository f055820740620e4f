//! Fault injection: canned statuses, latency, dropped connections and non-JSON bodies.
//!
//! A fault is consumed only by requests that carry an `Authorization` header. Digest clients
//! first send an unauthenticated probe to get a challenge; skipping those makes "the next N
//! calls" mean the next N real attempts for both Digest and Bearer clients.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    /// Answer `status` with `body` (JSON value, or a string sent as text/plain).
    Status,
    /// Only wait `latencyMs`, then handle the call normally.
    Latency,
    /// Like `Latency`, but the call is handled to the end even when the caller hangs up
    /// meanwhile, as a server that received a request acts on it: a late-acting request.
    Detached,
    /// Close the connection without any response.
    Drop,
    /// Answer `status` (default 502) with an HTML body, as a proxy or gateway would.
    Garbage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultTarget {
    /// POST/DELETE .../liveMigrations/linkTokens
    #[default]
    LinkTokens,
    /// /api/oauth/token and /api/oauth/revoke
    Oauth,
    /// Every call on the Atlas port.
    Any,
    /// Every call on the source (Cloud Manager / Ops Manager) port.
    Source,
    /// /api/oauth/token and /api/oauth/revoke on the source port.
    SourceOauth,
}

/// What `POST /faults` accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    pub kind: FaultKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Extra response headers, e.g. `{"Retry-After": "3"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Delay before acting (for every kind).
    #[serde(default)]
    pub latency_ms: u64,
    /// Number of matching calls it applies to; absent = until `DELETE /faults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Only calls with this HTTP method (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Only calls for this org (link-token calls on the Atlas port, migrationLink calls on
    /// the source port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default)]
    pub target: FaultTarget,
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status
            && !(200..=599).contains(&s)
        {
            return Err(format!("status {s} is not between 200 and 599"));
        }
        if self.kind == FaultKind::Status && self.status.is_none() {
            return Err("kind \"status\" needs a status".into());
        }
        if self.count == Some(0) {
            return Err("count must be positive (omit it for an unlimited fault)".into());
        }
        for (k, v) in &self.headers {
            if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || axum::http::HeaderValue::from_str(v).is_err()
            {
                return Err(format!("invalid header {k}"));
            }
        }
        Ok(())
    }

    fn matches(&self, call: &CallInfo<'_>) -> bool {
        let target_ok = match self.target {
            FaultTarget::Any => call.port == Port::Atlas,
            FaultTarget::LinkTokens => call.kind == CallKind::LinkTokens,
            FaultTarget::Oauth => {
                matches!(call.kind, CallKind::OauthToken | CallKind::OauthRevoke)
            }
            FaultTarget::Source => call.port == Port::Source,
            FaultTarget::SourceOauth => {
                matches!(
                    call.kind,
                    CallKind::SourceOauthToken | CallKind::SourceOauthRevoke
                )
            }
        };
        target_ok
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(call.method))
            && self
                .org_id
                .as_deref()
                .is_none_or(|o| call.org_id == Some(o))
    }
}

/// The kind of endpoint a call hit, for counters, logs and fault matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CallKind {
    LinkTokens,
    OauthToken,
    OauthRevoke,
    /// POST/DELETE /api/public/v1.0/orgs/{orgId}/liveExport/migrationLink (source port).
    SourceLink,
    /// GET /api/public/v1.0/orgs/{orgId}/liveExport/migrationLink/status (source port).
    SourceLinkStatus,
    /// POST /api/oauth/token on the source port.
    SourceOauthToken,
    /// POST /api/oauth/revoke on the source port.
    SourceOauthRevoke,
    /// Any other path on the source port.
    SourceOther,
    /// Any other path on the Atlas port.
    Other,
}

/// Which listening port a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Port {
    Atlas,
    Source,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::LinkTokens => "linkTokens",
            CallKind::OauthToken => "oauthToken",
            CallKind::OauthRevoke => "oauthRevoke",
            CallKind::SourceLink => "sourceLink",
            CallKind::SourceLinkStatus => "sourceLinkStatus",
            CallKind::SourceOauthToken => "sourceOauthToken",
            CallKind::SourceOauthRevoke => "sourceOauthRevoke",
            CallKind::SourceOther => "sourceOther",
            CallKind::Other => "other",
        }
    }

    /// The port this kind of call arrives on.
    pub fn port(self) -> Port {
        match self {
            CallKind::SourceLink
            | CallKind::SourceLinkStatus
            | CallKind::SourceOauthToken
            | CallKind::SourceOauthRevoke
            | CallKind::SourceOther => Port::Source,
            CallKind::LinkTokens
            | CallKind::OauthToken
            | CallKind::OauthRevoke
            | CallKind::Other => Port::Atlas,
        }
    }

    /// Classifies a path; for link-token paths also returns the org id segment.
    pub fn classify(path: &str) -> (CallKind, Option<&str>) {
        if path == "/api/oauth/token" {
            return (CallKind::OauthToken, None);
        }
        if path == "/api/oauth/revoke" {
            return (CallKind::OauthRevoke, None);
        }
        if let Some(rest) = path.strip_prefix("/api/atlas/v2/orgs/")
            && let Some(org) = rest.strip_suffix("/liveMigrations/linkTokens")
            && !org.contains('/')
        {
            return (CallKind::LinkTokens, Some(org));
        }
        (CallKind::Other, None)
    }

    /// Classifies a path of the source port; for migrationLink paths also returns the org id.
    pub fn classify_source(path: &str) -> (CallKind, Option<&str>) {
        match path {
            "/api/oauth/token" => return (CallKind::SourceOauthToken, None),
            "/api/oauth/revoke" => return (CallKind::SourceOauthRevoke, None),
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/api/public/v1.0/orgs/") else {
            return (CallKind::SourceOther, None);
        };
        let Some((org, tail)) = rest.split_once('/') else {
            return (CallKind::SourceOther, None);
        };
        match tail {
            "liveExport/migrationLink" => (CallKind::SourceLink, Some(org)),
            "liveExport/migrationLink/status" => (CallKind::SourceLinkStatus, Some(org)),
            _ => (CallKind::SourceOther, None),
        }
    }
}

pub struct CallInfo<'a> {
    pub port: Port,
    pub method: &'a str,
    pub kind: CallKind,
    pub org_id: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveFault {
    pub id: u64,
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Calls still to be answered by this fault; absent = unlimited.
    pub remaining: Option<u64>,
}

#[derive(Debug, Default)]
pub struct FaultQueue {
    next_id: u64,
    faults: Vec<ActiveFault>,
}

impl FaultQueue {
    pub fn add(&mut self, spec: FaultSpec) -> u64 {
        self.next_id += 1;
        let remaining = spec.count;
        self.faults.push(ActiveFault {
            id: self.next_id,
            spec,
            remaining,
        });
        self.next_id
    }

    pub fn clear(&mut self) {
        self.faults.clear();
    }

    pub fn list(&self) -> Vec<ActiveFault> {
        self.faults.clone()
    }

    /// Consumes one use of the first (oldest) fault matching `call`.
    pub fn take(&mut self, call: &CallInfo<'_>) -> Option<FaultSpec> {
        let idx = self.faults.iter().position(|f| f.spec.matches(call))?;
        let fault = &mut self.faults[idx];
        let spec = fault.spec.clone();
        if let Some(r) = &mut fault.remaining {
            *r = r.saturating_sub(1);
            if *r == 0 {
                self.faults.remove(idx);
            }
        }
        Some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(count: Option<u64>, method: Option<&str>) -> FaultSpec {
        FaultSpec {
            kind: FaultKind::Status,
            status: Some(503),
            body: None,
            headers: BTreeMap::new(),
            latency_ms: 0,
            count,
            method: method.map(str::to_owned),
            org_id: None,
            target: FaultTarget::LinkTokens,
        }
    }

    #[test]
    fn counted_fault_is_used_up_and_filters_apply() {
        let mut q = FaultQueue::default();
        q.add(spec(Some(2), Some("post")));
        let post = CallInfo {
            port: Port::Atlas,
            method: "POST",
            kind: CallKind::LinkTokens,
            org_id: Some("a"),
        };
        let delete = CallInfo {
            method: "DELETE",
            ..post
        };
        assert!(q.take(&delete).is_none());
        assert!(q.take(&post).is_some());
        assert!(q.take(&post).is_some());
        assert!(q.take(&post).is_none());
    }

    #[test]
    fn classify_paths() {
        assert_eq!(
            CallKind::classify("/api/atlas/v2/orgs/abc/liveMigrations/linkTokens"),
            (CallKind::LinkTokens, Some("abc"))
        );
        assert_eq!(
            CallKind::classify("/api/oauth/token"),
            (CallKind::OauthToken, None)
        );
        assert_eq!(CallKind::classify("/x"), (CallKind::Other, None));
        assert_eq!(
            CallKind::classify_source("/api/public/v1.0/orgs/abc/liveExport/migrationLink"),
            (CallKind::SourceLink, Some("abc"))
        );
        assert_eq!(
            CallKind::classify_source("/api/public/v1.0/orgs/abc/liveExport/migrationLink/status"),
            (CallKind::SourceLinkStatus, Some("abc"))
        );
        assert_eq!(
            CallKind::classify_source("/api/public/v1.0/orgs/abc/other"),
            (CallKind::SourceOther, None)
        );
        assert_eq!(CallKind::SourceOther.port(), Port::Source);
        assert_eq!(
            CallKind::classify_source("/api/oauth/token"),
            (CallKind::SourceOauthToken, None)
        );
        assert_eq!(CallKind::SourceOauthToken.port(), Port::Source);
        assert_eq!(CallKind::Other.port(), Port::Atlas);
    }

    #[test]
    fn source_target_matches_only_the_source_port() {
        let mut q = FaultQueue::default();
        let mut s = spec(None, None);
        s.target = FaultTarget::Source;
        q.add(s);
        let atlas = CallInfo {
            port: Port::Atlas,
            method: "POST",
            kind: CallKind::LinkTokens,
            org_id: Some("a"),
        };
        assert!(q.take(&atlas).is_none());
        let source = CallInfo {
            port: Port::Source,
            kind: CallKind::SourceLink,
            ..atlas
        };
        assert!(q.take(&source).is_some());
        // `any` keeps meaning every Atlas-port call.
        q.clear();
        let mut s = spec(None, None);
        s.target = FaultTarget::Any;
        q.add(s);
        let source = CallInfo {
            port: Port::Source,
            method: "GET",
            kind: CallKind::SourceLinkStatus,
            org_id: Some("a"),
        };
        assert!(q.take(&source).is_none());
    }
}
