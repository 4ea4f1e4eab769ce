//! Channel adapters of the host application.

pub mod cli;
