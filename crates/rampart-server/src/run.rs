//! Process lifecycle: data dir, listeners, pid file, signals (SIGTERM/SIGINT
//! drain, SIGHUP reload, SIGUSR1 reopen the access log; reloading itself is
//! `crate::reload`) and orderly shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use rampart_gateway::{Gateway, GatewayHandle, Metrics};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{Overrides, RampartConfig};
use crate::reload::{Reloader, Trigger};

/// Which parts of Rampart this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway listeners, API and everything else on one machine.
    AllInOne,
    /// Gateway listeners plus health/metrics only (scale-out).
    Gateway,
}

/// Runs until SIGTERM/SIGINT, then drains.
pub async fn run(
    config: RampartConfig,
    config_path: Option<PathBuf>,
    overrides: Overrides,
    role: Role,
) -> anyhow::Result<()> {
    // Refused before anything binds when the file names a running Rampart.
    let mut pid_file = match &overrides.pid_file {
        Some(path) => Some(crate::pid_file::PidFile::claim(path)?),
        None => None,
    };
    prepare_data_dir(&config.data_dir)?;
    if role == Role::Gateway {
        require_fleet_ca(&config)?;
    }
    // A fleet gateway runs the fleet's configuration laid under its own file,
    // and does not serve before it has one.
    let (config, config_path, fleet_gateway) = match (&config.fleet.nats, role, &config_path) {
        (Some(_), Role::Gateway, Some(local_path)) => {
            let fleet = crate::fleet::FleetGateway::start(local_path, &config).await?;
            let merged = RampartConfig::load(&fleet.config_path)?.with_overrides(&overrides);
            let path = fleet.config_path.clone();
            (merged, Some(path), Some(fleet))
        }
        (Some(_), Role::Gateway, None) => {
            anyhow::bail!("rampart gateway with [fleet] needs its own file: --config FILE")
        }
        _ => (config, config_path, None),
    };

    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
    let api_addr = api_listener.local_addr()?;
    let tunnel = crate::devices::tunnel::TunnelSetup::prepare(
        &config,
        role == Role::AllInOne,
        fleet_gateway.as_ref().map(|f| f.admission()),
    )
    .await?;

    let metrics = Arc::new(Metrics::new());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let loaded = crate::reload::load_policy(&config.policy).context("loading the policy")?;
    let isolation_config = crate::isolation::Compiled::load(&config.isolation, &config.response)
        .map_err(anyhow::Error::msg)
        .context("loading [isolation] and [[response]]")?;
    let mut gateway_config = config.gateway_config(vec![api_addr]);
    gateway_config.policy = loaded.policy.clone();
    let (pipeline, events) = rampart_events::Pipeline::start(&config.data_dir, &config.events)
        .context("starting the event store")?;
    let agent_events = events.clone();
    let gateway = Gateway::bind(gateway_config, metrics, Some(events))
        .await
        .context("starting the gateway")?;
    let proxy_addr = gateway.local_addr();
    let handle = gateway.handle();

    let shutdown = CancellationToken::new();
    // Cancelled first on SIGTERM: `/healthz` turns 503 `[limits] drain_delay` before
    // `shutdown` closes the listeners.
    let draining = CancellationToken::new();
    let reloader_config_path = config_path.clone();
    let reloader_overrides = overrides.clone();
    let reloader = Reloader::new(
        handle.clone(),
        config_path,
        overrides,
        api_addr,
        &config,
        &loaded,
    );
    reloader.set_sinks(pipeline.sinks());
    match (&fleet_gateway, &config.fleet.nats) {
        (Some(fleet), Some(nats)) => {
            fleet.set_reloader(reloader.clone());
            fleet.set_gateway(handle.clone());
            fleet.report_load(handle.clone());
            crate::fleet::start_event_forwarder(
                &pipeline,
                nats,
                &crate::fleet::gateway_id(&config.fleet)?,
                &config.data_dir,
            )
            .await?;
        }
        (None, Some(nats)) => {
            if let Some(postgres) = &config.fleet.postgres {
                crate::fleet::spawn_event_consumer(
                    nats.clone(),
                    postgres.clone(),
                    config.events.max_age,
                    shutdown.clone(),
                );
            }
            crate::fleet::spawn_publisher(
                reloader.clone(),
                reloader_config_path.clone(),
                reloader_overrides.clone(),
                shutdown.clone(),
            );
        }
        _ => {}
    }
    spawn_signal_handlers(
        Drain {
            draining: draining.clone(),
            delay: config.limits.drain_delay,
            shutdown: shutdown.clone(),
        },
        reloader.clone(),
        handle.clone(),
    )?;
    crate::reload::spawn_watcher(reloader.clone(), shutdown.clone());
    let event_gauges = api::EventGauges::register(&mut registry);
    registry.register_collector(Box::new(crate::sink_metrics::SinkMetrics::new(
        pipeline.sinks(),
        pipeline.stats(),
    )));
    let api_listener_metrics =
        api::listener::ApiListenerMetrics::new(handle.rejected_connections());
    let health_and_metrics = api::router(ApiState {
        registry: Arc::new(registry),
        gateway: handle.clone(),
        pipeline_stats: pipeline.stats(),
        event_gauges,
        draining: draining.clone(),
    });
    // The gateway role (scale-out) serves health and metrics only: no admin
    // token, admin API, console or device administration (DESIGN.md §9: the
    // server administers the fleet).
    // HTTPS on the API (`[api] tls`); the gateway role's API carries no credentials
    // (health and metrics only), so there `auto` stays plain HTTP for load balancers.
    let gateway_plain = role == Role::Gateway
        && config.api.tls == api::tls::TlsMode::Auto
        && config.api.tls_cert.is_none();
    let mut api_tls = if gateway_plain {
        None
    } else {
        api::tls::ApiTls::prepare(
            &config.api,
            &config.data_dir,
            &config.tls.ca_paths(&config.data_dir),
        )
        .context("preparing TLS for the API listener ([api] tls)")?
    };
    let (api, _tunnel_task) = if role == Role::Gateway {
        let task = tunnel.map(|t| t.spawn(handle.clone(), None, shutdown.clone()));
        (health_and_metrics, task)
    } else {
        let admin_token = crate::api::events::load_or_create_admin_token(&config.data_dir)
            .context("loading the admin token")?;
        // Every /api/ call passes the token gate (scopes, audit); the routes behind it
        // check the gate's internal token.
        let auth =
            api::auth::ApiAuth::new(&config.data_dir, admin_token, Some(agent_events.clone()));
        let admin_token = auth.internal_token();
        let events_api = crate::api::events::EventsApiState::with_token(
            rampart_events::db_path(&config.data_dir),
            admin_token.to_string(),
        );
        let admin_token_for_isolation = admin_token.clone();

        let console = crate::console::ConsoleState::new(
            &config.data_dir,
            reloader.clone(),
            handle.clone(),
            crate::console::secure_cookies_for(config.api.listen) || api_tls.is_some(),
            Some(agent_events.clone()),
            config.policy.tests.clone(),
        );
        let api = health_and_metrics
            .merge(api::events::router(events_api))
            .merge(api::tokens::routes::router(
                api::tokens::routes::TokensApiState::new(&config.data_dir, admin_token.clone()),
            ))
            .merge(api::policy::router(api::policy::PolicyApiState {
                reloader: reloader.clone(),
                admin_token,
            }))
            .merge(crate::console::router(console.clone()));
        match tunnel {
            Some(tunnel) => {
                let devices = api::devices::router(api::devices::DevicesState {
                    admin_token: admin_token_for_isolation.clone(),
                    ..tunnel.api_state()
                });
                let registry = tunnel.registry();
                let isolation = crate::isolation::IsolationService::new(
                    &config.data_dir,
                    registry.clone(),
                    Some(agent_events.clone()),
                    isolation_config,
                    registry.gateway(),
                );
                // Response rules see every event as the store commits it.
                pipeline.set_stored_hook(
                    crate::isolation::response::ResponseHook::start(&isolation)
                        .context("starting the response rules")?,
                );
                reloader.set_isolation(isolation.clone());
                console.set_devices(registry.clone(), isolation.clone());
                let devices =
                    devices.merge(api::isolation::router(api::isolation::IsolationApiState {
                        service: isolation.clone(),
                        admin_token: admin_token_for_isolation.clone(),
                    }));
                let agent_api = crate::devices::agent_api::AgentApiService::new(
                    handle.clone(),
                    Some(agent_events),
                    config.agent.clone(),
                    Some(isolation),
                );
                let task = tunnel.spawn(handle.clone(), Some(agent_api), shutdown.clone());
                (auth.guard(api.merge(devices)), Some(task))
            }
            None => (auth.guard(api), None),
        }
    };
    let api_task = tokio::spawn(api::listener::serve(
        api_listener,
        api,
        config.api.clone(),
        api_listener_metrics,
        api_tls.as_ref().map(|t| t.config.clone()),
        shutdown.clone(),
        config.limits.shutdown_grace,
    ));
    if let Some(tls) = api_tls.as_mut() {
        tls.spawn_renewal(shutdown.clone());
        match &tls.source {
            api::tls::CertSource::Minted { ca_sha256, names } => tracing::info!(
                url = %api::tls::base_url(&config.api, api_addr), ?names, %ca_sha256,
                "the API serves HTTPS with a certificate from Rampart's CA; agents enroll with --ca-sha256 {ca_sha256}"),
            api::tls::CertSource::Files { cert } => tracing::info!(
                url = %api::tls::base_url(&config.api, api_addr), cert = %cert.display(),
                "the API serves HTTPS"),
        }
    }

    // Every listener is bound: a reader of the pid file finds a process that serves.
    if let Some(pid_file) = pid_file.as_mut() {
        pid_file.write()?;
    }
    tracing::info!(
        proxy = %proxy_addr,
        api = %api_addr,
        data_dir = %config.data_dir.display(),
        role = ?role,
        "rampart is ready"
    );
    gateway.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Err(e) = api_task.await {
        tracing::warn!(error = %e, "API task failed");
    }
    // Every event of the drained flows reaches the store before exit.
    tokio::task::spawn_blocking(move || pipeline.close())
        .await
        .ok();
    drop(pid_file);
    tracing::info!("rampart stopped");
    Ok(())
}

/// `rampart gateway` signs with the fleet's CA and never makes its own: a
/// gateway with a CA of its own would show every client an unknown issuer.
fn require_fleet_ca(config: &RampartConfig) -> anyhow::Result<()> {
    let paths = config.tls.ca_paths(&config.data_dir);
    if paths.cert.exists() && paths.key.exists() {
        return Ok(());
    }
    anyhow::bail!(
        "rampart gateway never creates a CA: every gateway of a fleet signs with the fleet's one CA. \
         Copy the server's CA certificate and key (its DATA_DIR/ca.pem and DATA_DIR/ca.key; keep the key \
         mode 0600, owned by the user rampart runs as) to {} and {}, or point [tls] ca_cert and ca_key at them",
        paths.cert.display(),
        paths.key.display()
    )
}

/// Creates the data dir, readable by the owner only: it holds keys and logs.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// How SIGTERM/SIGINT stop the process: `draining` at once (`/healthz` answers 503),
/// `shutdown` (listeners close, requests in flight finish) after `delay`, or at a
/// second signal.
struct Drain {
    draining: CancellationToken,
    delay: std::time::Duration,
    shutdown: CancellationToken,
}

fn spawn_signal_handlers(
    drain: Drain,
    reloader: Arc<Reloader>,
    gateway: GatewayHandle,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                // logrotate moved the access log away: write to a new file at its path.
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: reopening the access log");
                    gateway.reopen_access_log();
                    continue;
                }
                // In its own task: compiling a large policy must not delay SIGTERM.
                _ = hup.recv() => {
                    let reloader = reloader.clone();
                    tokio::spawn(async move { reloader.reload(Trigger::Signal).await });
                    continue;
                }
            };
            tracing::info!(drain_delay = ?drain.delay, "{signal}: draining");
            drain.draining.cancel();
            if !drain.delay.is_zero() {
                // Still serving while the balancer's health checks see the 503 and
                // stop sending new connections; a second signal cuts the wait short.
                tokio::select! {
                    _ = tokio::time::sleep(drain.delay) => {}
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            drain.shutdown.cancel();
            return;
        }
    });
    Ok(())
}
