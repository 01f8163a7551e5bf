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
pub mod origin_sessions;
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

/// The provider for both legs of an intercepted connection: the default one with
/// AES-128-GCM/SHA-256 suites ahead of AES-256-GCM/SHA-384. Both are strong; the SHA-256
/// key schedule runs on the CPU's SHA extensions where SHA-384 does not, and AES-128 has
/// fewer rounds per byte relayed. A new intercepted connection runs two handshakes, so
/// this shows in its CPU cost (about 10 % of it with SHA-384).
pub fn intercept_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // A stable sort: TLS 1.3 suites stay ahead of TLS 1.2 ones, and the default order
    // holds within each rank.
    provider
        .cipher_suites
        .sort_by_key(|suite| (suite.tls13().is_none(), suite_rank(suite.suite())));
    Arc::new(provider)
}

/// 0 for AES-128-GCM suites, 1 for everything else (AES-256-GCM, ChaCha20-Poly1305).
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        _ => 1,
    }
}

/// Whether a client lists ChaCha20-Poly1305 before any AES-GCM suite: clients without
/// AES hardware do, and the client-facing side then keeps the client's order.
pub fn prefers_chacha(offered: &[rustls::CipherSuite]) -> bool {
    use rustls::CipherSuite as S;
    offered
        .iter()
        .find_map(|suite| match *suite {
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(true),
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// Installs aws-lc-rs as the process-wide rustls provider; harmless when one is installed.
///
/// Feature unification can pull `ring` in next to aws-lc-rs, and rustls then refuses to
/// pick a default on its own, so every binary calls this at start.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as S;

    #[test]
    fn intercept_provider_puts_aes_128_first_and_keeps_every_default_suite() {
        let provider = intercept_provider();
        let suites: Vec<S> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], S::TLS13_AES_128_GCM_SHA256);
        let default = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(suites.len(), default.cipher_suites.len());
        for suite in &default.cipher_suites {
            assert!(suites.contains(&suite.suite()));
        }
    }

    #[test]
    fn chacha_preference_is_the_first_aead_the_client_lists() {
        assert!(prefers_chacha(&[
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(!prefers_chacha(&[
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        assert!(!prefers_chacha(&[]));
    }
}
