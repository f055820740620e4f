//! linktoken-operator: turns `LinkToken` resources into MongoDB Atlas live-migration link tokens.
//!
//! Architecture (one job per module):
//! - [`api`]: the `LinkToken` custom resource (spec, status, CRD schema and CEL rules) and the
//!   condition reasons of the product contract.
//! - [`atlas`]: the Atlas Admin API client for link tokens: Digest and service-account auth,
//!   typed errors and the pure classification of every outcome into a Ready reason. No
//!   Kubernetes types in it.
//! - [`controller`]: the reconciler. `decide` is pure (observed state -> next action); the
//!   rest carries actions out (Atlas calls, the token Secret, status, events).
//! - [`source`]: the Cloud Manager / Ops Manager client that hands the token over (the
//!   link), on the Atlas client's Digest and transport machinery.
//! - [`runtime`]: the operator process: flags, logging, probes and metrics server, leader election.
//!
//! This crate is the product only. What tests it lives beside it under `crates/` and is never
//! shipped: `atlas-sim` (the Atlas simulator), `testkit` (the real control plane and every
//! shared test helper) and `bench`; see docs/architecture.md.
pub mod api;
pub mod atlas;
pub mod controller;
pub mod runtime;
pub mod source;
