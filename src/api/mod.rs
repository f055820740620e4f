//! The `LinkToken` API: resource types and the condition reasons of the product contract.
pub mod reason;

pub use reason::Reason;
