//! The web console, served on the API listener at `/`: server-rendered HTML
//! (maud), one embedded CSS file and a few lines of embedded JS, local
//! accounts with roles, server-side sessions and CSRF tokens.
//!
//! Mounted by the server next to the JSON API:
//!
//! ```ignore
//! let console = console::ConsoleState::new(&data_dir, reloader, gateway, secure, events, tests);
//! console.set_devices(registry, isolation); // when the agent tunnel runs
//! let app = api.merge(console::router(console));
//! ```

pub mod acks;
pub mod audit;
pub mod auth;
pub mod devices;
pub mod events;
pub mod layout;
pub mod overview;
pub mod policy;
pub mod session;
pub mod users;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rampart_events::{EventSender, EventsError, StoreReader};

use crate::devices::DeviceRegistry;
use crate::isolation::IsolationService;
use crate::reload::Reloader;
use audit::AuditLog;
use session::{LoginLimiter, Sessions};
use users::UserStore;

/// How long a session lasts from login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// What the console's handlers share.
#[derive(Clone)]
pub struct ConsoleState {
    inner: Arc<Inner>,
}

struct Inner {
    users: UserStore,
    sessions: Sessions,
    limiter: LoginLimiter,
    audit: AuditLog,
    acks: acks::AckStore,
    readers: rampart_events::store::ReaderPool,
    reloader: Arc<Reloader>,
    gateway: rampart_gateway::GatewayHandle,
    /// Cookies get `Secure` unless the API listener is plain HTTP on loopback.
    secure_cookies: bool,
    /// `[policy] tests`: the cases the policy page runs against the serving policy.
    policy_tests: Option<PathBuf>,
    /// The device inventory and isolation, when the server runs the agent tunnel.
    devices: OnceLock<DeviceServices>,
}

/// What the device pages use: the inventory (and who is connected) and isolation.
pub struct DeviceServices {
    pub registry: Arc<DeviceRegistry>,
    pub isolation: Arc<IsolationService>,
}

/// Whether session cookies must carry `Secure` for an API listener on `listen`.
///
/// The API listener serves plain HTTP (it has no TLS of its own). Plain HTTP is
/// acceptable on loopback only; anywhere else the console is meant to sit behind a
/// TLS-terminating reverse proxy, so the cookies are marked `Secure` and a browser
/// talking plain HTTP to a non-loopback address never gets a session at all.
pub fn secure_cookies_for(listen: SocketAddr) -> bool {
    !listen.ip().is_loopback()
}

impl ConsoleState {
    pub fn new(
        data_dir: &Path,
        reloader: Arc<Reloader>,
        gateway: rampart_gateway::GatewayHandle,
        secure_cookies: bool,
        events: Option<EventSender>,
        policy_tests: Option<PathBuf>,
    ) -> ConsoleState {
        ConsoleState {
            inner: Arc::new(Inner {
                users: UserStore::new(data_dir),
                sessions: Sessions::new(SESSION_TTL),
                // 5 failures per user and 20 per source in 15 minutes.
                limiter: LoginLimiter::new(Duration::from_secs(15 * 60), 20, 5),
                audit: AuditLog::new(data_dir, events),
                acks: acks::AckStore::new(data_dir),
                readers: rampart_events::store::ReaderPool::new(
                    rampart_events::db_path(data_dir),
                    4,
                ),
                reloader,
                gateway,
                secure_cookies,
                policy_tests,
                devices: OnceLock::new(),
            }),
        }
    }

    /// Enables the device pages (the server runs the agent tunnel).
    pub fn set_devices(&self, registry: Arc<DeviceRegistry>, isolation: Arc<IsolationService>) {
        let _ = self.inner.devices.set(DeviceServices {
            registry,
            isolation,
        });
    }

    fn devices(&self) -> Option<&DeviceServices> {
        self.inner.devices.get()
    }

    /// Runs `f` with a pooled store reader on the blocking pool.
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StoreReader) -> Result<T, EventsError> + Send + 'static,
    ) -> Result<T, EventsError> {
        let inner = self.inner.clone();
        let db = inner.readers.db().to_path_buf();
        tokio::task::spawn_blocking(move || inner.readers.with(f))
            .await
            .map_err(|e| EventsError::Io {
                path: db,
                source: std::io::Error::other(e.to_string()),
            })?
    }
}

/// The console's routes. Every page but `/login` and the assets needs a session.
pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(overview::overview_page))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/events", get(events::search_page))
        .route("/events/export", get(events::export))
        .route("/events/{id}", get(events::detail_page))
        .route("/alerts", get(events::alerts_page))
        .route("/timeline", get(events::timeline_page))
        .route("/alerts/{id}/ack", post(events::acknowledge))
        .route("/policy", get(policy::policy_page))
        .route("/policy/reload", post(policy::reload))
        .route("/devices", get(devices::list_page))
        .route("/devices/{id}", get(devices::device_page))
        .route("/devices/{id}/isolate", post(devices::isolate))
        .route("/devices/{id}/release", post(devices::release))
        .route("/devices/{id}/revoke", post(devices::revoke))
        .route("/devices/tokens", post(devices::create_token))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .with_state(state)
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::secure_cookies_for;

    #[test]
    fn cookies_are_secure_unless_the_api_listens_on_loopback() {
        assert!(!secure_cookies_for("127.0.0.1:8080".parse().unwrap()));
        assert!(!secure_cookies_for("[::1]:8080".parse().unwrap()));
        assert!(secure_cookies_for("0.0.0.0:8080".parse().unwrap()));
        assert!(secure_cookies_for("192.0.2.10:8080".parse().unwrap()));
    }
}
