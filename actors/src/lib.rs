//! placeholder
pub mod ports;
pub mod session_files;
pub mod store;
