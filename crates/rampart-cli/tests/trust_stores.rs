//! Trust everywhere: `rampart trust install --nss-db` puts the Rampart CA into an NSS
//! database (what Chromium and Firefox read) and `--remove` restores it; the same for a
//! Java keystore with keytool; `trust env --unset` reverts what `trust env` set; and
//! `trust verify` runs real node and cargo through an intercepting Rampart, failing
//! before `trust env` and passing after it.
//!
//! "Restores exactly" for NSS means: `certutil -L` prints the same nicknames and trust
//! flags, and every certificate (`certutil -L -n NAME -a`) is the same, before the
//! install and after the removal. The database files themselves are not compared byte
//! for byte: SQLite keeps freed pages and NSS rewrites metadata rows on every open.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rampart_testkit::tls_origin::TlsOrigin;
use rampart_testkit::{require, sh};
use support::{rampart_bin, run, Rampart};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rampart(args: &[&str]) -> Output {
    run(Command::new(rampart_bin())
        .args(args)
        .env_remove("RAMPART_CONFIG")
        .env_remove("RAMPART_DATA_DIR"))
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

/// A data dir with a fresh Rampart CA.
fn rampart_ca(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    ok(rampart(&[
        "ca",
        "init",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]));
    data
}

/// The base64 body of the first PEM certificate in `pem` (compares certificates
/// whatever the line wrapping and headers around them).
fn pem_body(pem: &str) -> String {
    pem.split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap_or_else(|| panic!("no certificate in {pem}"))
        .split_whitespace()
        .collect()
}

// ---------------------------------------------------------------------------------
// NSS
// ---------------------------------------------------------------------------------

fn certutil(db: &Path, args: &[&str]) -> Output {
    run(Command::new("certutil")
        .args(args)
        .arg("-d")
        .arg(format!("sql:{}", db.display())))
}

/// What "the same database" means here: the listing and every certificate in it.
fn nss_snapshot(db: &Path) -> (String, Vec<(String, String)>) {
    let listing = ok(certutil(db, &["-L"]));
    let mut certs = Vec::new();
    for line in listing.lines() {
        let line = line.trim_end();
        let Some((nickname, trust)) = line.rsplit_once(char::is_whitespace) else {
            continue;
        };
        let nickname = nickname.trim_end();
        if trust.matches(',').count() == 2 && !nickname.is_empty() {
            let pem = ok(certutil(db, &["-L", "-a", "-n", nickname]));
            certs.push((nickname.to_string(), pem_body(&pem)));
        }
    }
    (listing, certs)
}

/// An NSS database as a browser profile has one: created without a password, with a
/// corporate root already trusted.
fn browser_like_nss_db(dir: &Path, corp_root: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    ok(certutil(dir, &["-N", "--empty-password"]));
    ok(certutil(
        dir,
        &[
            "-A",
            "-n",
            "Example Corp Root",
            "-t",
            "CT,C,C",
            "-a",
            "-i",
            corp_root.to_str().expect("utf-8"),
        ],
    ));
    dir.to_path_buf()
}

/// A throwaway CA certificate made by openssl (the "corporate root" already present).
fn openssl_root(dir: &Path) -> PathBuf {
    sh(
        dir,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout corp.key -out corp.pem -days 2 -subj '/CN=Example Corp Root/O=Example Corp' 2>/dev/null",
    );
    dir.join("corp.pem")
}

#[test]
fn nss_install_adds_the_ca_for_tls_and_remove_restores_the_database() {
    require(&["certutil", "openssl"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = rampart_ca(dir.path());
    let db = browser_like_nss_db(&dir.path().join("nssdb"), &openssl_root(dir.path()));
    let before = nss_snapshot(&db);

    let db_arg = db.to_str().expect("utf-8");
    let data_arg = data.to_str().expect("utf-8");
    let out = ok(rampart(&[
        "trust",
        "install",
        "--nss-db",
        db_arg,
        "--data-dir",
        data_arg,
    ]));
    assert!(out.contains("added rampart-gateway-ca"), "{out}");
    // Installing again replaces the entry instead of adding a second one.
    ok(rampart(&[
        "trust",
        "install",
        "--nss-db",
        db_arg,
        "--data-dir",
        data_arg,
    ]));

    let listing = ok(certutil(&db, &["-L"]));
    let ours: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("rampart-gateway-ca"))
        .collect();
    assert_eq!(ours.len(), 1, "{listing}");
    assert!(ours[0].trim_end().ends_with("C,,"), "{listing}");
    assert!(listing.contains("Example Corp Root"), "{listing}");
    // The very certificate of ca.pem, and NSS accepts it as an SSL CA.
    let stored = ok(certutil(&db, &["-L", "-a", "-n", "rampart-gateway-ca"]));
    let ca_pem = std::fs::read_to_string(data.join("ca.pem")).expect("ca.pem");
    assert_eq!(pem_body(&stored), pem_body(&ca_pem));
    let valid = ok(certutil(
        &db,
        &["-V", "-u", "L", "-n", "rampart-gateway-ca"],
    ));
    assert!(valid.contains("certificate is valid"), "{valid}");

    let out = ok(rampart(&[
        "trust", "install", "--remove", "--nss-db", db_arg,
    ]));
    assert!(out.contains("removed rampart-gateway-ca"), "{out}");
    assert_eq!(nss_snapshot(&db), before);
    let out = ok(rampart(&[
        "trust", "install", "--remove", "--nss-db", db_arg,
    ]));
    assert!(out.contains("no Rampart CA there"), "{out}");
    assert_eq!(nss_snapshot(&db), before);
}

#[test]
fn nss_install_finds_chromium_and_firefox_databases_in_the_home_directory() {
    require(&["certutil", "openssl"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = rampart_ca(dir.path());
    let home = dir.path().join("home");
    let root = openssl_root(dir.path());
    let chromium = browser_like_nss_db(&home.join(".pki/nssdb"), &root);
    let firefox = browser_like_nss_db(&home.join(".mozilla/firefox/x1y2.default-release"), &root);
    // A profile directory without a database is not a database.
    std::fs::create_dir_all(home.join(".mozilla/firefox/Crash Reports")).expect("mkdir");
    let before = (nss_snapshot(&chromium), nss_snapshot(&firefox));

    let install = |extra: &[&str]| {
        let mut command = Command::new(rampart_bin());
        command
            .args(["trust", "install", "--nss"])
            .args(extra)
            .arg("--data-dir")
            .arg(&data)
            .env("HOME", &home);
        ok(run(&mut command))
    };
    let out = install(&[]);
    for db in [&chromium, &firefox] {
        assert!(
            out.contains(&format!("sql:{}: added rampart-gateway-ca", db.display())),
            "{out}"
        );
        assert!(ok(certutil(db, &["-L"])).contains("rampart-gateway-ca"));
    }
    install(&["--remove"]);
    assert_eq!((nss_snapshot(&chromium), nss_snapshot(&firefox)), before);

    // No database at all: a clear error, nothing created.
    let empty = dir.path().join("empty-home");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = run(Command::new(rampart_bin())
        .args(["trust", "install", "--nss", "--data-dir"])
        .arg(&data)
        .env("HOME", &empty));
    assert!(!out.status.success());
    assert!(text(&out).contains("no NSS database"), "{}", text(&out));
    assert!(!empty.join(".pki").exists());
}

// ---------------------------------------------------------------------------------
// Java
// ---------------------------------------------------------------------------------

fn keytool_list(keystore: &Path, storepass: &str) -> String {
    ok(run(Command::new("keytool")
        .args(["-list", "-storepass", storepass, "-keystore"])
        .arg(keystore)))
}

#[test]
fn java_keystore_gets_the_ca_as_a_trusted_entry_and_remove_restores_the_list() {
    require(&["keytool", "openssl"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = rampart_ca(dir.path());
    // A keystore like a JDK's cacerts, with another password than "changeit".
    let keystore = dir.path().join("cacerts");
    ok(run(Command::new("keytool")
        .args(["-importcert", "-noprompt", "-alias", "examplecorproot"])
        .args(["-storetype", "PKCS12", "-storepass", "s3cret-store"])
        .arg("-keystore")
        .arg(&keystore)
        .arg("-file")
        .arg(openssl_root(dir.path()))));
    let before = keytool_list(&keystore, "s3cret-store");

    let install = |extra: &[&str]| {
        run(Command::new(rampart_bin())
            .args(["trust", "install", "--java-keystore"])
            .arg(&keystore)
            .args(extra)
            .arg("--data-dir")
            .arg(&data)
            .env("RAMPART_JAVA_STOREPASS", "s3cret-store"))
    };
    let out = ok(install(&[]));
    assert!(out.contains("added rampart-gateway-ca"), "{out}");
    // The password went through the environment, never onto keytool's command line.
    assert!(!out.contains("s3cret-store"), "{out}");

    let listed = keytool_list(&keystore, "s3cret-store");
    let entry = listed
        .lines()
        .position(|l| {
            l.starts_with("rampart-gateway-ca,") && l.trim_end().ends_with("trustedCertEntry,")
        })
        .unwrap_or_else(|| panic!("no trusted rampart-gateway-ca entry:\n{listed}"));
    // keytool prints the SHA-256 fingerprint on the next line, as `ca show` does.
    let fingerprint = listed.lines().nth(entry + 1).expect("fingerprint line");
    let shown = ok(rampart(&[
        "ca",
        "show",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]));
    let ours = shown
        .lines()
        .find_map(|l| {
            l.split_once("sha256")
                .map(|(_, f)| f.trim_start_matches(':').trim().to_string())
        })
        .or_else(|| {
            shown
                .lines()
                .find(|l| l.to_lowercase().contains("fingerprint"))
                .and_then(|l| l.split_whitespace().last().map(str::to_string))
        })
        .unwrap_or_else(|| panic!("no fingerprint in `ca show`:\n{shown}"));
    assert!(
        fingerprint
            .to_uppercase()
            .replace(':', "")
            .contains(&ours.to_uppercase().replace(':', "")),
        "keytool: {fingerprint}\nca show: {shown}"
    );

    // A wrong password is keytool's error, reported as such.
    let wrong = run(Command::new(rampart_bin())
        .args(["trust", "install", "--remove", "--java-keystore"])
        .arg(&keystore)
        .env("RAMPART_JAVA_STOREPASS", "wrong"));
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("keytool -list"), "{}", text(&wrong));

    let out = ok(install(&["--remove"]));
    assert!(out.contains("removed rampart-gateway-ca"), "{out}");
    assert_eq!(keytool_list(&keystore, "s3cret-store"), before);
}

// ---------------------------------------------------------------------------------
// trust env --unset, trust verify with node and cargo
// ---------------------------------------------------------------------------------

/// Every variable `trust env` sets (the names from its own output).
fn trust_variables(data: &Path) -> Vec<String> {
    let out = ok(rampart(&[
        "trust",
        "env",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]));
    out.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn trust_env_unset_reverts_every_variable_trust_env_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = rampart_ca(dir.path());
    let names = trust_variables(&data);
    assert!(names.len() >= 8, "{names:?}");
    let script = r#"
        eval "$("$RAMPART" trust env --data-dir "$DATA")"
        echo "set: $(env | grep -c -E "^($NAMES)=")"
        eval "$("$RAMPART" trust env --unset)"
        echo "left: $(env | grep -c -E "^($NAMES)=")"
    "#;
    let out = ok(run(Command::new("sh")
        .args(["-c", script])
        .env("RAMPART", rampart_bin())
        .env("DATA", &data)
        .env("NAMES", names.join("|"))));
    assert!(out.contains(&format!("set: {}", names.len())), "{out}");
    assert!(out.contains("left: 0"), "{out}");
    // Without a data dir at all: reverting needs no CA.
    let out = ok(rampart(&["trust", "env", "--unset", "--shell", "fish"]));
    for name in &names {
        assert!(out.contains(&format!("set -e {name}")), "{name}: {out}");
    }
}

#[test]
fn node_and_cargo_pass_trust_verify_through_an_intercepting_rampart_only_after_trust_env() {
    require(&["node", "cargo", "openssl"]);
    let origin = TlsOrigin::start("origin.test");
    let gw = Rampart::start(&format!(
        "[proxy]\nallow_loopback_destinations = true\nconnect_ports = [{port}]\ntls_ports = [{port}]\n\
         [resolve]\n\"origin.test\" = \"127.0.0.1\"\n\
         [tls]\nsystem_roots = false\nextra_roots = [{ca:?}]\n",
        port = origin.port,
        ca = origin.ca_pem.display().to_string(),
    ));
    let url = format!("https://origin.test:{}/", origin.port);
    let script = r#"
        unset SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE PIP_CERT GIT_SSL_CAINFO \
              NODE_EXTRA_CA_CERTS CARGO_HTTP_CAINFO HTTPS_PROXY https_proxy HTTP_PROXY http_proxy
        if [ "$MODE" = trusted ]; then eval "$("$RAMPART" trust env --data-dir "$DATA")"; fi
        "$RAMPART" trust verify --url "$URL" --proxy "$PROXY" --timeout 20
        echo "exit=$?"
    "#;
    let verify = |mode: &str| {
        let out = run(Command::new("sh")
            .args(["-c", script])
            .env("MODE", mode)
            .env("RAMPART", rampart_bin())
            .env("DATA", gw.data_dir())
            .env("URL", &url)
            .env("PROXY", gw.proxy_url()));
        text(&out)
    };
    let before = verify("untrusted");
    for tool in ["node", "cargo"] {
        assert!(
            before.contains(&format!("{tool:<16} FAIL")),
            "{tool}: {before}"
        );
    }
    let after = verify("trusted");
    for tool in ["node", "cargo"] {
        assert!(
            after.contains(&format!("{tool:<16} pass")),
            "{tool}: {after}"
        );
    }
    // Both went through the gateway and were decrypted there: the origin's own
    // certificate (from a CA only the gateway trusts) was never what they verified.
    let cargo_request = gw.find_record(|r| {
        r["target"]
            .as_str()
            .is_some_and(|t| t.starts_with(&url) && t.ends_with("/config.json"))
    });
    assert_eq!(
        cargo_request["tls"]["decision"], "decrypt",
        "{cargo_request}"
    );
    let node_request =
        gw.find_record(|r| r["target"].as_str() == Some(url.as_str()) && r["method"] == "GET");
    assert_eq!(node_request["tls"]["decision"], "decrypt", "{node_request}");
}

#[test]
fn trust_verify_local_checks_each_tool_against_a_loopback_origin_signed_by_rampart() {
    require(&["curl", "python3", "git", "node", "cargo"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = rampart_ca(dir.path());
    let script = r#"
        unset SSL_CERT_FILE SSL_CERT_DIR REQUESTS_CA_BUNDLE CURL_CA_BUNDLE PIP_CERT GIT_SSL_CAINFO \
              NODE_EXTRA_CA_CERTS CARGO_HTTP_CAINFO
        # A proxy in the environment must not matter: the origin is reached directly.
        export HTTPS_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
        if [ "$MODE" = trusted ]; then eval "$("$RAMPART" trust env --data-dir "$DATA")"; fi
        "$RAMPART" trust verify --local --data-dir "$DATA" --timeout 20
        echo "exit=$?"
    "#;
    let verify = |mode: &str| {
        text(&run(Command::new("sh")
            .args(["-c", script])
            .env("MODE", mode)
            .env("RAMPART", rampart_bin())
            .env("DATA", &data)))
    };
    let tools = ["curl", "python requests", "pip", "git", "node", "cargo"];
    let before = verify("untrusted");
    assert!(
        before.contains("checking against https://127.0.0.1:"),
        "{before}"
    );
    for tool in tools {
        assert!(
            before.contains(&format!("{tool:<16} FAIL")),
            "{tool}: {before}"
        );
    }
    assert!(before.contains("exit=1"), "{before}");
    let after = verify("trusted");
    assert!(
        !after.contains("skipped"),
        "a tool is missing (pip: the python3-pip package): run scripts/install-test-deps.sh\n{after}"
    );
    for tool in tools {
        assert!(
            after.contains(&format!("{tool:<16} pass")),
            "{tool}: {after}"
        );
    }
    assert!(after.contains("exit=0"), "{after}");
}
