//! What every building block does the same way when it opens its components: pick the ones
//! this app sees (or the built-in default), read their metadata, run a factory within the
//! component's `initTimeout`, honouring `ignoreErrors`, and keep what opened by name
//! ([`Opened`]).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use trellis_resources::{Component, MetadataValue};

use crate::config::SidecarConfig;

/// Where built-in components say they come from (their `location.file`).
const BUILT_IN: &str = "<built-in>";

/// How long a component may take to initialise when it does not say (`spec.initTimeout`).
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A built-in component offered when no component of its building block exists.
#[derive(Debug, Clone, Copy)]
pub struct Embedded<'a> {
    pub name: &'a str,
    pub type_name: &'a str,
    /// The file in the data directory it keeps its data in.
    pub file: &'a str,
}

impl<'a> Embedded<'a> {
    /// The built-in `name` of `type_name`, keeping its data in `file` — offered only when
    /// this build registered that type in `registry`.
    pub fn if_registered<F>(
        registry: &trellis_resources::registry::Registry<F>,
        name: &'a str,
        type_name: &'a str,
        file: &'a str,
    ) -> Option<Self> {
        registry.get(type_name, "v1").is_ok().then_some(Embedded {
            name,
            type_name,
            file,
        })
    }
}

/// Whether `component` is a built-in default rather than one from the user's files.
pub fn is_built_in(component: &Component) -> bool {
    component.location.file == Path::new(BUILT_IN)
}

/// The components of `block` scoped to this app. The built-in `embedded` one stands in only
/// when no component of the block exists at all: an app scoped out of every component must
/// not silently get a local one instead. Problems come back as messages, all of them.
pub fn select(
    config: &SidecarConfig,
    block: &str,
    embedded: Option<Embedded<'_>>,
) -> (Vec<Component>, Vec<String>) {
    let of_block = || {
        config
            .resources
            .components
            .iter()
            .filter(move |c| c.building_block() == block)
    };
    let mut components: Vec<Component> = of_block()
        .filter(|c| c.is_scoped_to(&config.app_id))
        .cloned()
        .collect();
    let mut errors = Vec::new();
    if let Some(embedded) = embedded
        && of_block().next().is_none()
    {
        match built_in(config, embedded) {
            Ok(c) => components.push(c),
            Err(e) => errors.push(e),
        }
    }
    (components, errors)
}

/// The one component of `block` this app has (a block an app has at most one of, such as
/// its workflow backend or job store), as [`select`] picks it; `what` names the block's
/// components (plural) in the error when several are scoped to the app.
pub fn select_one(
    config: &SidecarConfig,
    block: &str,
    what: &str,
    embedded: Option<Embedded<'_>>,
) -> Result<Option<Component>, Vec<String>> {
    let (mut components, mut errors) = select(config, block, embedded);
    if components.len() > 1 {
        errors.push(format!(
            "{} {what} are scoped to app {:?}; an app has one (remove or scope the others): {}",
            components.len(),
            config.app_id,
            components
                .iter()
                .map(|c| c.meta.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if errors.is_empty() {
        Ok(components.pop())
    } else {
        Err(errors)
    }
}

/// The built-in component, parsed from YAML so that it goes through the same validation as
/// the user's.
fn built_in(config: &SidecarConfig, embedded: Embedded<'_>) -> Result<Component, String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}; choose another with --data-dir",
            config.data_dir.display()
        )
    })?;
    let file = config.data_dir.join(embedded.file);
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {}\nspec:\n  type: {}\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n",
        embedded.name,
        embedded.type_name,
        serde_json::to_string(&file.display().to_string()).unwrap_or_default()
    );
    let mut parsed = trellis_resources::parse_str(Path::new(BUILT_IN), &yaml)
        .map_err(|e| format!("built-in {}: {e}", embedded.name))?;
    parsed
        .components
        .pop()
        .ok_or_else(|| format!("built-in {}: no component", embedded.name))
}

/// The component's metadata as plain name/value pairs.
pub fn plain_metadata(component: &Component) -> Result<BTreeMap<String, String>, String> {
    let mut metadata = BTreeMap::new();
    for item in &component.metadata {
        match &item.value {
            MetadataValue::Plain(v) => {
                metadata.insert(item.name.clone(), v.clone());
            }
            MetadataValue::SecretRef { .. } => {
                return Err(format!(
                    "spec.metadata {}: secretKeyRef is not supported yet; put the value inline",
                    item.name
                ));
            }
        }
    }
    Ok(metadata)
}

/// Runs a component's factory within its `initTimeout`. `Ok(None)` is a component that
/// failed but asked to be skipped (`ignoreErrors`).
pub async fn init<T, E: Display>(
    component: &Component,
    what: &str,
    factory: impl Future<Output = Result<T, E>>,
) -> Result<Option<T>, String> {
    let name = &component.meta.name;
    let timeout = component.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT);
    let result = match tokio::time::timeout(timeout, factory).await {
        Ok(Ok(opened)) => return Ok(Some(opened)),
        Ok(Err(e)) => format!("initializing {what} {name:?}: {e}"),
        Err(_) => format!("initializing {what} {name:?} timed out after {timeout:?}"),
    };
    if component.ignore_errors {
        tracing::warn!(component = %name, error = result, "skipping a component that failed to start (ignoreErrors)");
        return Ok(None);
    }
    Err(result)
}

/// The opened components of one building block, by name.
#[derive(Debug)]
pub struct Opened<T> {
    by_name: BTreeMap<String, Arc<T>>,
}

impl<T> Default for Opened<T> {
    fn default() -> Self {
        Self {
            by_name: BTreeMap::new(),
        }
    }
}

impl<T> From<BTreeMap<String, Arc<T>>> for Opened<T> {
    fn from(by_name: BTreeMap<String, Arc<T>>) -> Self {
        Self { by_name }
    }
}

impl<T> Opened<T> {
    /// Opens each of `components` with `open` (given the component, so that its future
    /// owns what it needs), keeping what opened by component name; every failure joins
    /// `errors` with the component's location, and all of them come back at once.
    pub async fn open_each<Fut>(
        components: Vec<Component>,
        mut errors: Vec<String>,
        what: &'static str,
        mut open: impl FnMut(Component) -> Fut,
    ) -> Result<Self, Vec<String>>
    where
        Fut: Future<Output = Result<Option<T>, String>>,
    {
        let mut by_name = BTreeMap::new();
        for component in components {
            let name = component.meta.name.clone();
            let location = component.location.to_string();
            let type_name = component.type_name.clone();
            match open(component).await {
                Ok(Some(opened)) => {
                    tracing::debug!(name, type_name, what, "component ready");
                    by_name.insert(name, Arc::new(opened));
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{location}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(Self { by_name })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<T>> {
        self.by_name.get(name)
    }

    /// Replaces each component with `f` of it, while nothing else holds them yet (right
    /// after opening: a component already shared is left as it is).
    pub fn map_each(self, mut f: impl FnMut(T) -> T) -> Self {
        let by_name = self
            .by_name
            .into_iter()
            .map(|(name, c)| match Arc::try_unwrap(c) {
                Ok(c) => (name, Arc::new(f(c))),
                Err(shared) => (name, shared),
            })
            .collect();
        Self { by_name }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_name.values()
    }
}
