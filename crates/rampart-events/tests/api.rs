//! The events API through axum's router, without a socket.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rampart_events::api::{router, EventsApiState};
use rampart_events::{db_path, AlertSpec, FlowSummary, Severity, StoreWriter};
use serde_json::Value;
use tower::ServiceExt;

const T: i64 = 1_763_900_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    state: EventsApiState,
    alert_id: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&db_path(dir.path()), false).unwrap();
    let mut events: Vec<_> = (0..50)
        .map(|i| common::http(i, T + i as i64 * 10_000))
        .collect();
    // An alert on dev-3 in the middle of its activity.
    let mut f = FlowSummary::new(rampart_events::new_flow_id(), T + 250_000);
    f.device_uid = Some("dev-3".into());
    f.user = Some("alice".into());
    let alert = f.alert_event(
        &AlertSpec {
            title: "EICAR download".into(),
            desc: None,
            severity: Severity::High,
            types: vec!["malware".into()],
        },
        None,
    );
    let alert_id = alert.id().to_string();
    events.push(alert);
    w.insert(&events).unwrap();
    let state = EventsApiState::new(dir.path()).unwrap();
    Fixture {
        _dir: dir,
        state,
        alert_id,
    }
}

async fn get(f: &Fixture, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = router(f.state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn requests_without_the_admin_token_are_refused() {
    let f = fixture();
    let (s, body) = get(&f, "/api/v1/events", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let (s, _) = get(&f, "/api/v1/events", Some("wrong-token-wrong-token")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn search_filters_and_pages_with_a_cursor() {
    let f = fixture();
    let t = f.state.token().to_string();
    let (s, body) = get(&f, "/api/v1/events?q=user%20%3D%20alice&limit=4", Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    let first = body["events"].as_array().unwrap().clone();
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|e| e["actor"]["user"]["name"] == "alice"));
    let cursor = body["next_cursor"].as_str().unwrap().to_string();
    let (_, body2) = get(
        &f,
        &format!("/api/v1/events?q=user%20%3D%20alice&limit=100&cursor={cursor}"),
        Some(&t),
    )
    .await;
    let second = body2["events"].as_array().unwrap();
    // 10 alice http events plus her alert; no overlap between pages.
    assert_eq!(first.len() + second.len(), 11);
    assert!(body2["next_cursor"].is_null());
    let ids: std::collections::HashSet<_> = first
        .iter()
        .chain(second)
        .map(|e| e["metadata"]["uid"].clone())
        .collect();
    assert_eq!(ids.len(), 11);
}

#[tokio::test]
async fn bad_query_is_a_400_with_the_column() {
    let f = fixture();
    let t = f.state.token().to_string();
    let (s, body) = get(
        &f,
        "/api/v1/events?q=user%20%3D%20a%20and%20colour%20%3D%20red",
        Some(&t),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["column"], 14);
    let (s, _) = get(&f, "/api/v1/events?from=yesterday", Some(&t)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = get(&f, "/api/v1/events?cursor=nonsense", Some(&t)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn time_range_limits_results() {
    let f = fixture();
    let t = f.state.token().to_string();
    let (_, body) = get(
        &f,
        "/api/v1/events?from=2025-11-23T12:13:20Z&to=2025-11-23T12:14:00Z",
        Some(&t),
    )
    .await;
    assert_eq!(body["events"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn event_by_id_and_unknown_id() {
    let f = fixture();
    let t = f.state.token().to_string();
    let (s, body) = get(&f, &format!("/api/v1/events/{}", f.alert_id), Some(&t)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["class_uid"], 2004);
    let (s, _) = get(
        &f,
        "/api/v1/events/00000000-0000-0000-0000-000000000000",
        Some(&t),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn alerts_lists_only_alerts() {
    let f = fixture();
    let t = f.state.token().to_string();
    let (_, body) = get(&f, "/api/v1/alerts", Some(&t)).await;
    let alerts = body["events"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["finding_info"]["title"], "EICAR download");
}

#[tokio::test]
async fn alert_timeline_is_the_device_around_the_alert_in_order() {
    let f = fixture();
    let t = f.state.token().to_string();
    let (s, body) = get(
        &f,
        &format!("/api/v1/alerts/{}/timeline?window=1m", f.alert_id),
        Some(&t),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let events = body["events"].as_array().unwrap();
    let times: Vec<i64> = events.iter().map(|e| e["time"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(events.iter().all(|e| e["device"]["uid"] == "dev-3"));
    assert!(times
        .iter()
        .all(|t| (T + 190_000..=T + 310_000).contains(t)));
    assert!(events
        .iter()
        .any(|e| e["metadata"]["uid"] == f.alert_id.as_str()));
    // dev-3 events are every 70 s (i % 7 == 3): 240 s and 310 s fall inside ±60 s.
    assert_eq!(events.len(), 3);
    let (s, _) = get(&f, "/api/v1/alerts/nope/timeline", Some(&t)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
