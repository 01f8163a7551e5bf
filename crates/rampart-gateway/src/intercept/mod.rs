//! TLS interception of CONNECT tunnels: after the 200, peek the client's
//! ClientHello (without consuming it), decide decrypt or do-not-decrypt, and
//! either hand the tunnel back to the splice or terminate TLS on both sides
//! and serve the decrypted requests one by one ([`session`]), so the policy's
//! request stage and the access log see every request.
//!
//! The order matters: the origin is connected first, because its ALPN choice
//! (and, for clients without SNI, its certificate's names) shapes the
//! certificate and protocol Rampart offers the client.
//!
//! The client side is any stream ([`ClientSide`]): a proxy client's socket is
//! peeked with `MSG_PEEK` and, when not decrypted, spliced with `splice(2)`; an
//! agent's HTTP/2 CONNECT stream has its ClientHello read and replayed
//! ([`stream::Prefixed`]) and is relayed with a buffered copy.

mod fronting;
mod session;
pub mod stream;

pub use fronting::{Fronting, FrontingExceptions};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_policy::{DecryptionAction, Identity, Process};
use rampart_tls::ca::CertificateAuthority;
use rampart_tls::client_hello::{version_name, ClientHello};
use rampart_tls::config::TlsConfig;
use rampart_tls::decision::{DecryptionDecider, HostListDecider};
use rampart_tls::leaf::LeafNames;
use rampart_tls::leaf_cache::LeafCache;
use rampart_tls::origin::{server_name, OriginTls};
use rampart_tls::origin_failure::OriginTlsFailure;
use rampart_tls::peek::{peek_client_hello, PeekError};
use rampart_tls::pinned_clients::{ClientRejection, PinnedClientTracker, PinnedOutcome};
use rampart_tls::server_config::InterceptConfigs;
use rampart_tls::TlsError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::access_log::{AccessLog, TlsRecord};
use crate::decision::TlsDecision;
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::policy_stage::{self, Blocked, FlowFacts};
use crate::state::GatewayState;
use rampart_policy::EvalPoint;

/// Everything interception needs that lives as long as one configuration generation.
pub struct Interception {
    ca: Arc<CertificateAuthority>,
    configs: InterceptConfigs,
    origin: OriginTls,
    decider: HostListDecider,
    pinned: Arc<PinnedClientTracker>,
    hello_timeout: Duration,
    fronting: Arc<FrontingExceptions>,
}

impl Interception {
    /// Loads the CA from the data dir (creating it on first start) with the
    /// library's permission check: a key readable by others is an error, so
    /// the gateway refuses to start.
    pub fn new(tls: &TlsConfig, data_dir: &Path) -> Result<Self, TlsError> {
        rampart_tls::install_crypto_provider();
        tls.validate()?;
        let (ca, created) = if tls.create_ca {
            CertificateAuthority::load_or_create(&tls.ca_paths(data_dir), &tls.ca_options())?
        } else {
            (CertificateAuthority::load(&tls.ca_paths(data_dir))?, false)
        };
        if created {
            tracing::info!(cert = %ca.paths().cert.display(), "created the gateway CA");
        }
        let ca = Arc::new(ca);
        let leaves = Arc::new(LeafCache::new(ca.clone(), tls.leaf_cache_size));
        let configs = InterceptConfigs::new(leaves, tls.leaf_cache_size)?;
        let origin = OriginTls::new(&tls.origin_settings())?;
        let (pinned, decider) = tls.decider()?;
        let fronting = Arc::new(FrontingExceptions::new(&tls.fronting_exceptions)?);
        Ok(Interception {
            ca,
            configs,
            origin,
            decider,
            pinned,
            hello_timeout: tls.client_hello_timeout,
            fronting,
        })
    }

    /// The CA leaves are signed with.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// What the TLS decider (do-not-decrypt hosts, built-in pinned apps,
    /// auto-bypass) says of `host` when no policy rule decided: the
    /// connection phase's forecast, confirmed once the ClientHello is read.
    pub fn would_decrypt(&self, host: &str) -> bool {
        self.decider.should_decrypt(host).decrypt
    }
}

/// One CONNECT tunnel that may be intercepted: what the connection stage knew.
pub struct Tunnel {
    pub state: Arc<GatewayState>,
    /// Set for TLS tunnels (always, see [`Tunnel::for_connect`]); plain-HTTP tunnels
    /// of agents ([`Tunnel::for_plain_http`]) use only its fronting exceptions, if any.
    pub interception: Option<Arc<Interception>>,
    pub identity: Identity,
    pub client: SocketAddr,
    pub host: String,
    pub port: u16,
    /// The policy's decryption decision when a rule (not the stage default) decided:
    /// the action and the rule's name.
    pub policy_decision: Option<(DecryptionAction, Arc<str>)>,
    pub access_log: AccessLog,
    pub metrics: Arc<Metrics>,
    pub events: Option<rampart_events::EventSender>,
    /// Proceed links and allowances of `user-alert` rules (shared with plain HTTP).
    pub coaching: Arc<crate::coaching::Coaching>,
    /// The endpoint process of an agent flow, for the request stage's `processes` conditions.
    pub process: Option<Process>,
    /// The agent asked for `tunnel-bypass`: never decrypted, whatever the policy says.
    pub tunnel_bypass: bool,
    /// A plain-HTTP tunnel of an agent ([`Tunnel::run_plain_http`]), not a TLS one.
    pub plain_http: bool,
    /// The connection phase left access undecided until the requests are
    /// seen: if the tunnel is relayed without decrypting after all, access is
    /// settled before a byte moves ([`Tunnel::settle_access`]).
    pub access_pending: bool,
    /// The ClientHello named another site than the CONNECT target and
    /// `tls.fronting = "alert"` let it through: the decrypted requests are
    /// judged under both names (`FlowFacts::also_host`).
    pub fronting_alerted: bool,
    /// The descriptor units of the splice pipes, taken with the CONNECT
    /// (before the origin is contacted, so a refusal is a clean 503): handed
    /// back to the budget as soon as the tunnel is decrypted instead, which
    /// needs no pipes; carried out with [`Handoff::Splice`] otherwise.
    pub pipes: Option<crate::fd_budget::Descriptors>,
    /// The CONNECT target's host as asked (may be an address, where `host`
    /// is the name the policy sees), and its address when it is one.
    pub connect_host: String,
    pub connect_ip: Option<std::net::IpAddr>,
    /// The origin's address when connected directly.
    pub origin_ip: Option<std::net::IpAddr>,
}

/// The reason recorded for flows an agent sent as `tunnel-bypass`.
pub const TUNNEL_BYPASS_REASON: &str = "tunnel-bypass by agent";

/// What the caller does after [`Tunnel::run`].
pub enum Handoff<C> {
    /// The tunnel was served (decrypted, blocked, or the client went away).
    Done,
    /// Not decrypted: relay these two streams byte for byte, holding the
    /// splice pipes' descriptor units ([`Tunnel::pipes`]) while it lasts.
    Splice {
        client: C,
        origin: TcpStream,
        pipes: Option<crate::fd_budget::Descriptors>,
    },
}

/// The client side of a tunnel: how its ClientHello is looked at without losing
/// a byte, and the stream the tunnel continues on afterwards.
pub trait ClientSide: Send + Sized + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn client_hello(
        self,
        timeout: Duration,
    ) -> impl std::future::Future<Output = (Self::Stream, Result<ClientHello, PeekError>)> + Send;
}

/// A proxy client's socket: peeked in the kernel, so a spliced tunnel stays zero-copy.
impl ClientSide for TcpStream {
    type Stream = TcpStream;
    async fn client_hello(self, timeout: Duration) -> (TcpStream, Result<ClientHello, PeekError>) {
        let hello = peek_client_hello(&self, timeout).await;
        (self, hello)
    }
}

/// Any other stream (an agent's HTTP/2 CONNECT stream): read and replayed.
pub struct Replayed<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientSide for Replayed<S> {
    type Stream = stream::Prefixed<S>;
    async fn client_hello(
        self,
        timeout: Duration,
    ) -> (stream::Prefixed<S>, Result<ClientHello, PeekError>) {
        stream::read_client_hello(self.0, timeout).await
    }
}

impl Tunnel {
    /// The tunnel for a CONNECT to `port`, when the port is a TLS port and interception is on.
    #[allow(clippy::too_many_arguments)]
    pub fn for_connect(
        state: Arc<GatewayState>,
        identity: &Identity,
        process: Option<&Process>,
        tunnel_bypass: bool,
        client: SocketAddr,
        host: &str,
        port: u16,
        policy_decision: Option<(DecryptionAction, Arc<str>)>,
        shared: &crate::proxy::Shared,
    ) -> Option<Tunnel> {
        if !state.config.proxy.tls_ports.contains(port) {
            return None;
        }
        let interception = state.interception.clone()?;
        Some(Tunnel {
            state,
            interception: Some(interception),
            identity: identity.clone(),
            client,
            host: host.to_string(),
            port,
            policy_decision,
            access_log: shared.access_log.clone(),
            metrics: shared.metrics.clone(),
            events: shared.events.clone(),
            coaching: shared.coaching.clone(),
            process: process.cloned(),
            tunnel_bypass,
            plain_http: false,
            access_pending: false,
            fronting_alerted: false,
            pipes: None,
            connect_host: host.to_string(),
            connect_ip: host.parse().ok(),
            origin_ip: None,
        })
    }

    /// Carries the connection phase's pending access, the CONNECT target and
    /// the origin address when connected directly (not through an upstream proxy).
    pub fn with_connect_facts(
        mut self,
        pending: bool,
        connect_host: &str,
        connect_ip: Option<std::net::IpAddr>,
        origin_ip: Option<std::net::IpAddr>,
    ) -> Self {
        self.access_pending = pending;
        self.connect_host = connect_host
            .trim_matches(['[', ']'])
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.connect_ip = connect_ip;
        self.origin_ip = origin_ip;
        self
    }

    /// Whether `name` (the SNI, or the name the agent reported) is another site
    /// than the CONNECT target: not a configured fronting exception, and not
    /// resolving to the address asked for or connected to. A name that does
    /// not resolve cannot be shown to be the same site, so it counts as another.
    async fn names_other_site(&self, interception: &Interception, name: &str) -> bool {
        if !matches!(
            interception.fronting.check(name, &self.connect_host),
            Fronting::Refused
        ) {
            return false;
        }
        let known: Vec<std::net::IpAddr> =
            self.connect_ip.into_iter().chain(self.origin_ip).collect();
        if known.is_empty() {
            return true;
        }
        match self.state.connector.resolver().resolve(name).await {
            Ok(addrs) => !addrs.iter().any(|a| known.contains(a)),
            Err(_) => true,
        }
    }

    /// The connection phase blocked a tunnel that would be decrypted: read the
    /// ClientHello, then serve the block page inside TLS (no origin is contacted).
    pub async fn run_block_page<C: ClientSide>(self, client: C, blocked: Blocked, log: &mut Flow) {
        let Some(interception) = self.interception.clone() else {
            return;
        };
        let (client, hello) = client.client_hello(interception.hello_timeout).await;
        let name = match &hello {
            Ok(hello) => hello
                .server_name
                .as_ref()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or_else(|| self.host.clone()),
            Err(e) => {
                log.record.error = Some(format!(
                    "{}; no block page: the client sent no ClientHello ({e})",
                    log.record.error.take().unwrap_or_default()
                ));
                return;
            }
        };
        self.block_page_after_hello(&interception, client, &name, blocked, log)
            .await;
    }

    /// TLS with the client under a leaf for `name`, then the block page for
    /// every request of the tunnel.
    async fn block_page_after_hello<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        interception: &Interception,
        client: S,
        name: &str,
        blocked: Blocked,
        log: &mut Flow,
    ) {
        log.record.status = 403;
        if log.record.error.is_none() {
            log.record.error = Some(format!(
                "blocked by rule \"{}\" (block page served inside TLS)",
                blocked.rule
            ));
            log.metrics().error("blocked");
        }
        let record = TlsRecord {
            sni: Some(name.to_string()),
            ..TlsRecord::new(TlsDecision::Decrypt, "block page".into())
        };
        log.record.tls = Some(record.clone());
        let config = match LeafNames::for_host(name) {
            Ok(names) => interception.configs.server_config(&names, &[]).await,
            Err(e) => Err(e),
        };
        let config = match config {
            Ok(config) => config,
            Err(e) => {
                log.record.error = Some(format!("minting a leaf for {name}: {e}"));
                return;
            }
        };
        let activity = stream::Activity::new();
        let client = stream::Counted::new(client, activity.clone());
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
        let client_tls = match acceptor.await {
            Ok(start) => start.into_stream(config).await,
            Err(e) => Err(e),
        };
        match client_tls {
            Ok(client_tls) => {
                session::serve_block_page(self, client_tls, name, blocked, record, log.record.id)
                    .await
            }
            Err(e) => log.record.error = Some(format!("client TLS handshake failed: {e}")),
        }
        log.record.bytes_from_client = activity.read();
        log.record.bytes_to_client = activity.written();
    }

    /// The facts the policy phases see for this tunnel under `name`.
    fn facts<'a>(&'a self, name: &'a str, last: EvalPoint) -> FlowFacts<'a> {
        FlowFacts {
            identity: &self.identity,
            process: self.process.as_ref(),
            host: name,
            dst_ip: self.connect_ip,
            port: self.port,
            last,
            also_host: None,
        }
    }

    /// The tunnel will be relayed without decrypting: its URL never comes, so
    /// an access decision left pending at the connection is made now, with the
    /// rules that can still match. `true` when the tunnel may go on.
    fn settle_access(&self, names: &[&str], log: &mut Flow) -> bool {
        if !self.access_pending {
            return true;
        }
        for name in names {
            let facts = self.facts(name, EvalPoint::Connection);
            if let Some(blocked) =
                policy_stage::settle_undecrypted(&self.state.policy, &facts, &mut log.record)
            {
                refuse_tunnel(
                    log,
                    &format!("blocked by rule \"{}\"", blocked.rule),
                    "blocked",
                );
                return false;
            }
        }
        true
    }

    /// An agent flow to a port of `proxy.agent_http_ports`: when it carries plain
    /// HTTP/1, its requests are served one by one so the request stage sees each URL,
    /// as it does for proxy clients' absolute-form requests.
    pub fn for_plain_http(
        state: Arc<GatewayState>,
        identity: &Identity,
        process: Option<&Process>,
        client: SocketAddr,
        host: &str,
        port: u16,
        shared: &crate::proxy::Shared,
    ) -> Option<Tunnel> {
        if !state.config.proxy.agent_http_ports.contains(port) {
            return None;
        }
        Some(Tunnel {
            interception: state.interception.clone(),
            state,
            identity: identity.clone(),
            client,
            host: host.to_string(),
            port,
            policy_decision: None,
            access_log: shared.access_log.clone(),
            metrics: shared.metrics.clone(),
            events: shared.events.clone(),
            coaching: shared.coaching.clone(),
            process: process.cloned(),
            tunnel_bypass: false,
            plain_http: true,
            access_pending: false,
            fronting_alerted: false,
            pipes: None,
            connect_host: host.to_string(),
            connect_ip: host.parse().ok(),
            origin_ip: None,
        })
    }

    /// Serves a plain-HTTP tunnel request by request; anything that does not start
    /// like an HTTP/1 request is handed back to be relayed untouched.
    pub async fn run_plain_http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        mut self,
        client: S,
        origin: TcpStream,
        log: &mut Flow,
    ) -> Handoff<stream::Prefixed<S>> {
        let timeout = self.state.config.limits.header_timeout;
        let (client, is_http) = stream::read_http_start(client, timeout).await;
        match is_http {
            Ok(true) => {}
            Ok(false) if self.settle_access(&[&self.host], log) => {
                return Handoff::Splice {
                    client,
                    origin,
                    pipes: self.pipes.take(),
                }
            }
            Ok(false) => return Handoff::Done,
            Err(e) => {
                log.record.error = Some(format!("reading the first request: {e}"));
                return Handoff::Done;
            }
        }
        let activity = stream::Activity::new();
        let client = stream::Counted::new(client, activity.clone());
        session::serve_plain(&self, client, origin, &self.host, &activity, log).await;
        log.record.bytes_from_client = activity.read();
        log.record.bytes_to_client = activity.written();
        Handoff::Done
    }

    /// Peeks, decides, and serves a decrypted tunnel; the tunnel's own record
    /// (`log`) gets the TLS facts and, for a pinning client, the rejection.
    pub async fn run<C: ClientSide>(
        mut self,
        client: C,
        origin: TcpStream,
        log: &mut Flow,
    ) -> Handoff<C::Stream> {
        let Some(interception) = self.interception.clone() else {
            // for_connect never builds a TLS tunnel without interception.
            log.record.error = Some("TLS interception is not configured".into());
            return Handoff::Done;
        };
        let (client, hello) = client.client_hello(interception.hello_timeout).await;
        let hello = match hello {
            Ok(hello) => hello,
            Err(e) if e.is_not_tls() => {
                // Non-TLS on a TLS port (e.g. a plain protocol tunnelled through 443):
                // passed through untouched, or closed when configured, and recorded.
                log.record.tls = Some(TlsRecord::new(TlsDecision::NotTls, e.to_string()));
                if self.state.config.proxy.refuse_non_tls {
                    log.record.error =
                        Some("non-TLS traffic on a TLS port refused (proxy.refuse_non_tls)".into());
                    log.metrics().error("not_tls");
                    return Handoff::Done;
                }
                if !self.settle_access(&[&self.host], log) {
                    return Handoff::Done;
                }
                return Handoff::Splice {
                    client,
                    origin,
                    pipes: self.pipes.take(),
                };
            }
            Err(PeekError::Timeout { .. }) => {
                // A server-speaks-first protocol: nothing to decide on.
                log.record.tls = Some(TlsRecord::new(
                    TlsDecision::NotTls,
                    "no ClientHello from the client".into(),
                ));
                if !self.settle_access(&[&self.host], log) {
                    return Handoff::Done;
                }
                return Handoff::Splice {
                    client,
                    origin,
                    pipes: self.pipes.take(),
                };
            }
            Err(e) => {
                log.record.error = Some(e.to_string());
                return Handoff::Done;
            }
        };
        let sni = hello
            .server_name
            .as_ref()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let host = sni.clone().unwrap_or_else(|| self.host.clone());
        // The name in the ClientHello must be the site the tunnel goes to:
        // otherwise a do-not-decrypt SNI would open an uninspected tunnel to
        // any destination (DESIGN §6, fronting).
        let fronting =
            host != self.connect_host && self.names_other_site(&interception, &host).await;
        if fronting {
            let reason = format!(
                "domain fronting: the ClientHello names {} but the CONNECT is for {}",
                host, self.connect_host
            );
            log.record.tls = Some(TlsRecord {
                sni: sni.clone(),
                version: offered_version(&hello),
                ..TlsRecord::new(TlsDecision::Fronting, reason.clone())
            });
            if self
                .state
                .config
                .tls
                .as_ref()
                .map(|t| t.fronting)
                .unwrap_or_default()
                == rampart_tls::config::FrontingMode::Block
            {
                refuse_tunnel(log, &reason, "domain_fronting");
                return Handoff::Done;
            }
            tracing::info!(client = %self.client, %reason, "fronting allowed by tls.fronting = \"alert\"");
            self.fronting_alerted = true;
        }
        // Decryption follows the CONNECT host when the SNI names another site,
        // never the SNI alone.
        let decide_on = if fronting {
            self.host.clone()
        } else {
            host.clone()
        };
        let (decrypt, reason) = self.decide(&interception, &decide_on);
        // A different SNI is a second name for the policy: the stricter wins.
        if let Some(sni) = sni.as_deref().filter(|s| *s != self.host) {
            let last = if decrypt {
                EvalPoint::Response
            } else {
                EvalPoint::Connection
            };
            let mut probe = log.record.clone();
            let stage = policy_stage::connection_phase(
                &self.state.policy,
                &self.facts(sni, last),
                &mut probe,
            );
            if let Some(blocked) = stage.blocked {
                log.record.policy = probe.policy;
                if decrypt {
                    self.block_page_after_hello(&interception, client, sni, blocked, log)
                        .await;
                    return Handoff::Done;
                }
                refuse_tunnel(
                    log,
                    &format!("blocked by rule \"{}\"", blocked.rule),
                    "blocked",
                );
                return Handoff::Done;
            }
        }
        let decision = if decrypt {
            TlsDecision::Decrypt
        } else {
            TlsDecision::DoNotDecrypt
        };
        let mut record = TlsRecord {
            sni: sni.clone(),
            version: offered_version(&hello),
            ..TlsRecord::new(decision, reason)
        };
        if fronting {
            record.reason = format!("{}; fronting allowed (tls.fronting = alert)", record.reason);
        }
        if !decrypt {
            log.record.tls = Some(record);
            let names: Vec<&str> = std::iter::once(self.host.as_str())
                .chain(sni.as_deref().filter(|s| *s != self.host))
                .collect();
            if !self.settle_access(&names, log) {
                return Handoff::Done;
            }
            return Handoff::Splice {
                client,
                origin,
                pipes: self.pipes.take(),
            };
        }
        // Decrypted: no pipes, so their descriptor units go back to the budget.
        drop(self.pipes.take());
        // The decrypted tunnel's own record counts the bytes on the client's side
        // (TLS records included), as a spliced tunnel's does.
        let activity = stream::Activity::new();
        let client = stream::Counted::new(client, activity.clone());
        let hello = Hello { sni, hello: &hello };
        self.decrypt(
            &interception,
            client,
            origin,
            &host,
            hello,
            record,
            &activity,
            log,
        )
        .await;
        log.record.bytes_from_client = activity.read();
        log.record.bytes_to_client = activity.written();
        Handoff::Done
    }

    /// TLS with the origin and the client, then the decrypted requests one by one.
    #[allow(clippy::too_many_arguments)]
    async fn decrypt<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        interception: &Interception,
        client: stream::Counted<S>,
        origin: TcpStream,
        host: &str,
        Hello { sni, hello }: Hello<'_>,
        mut record: TlsRecord,
        activity: &stream::Activity,
        log: &mut Flow,
    ) {
        let host = host.to_string();
        let origin_config = interception.origin.client_config(&host, &hello.alpn);
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
                return;
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
                    Ok(names) => interception.configs.server_config(&names, &[]).await,
                    Err(e) => Err(e),
                };
                log.record.tls = Some(record.clone());
                let config = match config {
                    Ok(config) => config,
                    Err(e) => {
                        log.record.error = Some(format!("minting a leaf for {host}: {e}"));
                        return;
                    }
                };
                if let Ok(client_tls) = start.into_stream(config).await {
                    session::serve_origin_failure(
                        self,
                        client_tls,
                        &host,
                        failure,
                        record,
                        log.record.id,
                    )
                    .await;
                }
                return;
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
        let chacha = rampart_tls::prefers_chacha(start.client_hello().cipher_suites());
        let config = match names {
            Ok(names) => {
                interception
                    .configs
                    .server_config_for(&names, &alpn, chacha)
                    .await
            }
            Err(e) => Err(e),
        };
        let config = match config {
            Ok(config) => config,
            Err(e) => {
                log.record.tls = Some(record);
                log.record.error = Some(format!("minting a leaf for {host}: {e}"));
                return;
            }
        };
        let client_tls = match start.into_stream(config).await {
            Ok(client_tls) => client_tls,
            Err(e) => {
                match ClientRejection::from_handshake_error(&e) {
                    Some(rejection) => {
                        // A client that pins certificates (or does not trust Rampart's CA).
                        // Categories come from the policy in force, so a must-inspect
                        // category keeps its hosts decrypted whatever their clients do.
                        let mut categories: Vec<String> = Vec::new();
                        self.state
                            .policy
                            .host_objects(&host, |_, name| categories.push(name.to_string()));
                        let categories: Vec<&str> = categories.iter().map(String::as_str).collect();
                        let outcome = interception.pinned.record_failure_in(&host, &categories);
                        tracing::info!(host = %host, client = %self.client, ?rejection, ?outcome,
                            "client rejected the intercepted certificate");
                        let how = match rejection {
                            ClientRejection::Alert(alert) => format!("alert {alert}"),
                            ClientRejection::Closed => "closed during handshake".into(),
                        };
                        // The access log and the pinned-client finding are the audit
                        // trail of an automatic bypass (or of one refused).
                        record.pinned_client = Some(match outcome {
                            PinnedOutcome::BypassStarted { ttl } => format!(
                                "{how}; pinned-client auto-bypass started for {}s",
                                ttl.as_secs()
                            ),
                            PinnedOutcome::BypassRefused { reason } => {
                                format!("{how}; auto-bypass refused: must inspect ({reason})")
                            }
                            PinnedOutcome::Recorded { .. } => how,
                        });
                        log.metrics().error("pinned_client");
                    }
                    None => log.record.error = Some(format!("client TLS handshake failed: {e}")),
                }
                log.record.tls = Some(record);
                return;
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
        session::serve(self, client_tls, upstream, &host, record, activity, log).await;
    }

    /// An agent's `tunnel-bypass` first, then the policy's decryption rule (when
    /// one decided), then the TLS decider: configured do-not-decrypt hosts, built-in pinned apps, auto-bypass.
    fn decide(&self, interception: &Interception, host: &str) -> (bool, String) {
        if self.tunnel_bypass {
            return (false, TUNNEL_BYPASS_REASON.to_string());
        }
        if let Some((action, rule)) = &self.policy_decision {
            let decrypt = matches!(action, DecryptionAction::Decrypt);
            return (decrypt, format!("policy rule \"{rule}\""));
        }
        let decision = interception.decider.should_decrypt(host);
        (decision.decrypt, decision.reason.to_string())
    }
}

/// Ends a tunnel the gateway refuses after its 200 (the client sees the
/// connection close), recorded as a 403 with the reason.
fn refuse_tunnel(log: &mut Flow, reason: &str, metric: &str) {
    log.record.status = 403;
    log.record.error = Some(reason.to_string());
    log.metrics().error(metric);
}

/// What the ClientHello said, for [`Tunnel::decrypt`].
struct Hello<'a> {
    /// The SNI, lower-cased.
    sni: Option<String>,
    hello: &'a ClientHello,
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
