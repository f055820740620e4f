//! Building Atlas responses: ApiError bodies, the versioned media type, and the `envelope` /
//! `pretty` query flags.

use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The one resource version of the link-token endpoints.
pub const VERSIONED_JSON: &str = "application/vnd.atlas.2023-01-01+json;charset=utf-8";
/// Error bodies are plain JSON, as recorded from the live service.
pub const PLAIN_JSON: &str = "application/json";

/// Response extension carrying the errorCode (or OAuth `error`) for the per-call log line and
/// counters; never a secret.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

/// Response extension: this call was answered by an injected fault.
#[derive(Debug, Clone, Copy)]
pub struct FaultApplied;

/// Response extension: the connection is being dropped; nothing will reach the client.
#[derive(Debug, Clone, Copy)]
pub struct Dropped;

/// `envelope` and `pretty` query flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Format {
    pub envelope: bool,
    pub pretty: bool,
}

/// An Atlas reply before the format flags are applied.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Value>,
    pub error_code: Option<String>,
    /// Boxed: keeps `Result<_, Reply>` small on the happy path.
    pub headers: Box<HeaderMap>,
}

impl Reply {
    pub fn success(status: StatusCode, body: Option<Value>) -> Self {
        Self {
            status,
            body,
            error_code: None,
            headers: Box::default(),
        }
    }

    /// An ApiError body: `{error, errorCode, detail, reason}`; add `parameters` and
    /// `badRequestDetail` with the builder methods.
    pub fn error(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        let mut m = Map::new();
        m.insert("error".into(), json!(status.as_u16()));
        m.insert("errorCode".into(), json!(code));
        m.insert("detail".into(), json!(detail.into()));
        m.insert(
            "reason".into(),
            json!(status.canonical_reason().unwrap_or("Error")),
        );
        Self {
            status,
            body: Some(Value::Object(m)),
            error_code: Some(code.to_owned()),
            headers: Box::default(),
        }
    }

    /// Sets `parameters` (use `Value::Null` for the explicit `null` Atlas sometimes sends).
    pub fn parameters(mut self, parameters: Value) -> Self {
        if let Some(Value::Object(m)) = &mut self.body {
            m.insert("parameters".into(), parameters);
        }
        self
    }

    /// Sets `badRequestDetail.fields` from `(field, description)` pairs.
    pub fn bad_fields(mut self, fields: &[(String, String)]) -> Self {
        if let Some(Value::Object(m)) = &mut self.body {
            let fields: Vec<Value> = fields
                .iter()
                .map(|(f, d)| json!({"field": f, "description": d}))
                .collect();
            m.insert("badRequestDetail".into(), json!({ "fields": fields }));
        }
        self
    }

    pub fn header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn is_error(&self) -> bool {
        self.error_code.is_some()
    }

    /// Applies `envelope` (HTTP 200, `{"status", "content"}`) and `pretty`.
    pub fn render(self, format: Format) -> Response {
        self.render_as(format, VERSIONED_JSON)
    }

    /// Like [`Reply::render`], with `success_type` as the Content-Type of success answers
    /// (the unversioned Cloud Manager / Ops Manager API answers plain JSON).
    pub fn render_as(self, format: Format, success_type: &'static str) -> Response {
        let content_type = if self.is_error() {
            PLAIN_JSON
        } else {
            success_type
        };
        let (status, body) = if format.envelope {
            let content = self.body.unwrap_or(Value::Null);
            (
                StatusCode::OK,
                Some(json!({"status": self.status.as_u16(), "content": content})),
            )
        } else {
            (self.status, self.body)
        };
        let text = body.map(|b| {
            if format.pretty {
                serde_json::to_string_pretty(&b).unwrap_or_default()
            } else {
                b.to_string()
            }
        });
        let mut response = match text {
            Some(t) => (status, t).into_response(),
            None => status.into_response(),
        };
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(code) = &self.error_code {
            if let Ok(v) = HeaderValue::from_str(code) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static("x-error-code"), v);
            }
            response.extensions_mut().insert(ErrorCode(code.clone()));
        }
        response.headers_mut().extend(*self.headers);
        response
    }
}
