//! The README's quick start and tour, run as a user would, offline: `rampart demo`
//! and `rampart server --config rampart-demo/demo.toml` (the quick start, mirrored
//! here with the listeners moved to free ports), then every command line of the
//! tour's code block, read from README.md itself, through `sh -c` in the same
//! working directory. Only the well-known ports and `cargo run ... --` are replaced
//! (by free ports and the test's binary), so a tour that drifts from the product
//! fails here.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{eventually, free_port, http_get_status, rampart_bin};

/// Kills the process when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The command lines of the first `sh` block after `## A two-minute tour`.
fn tour_commands(readme: &str) -> Vec<String> {
    let tour = &readme[readme
        .find("## A two-minute tour")
        .expect("README has a tour section")..];
    let block = &tour[tour.find("```sh\n").expect("the tour has an sh block") + 6..];
    let block = &block[..block.find("```").expect("the tour block ends")];
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Starts `rampart demo` on free ports; returns it and its (http, https) ports, read
/// from its first line of output.
fn start_demo(dir: &Path) -> (Killed, u16, u16, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(rampart_bin())
        .args([
            "demo",
            "--http-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rampart demo");
    let stdout = child.stdout.take().expect("demo stdout");
    let demo = Killed(child);
    let mut first = String::new();
    // Kept open for the whole test, as a terminal would be.
    let mut output = BufReader::new(stdout);
    output
        .read_line(&mut first)
        .expect("demo prints its origin");
    let port_after = |scheme: &str| -> u16 {
        let prefix = format!("{scheme}://demo.rampart.test:");
        let at = first.find(&prefix).unwrap_or_else(|| panic!("{first}")) + prefix.len();
        first[at..]
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no {scheme} port in {first:?}"))
    };
    let (http, https) = (port_after("http"), port_after("https"));
    (demo, http, https, output)
}

#[test]
fn every_command_of_the_readme_tour_succeeds_offline_against_the_demo_origin() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let commands = tour_commands(&readme);
    assert!(commands.len() >= 10, "{commands:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    // The tour reads examples/ relative to the repository, like a user in a clone.
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples"))
        .expect("link examples");

    // Quick start, terminal 1: `rampart demo`.
    let (_demo, http_port, https_port, _demo_output) = start_demo(dir.path());
    assert!(dir.path().join("rampart-demo/demo.toml").exists());

    // Quick start, terminal 2: `rampart server --config rampart-demo/demo.toml`.
    let (proxy, api, tunnel) = (free_port(), free_port(), free_port());
    let server = Command::new(rampart_bin())
        .args(["server", "--config", "rampart-demo/demo.toml"])
        .args(["--proxy-listen", &format!("127.0.0.1:{proxy}")])
        .args(["--api-listen", &format!("127.0.0.1:{api}")])
        .args(["--tunnel-listen", &format!("127.0.0.1:{tunnel}")])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rampart server");
    let _server = Killed(server);
    let api_addr = format!("127.0.0.1:{api}").parse().expect("api address");
    assert!(
        eventually(Duration::from_secs(20), || http_get_status(
            api_addr, "/healthz"
        ) == Some(200)),
        "the server of the quick start did not start"
    );

    let mut outputs = Vec::new();
    for line in &commands {
        let command = line
            .replace("cargo run -q --release -p rampart-cli --", rampart_bin())
            .replace("127.0.0.1:3128", &format!("127.0.0.1:{proxy}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{api}"))
            .replace(
                "demo.rampart.test:8480",
                &format!("demo.rampart.test:{http_port}"),
            )
            .replace(
                "demo.rampart.test:8443",
                &format!("demo.rampart.test:{https_port}"),
            );
        assert!(
            !command.contains("cargo run"),
            "a tour command builds instead of using the binary: {line}"
        );
        let out = Command::new("sh")
            .args(["-c", &command])
            .current_dir(dir.path())
            // No proxy settings of the machine running the tests may leak in.
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .env_remove("RAMPART_CONFIG")
            .env_remove("RAMPART_DATA_DIR")
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "README tour command failed: {line}\n{command}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((line.clone(), stdout));
    }

    let output_of = |prefix: &str| -> &str {
        outputs
            .iter()
            .find(|(l, _)| l.starts_with(prefix))
            .map(|(_, o)| o.as_str())
            .unwrap_or_else(|| panic!("no tour command starts with {prefix:?}"))
    };
    assert_eq!(
        output_of("curl -x http://127.0.0.1:3128 http://demo").trim(),
        "200"
    );
    let last = output_of("sleep 0.5; tail -n1 rampart-data/access.log");
    assert!(
        last.contains("http://demo.rampart.test:"),
        "tail showed no record of the request: {last:?}"
    );
    assert!(output_of("curl -x http://127.0.0.1:3128 --cacert").contains("quarterly report"));
    assert_eq!(
        output_of("curl -sx http://127.0.0.1:3128 http://127.0.0.1:8080").trim(),
        "403"
    );
    assert!(
        output_of("cargo run -q --release -p rampart-cli -- events search")
            .contains("demo.rampart.test")
    );
    assert!(
        output_of("cargo run -q --release -p rampart-cli -- trust env").contains("SSL_CERT_FILE")
    );
    assert!(output_of("curl -s -X POST").contains("\"reloads_ok\":1"));
}
