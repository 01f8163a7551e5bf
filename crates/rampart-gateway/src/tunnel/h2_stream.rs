//! One agent `CONNECT` stream as a byte stream (`AsyncRead + AsyncWrite`), over the h2
//! crate's stream halves, for the shared CONNECT path (interception, relay).
//!
//! Why not hyper's upgrade: hyper's upgraded HTTP/2 stream hands each write to a
//! per-stream task through a one-slot channel, so only one chunk is in flight between
//! the relay and the connection. Here a write goes straight into h2's send queue as long
//! as the agent's window and h2's per-stream send buffer have room, so several frames are
//! queued while the connection task encodes and encrypts the previous ones.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The two halves of an accepted `CONNECT` stream whose 200 has been sent.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// A received frame's bytes the reader has not taken yet.
    pending: Bytes,
    /// The agent ended its side (END_STREAM, or a reset that means "done").
    recv_ended: bool,
    /// END_STREAM was sent.
    send_ended: bool,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            recv_ended: false,
            send_ended: false,
        }
    }
}

fn h2_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        err.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(err)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            if this.recv_ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                None => this.recv_ended = true,
                Some(Ok(bytes)) => this.pending = bytes,
                // The agent resetting with NO_ERROR or CANCEL is its client going
                // away: the end of the stream, not a failure.
                Some(Err(err)) => match err.reason() {
                    Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => this.recv_ended = true,
                    _ => return Poll::Ready(Err(h2_io(err))),
                },
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // The window opens again only as the relay takes the bytes: a slow origin
        // slows the agent down instead of filling the gateway's memory.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = self.get_mut();
        if this.send_ended {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Ask for exactly this write on top of what is queued: h2 reserves window
        // only for requested bytes, so an idle stream holds none of the connection's
        // window, and the queue per stream stays under h2's send buffer limit.
        this.send.reserve_capacity(buf.len());
        while this.send.capacity() == 0 {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(err)) => return Poll::Ready(Err(h2_io(err))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = buf.len().min(this.send.capacity());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued data is written by the connection task without being asked.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.send_ended {
            this.send_ended = true;
            // The origin's half-close, passed on as END_STREAM; the other direction
            // keeps flowing.
            this.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
