//! Scoped API tokens managed over the API (`/api/v1/tokens`), with the real server,
//! curl and `rampart token ... --server`:
//! - an admin token creates, lists and revokes tokens; `analyst` and `enroll` tokens
//!   get 403 naming the scope needed, no token 401;
//! - a token created over the API works at once, and fails with 401 at the very next
//!   call after its revocation; the list never shows a secret or a hash;
//! - revoking twice answers the first revocation; an unknown token is 404; the
//!   admin.token file and a token revoking itself are refused with 409;
//! - create and revoke are audit events naming the acting token and the token acted on.

mod support;

use support::api::{api_call, rampart_cli, require_curl, succeeded};
use support::Rampart;

fn admin_file_token(gw: &Rampart) -> String {
    std::fs::read_to_string(gw.data_dir().join("admin.token"))
        .expect("the server's admin.token")
        .trim()
        .to_string()
}

/// Waits for an audit event of `user` whose message holds every one of `parts`.
fn audit_event(gw: &Rampart, user: &str, parts: &[&str]) -> serde_json::Value {
    let is_it = |e: &serde_json::Value| {
        e["user"] == user
            && e["message"]
                .as_str()
                .is_some_and(|m| parts.iter().all(|p| m.contains(p)))
    };
    let what = format!("no audit event of {user:?} with {parts:?}");
    let audit = gw.wait_for_audit(&what, |audit| audit.iter().any(is_it));
    audit.into_iter().find(is_it).expect("checked by the wait")
}

#[test]
fn admins_manage_tokens_over_the_api_analysts_cannot_and_revocation_is_immediate_and_audited() {
    require_curl();
    let gw = Rampart::start("");
    let api_addr = gw.api;
    let admin_file = admin_file_token(&gw);
    let post = |path: &str, token: &str, body: &str| {
        api_call(api_addr, "POST", path, Some(token), Some(body))
    };
    let get = |path: &str, token: &str| api_call(api_addr, "GET", path, Some(token), None);

    // The admin file's token creates an analyst token and a scoped admin token.
    let (status, soc) = post(
        "/api/v1/tokens",
        &admin_file,
        r#"{"scope": "analyst", "name": "soc"}"#,
    );
    assert_eq!(status, 201, "{soc}");
    let analyst = soc["token"].as_str().expect("the secret").to_string();
    let soc_id = soc["id"].as_str().expect("an id").to_string();
    assert!(
        analyst.starts_with("rmps_") && soc_id.starts_with("tok_"),
        "{soc}"
    );
    assert_eq!(
        (soc["name"].as_str(), soc["scope"].as_str()),
        (Some("soc"), Some("analyst"))
    );
    assert!(
        soc["created"].as_str().is_some_and(|c| c.ends_with('Z')),
        "{soc}"
    );
    assert!(
        soc.get("sha256").is_none() && soc.get("revoked").is_none(),
        "{soc}"
    );
    let (status, ops) = post(
        "/api/v1/tokens",
        &admin_file,
        r#"{"scope": "admin", "name": "ops"}"#,
    );
    assert_eq!(status, 201, "{ops}");
    let admin = ops["token"].as_str().expect("the secret").to_string();
    let ops_id = ops["id"].as_str().expect("an id").to_string();
    let (status, mdm) = post(
        "/api/v1/tokens",
        &admin,
        r#"{"scope": "enroll", "name": "mdm"}"#,
    );
    assert_eq!(status, 201, "{mdm}");
    let enroll = mdm["token"].as_str().expect("the secret").to_string();

    // Refused requests: a bad scope, a taken name, unknown fields.
    let (status, body) = post("/api/v1/tokens", &admin, r#"{"scope": "root"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("admin, analyst or enroll"),
        "{body}"
    );
    let (status, body) = post(
        "/api/v1/tokens",
        &admin,
        r#"{"scope": "analyst", "name": "soc"}"#,
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        post(
            "/api/v1/tokens",
            &admin,
            r#"{"scope": "analyst", "ttl": 3}"#
        )
        .0,
        400
    );

    // The new analyst token works at once, for reads.
    assert_eq!(get("/api/v1/devices", &analyst).0, 200);
    // Managing tokens is for admins only, the list included.
    let revoke_ops = format!("/api/v1/tokens/{ops_id}/revoke");
    for (token, scope) in [(&analyst, "analyst"), (&enroll, "enroll")] {
        for (method, path) in [
            ("POST", "/api/v1/tokens"),
            ("GET", "/api/v1/tokens"),
            ("POST", revoke_ops.as_str()),
        ] {
            let body = (method == "POST").then_some(r#"{"scope": "admin"}"#);
            let (status, answer) = api_call(api_addr, method, path, Some(token), body);
            assert_eq!(status, 403, "{scope} {method} {path}: {answer}");
            assert_eq!(answer["scope_needed"], "admin", "{answer}");
            let message = answer["error"].as_str().unwrap_or("");
            assert!(
                message.contains("needs a token of scope admin") && message.contains(scope),
                "{answer}"
            );
        }
    }
    // No token, or a wrong one: 401.
    assert_eq!(
        api_call(api_addr, "GET", "/api/v1/tokens", None, None).0,
        401
    );
    assert_eq!(get("/api/v1/tokens", "rmps_wrong").0, 401);
    assert_eq!(
        get("/api/v1/devices", &admin).0,
        200,
        "the revoke attempts changed nothing"
    );

    // The list: every token, never a secret or a hash.
    let (status, listed) = get("/api/v1/tokens", &admin);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["admin_token_file"], true);
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .expect("a token array")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["soc", "ops", "mdm"], "{listed}");
    let text = listed.to_string();
    let stored = std::fs::read_to_string(gw.data_dir().join("api-tokens.json")).unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    for secret in [&analyst, &admin, &enroll, &admin_file] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret in the list: {text}"
        );
        assert!(
            !stored.to_string().contains(secret.as_str()),
            "a secret in the store"
        );
    }
    for hash in stored["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["sha256"].as_str())
    {
        assert!(!text.contains(hash), "a hash in the list: {text}");
    }
    assert!(!text.contains("sha256"), "{text}");
    let mode = std::fs::metadata(gw.data_dir().join("api-tokens.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "written as the CLI writes it"
    );

    // Revoked by the scoped admin: the analyst token fails at its very next call.
    let revoke_soc = format!("/api/v1/tokens/{soc_id}/revoke");
    let (status, revoked) = post(&revoke_soc, &admin, "");
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(
        (revoked["changed"].as_bool(), revoked["name"].as_str()),
        (Some(true), Some("soc"))
    );
    let revoked_at = revoked["revoked"]
        .as_str()
        .expect("a revocation time")
        .to_string();
    let (status, body) = get("/api/v1/devices", &analyst);
    assert_eq!(status, 401, "a revoked token must fail at once: {body}");
    // Again: the same revocation, nothing changed; by name too.
    let (status, again) = post("/api/v1/tokens/soc/revoke", &admin, "");
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["changed"].as_bool(), again["revoked"].as_str()),
        (Some(false), Some(revoked_at.as_str()))
    );
    assert_eq!(again["id"], soc_id.as_str());
    // Unknown: 404. The admin file and a token revoking itself: 409, saying what to do.
    let (status, body) = post("/api/v1/tokens/tok_000000000000/revoke", &admin, "");
    assert_eq!(status, 404, "{body}");
    let (status, body) = post("/api/v1/tokens/admin.token/revoke", &admin, "");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("rotate it"),
        "{body}"
    );
    let (status, body) = post(&revoke_ops, &admin, "");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot revoke itself"),
        "{body}"
    );
    assert_eq!(get("/api/v1/devices", &admin).0, 200);
    // The list shows the revocation.
    let (_, listed) = get("/api/v1/tokens", &admin);
    let soc_now = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == soc_id.as_str())
        .cloned();
    assert_eq!(
        soc_now.and_then(|t| t["revoked"].as_str().map(str::to_string)),
        Some(revoked_at)
    );

    // Audit: who (the acting token's name), what (the token created or revoked).
    let created = audit_event(
        &gw,
        "admin.token",
        &[
            "POST /api/v1/tokens",
            "201",
            &format!("created token {soc_id} (name soc, scope analyst)"),
        ],
    );
    assert_eq!(created["action"], "allow", "{created}");
    let revoked = audit_event(
        &gw,
        "ops",
        &[
            &revoke_soc,
            &format!("revoked token {soc_id} (name soc, scope analyst)"),
        ],
    );
    assert_eq!(revoked["action"], "allow", "{revoked}");
    audit_event(&gw, "ops", &["already revoked token", &soc_id]);
    let refused = audit_event(
        &gw,
        "soc",
        &["POST /api/v1/tokens", "403", "needs scope admin"],
    );
    assert_eq!(refused["action"], "block", "{refused}");
}

#[test]
fn token_commands_with_server_go_through_the_api() {
    require_curl();
    let gw = Rampart::start("");
    let server = format!("http://{}", gw.api);
    let admin_file = admin_file_token(&gw);
    let token_arg = format!("--token={admin_file}");
    let remote = [server.as_str(), token_arg.as_str()];
    let with_server = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["token"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", remote[0], remote[1]]);
        rampart_cli(&all)
    };

    // Create: the secret on stdout, once; it works at once.
    let out = with_server(&["create", "--scope", "analyst", "--name", "ci"]);
    let secret = succeeded(&out);
    assert!(secret.starts_with("rmps_"), "{secret:?}");
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("name ci, scope analyst"), "{note}");
    assert_eq!(
        api_call(gw.api, "GET", "/api/v1/events", Some(&secret), None).0,
        200
    );

    // List, as a table and as JSON: the same store the local command reads.
    let table = succeeded(&with_server(&["list"]));
    assert!(
        table
            .lines()
            .any(|l| l.contains("ci") && l.contains("analyst")),
        "{table}"
    );
    assert!(table.contains("admin.token"), "{table}");
    assert!(!table.contains(&secret));
    let listed: serde_json::Value =
        serde_json::from_str(&succeeded(&with_server(&["list", "--json"]))).unwrap();
    assert_eq!(listed["tokens"][0]["name"], "ci", "{listed}");
    let local = succeeded(&rampart_cli(&[
        "token",
        "list",
        "--data-dir",
        gw.data_dir().to_str().unwrap(),
    ]));
    assert!(
        local.contains("ci"),
        "the API wrote the data dir's store: {local}"
    );

    // A token without the admin scope is refused, and the command says why.
    let out = rampart_cli(&[
        "token", "create", "--scope", "admin", "--server", &server, "--token", &secret,
    ]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("403") && why.contains("scope admin"), "{why}");
    let out = rampart_cli(&[
        "token",
        "list",
        "--server",
        &server,
        "--token",
        "rmps_wrong",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // Revoke: the token fails at once; again: said, not an error.
    let said = succeeded(&with_server(&["revoke", "ci"]));
    assert!(
        said.starts_with("revoked tok_") && said.contains("name ci"),
        "{said}"
    );
    assert_eq!(
        api_call(gw.api, "GET", "/api/v1/events", Some(&secret), None).0,
        401
    );
    let said = succeeded(&with_server(&["revoke", "ci"]));
    assert!(said.contains("was revoked already"), "{said}");
    let out = with_server(&["revoke", "nothing-here"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}
