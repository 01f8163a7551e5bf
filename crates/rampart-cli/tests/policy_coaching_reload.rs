//! The live policy of a real gateway: `user-alert` coaching (page, proceed
//! link, allowance, refusal of forged or foreign links) and reloading (file
//! change without a signal, the status API showing a broken file's errors
//! while the old revision serves, and no request lost while reloading under load).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::origin::Origin;
use support::{curl, eventually, hash_password, Rampart};

const COACHING: &str = r#"
[[access]]
id = "coach-video"
name = "video needs a reason"
when = { hosts = ["video.test"] }
action = "user-alert"
"#;

const BLOCK_NEWS: &str = r#"
[[access]]
id = "no-news"
name = "no news"
when = { hosts = ["news.test"] }
action = "block"
"#;

/// A gateway with `policy` in its own file, users alice and bob, test hosts → 127.0.0.1.
fn gateway(policy: &str) -> (Rampart, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let hash = hash_password("pw");
    let gw = Rampart::start(&format!(
        "policy = {path:?}\n[proxy]\nallow_loopback_destinations = true\nusers = [{{ name = \"alice\", password_hash = \"{hash}\" }}, {{ name = \"bob\", password_hash = \"{hash}\" }}]\n[resolve]\n\"video.test\" = \"127.0.0.1\"\n\"other.test\" = \"127.0.0.1\"\n\"news.test\" = \"127.0.0.1\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n",
        path = policy_path.display().to_string()
    ));
    (gw, dir)
}

fn admin_token(gw: &Rampart) -> String {
    std::fs::read_to_string(gw.data_dir().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// `curl` on the API with the admin token; returns (HTTP status, JSON body).
fn api(gw: &Rampart, method: &str, path: &str) -> (u16, serde_json::Value) {
    let out = support::run(
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", admin_token(gw)))
            .arg(format!("http://{}{path}", gw.api)),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// The proceed link of a coaching page's text body.
fn proceed_link(body: &str) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("Proceed: "))
        .unwrap_or_else(|| panic!("no proceed link in {body}"))
        .to_string()
}

#[test]
fn user_alert_coaches_then_proceed_lets_the_user_through_and_is_recorded() {
    let origin = Origin::start();
    let (gw, _dir) = gateway(COACHING);
    let url = format!("http://video.test:{}/hello", origin.port());

    // A tool gets the 403 coaching text with a proceed link on the same host.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", "\n%{http_code}", &url],
    );
    assert!(body.ends_with("403"), "{body}");
    assert!(body.contains("video needs a reason"), "{body}");
    let link = proceed_link(&body);
    assert!(
        link.starts_with(&format!(
            "http://video.test:{}/.rampart/proceed?token=",
            origin.port()
        )),
        "{link}"
    );

    // A browser gets HTML with a Proceed link.
    let (_, page, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-H", "Accept: text/html", &url],
    );
    assert!(
        page.contains("<html") && page.contains(">Proceed</a>"),
        "{page}"
    );
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the origin yet"
    );

    // Following the link (curl -L, like a browser) ends at the page itself.
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "alice:pw", "-L", &link]);
    assert_eq!(body, "hello from origin");
    // The allowance holds for later requests to the host, for alice only.
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "alice:pw", &url]);
    assert_eq!(body, "hello from origin");
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "bob:pw", "-w", "\n%{http_code}", &url],
    );
    assert!(body.ends_with("403"), "bob did not proceed: {body}");

    // The link is single-use.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", "\n%{http_code}", &link],
    );
    assert!(
        body.ends_with("403") && body.contains("already used"),
        "{body}"
    );

    let log = gw.access_log();
    let passed: Vec<_> = log
        .iter()
        .filter(|r| r["status"] == 200 && r["user"] == "alice" && r["target"] == url.as_str())
        .collect();
    assert_eq!(passed.len(), 2, "{log:?}");
    for r in &passed {
        assert_eq!(r["policy"]["action"], "user-alert");
        assert_eq!(r["policy"]["proceeded"], true);
        assert_eq!(r["policy"]["rule_id"], "coach-video");
    }
    let coached = log
        .iter()
        .find(|r| r["status"] == 403 && r["user"] == "bob")
        .unwrap();
    assert_eq!(coached["policy"]["action"], "user-alert");
    assert!(coached["policy"].get("proceeded").is_none(), "{coached}");
    assert!(
        log.iter().all(|r| !r["target"]
            .as_str()
            .unwrap()
            .contains(&link[link.find("token=").unwrap() + 6..])),
        "tokens are not written to the access log"
    );

    // The proceed is an alert event.
    let token = admin_token(&gw);
    assert!(
        eventually(Duration::from_secs(10), || {
            let out = support::run(
                Command::new("curl")
                    .args(["-sS", "-G", "--data-urlencode", "q=type = alert"])
                    .arg("-H")
                    .arg(format!("Authorization: Bearer {token}"))
                    .arg(format!("http://{}/api/v1/events", gw.api)),
            );
            String::from_utf8_lossy(&out.stdout)
                .contains("User proceeded past coaching: video needs a reason")
        }),
        "no alert event for the proceed"
    );
}

#[test]
fn forged_and_other_host_proceed_links_are_refused() {
    let origin = Origin::start();
    let (gw, _dir) = gateway(COACHING);
    let port = origin.port();
    let url = format!("http://video.test:{port}/hello");
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "alice:pw", &url]);
    let link = proceed_link(&body);
    let token = link.split_once("token=").unwrap().1.to_string();

    // The same token on another host.
    let other = format!("http://other.test:{port}/.rampart/proceed?token={token}");
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", "\n%{http_code}", &other],
    );
    assert!(
        body.ends_with("403") && body.contains("another host"),
        "{body}"
    );
    // Another user with alice's link.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "bob:pw", "-w", "\n%{http_code}", &link],
    );
    assert!(
        body.ends_with("403") && body.contains("another user"),
        "{body}"
    );
    // A forged signature.
    let (payload, _) = token.split_once('.').unwrap();
    let forged = format!("http://video.test:{port}/.rampart/proceed?token={payload}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", "\n%{http_code}", &forged],
    );
    assert!(
        body.ends_with("403") && body.contains("not issued by this gateway"),
        "{body}"
    );

    // None of these granted anything.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", "\n%{http_code}", &url],
    );
    assert!(body.ends_with("403"), "{body}");
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The genuine link still works for alice, who was refused nothing of hers.
    let (_, body, _) = curl(&gw.proxy_url(), &["-U", "alice:pw", "-L", &link]);
    assert_eq!(body, "hello from origin");
}

#[test]
fn a_changed_policy_file_reloads_without_a_signal() {
    let origin = Origin::start();
    let (gw, dir) = gateway(BLOCK_NEWS);
    let news = format!("http://news.test:{}/hello", origin.port());
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", " %{http_code}", &news],
    );
    assert!(body.ends_with("403"), "{body}");
    let (_, before) = api(&gw, "GET", "/api/v1/policy/status");
    let old_revision = before["revision"].as_str().unwrap().to_string();

    std::fs::write(dir.path().join("policy.toml"), COACHING).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || curl(
            &gw.proxy_url(),
            &["-U", "alice:pw", &news]
        )
        .1 == "hello from origin"),
        "the file change was not applied: {}",
        gw.stderr()
    );
    let (code, after) = api(&gw, "GET", "/api/v1/policy/status");
    assert_eq!(code, 200);
    assert_ne!(after["revision"], old_revision.as_str());
    assert!(after["last_error"].is_null(), "{after}");
    assert!(after["reloads_ok"].as_u64().unwrap() >= 1, "{after}");
    assert!(gw.stderr().contains("file change"), "{}", gw.stderr());
}

#[test]
fn status_api_shows_a_broken_file_while_the_old_revision_serves() {
    let origin = Origin::start();
    let (gw, dir) = gateway(BLOCK_NEWS);
    let news = format!("http://news.test:{}/hello", origin.port());

    // No token, no status.
    let out = support::run(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{}/api/v1/policy/status", gw.api)),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");

    let (_, before) = api(&gw, "GET", "/api/v1/policy/status");
    let revision = before["revision"].as_str().unwrap().to_string();
    assert!(
        before["source"].as_str().unwrap().ends_with("policy.toml"),
        "{before}"
    );
    assert!(
        before["loaded_at"].as_str().unwrap().contains('T'),
        "{before}"
    );

    // Two errors in one file: both are reported.
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[access]]\nname = \"a\"\nwhen = { lists = [\"nope\"] }\naction = \"blok\"\n",
    )
    .unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload");
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["revision"],
        revision.as_str(),
        "the old revision serves"
    );
    let diagnostics = status["last_error"]["diagnostics"].as_array().unwrap();
    assert!(diagnostics.len() >= 2, "{status}");
    assert!(
        diagnostics
            .iter()
            .any(|d| d["text"].as_str().unwrap().contains("policy.toml:4:")),
        "{status}"
    );
    assert!(
        diagnostics
            .iter()
            .any(|d| d["message"].as_str().unwrap().contains("nope")),
        "{status}"
    );
    assert_eq!(status["last_error"]["trigger"], "api");

    // GET shows the same, and the old policy still blocks.
    let (_, status) = api(&gw, "GET", "/api/v1/policy/status");
    assert!(!status["last_error"].is_null(), "{status}");
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["-U", "alice:pw", "-w", " %{http_code}", &news],
    );
    assert!(body.ends_with("403"), "{body}");
    assert!(
        gw.metrics()
            .contains("rampart_config_reloads_total{kind=\"rejected\"}"),
        "{}",
        gw.metrics()
    );

    // Fixed: the API reload applies and clears the error.
    std::fs::write(dir.path().join("policy.toml"), COACHING).unwrap();
    let (code, status) = api(&gw, "POST", "/api/v1/policy/reload");
    assert_eq!(code, 200, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    assert_ne!(status["revision"], revision.as_str());
}

#[test]
fn reloading_under_load_loses_no_request() {
    assert!(
        support::have("python3"),
        "python3 is needed for the load loop"
    );
    let origin = Origin::start();
    let (gw, dir) = gateway(BLOCK_NEWS);
    let url = format!("http://video.test:{}/hello", origin.port());
    // Bob is never coached or blocked by either policy variant used below.
    let script = r#"
import sys, threading, urllib.request, base64, time
proxy, url, total, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
auth = "Basic " + base64.b64encode(b"bob:pw").decode()
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
failures, done, lock = [], [0], threading.Lock()
def work(n):
    for _ in range(n):
        try:
            req = urllib.request.Request(url, headers={"Proxy-Authorization": auth})
            body = opener.open(req, timeout=30).read()
            ok = body == b"hello from origin"
            err = None if ok else repr(body[:80])
        except Exception as e:
            err = repr(e)
        with lock:
            done[0] += 1
            if err: failures.append(err)
        time.sleep(0.01)
threads = [threading.Thread(target=work, args=(total // workers,)) for _ in range(workers)]
[t.start() for t in threads]
[t.join() for t in threads]
print(done[0], len(failures))
for f in failures[:5]: print(f)
"#;
    let load = Command::new("python3")
        .args(["-c", script, &gw.proxy_url(), &url, "2000", "16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // While it runs: rewrite the policy and reload it every way, several times.
    let variants = [
        BLOCK_NEWS,
        COACHING.replace("video.test", "elsewhere.test").as_str(),
        &format!("{BLOCK_NEWS}\n[lists]\nx = [\"x.test\"]\n"),
    ]
    .map(str::to_string);
    for i in 0..9 {
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(
            dir.path().join("policy.toml"),
            &variants[i % variants.len()],
        )
        .unwrap();
        match i % 3 {
            0 => gw.signal(Signal::SIGHUP),
            1 => assert_eq!(api(&gw, "POST", "/api/v1/policy/reload").0, 200),
            _ => {} // the file watcher picks this one up
        }
    }
    let out = load.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let mut numbers = report
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(u64::MAX));
    assert_eq!(
        numbers.next(),
        Some(2000),
        "{report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(numbers.next(), Some(0), "failures: {report}");
    let (_, status) = api(&gw, "GET", "/api/v1/policy/status");
    assert!(status["reloads_ok"].as_u64().unwrap() >= 6, "{status}");
    assert!(status["last_error"].is_null(), "{status}");
}

#[test]
fn user_alert_inside_a_decrypted_tunnel_coaches_with_an_https_proceed_link() {
    let origin = support::tls_origin::TlsOrigin::start("shop.test");
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, COACHING.replace("video.test", "shop.test")).unwrap();
    let gw = Rampart::start(&format!(
        "policy = {path:?}\n[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {port}]\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n[resolve]\n\"shop.test\" = \"127.0.0.1\"\n\
         [tls]\nsystem_roots = false\nextra_roots = [{ca:?}]\n",
        path = policy_path.display().to_string(),
        port = origin.port,
        ca = origin.ca_pem.display().to_string(),
    ));
    let ca = gw.dir.path().join("gateway-ca.pem");
    let status = Command::new(support::rampart_bin())
        .args(["ca", "export", "--data-dir"])
        .arg(gw.data_dir())
        .arg("--out")
        .arg(&ca)
        .status()
        .unwrap();
    assert!(status.success());
    let ca = ca.to_str().unwrap();
    let url = format!("https://shop.test:{}/", origin.port);

    // Inside the decrypted tunnel: the coaching page, with an https link on the same origin.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &["--cacert", ca, "-w", "\n%{http_code}", &url],
    );
    assert!(
        body.ends_with("403") && body.contains("video needs a reason"),
        "{body}"
    );
    let link = proceed_link(&body);
    assert!(
        link.starts_with(&format!("{url}.rampart/proceed?token=")),
        "{link}"
    );

    // Proceeding (through the proxy, decrypted again) lands on the origin.
    let (_, body, _) = curl(
        &gw.proxy_url(),
        &[
            "--cacert",
            ca,
            "-L",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &link,
        ],
    );
    assert_eq!(body, "200");
    let log = gw.access_log();
    let passed = log
        .iter()
        .find(|r| r["target"] == url.as_str() && r["status"] == 200)
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert_eq!(passed["policy"]["action"], "user-alert");
    assert_eq!(passed["policy"]["proceeded"], true);
}
