//! Optional busy polling before an async runtime's thread sleeps (`[runtime] busy_poll`).
//!
//! Why: on a virtual machine an idle vCPU halts, and waking it again costs a VM exit, an
//! interrupt and the host's scheduler — tens of microseconds per wake-up, paid at every
//! hop of a proxied request (client → proxy, proxy → origin, back). A thread that keeps
//! its CPU busy for a short while after its last piece of work takes the next packet
//! without that wake-up: the kernel only queues the readiness, and the thread sees it on
//! its next check. HAProxy's `busy-polling` exists for the same reason.
//!
//! How: tokio calls a hook just before its thread sleeps in `epoll_wait`. The hook spins
//! for at most the configured time, checking with a zero-timeout `poll(2)` whether the
//! runtime's own epoll instance has anything ready (an epoll descriptor is readable while
//! its ready list is non-empty; `poll` does not consume the events). It returns as soon as
//! something is ready, and tokio's `epoll_wait` then returns at once. Timers are not
//! watched: one due during the spin runs at most the budget late.
//!
//! The cost is CPU: each transition to idle burns up to the budget. Off by default.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

/// `[runtime]`: how the gateway's async runtimes wait for work.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Spin up to this long (e.g. `"50us"`) before a runtime thread sleeps; off when
    /// absent or zero. Read at start; a reload does not change it.
    #[serde(deserialize_with = "budget")]
    pub busy_poll: Option<Duration>,
}

/// A humantime duration no longer than [`MAX_BUSY_POLL`]: a longer spin is refused
/// where the file says it (file:line:column), not discovered at start.
fn budget<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let value: Option<Duration> = humantime_serde::deserialize(d)?;
    match value {
        Some(v) if v > MAX_BUSY_POLL => Err(serde::de::Error::custom(format!(
            "busy_poll {} is above the {} maximum",
            humantime_serde::re::humantime::format_duration(v),
            humantime_serde::re::humantime::format_duration(MAX_BUSY_POLL)
        ))),
        other => Ok(other),
    }
}

/// Largest accepted budget: beyond this a "short" spin is just a busy CPU.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Why busy polling could not be set up for a runtime.
#[derive(Debug, thiserror::Error)]
pub enum BusyPollError {
    #[error("busy_poll {0:?} is above the {MAX_BUSY_POLL:?} maximum")]
    TooLong(Duration),
    #[error("cannot find the runtime's epoll instance in /proc/self: {0}")]
    Proc(#[from] std::io::Error),
    #[error("no epoll instance watches the runtime's probe socket")]
    NotFound,
}

/// The epoll instance that watches descriptor `target`: found through
/// `/proc/self/fdinfo`, which lists every descriptor an epoll instance watches as a
/// `tfd:` line. tokio does not expose its driver's descriptor; a socket registered with
/// the runtime identifies it, whatever other epoll instances the process holds. tokio
/// holds two descriptors of its instance (mio's registry is a duplicate): either does.
fn epoll_watching(target: RawFd) -> Result<RawFd, BusyPollError> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // A descriptor closed since the listing reads as an error: not ours anyway.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:[eventpoll]" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let watches = info.lines().any(|line| {
            line.strip_prefix("tfd:")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<RawFd>().ok())
                == Some(target)
        });
        if watches {
            return Ok(fd);
        }
    }
    Err(BusyPollError::NotFound)
}

/// Builds a runtime with `builder`, and when `budget` is set, makes its threads spin up
/// to `budget` before sleeping. The runtime is built either way; the error (if any)
/// says why it does not busy-poll, for the caller to log.
pub fn build(
    builder: &mut tokio::runtime::Builder,
    budget: Option<Duration>,
) -> std::io::Result<(tokio::runtime::Runtime, Option<BusyPollError>)> {
    let Some(budget) = budget.filter(|b| !b.is_zero()) else {
        return Ok((builder.build()?, None));
    };
    if budget > MAX_BUSY_POLL {
        return Ok((builder.build()?, Some(BusyPollError::TooLong(budget))));
    }
    // The hook needs the descriptor, which exists only once the runtime is built, and
    // tokio takes hooks before: the hook reads it from a cell filled right after.
    let epoll = std::sync::Arc::new(std::sync::OnceLock::<RawFd>::new());
    let hook_epoll = epoll.clone();
    builder.on_thread_park(move || {
        if let Some(&fd) = hook_epoll.get() {
            spin_until_ready(fd, budget);
        }
    });
    let runtime = builder.build()?;
    // A probe socket registered with this runtime's reactor names its epoll instance.
    // `enter`, not `block_on`: runtimes are also built from within another one.
    let found = {
        let _entered = runtime.enter();
        tokio::net::UnixDatagram::unbound()
            .map_err(BusyPollError::from)
            .and_then(|probe| epoll_watching(probe.as_raw_fd()))
    };
    match found {
        Ok(fd) => {
            let _ = epoll.set(fd);
            Ok((runtime, None))
        }
        Err(e) => Ok((runtime, Some(e))),
    }
}

/// Spins until `epoll` has a ready event or `budget` has passed.
fn spin_until_ready(epoll: RawFd, budget: Duration) {
    let start = Instant::now();
    loop {
        if ready(epoll) {
            return;
        }
        if start.elapsed() >= budget {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Whether the epoll instance has events waiting, without taking them.
fn ready(epoll: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: epoll,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; `poll` only reads the descriptor's state.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    // An error (the descriptor gone at shutdown) ends the spin like an event would.
    n != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_with_busy_polling_finds_its_epoll_and_still_sleeps_and_wakes() {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        let (runtime, problem) =
            build(&mut builder, Some(Duration::from_micros(200))).expect("runtime");
        assert!(problem.is_none(), "{problem:?}");
        // Timers and I/O still work: a sleep longer than the budget, and a loopback
        // round trip whose answer arrives while the thread spins or sleeps.
        runtime.block_on(async {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(started.elapsed() >= Duration::from_millis(20));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            });
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            server.await.unwrap();
        });
    }

    #[test]
    fn the_spin_ends_at_once_when_something_is_ready_and_after_the_budget_otherwise() {
        // An epoll instance watching a pipe: ready once the pipe has a byte.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epoll >= 0);
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        assert_eq!(
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fds[0], &mut event) },
            0
        );
        let started = Instant::now();
        spin_until_ready(epoll, Duration::from_millis(5));
        assert!(started.elapsed() >= Duration::from_millis(5));
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        let started = Instant::now();
        spin_until_ready(epoll, Duration::from_secs(5));
        assert!(started.elapsed() < Duration::from_secs(1));
        // Still ready: the check took nothing away from the epoll instance.
        assert!(ready(epoll));
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
            libc::close(epoll);
        }
    }

    #[test]
    fn the_config_takes_short_budgets_and_refuses_long_ones() {
        let parse = |text: &str| toml::from_str::<RuntimeConfig>(text);
        assert_eq!(parse("").unwrap().busy_poll, None);
        assert_eq!(
            parse("busy_poll = \"150us\"").unwrap().busy_poll,
            Some(Duration::from_micros(150))
        );
        let err = parse("busy_poll = \"1s\"").unwrap_err().to_string();
        assert!(err.contains("above the 10ms maximum"), "{err}");
        assert!(parse("busy_poll = \"soon\"").is_err());
    }

    #[test]
    fn budgets_above_the_maximum_are_refused_but_the_runtime_runs() {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        let (runtime, problem) = build(&mut builder, Some(Duration::from_secs(1))).unwrap();
        assert!(matches!(problem, Some(BusyPollError::TooLong(_))));
        assert_eq!(runtime.block_on(async { 7 }), 7);
    }
}
