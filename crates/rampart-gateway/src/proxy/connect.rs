//! CONNECT tunnels: check the target, connect (directly or chained through an
//! upstream proxy), answer 200, then splice bytes both ways until both sides
//! close. The tunnel is logged once, when it ends.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::{FlowLog, ProxyBody};
use super::{blocked_response, error_response, Shared};
use crate::config::split_host_port;
use crate::connector::Connected;
use crate::policy_stage;
use crate::relay::{self, RelayEnd};
use crate::state::GatewayState;
use rampart_policy::Identity;

pub async fn tunnel(
    mut req: Request<Incoming>,
    state: &GatewayState,
    shared: &Shared,
    identity: &Identity,
    mut log: FlowLog,
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
    if host.contains('@') || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid CONNECT host",
            log,
            Some("bad_request"),
        );
    }
    if !state.config.proxy.connect_ports.contains(port) {
        let reason = format!(
            "CONNECT to port {port} is not allowed (allowed: {})",
            state.config.proxy.connect_ports
        );
        return error_response(StatusCode::FORBIDDEN, &reason, log, Some("denied_port"));
    }
    let stage =
        policy_stage::connection_stage(&state.policy, identity, &host, port, &mut log.record);
    if let Some(blocked) = &stage.blocked {
        // Inside a tunnel we cannot render a page the browser would show:
        // the CONNECT itself is refused with the reason.
        return blocked_response(blocked, None, None, log);
    }
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
    log.record.egress = Some(connected.egress.0.clone());
    log.record.server = Some(connected.peer);

    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = state.config.limits.tunnel_idle_timeout;
    let intercept = crate::intercept::Tunnel::for_connect(
        shared.state.load_full(),
        identity,
        log.record.client,
        &host,
        port,
        stage.decryption.clone(),
        shared,
    );
    // Awaiting the upgrade inside the service would deadlock: hyper completes it
    // only after this response is written.
    shared.tunnels.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run_tunnel(upgraded, connected, idle, intercept, &mut log).await,
            Err(e) => log.record.error = Some(format!("client upgrade failed: {e}")),
        }
        drop(log);
    });
    // The tunnel logs itself when it ends, so this response carries no log.
    Response::new(ProxyBody::empty(None))
}

async fn run_tunnel(
    upgraded: hyper::upgrade::Upgraded,
    connected: Connected,
    idle: std::time::Duration,
    intercept: Option<crate::intercept::Tunnel>,
    log: &mut FlowLog,
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
            let (mut client, mut origin) = match intercept {
                Some(tunnel) if parts.read_buf.is_empty() && leftover.is_empty() => {
                    match tunnel.run(client, origin, log).await {
                        crate::intercept::Handoff::Done => return,
                        crate::intercept::Handoff::Splice { client, origin } => (client, origin),
                    }
                }
                _ => (client, origin),
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
            let mut origin = origin;
            let mut client = TokioIo::new(upgraded);
            if !leftover.is_empty() {
                let _ = client.write_all(&leftover).await;
            }
            relay::copy_bidirectional(&mut client, &mut origin, idle).await
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
