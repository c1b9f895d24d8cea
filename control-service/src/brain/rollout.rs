//! placeholder
pub mod gates;
pub mod sim;
