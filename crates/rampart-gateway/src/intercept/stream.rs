//! Client-side streams of an intercepted tunnel that is not a plain socket (an agent's
//! HTTP/2 CONNECT stream): the ClientHello cannot be peeked with `MSG_PEEK` there, so
//! it is read into a buffer and replayed ([`Prefixed`]). [`Counted`] meters the raw
//! bytes of a decrypted tunnel and when they last moved, for its record and its idle
//! timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rampart_tls::client_hello::{parse_client_hello, ClientHello, ClientHelloError, PEEK_LIMIT};
use rampart_tls::peek::PeekError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A stream whose first bytes were already read: they are returned again first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.prefix.len() {
            let rest = &this.prefix[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.prefix.len() {
                // The replayed hello is not needed any more; free it.
                this.prefix = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    // rustls hands over every queued TLS record at once; without these, the default
    // writes only the first record per syscall.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Reads until a complete ClientHello is buffered (at most [`PEEK_LIMIT`] bytes), with
/// the same outcomes as `rampart_tls::peek::peek_client_hello`; every byte read is
/// kept in the returned stream, so a spliced or decrypted tunnel loses nothing.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> (Prefixed<S>, Result<ClientHello, PeekError>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 4096];
    let result = loop {
        if buf.len() >= PEEK_LIMIT {
            break Err(PeekError::Parse(ClientHelloError::TooLarge {
                needed: buf.len() + 1,
                limit: PEEK_LIMIT,
            }));
        }
        let room = chunk.len().min(PEEK_LIMIT - buf.len());
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Err(_) => {
                break Err(PeekError::Timeout {
                    timeout,
                    have: buf.len(),
                })
            }
            Ok(Err(e)) => break Err(PeekError::Io(e)),
            Ok(Ok(0)) => break Err(PeekError::Closed { have: buf.len() }),
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_client_hello(&buf) {
            Ok(hello) => break Ok(hello),
            Err(ClientHelloError::NeedMoreData { .. }) => continue,
            Err(other) => break Err(PeekError::Parse(other)),
        }
    };
    (Prefixed::new(buf, stream), result)
}

/// Whether a stream's first bytes start an HTTP/1 request (`METHOD SP`): `None`
/// while too few bytes have arrived to tell.
fn starts_http_request(buf: &[u8]) -> Option<bool> {
    // The longest registered methods are short; 20 letters is generous.
    const MAX_METHOD: usize = 20;
    for (i, b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b' ' => return Some(i > 0),
            b'A'..=b'Z' | b'-' | b'_' => {}
            _ => return Some(false),
        }
    }
    if buf.len() > MAX_METHOD {
        Some(false)
    } else {
        None
    }
}

/// Reads until the first bytes show whether the client speaks HTTP/1 (a request
/// line starts), keeping every byte in the returned stream. Other protocols, and
/// clients that say nothing within `timeout` (server-speaks-first protocols), are
/// `Ok(false)`.
pub async fn read_http_start<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> (Prefixed<S>, Result<bool, PeekError>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 1024];
    let result = loop {
        if let Some(is_http) = starts_http_request(&buf) {
            break Ok(is_http);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break Ok(false),
            Ok(Err(e)) => break Err(PeekError::Io(e)),
            Ok(Ok(0)) => break Err(PeekError::Closed { have: buf.len() }),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    (Prefixed::new(buf, stream), result)
}

/// Bytes each way and the time of the last one, shared between a [`Counted`] stream
/// and whoever reports on it.
pub struct Activity {
    started: Instant,
    /// Milliseconds after `started` when a byte last moved.
    last: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Bytes read from the stream (from the client).
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes written to the stream (to the client).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once no byte has moved either way for `idle`.
    pub async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if quiet >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet).await;
        }
    }
}

/// A stream that counts its bytes into an [`Activity`].
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Counted<S> {
    /// Count what a write accepted as activity towards the idle timeout.
    fn count_written(&self, polled: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            if *n > 0 {
                self.activity
                    .written
                    .fetch_add(*n as u64, Ordering::Relaxed);
                self.activity.touch();
            }
        }
    }

    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Counted { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.read.fetch_add(n as u64, Ordering::Relaxed);
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count_written(&polled);
        polled
    }
    // As for `Prefixed`: several TLS records per syscall when the inner stream can.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count_written(&polled);
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_tls::client_hello::testing::{handshake_message, records, HelloSpec};
    use tokio::io::AsyncWriteExt;

    fn wire() -> Vec<u8> {
        records(
            &handshake_message(&HelloSpec {
                server_name: Some(b"replay.example".to_vec()),
                alpn: vec![b"h2".to_vec()],
                versions: vec![0x0304],
                extra_extensions: vec![],
            }),
            50,
        )
    }

    #[tokio::test]
    async fn the_hello_is_parsed_and_replayed_byte_for_byte() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut sent = wire();
        sent.extend_from_slice(b"after the hello");
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(37) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (mut replay, hello) = read_client_hello(server, Duration::from_secs(5)).await;
        assert_eq!(
            hello.unwrap().server_name.as_deref(),
            Some("replay.example")
        );
        drop(writer.await.unwrap());
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        let mut expected = wire();
        expected.extend_from_slice(b"after the hello");
        assert_eq!(all, expected);
    }

    #[tokio::test]
    async fn plain_text_is_not_tls_and_is_still_replayed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        drop(client);
        let (mut replay, hello) = read_client_hello(server, Duration::from_secs(5)).await;
        assert!(hello.unwrap_err().is_not_tls());
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silence_times_out_and_early_close_is_closed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&wire()[..10]).await.unwrap();
        let (_, hello) = read_client_hello(server, Duration::from_millis(100)).await;
        assert!(matches!(hello, Err(PeekError::Timeout { have: 10, .. })));
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let (_, hello) = read_client_hello(server, Duration::from_secs(5)).await;
        assert!(matches!(hello, Err(PeekError::Closed { have: 0 })));
    }

    #[tokio::test]
    async fn an_http_request_line_is_recognised_and_other_protocols_are_not() {
        assert_eq!(starts_http_request(b"GET / HTTP/1.1\r\n"), Some(true));
        assert_eq!(starts_http_request(b"M-SEARCH * HTTP/1.1"), Some(true));
        assert_eq!(starts_http_request(b"GE"), None);
        assert_eq!(starts_http_request(b"SSH-2.0-OpenSSH"), Some(false));
        assert_eq!(starts_http_request(b"\x16\x03\x01"), Some(false));
        assert_eq!(starts_http_request(b" GET"), Some(false));

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"POST /x HTTP/1.1\r\n").await.unwrap();
        let (mut replay, is_http) = read_http_start(server, Duration::from_secs(5)).await;
        assert!(is_http.unwrap());
        let mut line = [0u8; 18];
        replay.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"POST /x HTTP/1.1\r\n");
        // A server-speaks-first protocol: the client says nothing.
        let (_silent, server) = tokio::io::duplex(1024);
        let (_, is_http) = read_http_start(server, Duration::from_millis(50)).await;
        assert!(!is_http.unwrap());
    }

    #[tokio::test]
    async fn counted_streams_meter_both_ways_and_report_idleness() {
        let (mut peer, inner) = tokio::io::duplex(1024);
        let activity = Activity::new();
        let mut counted = Counted::new(inner, activity.clone());
        counted.write_all(b"12345").await.unwrap();
        peer.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        counted.read_exact(&mut got).await.unwrap();
        assert_eq!((activity.read(), activity.written()), (3, 5));
        tokio::time::timeout(
            Duration::from_secs(5),
            activity.idle(Duration::from_millis(50)),
        )
        .await
        .expect("an idle stream is reported idle");
    }
}
