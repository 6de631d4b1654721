//! Reading resource files: splitting them into YAML documents, dispatching each document on its
//! `apiVersion`/`kind`, and the checks that span documents (duplicate names, resiliency references).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::{Mapping, Value};

use crate::component::{Component, parse_component};
use crate::configuration::{Configuration, parse_configuration};
use crate::error::{LoadError, LoadErrors, Location};
use crate::http_endpoint::{HttpEndpoint, parse_http_endpoint};
use crate::resiliency::{Resiliency, check_references, parse_resiliency};
use crate::subscription::{Subscription, parse_subscription};
use crate::yaml::{Ctx, describe, get, scalar_text, untag};

/// The `kind`s this crate understands, in the order error messages list them.
pub const KNOWN_KINDS: &[&str] = &[
    "Component",
    "Configuration",
    "HTTPEndpoint",
    "Resiliency",
    "Subscription",
];

/// Every resource loaded from a set of files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    /// `kind: Component`, in load order.
    pub components: Vec<Component>,
    /// `kind: Configuration`, in load order.
    pub configurations: Vec<Configuration>,
    /// `kind: Resiliency`, in load order.
    pub resiliencies: Vec<Resiliency>,
    /// `kind: Subscription`, in load order.
    pub subscriptions: Vec<Subscription>,
    /// `kind: HTTPEndpoint`, in load order.
    pub http_endpoints: Vec<HttpEndpoint>,
    /// Documents that were not Dapr resources and were ignored, for the runtime to log.
    pub skipped: Vec<Skipped>,
}

impl Resources {
    /// Keeps only what applies to `app_id`: drops components, resiliencies, subscriptions and HTTP
    /// endpoints whose non-empty `scopes` do not list it. Configurations are not scoped.
    pub fn for_app(mut self, app_id: &str) -> Resources {
        self.components.retain(|c| c.is_scoped_to(app_id));
        self.resiliencies.retain(|r| r.is_scoped_to(app_id));
        self.subscriptions.retain(|s| s.is_scoped_to(app_id));
        self.http_endpoints.retain(|h| h.is_scoped_to(app_id));
        self
    }

    /// Keeps only what a sidecar whose `NAMESPACE` is set to `namespace` loads: components,
    /// resiliencies, subscriptions and HTTP endpoints without `metadata.namespace` and those in `namespace`. Dapr self-hosted filters like
    /// this only when `NAMESPACE` is set; unset, the namespaces in the files are ignored.
    pub fn in_namespace(mut self, namespace: &str) -> Resources {
        self.components.retain(|c| c.meta.in_namespace(namespace));
        self.resiliencies.retain(|r| r.meta.in_namespace(namespace));
        self.subscriptions
            .retain(|s| s.meta.in_namespace(namespace));
        self.http_endpoints
            .retain(|h| h.meta.in_namespace(namespace));
        self
    }

    /// Appends everything in `other` (no validation; load everything in one call to get the
    /// cross-file checks).
    pub fn merge(&mut self, other: Resources) {
        self.components.extend(other.components);
        self.configurations.extend(other.configurations);
        self.resiliencies.extend(other.resiliencies);
        self.subscriptions.extend(other.subscriptions);
        self.http_endpoints.extend(other.http_endpoints);
        self.skipped.extend(other.skipped);
    }

    /// Finds a component by name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.meta.name == name)
    }
}

/// A document that was ignored because it is not a Dapr resource (a Kubernetes Deployment, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where the document is.
    pub location: Location,
    /// Its `apiVersion`, if it had one.
    pub api_version: Option<String>,
    /// Its `kind`, if it had one.
    pub kind: Option<String>,
    /// Why it was skipped.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: skipped: {}", self.location, self.reason)
    }
}

/// Parses one YAML text as if read from `file`: for tests, and for callers that already hold the text.
/// Runs the same cross-document checks as [`load_paths`], within this text.
pub fn parse_str(file: &Path, text: &str) -> Result<Resources, LoadErrors> {
    let mut out = Resources::default();
    let mut errors = Vec::new();
    parse_text(file, text, &mut out, &mut errors);
    finish(out, errors)
}

/// Loads every `*.yaml` / `*.yml` file in each directory (not recursive, sorted by file name); a path
/// that is a file is loaded whatever its extension. Each file may hold several `---`-separated
/// documents; empty documents are ignored and documents that are not Dapr resources are listed in
/// [`Resources::skipped`]. Every problem in every file is reported at once.
pub fn load_paths(paths: &[PathBuf]) -> Result<Resources, LoadErrors> {
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        for file in files_in(path, &mut errors) {
            // The same file named twice (directly and through its directory) would only produce
            // confusing duplicate-name errors.
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    let mut out = Resources::default();
    for file in &files {
        if let Some(text) = read_text(file, &mut errors) {
            parse_text(file, &text, &mut out, &mut errors);
        }
    }
    finish(out, errors)
}

/// Loads the single Configuration in `path` (the `--config` flag). Other Dapr kinds in the file are
/// validated but otherwise ignored.
pub fn load_configuration_file(path: &Path) -> Result<Configuration, LoadErrors> {
    let mut errors = Vec::new();
    let Some(text) = read_text(path, &mut errors) else {
        return Err(LoadErrors(errors));
    };
    let mut out = Resources::default();
    parse_text(path, &text, &mut out, &mut errors);
    let mut resources = finish(out, errors)?;
    match resources.configurations.len() {
        0 => Err(LoadErrors(vec![LoadError::io(format!(
            "no Configuration resource found in {}",
            path.display()
        ))])),
        1 => Ok(resources.configurations.remove(0)),
        _ => {
            let first = resources.configurations[0].location.clone();
            Err(LoadErrors(
                resources.configurations[1..]
                    .iter()
                    .map(|c| {
                        LoadError::in_document(
                            &c.location,
                            format!("only one Configuration is allowed in a configuration file; the first is in {first}"),
                        )
                    })
                    .collect(),
            ))
        }
    }
}

fn files_in(path: &Path, errors: &mut Vec<LoadError>) -> Vec<PathBuf> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(LoadError::io(format!(
                "cannot read resources path {}: {e}",
                path.display()
            )));
            return Vec::new();
        }
    };
    if !meta.is_dir() {
        return vec![path.to_path_buf()];
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(LoadError::io(format!(
                "cannot list resources directory {}: {e}",
                path.display()
            )));
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(LoadError::io(format!(
                    "cannot list resources directory {}: {e}",
                    path.display()
                )));
                continue;
            }
        };
        let file = entry.path();
        let is_yaml = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        // `metadata` follows symlinks, so a linked file counts and a linked directory does not.
        if is_yaml && std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            files.push(file);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

fn read_text(file: &Path, errors: &mut Vec<LoadError>) -> Option<String> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            errors.push(LoadError::io(format!(
                "cannot read {}: {e}",
                file.display()
            )));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) => {
            errors.push(LoadError::io(format!(
                "cannot read {}: not valid utf-8 ({e})",
                file.display()
            )));
            None
        }
    }
}

/// Renders a YAML error, making sure the line is in the message (some libyaml errors leave it out).
fn yaml_message(e: &serde_norway::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(loc) if !text.contains("line") => {
            format!(
                "invalid yaml at line {} column {}: {text}",
                loc.line(),
                loc.column()
            )
        }
        _ => format!("invalid yaml: {text}"),
    }
}

fn parse_text(file: &Path, text: &str, out: &mut Resources, errors: &mut Vec<LoadError>) {
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let location = Location::new(file, index);
        let mut value = match Value::deserialize(document) {
            Ok(v) => v,
            Err(e) => {
                errors.push(LoadError::in_document(&location, yaml_message(&e)));
                // After a syntax error libyaml's state is unusable: continuing yields the same error
                // forever or, worse, malformed events that make serde_norway panic.
                break;
            }
        };
        if let Err(e) = value.apply_merge() {
            errors.push(LoadError::in_document(&location, yaml_message(&e)));
            continue;
        }
        parse_document(location, &value, out, errors);
    }
}

fn parse_document(
    location: Location,
    value: &Value,
    out: &mut Resources,
    errors: &mut Vec<LoadError>,
) {
    let root: &Mapping = match untag(value) {
        Value::Null => return,
        Value::Mapping(m) => m,
        other => {
            out.skipped.push(Skipped {
                location,
                api_version: None,
                kind: None,
                reason: format!(
                    "document is {} rather than a mapping, so it is not a Dapr resource",
                    describe(other)
                ),
            });
            return;
        }
    };
    let api_version = get(root, "apiVersion").and_then(scalar_text);
    let kind = get(root, "kind").and_then(scalar_text);
    let known_kind: Option<&'static str> = kind
        .as_deref()
        .and_then(|k| KNOWN_KINDS.iter().copied().find(|known| *known == k));

    let Some(api) = api_version.as_deref() else {
        if let Some(k) = known_kind {
            // A Dapr kind without apiVersion is almost certainly a Dapr resource with a missing line.
            errors.push(LoadError::at(
                &location,
                "apiVersion",
                format!(
                    "missing required field (expected {} for kind {k})",
                    expected_api(k)
                ),
            ));
        } else {
            out.skipped.push(Skipped {
                location,
                api_version: None,
                kind,
                reason: "no apiVersion, so it is not a Dapr resource".to_string(),
            });
        }
        return;
    };
    // A bare "dapr.io" is a Dapr resource with a typo, not a foreign one; let the version check report it.
    if !(api == "dapr.io" || api.starts_with("dapr.io/")) {
        let reason = format!("apiVersion {api} is not dapr.io");
        out.skipped.push(Skipped {
            location,
            api_version: api_version.clone(),
            kind,
            reason,
        });
        return;
    }
    let Some(kind) = kind else {
        errors.push(LoadError::at(
            &location,
            "kind",
            format!(
                "missing required field (expected one of: {})",
                KNOWN_KINDS.join(", ")
            ),
        ));
        return;
    };
    if known_kind.is_none() {
        errors.push(LoadError::at(
            &location,
            "kind",
            format!(
                "unknown kind {kind:?}; known kinds: {}",
                KNOWN_KINDS.join(", ")
            ),
        ));
        return;
    }
    let supported = match kind.as_str() {
        "Subscription" => api == "dapr.io/v1alpha1" || api == "dapr.io/v2alpha1",
        _ => api == "dapr.io/v1alpha1",
    };
    if !supported {
        errors.push(LoadError::at(
            &location,
            "apiVersion",
            format!(
                "unsupported apiVersion {api:?} for kind {kind}; expected {}",
                expected_api(&kind)
            ),
        ));
        // Keep going: the rest of the document may have problems worth reporting in the same run.
    }

    let mut ctx = Ctx::new(location, errors);
    match kind.as_str() {
        "Component" => out.components.push(parse_component(&mut ctx, root)),
        "Configuration" => out.configurations.push(parse_configuration(&mut ctx, root)),
        "Resiliency" => out.resiliencies.push(parse_resiliency(&mut ctx, root)),
        "Subscription" => out
            .subscriptions
            .push(parse_subscription(&mut ctx, root, api)),
        _ => out.http_endpoints.push(parse_http_endpoint(&mut ctx, root)),
    }
}

fn expected_api(kind: &str) -> &'static str {
    if kind == "Subscription" {
        "dapr.io/v2alpha1 or dapr.io/v1alpha1"
    } else {
        "dapr.io/v1alpha1"
    }
}

/// Two resources can clash only if some app could see both.
fn scopes_overlap(a: &[String], b: &[String]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|s| b.contains(s))
}

/// Reports the second and later of several same-named resources that some app would see together.
fn check_duplicates<'a>(
    what: &str,
    items: impl Iterator<Item = (&'a Location, &'a crate::component::ObjectMeta, &'a [String])>,
    errors: &mut Vec<LoadError>,
) {
    let items: Vec<_> = items.filter(|(_, meta, _)| !meta.name.is_empty()).collect();
    for (i, (loc, meta, scopes)) in items.iter().enumerate() {
        let earlier = items[..i].iter().find(|(_, m, s)| {
            m.name == meta.name && m.namespace == meta.namespace && scopes_overlap(s, scopes)
        });
        if let Some((first, _, _)) = earlier {
            errors.push(LoadError::at(
                loc,
                "metadata.name",
                format!(
                    "duplicate {what} name {:?}: also defined in {first}",
                    meta.name
                ),
            ));
        }
    }
}

fn finish(out: Resources, mut errors: Vec<LoadError>) -> Result<Resources, LoadErrors> {
    check_duplicates(
        "component",
        out.components
            .iter()
            .map(|c| (&c.location, &c.meta, c.scopes.as_slice())),
        &mut errors,
    );
    check_duplicates(
        "http endpoint",
        out.http_endpoints
            .iter()
            .map(|h| (&h.location, &h.meta, h.scopes.as_slice())),
        &mut errors,
    );
    check_references(&out.resiliencies, &mut errors);
    if errors.is_empty() {
        return Ok(out);
    }
    // Report in file order; the sort is stable, so errors within a document keep their order.
    errors.sort_by(|a, b| a.location.cmp(&b.location));
    let mut seen = BTreeSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
    Err(LoadErrors(errors))
}
