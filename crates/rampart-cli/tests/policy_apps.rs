//! Rules that name apps from the shipped catalog, enforced by the real gateway:
//! a `do-not-decrypt` rule on Dropbox leaves the origin's own certificate in
//! place while another host is decrypted, and an access rule blocks ChatGPT.
//! The apps' real domains are pointed at loopback origins with `[resolve]`,
//! so nothing leaves the machine.

mod support;

use std::path::Path;
use std::time::Duration;

use support::origin::Origin;
use support::tls_origin::TlsOrigin;
use support::{curl, Rampart};

/// Starts the gateway with `policy`, interception on for `tls_ports`, the
/// given hosts resolved to 127.0.0.1 and `roots` trusted for origins.
fn gateway(
    dir: &Path,
    policy: &str,
    tls_ports: &[u16],
    hosts: &[&str],
    roots: &[&Path],
) -> Rampart {
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy).unwrap();
    let ports: Vec<String> = std::iter::once(443)
        .chain(tls_ports.iter().copied())
        .map(|p| p.to_string())
        .collect();
    let resolve: String = hosts
        .iter()
        .map(|h| format!("{h:?} = \"127.0.0.1\"\n"))
        .collect();
    // Origins are trusted through extra roots only; with none, the system store stays.
    let tls = if roots.is_empty() {
        String::new()
    } else {
        let roots: Vec<String> = roots
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        format!(
            "[tls]\nsystem_roots = false\nextra_roots = [{}]\n",
            roots.join(", ")
        )
    };
    Rampart::start(&format!(
        "policy = {policy:?}\n\
         [proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [{ports}]\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [resolve]\n{resolve}{tls}",
        policy = policy_path.display().to_string(),
        ports = ports.join(", "),
    ))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap_or_default()
}

/// `pinned_apps = "decrypt"` drops the built-in exception for pinning apps,
/// so Dropbox stays out of decryption only because of the policy's own rule.
const DO_NOT_DECRYPT_DROPBOX: &str = r#"
[defaults]
pinned_apps = "decrypt"

[[decryption]]
id = "dropbox-pinned"
name = "Dropbox keeps its certificate"
when = { apps = ["dropbox"] }
action = "do-not-decrypt"
"#;

#[test]
fn a_do_not_decrypt_rule_on_a_catalog_app_keeps_the_origin_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let dropbox = TlsOrigin::start("www.dropbox.com");
    let shop = TlsOrigin::start("shop.test");
    let gw = gateway(
        dir.path(),
        DO_NOT_DECRYPT_DROPBOX,
        &[dropbox.port, shop.port],
        &["www.dropbox.com", "shop.test"],
        &[&dropbox.ca_pem, &shop.ca_pem],
    );

    // Dropbox: the tunnel is spliced, so curl sees (and verifies) the origin's own chain.
    let url = format!("https://www.dropbox.com:{}/", dropbox.port);
    let ca = dropbox.ca_pem.to_str().unwrap();
    let (code, body, err) = curl(&gw.proxy_url(), &["-v", "--cacert", ca, &url]);
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("s_server"), "{body}");
    assert!(err.contains("issuer: CN=Rampart-Test-Origin-CA"), "{err}");
    assert!(!err.contains("Rampart Gateway CA"), "{err}");

    // Another host is decrypted: the certificate comes from the gateway's CA.
    let gw_ca = gw.gateway_ca();
    let shop_url = format!("https://shop.test:{}/", shop.port);
    let (code, body, err) = curl(
        &gw.proxy_url(),
        &["-v", "--cacert", gw_ca.to_str().unwrap(), &shop_url],
    );
    assert_eq!(code, 0, "{err}");
    assert!(body.contains("s_server"), "{body}");
    assert!(err.contains("issuer: CN=Rampart Gateway CA"), "{err}");

    // The access log names the decryption rule and the app that matched it.
    let target = format!("www.dropbox.com:{}", dropbox.port);
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT" && r["target"] == target);
    assert_eq!(tunnel["tls"]["decision"], "do-not-decrypt", "{tunnel}");
    assert_eq!(
        tunnel["tls"]["reason"], "policy rule \"Dropbox keeps its certificate\"",
        "{tunnel}"
    );
    assert_eq!(tunnel["tls"]["sni"], "www.dropbox.com", "{tunnel}");
    let decryption = &tunnel["decryption"];
    assert_eq!(decryption["stage"], "decryption", "{tunnel}");
    assert_eq!(decryption["rule_id"], "dropbox-pinned", "{tunnel}");
    assert_eq!(decryption["action"], "do-not-decrypt", "{tunnel}");
    assert!(
        strings(&decryption["matched"]).contains(&"app dropbox".to_string()),
        "{tunnel}"
    );

    let shop_target = format!("shop.test:{}", shop.port);
    let decrypted = gw.find_record(|r| r["method"] == "CONNECT" && r["target"] == shop_target);
    assert_eq!(decrypted["tls"]["decision"], "decrypt", "{decrypted}");
    assert!(decrypted.get("decryption").is_none(), "{decrypted}");
    // Inside the decrypted tunnel each request is logged with its full URL.
    gw.find_record(|r| r["target"] == shop_url.as_str() && r["status"] == 200);

    // The event store has the spliced tunnel under the app's name.
    let mut events = Vec::new();
    let ok = support::eventually(Duration::from_secs(15), || {
        events = gw.search_events("app = dropbox", "json");
        !events.is_empty()
    });
    assert!(
        ok,
        "no dropbox event; all: {:?}",
        gw.search_events("", "json")
    );
    assert_eq!(events[0]["host"], "www.dropbox.com", "{events:?}");
    assert_eq!(events[0]["tls"], "do-not-decrypt", "{events:?}");
}

const BLOCK_CHATGPT: &str = r#"
[[access]]
id = "no-genai"
name = "no generative AI"
when = { apps = ["chatgpt"] }
action = "block"
"#;

#[test]
fn an_access_rule_on_a_catalog_app_blocks_it_and_lets_other_hosts_pass() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start();
    let gw = gateway(
        dir.path(),
        BLOCK_CHATGPT,
        &[],
        &["chatgpt.com", "files.oaiusercontent.com", "docs.test"],
        &[],
    );
    let port = origin.port();

    // The apex and a subdomain of another of the app's domains are both blocked.
    for host in ["chatgpt.com", "files.oaiusercontent.com"] {
        let url = format!("http://{host}:{port}/hello");
        let (_, body, _) = curl(&gw.proxy_url(), &["-w", "\n%{http_code}", &url]);
        assert!(body.ends_with("403"), "{host}: {body}");
        assert!(body.contains("no generative AI"), "{host}: {body}");
    }
    // HTTPS is blocked at the connection stage (the host is all it needs); the
    // tunnel would be decrypted, so the block page is shown inside TLS.
    let ca = gw.gateway_ca();
    let (_, page, _) = curl(
        &gw.proxy_url(),
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\n%{http_code}",
            "https://chatgpt.com:443/",
        ],
    );
    assert!(page.ends_with("403"), "{page}");
    assert!(page.contains("no generative AI"), "{page}");

    // A host outside the app passes.
    let other = format!("http://docs.test:{port}/hello");
    let (_, body, _) = curl(&gw.proxy_url(), &[&other]);
    assert_eq!(body, "hello from origin");
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the allowed request reached the origin"
    );

    let blocked = gw.find_record(|r| {
        r["status"] == 403 && r["target"] == format!("http://chatgpt.com:{port}/hello")
    });
    assert_eq!(blocked["policy"]["rule_id"], "no-genai", "{blocked}");
    assert_eq!(blocked["policy"]["stage"], "access", "{blocked}");
    assert_eq!(blocked["policy"]["action"], "block", "{blocked}");
    assert!(
        strings(&blocked["policy"]["matched"]).contains(&"app chatgpt".to_string()),
        "{blocked}"
    );
    let tunnel = gw.find_record(|r| r["method"] == "CONNECT" && r["target"] == "chatgpt.com:443");
    assert_eq!(tunnel["status"], 403, "{tunnel}");
    assert_eq!(tunnel["policy"]["rule_id"], "no-genai", "{tunnel}");
    let passed = gw.find_record(|r| r["target"] == other.as_str());
    assert_eq!(passed["status"], 200, "{passed}");
    assert_ne!(passed["policy"]["rule_id"], "no-genai", "{passed}");
}
