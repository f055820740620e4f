//! Structured logging: one line per event on stderr, JSON or text, level from `RUST_LOG`.

use std::io::Write;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{Directive, LevelFilter};

use tracing_subscriber::fmt::MakeWriter;

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

/// Installs the global subscriber (stderr). Call once, early in `main`.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = build_filter(std::env::var("RUST_LOG").ok().as_deref())?;
    tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr))
        .map_err(|_| LoggingError::AlreadyInitialised)
}

/// The subscriber `init` installs, writing to `writer` (tests capture the output).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    match format {
        // Flattened fields make `jq .name` and log pipelines simple; the span list carries the
        // reconcile's object reference from kube-runtime.
        LogFormat::Json => Box::new(
            builder
                .with_writer(writer)
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .finish(),
        ),
        // The text formatter prints messages and field values verbatim, so a newline in, say,
        // an Atlas error detail would split one event over several lines; OneLine escapes them.
        LogFormat::Text => Box::new(
            builder
                .with_writer(OneLine(writer))
                .with_ansi(false)
                .finish(),
        ),
    }
}

/// Wraps a writer so each formatted event (one `write` of a whole line, as tracing-subscriber's
/// fmt layer does) keeps only its final newline; interior `\n`/`\r` become `\\n`/`\\r`.
struct OneLine<W>(W);

impl<'w, W: MakeWriter<'w>> MakeWriter<'w> for OneLine<W> {
    type Writer = OneLineWriter<W::Writer>;
    fn make_writer(&'w self) -> Self::Writer {
        OneLineWriter(self.0.make_writer())
    }
}

struct OneLineWriter<W>(W);

impl<W: Write> Write for OneLineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.split_last() {
            Some((b'\n', body)) => (body, &b"\n"[..]),
            _ => (buf, &b""[..]),
        };
        if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 8);
        for b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                other => out.push(*other),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
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

    /// A MakeWriter collecting everything into one shared buffer.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat) -> String {
        let buf = Buf::default();
        let sub = subscriber(format, build_filter(Some("info")).unwrap(), buf.clone());
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("reconcile", object = "ns/lt");
            let _e = span.enter();
            tracing::info!(result = "ready", "reconciled\nwith a newline");
            tracing::debug!("filtered out");
        });
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_is_one_object_per_line_with_flat_fields() {
        let out = capture(LogFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["result"], "ready");
        assert_eq!(v["message"], "reconciled\nwith a newline");
        assert_eq!(v["spans"][0]["object"], "ns/lt");
    }

    #[test]
    fn text_is_one_line_per_event() {
        let out = capture(LogFormat::Text);
        assert!(out.contains("INFO"), "{out}");
        assert!(out.contains("result=\"ready\""), "{out}");
        assert!(out.contains("object=\"ns/lt\""), "{out}");
        assert!(!out.contains("filtered out"), "{out}");
        assert!(!out.contains('\u{1b}'), "no ANSI colours: {out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("reconciled\\nwith a newline"), "{out}");
    }
}
