//! Moving bytes between the client and the upstream once a flow is decided.
//!
//! TCP to TCP (bypass, and the HTTP proxy chain) uses `splice(2)` through a pipe: the
//! payload never enters user space, which keeps a bulk flow near direct speed and costs
//! no agent memory per flow. Other streams (a stream of the mTLS HTTP/2 tunnel) use
//! copies through buffers that exist only while bytes are in flight: a thousand idle
//! tunneled flows then hold no relay buffers at all.

use crate::tunnel::FlowStream;
use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Buffered-copy size per direction for non-TCP upstreams: large enough that a bulk
/// flow moves several HTTP/2 frames per system call. Held per burst, not per flow.
const COPY_BUFFER: usize = 64 * 1024;
/// Pipe capacity asked for, and bytes moved per splice call. Larger than the 64 KiB
/// default so a bulk flow needs fewer wake-ups; pipe pages are kernel memory used only
/// while data is in flight, not agent RSS.
const SPLICE_CHUNK: usize = 512 * 1024;

/// Copy both directions until both sides close or one fails.
pub async fn relay(client: &mut TcpStream, upstream: &mut FlowStream) {
    let result = match upstream {
        FlowStream::Tcp(upstream) => match (Pipe::new(), Pipe::new()) {
            (Ok(up), Ok(down)) => {
                let upstream = &*upstream;
                let client = &*client;
                tokio::try_join!(
                    splice_one_way(client, upstream, &up),
                    splice_one_way(upstream, client, &down)
                )
                .map(|_| ())
            }
            // Out of pipes (descriptor limit): fall back to copying.
            _ => copy_both_ways(client, upstream).await,
        },
        FlowStream::Boxed(upstream) => copy_both_ways(client, upstream).await,
        FlowStream::H2(flow) => crate::h2_flow::relay(client, flow).await,
    };
    if let Err(err) = result {
        tracing::debug!(%err, "relay ended with an error");
    }
}

/// Copy both directions between a TCP client and any stream, with buffers taken only
/// while data flows.
async fn copy_both_ways<S>(client: &TcpStream, upstream: &mut S) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    tokio::try_join!(
        client_to_upstream(client, &mut to_upstream),
        upstream_to_client(&mut from_upstream, client)
    )
    .map(|_| ())
}

/// The client side has readiness without a buffer (`readable()`), so a buffer is
/// allocated only once bytes are waiting and freed as soon as the socket is drained.
async fn client_to_upstream<W>(client: &TcpStream, upstream: &mut W) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    loop {
        client.readable().await?;
        let mut buf = PooledBuffer::take();
        loop {
            match client.try_read(&mut buf) {
                Ok(0) => {
                    // Half-close: the gateway (and the origin) see the end of the request.
                    let _ = upstream.shutdown().await;
                    return Ok(());
                }
                Ok(n) => upstream.write_all(&buf[..n]).await?,
                // Drained: drop the buffer while the client is idle.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
    }
}

/// An HTTP/2 stream keeps received data inside until it is read, and a zero-length
/// read waits for that data without consuming it: the buffer is allocated only then,
/// filled with everything already received (several frames per write to the client),
/// and freed when nothing more is waiting.
///
/// For a stream whose zero-length read returns at once, the real read waits with the
/// buffer instead: like a plain buffered copy, never a busy loop.
async fn upstream_to_client<R>(upstream: &mut R, client: &TcpStream) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    loop {
        // Always 0 bytes: it only waits until data (or the end) is there.
        let _waited: usize = upstream.read(&mut []).await?;
        let mut buf = PooledBuffer::take();
        let mut filled = upstream.read(&mut buf).await?;
        let mut ended = filled == 0;
        while !ended && filled < buf.len() {
            match now_or_never(upstream.read(&mut buf[filled..])).await {
                Some(Ok(0)) => ended = true,
                Some(Ok(n)) => filled += n,
                Some(Err(err)) => return Err(err),
                None => break,
            }
        }
        write_all_to(client, &buf[..filled]).await?;
        if ended {
            let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Relay buffers between bursts. Freeing a 64 KiB buffer after each burst and
/// allocating the next one costs page faults and zeroing on every burst of a bulk flow;
/// a small shared pool keeps that away while idle flows still hold none. Bounded, so
/// at most `POOL_MAX` buffers stay resident after a spike.
static POOL: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());
const POOL_MAX: usize = 16;

/// A buffer from [`POOL`], returned to it on drop (also on error paths).
pub(crate) struct PooledBuffer(Option<Box<[u8]>>);

impl PooledBuffer {
    pub(crate) fn take() -> Self {
        let reused = POOL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        PooledBuffer(Some(
            reused.unwrap_or_else(|| vec![0u8; COPY_BUFFER].into_boxed_slice()),
        ))
    }
}

impl std::ops::Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }
}

impl std::ops::DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        }
    }
}

/// Poll `future` once: its output if ready now, `None` if it would wait (the future
/// is then dropped, which is safe for reads: nothing was consumed).
pub(crate) async fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

async fn write_all_to(client: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        client.writable().await?;
        match client.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Unprivileged users may be capped by /proc/sys/fs/pipe-max-size: keep the
        // default capacity then.
        let _ = fcntl_setpipe_size(&write, SPLICE_CHUNK);
        Ok(Pipe { read, write })
    }
}

/// Move bytes `from` → `to` through `pipe` until `from` reaches end of stream, then
/// half-close `to` so the peer sees the end too.
async fn splice_one_way(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<u64> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, &pipe.write, None, SPLICE_CHUNK, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        };
        if n == 0 {
            // The peer may already be gone; the other direction reports real errors.
            let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped reading",
                    ))
                }
                Ok(m) => left -= m,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        total += n as u64;
    }
}

/// Stop glibc from handing freed heap back to the kernel after every burst: a bulk
/// tunneled flow allocates and frees 16–64 KiB buffers (TLS records, HTTP/2 frames) at
/// a high rate, and with the default 128 KiB trim threshold each thread's heap shrinks
/// and grows again, paying a page fault and a page clear per 4 KiB. Up to 4 MiB of free
/// heap per arena stays mapped instead.
pub fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tunables; it is called once, before
        // the agent's tasks start allocating at a high rate.
        let ok = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20) };
        if ok != 1 {
            tracing::debug!("mallopt(M_TRIM_THRESHOLD) refused");
        }
    }
}

/// Raise the soft descriptor limit to the hard limit: each spliced flow holds two
/// sockets and two pipes, and the default soft limit (1024) would cap the agent at
/// about 250 concurrent flows.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::info!(%err, "could not raise the descriptor limit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn splice_relay_moves_bytes_both_ways_and_propagates_end_of_stream() {
        // client_app <-> (client, upstream) relay <-> server_app
        let (mut client_app, mut client) = pair().await;
        let (upstream, mut server_app) = pair().await;
        let relay_task = tokio::spawn(async move {
            let mut upstream = FlowStream::Tcp(upstream);
            relay(&mut client, &mut upstream).await;
        });
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_app.write_all(&sent).await.expect("write");
            client_app.shutdown().await.expect("shutdown");
            let mut answer = Vec::new();
            client_app
                .read_to_end(&mut answer)
                .await
                .expect("read answer");
            answer
        });
        let mut received = Vec::new();
        server_app.read_to_end(&mut received).await.expect("read");
        assert_eq!(received.len(), payload.len());
        assert!(received == payload);
        server_app.write_all(b"done").await.expect("answer");
        server_app.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("writer"), b"done");
        relay_task.await.expect("relay");
    }

    #[tokio::test]
    async fn buffered_relay_over_a_stream_moves_bytes_both_ways_and_ends_cleanly() {
        // client_app <-> client relay (in-memory stream, like an HTTP/2 tunnel stream)
        // <-> far_end. A duplex stream parks written data like an h2 stream does, so
        // the zero-length readiness read is exercised.
        let (mut client_app, mut client) = pair().await;
        let (near, mut far_end) = tokio::io::duplex(16 * 1024);
        let relay_task = tokio::spawn(async move {
            let mut upstream = FlowStream::Boxed(Box::new(near));
            relay(&mut client, &mut upstream).await;
        });
        let upload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
        let download: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up, down) = (upload.clone(), download.clone());
        let far = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut far_end);
            let (got, sent) = tokio::join!(
                async {
                    let mut got = Vec::new();
                    r.read_to_end(&mut got).await.expect("far read");
                    got
                },
                async {
                    w.write_all(&down).await.expect("far write");
                    w.shutdown().await.expect("far shutdown");
                }
            );
            let () = sent;
            got
        });
        let (mut r, mut w) = client_app.split();
        let (received, ()) = tokio::join!(
            async {
                let mut received = Vec::new();
                r.read_to_end(&mut received).await.expect("client read");
                received
            },
            async {
                w.write_all(&up).await.expect("client write");
                w.shutdown().await.expect("client shutdown");
            }
        );
        assert!(received == download, "download intact");
        assert!(far.await.expect("far") == upload, "upload intact");
        tokio::time::timeout(std::time::Duration::from_secs(10), relay_task)
            .await
            .expect("relay ends after both sides closed")
            .expect("relay");
    }

    #[tokio::test]
    async fn buffered_relay_works_with_a_stream_whose_empty_reads_return_at_once() {
        // A TCP stream boxed as a generic stream: its zero-length read is always ready,
        // so the relay must wait in the real read (and still deliver everything).
        let (mut client_app, mut client) = pair().await;
        let (upstream, mut server_app) = pair().await;
        let relay_task = tokio::spawn(async move {
            let mut upstream = FlowStream::Boxed(Box::new(upstream));
            relay(&mut client, &mut upstream).await;
        });
        client_app.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        server_app.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        // A quiet moment: the relay must be parked, not spinning, for this to pass
        // quickly on a loaded machine; then data flows again.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        server_app.write_all(b"pong").await.expect("answer");
        server_app.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        client_app
            .read_to_end(&mut answer)
            .await
            .expect("read answer");
        assert_eq!(answer, b"pong");
        drop(client_app);
        tokio::time::timeout(std::time::Duration::from_secs(10), relay_task)
            .await
            .expect("relay ends")
            .expect("relay");
    }
}
