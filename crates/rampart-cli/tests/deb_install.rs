//! Packaging (issue 21): the `.deb` and the `Containerfile`.
//!
//! The `.deb` is built by `scripts/build-deb.sh` (cargo-deb) from the binary this
//! test run built, and installed with `dpkg -i` into a throw-away root
//! (`dpkg --root` with `--force-script-chrootless`: the maintainer scripts run
//! with `DPKG_ROOT` set and honour it, so this machine is never modified). The
//! installed files are checked with the tools that consume them
//! (`systemd-analyze verify`, bash's `complete`, `logrotate`), then the server
//! unit's `ExecStart` runs as the unit's user with its paths redirected into the
//! root and serves through the proxy; `ExecReload` reloads it; `logrotate`
//! rotates its access log; an upgrade keeps an edited conffile; a purge removes
//! what it should.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rampart_testkit::free_port;

/// PATH for dpkg: it insists on finding ldconfig and start-stop-daemon.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const UNITS: [&str; 3] = [
    "rampart-server.service",
    "rampart-gateway.service",
    "rampart-agent.service",
];
/// The boot-time oneshot that re-applies an isolated device's nftables batch
/// (docs/isolation.md, "At boot"); enabled by the package.
const ISOLATION_UNIT: &str = "rampart-agent-isolation.service";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Root is needed to install files owned by root and to run the server as the
/// package's user. CI runs as root: there a missing privilege is a failure.
fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED: {what} needs root");
    assert!(std::env::var_os("CI").is_none(), "CI must run as root");
    true
}

/// Fails with the install line when a tool the test drives is missing.
fn require_tool(program: &str, args: &[&str], install: &str) {
    let found = Command::new(program)
        .args(args)
        .env("PATH", path_with_cargo())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is missing; install it with: {install} (scripts/install-test-deps.sh)"
    );
}

/// The system PATH plus the directory cargo (and cargo-deb) live in.
fn path_with_cargo() -> String {
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(|home| format!("{home}/bin"))
        .unwrap_or_else(|_| format!("{}/.cargo/bin", std::env::var("HOME").unwrap_or_default()));
    let current = std::env::var("PATH").unwrap_or_default();
    format!("{current}:{cargo_bin}:{SYSTEM_PATH}")
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// dpkg acting on the throw-away root only.
fn dpkg(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    command
        .env("PATH", SYSTEM_PATH)
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
        .arg("--force-script-chrootless")
        // The root holds no other package: libc6, init-system-helpers... are
        // the host's, which the chrootless scripts use.
        .arg("--force-depends")
        .stdin(Stdio::null());
    command
}

/// An empty dpkg database: what `dpkg --root` needs to install into a directory.
fn init_dpkg_root(root: &Path) {
    let admin = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(dir)).expect("dpkg admin dir");
    }
    for file in ["status", "available"] {
        fs::write(admin.join(file), "").expect("dpkg admin file");
    }
    fs::create_dir_all(root.join("var/log")).expect("log dir");
    fs::create_dir_all(root.join("etc")).expect("etc");
}

/// `Key=` values of a unit's `[Service]` section, in order.
fn service_values(unit: &str, key: &str) -> Vec<String> {
    let mut in_service = false;
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service {
            if let Some(value) = line.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
                values.push(value.to_owned());
            }
        }
    }
    values
}

/// `name:x:uid:gid:...` from a passwd-style file of the root.
fn account_ids(passwd: &Path, name: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(passwd).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() >= 4)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// A child process killed (SIGTERM, then SIGKILL) when the test ends, failed or not.
struct Daemon {
    child: Child,
    stderr_path: PathBuf,
}

impl Daemon {
    fn spawn(mut command: Command, stderr_path: PathBuf) -> Daemon {
        let log = fs::File::create(&stderr_path).expect("stderr log file");
        command
            .stdout(Stdio::null())
            .stderr(log)
            .stdin(Stdio::null());
        let shown = format!("{command:?}");
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        Daemon { child, stderr_path }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn assert_running(&mut self, context: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{context}: the process exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with a pid this struct owns and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` with a deadline; returns (HTTP status, body).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = all.rsplit_once('\n').unwrap_or(("", &all));
    (status.to_owned(), body.to_owned())
}

fn wait_until(what: &str, daemon: &mut Daemon, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        daemon.assert_running(what);
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}:\n{}", daemon.log());
}

/// A loopback origin: Python's own HTTP server on a directory with one file.
fn start_origin(dir: &Path) -> (Daemon, u16) {
    let www = dir.join("www");
    fs::create_dir_all(&www).expect("origin dir");
    fs::write(www.join("hello.txt"), "hello from the origin\n").expect("origin file");
    let port = free_port();
    let mut command = Command::new("python3");
    command
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string());
    let mut origin = Daemon::spawn(command, dir.join("origin.log"));
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    wait_until("the origin", &mut origin, || curl(&[&url]).0 == "200");
    (origin, port)
}

/// Loopback listeners on free ports, as flags `rampart server` takes.
struct Listeners {
    proxy: u16,
    api: u16,
    tunnel: u16,
}

impl Listeners {
    fn pick() -> Listeners {
        Listeners {
            proxy: free_port(),
            api: free_port(),
            tunnel: free_port(),
        }
    }

    fn flags(&self) -> Vec<String> {
        vec![
            format!("--proxy-listen=127.0.0.1:{}", self.proxy),
            format!("--api-listen=127.0.0.1:{}", self.api),
            format!("--tunnel-listen=127.0.0.1:{}", self.tunnel),
        ]
    }

    fn healthz(&self) -> String {
        format!("http://127.0.0.1:{}/healthz", self.api)
    }

    fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy)
    }
}

#[test]
fn deb_installs_into_a_fresh_root_and_the_server_unit_command_serves() {
    if skip_unless_root("installing the .deb") {
        return;
    }
    require_tool(
        "cargo",
        &["deb", "--version"],
        "cargo install cargo-deb --locked",
    );
    require_tool("dpkg", &["--version"], "apt-get install -y dpkg");
    require_tool(
        "systemd-analyze",
        &["--version"],
        "apt-get install -y systemd",
    );
    require_tool("logrotate", &["--version"], "apt-get install -y logrotate");
    require_tool("curl", &["--version"], "apt-get install -y curl");
    require_tool("python3", &["--version"], "apt-get install -y python3");
    require_tool("setpriv", &["--version"], "apt-get install -y util-linux");
    require_tool("unshare", &["--version"], "apt-get install -y util-linux");

    let tmp = tempfile::tempdir().expect("temp dir");
    // The package's user must reach the root's files, as on a real system.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    let root = tmp.path().join("root");
    let debs = tmp.path().join("debs");

    // Build: the binary this test run built, packaged as a release would be.
    let started = Instant::now();
    run(Command::new(repo_root().join("scripts/build-deb.sh"))
        .env("PATH", path_with_cargo())
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_rampart"))
        .arg("--output")
        .arg(&debs)
        .arg("--fast"));
    eprintln!("built the .deb in {:.1?}", started.elapsed());
    let deb = fs::read_dir(&debs)
        .expect("output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .expect("build-deb.sh wrote no .deb");

    // The control data a package manager sees.
    let info = text(&run(Command::new("dpkg-deb").arg("--info").arg(&deb)));
    assert!(info.contains("Package: rampart"), "{info}");
    assert!(
        info.contains("postinst") && info.contains("postrm"),
        "{info}"
    );
    let listing = text(&run(Command::new("dpkg-deb").arg("--contents").arg(&deb)));
    for path in [
        "./usr/bin/rampart",
        "./etc/rampart/rampart.toml",
        "./lib/systemd/system/rampart-server.service",
        "./lib/systemd/system/rampart-gateway.service",
        "./lib/systemd/system/rampart-agent.service",
        "./lib/systemd/system/rampart-agent-isolation.service",
        "./etc/logrotate.d/rampart",
        "./usr/share/bash-completion/completions/rampart",
        "./usr/share/zsh/vendor-completions/_rampart",
        "./usr/share/fish/vendor_completions.d/rampart.fish",
        "./usr/share/doc/rampart/install.md",
    ] {
        assert!(
            listing.contains(path),
            "{path} is not in the package:\n{listing}"
        );
    }

    // Install.
    let host_before = host_state();
    init_dpkg_root(&root);
    run(dpkg(&root).arg("-i").arg(&deb));
    let status = text(&run(dpkg_query(&root).args([
        "-W",
        "-f=${Status} ${Conffiles}",
        "rampart",
    ])));
    assert!(status.starts_with("install ok installed"), "{status}");
    assert!(
        status.contains("/etc/rampart/rampart.toml"),
        "not a conffile: {status}"
    );
    assert!(
        status.contains("/etc/logrotate.d/rampart"),
        "not a conffile: {status}"
    );
    check_installed_files(&root);
    check_units(&root);
    check_shipped_examples(&root);

    // An upgrade (the same package again runs every upgrade path of the
    // scripts) keeps an edited configuration, its mode and the enabled server.
    let config = root.join("etc/rampart/rampart.toml");
    let edited = format!(
        "{}\n# edited by the administrator\n",
        fs::read_to_string(&config).expect("config")
    );
    fs::write(&config, &edited).expect("edit config");
    run(dpkg(&root).arg("-i").arg(&deb));
    assert_eq!(fs::read_to_string(&config).expect("config"), edited);
    check_installed_files(&root);

    serve_from_the_server_unit(&root, tmp.path());

    // Purge: the files, the configuration and the enablement go; the
    // operator's data dir stays.
    run(dpkg(&root).args(["--purge", "rampart"]));
    for gone in [
        "usr/bin/rampart",
        "etc/rampart/rampart.toml",
        "etc/systemd/system/multi-user.target.wants/rampart-server.service",
        "etc/systemd/system/sysinit.target.wants/rampart-agent-isolation.service",
    ] {
        assert!(
            fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} is still there after a purge"
        );
    }
    assert!(
        root.join("var/lib/rampart/ca.pem").exists(),
        "purge removed the data dir"
    );
    assert_eq!(
        host_state(),
        host_before,
        "installing into the throw-away root changed this machine"
    );
}

/// What installing the package would change on this machine: the rampart
/// account, dpkg's record of the package and its stat override, the enabled
/// units. (Not whole files: other tests' package installs may change them.)
fn host_state() -> Vec<(String, bool)> {
    let contains =
        |path: &str, needle: &str| fs::read_to_string(path).is_ok_and(|text| text.contains(needle));
    let mut state = vec![
        (
            "rampart user".to_owned(),
            contains("/etc/passwd", "\nrampart:"),
        ),
        (
            "rampart group".to_owned(),
            contains("/etc/group", "\nrampart:"),
        ),
        (
            "dpkg's rampart package".to_owned(),
            contains("/var/lib/dpkg/status", "Package: rampart\n"),
        ),
        (
            "stat override".to_owned(),
            contains("/var/lib/dpkg/statoverride", "/etc/rampart/"),
        ),
    ];
    for unit in UNITS {
        let wanted = format!("/etc/systemd/system/multi-user.target.wants/{unit}");
        let present = fs::symlink_metadata(&wanted).is_ok();
        state.push((wanted, present));
    }
    state
}

fn dpkg_query(root: &Path) -> Command {
    let mut command = Command::new("dpkg-query");
    command
        .env("PATH", SYSTEM_PATH)
        .arg(format!("--root={}", root.display()));
    command
}

/// What postinst and the package put in place.
fn check_installed_files(root: &Path) {
    let binary = root.join("usr/bin/rampart");
    let mode = fs::metadata(&binary)
        .expect("usr/bin/rampart")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "usr/bin/rampart mode {mode:o}");
    let version = text(&run(Command::new(&binary).arg("--version")));
    assert!(version.starts_with("rampart "), "{version}");

    // The account, from systemd-sysusers run by postinst inside the root.
    let (uid, gid) = account_ids(&root.join("etc/passwd"), "rampart")
        .expect("postinst created no rampart user in the root's /etc/passwd");
    assert!(
        uid > 0 && uid < 1000,
        "rampart is not a system account: uid {uid}"
    );
    let passwd = fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains(":/var/lib/rampart:/usr/sbin/nologin"),
        "{passwd}"
    );

    // The configuration: readable by the rampart group only (stat override).
    let config = root.join("etc/rampart/rampart.toml");
    let meta = fs::metadata(&config).expect("/etc/rampart/rampart.toml");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "config mode");
    assert_eq!((meta.uid(), meta.gid()), (0, gid), "config owner");
    let toml = fs::read_to_string(&config).expect("config");
    assert!(toml.contains("data_dir = \"/var/lib/rampart\""), "{toml}");

    // Only the server is enabled (its configuration is loopback-only).
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    let link = fs::read_link(wants.join("rampart-server.service"))
        .expect("postinst did not enable rampart-server.service");
    assert!(
        link.ends_with("rampart-server.service"),
        "{}",
        link.display()
    );
    for unit in ["rampart-gateway.service", "rampart-agent.service"] {
        assert!(!wants.join(unit).exists(), "{unit} is enabled by default");
    }
    // The boot-time isolation unit is enabled (it runs only while an
    // isolation batch is on disk), from sysinit, before any network.
    let isolation = root
        .join("etc/systemd/system/sysinit.target.wants")
        .join(ISOLATION_UNIT);
    assert!(
        fs::read_link(&isolation).is_ok_and(|l| l.ends_with(ISOLATION_UNIT)),
        "postinst did not enable {ISOLATION_UNIT}"
    );

    // Completions: bash loads its file and completes `rampart`.
    let bash = root.join("usr/share/bash-completion/completions/rampart");
    let complete = text(&run(Command::new("bash")
        .arg("-c")
        .arg(format!(". '{}' && complete -p rampart", bash.display()))));
    assert!(complete.contains("rampart"), "{complete}");
    let zsh =
        fs::read_to_string(root.join("usr/share/zsh/vendor-completions/_rampart")).expect("zsh");
    assert!(zsh.starts_with("#compdef rampart"), "{zsh}");
    let fish = fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/rampart.fish"))
        .expect("fish");
    assert!(
        fish.contains("complete -c rampart") && fish.contains("server"),
        "{fish}"
    );

    // Man pages, one per command, rendered from the same definitions as --help.
    let man = root.join("usr/share/man/man1");
    for page in [
        "rampart",
        "rampart-server",
        "rampart-gateway",
        "rampart-agent-run",
    ] {
        let page_path = man.join(format!("{page}.1.gz"));
        let roff = text(&run(Command::new("gzip").arg("-dc").arg(&page_path)));
        assert!(
            roff.contains(&format!(".TH {page} 1")),
            "{}: {roff}",
            page_path.display()
        );
    }
    let server_page = text(&run(Command::new("gzip")
        .arg("-dc")
        .arg(man.join("rampart-server.1.gz"))));
    assert!(server_page.contains("proxy\\-listen"), "{server_page}");
}

/// The example files under /usr/share/doc/rampart/examples parse: the
/// gateway's and the full server file through the same loader as `rampart
/// gateway|server` (`ca show --config` reads the whole file for its data_dir),
/// the agent's through `agent status`.
fn check_shipped_examples(root: &Path) {
    let binary = root.join("usr/bin/rampart");
    let examples = root.join("usr/share/doc/rampart/examples");
    for file in ["gateway-local.toml", "rampart.toml"] {
        let path = examples.join(file);
        let out = Command::new(&binary)
            .args(["ca", "show", "--config"])
            .arg(&path)
            .env_remove("RAMPART_DATA_DIR")
            .output()
            .expect("rampart ca show");
        let said = text(&out);
        // The data dir is named only once the file has loaded.
        assert!(
            said.contains("(data_dir of") && !said.contains("reading the data dir from"),
            "{file} does not load: {said}"
        );
    }
    let agent = text(
        &Command::new(&binary)
            .args(["agent", "status", "--config"])
            .arg(examples.join("agent.toml"))
            .output()
            .expect("rampart agent status"),
    );
    assert!(
        agent.contains("configured mode: transparent"),
        "agent.toml does not load: {agent}"
    );
}

/// The units pass `systemd-analyze verify` against this machine's systemd unit
/// set, and their hardening scores stay where they are.
fn check_units(root: &Path) {
    let units = root.join("lib/systemd/system");
    for unit in UNITS {
        let text = fs::read_to_string(units.join(unit)).expect("unit");
        assert_eq!(
            service_values(&text, "Restart"),
            ["on-failure"],
            "{unit}: Restart"
        );
        assert_eq!(service_values(&text, "NoNewPrivileges"), ["yes"], "{unit}");
        assert_eq!(service_values(&text, "ProtectSystem"), ["strict"], "{unit}");
        assert_eq!(service_values(&text, "PrivateTmp"), ["yes"], "{unit}");
        assert!(
            !service_values(&text, "ExecReload").is_empty(),
            "{unit}: no ExecReload"
        );
        let ambient = service_values(&text, "AmbientCapabilities").join(" ");
        if unit == "rampart-agent.service" {
            assert!(ambient.contains("CAP_NET_ADMIN"), "{unit}: {ambient}");
            assert_eq!(
                service_values(&text, "ReadWritePaths"),
                ["/var/lib/rampart-agent"]
            );
        } else {
            assert!(
                ambient.is_empty(),
                "{unit} must hold no capability: {ambient}"
            );
            assert_eq!(service_values(&text, "User"), ["rampart"], "{unit}");
            assert_eq!(
                service_values(&text, "ReadWritePaths"),
                ["/var/lib/rampart"]
            );
            assert_eq!(service_values(&text, "ProtectHome"), ["yes"], "{unit}");
        }
    }

    // verify --root resolves the units' dependencies and commands inside the
    // root: give it this machine's unit set and kill(1), as a system has them.
    let verify_root = tempfile::tempdir().expect("verify root");
    let verify_units = verify_root.path().join("lib/systemd/system");
    fs::create_dir_all(&verify_units).expect("units dir");
    run(Command::new("cp")
        .arg("-r")
        .arg("/lib/systemd/system/.")
        .arg(&verify_units));
    for unit in UNITS.iter().chain([&ISOLATION_UNIT]) {
        fs::copy(units.join(unit), verify_units.join(unit)).expect("copy unit");
    }
    for (from, to) in [
        (root.join("usr/bin/rampart"), "usr/bin/rampart"),
        (PathBuf::from("/bin/kill"), "bin/kill"),
        (PathBuf::from("/usr/sbin/nft"), "usr/sbin/nft"),
    ] {
        let dest = verify_root.path().join(to);
        fs::create_dir_all(dest.parent().expect("parent")).expect("bin dir");
        fs::copy(&from, &dest).expect("copy executable");
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", verify_root.path().display()))
        .args(UNITS)
        .arg(ISOLATION_UNIT));
    assert_eq!(text(&out), "", "systemd-analyze verify has warnings");

    for (unit, threshold) in [
        ("rampart-server.service", 20),
        ("rampart-gateway.service", 20),
        ("rampart-agent.service", 60),
    ] {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(format!("--threshold={threshold}"))
            .arg(units.join(unit))
            .output()
            .expect("systemd-analyze security");
        let report = text(&out);
        let overall = report.lines().last().unwrap_or_default().to_owned();
        assert!(
            out.status.success(),
            "{unit}: exposure above {}: {overall}",
            f64::from(threshold) / 10.0
        );
    }
}

/// Runs the server unit's `ExecStart` as its `User=`, with the unit's absolute
/// paths taken from the root, the data dir where `StateDirectory=` puts it and
/// loopback listeners on free ports; it serves through the proxy and on the
/// API, reloads through `ExecReload`, and its access log rotates.
fn serve_from_the_server_unit(root: &Path, tmp: &Path) {
    let unit = fs::read_to_string(root.join("lib/systemd/system/rampart-server.service"))
        .expect("server unit");
    let exec_start = service_values(&unit, "ExecStart");
    assert_eq!(exec_start.len(), 1, "{exec_start:?}");
    assert!(
        !exec_start[0].contains(['"', '\'', '$']),
        "the test splits ExecStart on spaces: {}",
        exec_start[0]
    );
    let argv: Vec<String> = exec_start[0]
        .split_whitespace()
        .map(|arg| {
            let inside = root.join(arg.trim_start_matches('/'));
            if arg.starts_with('/') && inside.exists() {
                inside.display().to_string()
            } else {
                arg.to_owned()
            }
        })
        .collect();
    assert!(
        argv[0].starts_with(&root.display().to_string()),
        "ExecStart's program is not in the package: {argv:?}"
    );
    let user = service_values(&unit, "User").join("");
    let (uid, gid) = account_ids(&root.join("etc/passwd"), &user).expect("the unit's user");
    let state_dir = service_values(&unit, "StateDirectory").join("");
    let data_dir = root.join("var/lib").join(&state_dir);
    // What StateDirectory= and StateDirectoryMode= do before the start.
    fs::create_dir_all(&data_dir).expect("state dir");
    std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid)).expect("chown state dir");
    fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700)).expect("chmod state dir");

    let (_origin, origin_port) = start_origin(tmp);
    let listeners = Listeners::pick();
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg("--")
        .args(&argv)
        .arg(format!("--data-dir={}", data_dir.display()))
        .args(listeners.flags())
        // The origin of this test lives on loopback.
        .arg("--allow-loopback-destinations")
        .env_clear()
        .env("PATH", SYSTEM_PATH);
    let mut server = Daemon::spawn(command, tmp.join("server.log"));
    let healthz = listeners.healthz();
    wait_until("the server's /healthz", &mut server, || {
        curl(&[&healthz]).0 == "200"
    });

    let url = format!("http://127.0.0.1:{origin_port}/hello.txt");
    let (status, body) = curl(&["-x", &listeners.proxy(), &url]);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "hello from the origin\n")
    );
    let ca = data_dir.join("ca.pem");
    assert_eq!(
        fs::metadata(&ca).expect("ca.pem").uid(),
        uid,
        "ca.pem not the unit user's"
    );
    let access_log = data_dir.join("access.log");
    wait_until("the access log line", &mut server, || {
        fs::read_to_string(&access_log).is_ok_and(|log| log.contains("/hello.txt"))
    });

    // ExecReload, with $MAINPID as systemd expands it.
    let reload = service_values(&unit, "ExecReload").join("");
    let reload = reload.replace("$MAINPID", &server.pid().to_string());
    let reload_argv: Vec<&str> = reload.split_whitespace().collect();
    run(Command::new(reload_argv[0]).args(&reload_argv[1..]));
    let metrics = format!("http://127.0.0.1:{}/metrics", listeners.api);
    wait_until("the reload", &mut server, || {
        curl(&[&metrics])
            .1
            .contains("rampart_config_reloads_total{kind=\"ok\"} 1")
    });

    // logrotate renames the file and creates a new one; its postrotate's
    // `systemctl kill --signal=USR1` (no systemd here) is this SIGUSR1: the
    // server writes the next lines into the new file.
    rotate_access_log(root, tmp, &data_dir);
    // SAFETY: kill with the pid of a child this test owns and has not reaped.
    assert_eq!(
        unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGUSR1) },
        0
    );
    // (The reopen is asynchronous: the first requests may still land in the
    // renamed file, as they would under logrotate.)
    let after = format!("{url}?after-rotation");
    wait_until("a line in the new access log", &mut server, || {
        let _ = curl(&["-x", &listeners.proxy(), &after]);
        fs::read_to_string(&access_log).is_ok_and(|log| log.contains("after-rotation"))
    });
}

/// Runs the package's logrotate file for real, in a private mount namespace
/// where /var/lib/rampart is the root's data dir and the rampart account is
/// known (the file rotates as that user): the log is renamed and a new one
/// created with the account's ownership.
fn rotate_access_log(root: &Path, tmp: &Path, data_dir: &Path) {
    let passwd = tmp.join("passwd");
    let group = tmp.join("group");
    for (host, ours, name) in [
        ("/etc/passwd", &passwd, "passwd"),
        ("/etc/group", &group, "group"),
    ] {
        let mut merged = fs::read_to_string(host).expect("host account file");
        merged
            .push_str(&fs::read_to_string(root.join("etc").join(name)).expect("root account file"));
        fs::write(ours, merged).expect("merged account file");
    }
    let config = root.join("etc/logrotate.d/rampart");
    let script = format!(
        "set -e
mount --bind '{passwd}' /etc/passwd
mount --bind '{group}' /etc/group
mount -t tmpfs tmpfs /var/lib
mkdir /var/lib/rampart
mount --bind '{data}' /var/lib/rampart
logrotate -d '{config}'
logrotate -f -s '{state}' '{config}'",
        passwd = passwd.display(),
        group = group.display(),
        data = data_dir.display(),
        config = config.display(),
        state = tmp.join("logrotate.state").display(),
    );
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", SYSTEM_PATH));
    let report = text(&out);
    assert!(!report.contains("error"), "logrotate: {report}");
    assert!(report.contains("/var/lib/rampart/access.log"), "{report}");
    let rotated = fs::read_to_string(data_dir.join("access.log.1")).expect("access.log.1");
    assert!(rotated.contains("/hello.txt"), "{rotated}");
    let fresh = fs::metadata(data_dir.join("access.log")).expect("new access.log");
    let (uid, _) = account_ids(&root.join("etc/passwd"), "rampart").expect("rampart");
    assert_eq!(fresh.uid(), uid, "new access.log owner");
    assert_eq!(fresh.permissions().mode() & 0o777, 0o600);
}

/// One instruction of a Containerfile: keyword and its arguments, continuation
/// lines joined.
fn containerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        instructions.push((keyword.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    instructions
}

/// `["a", "b"]` (the exec form) as a list; anything else fails the test.
fn exec_form(instruction: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{instruction} {args}: not the exec form ({e})"))
}

#[test]
fn containerfile_copies_existing_paths_and_its_command_serves_with_its_config() {
    require_tool("curl", &["--version"], "apt-get install -y curl");
    require_tool("python3", &["--version"], "apt-get install -y python3");
    let repo = repo_root();
    let text = fs::read_to_string(repo.join("Containerfile")).expect("Containerfile");
    let instructions = containerfile_instructions(&text);

    // Stages: a Debian 12 Rust build, a debian:12-slim runtime.
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].contains("rust:")
            && froms[0].contains("bookworm")
            && froms[0].ends_with(" AS build"),
        "{}",
        froms[0]
    );
    assert!(froms[1].ends_with("debian:12-slim"), "{}", froms[1]);

    let runtime_start = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("a runtime stage");
    let mut config_in_image = None;
    for (keyword, args) in &instructions {
        if keyword != "COPY" && keyword != "ADD" {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            let source = words[words.len() - 2];
            assert_eq!(source, "/src/target/release/rampart", "COPY --from: {args}");
            continue;
        }
        let (dest, sources) = words.split_last().expect("COPY has a destination");
        for source in sources {
            assert!(
                repo.join(source).exists(),
                "{keyword} {source}: no such path in the repository"
            );
            if *dest == "/etc/rampart/rampart.toml" {
                config_in_image = Some(repo.join(source));
            }
        }
    }
    let config_in_image = config_in_image.expect("no COPY of /etc/rampart/rampart.toml");
    // The build context leaves out the target dir (gigabytes) and nothing the
    // COPY lines need.
    let ignore = fs::read_to_string(repo.join(".dockerignore")).expect(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(ignored.contains(&"target/"), "{ignored:?}");
    for needed in ["Cargo.toml", "Cargo.lock", "crates/", "packaging/"] {
        assert!(
            !ignored
                .iter()
                .any(|pattern| needed.starts_with(pattern.trim_end_matches('*'))),
            ".dockerignore leaves out {needed}"
        );
    }
    let build_stage = &instructions[..runtime_start];
    assert!(
        build_stage.contains(&("WORKDIR".to_owned(), "/src".to_owned())),
        "the build stage's WORKDIR is not /src: the COPY --from path would not exist"
    );
    assert!(
        build_stage.iter().any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked -p rampart-cli")),
        "the build stage does not build rampart-cli in release"
    );

    let runtime = &instructions[runtime_start..];
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {keyword} in the runtime stage"))
    };
    let entrypoint = exec_form("ENTRYPOINT", &last("ENTRYPOINT"));
    let cmd = exec_form("CMD", &last("CMD"));
    assert_eq!(entrypoint, ["rampart"]);
    assert_eq!(cmd, ["server"]);
    assert_eq!(last("USER"), "rampart");
    assert_eq!(last("ENV"), "RAMPART_CONFIG=/etc/rampart/rampart.toml");
    let volume = last("VOLUME");
    let config_text = fs::read_to_string(&config_in_image).expect("container config");
    assert!(
        config_text.contains(&format!("data_dir = \"{volume}\"")),
        "VOLUME {volume} is not the data_dir"
    );
    let exposed: Vec<String> = last("EXPOSE")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for port in &exposed {
        assert!(
            config_text.contains(&format!("listen = \"0.0.0.0:{port}\"")),
            "EXPOSE {port} has no listener"
        );
    }
    assert_eq!(exposed.len(), 3, "{exposed:?}");

    // The image's command line, with the image's configuration (RAMPART_CONFIG
    // as ENV sets it), on loopback ports and a temporary volume.
    let tmp = tempfile::tempdir().expect("temp dir");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let volume_dir = tmp.path().join("volume");
    fs::create_dir_all(&volume_dir).expect("volume");
    let (_origin, origin_port) = start_origin(tmp.path());
    let listeners = Listeners::pick();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
    command
        .args(&cmd)
        .env("RAMPART_CONFIG", &config_in_image)
        .arg(format!("--data-dir={}", volume_dir.display()))
        .args(listeners.flags())
        .arg("--allow-loopback-destinations");
    let mut server = Daemon::spawn(command, tmp.path().join("server.log"));
    let healthz = listeners.healthz();
    wait_until("the image's server", &mut server, || {
        curl(&[&healthz]).0 == "200"
    });
    let url = format!("http://127.0.0.1:{origin_port}/hello.txt");
    let (status, body) = curl(&["-x", &listeners.proxy(), &url]);
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("200", "hello from the origin\n")
    );
    // The image's [log] format: JSON lines for the container runtime.
    let first = server.log().lines().next().unwrap_or_default().to_owned();
    assert!(first.starts_with('{'), "not a JSON log line: {first}");
    assert!(volume_dir.join("ca.pem").exists(), "no CA in the volume");
}
