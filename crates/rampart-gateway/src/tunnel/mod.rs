//! The agent tunnel listener: TLS with mandatory client certificates from the device
//! CA, HTTP/2 only, one `CONNECT` stream per steered flow (many flows multiplexed over
//! one connection). Identity (device, user, groups) comes from the verified
//! certificate; the `X-Rampart-*` process metadata is trusted only because the peer
//! authenticated. Each flow connects through the same connector as the proxy listener
//! and is written to the access log with device, user and process.

mod identity;

pub use identity::{DeviceIdentity, IdentityError};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log::{FlowRecord, ProcessRecord};
use crate::connector::EgressChoice;
use crate::gateway::GatewayHandle;
use crate::proxy::Shared;
use crate::relay;

/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-stream and per-connection HTTP/2 flow-control windows: large enough that one
/// bulk flow is not throttled by round trips, bounded so a stalled reader costs little.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_STREAMS: u32 = 4096;

/// Asked when a device with a valid certificate connects: the server records "last
/// seen" and answers whether the device may use the tunnel (false once revoked).
pub trait DeviceAdmission: Send + Sync + 'static {
    fn admit(&self, device: &str) -> bool;
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
/// certificates must chain to `client_ca_pem` (the device CA). HTTP/2 only (ALPN `h2`).
pub fn server_config(
    client_ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
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
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
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
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TunnelError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the tunnel listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, TunnelError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TunnelError::Bind { addr, source })
}

/// Accepts agent connections until `shutdown`, then lets open connections finish
/// their streams.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: GatewayHandle,
    admission: Option<Arc<dyn DeviceAdmission>>,
    agent_api: Option<Arc<dyn AgentApi>>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "agent tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = gateway.shared().clone();
        let admission = admission.clone();
        let agent_api = agent_api.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "agent tunnel TLS handshake refused");
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
            if let Some(admission) = &admission {
                if !admission.admit(&identity.device) {
                    tracing::warn!(%peer, device = %identity.device, "agent tunnel refused: device revoked");
                    return;
                }
            }
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
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "agent tunnel connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

type TunnelBody = Full<Bytes>;

fn status(code: StatusCode) -> Response<TunnelBody> {
    let mut response = Response::new(Full::new(Bytes::new()));
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
        .map(Full::new)
}

/// The process metadata an authenticated agent sends with each flow.
fn process_from(headers: &HeaderMap) -> Option<ProcessRecord> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(4096).collect::<String>())
    };
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

/// One CONNECT stream: connect through the default egress, answer, relay, log.
async fn flow(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    identity: Arc<DeviceIdentity>,
    peer: SocketAddr,
) -> Result<Response<TunnelBody>, Infallible> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let Some(port) = authority.port_u16() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let host = authority.host().trim_matches(['[', ']']).to_string();
    let started = Instant::now();
    let mut record = FlowRecord::new(peer, "CONNECT", authority.to_string());
    record.user = identity.user.as_deref().map(Arc::from);
    record.groups = identity.groups.clone();
    record.device = Some(Arc::from(identity.device.as_str()));
    record.process = process_from(req.headers());
    let state = shared.state.load_full();
    let connected = match state.connector.route(&EgressChoice::Default) {
        Ok(route) => state.connector.open_tunnel(&route, &host, port).await,
        Err(e) => Err(e),
    };
    let connected = match connected {
        Ok(c) => c,
        Err(e) => {
            let code = e.status();
            record.status = code.as_u16();
            record.error = Some(e.to_string());
            record.duration_ms = started.elapsed();
            shared.access_log.log(record);
            return Ok(status(code));
        }
    };
    record.status = 200;
    record.server = Some(connected.peer);
    record.egress = Some(connected.egress.0.clone());
    let idle = state.config.limits.tunnel_idle_timeout;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let log = shared.access_log.clone();
    shared.tunnels.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let mut origin = connected.stream;
                let leftover_sent = if connected.leftover.is_empty() {
                    Ok(())
                } else {
                    client.write_all(&connected.leftover).await
                };
                match leftover_sent {
                    Ok(()) => {
                        let (moved, end) =
                            relay::copy_bidirectional(&mut client, &mut origin, idle).await;
                        record.bytes_from_client = moved.client_to_origin;
                        record.bytes_to_client =
                            moved.origin_to_client + connected.leftover.len() as u64;
                        if let relay::RelayEnd::Error(e) = end {
                            record.error = Some(format!("relay: {e}"));
                        }
                    }
                    Err(e) => record.error = Some(format!("relay: {e}")),
                }
            }
            Err(e) => record.error = Some(format!("stream upgrade failed: {e}")),
        }
        record.duration_ms = started.elapsed();
        log.log(record);
    });
    Ok(status(StatusCode::OK))
}
