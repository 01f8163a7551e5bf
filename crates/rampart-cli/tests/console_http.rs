//! The web console over HTTP with curl: who may see what, cookies, CSRF,
//! login rate limiting, the events pages and export, the audit log.

#[path = "console/common.rs"]
mod common;
mod support;

use std::os::unix::fs::PermissionsExt;

use common::{Client, Console, ADMIN_PASSWORD, ANALYST_PASSWORD};

#[test]
fn pages_without_a_session_redirect_to_login_and_assets_do_not() {
    let c = Console::start();
    let anon = Client::new(&c.base());
    for path in [
        "/",
        "/events",
        "/alerts",
        "/policy",
        "/events/export?format=csv",
    ] {
        let r = anon.get(path);
        if path == "/" {
            // `/` forwards to /events, which then asks for a login.
            assert_eq!(r.status, 303, "{path}: {r:?}");
            continue;
        }
        assert_eq!(r.status, 303, "{path}: {r:?}");
        let location = r.header("location").join("");
        assert!(location.starts_with("/login?next="), "{path}: {location}");
    }
    assert_eq!(anon.get("/assets/console.css").status, 200);
    assert_eq!(anon.get("/login").status, 200);
    // The JSON API keeps its own bearer-token rule.
    assert_eq!(anon.get("/api/v1/events").status, 401);
}

#[test]
fn login_sets_a_strict_httponly_session_cookie_and_the_search_shows_the_blocked_request() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    let r = admin.login("root", ADMIN_PASSWORD);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), vec!["/events".to_string()]);
    let cookie = r
        .header("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("rampart_session="))
        .expect("session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    // Served over plain HTTP here: `Secure` would make browsers drop it.
    assert!(!cookie.contains("Secure"), "{cookie}");

    let page = admin.get_query("/events", &[("q", "action = block"), ("range", "1h")]);
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("blocked.test"), "{}", page.body);
    assert!(page.body.contains("blocked hosts"), "{}", page.body);
    assert!(!page.body.contains("ok.test"), "{}", page.body);

    let alerts = admin.get("/alerts?range=1h");
    assert!(alerts.body.contains("watched.test"), "{}", alerts.body);
    assert!(!alerts.body.contains("blocked.test"), "{}", alerts.body);
}

#[test]
fn a_query_error_is_shown_with_a_caret_under_the_column() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let r = admin.get_query("/events", &[("q", "user = alice and")]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("<pre class=\"error\""), "{}", r.body);
    assert!(r.body.contains("  user = alice and\n"), "{}", r.body);
    assert!(r.body.contains('^'), "{}", r.body);
}

#[test]
fn event_detail_has_the_ocsf_record_and_search_links_and_html_is_escaped() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let blocked = c.server.search_events("action = block", "json");
    let id = blocked[0]["id"].as_str().expect("event id").to_string();
    let r = admin.get(&format!("/events/{id}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("OCSF record"), "{}", r.body);
    assert!(r.body.contains("&quot;class_uid&quot;: 4002"), "{}", r.body);
    assert!(r.body.contains("search for this value"), "{}", r.body);
    assert!(
        r.body.contains("host%20%3D%20%22blocked.test%22"),
        "{}",
        r.body
    );
    assert_eq!(admin.get("/events/no-such-id").status, 404);
    // A query echoed back is escaped, never markup.
    let r = admin.get_query("/events", &[("q", "host = \"<script>x</script>\"")]);
    assert!(!r.body.contains("<script>x"), "{}", r.body);
    assert!(r.body.contains("&lt;script&gt;x"), "{}", r.body);
}

#[test]
fn export_gives_ndjson_ocsf_documents_and_csv_with_a_header() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let nd = admin.get_query(
        "/events/export",
        &[("q", "action = block"), ("format", "ndjson")],
    );
    assert_eq!(nd.status, 200, "{nd:?}");
    let lines: Vec<serde_json::Value> = nd
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("one OCSF document a line"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", nd.body);
    assert_eq!(lines[0]["class_uid"], 4002);
    let csv = admin.get_query("/events/export", &[("q", ""), ("format", "csv")]);
    assert_eq!(csv.status, 200);
    assert!(csv
        .header("content-disposition")
        .join("")
        .contains("events.csv"));
    let mut rows = csv.body.lines();
    assert!(
        rows.next().unwrap_or("").starts_with("time,"),
        "{}",
        csv.body
    );
    assert!(rows.count() >= 4, "{}", csv.body);
}

#[test]
fn forms_without_their_csrf_token_are_refused_403() {
    let c = Console::start();
    // Login without the double-submit token.
    let anon = Client::new(&c.base());
    let r = anon.post(
        "/login",
        &[("username", "root"), ("password", ADMIN_PASSWORD)],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let admin = Client::new(&c.base());
    assert_eq!(admin.login("root", ADMIN_PASSWORD).status, 303);
    assert_eq!(admin.post("/policy/reload", &[]).status, 403);
    assert_eq!(
        admin.post("/policy/reload", &[("csrf", "forged")]).status,
        403
    );
    assert_eq!(admin.post("/logout", &[]).status, 403);
    // Still logged in: the refused logout did nothing.
    assert_eq!(admin.get("/events").status, 200);
}

#[test]
fn an_analyst_reads_but_cannot_reload_the_policy_and_an_admin_reload_is_audited() {
    let c = Console::start();
    let analyst = Client::new(&c.base());
    assert_eq!(analyst.login("ana", ANALYST_PASSWORD).status, 303);
    let page = analyst.get("/policy");
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("Reload policy"), "{}", page.body);
    let csrf = page.csrf();
    let r = analyst.post("/policy/reload", &[("csrf", &csrf)]);
    assert_eq!(r.status, 403, "{r:?}");

    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let page = admin.get("/policy");
    assert!(page.body.contains("Reload policy"), "{}", page.body);
    let r = admin.post("/policy/reload", &[("csrf", &page.csrf())]);
    assert_eq!(r.status, 303, "{r:?}");
    assert!(
        r.header("location").join("").contains("reloaded=applied"),
        "{r:?}"
    );

    let audit_path = c.server.data_dir().join("console-audit.ndjson");
    let audit = std::fs::read_to_string(&audit_path).expect("audit log");
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(
        records.iter().any(|r| r["user"] == "root"
            && r["action"] == "policy.reload"
            && r["outcome"] == "ok"
            && r["detail"] == "applied"),
        "{audit}"
    );
    assert!(
        records.iter().any(|r| r["user"] == "ana"
            && r["action"] == "policy.reload"
            && r["outcome"] == "denied"),
        "{audit}"
    );
    let mode = std::fs::metadata(&audit_path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn repeated_wrong_passwords_lock_the_user_out_even_with_the_right_one() {
    let c = Console::start();
    let guesser = Client::new(&c.base());
    for _ in 0..5 {
        let r = guesser.login("root", "wrong-password");
        assert_eq!(r.status, 401, "{r:?}");
    }
    let r = guesser.login("root", ADMIN_PASSWORD);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(!r.header("retry-after").is_empty(), "{r:?}");
    // Another user from the same source is not locked out by root's failures.
    assert_eq!(
        Client::new(&c.base()).login("ana", ANALYST_PASSWORD).status,
        303
    );
}

#[test]
fn logout_ends_the_session_and_a_removed_user_is_out_at_the_next_request() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let page = admin.get("/events");
    assert_eq!(page.status, 200);
    let r = admin.post("/logout", &[("csrf", &page.csrf())]);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(admin.get("/events").status, 303);

    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    assert_eq!(analyst.get("/events").status, 200);
    let out = c.user_cmd(&["remove", "ana"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(analyst.get("/events").status, 303);

    let users = c.server.data_dir().join("console-users.json");
    let mode = std::fs::metadata(&users)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let list = c.user_cmd(&["list"], None);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("root") && text.contains("admin") && !text.contains("ana "),
        "{text}"
    );
}

#[test]
fn the_overview_counts_the_last_day_and_each_number_links_to_its_search() {
    let c = Console::start();
    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let r = admin.get("/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("<svg class=\"chart\""), "{}", r.body);
    assert!(r.body.contains("<strong>1</strong> blocks"), "{}", r.body);
    assert!(r.body.contains("<strong>1</strong> alerts"), "{}", r.body);
    // Bypasses per hour and top blocked apps have their places too.
    assert!(r.body.contains("<strong>0</strong> bypasses"), "{}", r.body);
    assert!(r.body.contains("Top blocked apps"), "{}", r.body);
    assert!(
        r.body
            .contains("href=\"/events?q=type%20in%20%28http%2C%20network%29%20and%20action%20%3D%20block&amp;range=24h\""),
        "{}",
        r.body
    );
    // Devices by state, each linking to the filtered device list.
    assert!(
        r.body
            .contains("href=\"/devices?state=online\"><strong>0</strong> online"),
        "{}",
        r.body
    );
    // The top blocked host links to the search for it.
    assert!(
        r.body.contains("host%20%3D%20%22blocked.test%22"),
        "{}",
        r.body
    );
}

#[test]
fn an_admin_acknowledges_an_alert_with_a_note_and_an_analyst_cannot() {
    let c = Console::start();
    let alert = c.server.search_events("type = alert", "json");
    let id = alert[0]["id"].as_str().expect("alert id").to_string();

    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    let page = analyst.get("/alerts");
    assert!(!page.body.contains("Acknowledge</button>"), "{}", page.body);
    let r = analyst.post(
        &format!("/alerts/{id}/ack"),
        &[("csrf", &page.csrf()), ("note", "mine")],
    );
    assert_eq!(r.status, 403, "{r:?}");

    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let page = admin.get("/alerts");
    assert!(page.body.contains("Acknowledge</button>"), "{}", page.body);
    let r = admin.post(&format!("/alerts/{id}/ack"), &[("note", "no csrf")]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = admin.post(
        &format!("/alerts/{id}/ack"),
        &[("csrf", &page.csrf()), ("note", "known scanner <b>lab</b>")],
    );
    assert_eq!(r.status, 303, "{r:?}");
    let page = admin.get("/alerts");
    assert!(page.body.contains("by root"), "{}", page.body);
    assert!(
        page.body.contains("known scanner &lt;b&gt;lab&lt;/b&gt;"),
        "{}",
        page.body
    );
    // Only alerts can be acknowledged.
    let blocked = c.server.search_events("action = block", "json");
    let not_alert = blocked[0]["id"].as_str().expect("id");
    let r = admin.post(
        &format!("/alerts/{not_alert}/ack"),
        &[("csrf", &page.csrf())],
    );
    assert_eq!(r.status, 404, "{r:?}");

    let acks = c.server.data_dir().join("console-acks.json");
    let mode = std::fs::metadata(&acks).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let audit =
        std::fs::read_to_string(c.server.data_dir().join("console-audit.ndjson")).expect("audit");
    assert!(
        audit.contains("\"action\":\"alert.acknowledge\"") && audit.contains(&id),
        "{audit}"
    );
}

#[test]
fn the_device_timeline_page_needs_a_session_and_lists_the_window() {
    let c = Console::start();
    let anon = Client::new(&c.base());
    assert_eq!(anon.get("/timeline?device=laptop-1&at=0").status, 303);
    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    let r = analyst.get("/timeline?device=laptop-1&at=1763900000000");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("Device laptop-1"), "{}", r.body);
    assert!(
        r.body
            .contains("0 events from 2025-11-23 12:08:20.000 to 2025-11-23 12:18:20.000"),
        "{}",
        r.body
    );
}

/// The `href` of the first link marked `rel="next"`, unescaped.
fn next_href(body: &str) -> String {
    let end = body
        .find("rel=\"next\"")
        .unwrap_or_else(|| panic!("no next-page link in {body}"));
    let start = body[..end].rfind("href=\"").expect("href before rel") + "href=\"".len();
    let close = body[start..].find('"').expect("closing quote") + start;
    body[start..close].replace("&amp;", "&")
}

#[test]
fn chosen_columns_fill_the_table_stay_when_paging_and_shape_the_csv_export() {
    let c = Console::start();
    // More allowed requests than one page holds, so there is an older page.
    let port = c._origin.port();
    let urls: Vec<String> = (0..55)
        .map(|i| format!("http://ok.test:{port}/page/{i}"))
        .collect();
    let mut args: Vec<&str> = Vec::new();
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    support::curl(&c.server.proxy_url(), &args);
    assert!(
        support::eventually(std::time::Duration::from_secs(15), || c
            .server
            .search_events("host = \"ok.test\"", "json")
            .len()
            >= 56),
        "the requests never reached the store"
    );
    let blocked = &c.server.search_events("action = block", "json")[0];
    let status = blocked["status"].as_i64().expect("blocked request status");
    let bytes_out = blocked["bytes_out"]
        .as_i64()
        .expect("blocked request bytes_out");

    let admin = Client::new(&c.base());
    admin.login("root", ADMIN_PASSWORD);
    let cols = "time,host,status,bytes_out,verdict";
    let page = admin.get_query(
        "/events",
        &[("q", "action = block"), ("range", "1h"), ("cols", cols)],
    );
    assert_eq!(page.status, 200, "{page:?}");
    let headers: Vec<&str> = page
        .body
        .match_indices("data-col=\"")
        .map(|(i, m)| {
            let rest = &page.body[i + m.len()..];
            &rest[..rest.find('"').expect("quote")]
        })
        .collect();
    // In the order asked, `verdict` read as its field `action`.
    assert_eq!(headers, ["time", "host", "status", "bytes_out", "action"]);
    for label in [
        "Time (UTC)</th>",
        ">Host</th>",
        ">Status</th>",
        ">Bytes out</th>",
        ">Action</th>",
    ] {
        assert!(page.body.contains(label), "{label}: {}", page.body);
    }
    for absent in [
        ">Type</th>",
        ">User</th>",
        ">Device</th>",
        ">Rule</th>",
        "blocked hosts",
    ] {
        assert!(!page.body.contains(absent), "{absent}: {}", page.body);
    }
    // The cells: the host links to its search (keeping the columns), numbers
    // align right, the action is marked for blocks.
    assert!(
        page.body.contains(
            "<td><a href=\"/events?q=host%20%3D%20%22blocked.test%22&amp;range=1h&amp;cols=time%2Chost%2Cstatus%2Cbytes_out%2Caction\">blocked.test</a></td>"
        ),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&format!("<td class=\"num\">{status}</td><td class=\"num\">{bytes_out}</td><td class=\"action\">block</td>")),
        "{}",
        page.body
    );
    // The column form shows the choice, ticked, in its order.
    let ticked: Vec<&str> = page
        .body
        .match_indices("name=\"cols\" value=\"")
        .filter(|(i, _)| {
            page.body[*i..]
                .split('>')
                .next()
                .unwrap_or("")
                .contains("checked")
        })
        .map(|(i, m)| {
            let rest = &page.body[i + m.len()..];
            &rest[..rest.find('"').expect("quote")]
        })
        .collect();
    assert_eq!(ticked, ["time", "host", "status", "bytes_out", "action"]);
    // The CSV link exports exactly these columns.
    assert!(
        page.body
            .contains("format=csv&amp;cols=time%2Chost%2Cstatus%2Cbytes_out%2Caction\""),
        "{}",
        page.body
    );

    // Paging keeps the columns; the form's checkboxes (repeated `cols`) work too.
    let first = admin.get_query(
        "/events",
        &[
            ("q", "host = \"ok.test\""),
            ("range", "1h"),
            ("cols", "time"),
            ("cols", "url"),
            ("cols", "status"),
        ],
    );
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body.matches("<tr>").count(), 1 + 50, "{}", first.body);
    let next = next_href(&first.body);
    assert!(next.contains("&cols=time%2Curl%2Cstatus&cursor="), "{next}");
    let older = admin.get(&next);
    assert_eq!(older.status, 200, "{older:?}");
    assert!(older.body.contains("(older page)"), "{}", older.body);
    assert!(
        older.body.contains("data-col=\"url\">URL</th>"),
        "{}",
        older.body
    );
    assert!(!older.body.contains("data-col=\"type\""), "{}", older.body);
    assert!(older.body.contains("/page/"), "{}", older.body);
    assert!(
        older
            .body
            .contains("&amp;cols=time%2Curl%2Cstatus\">Newest</a>"),
        "{}",
        older.body
    );

    // The CSV export: exactly the chosen columns, in that order.
    let csv = admin.get_query(
        "/events/export",
        &[
            ("q", "action = block"),
            ("format", "csv"),
            ("cols", "status,host,time"),
        ],
    );
    assert_eq!(csv.status, 200, "{csv:?}");
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], "status,host,time", "{}", csv.body);
    assert_eq!(lines.len(), 2, "{}", csv.body);
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(
        row[..2],
        [status.to_string().as_str(), "blocked.test"],
        "{}",
        csv.body
    );
    assert_eq!(
        row[2],
        blocked["time"].as_str().expect("time"),
        "{}",
        csv.body
    );
    // NDJSON stays the full records whatever the columns.
    let nd = admin.get_query(
        "/events/export",
        &[
            ("q", "action = block"),
            ("format", "ndjson"),
            ("cols", "host"),
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(nd.body.trim()).expect("one OCSF document");
    assert_eq!(doc["class_uid"], 4002, "{}", nd.body);
}

#[test]
fn an_unknown_column_is_refused_with_a_readable_message_not_a_server_error() {
    let c = Console::start();
    let analyst = Client::new(&c.base());
    analyst.login("ana", ANALYST_PASSWORD);
    let r = analyst.get_query("/events", &[("q", ""), ("cols", "time,bytes,user")]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("Not searched: unknown column &quot;bytes&quot; in cols= (did you mean bytes_in or bytes_out?); the columns are time, id,"),
        "{}",
        r.body
    );
    // The form is still there to fix it, and no rows were searched.
    assert!(
        r.body.contains("name=\"cols\" value=\"bytes_in\""),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<tbody>"), "{}", r.body);
    let r = analyst.get_query("/alerts", &[("cols", "sevrity")]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("did you mean severity?"), "{}", r.body);
    let r = analyst.get_query(
        "/events/export",
        &[("format", "csv"), ("cols", "time,xyzzy")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body
            .starts_with("unknown column \"xyzzy\" in cols=; the columns are time, id,"),
        "{}",
        r.body
    );
}
