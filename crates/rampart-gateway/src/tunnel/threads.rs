//! Agent connections run on single-threaded runtimes, one thread per CPU, each
//! connection (its HTTP/2 driver, its streams and their relays) wholly on one of them.
//!
//! Why: on the process's multi-threaded runtime the tasks of one bulk flow (origin
//! relay, hyper's per-stream send task, the connection driver that encrypts) land on
//! different workers, so every 64 KiB chunk wakes another thread and crosses CPU
//! caches. On one thread a 1 GB download through the tunnel took 3-8x fewer gateway
//! context switches and ~14 % less gateway CPU (alternated A/B, session 5). Connections
//! are spread round-robin, so many agents still use every CPU.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

/// Where agent connections run.
pub(super) struct ConnectionThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    tracker: TaskTracker,
}

impl ConnectionThreads {
    /// Starts `count` threads. They stop once this is dropped (the accept loop ended)
    /// and the connections they run have finished. `None` if no thread could be
    /// started: the caller then runs connections on its own runtime.
    /// `busy_poll`: see [`crate::busy_poll`].
    pub(super) fn start(count: usize, busy_poll: Option<std::time::Duration>) -> Option<Self> {
        let tracker = TaskTracker::new();
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            match start_thread(index, tracker.clone(), busy_poll) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "agent tunnel: cannot start a connection thread");
                    break;
                }
            }
        }
        if handles.is_empty() {
            return None;
        }
        Some(ConnectionThreads {
            handles,
            next: AtomicUsize::new(0),
            tracker,
        })
    }

    /// Runs `connection` on the next thread. Sockets are registered with the reactor
    /// of the runtime they are created on, so `connection` must create its own from a
    /// `std` socket.
    pub(super) fn spawn<F>(&self, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.tracker.spawn_on(connection, &self.handles[index]);
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        // No more connections: each thread ends once the tracked ones have finished.
        self.tracker.close();
    }
}

fn start_thread(
    index: usize,
    tracker: TaskTracker,
    busy_poll: Option<std::time::Duration>,
) -> std::io::Result<Handle> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    let (runtime, problem) = crate::busy_poll::build(&mut builder, busy_poll)?;
    if let Some(problem) = problem {
        tracing::warn!(%problem, "agent tunnel thread {index}: busy polling is off");
    }
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("rampart-tunnel-{index}"))
        .spawn(move || {
            // Ready once the tracker is closed (the accept loop ended) and every
            // connection has finished: on shutdown they close gracefully first.
            runtime.block_on(tracker.wait());
        })?;
    Ok(handle)
}

/// Threads for agent connections: one per CPU the process may use.
pub(super) fn default_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_run_round_robin_on_the_tunnel_threads_with_handed_over_sockets() {
        let threads = ConnectionThreads::start(2, None).expect("threads start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (names_tx, mut names_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            // The same hand-over as the accept loop: out of this runtime's reactor,
            // into the connection thread's.
            let accepted = accepted.into_std().unwrap();
            let names = names_tx.clone();
            threads.spawn(async move {
                let mut socket = tokio::net::TcpStream::from_std(accepted).unwrap();
                let mut ping = [0u8; 4];
                socket.read_exact(&mut ping).await.unwrap();
                // Named before answering: once the client has its pong the next
                // connection may finish first on the other thread.
                let name = std::thread::current().name().map(str::to_string);
                names.send(name).unwrap();
                socket.write_all(b"pong").await.unwrap();
            });
            client.write_all(b"ping").await.unwrap();
            let mut pong = [0u8; 4];
            client.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"pong");
        }
        drop(names_tx);
        let mut names = Vec::new();
        while let Some(name) = names_rx.recv().await {
            names.push(name.unwrap_or_default());
        }
        assert_eq!(
            names,
            [
                "rampart-tunnel-0",
                "rampart-tunnel-1",
                "rampart-tunnel-0",
                "rampart-tunnel-1"
            ]
        );
        drop(threads);
    }
}
