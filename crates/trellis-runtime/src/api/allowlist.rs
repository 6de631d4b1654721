//! `Configuration.spec.api`: which Dapr APIs the app may call, per protocol (Dapr's API
//! allowlist and denylist).
//!
//! An API is a name and a version: over HTTP the first two path segments
//! (`/v1.0/state/...` is `state` `v1.0`, `/v1.0-alpha1/lock/...` is `lock` `v1.0-alpha1`),
//! over gRPC the building block of the RPC and `v1`, `v1alpha1` or `v1beta1` from its
//! suffix (`GetState` is `state` `v1`, `TryLockAlpha1` is `lock` `v1alpha1`). A call
//! carrying `dapr-app-id` is `invoke` whatever its path. Rules apply to their `protocol`
//! (`http` when unset); health checks are never refused. As in Dapr: a denylisted API is
//! refused; with an allowlist for the protocol, only listed APIs are served.
//!
//! Dapr leaves a refused HTTP route unregistered (its 404); Trellis answers 403
//! `ERR_PERMISSION_DENIED` naming the API and the setting, so a user knows why.

use trellis_resources::{ApiAccessRule, ApiSpec};

use super::ApiError;

#[derive(Debug, Clone, Default)]
pub struct ApiAllowlist {
    http: Lists,
    grpc: Lists,
}

#[derive(Debug, Clone, Default)]
struct Lists {
    allowed: Vec<(String, String)>,
    denied: Vec<(String, String)>,
}

impl Lists {
    fn permits(&self, name: &str, version: &str) -> bool {
        let hit = |rules: &[(String, String)]| rules.iter().any(|(n, v)| n == name && v == version);
        !hit(&self.denied) && (self.allowed.is_empty() || hit(&self.allowed))
    }
}

impl ApiAllowlist {
    /// The lists of `spec`; `None` when it restricts nothing.
    pub fn new(spec: &ApiSpec) -> Option<Self> {
        if spec.allowed.is_empty() && spec.denied.is_empty() {
            return None;
        }
        let pick = |rules: &[ApiAccessRule], protocol: &str| {
            rules
                .iter()
                .filter(|r| r.protocol.as_deref().unwrap_or("http") == protocol)
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect()
        };
        let lists = |protocol| Lists {
            allowed: pick(&spec.allowed, protocol),
            denied: pick(&spec.denied, protocol),
        };
        Some(Self {
            http: lists("http"),
            grpc: lists("grpc"),
        })
    }

    /// `Err` with Dapr's error shape when the HTTP request's API is refused.
    pub fn check_http(&self, path: &str, invocation_header: bool) -> Result<(), ApiError> {
        let mut segments = path.trim_start_matches('/').split('/');
        let (version, name) = match (segments.next(), segments.next()) {
            _ if invocation_header => ("v1.0", "invoke"),
            (Some(version), Some(name)) => (version, name),
            _ => return Ok(()),
        };
        // Dapr groups its unlock route with lock.
        let name = if name == "unlock" { "lock" } else { name };
        if name == "healthz" || self.http.permits(name, version) {
            return Ok(());
        }
        Err(refused(name, version, "http"))
    }

    /// `Err` when the gRPC call's API is refused; `rpc` is the method name, `invocation`
    /// whether the call is proxied by `dapr-app-id`.
    pub fn check_grpc(&self, rpc: &str, invocation: bool) -> Result<(), ApiError> {
        let (name, version) = match invocation {
            true => ("invoke", "v1"),
            false => grpc_api(rpc),
        };
        if self.grpc.permits(name, version) {
            return Ok(());
        }
        Err(refused(name, version, "grpc"))
    }
}

fn refused(name: &str, version: &str, protocol: &str) -> ApiError {
    ApiError::new(
        http::StatusCode::FORBIDDEN,
        "ERR_PERMISSION_DENIED",
        format!(
            "the {name} API {version} over {protocol} is not enabled for this app (spec.api of its configuration)"
        ),
    )
    .grpc(tonic::Code::PermissionDenied)
}

/// The API name and version of an RPC of the `Dapr` service.
fn grpc_api(rpc: &str) -> (&'static str, &'static str) {
    let version = if rpc.ends_with("Alpha1") || rpc.ends_with("Alpha2") {
        "v1alpha1"
    } else if rpc.ends_with("Beta1") {
        "v1beta1"
    } else {
        "v1"
    };
    const GROUPS: &[(&str, &str)] = &[
        ("InvokeService", "invoke"),
        ("InvokeBinding", "bindings"),
        ("State", "state"),
        ("Publish", "publish"),
        ("SubscribeTopicEvents", "publish"),
        ("Secret", "secrets"),
        ("Metadata", "metadata"),
        ("Shutdown", "shutdown"),
        ("Lock", "lock"),
        ("Unlock", "lock"),
        ("Configuration", "configuration"),
        ("Actor", "actors"),
        ("Workflow", "workflows"),
        ("Job", "jobs"),
        ("Crypt", "crypto"),
        ("Subtle", "crypto"),
        ("Converse", "conversation"),
    ];
    let name = GROUPS
        .iter()
        .find(|(needle, _)| rpc.contains(needle))
        .map_or("unknown", |(_, name)| name);
    (name, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, version: &str, protocol: Option<&str>) -> ApiAccessRule {
        ApiAccessRule {
            name: name.into(),
            version: version.into(),
            protocol: protocol.map(str::to_string),
        }
    }

    #[test]
    fn allow_and_deny_per_protocol_as_dapr() {
        let spec = ApiSpec {
            allowed: vec![
                rule("state", "v1.0", None),
                rule("state", "v1", Some("grpc")),
            ],
            denied: vec![rule("state", "v1.0", Some("http"))],
        };
        let Some(list) = ApiAllowlist::new(&spec) else {
            panic!("rules present");
        };
        assert!(
            list.check_http("/v1.0/state/s/k", false).is_err(),
            "deny wins"
        );
        assert!(
            list.check_http("/v1.0/publish/p/t", false).is_err(),
            "not allowed"
        );
        assert!(
            list.check_http("/v1.0/healthz", false).is_ok(),
            "health is exempt"
        );
        assert!(
            list.check_http("/anything", true).is_err(),
            "dapr-app-id is invoke"
        );
        assert!(list.check_grpc("GetState", false).is_ok());
        assert!(list.check_grpc("PublishEvent", false).is_err());
        assert!(ApiAllowlist::new(&ApiSpec::default()).is_none());
    }

    #[test]
    fn rpcs_map_to_dapr_api_names_and_versions() {
        assert_eq!(grpc_api("GetBulkState"), ("state", "v1"));
        assert_eq!(grpc_api("QueryStateAlpha1"), ("state", "v1alpha1"));
        assert_eq!(grpc_api("BulkPublishEventAlpha1"), ("publish", "v1alpha1"));
        assert_eq!(grpc_api("TryLockAlpha1"), ("lock", "v1alpha1"));
        assert_eq!(grpc_api("StartWorkflowBeta1"), ("workflows", "v1beta1"));
        assert_eq!(grpc_api("GetMetadata"), ("metadata", "v1"));
    }
}
