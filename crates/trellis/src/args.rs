//! `trellis run` flags (named as `dapr run` names them) and their validation into a [`Plan`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Args;

/// Flags of `trellis run`. Names, short forms and defaults follow `dapr run`.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// The id of the app; other apps invoke it by this name.
    #[arg(long, short = 'a')]
    app_id: Option<String>,
    /// The port the app listens on.
    #[arg(long, short = 'p')]
    app_port: Option<u16>,
    /// The protocol the sidecar speaks to the app: http or h2c.
    #[arg(long, short = 'P', default_value = "http")]
    app_protocol: String,
    /// The address the app listens on.
    #[arg(long, default_value = "127.0.0.1")]
    app_channel_address: String,
    /// The port of the sidecar's Dapr HTTP API (0 picks a free port).
    #[arg(long, short = 'H', alias = "http-port", default_value_t = 3500)]
    dapr_http_port: u16,
    /// The port of the Dapr gRPC API given to the app as DAPR_GRPC_PORT.
    #[arg(long, short = 'G', alias = "grpc-port", default_value_t = 50001)]
    dapr_grpc_port: u16,
    /// The port other sidecars connect to (0 picks a free port).
    #[arg(long, short = 'I', default_value_t = 0)]
    dapr_internal_grpc_port: u16,
    /// The port of the sidecar's Prometheus metrics (GET /metrics), given to the app as
    /// DAPR_METRICS_PORT. Unset: 9090, or a free port when 9090 is taken (another sidecar).
    #[arg(long, short = 'M')]
    metrics_port: Option<u16>,
    /// Serve Prometheus metrics (--enable-metrics=false turns them off).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    enable_metrics: bool,
    /// A directory (or file) of resource YAML files; repeatable.
    #[arg(long, short = 'd', alias = "components-path")]
    resources_path: Vec<PathBuf>,
    /// A Configuration resource file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Probe the app's health over HTTP and refuse calls while it fails.
    #[arg(long)]
    enable_app_health_check: bool,
    /// Path of the app's health endpoint (implies --enable-app-health-check).
    #[arg(long)]
    app_health_check_path: Option<String>,
    /// Seconds between health probes.
    #[arg(long)]
    app_health_probe_interval: Option<u64>,
    /// Milliseconds a health probe may take.
    #[arg(long)]
    app_health_probe_timeout: Option<u64>,
    /// Consecutive failed probes before the app counts as unhealthy.
    #[arg(long)]
    app_health_threshold: Option<u32>,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_as_json: bool,
    /// Log every API call.
    #[arg(long)]
    enable_api_logging: bool,
    /// Largest request body in MB (Dapr's older flag).
    #[arg(long, conflicts_with = "max_body_size")]
    dapr_http_max_request_size: Option<u64>,
    /// Largest request body, e.g. 4Mi, 512Ki, 1Gi (Dapr's newer flag).
    #[arg(long)]
    max_body_size: Option<String>,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, default_value_t = 5)]
    dapr_graceful_shutdown_seconds: u64,
    /// Where Trellis keeps its local data (registry, embedded stores).
    #[arg(long, env = "TRELLIS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Threads serving the sidecar(s) of this process.
    #[arg(long, env = "TRELLIS_WORKER_THREADS", default_value_t = 1)]
    worker_threads: usize,
    /// Browser origins allowed to call the HTTP API (comma-separated); `*` (the default)
    /// adds no CORS handling, as in daprd.
    #[arg(long, default_value = "*", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// PEM file of the trust anchors (root certificates) sidecars must chain to; with
    /// --issuer-cert-file and --issuer-key-file, used instead of the local authority in the
    /// data dir (also DAPR_TRUST_ANCHORS, DAPR_CERT_CHAIN, DAPR_CERT_KEY as PEM text).
    #[arg(long, requires_all = ["issuer_cert_file", "issuer_key_file"])]
    trust_anchors_file: Option<PathBuf>,
    /// PEM file of the issuer certificate that signs workload certificates.
    #[arg(long, requires_all = ["trust_anchors_file", "issuer_key_file"])]
    issuer_cert_file: Option<PathBuf>,
    /// PEM file of the issuer's private key (PKCS#8).
    #[arg(long, requires_all = ["trust_anchors_file", "issuer_cert_file"])]
    issuer_key_file: Option<PathBuf>,
    /// Run the apps of a multi-app run file (or a directory holding trellis.yaml or dapr.yaml).
    #[arg(long, short = 'f', conflicts_with_all = ["app_id", "app_port", "command"])]
    run_file: Option<PathBuf>,
    /// The app's command line, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

/// What to run, validated.
#[derive(Debug)]
pub struct Plan {
    pub apps: Vec<AppPlan>,
    pub worker_threads: usize,
    pub log_level: String,
    pub log_as_json: bool,
    /// Several apps from a run file: one app exiting does not stop the others.
    pub multi: bool,
}

/// One app and its sidecar.
#[derive(Debug, Clone)]
pub struct AppPlan {
    pub app_id: String,
    pub namespace: String,
    pub app_port: Option<u16>,
    pub app_protocol: trellis_runtime::AppProtocol,
    pub app_channel_address: String,
    pub http_port: u16,
    pub grpc_port: u16,
    pub internal_port: u16,
    /// `None`: 9090, or a free port when 9090 is taken; `Some(0)`: a free port.
    pub metrics_port: Option<u16>,
    pub enable_metrics: bool,
    pub resources_paths: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub health_check: Option<trellis_runtime::AppHealthCheck>,
    pub enable_api_logging: bool,
    pub max_request_body: usize,
    pub graceful_shutdown: Duration,
    pub data_dir: PathBuf,
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// `--trust-anchors-file`, `--issuer-cert-file`, `--issuer-key-file`, when given.
    pub authority_files: Option<crate::mtls::AuthorityFiles>,
    /// `--allowed-origins`.
    pub allowed_origins: Vec<String>,
}

impl RunArgs {
    pub fn into_plan(self) -> anyhow::Result<Plan> {
        let log_level = self.log_level.clone();
        let log_as_json = self.log_as_json;
        if let Some(path) = &self.run_file {
            let apps = crate::runfile::load(path, &self)?;
            return Ok(Plan {
                apps,
                worker_threads: self.worker_threads,
                log_level,
                log_as_json,
                multi: true,
            });
        }
        let Some(app_id) = self.app_id.clone() else {
            bail!("--app-id is required (or -f <run file> to run several apps)");
        };
        let app = self.app_plan(app_id)?;
        Ok(Plan {
            apps: vec![app],
            worker_threads: self.worker_threads,
            log_level,
            log_as_json,
            multi: false,
        })
    }

    fn app_plan(&self, app_id: String) -> anyhow::Result<AppPlan> {
        validate_app_id(&app_id, "--app-id")?;
        let health_flags = self.app_health_check_path.is_some()
            || self.app_health_probe_interval.is_some()
            || self.app_health_probe_timeout.is_some()
            || self.app_health_threshold.is_some();
        if (health_flags || self.enable_app_health_check) && self.app_port.is_none() {
            bail!("app health checks need --app-port: the sidecar has no app to probe");
        }
        let health_check = (health_flags || self.enable_app_health_check).then(|| {
            health_check(
                self.app_health_check_path.clone(),
                self.app_health_probe_interval,
                self.app_health_probe_timeout,
                self.app_health_threshold,
            )
        });
        let health_check = health_check.transpose()?;
        let max_request_body = match (&self.max_body_size, self.dapr_http_max_request_size) {
            (Some(size), _) => parse_size(size)?,
            (None, Some(mb)) => usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
            (None, None) => trellis_runtime::config::DEFAULT_MAX_REQUEST_BODY,
        };
        Ok(AppPlan {
            app_id,
            namespace: namespace()?,
            app_port: self.app_port,
            app_protocol: parse_protocol(&self.app_protocol)?,
            app_channel_address: self.app_channel_address.clone(),
            http_port: self.dapr_http_port,
            grpc_port: self.dapr_grpc_port,
            internal_port: self.dapr_internal_grpc_port,
            metrics_port: self.metrics_port,
            enable_metrics: self.enable_metrics,
            resources_paths: self.resources_path.clone(),
            config: self.config.clone(),
            health_check,
            enable_api_logging: self.enable_api_logging,
            max_request_body,
            graceful_shutdown: Duration::from_secs(self.dapr_graceful_shutdown_seconds),
            data_dir: data_dir(self.data_dir.clone()),
            command: self.command.clone(),
            cwd: None,
            env: BTreeMap::new(),
            authority_files: self.authority_files(),
            allowed_origins: self.allowed_origins.clone(),
        })
    }

    /// Defaults a run file's apps inherit from the command line.
    pub fn defaults_for_run_file(&self) -> AppPlanDefaults {
        AppPlanDefaults {
            log_api: self.enable_api_logging,
            enable_metrics: self.enable_metrics,
            graceful_shutdown: Duration::from_secs(self.dapr_graceful_shutdown_seconds),
            data_dir: data_dir(self.data_dir.clone()),
            authority_files: self.authority_files(),
            allowed_origins: self.allowed_origins.clone(),
        }
    }

    fn authority_files(&self) -> Option<crate::mtls::AuthorityFiles> {
        Some(crate::mtls::AuthorityFiles {
            trust_anchors: self.trust_anchors_file.clone()?,
            issuer_cert: self.issuer_cert_file.clone()?,
            issuer_key: self.issuer_key_file.clone()?,
        })
    }
}

/// Settings of a run file's apps that come from the `trellis run -f` command line.
#[derive(Debug, Clone)]
pub struct AppPlanDefaults {
    pub log_api: bool,
    pub enable_metrics: bool,
    pub graceful_shutdown: Duration,
    pub data_dir: PathBuf,
    pub authority_files: Option<crate::mtls::AuthorityFiles>,
    pub allowed_origins: Vec<String>,
}

pub fn health_check(
    path: Option<String>,
    interval_secs: Option<u64>,
    timeout_ms: Option<u64>,
    threshold: Option<u32>,
) -> anyhow::Result<trellis_runtime::AppHealthCheck> {
    let mut check = trellis_runtime::AppHealthCheck::default();
    if let Some(path) = path {
        if !path.starts_with('/') {
            bail!("--app-health-check-path must start with '/', got {path:?}");
        }
        check.path = path;
    }
    if let Some(secs) = interval_secs {
        if secs == 0 {
            bail!("--app-health-probe-interval must be at least 1 second");
        }
        check.interval = Duration::from_secs(secs);
    }
    if let Some(ms) = timeout_ms {
        if ms == 0 {
            bail!("--app-health-probe-timeout must be at least 1 ms");
        }
        check.timeout = Duration::from_millis(ms);
    }
    if let Some(threshold) = threshold {
        if threshold == 0 {
            bail!("--app-health-threshold must be at least 1");
        }
        check.threshold = threshold;
    }
    Ok(check)
}

pub fn parse_protocol(protocol: &str) -> anyhow::Result<trellis_runtime::AppProtocol> {
    match protocol {
        "http" => Ok(trellis_runtime::AppProtocol::Http),
        "h2c" => Ok(trellis_runtime::AppProtocol::H2c),
        "grpc" => Ok(trellis_runtime::AppProtocol::Grpc),
        "grpcs" | "https" => {
            bail!(
                "--app-protocol {protocol} (TLS to the app) is not supported yet; use http, h2c or grpc"
            )
        }
        other => bail!("unknown --app-protocol {other:?}; expected http, h2c or grpc"),
    }
}

/// `--app-id` and a run file's `appID`: the one rule of `trellis_nameres` (ids become
/// header values, file names in the registry and host names), with the flag or key named.
pub fn validate_app_id(id: &str, source: &str) -> anyhow::Result<()> {
    trellis_nameres::validate_app_id(id).map_err(|e| anyhow::anyhow!("{source}: {e}"))
}

/// `--max-body-size` and a run file's size keys, by the one size rule of `trellis_core`.
pub fn parse_size(text: &str) -> anyhow::Result<usize> {
    trellis_core::size::parse(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Whether `NAMESPACE` is set: only then do the namespaces in resource files filter them.
pub fn namespace_is_set() -> bool {
    std::env::var("NAMESPACE").is_ok_and(|ns| !ns.is_empty())
}

/// The namespace, from `NAMESPACE` as Dapr reads it, checked by the same rule as app ids.
pub fn namespace() -> anyhow::Result<String> {
    let namespace = std::env::var("NAMESPACE")
        .ok()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| trellis_nameres::DEFAULT_NAMESPACE.to_string());
    trellis_nameres::validate_namespace(&namespace)
        .map_err(|e| anyhow::anyhow!("NAMESPACE: {e}"))?;
    Ok(namespace)
}

/// `--data-dir`, else `$TRELLIS_DATA_DIR` (handled by clap), else the user's data directory.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("trellis")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Mi").unwrap(), 4 << 20);
        assert_eq!(parse_size("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("4Xi").is_err());
        assert!(parse_size("Mi").is_err());
    }

    #[test]
    fn app_ids() {
        assert!(validate_app_id("orders-v2_x", "--app-id").is_ok());
        for bad in ["orders.prod", "", "a b", "../x", "/etc"] {
            let err = validate_app_id(bad, "--app-id").unwrap_err().to_string();
            assert!(err.starts_with("--app-id: invalid app id"), "{err}");
        }
    }

    #[test]
    fn protocols() {
        assert!(parse_protocol("http").is_ok());
        assert!(parse_protocol("h2c").is_ok());
        assert!(parse_protocol("grpc").is_ok());
        assert!(
            parse_protocol("grpcs")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(parse_protocol("ftp").is_err());
    }

    #[test]
    fn metrics_flags() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let plan = |args: &[&str]| {
            let mut argv = vec!["trellis", "--app-id", "a"];
            argv.extend_from_slice(args);
            let app = Cli::parse_from(argv)
                .run
                .into_plan()
                .unwrap()
                .apps
                .remove(0);
            (app.enable_metrics, app.metrics_port)
        };
        assert_eq!(plan(&[]), (true, None));
        assert_eq!(plan(&["--enable-metrics=false"]), (false, None));
        assert_eq!(plan(&["--enable-metrics"]), (true, None));
        assert_eq!(plan(&["--metrics-port", "0"]), (true, Some(0)));
        assert_eq!(plan(&["-M", "9191"]), (true, Some(9191)));
    }

    #[test]
    fn health_checks_need_an_app_port() {
        let args = RunArgs {
            app_id: Some("a".into()),
            app_health_check_path: Some("/health".into()),
            app_protocol: "http".into(),
            log_level: "info".into(),
            ..RunArgs::default()
        };
        let err = args.into_plan().unwrap_err().to_string();
        assert!(err.contains("--app-port"), "{err}");
    }
}
