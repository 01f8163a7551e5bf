//! A throw-away PostgreSQL 15 for one test: `initdb` into a temporary
//! directory, `postgres` on a loopback port from `free_port()` (socket in the
//! same directory), shut down and deleted on drop. As root (CI), both run as
//! the `postgres` system user, since PostgreSQL refuses to run as root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian 12 installs PostgreSQL 15 (package `postgresql-15`).
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Server settings: `Fast` for tests (no fsync), `Durable` for the bench
/// (PostgreSQL's defaults, with room for a bulk load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fast,
    Durable,
}

pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    mode: Mode,
    owner: Option<(u32, u32)>,
}

/// `postgres` on `dir/data` at `port`, logging to a file of its own.
fn spawn(dir: &Path, port: u16, mode: Mode, owner: Option<(u32, u32)>) -> (Child, PathBuf) {
    let data = dir.join("data");
    let log: PathBuf = dir.join(format!(
        "postgres-{port}-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    let log_file = std::fs::File::create(&log).expect("postgres log file");
    if let Some((uid, gid)) = owner {
        chown_tree(&log, uid, gid);
    }
    let mut cmd = command("postgres", owner);
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "max_connections=50"]);
    let settings: &[&str] = match mode {
        Mode::Fast => &[
            // No fsync: an operating-system crash is not what these tests
            // simulate. Commits stay synchronous: the outage tests stop the
            // server with an immediate shutdown (a crash of the process),
            // and an asynchronous commit acknowledged before the crash would
            // be lost with it, which the fleet cannot know (CI saw 800 of
            // 4,000 acknowledged rows vanish that way).
            "fsync=off",
            "full_page_writes=off",
        ],
        Mode::Durable => &[
            "shared_buffers=2GB",
            "max_wal_size=2GB",
            "checkpoint_timeout=15min",
            "wal_compression=on",
        ],
    };
    for s in settings {
        cmd.args(["-c", s]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file.try_clone().expect("log file"))
        .spawn()
        .expect("start postgres");
    (child, log)
}

fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres"))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// `program` from PostgreSQL's bin dir, as the postgres user when we are root.
fn command(program: &str, owner: Option<(u32, u32)>) -> Command {
    let path = Path::new(BIN).join(program);
    assert!(
        path.exists(),
        "{} is missing: install Debian's postgresql-15 (scripts/install-test-deps.sh)",
        path.display()
    );
    let mut cmd = Command::new(path);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown the PostgreSQL directory");
}

impl Postgres {
    pub fn start(mode: Mode) -> Postgres {
        let owner = if is_root() {
            Some(postgres_user().expect("no `postgres` user: install Debian's postgresql-15"))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("rampart-pg-")
            .tempdir()
            .expect("temporary directory");
        if let Some((uid, gid)) = owner {
            chown_tree(dir.path(), uid, gid);
        }
        let data = dir.path().join("data");
        let out = command("initdb", owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = crate::free_port();
            let (mut child, log) = spawn(dir.path(), port, mode, owner);
            match wait_ready(&mut child, &log) {
                Ok(()) => {
                    return Postgres {
                        child,
                        dir,
                        port,
                        mode,
                        owner,
                    }
                }
                Err(text) => {
                    // Most likely the port was taken between the pick and the bind.
                    last_log = text;
                    stop(&mut child);
                }
            }
        }
        panic!("postgres did not start:\n{last_log}");
    }

    /// Starts the server again (after [`Postgres::stop`]) on the same data
    /// and port: an outage and a recovery, for the fleet's failure tests.
    pub fn restart(&mut self) {
        stop(&mut self.child);
        let (mut child, log) = spawn(self.dir.path(), self.port, self.mode, self.owner);
        if let Err(text) = wait_ready(&mut child, &log) {
            stop(&mut child);
            panic!(
                "postgres did not start again on port {}:\n{text}",
                self.port
            );
        }
        self.child = child;
    }

    /// A URL for the `postgres` database (trust authentication on loopback).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    pub fn url_for(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The postmaster's pid (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

fn wait_ready(child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("ready to accept connections") {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}:\n{text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 30 s:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stop a server: SIGQUIT (immediate shutdown: its children stopped and
/// shared memory released), SIGKILL if it lingers.
fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
