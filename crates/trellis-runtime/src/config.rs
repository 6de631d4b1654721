//! Everything a sidecar needs to know at start-up, already parsed and validated by the
//! caller (the CLI or a test). No I/O here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use trellis_resources::{Configuration, Resources};

/// Environment variables handed to the sidecar. Its `Debug` shows how many, never a value:
/// they hold secrets, and configurations get logged.
#[derive(Clone, Default)]
pub struct Environment(pub std::sync::Arc<BTreeMap<String, String>>);

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Environment({} variables)", self.0.len())
    }
}

/// Dapr's default for `--dapr-http-max-request-size` (4 MB).
pub const DEFAULT_MAX_REQUEST_BODY: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub app_id: String,
    /// The namespace this sidecar lives in (`NAMESPACE` env var in Dapr); `default` if unset.
    pub namespace: String,
    /// How to reach the app; `None` when the sidecar runs without an app.
    pub app: Option<AppChannelConfig>,
    /// Largest request body the API accepts, in bytes.
    pub max_request_body: usize,
    /// `DAPR_API_TOKEN`: required on every API call but the health routes.
    pub api_token: Option<String>,
    /// `APP_API_TOKEN`: sent to the app as `dapr-api-token`.
    pub app_api_token: Option<String>,
    /// The process environment, for `secretstores.local.env` (the binary reads it; the
    /// runtime never does).
    pub environment: Environment,
    pub enable_api_logging: bool,
    /// Records Prometheus metrics (`--enable-metrics`; a Configuration's
    /// `spec.metrics.enabled: false` turns them off too). They are served only when the
    /// caller passes a metrics listener.
    pub enable_metrics: bool,
    /// Where local data lives: the name-resolution registry (`registry/`) and the embedded
    /// stores' files.
    pub data_dir: PathBuf,
    pub resources: Resources,
    /// The `--config` Configuration resource, if any.
    pub configuration: Option<Configuration>,
    /// Initial `extended` metadata (the CLI sets `appCommand`, `cliPID`...).
    pub extended_metadata: BTreeMap<String, String>,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub graceful_shutdown: Duration,
    /// How pub/sub deliveries to the app are retried and limited.
    pub delivery: DeliveryPolicy,
    /// HTTP/2 pings on connections to other sidecars.
    pub peer_keepalive: crate::invoke::Keepalive,
    /// Retries of calls to other apps that never reached the callee's app.
    pub builtin_retries: crate::invoke::BuiltinRetries,
    /// mTLS on the sidecar-to-sidecar port; `None` serves and dials it in plaintext.
    pub mtls: Option<MtlsConfig>,
    /// `--allowed-origins`: browser origins the HTTP API answers with CORS headers; empty
    /// (Dapr's `*`) adds no CORS handling.
    pub allowed_origins: Vec<String>,
}

/// mTLS between sidecars (`Configuration.spec.mtls` and the authority to use).
#[derive(Debug, Clone)]
pub struct MtlsConfig {
    pub authority: std::sync::Arc<trellis_mtls::Authority>,
    /// The trust domain of this sidecar's SPIFFE id; peers must share it.
    pub trust_domain: String,
    pub certs: trellis_mtls::CertSettings,
}

impl SidecarConfig {
    /// The local name-resolution registry shared by the sidecars of this machine.
    pub fn registry_dir(&self) -> PathBuf {
        self.data_dir.join("registry")
    }

    /// A configuration with Dapr's defaults, for an app id and a data directory.
    pub fn new(app_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            app_id: app_id.into(),
            namespace: trellis_nameres::DEFAULT_NAMESPACE.to_string(),
            app: None,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            api_token: None,
            app_api_token: None,
            environment: Environment::default(),
            enable_api_logging: false,
            enable_metrics: true,
            data_dir: data_dir.into(),
            resources: Resources::default(),
            configuration: None,
            extended_metadata: BTreeMap::new(),
            graceful_shutdown: Duration::from_secs(5),
            delivery: DeliveryPolicy::default(),
            peer_keepalive: crate::invoke::Keepalive::default(),
            builtin_retries: crate::invoke::BuiltinRetries::default(),
            mtls: None,
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1 (`http`).
    Http,
    /// HTTP/2 without TLS (`h2c`).
    H2c,
    /// gRPC without TLS (`grpc`): the app serves Dapr's `AppCallback` services.
    Grpc,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::H2c => "h2c",
            AppProtocol::Grpc => "grpc",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppChannelConfig {
    /// Host the app listens on (`--app-channel-address`, default 127.0.0.1).
    pub host: String,
    pub port: u16,
    pub protocol: AppProtocol,
    /// Periodic HTTP health checks; `None` means "ready once the port accepts connections".
    pub health_check: Option<AppHealthCheck>,
}

/// Dapr's app health check settings (`--enable-app-health-check` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before the app counts as unhealthy.
    pub threshold: u32,
}

impl Default for AppHealthCheck {
    fn default() -> Self {
        Self {
            path: "/healthz".to_string(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_millis(500),
            threshold: 3,
        }
    }
}

/// Retries and concurrency of pub/sub deliveries to the app. Trellis's stand-in for Dapr's
/// default resiliency: exponential backoff from `initial_backoff`, doubling up to
/// `max_backoff`; after `max_attempts` a message goes to the dead-letter topic when the
/// subscription has one, otherwise it keeps being retried at `max_backoff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Deliveries of one subscription awaiting the app's answer at once.
    pub max_in_flight: usize,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_in_flight: 16,
        }
    }
}

impl DeliveryPolicy {
    /// How long to wait before redelivering after the `attempt`-th delivery failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = DeliveryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(5), Duration::from_millis(3200));
        assert_eq!(p.backoff(6), Duration::from_secs(5));
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(5));
        assert_eq!(p.backoff(0), Duration::from_millis(200));
    }
}
