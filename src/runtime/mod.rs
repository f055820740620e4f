//! The operator process: flags, logging, metrics, the probe/metrics HTTP server, Lease leader
//! election and graceful shutdown. `src/main.rs` wires these around the controller.

pub mod duration;
pub mod flags;
pub mod leader;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod supervise;

pub use flags::{BindAddress, Flags, LogFormat, WatchNamespaces};
pub use leader::{LeaderConfig, LeaderElector, LeaderError};
pub use metrics::Metrics;
pub use server::{Readiness, Servers, serve};
pub use shutdown::{Shutdown, ShutdownError, drain};
pub use supervise::{Ended, supervise};
