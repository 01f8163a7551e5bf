//! `rampart gateway`, the stateless fleet role (issue 20, item 1): it never
//! creates a CA and says how to provide the fleet's; with the fleet's CA it
//! intercepts with it; it serves health and metrics only (no admin API, no
//! console, no admin token).

mod support;

use std::path::Path;

use support::tls_origin::TlsOrigin;
use support::{curl, http_get_status, rampart_bin, Rampart};

const BASE: &str =
    "[proxy]\nallow_loopback_destinations = true\n[resolve]\n\"origin.test\" = \"127.0.0.1\"\n";

/// The fleet's CA: made by `rampart ca init` as the server would have it.
fn fleet_ca(dir: &Path) {
    let out = std::process::Command::new(rampart_bin())
        .args(["ca", "init", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_gateway_role_refuses_to_start_without_the_fleet_ca_and_creates_none() {
    let err = match Rampart::try_start_gateway_role(BASE, |_| {}) {
        Ok(_) => panic!("rampart gateway started without a CA"),
        Err(log) => log,
    };
    assert!(
        err.contains("never creates a CA") && err.contains("ca.pem") && err.contains("ca.key"),
        "the refusal says what to do: {err}"
    );
}

#[test]
fn with_the_fleet_ca_the_gateway_role_intercepts_with_it_and_serves_only_health_and_metrics() {
    let fleet = tempfile::tempdir().unwrap();
    fleet_ca(fleet.path());
    let fleet_dir = fleet.path().to_path_buf();
    let origin = TlsOrigin::start("origin.test");
    let config = format!(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [443, \"1025-65535\"]\ntls_ports = [443, {}]\n\
         [tls]\nsystem_roots = false\nextra_roots = [{:?}]\n[resolve]\n\"origin.test\" = \"127.0.0.1\"\n",
        origin.port,
        origin.ca_pem.display().to_string()
    );
    let gw = Rampart::try_start_gateway_role(&config, move |command| {
        let data = support::data_dir_of(command);
        std::fs::create_dir_all(&data).unwrap();
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(fleet_dir.join(f), data.join(f)).unwrap();
        }
    })
    .unwrap_or_else(|log| panic!("rampart gateway did not start:\n{log}"));

    // The fleet's CA signs what it intercepts (curl trusts only that CA).
    let url = format!("https://origin.test:{}/", origin.port);
    let ca = fleet.path().join("ca.pem");
    let (code, body, stderr) = curl(
        &gw.proxy_url(),
        &[
            "--cacert",
            ca.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    );
    assert_eq!(
        (code, body.as_str()),
        (0, "200"),
        "{stderr}\n{}",
        gw.stderr()
    );
    assert_eq!(
        std::fs::read(gw.data_dir().join("ca.pem")).unwrap(),
        std::fs::read(&ca).unwrap(),
        "the gateway kept the fleet's CA"
    );

    assert_eq!(http_get_status(gw.api, "/healthz"), Some(200));
    assert_eq!(http_get_status(gw.api, "/metrics"), Some(200));
    for path in [
        "/api/v1/policy/status",
        "/api/v1/events/search?q=*",
        "/console",
        "/api/v1/devices",
    ] {
        assert_eq!(
            http_get_status(gw.api, path),
            Some(404),
            "{path} is served by the server only"
        );
    }
    assert!(
        !gw.data_dir().join("admin.token").exists(),
        "a gateway holds no admin token"
    );
}
