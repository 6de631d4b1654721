//! The `Component` resource (`kind: Component`) and the pieces other resources share with it:
//! object metadata, name/value metadata lists and scopes.

use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::error::Location;
use crate::yaml::{Ctx, child, get, item, scalar_text, to_json, untag};

/// `metadata` of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`; required, never empty in a successfully loaded resource.
    pub name: String,
    /// `metadata.namespace`, when given.
    pub namespace: Option<String>,
}

impl ObjectMeta {
    /// True when a sidecar in `namespace` loads this resource: one without a namespace
    /// belongs to every namespace (Dapr self-hosted).
    pub fn in_namespace(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// The value of a metadata item or header: inline text, or a reference to a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataValue {
    /// `value:`; numbers and booleans become their text, mappings and lists become JSON text.
    Plain(String),
    /// `secretKeyRef: {name, key}`, to be resolved through the resource's secret store.
    SecretRef {
        /// The secret's name.
        name: String,
        /// The key inside the secret; defaults to `name` when omitted, as in Dapr.
        key: String,
    },
}

impl MetadataValue {
    /// The inline value, or `None` for a secret reference.
    pub fn as_plain(&self) -> Option<&str> {
        match self {
            MetadataValue::Plain(s) => Some(s),
            MetadataValue::SecretRef { .. } => None,
        }
    }
}

/// One `{name, value | secretKeyRef}` entry of `spec.metadata` (or of an HTTPEndpoint's `spec.headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItem {
    /// The item's name, as written (lookups compare it case-insensitively).
    pub name: String,
    /// The item's value.
    pub value: MetadataValue,
}

/// A `kind: Component` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// Where it was defined.
    pub location: Location,
    /// Name and namespace.
    pub meta: ObjectMeta,
    /// `spec.type`, such as `state.redis`.
    pub type_name: String,
    /// `spec.version`, such as `v1`; `v1` when absent.
    pub version: String,
    /// `spec.initTimeout`.
    pub init_timeout: Option<Duration>,
    /// `spec.ignoreErrors`: keep starting the sidecar if this component fails to initialise.
    pub ignore_errors: bool,
    /// `spec.metadata`, in file order.
    pub metadata: Vec<MetadataItem>,
    /// `auth.secretStore`: the store `secretKeyRef`s are resolved from.
    pub auth_secret_store: Option<String>,
    /// App IDs allowed to use the component; empty means every app.
    pub scopes: Vec<String>,
}

impl Component {
    /// The building block, the part of the type before the first `.` (`state` for `state.redis`).
    pub fn building_block(&self) -> &str {
        self.type_name.split('.').next().unwrap_or(&self.type_name)
    }

    /// The inline value of the metadata item named `name`, compared case-insensitively as Dapr does.
    /// Secret references yield `None`.
    pub fn metadata_str(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
            .and_then(|m| m.value.as_plain())
    }

    /// The metadata item named `name` (case-insensitive), whatever its kind of value.
    pub fn metadata_item(&self, name: &str) -> Option<&MetadataItem> {
        self.metadata
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
    }

    /// True when `app_id` may use this component (an empty scope list admits everyone).
    pub fn is_scoped_to(&self, app_id: &str) -> bool {
        scopes_admit(&self.scopes, app_id)
    }
}

/// An empty scope list admits every app; otherwise the app ID must be listed exactly.
pub(crate) fn scopes_admit(scopes: &[String], app_id: &str) -> bool {
    scopes.is_empty() || scopes.iter().any(|s| s == app_id)
}

/// Reads `metadata.name` (required) and `metadata.namespace`.
pub(crate) fn parse_object_meta(ctx: &mut Ctx<'_>, root: &Mapping) -> ObjectMeta {
    let Some(meta) = ctx.mapping(root, "metadata", "") else {
        if get(root, "metadata").is_none() {
            ctx.missing("metadata.name");
        }
        return ObjectMeta {
            name: String::new(),
            namespace: None,
        };
    };
    let name = ctx.required_string(meta, "name", "metadata");
    let namespace = ctx
        .string(meta, "namespace", "metadata")
        .filter(|s| !s.is_empty());
    ObjectMeta { name, namespace }
}

/// Reads the top-level `scopes` list.
pub(crate) fn parse_scopes(ctx: &mut Ctx<'_>, root: &Mapping) -> Vec<String> {
    ctx.string_list(root, "scopes", "")
}

/// Reads `auth.secretStore`.
pub(crate) fn parse_auth_secret_store(ctx: &mut Ctx<'_>, root: &Mapping) -> Option<String> {
    let auth = ctx.mapping(root, "auth", "")?;
    ctx.string(auth, "secretStore", "auth")
        .filter(|s| !s.is_empty())
}

/// Reads a list of `{name, value | secretKeyRef}` items at `map[key]`.
pub(crate) fn parse_name_value_list(
    ctx: &mut Ctx<'_>,
    map: &Mapping,
    key: &str,
    path: &str,
) -> Vec<MetadataItem> {
    let list_path = child(path, key);
    let Some(items) = ctx.sequence(map, key, path) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, entry) in items.iter().enumerate() {
        let entry_path = item(&list_path, i);
        let Some(entry) = ctx.as_mapping(entry, &entry_path) else {
            continue;
        };
        let name = ctx.required_string(entry, "name", &entry_path);
        let value = parse_metadata_value(ctx, entry, &entry_path);
        if let Some(value) = value
            && !name.is_empty()
        {
            out.push(MetadataItem { name, value });
        }
    }
    out
}

fn parse_metadata_value(ctx: &mut Ctx<'_>, entry: &Mapping, path: &str) -> Option<MetadataValue> {
    let value = get(entry, "value");
    let secret = get(entry, "secretKeyRef");
    if get(entry, "envRef").is_some() {
        // Newer Dapr versions read values from environment variables this way; silently treating such
        // an item as empty would be worse than refusing it.
        ctx.error(
            child(path, "envRef"),
            "envRef is not supported; use value or secretKeyRef",
        );
        return None;
    }
    match (value, secret) {
        (Some(_), Some(_)) => {
            ctx.error(path, "has both value and secretKeyRef; use one");
            None
        }
        (None, None) => Some(MetadataValue::Plain(String::new())),
        (Some(v), None) => {
            let text = match untag(v) {
                Value::Sequence(_) | Value::Mapping(_) => to_json(v).to_string(),
                other => scalar_text(other).unwrap_or_default(),
            };
            Some(MetadataValue::Plain(text))
        }
        (None, Some(_)) => {
            let secret_path = child(path, "secretKeyRef");
            let secret = ctx.mapping(entry, "secretKeyRef", path)?;
            let name = ctx.required_string(secret, "name", &secret_path);
            let key = ctx
                .string(secret, "key", &secret_path)
                .filter(|k| !k.is_empty());
            if name.is_empty() {
                return None;
            }
            let key = key.unwrap_or_else(|| name.clone());
            Some(MetadataValue::SecretRef { name, key })
        }
    }
}

/// Reads a `kind: Component` document.
pub(crate) fn parse_component(ctx: &mut Ctx<'_>, root: &Mapping) -> Component {
    let meta = parse_object_meta(ctx, root);
    let scopes = parse_scopes(ctx, root);
    let auth_secret_store = parse_auth_secret_store(ctx, root);
    let mut component = Component {
        location: ctx.location.clone(),
        meta,
        type_name: String::new(),
        version: "v1".to_string(),
        init_timeout: None,
        ignore_errors: false,
        metadata: Vec::new(),
        auth_secret_store,
        scopes,
    };
    let Some(spec) = ctx.mapping(root, "spec", "") else {
        if get(root, "spec").is_none() {
            ctx.missing("spec.type");
        }
        return component;
    };
    component.type_name = ctx.required_string(spec, "type", "spec");
    if let Some(version) = ctx
        .string(spec, "version", "spec")
        .filter(|v| !v.is_empty())
    {
        component.version = version;
    }
    component.init_timeout = ctx.duration(spec, "initTimeout", "spec");
    component.ignore_errors = ctx.bool(spec, "ignoreErrors", "spec").unwrap_or(false);
    component.metadata = parse_name_value_list(ctx, spec, "metadata", "spec");
    component
}
