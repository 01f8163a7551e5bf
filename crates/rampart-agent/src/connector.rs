//! Outbound sockets of the agent itself. Every one carries the agent's SO_MARK so the
//! steering table lets it through instead of redirecting it back to the agent.

use crate::error::AgentError;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Connects with an optional mark and a timeout.
#[derive(Debug, Clone, Copy)]
pub struct Connector {
    /// SO_MARK for outbound sockets; `None` in local-proxy mode (no table, no root).
    pub mark: Option<u32>,
    pub timeout: Duration,
}

impl Connector {
    /// Connect to one address.
    pub async fn connect_addr(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        match tokio::time::timeout(self.timeout, socket.connect(addr)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    /// Resolve `host:port` and connect to the first address that answers.
    pub async fn connect_host(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let addrs = tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name resolution timed out"))??;
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"));
        for addr in addrs {
            match self.connect_addr(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// A direct (bypass) connection to a destination.
    pub async fn direct(&self, destination: &Destination) -> Result<TcpStream, AgentError> {
        let result = match destination {
            Destination::Addr(addr) => self.connect_addr(*addr).await,
            Destination::Name(host, port) => self.connect_host(host, *port).await,
        };
        result.map_err(|source| AgentError::Direct {
            target: destination.to_string(),
            source,
        })
    }
}

/// Where a flow is going: an address (transparent mode knows the original destination)
/// or a name (local-proxy mode knows what the client asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Addr(SocketAddr),
    Name(String, u16),
}

impl Destination {
    pub fn port(&self) -> u16 {
        match self {
            Destination::Addr(addr) => addr.port(),
            Destination::Name(_, port) => *port,
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Addr(addr) => write!(f, "{addr}"),
            Destination::Name(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Destination::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// The destination a redirected connection was originally sent to (netfilter's
/// SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST, chosen by the accepted socket's family).
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv6() {
        socket.original_dst_ipv6()?
    } else {
        socket.original_dst()?
    };
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not IP"))
}
