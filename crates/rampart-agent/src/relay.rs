//! Moving bytes between the client and the upstream once a flow is decided.
//!
//! TCP to TCP (bypass, and the HTTP proxy chain) uses `splice(2)` through a pipe: the
//! payload never enters user space, which keeps a bulk flow near direct speed and costs
//! no agent memory per flow. Other streams (the future TLS tunnel) use buffered copies.

use crate::tunnel::FlowStream;
use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Buffered-copy size per direction for non-TCP upstreams. Pages of an idle buffer are
/// never touched, so idle flows cost no resident memory.
const COPY_BUFFER: usize = 32 * 1024;
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
            _ => {
                tokio::io::copy_bidirectional_with_sizes(client, upstream, COPY_BUFFER, COPY_BUFFER)
                    .await
                    .map(|_| ())
            }
        },
        FlowStream::Boxed(upstream) => {
            tokio::io::copy_bidirectional_with_sizes(client, upstream, COPY_BUFFER, COPY_BUFFER)
                .await
                .map(|_| ())
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "relay ended with an error");
    }
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
}
