//! Peeking the ClientHello from a socket without consuming it, so a do-not-decrypt
//! connection can still be spliced byte for byte to the origin.
use crate::client_hello::{parse_client_hello, ClientHello, ClientHelloError, PEEK_LIMIT};
use std::time::Duration;
use tokio::net::TcpStream;

/// Why no ClientHello could be peeked.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// The bytes are not TLS, or not a well-formed ClientHello, or too large.
    #[error(transparent)]
    Parse(ClientHelloError),
    /// The client sent nothing (or not enough) within the timeout.
    #[error("no complete ClientHello within {timeout:?} ({have} bytes received)")]
    Timeout { timeout: Duration, have: usize },
    /// The client closed the connection before the ClientHello was complete.
    #[error(
        "client closed the connection after {have} bytes, before the ClientHello was complete"
    )]
    Closed { have: usize },
    /// Reading the socket failed.
    #[error("peeking the ClientHello failed: {0}")]
    Io(#[from] std::io::Error),
}

impl PeekError {
    /// Whether the bytes seen are not TLS at all (tunnel or refuse by policy).
    pub fn is_not_tls(&self) -> bool {
        matches!(self, PeekError::Parse(ClientHelloError::NotTls { .. }))
    }
}

/// Peeks until a complete ClientHello is visible (at most [`PEEK_LIMIT`] bytes), without
/// consuming anything from `stream`.
///
/// `TcpStream::peek` keeps reporting the same bytes while nothing new arrives (readiness is
/// only cleared by `WouldBlock`), so between attempts that made no progress this waits a
/// short, growing delay instead of spinning. A ClientHello almost always arrives in one
/// segment, so the first attempt usually succeeds.
pub async fn peek_client_hello(
    stream: &TcpStream,
    timeout: Duration,
) -> Result<ClientHello, PeekError> {
    let mut buf = vec![0u8; PEEK_LIMIT];
    let mut have = 0usize;
    let attempt = async {
        let mut backoff = Duration::from_micros(200);
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(PeekError::Closed { have });
            }
            match parse_client_hello(&buf[..n]) {
                Ok(hello) => return Ok(hello),
                Err(ClientHelloError::NeedMoreData { .. }) if n >= PEEK_LIMIT => {
                    return Err(PeekError::Parse(ClientHelloError::TooLarge {
                        needed: n + 1,
                        limit: PEEK_LIMIT,
                    }))
                }
                Err(ClientHelloError::NeedMoreData { .. }) => {
                    if n > have {
                        have = n;
                        backoff = Duration::from_micros(200);
                    } else {
                        backoff = (backoff * 2).min(Duration::from_millis(20));
                    }
                    // A peer that half-closed after a partial hello shows up as a
                    // stalled peek; the timeout bounds it.
                    tokio::time::sleep(backoff).await;
                }
                Err(other) => return Err(PeekError::Parse(other)),
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(PeekError::Timeout { timeout, have }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_hello::testing::{handshake_message, records, HelloSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    fn wire() -> Vec<u8> {
        records(
            &handshake_message(&HelloSpec {
                server_name: Some(b"peek.example".to_vec()),
                alpn: vec![b"h2".to_vec()],
                versions: vec![0x0304],
                extra_extensions: vec![],
            }),
            40,
        )
    }

    #[tokio::test]
    async fn peek_leaves_every_byte_for_the_next_reader() {
        let (mut client, mut server) = pair().await;
        let wire = wire();
        client.write_all(&wire).await.unwrap();
        let hello = peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("peek.example"));
        let mut read = vec![0u8; wire.len()];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(read, wire);
    }

    #[tokio::test]
    async fn hello_arriving_in_slow_pieces_is_assembled() {
        let (mut client, server) = pair().await;
        let wire = wire();
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(30) {
                client.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            client
        });
        let hello = peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(hello.alpn, vec![b"h2".to_vec()]);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn silent_client_times_out_with_byte_count() {
        let (mut client, server) = pair().await;
        client.write_all(&wire()[..10]).await.unwrap();
        let err = peek_client_hello(&server, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PeekError::Timeout { have: 10, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn http_on_a_tls_port_is_not_tls() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.is_not_tls(), "{err:?}");
    }

    #[tokio::test]
    async fn client_closing_early_is_reported_as_closed() {
        let (client, server) = pair().await;
        drop(client);
        let err = peek_client_hello(&server, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, PeekError::Closed { have: 0 }), "{err:?}");
    }
}
