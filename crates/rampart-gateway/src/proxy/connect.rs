//! CONNECT tunnels, one path for both listeners (the HTTP proxy and the agent
//! tunnel): check the target, run the policy's connection stage (identity and,
//! for agent flows, the endpoint process), connect (directly or chained through
//! an upstream proxy), answer 200, then intercept TLS or relay bytes both ways
//! until both sides close. The tunnel is logged once, when it ends.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::{blocked_response, error_response, Shared};
use crate::access_log::TlsRecord;
use crate::config::split_host_port;
use crate::connector::Connected;
use crate::decision::TlsDecision;
use crate::flow::Flow;
use crate::intercept::{stream::Prefixed, Handoff, Replayed, TUNNEL_BYPASS_REASON};
use crate::policy_stage::{self, Blocked, FlowFacts};
use crate::relay::{self, RelayEnd};
use crate::state::GatewayState;
use rampart_policy::{DecryptionAction, EvalPoint, Identity, Process};

/// How a CONNECT differs between the listeners.
#[derive(Debug, Default)]
pub struct ConnectOptions {
    /// Enforce `proxy.connect_ports`. Agent flows leave ports to the policy: in
    /// "steer all" mode an endpoint tunnels any port, and rules decide.
    pub check_ports: bool,
    /// The endpoint process (agent flows), for rules with `processes` conditions.
    pub process: Option<Process>,
    /// The agent's steering action was `tunnel-bypass`: relayed, never decrypted.
    pub tunnel_bypass: bool,
    /// The name the policy sees when the CONNECT target is an address: the host
    /// the agent read from SNI or the Host header.
    pub policy_host: Option<String>,
    /// Serve plain HTTP/1 on `proxy.agent_http_ports` request by request (agent
    /// flows: proxy clients send plain HTTP in absolute form instead).
    pub inspect_plain_http: bool,
    /// Descriptor-budget units the tunnel takes beyond what its listener took
    /// at accept (`crate::fd_budget`): a proxy CONNECT its pipes, an agent
    /// stream its origin socket. Taken before the origin is contacted.
    pub descriptor_units: u32,
}

/// The proxy listener's CONNECT.
pub async fn tunnel(
    req: Request<Incoming>,
    state: &GatewayState,
    shared: &Shared,
    identity: &Identity,
    log: Flow,
) -> Response<ProxyBody> {
    let options = ConnectOptions {
        check_ports: true,
        descriptor_units: crate::fd_budget::SPLICE_PIPES,
        ..Default::default()
    };
    tunnel_with(req, state, shared, identity, log, options).await
}

/// A host name that may be connected to or matched (no userinfo, paths or spaces).
fn valid_host(host: &str) -> bool {
    !host.is_empty() && !host.contains('@') && !host.chars().any(|c| c.is_whitespace() || c == '/')
}

/// A CONNECT from either listener; `log` carries who asked (user, device, process).
pub async fn tunnel_with(
    mut req: Request<Incoming>,
    state: &GatewayState,
    shared: &Shared,
    identity: &Identity,
    mut log: Flow,
    options: ConnectOptions,
) -> Response<ProxyBody> {
    // RFC 9110 §9.3.6: the target of CONNECT is exactly host:port.
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| split_host_port(a.as_str()))
    else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "CONNECT target must be host:port",
            log,
            Some("bad_request"),
        );
    };
    if !valid_host(&host) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid CONNECT host",
            log,
            Some("bad_request"),
        );
    }
    if options.check_ports && !state.config.proxy.connect_ports.contains(port) {
        let reason = format!(
            "CONNECT to port {port} is not allowed (allowed: {})",
            state.config.proxy.connect_ports
        );
        return error_response(StatusCode::FORBIDDEN, &reason, log, Some("denied_port"));
    }
    let policy_host = options
        .policy_host
        .as_deref()
        .filter(|h| valid_host(h))
        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        .unwrap_or_else(|| host.clone());
    // CIDR rules match the address connected to, host rules the name.
    let dst_ip = host
        .trim_matches(['[', ']'])
        .parse()
        .ok()
        .or_else(|| policy_host.parse().ok());
    // Will this tunnel's requests be seen? Then rules on the URL (and on the
    // response) decide later; otherwise they are skipped now. The decryption
    // decision made here is confirmed (or changed) once the ClientHello is read.
    let tls_tunnel = !options.tunnel_bypass
        && state.config.proxy.tls_ports.contains(port)
        && state.interception.is_some();
    let plain_inspected = !options.tunnel_bypass
        && options.inspect_plain_http
        && state.config.proxy.agent_http_ports.contains(port);
    let mut facts = FlowFacts {
        identity,
        process: options.process.as_ref(),
        host: &policy_host,
        dst_ip,
        port,
        last: EvalPoint::Response,
        also_host: None,
    };
    let mut stage = policy_stage::connection_phase(&state.policy, &facts, &mut log.record);
    let will_decrypt = tls_tunnel
        && match &stage.decryption {
            Some((action, _)) => matches!(action, DecryptionAction::Decrypt),
            None => state
                .interception
                .as_ref()
                .is_some_and(|i| i.would_decrypt(&policy_host)),
        };
    if !will_decrypt && !plain_inspected {
        facts.last = EvalPoint::Connection;
        stage = policy_stage::connection_phase(&state.policy, &facts, &mut log.record);
    }
    if let Some(blocked) = stage.blocked {
        if will_decrypt {
            // A browser shows nothing useful for a refused CONNECT: decrypt
            // (without contacting the origin) and answer with the block page.
            if let Some(tunnel) = crate::intercept::Tunnel::for_connect(
                shared.state.load_full(),
                identity,
                options.process.as_ref(),
                false,
                log.record.client,
                &policy_host,
                port,
                stage.decryption.clone(),
                shared,
            ) {
                return block_inside_tls(req, tunnel, blocked, shared, log);
            }
        }
        return blocked_response(&blocked, None, None, log);
    }
    let Some(descriptors) = shared.descriptors.try_take(options.descriptor_units) else {
        // Only the proxy listener checks CONNECT ports; agent streams do not.
        let listener = if options.check_ports {
            "proxy"
        } else {
            "agent_tunnel"
        };
        return crate::fd_budget::refuse_connect(shared, listener, log);
    };
    let connected = match state.connector.route(&stage.egress) {
        Ok(route) => state.connector.open_tunnel(&route, &host, port).await,
        Err(e) => Err(e),
    };
    let connected = match connected {
        Ok(c) => c,
        Err(error) => {
            tracing::debug!(target = %log.record.target, %error, "CONNECT failed");
            return error_response(error.status(), &error.to_string(), log, Some(error.kind()));
        }
    };
    log.record.status = 200;
    // The origin's address, when connected directly: the ClientHello's name must resolve to it.
    let origin_ip = connected
        .egress
        .0
        .starts_with("direct")
        .then_some(connected.peer.ip());
    log.record.egress = Some(connected.egress.0.clone());
    log.record.server = Some(connected.peer);

    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = state.config.limits.tunnel_idle_timeout;
    let intercept = crate::intercept::Tunnel::for_connect(
        shared.state.load_full(),
        identity,
        options.process.as_ref(),
        options.tunnel_bypass,
        log.record.client,
        &policy_host,
        port,
        stage.decryption.clone(),
        shared,
    )
    .map(|tunnel| tunnel.with_connect_facts(stage.pending, &host, dst_ip, origin_ip));
    let mut intercept = match intercept {
        Some(tunnel) => Some(tunnel),
        None if options.inspect_plain_http && !options.tunnel_bypass => {
            crate::intercept::Tunnel::for_plain_http(
                shared.state.load_full(),
                identity,
                options.process.as_ref(),
                log.record.client,
                &policy_host,
                port,
                shared,
            )
            .map(|tunnel| tunnel.with_connect_facts(stage.pending, &host, dst_ip, origin_ip))
        }
        None => None,
    };
    // On the proxy listener the CONNECT's units are the splice pipes': a
    // tunnel that may be decrypted carries them, and gives them back if it is.
    let mut descriptors = Some(descriptors);
    if options.descriptor_units == crate::fd_budget::SPLICE_PIPES {
        if let Some(tunnel) = intercept.as_mut() {
            tunnel.pipes = descriptors.take();
        }
    }
    if options.tunnel_bypass && intercept.is_none() {
        // Not a TLS port (or interception off): nothing is peeked, but the
        // decision is still the agent's and is recorded as such.
        log.record.tls = Some(TlsRecord::new(
            TlsDecision::DoNotDecrypt,
            TUNNEL_BYPASS_REASON.into(),
        ));
    }
    // Awaiting the upgrade inside the service would deadlock: hyper completes it
    // only after this response is written.
    shared.tunnels.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run_tunnel(upgraded, connected, idle, intercept, &mut log).await,
            Err(e) => log.record.error = Some(format!("client upgrade failed: {e}")),
        }
        log.finish();
        // After the flow's sockets are closed (they were, with the tunnel).
        drop(descriptors);
    });
    // The tunnel logs itself when it ends, so this response carries no log.
    Response::new(ProxyBody::empty(None))
}

/// The CONNECT was blocked on a flow that would be decrypted: answer 200, then
/// serve the block page inside TLS to every request of the tunnel.
fn block_inside_tls(
    mut req: Request<Incoming>,
    tunnel: crate::intercept::Tunnel,
    blocked: Blocked,
    shared: &Shared,
    mut log: Flow,
) -> Response<ProxyBody> {
    log.record.status = 403;
    log.record.error = Some(format!(
        "blocked by rule \"{}\" (block page served inside TLS)",
        blocked.rule
    ));
    log.metrics().error("blocked");
    let on_upgrade = hyper::upgrade::on(&mut req);
    shared.tunnels.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) if parts.read_buf.is_empty() => {
                    let client = parts.io.into_inner();
                    Box::pin(tunnel.run_block_page(client, blocked, &mut log)).await
                }
                Ok(parts) => {
                    // The ClientHello came right behind the CONNECT head.
                    let client = Prefixed::new(parts.read_buf.to_vec(), parts.io.into_inner());
                    let client = crate::intercept::Replayed(client);
                    Box::pin(tunnel.run_block_page(client, blocked, &mut log)).await
                }
                Err(upgraded) => {
                    let client = crate::intercept::Replayed(TokioIo::new(upgraded));
                    Box::pin(tunnel.run_block_page(client, blocked, &mut log)).await
                }
            },
            Err(e) => log.record.error = Some(format!("client upgrade failed: {e}")),
        }
        log.finish();
    });
    Response::new(ProxyBody::empty(None))
}

async fn run_tunnel(
    upgraded: hyper::upgrade::Upgraded,
    connected: Connected,
    idle: std::time::Duration,
    intercept: Option<crate::intercept::Tunnel>,
    log: &mut Flow,
) {
    let Connected {
        stream: origin,
        leftover,
        ..
    } = connected;
    let (transferred, end) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let client = parts.io.into_inner();
            // TLS interception needs the ClientHello still unread on the socket
            // and an origin that has sent nothing yet.
            // `_pipes`: the splice pipes' units, held until the relay ends.
            let (mut client, mut origin, _pipes) = match intercept {
                Some(tunnel)
                    if !tunnel.plain_http && parts.read_buf.is_empty() && leftover.is_empty() =>
                {
                    // Boxed: the interception future is large (TLS on both sides, an
                    // HTTP server), and inline it would size every idle spliced
                    // tunnel's task to it.
                    match Box::pin(tunnel.run(client, origin, log)).await {
                        Handoff::Done => return,
                        Handoff::Splice {
                            client,
                            origin,
                            pipes,
                        } => (client, origin, pipes),
                    }
                }
                _ => (client, origin, None),
            };
            // Bytes the client sent right behind its CONNECT head, and bytes the
            // upstream proxy sent behind its 200, must not be lost.
            if !parts.read_buf.is_empty() {
                if let Err(e) = origin.write_all(&parts.read_buf).await {
                    log.record.error = Some(format!("writing to origin: {e}"));
                    return;
                }
            }
            if !leftover.is_empty() {
                if let Err(e) = client.write_all(&leftover).await {
                    log.record.error = Some(format!("writing to client: {e}"));
                    return;
                }
            }
            let (mut t, end) = relay::splice_bidirectional(&client, &origin, idle).await;
            t.client_to_origin += parts.read_buf.len() as u64;
            t.origin_to_client += leftover.len() as u64;
            (t, end)
        }
        Err(upgraded) => {
            // Not a socket (an agent's HTTP/2 stream): the ClientHello is read and
            // replayed instead of peeked, and bytes are copied instead of spliced.
            let client = TokioIo::new(upgraded);
            let handoff = match intercept {
                Some(tunnel) if leftover.is_empty() && tunnel.plain_http => {
                    Box::pin(tunnel.run_plain_http(client, origin, log)).await
                }
                Some(tunnel) if leftover.is_empty() => {
                    Box::pin(tunnel.run(Replayed(client), origin, log)).await
                }
                _ => Handoff::Splice {
                    client: Prefixed::new(Vec::new(), client),
                    origin,
                    pipes: None,
                },
            };
            let (mut client, mut origin) = match handoff {
                Handoff::Done => return,
                Handoff::Splice { client, origin, .. } => (client, origin),
            };
            if !leftover.is_empty() {
                if let Err(e) = client.write_all(&leftover).await {
                    log.record.error = Some(format!("writing to client: {e}"));
                    return;
                }
            }
            let (mut t, end) = relay::copy_bidirectional(&mut client, &mut origin, idle).await;
            t.origin_to_client += leftover.len() as u64;
            (t, end)
        }
    };
    log.record.bytes_from_client = transferred.client_to_origin;
    log.record.bytes_to_client = transferred.origin_to_client;
    match end {
        RelayEnd::Closed => {}
        RelayEnd::Idle => log.record.error = Some("tunnel idle timeout".into()),
        RelayEnd::Error(e) => log.record.error = Some(format!("tunnel ended with an error: {e}")),
    }
}
