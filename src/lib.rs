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
//! - [`runtime`]: the operator process: flags, logging, probes and metrics server, leader election.
//! - [`sim`]: `atlas-sim`, the Atlas simulator used by tests, benchmarks and the local demo.
//! - [`controlplane`]: a real local Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager) for tests, scripts and people.
pub mod api;
pub mod atlas;
pub mod controller;
pub mod controlplane;
pub mod runtime;
pub mod sim;
