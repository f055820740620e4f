//! The operator's test harness, never shipped: everything a test or the benchmark needs to
//! drive the real operator from the outside.
//!
//! - [`controlplane`]: a real local Kubernetes control plane (etcd, kube-apiserver,
//!   kube-controller-manager) built from pinned Go modules; also the `controlplane` binary.
//! - [`cluster`]: one control plane per test process, a namespace per test, and the polling
//!   helpers (`eventually`, `require_cluster!`).
//! - [`operator`]: the one spawner of the operator binary (dies with its parent), and the
//!   readiness rule tests and the benchmark share.
//! - [`node`]: a real node (containerd, kubelet, kube-scheduler, kube-proxy) for a control
//!   plane started to serve one; Pods run, traffic stays on the machine.
//! - [`e2e`]: end-to-end fixtures: a namespace, atlas-sim in-process and the operator.
//! - [`kstatus`]: the kstatus library's verdict on a live LinkToken (what Flux and kpt see).
//!
//! Depends on the operator crate (its API types and CRD) and on atlas-sim; the operator
//! depends on it only as a dev-dependency.
pub mod cluster;
pub mod controlplane;
pub mod e2e;
pub mod kstatus;
pub mod node;
pub mod operator;

pub use cluster::{
    TestCluster, cluster, eventually, in_ci, install_crd, owned_control_plane, unique,
};
