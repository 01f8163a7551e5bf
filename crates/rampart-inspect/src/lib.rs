//! Rampart content inspection: the scanner the gateway feeds with response
//! (download) and request (upload) bodies. See DESIGN.md §6a.
//!
//! - [`file_type`]: what a body is, by magic bytes.

pub mod file_type;

pub use file_type::{sniff, FileType};
