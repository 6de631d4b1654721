//! Multi-app run files, in the format of Dapr's `dapr run -f` template:
//!
//! ```yaml
//! version: 1
//! common:                    # defaults for every app
//!   resourcesPath: ./resources
//!   env: { DEBUG: "true" }
//! apps:
//!   - appID: orders
//!     appDirPath: ./orders   # relative to this file; the app runs there
//!     appPort: 3000
//!     command: ["python3", "app.py"]
//! ```
//!
//! Paths in `common` are relative to the run file, paths of an app to its `appDirPath`, as
//! in Dapr. Unknown keys are errors (a typo should not be silently ignored); keys that only
//! make sense on Kubernetes are accepted and ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::args::{self, AppPlan, RunArgs};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    version: Option<u32>,
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    common: AppSection,
    #[serde(default)]
    apps: Vec<AppSection>,
}

/// The keys an app entry and `common` share; all optional so `common` can fill gaps.
// The Kubernetes-only and logging keys at the end are parsed to be accepted, never read.
#[allow(dead_code)]
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AppSection {
    #[serde(rename = "appID")]
    app_id: Option<String>,
    app_dir_path: Option<PathBuf>,
    app_port: Option<u16>,
    app_protocol: Option<String>,
    app_channel_address: Option<String>,
    command: Option<Vec<String>>,
    resources_path: Option<PathBuf>,
    resources_paths: Option<Vec<PathBuf>>,
    config_file_path: Option<PathBuf>,
    env: Option<BTreeMap<String, EnvValue>>,
    enable_app_health_check: Option<bool>,
    app_health_check_path: Option<String>,
    app_health_probe_interval: Option<u64>,
    app_health_probe_timeout: Option<u64>,
    app_health_threshold: Option<u32>,
    #[serde(rename = "daprHTTPPort")]
    dapr_http_port: Option<u16>,
    #[serde(rename = "daprGRPCPort")]
    dapr_grpc_port: Option<u16>,
    #[serde(rename = "daprInternalGRPCPort")]
    dapr_internal_grpc_port: Option<u16>,
    metrics_port: Option<u16>,
    enable_api_logging: Option<bool>,
    max_body_size: Option<String>,
    #[serde(rename = "daprHTTPMaxRequestSize")]
    dapr_http_max_request_size: Option<u64>,
    // Accepted for compatibility with Dapr run files; they do not apply here.
    log_level: Option<serde_norway::Value>,
    app_log_destination: Option<serde_norway::Value>,
    daprd_log_destination: Option<serde_norway::Value>,
    container_image: Option<serde_norway::Value>,
    container_image_pull_policy: Option<serde_norway::Value>,
    create_service: Option<serde_norway::Value>,
    placement_host_address: Option<serde_norway::Value>,
    scheduler_host_address: Option<serde_norway::Value>,
    enable_profiling: Option<serde_norway::Value>,
    profile_port: Option<serde_norway::Value>,
    app_max_concurrency: Option<serde_norway::Value>,
    runtime_path: Option<serde_norway::Value>,
    #[serde(rename = "appSSL")]
    app_ssl: Option<serde_norway::Value>,
    unix_domain_socket: Option<serde_norway::Value>,
    api_listen_addresses: Option<serde_norway::Value>,
    read_buffer_size: Option<serde_norway::Value>,
    env_file: Option<serde_norway::Value>,
}

/// Env values may be written as YAML numbers or booleans.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvValue {
    Text(String),
    Number(serde_norway::Number),
    Bool(bool),
}

impl EnvValue {
    fn as_string(&self) -> String {
        match self {
            EnvValue::Text(s) => s.clone(),
            EnvValue::Number(n) => n.to_string(),
            EnvValue::Bool(b) => b.to_string(),
        }
    }
}

/// Reads a run file (or `trellis.yaml`/`dapr.yaml` in a directory) into one plan per app.
pub fn load(path: &Path, cli: &RunArgs) -> anyhow::Result<Vec<AppPlan>> {
    let file = if path.is_dir() {
        ["trellis.yaml", "dapr.yaml"]
            .iter()
            .map(|name| path.join(name))
            .find(|p| p.exists())
            .with_context(|| {
                format!(
                    "{} holds neither trellis.yaml nor dapr.yaml",
                    path.display()
                )
            })?
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading run file {}", file.display()))?;
    let base = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    parse(&text, &base, cli).with_context(|| format!("in run file {}", file.display()))
}

fn parse(text: &str, base: &Path, cli: &RunArgs) -> anyhow::Result<Vec<AppPlan>> {
    let run: RunFile = serde_norway::from_str(text)?;
    if run.version.is_none() {
        bail!("required field 'version' is missing (use `version: 1`)");
    }
    if run.apps.is_empty() {
        bail!("no apps: add at least one entry under `apps`");
    }
    let defaults = cli.defaults_for_run_file();
    let common = run.common;
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for (index, app) in run.apps.into_iter().enumerate() {
        match app_plan(index, app, &common, base, &defaults) {
            Ok(plan) => plans.push(plan),
            Err(err) => errors.push(format!("apps[{index}]: {err:#}")),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for plan in &plans {
        if !seen.insert(plan.app_id.clone()) {
            errors.push(format!("app id {:?} appears more than once", plan.app_id));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(plans)
}

fn app_plan(
    index: usize,
    app: AppSection,
    common: &AppSection,
    base: &Path,
    defaults: &args::AppPlanDefaults,
) -> anyhow::Result<AppPlan> {
    let _ = index;
    let Some(dir) = app.app_dir_path.clone() else {
        bail!("required field 'appDirPath' is missing");
    };
    let dir = base.join(dir);
    if !dir.is_dir() {
        bail!("appDirPath {} is not a directory", dir.display());
    }
    let app_id = match &app.app_id {
        Some(id) => id.clone(),
        None => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .context("cannot derive an app id from appDirPath; set appID")?,
    };
    args::validate_app_id(&app_id, "appID")?;

    // Resources: the app's own, else <appDir>/.dapr/resources, else common's.
    let mut resources: Vec<PathBuf> = app
        .resources_paths
        .iter()
        .flatten()
        .chain(app.resources_path.iter())
        .map(|p| dir.join(p))
        .collect();
    if resources.is_empty() {
        let local = dir.join(".dapr/resources");
        if local.is_dir() {
            resources.push(local);
        } else {
            resources.extend(
                common
                    .resources_paths
                    .iter()
                    .flatten()
                    .chain(common.resources_path.iter())
                    .map(|p| base.join(p)),
            );
        }
    }
    let config = app
        .config_file_path
        .as_ref()
        .map(|p| dir.join(p))
        .or_else(|| Some(dir.join(".dapr/config.yaml")).filter(|p| p.exists()))
        .or_else(|| common.config_file_path.as_ref().map(|p| base.join(p)));

    let pick = |a: &Option<u16>, c: &Option<u16>| a.or(*c);
    let health_path = app
        .app_health_check_path
        .clone()
        .or(common.app_health_check_path.clone());
    let interval = app
        .app_health_probe_interval
        .or(common.app_health_probe_interval);
    let timeout = app
        .app_health_probe_timeout
        .or(common.app_health_probe_timeout);
    let threshold = app.app_health_threshold.or(common.app_health_threshold);
    let enable_health = app
        .enable_app_health_check
        .or(common.enable_app_health_check)
        .unwrap_or(false)
        || health_path.is_some();
    let app_port = pick(&app.app_port, &common.app_port);
    let health_check = if enable_health {
        if app_port.is_none() {
            bail!("app health checks need appPort");
        }
        Some(args::health_check(
            health_path,
            interval,
            timeout,
            threshold,
        )?)
    } else {
        None
    };
    let max_request_body = match (
        app.max_body_size.as_ref().or(common.max_body_size.as_ref()),
        app.dapr_http_max_request_size
            .or(common.dapr_http_max_request_size),
    ) {
        (Some(size), _) => args::parse_size(size)?,
        (None, Some(mb)) => usize::try_from(mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        (None, None) => trellis_runtime::config::DEFAULT_MAX_REQUEST_BODY,
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    // The app's values win over common's.
    for vars in [&common.env, &app.env].into_iter().flatten() {
        {
            for (k, v) in vars {
                env.insert(k.clone(), v.as_string());
            }
        }
    }
    let protocol = app
        .app_protocol
        .clone()
        .or(common.app_protocol.clone())
        .unwrap_or_else(|| "http".into());
    Ok(AppPlan {
        app_id,
        namespace: args::namespace()?,
        app_port,
        app_protocol: args::parse_protocol(&protocol)?,
        app_channel_address: app
            .app_channel_address
            .clone()
            .or(common.app_channel_address.clone())
            .unwrap_or_else(|| "127.0.0.1".into()),
        // Several sidecars cannot all take 3500: unset ports are picked free.
        http_port: pick(&app.dapr_http_port, &common.dapr_http_port).unwrap_or(0),
        grpc_port: pick(&app.dapr_grpc_port, &common.dapr_grpc_port).unwrap_or(0),
        internal_port: pick(
            &app.dapr_internal_grpc_port,
            &common.dapr_internal_grpc_port,
        )
        .unwrap_or(0),
        metrics_port: Some(pick(&app.metrics_port, &common.metrics_port).unwrap_or(0)),
        enable_metrics: defaults.enable_metrics,
        resources_paths: resources,
        config,
        health_check,
        enable_api_logging: app
            .enable_api_logging
            .or(common.enable_api_logging)
            .unwrap_or(defaults.log_api),
        max_request_body,
        graceful_shutdown: defaults.graceful_shutdown,
        data_dir: defaults.data_dir.clone(),
        command: app
            .command
            .clone()
            .or(common.command.clone())
            .unwrap_or_default(),
        cwd: Some(dir),
        env,
        authority_files: defaults.authority_files.clone(),
        allowed_origins: defaults.allowed_origins.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> RunArgs {
        RunArgs::default()
    }

    #[test]
    fn parses_a_dapr_style_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("orders")).unwrap();
        std::fs::create_dir_all(dir.path().join("shipping/.dapr/resources")).unwrap();
        std::fs::create_dir_all(dir.path().join("res")).unwrap();
        let text = r#"
version: 1
common:
  resourcesPath: ./res
  env:
    DEBUG: true
    LEVEL: 3
apps:
  - appID: orders
    appDirPath: ./orders
    appPort: 3000
    command: ["python3", "app.py"]
    env: { LEVEL: "4" }
  - appDirPath: ./shipping
    command: ["node", "index.js"]
    appHealthCheckPath: /health
    appPort: 3001
    containerImage: ignored
"#;
        let apps = parse(text, dir.path(), &cli()).unwrap();
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].app_id, "orders");
        assert_eq!(apps[0].env["DEBUG"], "true");
        assert_eq!(apps[0].env["LEVEL"], "4");
        assert_eq!(apps[0].resources_paths, vec![dir.path().join("./res")]);
        assert_eq!(apps[0].http_port, 0);
        assert_eq!(apps[1].app_id, "shipping");
        assert_eq!(
            apps[1].resources_paths,
            vec![dir.path().join("./shipping").join(".dapr/resources")]
        );
        assert_eq!(apps[1].health_check.as_ref().unwrap().path, "/health");
        assert_eq!(
            apps[1].cwd.as_deref(),
            Some(dir.path().join("./shipping").as_path())
        );
    }

    #[test]
    fn reports_every_broken_app() {
        let dir = tempfile::tempdir().unwrap();
        let text = "version: 1\napps:\n  - appID: a\n  - appID: b\n    appDirPath: ./missing\n";
        let err = format!("{:#}", parse(text, dir.path(), &cli()).unwrap_err());
        assert!(
            err.contains("apps[0]") && err.contains("appDirPath"),
            "{err}"
        );
        assert!(err.contains("apps[1]") && err.contains("missing"), "{err}");
    }

    #[test]
    fn app_ids_follow_the_one_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("my.app")).unwrap();
        let text =
            "version: 1\napps:\n  - appID: ../../x\n    appDirPath: .\n  - appDirPath: ./my.app\n";
        let err = format!("{:#}", parse(text, dir.path(), &cli()).unwrap_err());
        assert!(
            err.contains("apps[0]: appID: invalid app id \"../../x\": '.' is not allowed"),
            "{err}"
        );
        // An id derived from the directory name is checked the same way.
        assert!(
            err.contains("apps[1]: appID: invalid app id \"my.app\""),
            "{err}"
        );
    }

    #[test]
    fn rejects_typos_and_missing_version() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            parse(
                "version: 1\napps:\n  - appId: a\n    appDirPath: .\n",
                dir.path(),
                &cli()
            )
            .unwrap_err()
        );
        assert!(err.contains("appId"), "{err}");
        let err = format!(
            "{:#}",
            parse("apps:\n  - appDirPath: .\n", dir.path(), &cli()).unwrap_err()
        );
        assert!(err.contains("version"), "{err}");
    }
}
