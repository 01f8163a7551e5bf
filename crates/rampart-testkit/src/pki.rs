//! Throwaway PKIs for test origins: a CA and a leaf certificate made with rcgen,
//! written as PEM files the origin and the client read.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// What the origin's certificate is like.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CertKind {
    Valid,
    Expired,
    SelfSigned,
}

/// PEM files of a test CA and a leaf for some names (plus 127.0.0.1).
pub struct TestPki {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestPki {
    /// Writes `<tag>-ca.pem`, `<tag>-cert.pem`, `<tag>-key.pem` into `dir`; the
    /// CA is named `Tools Test Origin CA <tag>`.
    pub fn new(dir: &Path, tag: &str, names: &[&str], kind: CertKind) -> TestPki {
        TestPki::with_ca_name(
            dir,
            tag,
            &format!("Tools Test Origin CA {tag}"),
            names,
            kind,
        )
    }

    /// As [`TestPki::new`], with the CA's common name chosen by the test (one a
    /// client's output can be checked for).
    pub fn with_ca_name(
        dir: &Path,
        tag: &str,
        ca_name: &str,
        names: &[&str],
        kind: CertKind,
    ) -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        if kind == CertKind::Expired {
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        } else {
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(2);
        }
        let cert = if kind == CertKind::SelfSigned {
            params.self_signed(&key).expect("self-signed leaf")
        } else {
            params.signed_by(&key, &issuer).expect("leaf")
        };
        let pki = TestPki {
            ca_pem: dir.join(format!("{tag}-ca.pem")),
            cert_pem: dir.join(format!("{tag}-cert.pem")),
            key_pem: dir.join(format!("{tag}-key.pem")),
        };
        std::fs::write(&pki.ca_pem, ca_cert.pem()).expect("write CA");
        std::fs::write(&pki.cert_pem, cert.pem()).expect("write cert");
        std::fs::write(&pki.key_pem, key.serialize_pem()).expect("write key");
        pki
    }
}
