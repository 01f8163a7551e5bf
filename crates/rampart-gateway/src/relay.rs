//! Moving tunnel bytes both ways. Between two TCP sockets the bytes go through
//! a kernel pipe with `splice(2)`, never through user space, so a tunnel costs
//! no buffer memory while idle and little CPU while busy; other streams fall
//! back to a buffered copy.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

/// Bytes moved by a finished relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_origin: u64,
    pub origin_to_client: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed their sending half.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
    Error(io::Error),
}

/// Bytes each pipe holds; the Linux default pipe size.
const PIPE_CHUNK: usize = 64 * 1024;

/// Relays between two TCP sockets with splice(2) until both sides close, one
/// fails, or nothing moves for `idle`.
pub async fn splice_bidirectional(
    client: &TcpStream,
    origin: &TcpStream,
    idle: Duration,
) -> (Transferred, RelayEnd) {
    let started = Instant::now();
    let last_activity = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let both = async {
        let (a, b) = tokio::join!(
            pump(client, origin, &up, &last_activity, started),
            pump(origin, client, &down, &last_activity, started)
        );
        a.and(b)
    };
    let end = tokio::select! {
        result = both => match result {
            Ok(()) => RelayEnd::Closed,
            Err(e) => RelayEnd::Error(e),
        },
        _ = idle_watchdog(&last_activity, started, idle) => RelayEnd::Idle,
    };
    let transferred = Transferred {
        client_to_origin: up.load(Ordering::Relaxed),
        origin_to_client: down.load(Ordering::Relaxed),
    };
    (transferred, end)
}

/// Buffer for bytes from `b` (the origin) to `a` (an agent's HTTP/2 stream, the only
/// caller): each write to the stream becomes one DATA frame and one hand-off between
/// tasks, so 64 KiB reads (the agent's maximum frame size) cost a quarter of the
/// frames, wake-ups and TLS records per byte of a download that 16 KiB reads cost.
/// Sized so that one frame is one loopback TCP segment: 65,385 bytes + the frame's
/// 9-byte header = 65,394 bytes of plaintext, four TLS records (3 full, 22 bytes of
/// overhead each) = 65,482 bytes on the wire, within the 65,483-byte MSS of a 64 KiB MTU
/// with timestamps. At a full 64 KiB the header spilled into a fifth, 9-byte record that
/// rustls (64 KiB send buffer) sent in a write of its own; at 64 KiB − 9 (four full
/// records, 65,624 bytes) every frame still left a 141-byte second segment. Either way an
/// extra segment, and receive-side work in the agent, per frame.
const B_TO_A_BUFFER: usize = 65_385;

/// Relays between any two async streams with a buffered copy (used where one
/// side is not a plain socket, e.g. TLS), closing after `idle` without a byte
/// read from either side.
pub async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> (Transferred, RelayEnd)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let started = Instant::now();
    let last_activity = AtomicU64::new(0);
    // Counted as written, so a relay that fails or idles out still reports what
    // it moved (the flow's event keeps its byte counts).
    let to_a = AtomicU64::new(0);
    let to_b = AtomicU64::new(0);
    let mut a = ActivityIo {
        inner: a,
        last_activity: &last_activity,
        written: &to_a,
        started,
    };
    let mut b = ActivityIo {
        inner: b,
        last_activity: &last_activity,
        written: &to_b,
        started,
    };
    let end = tokio::select! {
        result = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 16 * 1024, B_TO_A_BUFFER) => match result {
            Ok(_) => RelayEnd::Closed,
            Err(e) => RelayEnd::Error(e),
        },
        _ = idle_watchdog(&last_activity, started, idle) => RelayEnd::Idle,
    };
    let transferred = Transferred {
        client_to_origin: to_b.load(Ordering::Relaxed),
        origin_to_client: to_a.load(Ordering::Relaxed),
    };
    (transferred, end)
}

/// A stream that records when it last read a byte (for idle timeouts) and how
/// many bytes were written to it.
struct ActivityIo<'a, T: ?Sized> {
    inner: &'a mut T,
    last_activity: &'a AtomicU64,
    written: &'a AtomicU64,
    started: Instant,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for ActivityIo<'_, T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_activity
                .store(this.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for ActivityIo<'_, T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            this.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

async fn idle_watchdog(last_activity: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let since = started.elapsed().saturating_sub(last);
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

/// One direction: src → pipe → dst, then half-close dst when src reaches EOF.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &AtomicU64,
    last_activity: &AtomicU64,
    started: Instant,
) -> io::Result<()> {
    let (pipe_read, pipe_write): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(io::Error::from)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        // Fill the pipe from the source socket.
        let filled = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(
                    src.as_fd(),
                    None,
                    pipe_write.as_fd(),
                    None,
                    PIPE_CHUNK,
                    flags,
                )
                .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            // EOF: pass the half-close on (RFC 9112 §9.6 style), keep the other direction.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        // Drain the pipe into the destination socket.
        let mut in_pipe = filled;
        while in_pipe > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe_read.as_fd(), None, dst.as_fd(), None, in_pipe, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => in_pipe -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(filled as u64, Ordering::Relaxed);
        last_activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn splice_moves_bytes_both_ways_and_propagates_half_close() {
        let (mut client_side, client) = pair().await;
        let (origin, mut origin_side) = pair().await;
        let relay = tokio::spawn(async move {
            splice_bidirectional(&client, &origin, Duration::from_secs(5)).await
        });
        let payload = vec![7u8; 1_000_000];
        client_side.write_all(&payload).await.unwrap();
        client_side.shutdown().await.unwrap();
        let mut got = Vec::new();
        origin_side.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), payload.len());
        origin_side.write_all(b"reply").await.unwrap();
        origin_side.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_side.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
        let (transferred, end) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(transferred.client_to_origin, 1_000_000);
        assert_eq!(transferred.origin_to_client, 5);
    }

    #[tokio::test]
    async fn buffered_copy_stays_open_while_busy_and_closes_when_idle() {
        let (mut client_side, mut client) = pair().await;
        let (mut origin, mut origin_side) = pair().await;
        let relay = tokio::spawn(async move {
            copy_bidirectional(&mut client, &mut origin, Duration::from_millis(300)).await
        });
        // Busy for longer than the idle timeout: bytes every 100 ms.
        for _ in 0..6 {
            client_side.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            origin_side.read_exact(&mut one).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!relay.is_finished(), "a busy relay must not time out");
        origin_side.write_all(b"reply").await.unwrap();
        let mut reply = [0u8; 5];
        client_side.read_exact(&mut reply).await.unwrap();
        let (transferred, end) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");
        // An idle end keeps the counts of what moved before it.
        assert_eq!(transferred.client_to_origin, 6);
        assert_eq!(transferred.origin_to_client, 5);
    }

    #[tokio::test]
    async fn buffered_copy_that_fails_still_reports_the_bytes_it_moved() {
        let (mut client_side, mut client) = pair().await;
        let (mut origin, origin_side) = pair().await;
        let relay = tokio::spawn(async move {
            copy_bidirectional(&mut client, &mut origin, Duration::from_secs(5)).await
        });
        client_side.write_all(b"hello").await.unwrap();
        let mut origin_side = origin_side;
        let mut got = [0u8; 5];
        origin_side.read_exact(&mut got).await.unwrap();
        // The origin resets (RST: linger 0), then the client writes: the relay fails.
        socket2::SockRef::from(&origin_side)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(origin_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..20 {
            if client_side.write_all(&[0u8; 65536]).await.is_err() || relay.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (transferred, end) = tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("the relay did not end")
            .unwrap();
        assert!(matches!(end, RelayEnd::Error(_)), "{end:?}");
        assert!(
            transferred.client_to_origin >= 5,
            "the bytes before the failure were not counted: {transferred:?}"
        );
    }

    #[tokio::test]
    async fn idle_tunnel_is_closed_after_the_timeout() {
        let (_client_side, client) = pair().await;
        let (origin, _origin_side) = pair().await;
        let (_, end) = splice_bidirectional(&client, &origin, Duration::from_millis(200)).await;
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");
    }
}
