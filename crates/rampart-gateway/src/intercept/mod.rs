//! TLS interception of CONNECT tunnels: after the 200, peek the client's
//! ClientHello (without consuming it), decide decrypt or do-not-decrypt, and
//! either hand the tunnel back to the splice or terminate TLS on both sides
//! and serve the decrypted requests one by one ([`session`]), so the policy's
//! request stage and the access log see every request.
//!
//! The order matters: the origin is connected first, because its ALPN choice
//! (and, for clients without SNI, its certificate's names) shapes the
//! certificate and protocol Rampart offers the client.

mod session;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_policy::{DecryptionAction, Identity};
use rampart_tls::ca::CertificateAuthority;
use rampart_tls::client_hello::{version_name, ClientHello};
use rampart_tls::config::TlsConfig;
use rampart_tls::decision::{DecryptionDecider, HostListDecider};
use rampart_tls::leaf::LeafNames;
use rampart_tls::leaf_cache::LeafCache;
use rampart_tls::origin::{server_name, OriginTls};
use rampart_tls::origin_failure::OriginTlsFailure;
use rampart_tls::peek::peek_client_hello;
use rampart_tls::pinned_clients::{ClientRejection, PinnedClientTracker};
use rampart_tls::server_config::InterceptConfigs;
use rampart_tls::TlsError;
use tokio::net::TcpStream;

use crate::access_log::{AccessLog, TlsRecord};
use crate::metrics::Metrics;
use crate::proxy::body::FlowLog;
use crate::state::GatewayState;

/// Everything interception needs that lives as long as one configuration generation.
pub struct Interception {
    ca: Arc<CertificateAuthority>,
    configs: InterceptConfigs,
    origin: OriginTls,
    decider: HostListDecider,
    pinned: Arc<PinnedClientTracker>,
    hello_timeout: Duration,
}

impl Interception {
    /// Loads the CA from the data dir (creating it on first start) with the
    /// library's permission check: a key readable by others is an error, so
    /// the gateway refuses to start.
    pub fn new(tls: &TlsConfig, data_dir: &Path) -> Result<Self, TlsError> {
        rampart_tls::install_crypto_provider();
        tls.validate()?;
        let (ca, created) =
            CertificateAuthority::load_or_create(&tls.ca_paths(data_dir), &tls.ca_options())?;
        if created {
            tracing::info!(cert = %ca.paths().cert.display(), "created the gateway CA");
        }
        let ca = Arc::new(ca);
        let leaves = Arc::new(LeafCache::new(ca.clone(), tls.leaf_cache_size));
        let configs = InterceptConfigs::new(leaves, tls.leaf_cache_size)?;
        let origin = OriginTls::new(&tls.origin_settings())?;
        let (pinned, decider) = tls.decider()?;
        Ok(Interception {
            ca,
            configs,
            origin,
            decider,
            pinned,
            hello_timeout: tls.client_hello_timeout,
        })
    }

    /// The CA leaves are signed with.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }
}

/// One CONNECT tunnel that may be intercepted: what the connection stage knew.
pub struct Tunnel {
    pub state: Arc<GatewayState>,
    pub interception: Arc<Interception>,
    pub identity: Identity,
    pub client: SocketAddr,
    pub host: String,
    pub port: u16,
    /// The policy's decryption decision when a rule (not the stage default) decided:
    /// the action and the rule's name.
    pub policy_decision: Option<(DecryptionAction, String)>,
    pub access_log: AccessLog,
    pub metrics: Arc<Metrics>,
    pub events: Option<rampart_events::EventSender>,
    /// Proceed links and allowances of `user-alert` rules (shared with plain HTTP).
    pub coaching: Arc<crate::coaching::Coaching>,
}

/// What the caller does after [`Tunnel::run`].
pub enum Handoff {
    /// The tunnel was served (decrypted, blocked, or the client went away).
    Done,
    /// Not decrypted: splice these two sockets byte for byte.
    Splice {
        client: TcpStream,
        origin: TcpStream,
    },
}

impl Tunnel {
    /// The tunnel for a CONNECT to `port`, when the port is a TLS port and interception is on.
    pub fn for_connect(
        state: Arc<GatewayState>,
        identity: &Identity,
        client: SocketAddr,
        host: &str,
        port: u16,
        policy_decision: Option<(DecryptionAction, String)>,
        shared: &crate::proxy::Shared,
    ) -> Option<Tunnel> {
        if !state.config.proxy.tls_ports.contains(port) {
            return None;
        }
        let interception = state.interception.clone()?;
        Some(Tunnel {
            state,
            interception,
            identity: identity.clone(),
            client,
            host: host.to_string(),
            port,
            policy_decision,
            access_log: shared.access_log.clone(),
            metrics: shared.metrics.clone(),
            events: shared.events.clone(),
            coaching: shared.coaching.clone(),
        })
    }

    /// Peeks, decides, and serves a decrypted tunnel; the tunnel's own record
    /// (`log`) gets the TLS facts and, for a pinning client, the rejection.
    pub async fn run(self, client: TcpStream, origin: TcpStream, log: &mut FlowLog) -> Handoff {
        let hello = match peek_client_hello(&client, self.interception.hello_timeout).await {
            Ok(hello) => hello,
            Err(e) if e.is_not_tls() => {
                // Non-TLS on a TLS port (e.g. a plain protocol tunnelled through 443):
                // passed through untouched, or closed when configured, and recorded.
                log.record.tls = Some(TlsRecord {
                    decision: "not-tls",
                    reason: e.to_string(),
                    ..Default::default()
                });
                if self.state.config.proxy.refuse_non_tls {
                    log.record.error =
                        Some("non-TLS traffic on a TLS port refused (proxy.refuse_non_tls)".into());
                    log.metrics().error("not_tls");
                    return Handoff::Done;
                }
                return Handoff::Splice { client, origin };
            }
            Err(rampart_tls::peek::PeekError::Timeout { .. }) => {
                // A server-speaks-first protocol: nothing to decide on.
                log.record.tls = Some(TlsRecord {
                    decision: "not-tls",
                    reason: "no ClientHello from the client".into(),
                    ..Default::default()
                });
                return Handoff::Splice { client, origin };
            }
            Err(e) => {
                log.record.error = Some(e.to_string());
                return Handoff::Done;
            }
        };
        let sni = hello.server_name.as_ref().map(|s| s.to_ascii_lowercase());
        let host = sni.clone().unwrap_or_else(|| self.host.clone());
        let (decrypt, reason) = self.decide(&host);
        let mut record = TlsRecord {
            decision: if decrypt { "decrypt" } else { "do-not-decrypt" },
            reason,
            sni: sni.clone(),
            version: offered_version(&hello),
            ..Default::default()
        };
        if !decrypt {
            log.record.tls = Some(record);
            return Handoff::Splice { client, origin };
        }
        let origin_config = self.interception.origin.client_config(&host, &hello.alpn);
        let upstream = match server_name(&host) {
            Ok(name) => tokio_rustls::TlsConnector::from(origin_config.config.clone())
                .connect(name, origin)
                .await
                .map_err(|e| OriginTlsFailure::from_io(&e)),
            Err(e) => Err(OriginTlsFailure::InvalidCertificate {
                detail: e.to_string(),
            }),
        };
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
        let start = match acceptor.await {
            Ok(start) => start,
            Err(e) => {
                log.record.tls = Some(record);
                log.record.error = Some(format!("client TLS handshake failed: {e}"));
                return Handoff::Done;
            }
        };
        let upstream = match upstream {
            Ok(upstream) => upstream,
            Err(failure) => {
                // Never a silent pass: the client gets an explanatory page inside TLS.
                record.origin_problem = Some(failure.code().to_string());
                log.record.status = 502;
                log.record.error = Some(failure.explain(&host));
                log.metrics().error("origin_certificate");
                let names = LeafNames::for_host(&host);
                let config = match names {
                    Ok(names) => self.interception.configs.server_config(&names, &[]).await,
                    Err(e) => Err(e),
                };
                log.record.tls = Some(record.clone());
                let config = match config {
                    Ok(config) => config,
                    Err(e) => {
                        log.record.error = Some(format!("minting a leaf for {host}: {e}"));
                        return Handoff::Done;
                    }
                };
                if let Ok(client_tls) = start.into_stream(config).await {
                    session::serve_origin_failure(&self, client_tls, &host, failure, record).await;
                }
                return Handoff::Done;
            }
        };
        if let Some(exception) = &origin_config.exception {
            if let Some(problem) = exception.problem() {
                tracing::warn!(host = %host, pattern = exception.pattern(), problem = problem.code(),
                    "invalid origin certificate allowed by tls.allow_invalid_certificate_hosts");
                record.origin_problem = Some(format!(
                    "{} (allowed by {})",
                    problem.code(),
                    exception.pattern()
                ));
            }
        }
        let origin_alpn = upstream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        let names = match &sni {
            Some(sni) => LeafNames::for_host(sni),
            None => match upstream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                Some(leaf) => LeafNames::mimic(leaf),
                None => LeafNames::for_host(&host),
            },
        };
        let alpn: Vec<Vec<u8>> = origin_alpn.iter().cloned().collect();
        let config = match names {
            Ok(names) => self.interception.configs.server_config(&names, &alpn).await,
            Err(e) => Err(e),
        };
        let config = match config {
            Ok(config) => config,
            Err(e) => {
                log.record.tls = Some(record);
                log.record.error = Some(format!("minting a leaf for {host}: {e}"));
                return Handoff::Done;
            }
        };
        let client_tls = match start.into_stream(config).await {
            Ok(client_tls) => client_tls,
            Err(e) => {
                match ClientRejection::from_handshake_error(&e) {
                    Some(rejection) => {
                        // A client that pins certificates (or does not trust Rampart's CA).
                        let outcome = self.interception.pinned.record_failure(&host);
                        tracing::info!(host = %host, client = %self.client, ?rejection, ?outcome,
                            "client rejected the intercepted certificate");
                        record.pinned_client = Some(match rejection {
                            ClientRejection::Alert(alert) => format!("alert {alert}"),
                            ClientRejection::Closed => "closed during handshake".into(),
                        });
                        log.metrics().error("pinned_client");
                    }
                    None => log.record.error = Some(format!("client TLS handshake failed: {e}")),
                }
                log.record.tls = Some(record);
                return Handoff::Done;
            }
        };
        let conn = client_tls.get_ref().1;
        record.version = conn
            .protocol_version()
            .map(|v| version_name(u16::from(v)).into_owned());
        record.alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        log.record.tls = Some(record.clone());
        session::serve(&self, client_tls, upstream, &host, record, log).await;
        Handoff::Done
    }

    /// The policy's decryption rule first (when one decided), then the TLS
    /// decider: configured do-not-decrypt hosts, built-in pinned apps, auto-bypass.
    fn decide(&self, host: &str) -> (bool, String) {
        if let Some((action, rule)) = &self.policy_decision {
            let decrypt = matches!(action, DecryptionAction::Decrypt);
            return (decrypt, format!("policy rule \"{rule}\""));
        }
        let decision = self.interception.decider.should_decrypt(host);
        (decision.decrypt, decision.reason.to_string())
    }
}

/// The highest version the client offered (spliced tunnels never see the negotiated one).
fn offered_version(hello: &ClientHello) -> Option<String> {
    let best = hello
        .supported_versions
        .iter()
        .copied()
        .max()
        .unwrap_or(hello.legacy_version);
    Some(version_name(best).into_owned())
}
