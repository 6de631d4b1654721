//! The `HTTPEndpoint` resource (`kind: HTTPEndpoint`): a named non-Dapr HTTP service that apps can
//! invoke through the sidecar.

use serde_norway::Mapping;

use crate::component::{
    MetadataItem, ObjectMeta, parse_auth_secret_store, parse_name_value_list, parse_object_meta,
    parse_scopes, scopes_admit,
};
use crate::error::Location;
use crate::yaml::{Ctx, get};

/// A `kind: HTTPEndpoint` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// Where it was defined.
    pub location: Location,
    /// Name and namespace.
    pub meta: ObjectMeta,
    /// `spec.baseUrl`, starting with `http://` or `https://`.
    pub base_url: String,
    /// `spec.headers`, added to every request.
    pub headers: Vec<MetadataItem>,
    /// `auth.secretStore`: the store header `secretKeyRef`s are resolved from.
    pub auth_secret_store: Option<String>,
    /// App IDs allowed to use the endpoint; empty means every app.
    pub scopes: Vec<String>,
}

impl HttpEndpoint {
    /// True when `app_id` may use this endpoint (an empty scope list admits everyone).
    pub fn is_scoped_to(&self, app_id: &str) -> bool {
        scopes_admit(&self.scopes, app_id)
    }
}

/// Reads a `kind: HTTPEndpoint` document.
pub(crate) fn parse_http_endpoint(ctx: &mut Ctx<'_>, root: &Mapping) -> HttpEndpoint {
    let meta = parse_object_meta(ctx, root);
    let scopes = parse_scopes(ctx, root);
    let auth_secret_store = parse_auth_secret_store(ctx, root);
    let mut endpoint = HttpEndpoint {
        location: ctx.location.clone(),
        meta,
        base_url: String::new(),
        headers: Vec::new(),
        auth_secret_store,
        scopes,
    };
    let Some(spec) = ctx.mapping(root, "spec", "") else {
        if get(root, "spec").is_none() {
            ctx.missing("spec.baseUrl");
        }
        return endpoint;
    };
    endpoint.base_url = ctx.required_string(spec, "baseUrl", "spec");
    let lower = endpoint.base_url.to_ascii_lowercase();
    let has_scheme = lower.starts_with("http://") || lower.starts_with("https://");
    if !endpoint.base_url.is_empty() && !has_scheme {
        ctx.error(
            "spec.baseUrl",
            format!(
                "invalid base url {:?}; it must start with http:// or https://",
                endpoint.base_url
            ),
        );
    }
    endpoint.headers = parse_name_value_list(ctx, spec, "headers", "spec");
    endpoint
}
