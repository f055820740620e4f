//! A test-only fault hook: `LINKTOKEN_TEST_PAUSE=<point>=<duration>` makes the issuing path
//! sleep at one named point, so a reliability test can kill the process inside a precise
//! window of the crash-safe sequence. It exists only when the crate is built with the
//! `fault-injection` feature (the tests do); in a default build, and so in the release binary
//! and the image, `point` is an empty function and the variable is never read.
//!
//! Points: `before-revoke` (marker written, before any DELETE), `before-post` (after the
//! DELETEs), `after-post` (token received, Secret not written), `after-secret` (Secret written,
//! status not).

#[cfg(feature = "fault-injection")]
use std::sync::OnceLock;
#[cfg(feature = "fault-injection")]
use std::time::Duration;

#[cfg(feature = "fault-injection")]
const ENV: &str = "LINKTOKEN_TEST_PAUSE";

#[cfg(feature = "fault-injection")]
fn configured() -> &'static Option<(String, Duration)> {
    static PAUSE: OnceLock<Option<(String, Duration)>> = OnceLock::new();
    PAUSE.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (point, dur) = v.split_once('=')?;
        let d = crate::runtime::duration::parse_duration(dur).ok()?;
        tracing::warn!(point, pause = ?d, "{ENV} is set: the issuing path will pause (testing only)");
        Some((point.to_string(), d))
    })
}

/// Sleeps if the hook names this point.
#[cfg(feature = "fault-injection")]
pub async fn point(name: &str) {
    if let Some((p, d)) = configured()
        && p == name
    {
        tracing::warn!(point = name, "pausing ({ENV})");
        tokio::time::sleep(*d).await;
    }
}

/// Without the `fault-injection` feature there is no hook: nothing is read, nothing sleeps.
#[cfg(not(feature = "fault-injection"))]
pub async fn point(_name: &str) {}
