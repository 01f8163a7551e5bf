//! One steered flow as an HTTP/2 `CONNECT` stream of the mTLS tunnel, driven with the
//! h2 crate directly rather than through hyper's upgrade.
//!
//! Why: hyper's upgraded HTTP/2 stream copies every received frame into the reader's
//! buffer, and every write into a fresh allocation handed to a per-stream task through a
//! channel. Here a received frame (`Bytes`) goes to the client socket as it is, several
//! frames per `writev`, and client bytes go to the stream without a task hop. One bulk
//! download then costs the agent one user-space pass less per byte, and an idle flow
//! holds no per-stream task.

use crate::relay::{now_or_never, PooledBuffer};
use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use tokio::net::TcpStream;

/// Largest amount of already-received data gathered into one write to the client.
const MAX_GATHER: usize = 256 << 10;
/// At most this many frames per `writev` (each is one `IoSlice`).
const MAX_GATHER_FRAMES: usize = 32;

/// The two halves of one `CONNECT` stream whose response was a success.
pub struct H2Flow {
    send: SendStream<Bytes>,
    recv: RecvStream,
}

impl H2Flow {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Flow { send, recv }
    }

    /// Send bytes the agent already read from the client (request head, ClientHello).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        send_chunk(&mut self.send, Bytes::copy_from_slice(bytes)).await
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

/// Hands `chunk` to the stream once the peer's window has room for some of it: h2
/// buffers whatever exceeds the window, so waiting before each chunk keeps at most one
/// chunk queued per flow and a slow gateway slows the client down.
async fn send_chunk(send: &mut SendStream<Bytes>, chunk: Bytes) -> io::Result<()> {
    send.reserve_capacity(chunk.len());
    while send.capacity() == 0 {
        match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(h2_io(err)),
            None => return Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
    send.send_data(chunk, false).map_err(h2_io)
}

/// Moves bytes both ways until both directions have ended (or one fails).
pub(crate) async fn relay(client: &TcpStream, flow: &mut H2Flow) -> io::Result<()> {
    let H2Flow { send, recv } = flow;
    tokio::try_join!(
        client_to_gateway(client, send),
        gateway_to_client(recv, client)
    )
    .map(|_| ())
}

/// Client bytes per stream write: with the 9-byte frame header a full chunk is exactly
/// four 16 KiB TLS records (a whole 64 KiB chunk would leave a fifth record of 9 bytes
/// per frame). Needs the gateway's maximum frame size to be at least this (64 KiB);
/// h2 splits a chunk into frames of the size the gateway allows otherwise.
const SEND_CHUNK: usize = 4 * 16 * 1024 - 9;

/// Client → stream. A buffer is taken only while the client has bytes waiting.
async fn client_to_gateway(client: &TcpStream, send: &mut SendStream<Bytes>) -> io::Result<()> {
    loop {
        client.readable().await?;
        let mut buf = PooledBuffer::take();
        let limit = buf.len().min(SEND_CHUNK);
        match client.try_read(&mut buf[..limit]) {
            Ok(0) => {
                // Half-close: the gateway (and the origin) see the end of the request.
                return send.send_data(Bytes::new(), true).map_err(h2_io);
            }
            Ok(n) => {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                drop(buf);
                send_chunk(send, chunk).await?;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
}

/// One received item: data, the end of the stream, or an error. A reset with
/// `NO_ERROR` or `CANCEL` is the gateway ending the flow, not a failure.
fn received(item: Option<Result<Bytes, h2::Error>>) -> io::Result<Option<Bytes>> {
    match item {
        None => Ok(None),
        Some(Ok(bytes)) => Ok(Some(bytes)),
        Some(Err(err)) => match err.reason() {
            Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => Ok(None),
            _ => Err(h2_io(err)),
        },
    }
}

/// Stream → client. Every frame already received is written in one `writev`, and the
/// window is given back only once the client has taken the bytes, so a slow client
/// slows the gateway down instead of filling the agent's memory.
async fn gateway_to_client(recv: &mut RecvStream, client: &TcpStream) -> io::Result<()> {
    loop {
        let Some(first) = received(poll_fn(|cx| recv.poll_data(cx)).await)? else {
            let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
            return Ok(());
        };
        let mut total = first.len();
        let mut frames = Vec::with_capacity(4);
        frames.push(first);
        let mut ended = false;
        while total < MAX_GATHER && frames.len() < MAX_GATHER_FRAMES {
            match now_or_never(poll_fn(|cx| recv.poll_data(cx))).await {
                None => break,
                Some(item) => match received(item)? {
                    Some(bytes) => {
                        total += bytes.len();
                        frames.push(bytes);
                    }
                    None => {
                        ended = true;
                        break;
                    }
                },
            }
        }
        write_frames(client, &mut frames).await?;
        recv.flow_control().release_capacity(total).map_err(h2_io)?;
        if ended {
            let _ = socket2::SockRef::from(client).shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Writes every frame to the client, as few system calls as the socket allows.
async fn write_frames(client: &TcpStream, frames: &mut Vec<Bytes>) -> io::Result<()> {
    let mut start = 0;
    while start < frames.len() {
        if frames[start].is_empty() {
            start += 1;
            continue;
        }
        client.writable().await?;
        let slices: Vec<IoSlice<'_>> = frames[start..]
            .iter()
            .map(|frame| IoSlice::new(frame))
            .collect();
        match client.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut written) => {
                drop(slices);
                while written > 0 {
                    let frame = &mut frames[start];
                    let taken = written.min(frame.len());
                    frame.advance(taken);
                    written -= taken;
                    if frame.is_empty() {
                        start += 1;
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    frames.clear();
    Ok(())
}
