//! The decrypted side of an intercepted tunnel: hyper serves the client
//! (HTTP/1.1 keep-alive, or HTTP/2 when ALPN chose h2) and each request is
//! checked (SNI match, the policy's request stage) and forwarded over the
//! verified TLS connection to the origin with the same protocol. Every
//! request gets its own flow record. Plain HTTP in an agent's tunnel is served
//! the same way, without TLS on either side ([`serve_plain`]).

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_tls::block_page::BlockPage;
use rampart_tls::origin_failure::OriginTlsFailure;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::stream::{Activity, Counted};
use super::{Fronting, FrontingExceptions, Tunnel};
use crate::access_log::{FlowRecord, ProcessRecord, TlsRecord};
use crate::flow::Flow;
use crate::policy_stage::{self, Blocked, FlowFacts};
use crate::proxy::body::{MeteredBody, ProxyBody};
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::{blocked_response, coaching_gate, error_response, proceed_response};
use crate::response_gate::{self, HeldRequest};
use crate::upload_gate;
use rampart_policy::EvalPoint;

/// The decrypted client side: TLS over the (metered) client stream of the tunnel.
type ClientTls<S> = tokio_rustls::server::TlsStream<Counted<S>>;
type OriginTlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A stream hyper can serve or drive.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The origin connection requests are sent on, in the protocol both sides negotiated.
enum Sender {
    /// HTTP/1.1 carries one request at a time; hyper's server calls the
    /// service sequentially per connection, so the lock is not contended.
    Http1(Mutex<http1::SendRequest<MeteredBody>>),
    Http2(http2::SendRequest<MeteredBody>),
}

/// What every request of one decrypted tunnel shares.
struct Session {
    tunnel_client: std::net::SocketAddr,
    user: Option<Arc<str>>,
    groups: Vec<String>,
    device: Option<Arc<str>>,
    process_record: Option<ProcessRecord>,
    /// The endpoint process of an agent flow, for the request stage.
    process: Option<rampart_policy::Process>,
    fronting: Arc<FrontingExceptions>,
    egress: Option<Arc<str>>,
    server: Option<std::net::SocketAddr>,
    state: Arc<crate::state::GatewayState>,
    identity: rampart_policy::Identity,
    access_log: crate::access_log::AccessLog,
    metrics: Arc<crate::metrics::Metrics>,
    events: Option<rampart_events::EventSender>,
    /// The name the client asked for in TLS (SNI, or the CONNECT host without SNI).
    host: String,
    port: u16,
    /// The TLS facts every request record carries; `None` for plain HTTP.
    tls: Option<TlsRecord>,
    coaching: Arc<crate::coaching::Coaching>,
    /// The client connection's flow id (the tunnel record's), shared by every request.
    flow_id: uuid::Uuid,
    /// The CONNECT host when the SNI (`host`) names another site and
    /// `tls.fronting = "alert"` let the tunnel through: policy sees both.
    fronted_connect_host: Option<String>,
}

impl Session {
    fn new(
        tunnel: &Tunnel,
        host: &str,
        tls: Option<TlsRecord>,
        log: Option<&Flow>,
        flow_id: uuid::Uuid,
    ) -> Self {
        Session {
            flow_id,
            tunnel_client: tunnel.client,
            user: log.and_then(|l| l.record.user.clone()),
            groups: log.map(|l| l.record.groups.clone()).unwrap_or_default(),
            device: log.and_then(|l| l.record.device.clone()),
            process_record: log.and_then(|l| l.record.process.clone()),
            process: tunnel.process.clone(),
            fronting: tunnel
                .interception
                .as_ref()
                .map(|i| i.fronting.clone())
                .unwrap_or_default(),
            egress: log.and_then(|l| l.record.egress.clone()),
            server: log.and_then(|l| l.record.server),
            state: tunnel.state.clone(),
            identity: tunnel.identity.clone(),
            access_log: tunnel.access_log.clone(),
            metrics: tunnel.metrics.clone(),
            events: tunnel.events.clone(),
            host: host.to_string(),
            fronted_connect_host: tunnel
                .fronting_alerted
                .then(|| tunnel.host.clone())
                .filter(|h| h != host),
            port: tunnel.port,
            tls,
            coaching: tunnel.coaching.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.url_for(&self.host, path)
    }

    fn url_for(&self, host: &str, path: &str) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let (scheme, default_port) = if self.tls.is_some() {
            ("https", 443)
        } else {
            ("http", 80)
        };
        if self.port == default_port {
            format!("{scheme}://{host}{path}")
        } else {
            format!("{scheme}://{host}:{}{path}", self.port)
        }
    }

    fn flow_log(&self, method: &str, url: String) -> Flow {
        let mut record = FlowRecord::new(self.tunnel_client, method, url);
        record.flow_id = Some(self.flow_id);
        record.user = self.user.clone();
        record.groups = self.groups.clone();
        record.device = self.device.clone();
        record.process = self.process_record.clone();
        record.egress = self.egress.clone();
        record.server = self.server;
        record.tls = self.tls.clone();
        Flow::new(
            record,
            self.access_log.clone(),
            self.metrics.clone(),
            self.events.clone(),
        )
    }
}

/// Serves the decrypted tunnel until either side closes or no byte moves for
/// `limits.tunnel_idle_timeout` (an idle decrypted tunnel ends like a spliced one).
pub(super) async fn serve<S: Io>(
    tunnel: &Tunnel,
    client: ClientTls<S>,
    origin: OriginTlsStream,
    host: &str,
    tls: TlsRecord,
    activity: &Activity,
    log: &mut Flow,
) {
    let h2 = client.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_requests(tunnel, client, origin, h2, host, Some(tls), activity, log).await;
}

/// Serves plain HTTP/1.1 of an agent's tunnel request by request, as for a
/// decrypted tunnel: the request stage sees every URL.
pub(super) async fn serve_plain<C: Io>(
    tunnel: &Tunnel,
    client: Counted<C>,
    origin: TcpStream,
    host: &str,
    activity: &Activity,
    log: &mut Flow,
) {
    serve_requests(tunnel, client, origin, false, host, None, activity, log).await;
}

#[allow(clippy::too_many_arguments)]
async fn serve_requests<C: Io, O: Io>(
    tunnel: &Tunnel,
    client: C,
    origin: O,
    h2: bool,
    host: &str,
    tls: Option<TlsRecord>,
    activity: &Activity,
    log: &mut Flow,
) {
    let origin_io = TokioIo::new(origin);
    let sender = if h2 {
        match http2::handshake(TokioExecutor::new(), origin_io).await {
            Ok((sender, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::Http2(sender)
            }
            Err(e) => {
                log.record.error = Some(format!("HTTP/2 with the origin failed: {e}"));
                return;
            }
        }
    } else {
        match http1::handshake(origin_io).await {
            Ok((sender, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Sender::Http1(Mutex::new(sender))
            }
            Err(e) => {
                log.record.error = Some(format!("HTTP/1.1 with the origin failed: {e}"));
                return;
            }
        }
    };
    let session = Arc::new(Session::new(tunnel, host, tls, Some(log), log.record.id));
    let sender = Arc::new(sender);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let session = session.clone();
        let sender = sender.clone();
        async move { Ok::<_, Infallible>(handle(req, &session, &sender).await) }
    });
    let io = TokioIo::new(client);
    let idle = tunnel.state.config.limits.tunnel_idle_timeout;
    let limits = &tunnel.state.config.limits;
    let served = async {
        if h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(limits.max_header_bytes.max(8192) as u32)
                .serve_connection(io, service)
                .await
        } else {
            // The same head limits as the proxy listener: a decrypted request
            // is no less hostile than a plain one.
            hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(idle)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .max_headers(limits.max_headers)
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    };
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "decrypted tunnel ended with an error");
            }
        }
        // Dropping the connection closes both TLS sessions.
        _ = activity.idle(idle) => {
            log.record.error = Some("tunnel idle timeout".into());
        }
    }
}

/// One decrypted request: SNI check, policy, forward.
async fn handle(req: Request<Incoming>, session: &Session, sender: &Sender) -> Response<ProxyBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let url = session.url(&path);
    let mut log = session.flow_log(req.method().as_str(), url.clone());
    let max_head = session.state.config.limits.max_header_bytes;
    if crate::head_limit::head_size(&req) > max_head {
        let reason = format!("request head larger than max_header_bytes ({max_head} bytes)");
        return error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &reason,
            log,
            Some("header_too_large"),
        );
    }

    // The name the request addresses must be the one the TLS session was
    // opened for; otherwise the SNI a filter saw is not the site being used.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        });
    let Some(authority) = authority else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "request without Host",
            log,
            Some("bad_request"),
        );
    };
    let requested = host_of(&authority);
    let fronting = session.fronting.check(&session.host, requested);
    // The site a request is for is the host it addresses: with a fronting
    // exception that is not the TLS name, and policy and logs must see it.
    let site = match &fronting {
        Fronting::Allowed(pattern) => {
            tracing::debug!(tls_name = %session.host, %requested, %pattern,
                "host differs from the TLS name; allowed by tls.fronting_exceptions");
            log.record.target = session.url_for(&requested.to_ascii_lowercase(), &path);
            requested.to_ascii_lowercase()
        }
        Fronting::Same | Fronting::Refused => session.host.clone(),
    };
    if fronting == Fronting::Refused {
        let opened = if session.tls.is_some() {
            "the TLS connection"
        } else {
            "the tunnel"
        };
        let reason = format!(
            "domain fronting: the request is for {requested} but {opened} was opened for {}",
            session.host
        );
        let mut response =
            error_response(StatusCode::FORBIDDEN, &reason, log, Some("domain_fronting"));
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }

    if req.uri().path() == crate::coaching::PROCEED_PATH {
        let query = req.uri().query();
        let (state, identity) = (&session.state, &session.identity);
        return proceed_response(
            &session.coaching,
            state,
            identity,
            &session.host,
            query,
            log,
        );
    }
    let facts = FlowFacts {
        identity: &session.identity,
        process: session.process.as_ref(),
        host: &site,
        dst_ip: site.parse().ok(),
        port: session.port,
        last: EvalPoint::Response,
        also_host: session.fronted_connect_host.as_deref(),
    };
    // A clone of a standard method allocates nothing (the request is consumed below).
    let method = req.method().clone();
    let stage = policy_stage::request_phase(
        &session.state.policy,
        &facts,
        method.as_str(),
        &path,
        &mut log.record,
    );
    if let Some(blocked) = &stage.blocked {
        let accept = req.headers().get(header::ACCEPT).cloned();
        return blocked_response(blocked, accept.as_ref(), Some(&url), log);
    }
    if let Some(coach) = &stage.coach {
        let accept = req.headers().get(header::ACCEPT).cloned();
        let (state, identity) = (&session.state, &session.identity);
        log = match coaching_gate(
            coach,
            &session.coaching,
            state,
            identity,
            &session.host,
            accept.as_ref(),
            log,
        ) {
            Ok(log) => log,
            Err(page) => return *page,
        };
    }

    let accept = req.headers().get(header::ACCEPT).cloned();
    // A WebSocket (or other) upgrade is passed through once the request was
    // allowed: the hop-by-hop Connection/Upgrade pair must reach the origin.
    let upgrade = req.headers().get(header::UPGRADE).cloned();
    let mut req = req;
    let client_on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, upgrade);
    }
    match sender {
        Sender::Http1(_) => {
            parts.uri = match Uri::builder().path_and_query(path.as_str()).build() {
                Ok(uri) => uri,
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid request path",
                        log,
                        Some("bad_request"),
                    )
                }
            };
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(&authority) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        Sender::Http2(_) => {
            parts.uri = match Uri::builder()
                .scheme("https")
                .authority(authority.as_str())
                .path_and_query(path.as_str())
                .build()
            {
                Ok(uri) => uri,
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "invalid request target",
                        log,
                        Some("bad_request"),
                    )
                }
            };
            parts.headers.remove(header::HOST);
        }
    }
    let held = HeldRequest {
        facts,
        method: method.as_str(),
        path: &path,
        accept: accept.clone(),
        url: url.clone(),
    };
    let (body, mut log) = match upload_gate::screen(
        &session.state,
        &held,
        stage.pending,
        body,
        &parts.headers,
        log,
    )
    .await
    {
        Ok(screened) => screened,
        Err(page) => return page,
    };
    let outgoing = Request::from_parts(parts, body);
    let sent = match sender {
        Sender::Http1(lock) => {
            let mut guard = lock.lock().await;
            match guard.ready().await {
                Ok(()) => guard.send_request(outgoing).await,
                Err(e) => Err(e),
            }
        }
        Sender::Http2(sender) => {
            let mut sender = sender.clone();
            match sender.ready().await {
                Ok(()) => sender.send_request(outgoing).await,
                Err(e) => Err(e),
            }
        }
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => {
            // A body the client could not send properly is the client's fault, not the origin's.
            let client_fault = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<crate::error::ClientBodyError>())
                .map(|b| b.to_string());
            if let Some(reason) = client_fault {
                return error_response(StatusCode::BAD_REQUEST, &reason, log, Some("client_body"));
            }
            return error_response(
                StatusCode::BAD_GATEWAY,
                &format!("origin request failed: {e}"),
                log,
                Some("origin"),
            );
        }
    };
    if let Some(reason) = crate::proxy::headers::conflicting_framing(response.headers()) {
        return error_response(StatusCode::BAD_GATEWAY, reason, log, Some("origin_framing"));
    }
    log.record.status = response.status().as_u16();
    log.record.content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_on_upgrade) = client_on_upgrade {
            let origin_on_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(client), Ok(origin)) = (client_on_upgrade.await, origin_on_upgrade.await)
                {
                    let mut client = TokioIo::new(client);
                    let mut origin = TokioIo::new(origin);
                    // Frames after the upgrade are opaque to the request-level policy.
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut origin).await;
                }
            });
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, ProxyBody::empty(Some(log)));
    }
    strip_hop_by_hop(response.headers_mut());
    if response_gate::needed(&session.state, stage.pending) {
        return response_gate::respond(&session.state, held, stage.pending, response, log).await;
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, ProxyBody::origin(body, log))
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`), without brackets.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The origin's certificate failed: every request in the tunnel gets the
/// explanation (HTML for browsers, text for others) with status 502.
pub(super) async fn serve_origin_failure<S: Io>(
    tunnel: &Tunnel,
    client: ClientTls<S>,
    host: &str,
    failure: OriginTlsFailure,
    tls: TlsRecord,
    flow_id: uuid::Uuid,
) {
    let failure = Arc::new(failure);
    serve_own_pages(
        tunnel,
        client,
        host,
        tls,
        flow_id,
        move |session, url, log| {
            let page = BlockPage::origin_certificate(
                &session.host,
                &failure,
                Some(url),
                &log.record.id.to_string(),
            );
            log.record.error = Some(failure.explain(&session.host));
            log.metrics().error("origin_certificate");
            (page, StatusCode::BAD_GATEWAY)
        },
    )
    .await
}

/// The connection phase blocked the tunnel: every request in it gets the
/// block page naming the rule (HTML for browsers, text for others).
pub(super) async fn serve_block_page<S: Io>(
    tunnel: &Tunnel,
    client: ClientTls<S>,
    host: &str,
    blocked: Blocked,
    tls: TlsRecord,
    flow_id: uuid::Uuid,
) {
    serve_own_pages(tunnel, client, host, tls, flow_id, move |_, url, log| {
        let page = BlockPage::policy(
            &blocked.rule,
            blocked.category.as_deref(),
            Some(url),
            &log.record.id.to_string(),
        );
        log.record.error = Some(format!("blocked by rule \"{}\"", blocked.rule));
        log.metrics().error("blocked");
        (page, StatusCode::FORBIDDEN)
    })
    .await
}

/// Serves a page of the gateway's own to every request of a decrypted tunnel
/// that has no origin behind it; each request is logged with the tunnel's flow id.
async fn serve_own_pages<S, F>(
    tunnel: &Tunnel,
    client: ClientTls<S>,
    host: &str,
    tls: TlsRecord,
    flow_id: uuid::Uuid,
    page_for: F,
) where
    S: Io,
    F: Fn(&Session, &str, &mut Flow) -> (BlockPage, StatusCode) + Send + Sync + 'static,
{
    let session = Arc::new(Session::new(tunnel, host, Some(tls), None, flow_id));
    let page_for = Arc::new(page_for);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let session = session.clone();
        let page_for = page_for.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            let url = session.url(&path);
            let mut log = session.flow_log(req.method().as_str(), url.clone());
            let (page, fallback) = page_for(&session, &url, &mut log);
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let rendered = page.render(accept);
            log.record.status = rendered.status;
            let mut response = Response::new(ProxyBody::full(rendered.body, Some(log)));
            *response.status_mut() = StatusCode::from_u16(rendered.status).unwrap_or(fallback);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(rendered.content_type),
            );
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok::<_, Infallible>(response)
        }
    });
    let io = TokioIo::new(client);
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_ports_and_brackets() {
        assert_eq!(host_of("shop.test:8443"), "shop.test");
        assert_eq!(host_of("shop.test"), "shop.test");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
    }
}
