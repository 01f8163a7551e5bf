//! The agent tunnel listener: TLS with mandatory client certificates from the device
//! CA, HTTP/2 only, one `CONNECT` stream per steered flow (many flows multiplexed over
//! one connection). Identity (device, user, groups) comes from the verified
//! certificate; the `X-Rampart-*` process metadata is trusted only because the peer
//! authenticated. Each flow takes the proxy listener's CONNECT path
//! (`crate::proxy::tunnel_with`): the policy's connection stage with the identity and
//! the process, egress choice, TLS interception or splice, and the block answer (403
//! with the reason on the stream). `tunnel-bypass` flows are never decrypted. Every
//! flow is logged with device, user, groups, process and the policy decision.
//! Revoking a device ends its open connections too (`live`), not only new ones.

mod identity;
mod live;
// A fleet gateway's admission: the server's revoked device ids (issue 20).
mod revoked;
mod threads;
mod verifier;

pub use identity::{DeviceIdentity, IdentityError};
pub use live::{LiveTunnel, LiveTunnels};
pub use revoked::RevokedDevices;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log::{FlowRecord, ProcessRecord};
use crate::flow::Flow;
use crate::gateway::GatewayHandle;
use crate::proxy::body::ProxyBody;
use crate::proxy::{ConnectOptions, Shared};

/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and for how many bytes, a refused handshake's socket stays open to read
/// what the client still sends behind its certificate ([`close_after_refusal`]).
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
const REFUSAL_LINGER_BYTES: usize = 256 << 10;
/// Per-stream and per-connection HTTP/2 flow-control windows: large enough that one
/// bulk flow is not throttled by round trips, bounded so a stalled reader costs little.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_STREAMS: u32 = 4096;
/// Largest DATA frame an agent may send (uploads): 64 KiB instead of HTTP/2's 16 KiB
/// default, so an upload costs a quarter of the frames, and (as the agent sends 9 bytes
/// short of 64 KiB) each full frame is exactly four TLS records instead of one 16 KiB
/// record plus a 9-byte one for every frame.
const MAX_FRAME: u32 = 64 << 10;

/// Open connections are checked against the admission this often, for revocations the
/// gateway is not told about (`rampart device revoke --data-dir` while it runs).
const REVALIDATE_INTERVAL: Duration = Duration::from_secs(2);

/// Asked when a device with a valid certificate connects: the server records "last
/// seen" and answers whether the device may use the tunnel (false once revoked).
pub trait DeviceAdmission: Send + Sync + 'static {
    fn admit(&self, device: &str) -> bool;

    /// Of `open` (the devices with a tunnel connection open now), those that may no
    /// longer use it; their connections are closed. Asked every few seconds while any
    /// connection is open, off the runtime's threads (it may read a file).
    fn revoked_among(&self, open: &[String]) -> Vec<String> {
        let _ = open;
        Vec::new()
    }

    /// Notified when an admission was withdrawn where the gateway can hear it (a
    /// revocation through the server's API), so open connections are checked at once
    /// instead of at the next interval.
    fn revocations(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Requests on the tunnel that are not `CONNECT` (configuration polls, uploads of the
/// agent's own decisions) are control-plane calls of an authenticated device: they
/// are answered by the server through this hook, with the identity taken from the
/// device certificate, so agents never need a second credential.
pub trait AgentApi: Send + Sync + 'static {
    fn handle(
        &self,
        identity: Arc<DeviceIdentity>,
        request: Request<Bytes>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Bytes>> + Send>>;
}

/// Largest body of an agent API request (an upload batch of decisions).
const MAX_AGENT_API_BODY: usize = 8 << 20;

/// Problems building the tunnel's TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot read {what}: {detail}")]
    Pem { what: &'static str, detail: String },
    #[error("agent tunnel TLS configuration: {0}")]
    Tls(String),
    #[error("cannot listen for the agent tunnel on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// TLS for the tunnel: `cert_pem`/`key_pem` is the listener's certificate, and client
/// certificates must chain to `client_ca_pem` (the device CA) and, with `admission`,
/// belong to an admitted device (a revoked one gets a `certificate_revoked` alert).
/// HTTP/2 only (ALPN `h2`).
pub fn server_config(
    client_ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    admission: Option<Arc<dyn DeviceAdmission>>,
) -> Result<Arc<rustls::ServerConfig>, TunnelError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| TunnelError::Pem {
            what: "the device CA",
            detail: e.to_string(),
        })?;
        roots
            .add(ca)
            .map_err(|e| TunnelError::Tls(format!("device CA: {e}")))?;
    }
    // The agents offer AES-128-GCM first (the suite costs fewer rounds per relayed
    // byte); the same provider here keeps the choice on both ends.
    let provider = rampart_tls::intercept_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| TunnelError::Tls(e.to_string()))?;
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match admission {
        Some(admission) => Arc::new(verifier::AdmittingVerifier::new(verifier, admission)),
        None => verifier,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TunnelError::Pem {
            what: "the tunnel certificate",
            detail: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TunnelError::Pem {
        what: "the tunnel key",
        detail: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TunnelError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: an agent holds one connection for hours, so a full
    // handshake per connection costs nothing noticeable, and every connection then
    // has its certificate verified and its device admitted in the handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Binds the tunnel listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TunnelError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TunnelError::Bind { addr, source })
}

/// How the tunnel listener runs its connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connection threads spin this long before sleeping ([`crate::busy_poll`]).
    pub busy_poll: Option<Duration>,
    /// An agent connection that sent nothing for this long gets an HTTP/2 PING, and is
    /// closed (with its flows) when no answer comes within as long again: an agent
    /// that vanished without closing (a laptop lid shut, a cut link) would otherwise
    /// hold its connection and its flows' origin sockets open for hours.
    pub keepalive: Duration,
    /// `[tunnel] proxy_protocol_from`: load balancers whose connections start with a
    /// PROXY header naming the agent's address ([`crate::proxy_header`]); empty: off.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
}

/// Default of `[tunnel] keepalive` ([`ServeOptions::keepalive`]): longer than the agents' own 30 s, so a live
/// agent's PINGs usually keep the connection busy and the gateway sends none.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// Accepts agent connections until `shutdown`, then lets open connections finish
/// their streams. `admission` closes the open connections of devices it no longer
/// admits (give the same one to [`server_config`], which refuses them at the
/// handshake). Connections run on threads of their own ([`threads`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: GatewayHandle,
    admission: Option<Arc<dyn DeviceAdmission>>,
    agent_api: Option<Arc<dyn AgentApi>>,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    // Loop protection: the proxy must never connect to this listener.
    if let Ok(addr) = listener.local_addr() {
        gateway.register_listener(addr);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let threads = threads::ConnectionThreads::start(threads::default_count(), options.busy_poll);
    let live = LiveTunnels::new();
    let balancers: Arc<[ipnet::IpNet]> = options.proxy_protocol_from.clone().into();
    let refused_warning = crate::fd_budget::RateLimitedWarning::new();
    let accept_warning = crate::fd_budget::RateLimitedWarning::new();
    if let Some(admission) = &admission {
        tokio::spawn(revalidate(
            admission.clone(),
            live.clone(),
            shutdown.clone(),
        ));
    }
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: counted, warned about once per
                    // interval, and backed off instead of spinning.
                    count_rejected(&gateway, "accept_error");
                    if let Some(held_back) = accept_warning.check() {
                        tracing::warn!(error = %e, held_back, "agent tunnel accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The agent's socket; its streams take their origin sockets one by one.
        let Some(descriptors) = gateway
            .shared()
            .descriptors
            .try_take(crate::fd_budget::AGENT_CONNECTION)
        else {
            // A closed accept: the agent reconnects with backoff.
            count_rejected(&gateway, "fd_budget");
            if let Some(held_back) = refused_warning.check() {
                tracing::warn!(%peer, held_back,
                    "agent tunnel: connection refused, the descriptor budget is spent \
                     (raise LimitNOFILE / ulimit -n; see docs/configuration.md)");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            acceptor: acceptor.clone(),
            shared: gateway.shared().clone(),
            admission: admission.clone(),
            agent_api: agent_api.clone(),
            live: live.clone(),
            keepalive: options.keepalive,
            balancers: balancers.clone(),
            shutdown: shutdown.clone(),
            peer,
            descriptors,
        };
        let Some(threads) = &threads else {
            tokio::spawn(connection.run(tcp));
            continue;
        };
        // A socket belongs to the reactor it was registered with: hand the plain
        // socket over and register it again on the connection's thread.
        match tcp.into_std() {
            Ok(tcp) => threads.spawn(async move {
                match tokio::net::TcpStream::from_std(tcp) {
                    Ok(tcp) => connection.run(tcp).await,
                    Err(e) => tracing::warn!(%peer, error = %e, "agent tunnel socket not usable"),
                }
            }),
            Err(e) => tracing::warn!(%peer, error = %e, "agent tunnel socket not usable"),
        }
    }
}

fn count_rejected(gateway: &GatewayHandle, reason: &str) {
    gateway
        .rejected_connections()
        .get_or_create(&crate::metrics::RejectedLabels {
            listener: "agent_tunnel".into(),
            reason: reason.to_string(),
        })
        .inc();
}

/// Closes the open connections of devices the admission no longer admits, every
/// [`REVALIDATE_INTERVAL`] and whenever it announces a revocation.
async fn revalidate(
    admission: Arc<dyn DeviceAdmission>,
    live: Arc<LiveTunnels>,
    shutdown: CancellationToken,
) {
    let announced = admission.revocations();
    loop {
        let revocation = async {
            match &announced {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REVALIDATE_INTERVAL) => {}
            _ = revocation => {}
        }
        let open = live.devices();
        if open.is_empty() {
            continue;
        }
        let admission = admission.clone();
        let Ok(revoked) = tokio::task::spawn_blocking(move || admission.revoked_among(&open)).await
        else {
            continue;
        };
        for device in revoked {
            live.disconnect(&device);
        }
    }
}

/// One accepted agent connection, before the TLS handshake.
struct Connection {
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    admission: Option<Arc<dyn DeviceAdmission>>,
    agent_api: Option<Arc<dyn AgentApi>>,
    live: Arc<LiveTunnels>,
    keepalive: Duration,
    /// `[tunnel] proxy_protocol_from`.
    balancers: Arc<[ipnet::IpNet]>,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// The connection's socket in the descriptor budget; returned when `run` ends.
    descriptors: crate::fd_budget::Descriptors,
}

impl Connection {
    /// Handshake, device identity and admission, then HTTP/2 until the agent leaves
    /// or `shutdown` (then open streams finish first).
    async fn run(self, mut tcp: tokio::net::TcpStream) {
        let Connection {
            acceptor,
            shared,
            admission,
            agent_api,
            live,
            keepalive,
            balancers,
            shutdown,
            peer,
            descriptors: _descriptors,
        } = self;
        // Behind a load balancer, the agent's address is in the PROXY header.
        let peer = if balancers.is_empty() {
            peer
        } else {
            use crate::proxy_header::{arrival, Arrival};
            match arrival(&mut tcp, peer, &balancers, HANDSHAKE_TIMEOUT).await {
                Ok(Arrival::Client(agent)) => agent,
                Ok(Arrival::HealthCheck) => return,
                Err(refusal) => {
                    refusal.record(&shared.metrics, "agent_tunnel");
                    return;
                }
            }
        };
        let accept = acceptor.accept(tcp).into_fallible();
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(stream)) => stream,
            Ok(Err((e, tcp))) => {
                tracing::info!(%peer, error = %e, "agent tunnel TLS handshake refused");
                close_after_refusal(tcp).await;
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "agent tunnel TLS handshake timed out");
                return;
            }
        };
        let identity = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| DeviceIdentity::from_der(cert.as_ref()))
        {
            Some(Ok(identity)) => Arc::new(identity),
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "agent tunnel client refused");
                return;
            }
            None => return,
        };
        tracing::debug!(%peer, device = %identity.device, "agent tunnel connected");
        // Checked in the handshake too (`verifier`), but a resumed TLS session skips
        // certificate verification: this check does not depend on how it started.
        if let Some(admission) = &admission {
            if !admission.admit(&identity.device) {
                tracing::warn!(%peer, device = %identity.device, "agent tunnel refused: device revoked");
                return;
            }
        }
        // From here a later revocation closes the connection.
        let registration = live.register(&identity.device);
        let device = identity.device.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let identity = identity.clone();
            let agent_api = agent_api.clone();
            async move {
                if req.method() == Method::CONNECT {
                    flow(req, shared, identity, peer).await
                } else {
                    Ok(agent_api_call(req, agent_api.as_deref(), identity).await)
                }
            }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(MAX_STREAMS)
            .max_frame_size(MAX_FRAME)
            .timer(TokioTimer::new())
            .keep_alive_interval(keepalive)
            .keep_alive_timeout(keepalive)
            .serve_connection(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => match result {
                Ok(()) => tracing::debug!(%peer, %device, "agent tunnel connection ended"),
                Err(e) => {
                    let error = with_causes(&e);
                    tracing::info!(%peer, %device, %error, "agent tunnel connection ended");
                }
            },
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            _ = registration.revoked() => {
                // No graceful close: the device lost its right to the tunnel. Dropping
                // the connection closes the socket and ends every flow on it (each
                // flow still logs itself, with the error).
                tracing::warn!(%peer, %device, "agent tunnel closed: device revoked");
            }
        }
    }
}

/// Closes the socket of a refused handshake so that the client reads the alert that
/// says why (a revoked device's `certificate_revoked`). In TLS 1.3 the client sends
/// its certificate, its Finished and its first data in one flight, before the server
/// has judged the certificate. Closing a socket with that data unread makes the kernel
/// send a reset, which can reach the client before it has read the alert: the agent
/// then logs "broken pipe" instead of the reason. So the write side is closed after
/// the alert, and what the client still sends is read and dropped until it closes,
/// for at most [`REFUSAL_LINGER`] and [`REFUSAL_LINGER_BYTES`].
async fn close_after_refusal(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if tcp.shutdown().await.is_err() {
        return;
    }
    let mut discard = [0u8; 4096];
    let mut read = 0;
    let drain = async {
        while read < REFUSAL_LINGER_BYTES {
            match tcp.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// `error` and its causes, colon-separated: hyper's own message names only the kind
/// ("http2 error"), the cause says what happened ("keep-alive timed out").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

type TunnelBody = ProxyBody;

fn status(code: StatusCode) -> Response<TunnelBody> {
    let mut response = Response::new(ProxyBody::empty(None));
    *response.status_mut() = code;
    response
}

/// A control-plane request of an authenticated agent: the body is read (bounded) and
/// handed to the server's [`AgentApi`].
async fn agent_api_call(
    req: Request<Incoming>,
    api: Option<&dyn AgentApi>,
    identity: Arc<DeviceIdentity>,
) -> Response<TunnelBody> {
    let Some(api) = api else {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    };
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_AGENT_API_BODY);
    let body = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::debug!(device = %identity.device, error = %e, "agent API request body refused");
            return status(StatusCode::PAYLOAD_TOO_LARGE);
        }
    };
    api.handle(identity, Request::from_parts(parts, body))
        .await
        .map(|body| ProxyBody::full(body, None))
}

/// A metadata header of an authenticated agent, bounded.
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(4096).collect::<String>())
}

/// The process metadata an authenticated agent sends with each flow.
/// `pub(crate)` for the `tunnel_metadata` fuzz target (`crate::fuzzing`).
pub(crate) fn process_from(headers: &HeaderMap) -> Option<ProcessRecord> {
    let text = |name: &str| header_text(headers, name);
    let number = |name: &str| text(name).and_then(|v| v.parse::<u32>().ok());
    let name = text("x-rampart-process")?;
    Some(ProcessRecord {
        name,
        path: text("x-rampart-process-path"),
        pid: number("x-rampart-pid"),
        uid: number("x-rampart-uid"),
        user: text("x-rampart-user"),
        steering: text("x-rampart-steering"),
    })
}

/// One CONNECT stream: the shared CONNECT path with the device's identity, the
/// process and the steering action the agent sent.
async fn flow(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    identity: Arc<DeviceIdentity>,
    peer: SocketAddr,
) -> Result<Response<TunnelBody>, Infallible> {
    let state = shared.state.load_full();
    let target = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let mut record = FlowRecord::new(peer, "CONNECT", target);
    record.user = identity.user.as_deref().map(Arc::from);
    record.groups = crate::policy_stage::record_groups(
        &state.policy,
        identity.user.as_deref(),
        &identity.groups,
    );
    record.device = Some(Arc::from(identity.device.as_str()));
    record.process = process_from(req.headers());
    let options = ConnectOptions {
        check_ports: false,
        process: record.process.as_ref().map(|p| rampart_policy::Process {
            name: p.name.clone(),
            path: p.path.clone(),
        }),
        tunnel_bypass: record.process.as_ref().and_then(|p| p.steering.as_deref())
            == Some("tunnel-bypass"),
        policy_host: header_text(req.headers(), "x-rampart-host"),
        inspect_plain_http: true,
        descriptor_units: crate::fd_budget::AGENT_STREAM,
    };
    let policy_identity = rampart_policy::Identity {
        user: identity.user.clone(),
        groups: identity.groups.clone(),
        device: Some(identity.device.clone()),
        source_ip: Some(crate::admission::canonical_ip(peer.ip())),
    };
    let log = Flow::new(
        record,
        shared.access_log.clone(),
        shared.metrics.clone(),
        shared.events.clone(),
    );
    Ok(crate::proxy::tunnel_with(req, &state, &shared, &policy_identity, log, options).await)
}
