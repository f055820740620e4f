//! Structured logging: one line per event on stderr, JSON or text, level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Directive, LevelFilter};

use super::flags::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid RUST_LOG {value:?}: {source}")]
    InvalidFilter {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadyInitialised,
}

/// Builds the filter from a `RUST_LOG`-style spec; unset or blank means `info`.
/// Invalid specs are an error rather than silently ignored, so a typo does not hide logs.
pub fn build_filter(spec: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    match spec {
        None => Ok(EnvFilter::default().add_directive(Directive::from(LevelFilter::INFO))),
        Some(s) => EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse(s)
            .map_err(|source| LoggingError::InvalidFilter {
                value: s.to_string(),
                source,
            }),
    }
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = build_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        // Flattened fields make `jq .linktoken` and log pipelines simple; the span list carries
        // the reconcile's object reference from kube-runtime.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_is_info() {
        let f = build_filter(None).unwrap();
        assert_eq!(f.to_string(), "info");
        let f = build_filter(Some("  ")).unwrap();
        assert_eq!(f.to_string(), "info");
    }

    #[test]
    fn accepts_directives_and_rejects_garbage() {
        let f = build_filter(Some("linktoken_operator=debug,kube=warn")).unwrap();
        let s = f.to_string();
        assert!(s.contains("linktoken_operator=debug"), "{s}");
        let e = build_filter(Some("linktoken_operator=loud")).unwrap_err();
        assert!(e.to_string().contains("invalid RUST_LOG"), "{e}");
    }
}
