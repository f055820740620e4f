//! A test-only fault hook: `LINKTOKEN_TEST_PAUSE=<point>=<duration>` makes the issuing path
//! sleep at one named point, so a reliability test can kill the process inside a precise
//! window of the crash-safe sequence; `LINKTOKEN_TEST_PAUSE=<point>=panic` panics there
//! instead, so a test can show what the process does when its controller dies. Unset (always,
//! in production) it costs one cached lookup.
//!
//! Points: `before-revoke` (marker written, before any DELETE), `before-post` (after the
//! DELETEs), `after-post` (token received, Secret not written), `after-secret` (Secret written,
//! status not).

use std::sync::OnceLock;
use std::time::Duration;

pub const ENV: &str = "LINKTOKEN_TEST_PAUSE";

enum Hook {
    Sleep(Duration),
    Panic,
}

fn configured() -> &'static Option<(String, Hook)> {
    static PAUSE: OnceLock<Option<(String, Hook)>> = OnceLock::new();
    PAUSE.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (point, what) = v.split_once('=')?;
        let hook = match what {
            "panic" => Hook::Panic,
            d => Hook::Sleep(crate::runtime::duration::parse_duration(d).ok()?),
        };
        tracing::warn!(
            point,
            hook = what,
            "{ENV} is set: the issuing path will pause or panic (testing only)"
        );
        Some((point.to_string(), hook))
    })
}

/// Sleeps (or panics) if the hook names this point.
pub async fn point(name: &str) {
    if let Some((p, hook)) = configured()
        && p == name
    {
        match hook {
            Hook::Sleep(d) => {
                tracing::warn!(point = name, "pausing ({ENV})");
                tokio::time::sleep(*d).await;
            }
            Hook::Panic => {
                tracing::warn!(point = name, "panicking ({ENV})");
                panic!("{ENV}: injected panic at {name}");
            }
        }
    }
}
