//! Everything a sidecar needs to know at start-up, already parsed and validated by the
//! caller (the CLI or a test). No I/O here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use trellis_resources::{Configuration, Resources};

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
    pub enable_api_logging: bool,
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
            enable_api_logging: false,
            data_dir: data_dir.into(),
            resources: Resources::default(),
            configuration: None,
            extended_metadata: BTreeMap::new(),
            graceful_shutdown: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1 (`http`).
    Http,
    /// HTTP/2 without TLS (`h2c`).
    H2c,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http => "http",
            AppProtocol::H2c => "h2c",
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
