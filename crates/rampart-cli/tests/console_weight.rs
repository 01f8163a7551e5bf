//! The console's first load stays light (issue 19: ≤ 300 KB transferred for
//! any page, no framework bundles): each page as a browser with an empty cache
//! fetches it — the HTML (head and body) and every asset it references —
//! measured uncompressed, an upper bound of what goes over the wire, with a
//! full page of events behind the search and alert lists.

#[path = "console/common.rs"]
mod common;
mod support;

use std::time::Duration;

use common::{Client, Console, ADMIN_PASSWORD};
use support::{curl, eventually};

/// The bound for any page's first load.
const FIRST_LOAD_MAX: usize = 300 * 1024;

/// Paths of the assets an HTML page links (`href="/assets/…"`, `src="/assets/…"`).
fn assets_of(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["href=\"/assets/", "src=\"/assets/"] {
        let mut rest = html;
        while let Some(at) = rest.find(marker) {
            let start = at + marker.len() - "/assets/".len();
            let end = rest[start..].find('"').map_or(rest.len(), |e| start + e);
            let path = rest[start..end].to_string();
            if !out.contains(&path) {
                out.push(path);
            }
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_console_page_loads_in_under_300_kb_with_a_full_page_of_events() {
    let c = Console::start();
    // More events than one page shows, with long URLs and alerts among them:
    // the lists render their largest page.
    let port = c._origin.port();
    let long = "x".repeat(400);
    let urls: Vec<String> = (0..60)
        .map(|i| {
            let host = if i % 3 == 0 {
                "watched.test"
            } else {
                "blocked.test"
            };
            format!("http://{host}:{port}/{long}/{i}?q={long}")
        })
        .collect();
    let mut args: Vec<&str> = vec!["-o", "/dev/null"];
    for url in &urls {
        args.push(url);
        args.push("-o");
        args.push("/dev/null");
    }
    args.truncate(args.len() - 2);
    curl(&c.server.proxy_url(), &args);
    assert!(
        eventually(Duration::from_secs(15), || c
            .server
            .search_events("", "json")
            .len()
            >= 60),
        "the requests never reached the store"
    );

    let admin = Client::new(&c.base());
    assert_eq!(admin.login("root", ADMIN_PASSWORD).status, 303);
    let first_event = c
        .server
        .search_events("", "json")
        .first()
        .and_then(|e| e["id"].as_str().map(str::to_string))
        .expect("an event id");
    let pages = [
        "/".to_string(),
        "/events".to_string(),
        "/events?range=24h".to_string(),
        "/alerts".to_string(),
        format!("/events/{first_event}"),
        "/policy".to_string(),
        "/devices".to_string(),
        "/login".to_string(),
    ];
    let mut figures = Vec::new();
    for page in &pages {
        let reply = admin.get(page);
        assert_eq!(reply.status, 200, "{page}: {reply:?}");
        let mut bytes = reply.headers.len() + reply.body.len();
        for asset in assets_of(&reply.body) {
            let a = admin.get(&asset);
            assert_eq!(a.status, 200, "{page} links {asset}: {a:?}");
            bytes += a.headers.len() + a.body.len();
        }
        // Nothing is loaded from elsewhere: a page is its HTML and our assets.
        assert!(
            !reply.body.contains("src=\"http") && !reply.body.contains("href=\"http"),
            "{page} loads something from another origin"
        );
        figures.push(format!("{page}: {bytes} B"));
        assert!(
            bytes <= FIRST_LOAD_MAX,
            "{page} weighs {bytes} bytes on first load (max {FIRST_LOAD_MAX})"
        );
    }
    println!("first load per page: {}", figures.join(", "));
}
