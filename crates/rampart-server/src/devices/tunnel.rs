//! Wiring of the gateway's agent tunnel listener into the server: bind it, give it a
//! fresh server certificate from the device CA, and report devices as seen.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{DeviceCa, DeviceRegistry};
use crate::api::devices::DevicesState;
use crate::config::RampartConfig;

/// A bound tunnel listener with its TLS configuration, ready to serve.
pub struct TunnelSetup {
    listener: TcpListener,
    addr: SocketAddr,
    registry: Arc<DeviceRegistry>,
    tls: Arc<rustls::ServerConfig>,
    admin_token: Arc<str>,
    /// `[runtime] busy_poll` for the tunnel's connection threads.
    busy_poll: Option<std::time::Duration>,
    /// `[tunnel] keepalive`.
    keepalive: std::time::Duration,
    /// `[tunnel] proxy_protocol_from`.
    proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Who may use the tunnel: the registry's inventory, or a fleet gateway's
    /// revoked list (its devices are enrolled on the server).
    admission: Arc<dyn rampart_gateway::tunnel::DeviceAdmission>,
}

impl TunnelSetup {
    /// All-in-one: always (creating the device CA on first start). Gateway role: only
    /// when a device CA exists in the data dir. `None` means no tunnel. `fleet`: a
    /// fleet gateway's admission (the server's revoked ids) instead of the local
    /// inventory, which holds none of the devices the server enrolled.
    pub async fn prepare(
        config: &RampartConfig,
        all_in_one: bool,
        fleet: Option<Arc<dyn rampart_gateway::tunnel::DeviceAdmission>>,
    ) -> anyhow::Result<Option<Self>> {
        if !all_in_one && !DeviceCa::exists(&config.data_dir) {
            tracing::info!("no device CA in the data dir: agent tunnel listener disabled");
            return Ok(None);
        }
        let requested = config.tunnel.listen;
        let listener = rampart_gateway::tunnel::bind(requested)
            .await
            .with_context(|| "tunnel.listen (or --tunnel-listen)".to_string())?;
        let addr = listener.local_addr()?;
        let advertised = config
            .tunnel
            .advertise
            .clone()
            .unwrap_or_else(|| addr.to_string());
        let registry = Arc::new(
            DeviceRegistry::open_with_seen_interval(
                &config.data_dir,
                advertised.clone(),
                config.tunnel.last_seen_interval,
            )
            .context("opening the device CA and inventory")?,
        );
        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            addr.ip().to_string(),
        ];
        if let Some((host, _)) = advertised.rsplit_once(':') {
            names.push(host.trim_matches(['[', ']']).to_string());
        }
        let issued = registry
            .ca()
            .tunnel_server_cert(&names)
            .context("issuing the tunnel certificate")?;
        let admission: Arc<dyn rampart_gateway::tunnel::DeviceAdmission> =
            fleet.unwrap_or_else(|| registry.clone());
        let tls = rampart_gateway::tunnel::server_config(
            registry.ca().cert_pem(),
            &issued.cert_pem,
            &issued.key_pem,
            Some(admission.clone()),
        )?;
        let admin_token: Arc<str> = rampart_events::token::load_or_create(&config.data_dir)
            .context("loading the admin token")?
            .into();
        Ok(Some(TunnelSetup {
            listener,
            addr,
            registry,
            tls,
            admin_token,
            busy_poll: config.runtime.busy_poll,
            keepalive: config.tunnel.keepalive,
            proxy_protocol_from: config.tunnel.proxy_protocol_from.clone(),
            admission,
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn registry(&self) -> Arc<DeviceRegistry> {
        self.registry.clone()
    }

    /// State for [`crate::api::devices::router`].
    pub fn api_state(&self) -> DevicesState {
        DevicesState {
            registry: self.registry.clone(),
            admin_token: self.admin_token.clone(),
        }
    }

    /// Serves the tunnel until `shutdown`. `agent_api` answers the agents' control-plane
    /// requests (configuration, decision uploads) on the same connections.
    pub fn spawn(
        self,
        gateway: rampart_gateway::GatewayHandle,
        agent_api: Option<Arc<dyn rampart_gateway::tunnel::AgentApi>>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        tracing::info!(tunnel = %self.addr, "agent tunnel listening");
        tokio::spawn(rampart_gateway::tunnel::serve(
            self.listener,
            self.tls,
            gateway,
            Some(self.admission),
            agent_api,
            rampart_gateway::tunnel::ServeOptions {
                busy_poll: self.busy_poll,
                keepalive: self.keepalive,
                proxy_protocol_from: self.proxy_protocol_from,
            },
            shutdown,
        ))
    }
}
