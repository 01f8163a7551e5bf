//! The seam to the gateway: [`GatewayTunnel`] opens one byte stream per steered flow.
//! [`crate::MtlsH2Tunnel`] (enrolled agents) multiplexes flows over one mTLS HTTP/2
//! connection; [`HttpProxyTunnel`] chains to the gateway's HTTP proxy listener with
//! `CONNECT` (agents that are not enrolled).

use crate::connector::{Connector, Destination};
use crate::error::AgentError;
use crate::process::ProcessInfo;
use crate::steering::SteeringAction;
use std::future::Future;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any bidirectional byte stream (e.g. one HTTP/2 CONNECT stream of the mTLS tunnel).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A boxed byte stream.
pub type BoxedStream = Box<dyn AsyncStream>;

/// The upstream side of a flow. A plain TCP socket is kept as such so the relay can
/// splice it; anything else is relayed with buffered copies.
pub enum FlowStream {
    Tcp(TcpStream),
    Boxed(BoxedStream),
    /// A `CONNECT` stream of the mTLS HTTP/2 tunnel.
    H2(crate::h2_flow::H2Flow),
}

impl FlowStream {
    /// Send bytes the agent already read from the client (sniffed ClientHello, request head).
    pub async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            FlowStream::Tcp(stream) => stream.write_all(buf).await,
            FlowStream::Boxed(stream) => stream.write_all(buf).await,
            FlowStream::H2(flow) => flow.write_all(buf).await,
        }
    }
}

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything the gateway is told about a flow (the tunnel's metadata headers).
#[derive(Debug, Clone)]
pub struct FlowRequest {
    pub destination: Destination,
    /// Host from SNI / Host header / proxy request, when known.
    pub host: Option<String>,
    pub process: ProcessInfo,
    /// `Steer` or `TunnelBypass`.
    pub action: SteeringAction,
}

/// Opens flows to the gateway. `open` returning [`AgentError::GatewayUnreachable`]
/// triggers the fail mode; other errors refuse the one flow.
pub trait GatewayTunnel: Send + Sync + 'static {
    fn open<'a>(&'a self, flow: &'a FlowRequest) -> BoxFuture<'a, Result<FlowStream, AgentError>>;

    /// Whether a persistent connection to the gateway is up, for tunnels that keep one
    /// (`None`: one connection per flow, nothing to report).
    fn is_up(&self) -> Option<bool> {
        None
    }
}

/// `CONNECT` through the gateway's HTTP proxy listener, with the flow's metadata in
/// `X-Rampart-*` request headers (the same fields the tunnel will carry).
pub struct HttpProxyTunnel {
    gateway: String,
    connector: Connector,
}

const MAX_RESPONSE_HEAD: usize = 16 * 1024;

impl HttpProxyTunnel {
    /// `gateway` is `host:port` of the gateway's proxy listener.
    pub fn new(gateway: String, connector: Connector) -> Self {
        HttpProxyTunnel { gateway, connector }
    }

    fn connect_request(flow: &FlowRequest) -> String {
        let target = flow.destination.to_string();
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        let p = &flow.process;
        let header = |req: &mut String, name: &str, value: &str| {
            // Header values come from process names and SNI: drop anything that could
            // break the request framing.
            let clean: String = value.chars().filter(|c| !c.is_control()).collect();
            req.push_str(&format!("{name}: {clean}\r\n"));
        };
        if let Some(host) = &flow.host {
            header(&mut req, "X-Rampart-Host", host);
        }
        header(&mut req, "X-Rampart-Process", &p.name);
        if let Some(path) = p.path.as_deref().and_then(|p| p.to_str()) {
            header(&mut req, "X-Rampart-Process-Path", path);
        }
        if let Some(pid) = p.pid {
            header(&mut req, "X-Rampart-Pid", &pid.to_string());
        }
        if let Some(uid) = p.uid {
            header(&mut req, "X-Rampart-Uid", &uid.to_string());
        }
        if let Some(user) = &p.user {
            header(&mut req, "X-Rampart-User", user);
        }
        header(&mut req, "X-Rampart-Steering", flow.action.as_str());
        req.push_str("\r\n");
        req
    }

    async fn handshake(&self, flow: &FlowRequest) -> Result<FlowStream, AgentError> {
        let (host, port) = self
            .gateway
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .ok_or_else(|| AgentError::GatewayUnreachable {
                gateway: self.gateway.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not host:port"),
            })?;
        let unreachable = |source| AgentError::GatewayUnreachable {
            gateway: self.gateway.clone(),
            source,
        };
        let mut stream = self
            .connector
            .connect_host(host, port)
            .await
            .map_err(unreachable)?;
        stream
            .write_all(Self::connect_request(flow).as_bytes())
            .await
            .map_err(unreachable)?;
        // Read the response head byte-wise up to the blank line so no tunnel byte is
        // consumed; the head is tiny and this happens once per flow.
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_RESPONSE_HEAD {
                return Err(self.refused(flow, "response head too large".into()));
            }
            let n = stream.read(&mut byte).await.map_err(unreachable)?;
            if n == 0 {
                return Err(self.refused(flow, "closed before answering CONNECT".into()));
            }
            head.push(byte[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(_))
                if response.code.is_some_and(|c| (200..300).contains(&c)) =>
            {
                Ok(FlowStream::Tcp(stream))
            }
            Ok(httparse::Status::Complete(_)) => Err(self.refused(
                flow,
                format!(
                    "{} {}",
                    response.code.unwrap_or_default(),
                    response.reason.unwrap_or_default()
                ),
            )),
            Ok(httparse::Status::Partial) | Err(_) => {
                Err(self.refused(flow, "malformed CONNECT response".into()))
            }
        }
    }

    fn refused(&self, flow: &FlowRequest, status: String) -> AgentError {
        AgentError::GatewayRefused {
            gateway: self.gateway.clone(),
            target: flow.destination.to_string(),
            status,
        }
    }
}

impl GatewayTunnel for HttpProxyTunnel {
    fn open<'a>(&'a self, flow: &'a FlowRequest) -> BoxFuture<'a, Result<FlowStream, AgentError>> {
        Box::pin(self.handshake(flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn connect_request_carries_process_metadata_without_control_characters() {
        let flow = FlowRequest {
            destination: Destination::Addr("10.0.0.2:443".parse().expect("addr")),
            host: Some("origin.test".into()),
            process: ProcessInfo {
                pid: Some(12),
                name: "evil\r\nX: y".into(),
                path: Some(PathBuf::from("/usr/bin/curl")),
                uid: Some(0),
                user: Some("root".into()),
            },
            action: SteeringAction::TunnelBypass,
        };
        let req = HttpProxyTunnel::connect_request(&flow);
        assert!(req.starts_with("CONNECT 10.0.0.2:443 HTTP/1.1\r\n"));
        assert!(req.contains("X-Rampart-Host: origin.test\r\n"));
        assert!(req.contains("X-Rampart-Process: evilX: y\r\n"));
        assert!(req.contains("X-Rampart-Steering: tunnel-bypass\r\n"));
        assert!(req.contains("X-Rampart-Pid: 12\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }
}
