#![allow(dead_code)]
//! Shared by the console tests: a server with events made by real proxied
//! curl requests, console users made with `rampart user add`, and a curl
//! client with a cookie jar.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::origin::Origin;
use super::support::{curl, device_token, enroll_agent, eventually, rampart_bin, run, Rampart};

pub const POLICY: &str = r#"
[lists]
blocked = ["blocked.test"]
watched = ["watched.test"]

[[access]]
id = "block-list"
name = "blocked hosts"
when = { lists = ["blocked"] }
action = "block"

[[access]]
id = "watch-list"
name = "watched hosts"
when = { lists = ["watched"] }
action = "alert"
"#;

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const ANALYST_PASSWORD: &str = "analyst-password-1";

/// A server with [`POLICY`] (and `[policy] tests` naming a cases file of `cases`,
/// `dir/cases.toml`) whose store holds an allowed request to `ok.test`, one blocked
/// (`blocked.test`) and one alerted (`watched.test`), made with curl through its
/// proxy to `origin`.
pub fn events_server(origin: &Origin, dir: &Path, cases: Option<&str>) -> Rampart {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).expect("write policy");
    let policy_toml = match cases {
        None => format!("policy = {:?}\n", policy.display().to_string()),
        Some(cases) => {
            let path = dir.join("cases.toml");
            std::fs::write(&path, cases).expect("write cases");
            format!(
                "[policy]\nfile = {:?}\ntests = {:?}\n",
                policy.display().to_string(),
                path.display().to_string()
            )
        }
    };
    let server = Rampart::start(&format!(
        "{policy_toml}[proxy]\nallow_loopback_destinations = true\n[resolve]\n\"ok.test\" = \"127.0.0.1\"\n\"blocked.test\" = \"127.0.0.1\"\n\"watched.test\" = \"127.0.0.1\"\n",
    ));
    let port = origin.port();
    for host in ["ok.test", "blocked.test", "watched.test"] {
        curl(
            &server.proxy_url(),
            &[&format!("http://{host}:{port}/hello")],
        );
    }
    // Durable within about a second of the flow's end (group commit).
    assert!(
        eventually(Duration::from_secs(10), || server
            .search_events("", "json")
            .len()
            >= 4),
        "the proxied requests never reached the store: {:?}",
        server.search_events("", "json")
    );
    server
}

/// A server whose store holds an allowed, a blocked and an alerted request
/// (made with curl through its proxy), and an admin and an analyst.
pub struct Console {
    pub server: Rampart,
    pub _origin: Origin,
    pub _dir: tempfile::TempDir,
}

impl Console {
    pub fn start() -> Console {
        Self::start_with_tests(None)
    }

    /// As [`Console::start`], with `[policy] tests` naming a cases file of `cases`
    /// (in the console's temporary dir, see [`Console::cases_path`]).
    pub fn start_with_tests(cases: Option<&str>) -> Console {
        let origin = Origin::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let server = events_server(&origin, dir.path(), cases);
        let console = Console {
            server,
            _origin: origin,
            _dir: dir,
        };
        console.add_user("root", "admin", ADMIN_PASSWORD);
        console.add_user("ana", "analyst", ANALYST_PASSWORD);
        console
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.server.api)
    }

    /// The `[policy] tests` file of [`Console::start_with_tests`].
    pub fn cases_path(&self) -> PathBuf {
        self._dir.path().join("cases.toml")
    }

    /// The server's admin API token (`<data dir>/admin.token`).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.server.data_dir().join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// Enrolls a device for `user` the way an agent does (`rampart device token
    /// create`, then `rampart agent enroll` against the API), without running the
    /// agent: the device is in the inventory and offline. Returns its id.
    pub fn enroll_device(&self, user: &str) -> String {
        let token = device_token(&self.server.data_dir(), user, None);
        let dir = self._dir.path().join(format!("agent-{user}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[steering]\nmode = \"local-proxy\"\n",
                dir.join("state").display().to_string()
            ),
        )
        .expect("agent config");
        enroll_agent(
            Command::new(rampart_bin()),
            &self.base(),
            &token,
            &config,
            &dir.join("state"),
        )
    }

    /// `rampart device ARGS --server API --token T` (the CLI against this server).
    pub fn device_cmd(&self, args: &[&str]) -> std::process::Output {
        run(Command::new(rampart_bin()).arg("device").args(args).args([
            "--server",
            &self.base(),
            "--token",
            &self.admin_token(),
        ]))
    }

    /// `rampart user add NAME --role ROLE` with the password on stdin.
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        let out = self.user_cmd(&["add", name, "--role", role], Some(password));
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn user_cmd(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let data = self.server.data_dir();
        let mut child = Command::new(rampart_bin())
            .arg("user")
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rampart user");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            writeln!(pipe, "{input}").expect("write password");
        }
        child.wait_with_output().expect("rampart user")
    }
}

/// One HTTP response as curl saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Vec<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
            .collect()
    }

    /// The value of the first `name="csrf"` hidden field.
    pub fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf field in {}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').expect("closing quote") + start;
        self.body[start..end].to_string()
    }
}

/// curl with its own cookie jar: a browser-like session, without redirects followed.
pub struct Client {
    base: String,
    jar: PathBuf,
    _dir: tempfile::TempDir,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let dir = tempfile::tempdir().expect("tempdir");
        Client {
            base: base.to_string(),
            jar: dir.path().join("cookies"),
            _dir: dir,
        }
    }

    fn exchange(&self, args: &[&str]) -> Reply {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "30", "-b"])
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .args(args)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no status in {text:?} ({})",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        Reply {
            status,
            headers: head.to_string(),
            body: body.to_string(),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.exchange(&[&format!("{}{path}", self.base)])
    }

    /// GET with query parameters URL-encoded by curl.
    pub fn get_query(&self, path: &str, params: &[(&str, &str)]) -> Reply {
        let mut args = vec!["-G".to_string()];
        for (k, v) in params {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}{path}", self.base));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exchange(&refs)
    }

    /// A form POST (application/x-www-form-urlencoded).
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        let mut args = vec!["-X".to_string(), "POST".to_string()];
        for (k, v) in form {
            args.push("--data-urlencode".into());
            args.push(format!("{k}={v}"));
        }
        if form.is_empty() {
            args.push("-d".into());
            args.push(String::new());
        }
        args.push(format!("{}{path}", self.base));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exchange(&refs)
    }

    /// The login form, then the POST with its CSRF token.
    pub fn login(&self, user: &str, password: &str) -> Reply {
        let form = self.get("/login");
        assert_eq!(form.status, 200, "{form:?}");
        let csrf = form.csrf();
        self.post(
            "/login",
            &[
                ("username", user),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/events"),
            ],
        )
    }
}
