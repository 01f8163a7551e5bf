//! The mTLS HTTP/2 tunnel to the gateway: one TLS connection authenticated with the
//! device certificate, HTTP/2 multiplexing one `CONNECT` stream per flow, with the
//! flow's process metadata in `X-Rampart-*` headers. A broken connection is re-dialled
//! on the next flow, with exponential back-off; while the gateway cannot be reached,
//! flows fail fast with [`AgentError::GatewayUnreachable`] so the fail mode applies.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::agent_log::{AgentLog, Level};
use crate::connector::Connector;
use crate::enrollment::Enrollment;
use crate::error::AgentError;
use crate::h2_flow::H2Flow;
use crate::tunnel::{BoxFuture, FlowRequest, FlowStream, GatewayTunnel};

/// First retry delay after a failed dial; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Flow-control windows: one bulk flow should not wait on window updates.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest DATA frame the gateway may send: bigger frames mean fewer frames to parse
/// and fewer wake-ups per byte of a bulk download (the default is 16 KiB).
const MAX_FRAME: u32 = 64 << 10;
/// Read-ahead under TLS: rustls asks for 4 KiB per read, i.e. several system calls per
/// 16 KiB record; a buffer below it turns a bulk download into one read per 64 KiB.
/// One buffer for the whole tunnel connection, not per flow.
const TUNNEL_READ_BUFFER: usize = 64 << 10;

/// How often an established tunnel is checked, unless [`MtlsH2Tunnel::with_keepalive`]
/// says otherwise (the agent config's `gateway.keepalive`).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// Largest control-plane response the agent reads (its steering configuration).
const MAX_API_RESPONSE: usize = 16 << 20;

/// A control-plane answer from the server, received over the tunnel.
pub struct ApiResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The live HTTP/2 connection: its request handle, and whether its driver task saw it
/// end (h2's handle has no such query).
#[derive(Clone)]
struct Live {
    sender: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

struct Link {
    live: Option<Live>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// [`GatewayTunnel`] over one multiplexed mTLS HTTP/2 connection.
pub struct MtlsH2Tunnel {
    gateway: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    connector: Connector,
    /// Interval of the PING that checks an established connection ([`keep_alive`]).
    keepalive: Duration,
    log: Option<Arc<AgentLog>>,
    /// A tokio mutex on purpose: it is held across the dial so concurrent flows wait
    /// for one reconnect instead of each dialling their own.
    link: tokio::sync::Mutex<Link>,
    up: Arc<AtomicBool>,
    /// The last dial was refused with `certificate_revoked`: until a dial succeeds,
    /// every flow fails as [`AgentError::DeviceRevoked`] (fail closed), the flows
    /// during the back-off too.
    revoked: AtomicBool,
}

impl MtlsH2Tunnel {
    /// Builds the tunnel from the enrollment files in `data_dir`.
    pub fn from_enrollment(
        data_dir: &Path,
        enrollment: &Enrollment,
        connector: Connector,
        log: Option<Arc<AgentLog>>,
    ) -> Result<Self, AgentError> {
        let (key_pem, cert_pem, ca_pem) = Enrollment::credentials(data_dir)?;
        Self::new(
            &enrollment.gateway,
            &key_pem,
            &cert_pem,
            &ca_pem,
            connector,
            log,
        )
    }

    /// `gateway` is `host:port` of the tunnel listener; its certificate must chain to
    /// `ca_pem`, and the agent authenticates with `cert_pem`/`key_pem`.
    pub fn new(
        gateway: &str,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: &str,
        connector: Connector,
        log: Option<Arc<AgentLog>>,
    ) -> Result<Self, AgentError> {
        let tls_err =
            |what: &str, e: &dyn std::fmt::Display| AgentError::TunnelTls(format!("{what}: {e}"));
        let (host, port) = gateway
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((
                    h.trim_matches(['[', ']']).to_string(),
                    p.parse::<u16>().ok()?,
                ))
            })
            .ok_or_else(|| tls_err("gateway address", &format!("{gateway:?} is not host:port")))?;
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| tls_err("gateway name", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca = ca.map_err(|e| tls_err("gateway CA", &e))?;
            roots.add(ca).map_err(|e| tls_err("gateway CA", &e))?;
        }
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err("device certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| tls_err("device key", &e))?;
        // AES-128-GCM first, as on the intercepted legs: every byte of a steered flow
        // is encrypted once more on the tunnel, and AES-128 takes fewer rounds per byte.
        let mut config =
            rustls::ClientConfig::builder_with_provider(rampart_tls::intercept_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_err("TLS versions", &e))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err("device certificate", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(MtlsH2Tunnel {
            gateway: gateway.to_string(),
            host,
            port,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connector,
            keepalive: DEFAULT_KEEPALIVE,
            log,
            link: tokio::sync::Mutex::new(Link {
                live: None,
                failures: 0,
                retry_at: None,
            }),
            up: Arc::new(AtomicBool::new(false)),
            revoked: AtomicBool::new(false),
        })
    }

    /// Checks an established connection with a PING this often (at least 1 s).
    pub fn with_keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every.max(Duration::from_secs(1));
        self
    }

    /// Whether the HTTP/2 connection is currently established.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn revoked_error(&self, detail: String) -> AgentError {
        AgentError::DeviceRevoked {
            gateway: self.gateway.clone(),
            detail,
        }
    }

    /// A failed dial: [`AgentError::DeviceRevoked`] when the gateway's answer was the
    /// `certificate_revoked` alert, else unreachable (the configured fail mode).
    fn refused(&self, message: String) -> AgentError {
        if names_revocation(&message) {
            self.revoked_error(message)
        } else {
            self.unreachable(message)
        }
    }

    fn unreachable(&self, message: String) -> AgentError {
        AgentError::GatewayUnreachable {
            gateway: self.gateway.clone(),
            source: std::io::Error::other(message),
        }
    }

    /// The live connection's sender, dialling (or failing fast during back-off).
    async fn sender(&self) -> Result<Live, AgentError> {
        let mut link = self.link.lock().await;
        if let Some(live) = &link.live {
            if !live.closed.load(Ordering::Relaxed) {
                return Ok(live.clone());
            }
            link.live = None;
        }
        if let Some(at) = link.retry_at {
            let now = Instant::now();
            if now < at {
                let wait = format!("tunnel down, next attempt in {} ms", (at - now).as_millis());
                return Err(if self.revoked.load(Ordering::Relaxed) {
                    self.revoked_error(wait)
                } else {
                    self.unreachable(wait)
                });
            }
        }
        match self.dial().await {
            Ok(live) => {
                link.failures = 0;
                link.retry_at = None;
                link.live = Some(live.clone());
                if self.revoked.swap(false, Ordering::Relaxed) {
                    self.write_log(
                        Level::Info,
                        &format!(
                            "Gateway {} accepts this device again: fail mode as configured",
                            self.gateway
                        ),
                    );
                }
                Ok(live)
            }
            Err(err) => {
                if err.is_device_revoked() && !self.revoked.swap(true, Ordering::Relaxed) {
                    self.write_log(
                        Level::Warn,
                        &format!(
                            "Device certificate revoked by gateway {}: failing closed whatever \
                             fail_mode says; only fail_closed_allow hosts go direct",
                            self.gateway
                        ),
                    );
                }
                let delay = FIRST_BACKOFF
                    .saturating_mul(1 << link.failures.min(16))
                    .min(MAX_BACKOFF);
                link.failures = link.failures.saturating_add(1);
                link.retry_at = Some(Instant::now() + delay);
                if link.failures == 1 {
                    self.write_log(
                        Level::Warn,
                        &format!("Tunnel to gateway {} unavailable: {err}", self.gateway),
                    );
                }
                Err(err)
            }
        }
    }

    async fn dial(&self) -> Result<Live, AgentError> {
        let tcp = self
            .connector
            .connect_host(&self.host, self.port)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let tcp = tokio::io::BufReader::with_capacity(TUNNEL_READ_BUFFER, tcp);
        let tls = tokio::time::timeout(
            self.connector.timeout,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| self.unreachable("TLS handshake timed out".into()))?
        .map_err(|e| self.refused(format!("TLS handshake failed: {e}")))?;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| self.refused(format!("HTTP/2 handshake failed: {e}")))?;
        let mut pings = connection
            .ping_pong()
            .ok_or_else(|| self.unreachable("HTTP/2 ping handle unavailable".into()))?;
        let mut driver = tokio::spawn(connection);
        // In TLS 1.3 the client's handshake ends before the gateway has judged its
        // certificate, so a refused device (revoked) would look connected and then fail
        // on its first flow. One answered PING proves the gateway took the device: until
        // then the tunnel is not "up", and a refusal is a failed dial (back-off, one
        // log line naming the alert) rather than a tunnel that goes down at once, on
        // every flow.
        match ping_answered(&mut pings, &mut driver, self.connector.timeout).await {
            Ok(()) => {}
            Err(Unanswered::Ended(reason)) => {
                return Err(self.refused(format!("tunnel refused: {reason}")));
            }
            Err(Unanswered::TimedOut) => {
                return Err(self.unreachable(format!(
                    "no answer to the first HTTP/2 PING within {:?}",
                    self.connector.timeout
                )));
            }
        }
        let closed = Arc::new(AtomicBool::new(false));
        self.up.store(true, Ordering::Relaxed);
        self.write_log(
            Level::Info,
            &format!("Tunnel to gateway {} up", self.gateway),
        );
        let up = self.up.clone();
        let log = self.log.clone();
        let gateway = self.gateway.clone();
        let ended = closed.clone();
        let every = self.keepalive;
        tokio::spawn(async move {
            let reason = keep_alive(&mut pings, &mut driver, every).await;
            ended.store(true, Ordering::Relaxed);
            up.store(false, Ordering::Relaxed);
            if let Some(log) = log {
                log.write(
                    Level::Warn,
                    &format!("Tunnel to gateway {gateway} down: {reason}"),
                );
            }
        });
        Ok(Live { sender, closed })
    }

    fn write_log(&self, level: Level, message: &str) {
        if let Some(log) = &self.log {
            log.write(level, message);
        }
    }

    /// A control-plane request (`/api/v1/agent/...`) on the tunnel connection: the
    /// gateway hands non-CONNECT requests to the server, identified by the device
    /// certificate. Fails fast like a flow while the tunnel is in back-off.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<ApiResponse, AgentError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.gateway));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(())
            .map_err(|e| self.unreachable(format!("bad control request: {e}")))?;
        let failed =
            |e: &dyn std::fmt::Display| self.unreachable(format!("control request failed: {e}"));
        let live = self.sender().await?;
        let mut sender = live.sender.ready().await.map_err(|e| failed(&e))?;
        let (response, mut send) = sender
            .send_request(request, body.is_none())
            .map_err(|e| failed(&e))?;
        if let Some(body) = body {
            // h2 queues what exceeds the window and sends it as the gateway reads.
            send.send_data(body, true).map_err(|e| failed(&e))?;
        }
        let response = response.await.map_err(|e| failed(&e))?;
        let (parts, mut body) = response.into_parts();
        let mut collected = bytes::BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk =
                chunk.map_err(|e| self.unreachable(format!("control response failed: {e}")))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if collected.len() + chunk.len() > MAX_API_RESPONSE {
                return Err(self.unreachable(format!(
                    "control response larger than {MAX_API_RESPONSE} bytes"
                )));
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(ApiResponse {
            status: parts.status,
            headers: parts.headers,
            body: collected.freeze(),
        })
    }

    fn request(flow: &FlowRequest) -> Result<Request<()>, http::Error> {
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(flow.destination.to_string());
        let p = &flow.process;
        // Header values come from process names and SNI: drop what HTTP forbids.
        let clean = |v: &str| -> String { v.chars().filter(|c| !c.is_control()).collect() };
        if let Some(host) = &flow.host {
            builder = builder.header("x-rampart-host", clean(host));
        }
        builder = builder.header("x-rampart-process", clean(&p.name));
        if let Some(path) = p.path.as_deref().and_then(|p| p.to_str()) {
            builder = builder.header("x-rampart-process-path", clean(path));
        }
        if let Some(pid) = p.pid {
            builder = builder.header("x-rampart-pid", pid);
        }
        if let Some(uid) = p.uid {
            builder = builder.header("x-rampart-uid", uid);
        }
        if let Some(user) = &p.user {
            builder = builder.header("x-rampart-user", clean(user));
        }
        builder
            .header("x-rampart-steering", flow.action.as_str())
            .body(())
    }

    async fn open_flow(&self, flow: &FlowRequest) -> Result<FlowStream, AgentError> {
        let refused = |status: String| AgentError::GatewayRefused {
            gateway: self.gateway.clone(),
            target: flow.destination.to_string(),
            status,
        };
        let request = Self::request(flow).map_err(|e| refused(format!("bad request: {e}")))?;
        let live = self.sender().await?;
        let sent = async {
            let mut sender = live.sender.clone().ready().await?;
            let (response, send) = sender.send_request(request, false)?;
            Ok::<_, h2::Error>((response.await?, send))
        };
        let (response, send) = match sent.await {
            Ok(sent) => sent,
            Err(e) if e.is_reset() && e.is_remote() => {
                // The gateway refused this one stream; the connection is fine.
                return Err(refused(format!("stream reset: {e}")));
            }
            Err(e) => {
                // The connection broke under us: drop it so the next flow re-dials.
                if e.is_io() || e.is_go_away() || live.closed.load(Ordering::Relaxed) {
                    let mut link = self.link.lock().await;
                    if link
                        .live
                        .as_ref()
                        .is_some_and(|l| Arc::ptr_eq(&l.closed, &live.closed))
                    {
                        link.live = None;
                    }
                }
                return Err(self.unreachable(format!("tunnel stream failed: {e}")));
            }
        };
        if !response.status().is_success() {
            return Err(refused(response.status().to_string()));
        }
        Ok(FlowStream::H2(H2Flow::new(send, response.into_body())))
    }
}

impl GatewayTunnel for MtlsH2Tunnel {
    fn open<'a>(&'a self, flow: &'a FlowRequest) -> BoxFuture<'a, Result<FlowStream, AgentError>> {
        Box::pin(self.open_flow(flow))
    }

    fn is_up(&self) -> Option<bool> {
        Some(MtlsH2Tunnel::is_up(self))
    }
}

/// The task driving the tunnel's HTTP/2 connection; it ends when the connection does.
type Driver = tokio::task::JoinHandle<Result<(), h2::Error>>;

/// Why the connection driven by `driver` ended, from its result.
/// Whether a failed dial's reason is the gateway's `certificate_revoked` alert. The
/// alert reaches us as text (h2 and tokio-rustls keep only the message of the TLS
/// error by the time a driver ends), so the check is against rustls' own wording of
/// that alert, not a hand-written string.
fn names_revocation(reason: &str) -> bool {
    let alert =
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked).to_string();
    reason.contains(&alert)
}

fn end_reason(ended: Result<Result<(), h2::Error>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "closed".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("connection task failed: {e}"),
    }
}

/// Why a PING went unanswered.
enum Unanswered {
    /// The connection ended, for this reason.
    Ended(String),
    /// No answer in time; the connection has been aborted.
    TimedOut,
}

/// Sends a PING and waits up to `wait` for the answer. When the connection fails
/// instead, its driver's reason is returned (a refused device's TLS alert), not h2's
/// generic "broken pipe" for the PING.
async fn ping_answered(
    pings: &mut h2::PingPong,
    driver: &mut Driver,
    wait: Duration,
) -> Result<(), Unanswered> {
    let pong = tokio::select! {
        ended = &mut *driver => return Err(Unanswered::Ended(end_reason(ended))),
        pong = tokio::time::timeout(wait, pings.ping(h2::Ping::opaque())) => pong,
    };
    match pong {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => match tokio::time::timeout(Duration::from_secs(1), &mut *driver).await {
            Ok(ended) => Err(Unanswered::Ended(end_reason(ended))),
            Err(_) => {
                driver.abort();
                Err(Unanswered::Ended(e.to_string()))
            }
        },
        Err(_) => {
            driver.abort();
            Err(Unanswered::TimedOut)
        }
    }
}

/// Watches the live connection until it ends and returns why. While it lives, a PING
/// every `every` must be answered within as long again: a gateway that vanished
/// without a FIN or a reset (a dropped NAT entry, a cut link) would otherwise hold
/// every new flow on a dead connection until TCP gives up, many minutes later, instead
/// of letting the agent re-dial or take its fail mode. The wait is generous because a
/// PING queues behind the upload data already in the socket buffers, which on a slow
/// uplink can take seconds to drain.
async fn keep_alive(pings: &mut h2::PingPong, driver: &mut Driver, every: Duration) -> String {
    loop {
        tokio::select! {
            ended = &mut *driver => return end_reason(ended),
            _ = tokio::time::sleep(every) => {}
        }
        match ping_answered(pings, driver, every).await {
            Ok(()) => {}
            Err(Unanswered::Ended(reason)) => return reason,
            Err(Unanswered::TimedOut) => {
                return format!("no answer to a keep-alive PING in {every:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names_revocation;

    #[test]
    fn only_the_certificate_revoked_alert_counts_as_revocation() {
        assert!(names_revocation(
            "tunnel refused: received fatal alert: CertificateRevoked"
        ));
        assert!(!names_revocation(
            "tunnel refused: received fatal alert: BadCertificate"
        ));
        assert!(!names_revocation("TLS handshake failed: connection reset"));
    }
}
