//! Everything TLS-specific the Rampart gateway needs, with no dependency on the gateway:
//!
//! - [`ca`]: the gateway CA (create on first use, load with a permission check, import a
//!   corporate CA or intermediate), described by [`ca::CaInfo`].
//! - [`client_hello`] and [`peek`]: read SNI, ALPN and offered versions from a ClientHello
//!   peeked from a socket, without consuming it.
//! - [`decision`]: decrypt or do-not-decrypt per connection ([`decision::DecryptionDecider`]).
//! - [`leaf`], [`leaf_cache`] and [`server_config`]: mint per-host leaves, cache them with
//!   single-flight, and build the `rustls::ServerConfig` for the client-facing handshake.
//! - [`origin`] and [`origin_failure`]: verify origins (system roots + extra roots), explicit
//!   per-host exceptions, and a classifier turning handshake errors into user-facing reasons.
//! - [`pinned_clients`]: count clients that reject Rampart's certificate; optional temporary bypass.
//! - [`trust`]: the combined trust bundle and the per-tool environment variables.
//! - [`block_page`]: the HTML / plain-text block response.
//! - [`config`]: the `[tls]` configuration section.
//!
//! Binaries and test harnesses must install the aws-lc-rs crypto provider once at start
//! ([`install_crypto_provider`]); this crate builds its configurations with that provider
//! explicitly, so it never depends on the process default.

pub mod block_page;
pub mod ca;
pub mod client_hello;
pub mod config;
pub mod decision;
pub mod error;
pub mod host_pattern;
pub mod leaf;
pub mod leaf_cache;
pub mod origin;
pub mod origin_failure;
pub mod peek;
pub mod pinned_clients;
pub mod server_config;
pub mod trust;

pub use error::TlsError;

use std::sync::Arc;

/// The crypto provider every configuration in this crate is built with.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide rustls provider; harmless when one is installed.
///
/// Feature unification can pull `ring` in next to aws-lc-rs, and rustls then refuses to
/// pick a default on its own, so every binary calls this at start.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
