//! The CLI's remote client against the API router served on a real loopback socket.

mod common;

use rampart_events::api::{router, EventsApiState};
use rampart_events::remote::RemoteClient;
use rampart_events::{db_path, StoreWriter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_client_searches_pages_and_fetches_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let events: Vec<_> = (0..30)
        .map(|i| common::http(i, 1_763_900_000_000 + i as i64 * 1000))
        .collect();
    w.insert(&events).unwrap();
    let state = EventsApiState::new(dir.path()).unwrap();
    let token = state.token().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let id = events[4].id().to_string();
    let result = tokio::task::spawn_blocking(move || {
        let c = RemoteClient::new(&format!("http://{addr}"), &token, None).unwrap();
        let first = c
            .search("user = alice and status < 500", None, None, 4, None)
            .unwrap();
        let rest = c
            .search(
                "user = alice and status < 500",
                None,
                None,
                100,
                first.next_cursor.as_deref(),
            )
            .unwrap();
        let one = c.event(&id).unwrap();
        let missing = c.event("nope").unwrap();
        let bad = c
            .search("user = = alice", None, None, 10, None)
            .err()
            .unwrap()
            .to_string();
        let denied = RemoteClient::new(&format!("http://{addr}"), "not-the-token-at-all", None)
            .unwrap()
            .search("", None, None, 1, None)
            .err()
            .unwrap()
            .to_string();
        (first, rest, one, missing, bad, denied)
    })
    .await
    .unwrap();
    let (first, rest, one, missing, bad, denied) = result;
    assert_eq!(first.events.len(), 4);
    assert_eq!(
        first.events.len() + rest.events.len(),
        6,
        "alice is every 5th of 30"
    );
    assert!(first
        .events
        .iter()
        .chain(&rest.events)
        .all(|e| e.user_name() == Some("alice")));
    assert_eq!(one.unwrap().id().to_string(), events[4].id().to_string());
    assert!(missing.is_none());
    assert!(bad.contains("400") && bad.contains("column 8"), "{bad}");
    assert!(denied.contains("401"), "{denied}");
}
