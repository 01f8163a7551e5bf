//! Client certificate verification of the tunnel listener: the device CA's chain
//! check, then the device's admission, inside the TLS handshake.
//!
//! Why inside: a refused device then gets a `certificate_revoked` alert, so the agent
//! logs that it was revoked instead of a bare "connection closed" it cannot tell from
//! a network fault; and a revoked device never gets as far as a TLS session.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, SignatureScheme};

use super::{DeviceAdmission, DeviceIdentity};

/// The device CA's verifier, followed by [`DeviceAdmission::admit`].
pub(super) struct AdmittingVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    admission: Arc<dyn DeviceAdmission>,
}

impl AdmittingVerifier {
    pub(super) fn new(
        chain: Arc<dyn ClientCertVerifier>,
        admission: Arc<dyn DeviceAdmission>,
    ) -> Self {
        AdmittingVerifier { chain, admission }
    }
}

impl std::fmt::Debug for AdmittingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmittingVerifier")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for AdmittingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        // A certificate of the device CA without a device identity is refused after
        // the handshake, where the connection logs why; only the admission is here.
        if let Ok(identity) = DeviceIdentity::from_der(end_entity.as_ref()) {
            if !self.admission.admit(&identity.device) {
                tracing::warn!(device = %identity.device, "agent tunnel refused: device revoked");
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
