//! What an API connection is doing, for the listener's three waits:
//! - a request head that has started (or a new connection's first one) must be
//!   complete within `header_timeout`: a half-sent head holds a descriptor only
//!   that long (slowloris);
//! - a kept-alive connection may wait `keepalive_timeout` for the next request
//!   to start;
//! - while a request is served, no byte may stall either way for `idle_timeout`
//!   (a stalled upload, a client that stopped reading its answer).
//!
//! The first two used to be one timeout (hyper's header read timeout, which
//! also runs while a kept-alive connection waits): a client polling every
//! `header_timeout` then lost a request whenever it sent it just as the server
//! closed the connection, with no answer (found by the soak's searches every
//! 10 s). The waits are kept here, from the bytes the connection moves and the
//! requests the service sees, and the listener's loop enforces them.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A new connection, or head bytes of the next request arriving.
const HEAD: u8 = 0;
/// Kept alive after a response, no byte of the next request yet.
const AWAITING: u8 = 1;
/// From the complete head until the response body is done.
const SERVING: u8 = 2;

/// How long each wait may last (from `[api]`).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub header: Duration,
    pub keepalive: Duration,
    pub idle: Duration,
}

/// Shared by the stream (bytes moved), the service (requests) and the
/// connection's loop (the deadlines). Times are milliseconds since it opened.
#[derive(Clone)]
pub struct Activity {
    opened: Instant,
    state: Arc<State>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

struct State {
    last_ms: AtomicU64,
    phase: AtomicU8,
    head_started_ms: AtomicU64,
}

impl Activity {
    /// A connection just accepted: its first head is due `header` from now.
    pub fn new() -> Self {
        Activity {
            opened: Instant::now(),
            state: Arc::new(State {
                last_ms: AtomicU64::new(0),
                phase: AtomicU8::new(HEAD),
                head_started_ms: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) -> u64 {
        let now = self.now_ms();
        self.state.last_ms.store(now, Ordering::Relaxed);
        now
    }

    /// Bytes came in: the first of a kept-alive connection starts a head.
    fn read(&self) {
        let now = self.touch();
        if self
            .state
            .phase
            .compare_exchange(AWAITING, HEAD, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.state.head_started_ms.store(now, Ordering::Relaxed);
        }
    }

    /// The service has a complete head.
    pub fn serving(&self) {
        self.state.phase.store(SERVING, Ordering::Relaxed);
    }

    /// The response body is done: the connection waits for the next request.
    fn response_done(&self) {
        let _ = self.state.phase.compare_exchange(
            SERVING,
            AWAITING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn idle_for(&self) -> Duration {
        let last = self.state.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// The wait that ends first in the current phase: how long is left of it
    /// (zero when it has ended) and what it is.
    fn next_deadline(&self, waits: &Waits) -> (Duration, &'static str) {
        let idle_left = |limit: Duration| limit.saturating_sub(self.idle_for());
        match self.state.phase.load(Ordering::Relaxed) {
            HEAD => {
                let started = self.state.head_started_ms.load(Ordering::Relaxed);
                let head_for = Duration::from_millis(self.now_ms().saturating_sub(started));
                let head_left = waits.header.saturating_sub(head_for);
                let idle = idle_left(waits.idle);
                if head_left <= idle {
                    (head_left, "header timeout")
                } else {
                    (idle, "idle timeout")
                }
            }
            AWAITING => (idle_left(waits.keepalive), "keep-alive timeout"),
            _ => (idle_left(waits.idle), "idle timeout"),
        }
    }

    /// The wait that has run out, if one has.
    pub fn expired(&self, waits: &Waits) -> Option<&'static str> {
        let (left, what) = self.next_deadline(waits);
        left.is_zero().then_some(what)
    }

    /// How long to sleep before checking [`Activity::expired`] again. Never
    /// longer than the header timeout: a head that starts on a kept-alive
    /// connection moves the deadline earlier than the one slept towards, and
    /// must still be cut within about one header timeout.
    pub fn until_next_check(&self, waits: &Waits) -> Duration {
        self.next_deadline(waits)
            .0
            .min(waits.header)
            .max(Duration::from_millis(10))
    }
}

/// A stream that records [`Activity`] on every byte read or written.
pub struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl Tracked {
    pub fn new(inner: TcpStream, activity: Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that tells [`Activity`] when it is done: hyper drops it
/// once the last byte is written (or the connection failed), and only then
/// does the connection start waiting for its next request.
pub struct TrackedBody {
    inner: axum::body::Body,
    activity: Activity,
}

impl TrackedBody {
    pub fn new(inner: axum::body::Body, activity: Activity) -> Self {
        TrackedBody { inner, activity }
    }
}

impl Body for TrackedBody {
    type Data = <axum::body::Body as Body>::Data;
    type Error = <axum::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.activity.response_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAITS: Waits = Waits {
        header: Duration::from_secs(10),
        keepalive: Duration::from_secs(75),
        idle: Duration::from_secs(60),
    };

    #[test]
    fn each_phase_is_bounded_by_its_own_wait() {
        let a = Activity::new();
        // A new connection owes its first head within the header timeout.
        let (left, what) = a.next_deadline(&WAITS);
        assert_eq!(what, "header timeout");
        assert!(left <= WAITS.header && left > WAITS.header - Duration::from_secs(1));
        // Served: the idle timeout.
        a.serving();
        assert_eq!(a.next_deadline(&WAITS).1, "idle timeout");
        // Done and kept alive: the keep-alive wait, not the header timeout.
        a.response_done();
        let (left, what) = a.next_deadline(&WAITS);
        assert_eq!(what, "keep-alive timeout");
        assert!(left > WAITS.idle, "{left:?}");
        // A byte of the next request starts a head: the header timeout again.
        a.read();
        assert_eq!(a.next_deadline(&WAITS).1, "header timeout");
        assert_eq!(a.expired(&WAITS), None);
        let expired = Waits {
            header: Duration::ZERO,
            ..WAITS
        };
        assert_eq!(a.expired(&expired), Some("header timeout"));
    }

    #[test]
    fn a_head_outlasting_the_idle_timeout_is_cut_by_the_shorter_wait() {
        let a = Activity::new();
        let waits = Waits {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(1),
            ..WAITS
        };
        assert_eq!(a.next_deadline(&waits).1, "idle timeout");
    }

    #[test]
    fn a_body_dropped_before_the_head_of_the_next_request_only_ends_serving() {
        let a = Activity::new();
        // Dropped while still reading a head (no request served): no change.
        drop(TrackedBody::new(axum::body::Body::empty(), a.clone()));
        assert_eq!(a.next_deadline(&WAITS).1, "header timeout");
        a.serving();
        drop(TrackedBody::new(axum::body::Body::empty(), a.clone()));
        assert_eq!(a.next_deadline(&WAITS).1, "keep-alive timeout");
    }
}
