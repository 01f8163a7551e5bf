//! The events API: `GET /api/v1/events`, `/api/v1/events/{id}`, `/api/v1/alerts`,
//! `/api/v1/alerts/{id}/timeline`, behind the data dir's admin bearer token.
//!
//! The handlers live in `rampart_events::api` (beside the store and query
//! language they use, and tested there); this module is where the server
//! mounts them:
//!
//! ```ignore
//! let events = api::events::EventsApiState::new(&data_dir)?; // creates DATA_DIR/admin.token (0600) on first start
//! let app = axum::Router::new().merge(api::events::router(events));
//! ```

pub use rampart_events::api::{router, ApiError, Authorized, EventsApiState};
pub use rampart_events::token::{
    load_or_create as load_or_create_admin_token, token_path as admin_token_path,
};
