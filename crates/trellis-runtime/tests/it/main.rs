//! Integration tests of the sidecar runtime, in process: the API router driven without a
//! socket, and sidecars on loopback ports talking to each other and to test apps.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod api;
mod app_channel;
mod app_pipeline;
mod bearer;
mod config_subscribe;
mod configuration;
mod grpc;
mod invoke;
mod jobs;
mod liveness;
mod lock;
mod metrics;
mod mtls;
mod pubsub;
mod secrets;
mod state;
mod streaming;
mod targets;
mod workflow;

use tokio::net::TcpListener;
use trellis_runtime::{
    AppChannelConfig, AppProtocol, Listeners, RunningSidecar, Sidecar, SidecarConfig,
};

/// Starts a sidecar for `app_id` on free ports, sharing the registry in `registry`.
pub async fn sidecar(
    app_id: &str,
    registry: &std::path::Path,
    app_port: Option<u16>,
    tweak: impl FnOnce(&mut SidecarConfig),
) -> RunningSidecar {
    start(app_id, registry, app_port, tweak, false).await
}

/// As [`sidecar`], also serving the gRPC API on a free port.
pub async fn grpc_sidecar(
    app_id: &str,
    registry: &std::path::Path,
    app_port: Option<u16>,
    tweak: impl FnOnce(&mut SidecarConfig),
) -> RunningSidecar {
    start(app_id, registry, app_port, tweak, true).await
}

async fn start(
    app_id: &str,
    registry: &std::path::Path,
    app_port: Option<u16>,
    tweak: impl FnOnce(&mut SidecarConfig),
    grpc: bool,
) -> RunningSidecar {
    let mut config = SidecarConfig::new(app_id, registry);
    config.app = app_port.map(|port| AppChannelConfig {
        host: "127.0.0.1".into(),
        port,
        protocol: AppProtocol::Http,
        health_check: None,
    });
    tweak(&mut config);
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        internal: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: match grpc {
            true => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            false => None,
        },
        metrics: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
    };
    Sidecar::serve(config, listeners).await.unwrap()
}

pub fn url(s: &RunningSidecar, path: &str) -> String {
    format!("http://{}{}", s.http_addr, path)
}

/// Starts a sidecar that must refuse to start; its error, as text.
pub async fn start_error(config: SidecarConfig) -> String {
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        internal: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc: None,
        metrics: None,
    };
    match Sidecar::serve(config, listeners).await {
        Ok(s) => {
            s.stop().await;
            panic!("the sidecar started")
        }
        Err(e) => e.to_string(),
    }
}
