//! The PROXY protocol (v1 text and v2 binary, as HAProxy sends them with
//! `send-proxy` / `send-proxy-v2`) in front of the proxy and agent tunnel listeners.
//!
//! A load balancer in TCP mode hides the client: every connection comes from the
//! balancer's address. With the PROXY protocol the balancer writes the client's
//! address at the start of the connection, before any byte of the client's own. That
//! header is believed only from the configured balancers (`proxy_protocol_from`), and
//! from them it is mandatory: a balancer's connection without a valid header within
//! [`BALANCER_HEADER_TIMEOUT`] is closed, so a misconfigured balancer cannot make
//! every client look like the balancer. A header from any other address is refused
//! and counted (anyone could claim any address with one). The parsing itself is the
//! `ppp` crate's; this module decides what to believe and reads exactly the header's
//! bytes off the socket, leaving the client's first bytes unread, so the listeners
//! keep their plain `TcpStream` (splice and the TLS acceptor work on it as before).
//!
//! Format: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::fd_budget::RateLimitedWarning;
use crate::metrics::{Metrics, RejectedLabels};

/// A balancer writes its header as soon as it has connected, before the client's
/// first byte: a balancer's connection that has not sent one by then is closed.
pub const BALANCER_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest header accepted. v1 headers are at most 107 bytes (spec §2.1); a v2
/// header is 16 bytes plus addresses (at most 216) plus TLVs, which HAProxy keeps
/// to a few hundred bytes (unique id, SSL details). A balancer sending more is
/// refused rather than buffered.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The first eight bytes of the v2 signature (spec §2.2): no HTTP request or TLS
/// record starts with them.
const V2_SIGNATURE_START: &[u8] = b"\r\n\r\n\0\r\nQ";

/// What a connection turned out to be, once its header (if any) was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Serve the connection as coming from this client.
    Client(SocketAddr),
    /// The balancer's own connection (v2 `LOCAL`, v1 `PROXY UNKNOWN`): its health
    /// check. Closed without serving; the header alone proves the listener is up.
    HealthCheck,
}

/// Why a connection was closed before it was served.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "PROXY header from {peer}, which is not listed in proxy_protocol_from (never trusted)"
    )]
    Untrusted { peer: SocketAddr },
    #[error(
        "no PROXY header from balancer {peer} within {BALANCER_HEADER_TIMEOUT:?} \
         (send-proxy-v2 missing on the balancer's server line?)"
    )]
    Timeout { peer: SocketAddr },
    #[error("balancer {peer} closed the connection before sending a PROXY header")]
    Missing { peer: SocketAddr },
    #[error("invalid PROXY header from balancer {peer}: {reason}")]
    Invalid { peer: SocketAddr, reason: String },
    #[error("client {peer} sent nothing within {waited:?}")]
    Silent { peer: SocketAddr, waited: Duration },
    #[error("reading the start of the connection from {peer}: {source}")]
    Io {
        peer: SocketAddr,
        source: std::io::Error,
    },
}

impl Refusal {
    /// The `reason` label of `rampart_connections_rejected_total`; `None` for what is
    /// not about the header (a client that sent nothing, a reset socket).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Refusal::Untrusted { .. } => Some("proxy_header_untrusted"),
            Refusal::Timeout { .. } => Some("proxy_header_timeout"),
            Refusal::Missing { .. } => Some("proxy_header_missing"),
            Refusal::Invalid { .. } => Some("proxy_header_invalid"),
            Refusal::Silent { .. } | Refusal::Io { .. } => None,
        }
    }

    /// Counts the refusal under `listener` and logs it: untrusted headers at debug
    /// level (anyone can send them), a balancer's failures as a rate-limited warning
    /// (a misconfigured balancer is the operator's to fix, and floods must not flood
    /// the log).
    pub fn record(&self, metrics: &Metrics, listener: &str) {
        static BALANCER_WARNING: RateLimitedWarning = RateLimitedWarning::new();
        if let Some(reason) = self.reason() {
            metrics
                .connections_rejected
                .get_or_create(&RejectedLabels {
                    listener: listener.to_string(),
                    reason: reason.to_string(),
                })
                .inc();
        }
        match self {
            Refusal::Timeout { .. } | Refusal::Missing { .. } | Refusal::Invalid { .. } => {
                if let Some(held_back) = BALANCER_WARNING.check() {
                    tracing::warn!(listener, held_back, "connection refused: {self}");
                }
            }
            _ => tracing::debug!(listener, "connection refused: {self}"),
        }
    }
}

/// Whether `peer` is one of the configured balancers (IPv4-mapped IPv6 peers are
/// matched as IPv4, as the admission ACL does).
pub fn is_balancer(balancers: &[IpNet], peer: IpAddr) -> bool {
    let peer = crate::admission::canonical_ip(peer);
    balancers.iter().any(|net| net.contains(&peer))
}

/// Who is on the other end of `stream`, accepted from `peer`, given the configured
/// `balancers` (not empty: callers skip this when the feature is off). From a
/// balancer, the header is read and consumed; from anyone else, the first bytes are
/// looked at (not consumed) within `first_bytes_timeout` and a PROXY header is
/// refused.
pub async fn arrival(
    stream: &mut TcpStream,
    peer: SocketAddr,
    balancers: &[IpNet],
    first_bytes_timeout: Duration,
) -> Result<Arrival, Refusal> {
    if is_balancer(balancers, peer.ip()) {
        return match tokio::time::timeout(BALANCER_HEADER_TIMEOUT, read_header(stream, peer)).await
        {
            Err(_) => Err(Refusal::Timeout { peer }),
            Ok(Ok(Header::Proxy { client })) => Ok(Arrival::Client(client)),
            Ok(Ok(Header::Local)) => Ok(Arrival::HealthCheck),
            Ok(Err(refusal)) => Err(refusal),
        };
    }
    let mut first = [0u8; V2_SIGNATURE_START.len()];
    match tokio::time::timeout(first_bytes_timeout, stream.peek(&mut first)).await {
        Err(_) => Err(Refusal::Silent {
            peer,
            waited: first_bytes_timeout,
        }),
        Ok(Err(source)) => Err(Refusal::Io { peer, source }),
        Ok(Ok(n)) if starts_like_header(&first[..n]) => Err(Refusal::Untrusted { peer }),
        Ok(Ok(_)) => Ok(Arrival::Client(peer)),
    }
}

/// Whether the first bytes a client sent are (the start of) a PROXY header. Only the
/// first segment is looked at: a sender that splits the signature over several
/// segments is not counted, but is still never trusted (its bytes go to the HTTP or
/// TLS parser, which refuses them).
pub(crate) fn starts_like_header(first: &[u8]) -> bool {
    first.starts_with(b"PROXY ") || first.starts_with(V2_SIGNATURE_START)
}

/// A PROXY header, as far as the gateway cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The `PROXY` command for a TCP client: the client's address.
    Proxy { client: SocketAddr },
    /// v2 `LOCAL`, or v1 `PROXY UNKNOWN`: the balancer speaking for itself.
    Local,
}

/// What the bytes seen so far at the start of a balancer's connection say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A whole header of `len` bytes (the bytes after it are the client's).
    Complete { header: Header, len: usize },
    /// Every byte seen belongs to a header that has not ended yet.
    Incomplete,
    /// Not a header the gateway accepts.
    Invalid(String),
}

/// Parses the start of a balancer's connection (`ppp` does the format).
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let parsed = ppp::HeaderResult::parse(bytes);
    if parsed.is_incomplete() {
        // `ppp` also calls a v1 line with fields missing unfinished, even once its
        // line has ended: no later byte can complete it.
        if matches!(parsed, ppp::HeaderResult::V1(_)) && !v1_line_unfinished(bytes) {
            return Scan::Invalid("v1 line with fields missing".to_string());
        }
        return Scan::Incomplete;
    }
    match parsed {
        ppp::HeaderResult::V2(Ok(header)) => {
            let len = header.len();
            match header.command {
                ppp::v2::Command::Local => Scan::Complete {
                    header: Header::Local,
                    len,
                },
                ppp::v2::Command::Proxy => {
                    if header.protocol != ppp::v2::Protocol::Stream {
                        return Scan::Invalid(format!(
                            "v2 PROXY for protocol {:?}, not TCP",
                            header.protocol
                        ));
                    }
                    let client = match header.addresses {
                        ppp::v2::Addresses::IPv4(a) => {
                            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)
                        }
                        ppp::v2::Addresses::IPv6(a) => {
                            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)
                        }
                        // The spec lets a receiver fall back to the balancer's own
                        // address here; for ACLs that would turn every such client
                        // into the balancer, so it is refused instead.
                        other => {
                            return Scan::Invalid(format!(
                                "v2 PROXY without an IP client address ({:?})",
                                other.address_family()
                            ))
                        }
                    };
                    Scan::Complete {
                        header: Header::Proxy { client },
                        len,
                    }
                }
            }
        }
        // Without a CR in sight `ppp` takes all the input as the line, so a bare LF
        // at the end of what has arrived would pass for its end: only CRLF ends it.
        ppp::HeaderResult::V1(Ok(header)) if !header.header.ends_with("\r\n") => {
            if v1_line_unfinished(bytes) {
                Scan::Incomplete
            } else {
                Scan::Invalid("v1 line not ended by CRLF".to_string())
            }
        }
        ppp::HeaderResult::V1(Ok(header)) => {
            let len = header.header.len();
            let header = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Header::Proxy {
                    client: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
                },
                ppp::v1::Addresses::Tcp6(a) => Header::Proxy {
                    client: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
                },
                // HAProxy's v1 health checks (`check-send-proxy`) say UNKNOWN.
                ppp::v1::Addresses::Unknown => Header::Local,
            };
            Scan::Complete { header, len }
        }
        ppp::HeaderResult::V2(Err(e)) => Scan::Invalid(format!("v2: {e}")),
        // `ppp` judges a v1 line cut short at some points ("PROXY TCP4 1.2.3.4 ")
        // as wrong rather than unfinished; until its line ends, it is unfinished.
        ppp::HeaderResult::V1(Err(_)) if v1_line_unfinished(bytes) => Scan::Incomplete,
        ppp::HeaderResult::V1(Err(e)) => Scan::Invalid(format!("not a PROXY header: {e}")),
    }
}

/// The longest v1 line, CRLF included (spec §2.1).
const V1_MAX_LINE: usize = 107;

/// Whether `bytes` can still become a v1 line: a prefix of `PROXY ` or a line
/// starting with it, within the longest line, and not ended yet. The line ends
/// where `ppp` ends it: two bytes from its first CR.
fn v1_line_unfinished(bytes: &[u8]) -> bool {
    let prefix = bytes.len().min(6);
    let ended = bytes
        .iter()
        .position(|&b| b == b'\r')
        .is_some_and(|cr| cr + 2 <= bytes.len());
    bytes[..prefix] == b"PROXY "[..prefix] && bytes.len() < V1_MAX_LINE && !ended
}

/// The reader's next move, given `seen` (the bytes consumed so far, `consumed` of
/// them, followed by the bytes peeked after them).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The header is complete: consume `take` more bytes, exactly its rest.
    Done {
        header: Header,
        take: usize,
    },
    /// All of the peeked bytes belong to the header: consume them, peek again.
    Consume(usize),
    Refuse(String),
}

pub(crate) fn next_step(seen: &[u8], consumed: usize) -> Step {
    match scan(seen) {
        // A header never ends inside bytes that were already an unfinished header;
        // if the parser ever said so, refusing is the safe answer.
        Scan::Complete { len, .. } if len < consumed => {
            Step::Refuse("header ended inside bytes already read".to_string())
        }
        Scan::Complete { header, len } => Step::Done {
            header,
            take: len - consumed,
        },
        Scan::Incomplete if seen.len() >= MAX_HEADER_BYTES => {
            Step::Refuse(format!("longer than {MAX_HEADER_BYTES} bytes"))
        }
        Scan::Incomplete => Step::Consume(seen.len() - consumed),
        Scan::Invalid(reason) => Step::Refuse(reason),
    }
}

/// Reads one header off `stream`, and not one byte after it: bytes are peeked, and
/// consumed only once they are known to belong to the header (so the listener's
/// parser gets the client's bytes untouched, without a wrapper around the socket).
async fn read_header(stream: &mut TcpStream, peer: SocketAddr) -> Result<Header, Refusal> {
    let mut buf = vec![0u8; MAX_HEADER_BYTES];
    let mut consumed = 0;
    let io = |source| Refusal::Io { peer, source };
    loop {
        let peeked = stream.peek(&mut buf[consumed..]).await.map_err(io)?;
        if peeked == 0 {
            return Err(Refusal::Missing { peer });
        }
        match next_step(&buf[..consumed + peeked], consumed) {
            Step::Done { header, take } => {
                stream
                    .read_exact(&mut buf[consumed..consumed + take])
                    .await
                    .map_err(io)?;
                return Ok(header);
            }
            // Everything peeked is consumed, so the next peek waits for new bytes
            // instead of returning the same ones again.
            Step::Consume(n) => {
                stream
                    .read_exact(&mut buf[consumed..consumed + n])
                    .await
                    .map_err(io)?;
                consumed += n;
            }
            Step::Refuse(reason) => return Err(Refusal::Invalid { peer, reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn v2_ipv4(command: u8, client: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = ppp::v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(0x11); // AF_INET, STREAM
        h.extend_from_slice(&12u16.to_be_bytes());
        h.extend_from_slice(&client);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&3128u16.to_be_bytes());
        h
    }

    #[test]
    fn v2_proxy_header_gives_the_client_and_its_exact_length() {
        let mut bytes = v2_ipv4(1, [192, 0, 2, 7], 40000);
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            scan(&bytes),
            Scan::Complete {
                header: Header::Proxy {
                    client: "192.0.2.7:40000".parse().unwrap()
                },
                len
            }
        );
    }

    #[test]
    fn v2_local_is_a_health_check() {
        let mut bytes = ppp::v2::PROTOCOL_PREFIX.to_vec();
        bytes.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            scan(&bytes),
            Scan::Complete {
                header: Header::Local,
                len: 16
            }
        );
    }

    #[test]
    fn v2_proxy_without_an_address_is_refused() {
        let mut bytes = ppp::v2::PROTOCOL_PREFIX.to_vec();
        bytes.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert!(matches!(scan(&bytes), Scan::Invalid(_)));
    }

    #[test]
    fn v1_tcp4_and_unknown() {
        let text = b"PROXY TCP4 198.51.100.9 10.0.0.1 5555 3128\r\nGET";
        assert_eq!(
            scan(text),
            Scan::Complete {
                header: Header::Proxy {
                    client: "198.51.100.9:5555".parse().unwrap()
                },
                len: text.len() - 3
            }
        );
        assert_eq!(
            scan(b"PROXY UNKNOWN\r\n"),
            Scan::Complete {
                header: Header::Local,
                len: 15
            }
        );
    }

    #[test]
    fn a_plain_request_is_not_a_header() {
        assert!(matches!(
            scan(b"GET http://example.com/ HTTP/1.1\r\n"),
            Scan::Invalid(_)
        ));
        assert!(!starts_like_header(b"GET / HTTP/1.1\r\n"));
        assert!(!starts_like_header(b"\x16\x03\x01\x02\x00"));
        assert!(starts_like_header(b"PROXY TCP4 "));
        assert!(starts_like_header(&v2_ipv4(1, [1, 2, 3, 4], 1)));
    }

    #[test]
    fn every_split_of_a_header_reads_to_the_same_end() {
        let header = v2_ipv4(1, [203, 0, 113, 5], 1234);
        for cut in 1..header.len() {
            assert_eq!(
                next_step(&header[..cut], 0),
                Step::Consume(cut),
                "cut {cut}"
            );
            let mut with_data = header.clone();
            with_data.extend_from_slice(b"\x16\x03\x01");
            assert_eq!(
                next_step(&with_data, cut),
                Step::Done {
                    header: Header::Proxy {
                        client: "203.0.113.5:1234".parse().unwrap()
                    },
                    take: header.len() - cut
                }
            );
        }
    }

    #[test]
    fn every_split_of_a_v1_line_is_unfinished_until_its_end() {
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 3128\r\n";
        for cut in 1..line.len() {
            assert_eq!(scan(&line[..cut]), Scan::Incomplete, "cut {cut}");
        }
        assert!(matches!(scan(line), Scan::Complete { .. }));
        assert!(matches!(scan(b"PROXY TCP4 x\r\n"), Scan::Invalid(_)));
        // A bare LF does not end a line (found by the fuzz target).
        let unknown = b"PROXY UNKNOWN a \nb\r\n";
        for cut in 1..unknown.len() {
            assert_eq!(scan(&unknown[..cut]), Scan::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn an_endless_header_is_refused_at_the_cap() {
        let mut bytes = ppp::v2::PROTOCOL_PREFIX.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        bytes.resize(MAX_HEADER_BYTES, 0);
        assert!(matches!(next_step(&bytes, 0), Step::Refuse(_)));
    }

    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    #[tokio::test]
    async fn a_balancer_header_sent_in_pieces_leaves_the_client_bytes_unread() {
        let (mut client, mut server, peer) = pair().await;
        let header = v2_ipv4(1, [198, 51, 100, 1], 999);
        let writer = tokio::spawn(async move {
            for chunk in header.chunks(5) {
                client.write_all(chunk).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.write_all(b"CLIENT").await.unwrap();
            client
        });
        let balancers = ["127.0.0.1/32".parse().unwrap()];
        let arrival = arrival(&mut server, peer, &balancers, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            arrival,
            Arrival::Client("198.51.100.1:999".parse().unwrap())
        );
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 6];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"CLIENT");
    }

    #[tokio::test]
    async fn a_header_from_a_non_balancer_is_refused_and_other_clients_pass_untouched() {
        let balancers = ["127.0.0.2/32".parse().unwrap()];
        let (mut client, mut server, peer) = pair().await;
        client
            .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
            .await
            .unwrap();
        let refused = arrival(&mut server, peer, &balancers, Duration::from_secs(1)).await;
        assert!(matches!(refused, Err(Refusal::Untrusted { .. })));

        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let passed = arrival(&mut server, peer, &balancers, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(passed, Arrival::Client(peer));
        let mut first = [0u8; 3];
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET");
    }

    #[tokio::test]
    async fn a_balancer_without_a_header_is_refused() {
        let balancers = ["127.0.0.0/8".parse().unwrap()];
        let (mut client, mut server, peer) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let refused = arrival(&mut server, peer, &balancers, Duration::from_secs(1)).await;
        assert!(
            matches!(refused, Err(Refusal::Invalid { .. })),
            "{refused:?}"
        );
    }
}
