//! The crate's error type: one variant per problem a user would recognise.
use std::path::PathBuf;
use std::sync::Arc;

/// Errors from CA management, minting, origin set-up and trust bundles.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The CA key file can be read by other users: the gateway refuses to use it.
    #[error(
        "{}: CA private key is accessible by group or others (mode {mode:04o}); \
         fix it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },

    /// No CA exists where one was expected.
    #[error(
        "no CA in {}: expected {} and {}; create one with `rampart ca init --data-dir {}` \
         (or start `rampart server`, which creates it)",
        dir.display(),
        cert.display(),
        key.display(),
        dir.display()
    )]
    CaMissing {
        dir: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },

    /// Only one of the two CA files exists.
    #[error(
        "{} exists but {} does not: restore the missing file, or remove both to create a new CA",
        present.display(),
        missing.display()
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },

    /// `ca init` would overwrite an existing CA.
    #[error(
        "a CA already exists at {}; inspect it with `rampart ca show`, or pass --force to \
         replace it (every client must then trust the new CA)",
        cert.display()
    )]
    CaExists { cert: PathBuf },

    /// A PEM file holds no certificate.
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found", path.display())]
    NoCertificate { path: PathBuf },

    /// A PEM file holds no private key.
    #[error(
        "{}: no PEM private key found (expected PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },

    /// A file is not valid PEM / DER.
    #[error("{}: {reason}", path.display())]
    BadPem { path: PathBuf, reason: String },

    /// A certificate could not be parsed or is unusable for its role.
    #[error("{}: {reason}", path.display())]
    InvalidCertificate { path: PathBuf, reason: String },

    /// The private key does not belong to the certificate.
    #[error(
        "{} does not match the certificate in {}: the key's public half differs from the \
         certificate's; pass the key that was used to request this certificate",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    /// A `--subject` value could not be parsed.
    #[error("invalid subject {input:?}: {reason} (example: \"CN=Example Corp Gateway CA, O=Example Corp\")")]
    InvalidSubject { input: String, reason: String },

    /// A host name or IP address cannot go into a certificate.
    #[error("cannot issue a certificate for {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },

    /// The origin certificate offered for mimicking has no usable names.
    #[error("origin certificate has no DNS or IP names to mimic: {reason}")]
    NothingToMimic { reason: String },

    /// Certificate generation or signing failed.
    #[error("could not generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// rustls refused a key, certificate or configuration.
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },

    /// A host pattern in the configuration is malformed.
    #[error("{field}: invalid host pattern {pattern:?}: {reason}")]
    InvalidPattern {
        field: &'static str,
        pattern: String,
        reason: String,
    },

    /// No trust anchors at all: origins cannot be verified.
    #[error(
        "no trusted root certificates: the system store is empty or unreadable and no \
         `tls.extra_roots` are configured; install the `ca-certificates` package or add roots"
    )]
    NoRoots,

    /// A minting error shared by every waiter of one single-flight cache load.
    #[error(transparent)]
    Shared(Arc<TlsError>),
}

impl TlsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TlsError::Io {
            path: path.into(),
            source,
        }
    }
}
