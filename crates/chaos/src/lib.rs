//! Chaos for the operator: seeded random fault schedules against the real operator (two
//! replicas with leader election), the real control plane and atlas-sim, with an invariant
//! checker sampling continuously and at quiescence. See docs/chaos.md.
//!
//! - [`schedule`]: the pure, seeded schedule generator.
//! - [`check`]: the invariants as pure functions of what was observed.
//! - [`driver`]: the processes, the actions, the sampling and the report of a violation.
pub mod check;
pub mod driver;
pub mod schedule;

pub use driver::{Config, DriverError, Outcome, Plane, run};
