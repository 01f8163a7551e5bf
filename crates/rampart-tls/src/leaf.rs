//! Minting leaf certificates for intercepted hosts.
//!
//! Every leaf gets its own ECDSA P-256 key and a random 128-bit serial (one key for all
//! hosts would let one leaked leaf key impersonate every site), SAN = the host (an IP SAN
//! for IP targets), 30 days of validity starting one day in the past (clients with a
//! slightly slow clock still accept it), EKU serverAuth, and AKI = the CA's SKI.
use crate::ca::{random_serial, CertificateAuthority};
use crate::TlsError;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Total lifetime of a leaf, backdating included.
pub const LEAF_VALIDITY: Duration = Duration::days(30);
/// How far a leaf's notBefore lies in the past.
pub const LEAF_BACKDATE: Duration = Duration::days(1);
/// Most names copied from an origin certificate when mimicking it.
pub const MAX_MIMIC_NAMES: usize = 100;

/// One subject alternative name of a leaf.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SanName {
    /// A lower-case DNS name, possibly a wildcard (`*.example.com`) when mimicking.
    Dns(String),
    Ip(IpAddr),
}

/// The names a leaf is issued for; the first one also becomes the subject CN.
/// This is the leaf cache key, so it is normalised (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeafNames {
    names: Vec<SanName>,
}

impl LeafNames {
    /// Names for one host from SNI or CONNECT: an IP SAN for an IP literal (IPv6 with or
    /// without brackets), else a DNS SAN.
    pub fn for_host(host: &str) -> Result<Self, TlsError> {
        let trimmed = host.strip_suffix('.').unwrap_or(host);
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(LeafNames {
                names: vec![SanName::Ip(ip)],
            });
        }
        let name = validate_dns_name(host, trimmed, false)?;
        Ok(LeafNames {
            names: vec![SanName::Dns(name)],
        })
    }

    /// Names for a certificate of Rampart's own (the API listener's): each host as in
    /// [`LeafNames::for_host`], duplicates dropped, the first one the subject CN.
    pub fn for_hosts<S: AsRef<str>>(hosts: &[S]) -> Result<Self, TlsError> {
        let mut names: Vec<SanName> = Vec::new();
        for host in hosts {
            for name in LeafNames::for_host(host.as_ref())?.names {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            return Err(TlsError::InvalidHost {
                host: String::new(),
                reason: "no names to issue a certificate for".to_string(),
            });
        }
        Ok(LeafNames { names })
    }

    /// Names copied from the origin's leaf certificate, for clients that sent no SNI:
    /// its DNS and IP SANs (wildcards kept), or its CN when it has no SANs.
    pub fn mimic(origin_leaf_der: &[u8]) -> Result<Self, TlsError> {
        let nothing = |reason: String| TlsError::NothingToMimic { reason };
        let (_, x509) = X509Certificate::from_der(origin_leaf_der)
            .map_err(|e| nothing(format!("cannot parse it: {e}")))?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for general in &san.value.general_names {
                match general {
                    GeneralName::DNSName(dns) => {
                        if let Ok(name) = validate_dns_name(dns, dns, true) {
                            names.push(SanName::Dns(name));
                        }
                    }
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => names.push(SanName::Ip(IpAddr::from([
                            bytes[0], bytes[1], bytes[2], bytes[3],
                        ]))),
                        16 => {
                            let mut octets = [0u8; 16];
                            octets.copy_from_slice(bytes);
                            names.push(SanName::Ip(IpAddr::from(octets)));
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            if let Some(cn) = x509
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
            {
                if let Ok(ip) = cn.parse::<IpAddr>() {
                    names.push(SanName::Ip(ip));
                } else if let Ok(name) = validate_dns_name(cn, cn, true) {
                    names.push(SanName::Dns(name));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        names.truncate(MAX_MIMIC_NAMES);
        if names.is_empty() {
            return Err(nothing(
                "no DNS or IP subject alternative names and no usable common name".to_string(),
            ));
        }
        Ok(LeafNames { names })
    }

    /// The names, first one used as CN.
    pub fn names(&self) -> &[SanName] {
        &self.names
    }
}

fn validate_dns_name(original: &str, name: &str, allow_wildcard: bool) -> Result<String, TlsError> {
    let invalid = |reason: &str| TlsError::InvalidHost {
        host: original.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("empty host name"));
    }
    if name.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    let body = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => rest,
        _ => name,
    };
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("a label is empty or longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "only letters, digits, '-' and '_' may appear in a DNS name (IDNs as xn--)",
            ));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// A freshly minted leaf: chain (leaf, then the CA chain) and its private key.
pub struct MintedLeaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
    signing: Arc<EcdsaKeyPair>,
}

impl MintedLeaf {
    /// The rustls form, ready for a certificate resolver. It signs with the key generated
    /// for this leaf directly, without re-parsing the PKCS#8 (a cache miss is CPU-bound).
    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        Ok(CertifiedKey::new(
            self.chain.clone(),
            Arc::new(LeafSigningKey(self.signing.clone())),
        ))
    }

    /// The chain as PEM (leaf first), for tools such as `openssl s_server`.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| crate::ca::der_to_pem(c))
            .collect()
    }

    /// The leaf key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.key.secret_pkcs8_der());
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }
}

/// The leaf's public key for rcgen (an uncompressed P-256 point).
struct LeafPublicKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for LeafPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// rustls signing with a leaf's ECDSA P-256 key (the only scheme a minted leaf supports).
#[derive(Debug)]
struct LeafSigningKey(Arc<EcdsaKeyPair>);

impl SigningKey for LeafSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(LeafSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct LeafSigner(Arc<EcdsaKeyPair>);

impl Signer for LeafSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.0
            .sign(&SystemRandom::new(), message)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| {
                rustls::Error::General("ECDSA signing with a minted leaf key failed".into())
            })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

impl CertificateAuthority {
    /// Mints a leaf for `names`, signed by this CA; never longer-lived than the CA itself.
    pub fn mint(&self, names: &LeafNames) -> Result<MintedLeaf, TlsError> {
        let generate = |what, source| TlsError::Generate { what, source };
        let key_error = || TlsError::Generate {
            what: "a leaf key",
            source: rcgen::Error::KeyGenerationUnavailable,
        };
        let key =
            EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(|_| key_error())?;
        let pkcs8 = key.to_pkcs8v1().map_err(|_| key_error())?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        match names.names.first() {
            // RFC 5280 upper bound for CN is 64 characters; longer names live only in the SAN.
            Some(SanName::Dns(n)) if n.len() <= 64 => dn.push(DnType::CommonName, n.as_str()),
            Some(SanName::Ip(ip)) => dn.push(DnType::CommonName, ip.to_string()),
            _ => {}
        }
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .names
            .iter()
            .map(|n| match n {
                SanName::Dns(d) => d
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| generate("a leaf DNS name", e)),
                SanName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            })
            .collect::<Result<_, _>>()?;
        // ExplicitNoCa writes basicConstraints CA:FALSE and a subject key identifier.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = (params.not_before + LEAF_VALIDITY).min(self.info().not_after);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&LeafPublicKey(key.public_key().as_ref()), self.issuer())
            .map_err(|e| generate("a leaf certificate", e))?;
        let mut chain = Vec::with_capacity(1 + self.chain().len());
        chain.push(cert.der().clone());
        chain.extend(self.chain().iter().cloned());
        Ok(MintedLeaf {
            chain,
            key: PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec()),
            signing: Arc::new(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaOptions, CaPaths};
    use x509_parser::extensions::ParsedExtension;

    fn ca() -> (tempfile::TempDir, CertificateAuthority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(
            &CaPaths::in_dir(dir.path()),
            &CaOptions::default(),
            false,
        )
        .unwrap();
        (dir, ca)
    }

    #[test]
    fn leaf_has_san_eku_validity_and_matching_aki() {
        let (_dir, ca) = ca();
        let leaf = ca
            .mint(&LeafNames::for_host("WWW.Example.com.").unwrap())
            .unwrap();
        assert_eq!(leaf.chain.len(), 2);
        let (_, x) = X509Certificate::from_der(&leaf.chain[0]).unwrap();
        let (_, ca_x) = X509Certificate::from_der(&leaf.chain[1]).unwrap();
        let sans: Vec<String> = x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(sans, vec!["DNSName(www.example.com)"]);
        assert!(x.extended_key_usage().unwrap().unwrap().value.server_auth);
        assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
        let span = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert!(span <= 30 * 86400, "validity {span}s");
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(x.validity().not_before.timestamp() <= now - 86400 + 5);
        let aki = x
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        let ski = ca_x
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
        assert!(x.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::SubjectKeyIdentifier(_)
        )));
        assert_eq!(x.issuer(), ca_x.subject());
    }

    #[test]
    fn every_leaf_has_its_own_key_and_serial() {
        let (_dir, ca) = ca();
        let names = LeafNames::for_host("same.example").unwrap();
        let a = ca.mint(&names).unwrap();
        let b = ca.mint(&names).unwrap();
        assert_ne!(a.key.secret_pkcs8_der(), b.key.secret_pkcs8_der());
        let (_, xa) = X509Certificate::from_der(&a.chain[0]).unwrap();
        let (_, xb) = X509Certificate::from_der(&b.chain[0]).unwrap();
        assert_ne!(xa.raw_serial(), xb.raw_serial());
        assert_ne!(xa.public_key().raw, xb.public_key().raw);
    }

    #[test]
    fn ip_targets_get_an_ip_san() {
        let (_dir, ca) = ca();
        for host in ["127.0.0.1", "[::1]", "::1"] {
            let leaf = ca.mint(&LeafNames::for_host(host).unwrap()).unwrap();
            let (_, x) = X509Certificate::from_der(&leaf.chain[0]).unwrap();
            let san = x.subject_alternative_name().unwrap().unwrap();
            assert!(
                matches!(san.value.general_names[0], GeneralName::IPAddress(_)),
                "{host}"
            );
        }
    }

    #[test]
    fn mimic_copies_origin_names_including_wildcards_and_ips() {
        let key = rcgen::KeyPair::generate().unwrap();
        let origin = CertificateParams::new(vec![
            "*.origin.example".to_string(),
            "origin.example".to_string(),
            "192.0.2.7".to_string(),
        ])
        .unwrap()
        .self_signed(&key)
        .unwrap();
        let names = LeafNames::mimic(origin.der()).unwrap();
        assert_eq!(
            names.names(),
            &[
                SanName::Dns("*.origin.example".into()),
                SanName::Dns("origin.example".into()),
                SanName::Ip("192.0.2.7".parse().unwrap()),
            ]
        );
        let (_dir, ca) = ca();
        assert!(ca.mint(&names).is_ok());
    }

    #[test]
    fn mimic_of_garbage_says_why() {
        let err = LeafNames::mimic(b"not a certificate").err().unwrap();
        assert!(err.to_string().contains("cannot parse"), "{err}");
    }

    #[test]
    fn hosts_that_cannot_be_names_are_refused() {
        assert!(LeafNames::for_host("").is_err());
        assert!(LeafNames::for_host("a b.example").is_err());
        assert!(LeafNames::for_host("*.example.com").is_err());
        assert!(LeafNames::for_host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn minted_leaf_loads_into_rustls() {
        let (_dir, ca) = ca();
        let leaf = ca
            .mint(&LeafNames::for_host("rustls.example").unwrap())
            .unwrap();
        let ck = leaf.certified_key().unwrap();
        assert_eq!(ck.cert.len(), 2);
        // The signing key and the certificate agree, as rustls checks them.
        let parsed = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(
            &rustls_pki_types::PrivateKeyDer::Pkcs8(leaf.key.clone_key()),
        )
        .unwrap();
        let ck2 = CertifiedKey::new(leaf.chain.clone(), parsed);
        ck2.keys_match().unwrap();
        assert!(ck
            .key
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .is_some());
        assert!(ck
            .key
            .choose_scheme(&[SignatureScheme::RSA_PSS_SHA256])
            .is_none());
        assert!(leaf.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
    }
}
