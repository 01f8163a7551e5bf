//! An enrolled `rampart agent run` in local-proxy mode (no root): a one-time token
//! from the gateway's data dir, `rampart agent enroll`, then the agent in the
//! background. Clients sent to [`EnrolledAgent::proxy`] go client → agent → mTLS
//! HTTP/2 tunnel → gateway.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{device_token, enroll_agent, eventually, free_port, rampart_bin, run, Rampart};

pub struct EnrolledAgent {
    /// The agent's local proxy.
    pub proxy: SocketAddr,
    pub device: String,
    /// The agent's data dir (enrollment, agent.log).
    pub state: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl EnrolledAgent {
    /// Enrolls a device for `user` in `groups` (comma-separated) with the gateway's
    /// server and runs the agent; `extra_toml` is appended to the agent's config
    /// (e.g. `[[steering.exceptions]]`).
    pub fn start(gw: &Rampart, user: &str, groups: &str, extra_toml: &str) -> EnrolledAgent {
        Self::start_as(gw, user, groups, extra_toml, None)
    }

    /// As [`EnrolledAgent::start`]; with `run_as` = `Some(("nobody", "nogroup"))` the
    /// agent runs under that unprivileged account (`setpriv`, no capabilities), the way a
    /// user without root runs local-proxy mode. Its state is handed over to that account.
    pub fn start_as(
        gw: &Rampart,
        user: &str,
        groups: &str,
        extra_toml: &str,
        run_as: Option<(&str, &str)>,
    ) -> EnrolledAgent {
        let token = device_token(&gw.data_dir(), user, Some(groups));

        let dir = tempfile::tempdir().expect("tempdir");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[steering]\nmode = \"local-proxy\"\n[local_proxy]\nlisten = \"{proxy}\"\n{extra_toml}",
                state.display().to_string()
            ),
        )
        .expect("write agent config");
        let device = enroll_agent(
            Command::new(rampart_bin()),
            &format!("http://{}", gw.api),
            &token,
            &config,
            &state,
        );
        let mut command = match run_as {
            None => Command::new(rampart_bin()),
            Some((account, group)) => {
                let out = run(Command::new("chown")
                    .arg("-R")
                    .arg(format!("{account}:{group}"))
                    .arg(dir.path()));
                assert!(out.status.success(), "chown of the agent state failed");
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={account}"),
                    &format!("--regid={group}"),
                    "--clear-groups",
                    "--inh-caps=-all",
                    "--bounding-set=-all",
                ])
                .arg(rampart_bin());
                c
            }
        };
        let child = command
            .args(["agent", "run", "--config", config.to_str().expect("utf-8")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rampart agent run");
        let agent = EnrolledAgent {
            proxy,
            device,
            state,
            child,
            _dir: dir,
        };
        assert!(
            eventually(Duration::from_secs(15), || TcpStream::connect(proxy)
                .is_ok()),
            "the agent's local proxy never came up"
        );
        agent
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for EnrolledAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
