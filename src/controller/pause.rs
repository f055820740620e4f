//! A test-only fault hook: `LINKTOKEN_TEST_PAUSE=<point>=<duration>` makes the issuing path
//! sleep at one named point, so a reliability test can kill the process inside a precise
//! window of the crash-safe sequence; `LINKTOKEN_TEST_PAUSE=<point>=panic` panics there
//! instead, so a test can show what the process does when its controller dies. It exists only
//! when the crate is built with the `fault-injection` feature (the tests do); in a default
//! build, and so in the release binary and the image, `point` is an empty function and the
//! variable is never read.
//!
//! Points: `before-revoke` (marker written, before any DELETE), `before-post` (after the
//! DELETEs), `after-post` (token received, Secret not written), `after-secret` (Secret written,
//! status not); for the link at the source (`controller::link`): `before-link-post` (link
//! marker written, nothing posted), `after-link-post` (posted, answer not recorded) and
//! `before-source-unlink` (spec.source moved or removed: the link status records is about to
//! be DELETEd there, before the fresh read that fences it).

#[cfg(feature = "fault-injection")]
mod hook {
    use std::sync::OnceLock;
    use std::time::Duration;

    const ENV: &str = "LINKTOKEN_TEST_PAUSE";

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
}

#[cfg(feature = "fault-injection")]
pub use hook::point;

/// Without the `fault-injection` feature there is no hook: nothing is read, nothing sleeps.
#[cfg(not(feature = "fault-injection"))]
pub async fn point(_name: &str) {}
