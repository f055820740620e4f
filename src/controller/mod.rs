//! The LinkToken controller.
pub mod decide;
pub mod secret;
