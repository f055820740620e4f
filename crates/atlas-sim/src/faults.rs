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
    /// Only link-token calls for this org.
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
            FaultTarget::Any => true,
            FaultTarget::LinkTokens => call.kind == CallKind::LinkTokens,
            FaultTarget::Oauth => {
                matches!(call.kind, CallKind::OauthToken | CallKind::OauthRevoke)
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
    Other,
}

impl CallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::LinkTokens => "linkTokens",
            CallKind::OauthToken => "oauthToken",
            CallKind::OauthRevoke => "oauthRevoke",
            CallKind::Other => "other",
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
}

pub struct CallInfo<'a> {
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
    }
}
