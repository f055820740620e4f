//! The LinkToken controller.
pub mod backoff;
pub mod conditions;
pub mod decide;
pub mod secret;
