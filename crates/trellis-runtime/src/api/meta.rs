//! Health, metadata and shutdown routes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use trellis_proto::runtime as pb;

use super::error::ApiError;
use crate::runtime::Runtime;
use crate::subscriptions::SubscriptionKind;

#[derive(Deserialize)]
pub struct HealthQuery {
    appid: Option<String>,
}

pub async fn healthz(State(rt): State<Arc<Runtime>>, Query(q): Query<HealthQuery>) -> Response {
    if let Some(appid) = q.appid
        && appid != rt.app.app_id
    {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_APPID_NOT_MATCH",
            "dapr app-id does not match",
        )
        .into_response();
    }
    if rt.health.ready() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_NOT_READY",
            "dapr is not ready",
        )
        .into_response()
    }
}

pub async fn healthz_outbound(State(rt): State<Arc<Runtime>>) -> Response {
    if rt.health.outbound_ready() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_OUTBOUND_HEALTH_NOT_READY",
            "dapr outbound is not ready",
        )
        .into_response()
    }
}

pub async fn shutdown(State(rt): State<Arc<Runtime>>) -> StatusCode {
    tracing::info!("shutdown requested through the API");
    rt.request_shutdown();
    StatusCode::NO_CONTENT
}

pub async fn put_metadata(
    State(rt): State<Arc<Runtime>>,
    Path(key): Path<String>,
    body: Bytes,
) -> Response {
    // Dapr stores the raw body as a string, whatever its content type.
    let value = String::from_utf8_lossy(&body).into_owned();
    rt.set_extended(key, value);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    id: String,
    runtime_version: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    enabled_features: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    components: Vec<ComponentJson>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extended: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subscriptions: Vec<SubscriptionJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    http_endpoints: Vec<NameJson>,
    app_connection_properties: AppConnection,
    actor_runtime: ActorRuntime,
    workflows: serde_json::Map<String, serde_json::Value>,
    /// Dapr's `scheduler.connected_addresses`: here the job store the scheduler uses, once
    /// it is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduler: Option<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ComponentJson {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    capabilities: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionJson {
    pubsubname: String,
    topic: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    rules: Vec<RuleJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_topic: Option<String>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct RuleJson {
    #[serde(rename = "match")]
    match_expr: String,
    path: String,
}

#[derive(Serialize)]
struct NameJson {
    name: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct AppConnection {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<AppHealthJson>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppHealthJson {
    health_check_path: String,
    health_probe_interval: String,
    health_probe_timeout: String,
    health_threshold: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActorRuntime {
    runtime_status: &'static str,
    host_ready: bool,
}

pub async fn get_metadata(State(rt): State<Arc<Runtime>>) -> Json<serde_json::Value> {
    let app_connection = match &rt.app_config {
        None => AppConnection::default(),
        Some(app) => AppConnection {
            port: Some(app.port),
            protocol: Some(app.protocol.as_str()),
            channel_address: Some(app.host.clone()),
            health: app.health_check.as_ref().map(|h| AppHealthJson {
                health_check_path: h.path.clone(),
                health_probe_interval: trellis_core::duration::format(h.interval),
                health_probe_timeout: trellis_core::duration::format(h.timeout),
                health_threshold: h.threshold,
            }),
        },
    };
    let metadata = Metadata {
        id: rt.app.app_id.clone(),
        runtime_version: crate::RUNTIME_VERSION,
        enabled_features: rt.enabled_features.clone(),
        components: rt
            .components
            .iter()
            .map(|c| ComponentJson {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                version: c.version.clone(),
                capabilities: c.capabilities.clone(),
            })
            .collect(),
        extended: rt.extended(),
        subscriptions: rt
            .subscriptions()
            .into_iter()
            .map(|s| SubscriptionJson {
                rules: s
                    .rules
                    .iter()
                    .map(|r| RuleJson {
                        match_expr: r.match_expr.clone().unwrap_or_default(),
                        path: r.path.clone(),
                    })
                    .chain(s.default_route.iter().map(|d| RuleJson {
                        match_expr: String::new(),
                        path: d.clone(),
                    }))
                    .collect(),
                pubsubname: s.pubsub,
                topic: s.topic,
                metadata: s.metadata,
                dead_letter_topic: s.dead_letter_topic,
                kind: s.kind.as_str(),
            })
            .collect(),
        http_endpoints: rt
            .http_endpoints
            .iter()
            .map(|name| NameJson { name: name.clone() })
            .collect(),
        app_connection_properties: app_connection,
        actor_runtime: ActorRuntime {
            runtime_status: "DISABLED",
            host_ready: false,
        },
        workflows: {
            let mut w = serde_json::Map::new();
            // `omitempty` in Dapr: the key appears once a worker is connected.
            let workers = connected_workers(&rt);
            if workers > 0 {
                w.insert("connectedWorkers".into(), workers.into());
            }
            w
        },
        scheduler: scheduler_address(&rt)
            .map(|a| serde_json::json!({ "connected_addresses": [a] })),
    };
    Json(serde_json::to_value(metadata).unwrap_or_default())
}

/// The same metadata as [`get_metadata`], as the gRPC `GetMetadata` answers it.
pub(super) fn grpc_metadata(rt: &Runtime) -> pb::GetMetadataResponse {
    let app_connection_properties = rt
        .app_config
        .as_ref()
        .map(|app| pb::AppConnectionProperties {
            port: i32::from(app.port),
            protocol: app.protocol.as_str().to_string(),
            channel_address: app.host.clone(),
            max_concurrency: 0,
            health: app
                .health_check
                .as_ref()
                .map(|h| pb::AppConnectionHealthProperties {
                    health_check_path: h.path.clone(),
                    health_probe_interval: trellis_core::duration::format(h.interval),
                    health_probe_timeout: trellis_core::duration::format(h.timeout),
                    health_threshold: i32::try_from(h.threshold).unwrap_or(i32::MAX),
                }),
        });
    pb::GetMetadataResponse {
        id: rt.app.app_id.clone(),
        runtime_version: crate::RUNTIME_VERSION.to_string(),
        enabled_features: rt.enabled_features.clone(),
        registered_components: rt
            .components
            .iter()
            .map(|c| pb::RegisteredComponents {
                name: c.name.clone(),
                r#type: c.type_name.clone(),
                version: c.version.clone(),
                capabilities: c.capabilities.clone(),
            })
            .collect(),
        extended_metadata: rt.extended().into_iter().collect(),
        subscriptions: rt
            .subscriptions()
            .into_iter()
            .map(|s| pb::PubsubSubscription {
                rules: Some(pb::PubsubSubscriptionRules {
                    rules: s
                        .rules
                        .iter()
                        .map(|r| pb::PubsubSubscriptionRule {
                            r#match: r.match_expr.clone().unwrap_or_default(),
                            path: r.path.clone(),
                        })
                        .chain(s.default_route.iter().map(|d| pb::PubsubSubscriptionRule {
                            r#match: String::new(),
                            path: d.clone(),
                        }))
                        .collect(),
                }),
                r#type: match s.kind {
                    SubscriptionKind::Declarative => pb::PubsubSubscriptionType::Declarative,
                    SubscriptionKind::Programmatic => pb::PubsubSubscriptionType::Programmatic,
                    SubscriptionKind::Streaming => pb::PubsubSubscriptionType::Streaming,
                } as i32,
                pubsub_name: s.pubsub,
                topic: s.topic,
                metadata: s.metadata.into_iter().collect(),
                dead_letter_topic: s.dead_letter_topic.unwrap_or_default(),
            })
            .collect(),
        http_endpoints: rt
            .http_endpoints
            .iter()
            .map(|name| pb::MetadataHttpEndpoint { name: name.clone() })
            .collect(),
        app_connection_properties,
        actor_runtime: Some(pb::ActorRuntime {
            runtime_status: pb::actor_runtime::ActorRuntimeStatus::Disabled as i32,
            ..Default::default()
        }),
        scheduler: scheduler_address(rt).map(|a| pb::MetadataScheduler {
            connected_addresses: vec![a],
        }),
        workflows: Some(pb::MetadataWorkflows {
            connected_workers: i32::try_from(connected_workers(rt)).unwrap_or(i32::MAX),
        }),
        ..Default::default()
    }
}

/// Dapr's `scheduler.connected_addresses`: here the job store, once it is open.
fn scheduler_address(rt: &Runtime) -> Option<String> {
    rt.jobs
        .as_ref()
        .filter(|j| j.started().is_some())
        .map(|j| format!("{} ({})", j.name, j.type_name))
}

/// Workflow workers (`GetWorkItems` streams) connected to this sidecar right now.
fn connected_workers(rt: &Runtime) -> usize {
    rt.workflows
        .as_ref()
        .and_then(|w| w.started())
        .map_or(0, |e| e.stats().workers)
}
