//! The `Configuration` resource (`kind: Configuration`): tracing, metrics, access control, API
//! allow-lists, secret scopes, features, name resolution, mTLS and middleware pipelines.

use std::time::Duration;

use serde_norway::Mapping;

use crate::component::{ObjectMeta, parse_object_meta};
use crate::error::Location;
use crate::yaml::{Ctx, child, get, item, to_json};

/// A `kind: Configuration` resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    /// Where it was defined.
    pub location: Location,
    /// Name and namespace.
    pub meta: ObjectMeta,
    /// `spec`.
    pub spec: ConfigurationSpec,
}

/// `spec` of a Configuration. Sections that are absent are `None` (or empty).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigurationSpec {
    /// `spec.nameResolution`.
    pub name_resolution: Option<NameResolutionSpec>,
    /// `spec.tracing`.
    pub tracing: Option<TracingSpec>,
    /// `spec.metrics`.
    pub metrics: Option<MetricsSpec>,
    /// `spec.accessControl`.
    pub access_control: Option<AccessControlSpec>,
    /// `spec.api`.
    pub api: Option<ApiSpec>,
    /// `spec.features`.
    pub features: Vec<FeatureSpec>,
    /// `spec.secrets`.
    pub secrets: Option<SecretsSpec>,
    /// `spec.appHttpPipeline`: middleware applied to calls from the sidecar to the app.
    pub app_http_pipeline: Option<PipelineSpec>,
    /// `spec.httpPipeline`: middleware applied to calls the app makes to the sidecar.
    pub http_pipeline: Option<PipelineSpec>,
    /// `spec.mtls`.
    pub mtls: Option<MtlsSpec>,
    /// The whole `spec` as JSON, for settings this crate does not model yet (logging, ...).
    pub raw: serde_json::Value,
}

/// `spec.mtls`: mTLS between sidecars.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MtlsSpec {
    /// `enabled`; unset leaves the choice to the runtime.
    pub enabled: Option<bool>,
    /// `workloadCertTTL`.
    pub workload_cert_ttl: Option<Duration>,
    /// `allowedClockSkew`.
    pub allowed_clock_skew: Option<Duration>,
}

/// `spec.nameResolution`.
#[derive(Debug, Clone, PartialEq)]
pub struct NameResolutionSpec {
    /// `component`, such as `mdns` or `consul`.
    pub component: String,
    /// `version`; `v1` when absent.
    pub version: String,
    /// `configuration`, passed to the resolver as is; `Null` when absent.
    pub configuration: serde_json::Value,
}

/// `spec.tracing`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TracingSpec {
    /// `samplingRate`, kept as text ("1", "0.5") as Dapr does.
    pub sampling_rate: Option<String>,
    /// `stdout`: also write spans to standard output.
    pub stdout: bool,
    /// `otel`.
    pub otel: Option<OtelSpec>,
    /// `zipkin`.
    pub zipkin: Option<ZipkinSpec>,
}

/// `spec.tracing.otel`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OtelSpec {
    /// `endpointAddress`.
    pub endpoint_address: String,
    /// `isSecure`.
    pub is_secure: bool,
    /// `protocol`: `http` or `grpc`.
    pub protocol: Option<String>,
}

/// `spec.tracing.zipkin`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZipkinSpec {
    /// `endpointAddress`.
    pub endpoint_address: String,
}

/// `spec.metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSpec {
    /// `enabled`; true when absent, as in Dapr.
    pub enabled: bool,
}

/// `spec.accessControl`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessControlSpec {
    /// `defaultAction`: `allow` or `deny`.
    pub default_action: Option<String>,
    /// `trustDomain`.
    pub trust_domain: Option<String>,
    /// `policies`.
    pub policies: Vec<AppPolicySpec>,
}

/// One entry of `spec.accessControl.policies`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppPolicySpec {
    /// `appId`: the calling app this policy is about.
    pub app_id: String,
    /// `defaultAction`: `allow` or `deny`.
    pub default_action: Option<String>,
    /// `trustDomain`.
    pub trust_domain: Option<String>,
    /// `namespace`.
    pub namespace: Option<String>,
    /// `operations`.
    pub operations: Vec<AppOperation>,
}

/// One entry of a policy's `operations`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppOperation {
    /// `name`: the method path, possibly with `*` / `**` wildcards.
    pub name: String,
    /// `httpVerb`: verbs the rule applies to (`*` for all).
    pub http_verb: Vec<String>,
    /// `action`: `allow` or `deny`.
    pub action: String,
}

/// `spec.api`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiSpec {
    /// `allowed`: only these APIs are served when non-empty.
    pub allowed: Vec<ApiAccessRule>,
    /// `denied`: these APIs are refused.
    pub denied: Vec<ApiAccessRule>,
}

/// One entry of `spec.api.allowed` / `spec.api.denied`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApiAccessRule {
    /// `name`, such as `state` or `invoke`.
    pub name: String,
    /// `version`, such as `v1.0` or `v1.0-alpha1`.
    pub version: String,
    /// `protocol`: `http` or `grpc`; both when absent.
    pub protocol: Option<String>,
}

/// One entry of `spec.features`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeatureSpec {
    /// `name` of the preview feature.
    pub name: String,
    /// `enabled`.
    pub enabled: bool,
}

/// `spec.secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretsSpec {
    /// `scopes`.
    pub scopes: Vec<SecretsScope>,
}

/// One entry of `spec.secrets.scopes`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretsScope {
    /// `storeName`.
    pub store_name: String,
    /// `defaultAccess`: `allow` or `deny`.
    pub default_access: Option<String>,
    /// `allowedSecrets`.
    pub allowed_secrets: Vec<String>,
    /// `deniedSecrets`.
    pub denied_secrets: Vec<String>,
}

/// `spec.httpPipeline` / `spec.appHttpPipeline`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PipelineSpec {
    /// `handlers`, applied in order.
    pub handlers: Vec<HandlerSpec>,
}

/// One middleware handler of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandlerSpec {
    /// `name`: the middleware Component's name.
    pub name: String,
    /// `type`, such as `middleware.http.oauth2`.
    pub type_name: String,
}

/// Reads an optional `allow`/`deny` field; Dapr compares these case-insensitively.
fn action(ctx: &mut Ctx<'_>, map: &Mapping, key: &str, path: &str) -> Option<String> {
    let value = ctx.string(map, key, path)?;
    if value.eq_ignore_ascii_case("allow") || value.eq_ignore_ascii_case("deny") {
        Some(value.to_ascii_lowercase())
    } else {
        ctx.error(
            child(path, key),
            format!("invalid value {value:?}; expected \"allow\" or \"deny\""),
        );
        None
    }
}

/// The verbs an ACL operation may list (`*`: every one).
const HTTP_VERBS: &[&str] = &[
    "*", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// An ACL operation name: a path starting with `/` whose segments are literal text, `*`
/// (one segment) or `**` (any number of segments); `*` inside a segment is an error, not
/// a pattern.
fn check_operation_glob(name: &str) -> Result<(), &'static str> {
    let Some(rest) = name.strip_prefix('/') else {
        return Err("it must start with /");
    };
    for segment in rest.split('/') {
        if segment.contains('*') && segment != "*" && segment != "**" {
            return Err("a wildcard must be a whole segment (* or **)");
        }
    }
    Ok(())
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// Reads a `kind: Configuration` document.
pub(crate) fn parse_configuration(ctx: &mut Ctx<'_>, root: &Mapping) -> Configuration {
    let meta = parse_object_meta(ctx, root);
    let spec = match ctx.mapping(root, "spec", "") {
        Some(spec) => parse_spec(ctx, spec),
        None => ConfigurationSpec {
            raw: serde_json::Value::Object(Default::default()),
            ..Default::default()
        },
    };
    Configuration {
        location: ctx.location.clone(),
        meta,
        spec,
    }
}

fn parse_spec(ctx: &mut Ctx<'_>, spec: &Mapping) -> ConfigurationSpec {
    let p = "spec";
    let name_resolution = ctx.mapping(spec, "nameResolution", p).map(|nr| {
        let path = child(p, "nameResolution");
        NameResolutionSpec {
            component: ctx.required_string(nr, "component", &path),
            version: non_empty(ctx.string(nr, "version", &path))
                .unwrap_or_else(|| "v1".to_string()),
            configuration: get(nr, "configuration").map_or(serde_json::Value::Null, to_json),
        }
    });

    let tracing = ctx.mapping(spec, "tracing", p).map(|t| {
        let path = child(p, "tracing");
        let sampling_rate = ctx.string(t, "samplingRate", &path);
        if let Some(rate) = &sampling_rate {
            // Dapr parses this as a float; catching a typo here beats silently not tracing.
            match rate.trim().parse::<f64>() {
                Ok(r) if r >= 0.0 => {}
                _ => ctx.error(
                    child(&path, "samplingRate"),
                    format!(
                        "invalid sampling rate {rate:?}; expected a number such as \"1\" or \"0.5\""
                    ),
                ),
            }
        }
        let stdout = ctx.bool(t, "stdout", &path).unwrap_or(false);
        let otel = ctx.mapping(t, "otel", &path).map(|o| {
            let opath = child(&path, "otel");
            OtelSpec {
                endpoint_address: ctx.required_string(o, "endpointAddress", &opath),
                is_secure: ctx.bool(o, "isSecure", &opath).unwrap_or(false),
                protocol: non_empty(ctx.string(o, "protocol", &opath)),
            }
        });
        let zipkin = ctx.mapping(t, "zipkin", &path).map(|z| ZipkinSpec {
            endpoint_address: ctx.required_string(z, "endpointAddress", &child(&path, "zipkin")),
        });
        TracingSpec {
            sampling_rate,
            stdout,
            otel,
            zipkin,
        }
    });

    let metrics = ctx.mapping(spec, "metrics", p).map(|m| MetricsSpec {
        enabled: ctx.bool(m, "enabled", &child(p, "metrics")).unwrap_or(true),
    });

    let access_control = ctx
        .mapping(spec, "accessControl", p)
        .map(|ac| parse_access_control(ctx, ac));

    let api = ctx.mapping(spec, "api", p).map(|api| {
        let path = child(p, "api");
        ApiSpec {
            allowed: parse_api_rules(ctx, api, "allowed", &path),
            denied: parse_api_rules(ctx, api, "denied", &path),
        }
    });

    let mut features = Vec::new();
    let features_path = child(p, "features");
    for (i, f) in ctx
        .sequence(spec, "features", p)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let fpath = item(&features_path, i);
        let Some(f) = ctx.as_mapping(f, &fpath) else {
            continue;
        };
        features.push(FeatureSpec {
            name: ctx.required_string(f, "name", &fpath),
            enabled: ctx.bool(f, "enabled", &fpath).unwrap_or(false),
        });
    }

    let secrets = ctx.mapping(spec, "secrets", p).map(|s| {
        let path = child(p, "secrets");
        let scopes_path = child(&path, "scopes");
        let mut scopes = Vec::new();
        for (i, sc) in ctx
            .sequence(s, "scopes", &path)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let spath = item(&scopes_path, i);
            let Some(sc) = ctx.as_mapping(sc, &spath) else {
                continue;
            };
            scopes.push(SecretsScope {
                store_name: ctx.required_string(sc, "storeName", &spath),
                default_access: action(ctx, sc, "defaultAccess", &spath),
                allowed_secrets: ctx.string_list(sc, "allowedSecrets", &spath),
                denied_secrets: ctx.string_list(sc, "deniedSecrets", &spath),
            });
        }
        SecretsSpec { scopes }
    });

    let mtls = ctx.mapping(spec, "mtls", p).map(|m| {
        let path = child(p, "mtls");
        MtlsSpec {
            enabled: ctx.bool(m, "enabled", &path),
            workload_cert_ttl: ctx.duration(m, "workloadCertTTL", &path),
            allowed_clock_skew: ctx.duration(m, "allowedClockSkew", &path),
        }
    });

    let app_http_pipeline = parse_pipeline(ctx, spec, "appHttpPipeline");
    let http_pipeline = parse_pipeline(ctx, spec, "httpPipeline");

    ConfigurationSpec {
        name_resolution,
        tracing,
        metrics,
        access_control,
        api,
        features,
        secrets,
        app_http_pipeline,
        http_pipeline,
        mtls,
        raw: to_json(&serde_norway::Value::Mapping(spec.clone())),
    }
}

fn parse_access_control(ctx: &mut Ctx<'_>, ac: &Mapping) -> AccessControlSpec {
    let path = "spec.accessControl";
    let default_action = action(ctx, ac, "defaultAction", path);
    let trust_domain = non_empty(ctx.string(ac, "trustDomain", path));
    let policies_path = child(path, "policies");
    let mut policies = Vec::new();
    for (i, pol) in ctx
        .sequence(ac, "policies", path)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let ppath = item(&policies_path, i);
        let Some(pol) = ctx.as_mapping(pol, &ppath) else {
            continue;
        };
        let app_id = ctx.required_string(pol, "appId", &ppath);
        let default_action = action(ctx, pol, "defaultAction", &ppath);
        let trust_domain = non_empty(ctx.string(pol, "trustDomain", &ppath));
        let namespace = non_empty(ctx.string(pol, "namespace", &ppath));
        let ops_path = child(&ppath, "operations");
        let mut operations = Vec::new();
        for (j, op) in ctx
            .sequence(pol, "operations", &ppath)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let opath = item(&ops_path, j);
            let Some(op) = ctx.as_mapping(op, &opath) else {
                continue;
            };
            let name = ctx.required_string(op, "name", &opath);
            if let Err(why) = check_operation_glob(&name) {
                ctx.error(
                    child(&opath, "name"),
                    format!("invalid operation {name:?}: {why}"),
                );
            }
            let http_verb = ctx.string_list(op, "httpVerb", &opath);
            for verb in &http_verb {
                if !HTTP_VERBS.contains(&verb.to_ascii_uppercase().as_str()) {
                    ctx.error(
                        child(&opath, "httpVerb"),
                        format!(
                            "invalid verb {verb:?}; expected one of {}",
                            HTTP_VERBS.join(", ")
                        ),
                    );
                }
            }
            let action = match action(ctx, op, "action", &opath) {
                Some(a) => a,
                None => {
                    if get(op, "action").is_none() {
                        ctx.missing(&child(&opath, "action"));
                    }
                    String::new()
                }
            };
            operations.push(AppOperation {
                name,
                http_verb,
                action,
            });
        }
        policies.push(AppPolicySpec {
            app_id,
            default_action,
            trust_domain,
            namespace,
            operations,
        });
    }
    AccessControlSpec {
        default_action,
        trust_domain,
        policies,
    }
}

fn parse_api_rules(ctx: &mut Ctx<'_>, api: &Mapping, key: &str, path: &str) -> Vec<ApiAccessRule> {
    let list_path = child(path, key);
    let mut rules = Vec::new();
    for (i, r) in ctx
        .sequence(api, key, path)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let rpath = item(&list_path, i);
        let Some(r) = ctx.as_mapping(r, &rpath) else {
            continue;
        };
        rules.push(ApiAccessRule {
            name: ctx.required_string(r, "name", &rpath),
            version: ctx.required_string(r, "version", &rpath),
            protocol: non_empty(ctx.string(r, "protocol", &rpath)).map(|p| p.to_ascii_lowercase()),
        });
    }
    rules
}

fn parse_pipeline(ctx: &mut Ctx<'_>, spec: &Mapping, key: &str) -> Option<PipelineSpec> {
    let path = child("spec", key);
    let pipeline = ctx.mapping(spec, key, "spec")?;
    let handlers_path = child(&path, "handlers");
    let mut handlers = Vec::new();
    for (i, h) in ctx
        .sequence(pipeline, "handlers", &path)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let hpath = item(&handlers_path, i);
        let Some(h) = ctx.as_mapping(h, &hpath) else {
            continue;
        };
        handlers.push(HandlerSpec {
            name: ctx.required_string(h, "name", &hpath),
            type_name: ctx.required_string(h, "type", &hpath),
        });
    }
    Some(PipelineSpec { handlers })
}
