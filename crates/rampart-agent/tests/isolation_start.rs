//! An agent whose persisted state says the device is isolated does not start
//! when the isolation cannot be re-applied: steering never comes up around an
//! isolation that is wanted and not in place (fail closed; the unit retries).
//! `nft` is made unavailable by an empty PATH — nextest runs each test in a
//! process of its own, so the change stays inside this test.

use rampart_agent::isolation::{self, Desired, IsolationSpec, IsolationState};
use rampart_agent::{AgentBuilder, AgentConfig, AgentError};

fn config(data_dir: &std::path::Path) -> AgentConfig {
    // Local-proxy mode needs no nft of its own: only isolation does.
    AgentConfig::from_toml(
        &format!(
            "data_dir = \"{}\"\n[steering]\nmode = \"local-proxy\"\n[gateway]\nproxy = \"127.0.0.1:9\"\n[local_proxy]\nlisten = \"127.0.0.1:0\"\n",
            data_dir.display()
        ),
        "test agent.toml",
    )
    .expect("valid config")
}

fn without_nft() -> tempfile::TempDir {
    let empty = tempfile::tempdir().expect("empty PATH dir");
    // SAFETY: nextest runs this test alone in its process; nothing else reads
    // the environment concurrently.
    unsafe { std::env::set_var("PATH", empty.path()) };
    empty
}

#[tokio::test]
async fn an_isolated_device_whose_isolation_cannot_be_reapplied_does_not_start() {
    let dir = tempfile::tempdir().expect("data dir");
    let spec = IsolationSpec {
        server_addrs: vec!["127.0.0.1".parse().expect("addr")],
        ..Default::default()
    };
    isolation::state::save(
        dir.path(),
        &IsolationState::new(Desired::Isolated { spec }, Some("test".into())),
    )
    .expect("save the isolated state");
    let _path = without_nft();
    let started = AgentBuilder::new(config(dir.path())).start().await;
    match started {
        Err(AgentError::IsolationNotApplied(why)) => {
            assert!(!why.is_empty());
        }
        Err(other) => panic!("expected IsolationNotApplied, got {other}"),
        Ok(_) => panic!("the agent started steering while its isolation could not be applied"),
    }
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    assert!(log.contains("not starting until it can be"), "{log}");
}

#[tokio::test]
async fn a_released_device_starts_even_when_nft_cannot_run() {
    // The check at start cannot run either, and the device is not isolated:
    // nothing is wanted that is missing, so the agent serves.
    let dir = tempfile::tempdir().expect("data dir");
    isolation::state::save(dir.path(), &IsolationState::new(Desired::Released, None))
        .expect("save the released state");
    let _path = without_nft();
    let agent = AgentBuilder::new(config(dir.path()))
        .start()
        .await
        .expect("a released device starts");
    drop(agent);
}
