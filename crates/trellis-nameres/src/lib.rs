//! Name resolution: turns an app id (optionally namespaced) into the addresses of the sidecars
//! that serve it.
//!
//! A [`NameResolver`] is chosen by the Configuration resource's `spec.nameResolution`
//! (`component` + free-form `configuration`), built through [`build`]. Three resolvers ship:
//!
//! * `local` (default): a registry directory on this machine where every running sidecar
//!   drops an entry file; entries of dead processes are ignored. Zero setup, one machine.
//! * `static`: a fixed map from app id to addresses, for small fixed deployments.
//! * `dns`: a host name template (`{appid}`, `{namespace}`) resolved through the system resolver.
//!
//! Nothing here knows about HTTP or the Dapr wire format; the runtime only sees addresses.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "static")]
pub mod static_map;

mod balancer;
pub use balancer::{Balancer, Candidates};

/// A boxed future, so that resolvers can be chosen at run time (`dyn NameResolver`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The namespace used when neither the caller nor the target names one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Which app to find: an app id within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppRef {
    pub app_id: String,
    pub namespace: String,
}

impl AppRef {
    pub fn new(app_id: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            namespace: namespace.into(),
        }
    }

    /// Parses Dapr's `id` or `id.namespace` form; a bare id lives in `default_namespace`.
    ///
    /// The split is on the last dot, as Dapr does, so app ids themselves cannot contain dots
    /// when a namespace is given.
    pub fn parse(target: &str, default_namespace: &str) -> Self {
        match target.rsplit_once('.') {
            Some((id, ns)) if !id.is_empty() && !ns.is_empty() => Self::new(id, ns),
            _ => Self::new(target, default_namespace),
        }
    }
}

impl fmt::Display for AppRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.app_id, self.namespace)
    }
}

/// What a sidecar publishes about itself so that others can reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub app: AppRef,
    /// The sidecar-to-sidecar (internal) address peers connect to.
    pub internal_address: SocketAddr,
    /// The sidecar's public Dapr HTTP API address, for tools such as `trellis list`.
    pub http_address: Option<SocketAddr>,
    pub app_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown name resolution component {name:?}; known: {known}")]
    UnknownComponent { name: String, known: String },
    #[error("invalid name resolution configuration: {0}")]
    InvalidConfiguration(String),
    #[error("cannot register in the local registry at {path}: {source}")]
    Register {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lookup of {host} failed: {source}")]
    Lookup {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the local registry at {path} failed: {source}")]
    Registry {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Finds the sidecars serving an app. Implementations may return addresses in any order;
/// the [`Balancer`] spreads load and remembers failures.
pub trait NameResolver: Send + Sync + fmt::Debug {
    /// Every known address for `app`; empty when the app is unknown.
    fn resolve<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>>;

    /// The component name this resolver was built from (`local`, `static`, `dns`).
    fn kind(&self) -> &'static str;

    /// Stops advertising this sidecar (at the start of shutdown), for resolvers that publish.
    fn withdraw(&self) {}
}

/// The resolver names [`build`] accepts, for error messages and docs.
pub fn known_components() -> Vec<&'static str> {
    let mut known = Vec::new();
    if cfg!(feature = "local") {
        known.extend(["local", "sqlite", "mdns"]);
    }
    if cfg!(feature = "static") {
        known.push("static");
    }
    if cfg!(feature = "dns") {
        known.push("dns");
    }
    known
}

/// Options shared by every resolver that keeps local state.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Where the local registry lives (`<data-dir>/registry`).
    pub registry_dir: std::path::PathBuf,
    /// This sidecar, published by resolvers that publish (the local one).
    pub me: Option<Registration>,
}

/// Builds the resolver named by `component` (empty = `local`) with its `configuration` JSON.
///
/// This is the single place where resolver names map to implementations.
pub fn build(
    component: &str,
    configuration: &serde_json::Value,
    ctx: &BuildContext,
) -> Result<Box<dyn NameResolver>, ResolveError> {
    match component {
        // Dapr's self-hosted defaults (`mdns`) and its single-machine `sqlite` resolver both
        // mean "find apps on this machine", which the local registry does without multicast.
        #[cfg(feature = "local")]
        "" | "local" | "sqlite" | "mdns" => Ok(Box::new(local::LocalRegistry::open(
            &ctx.registry_dir,
            ctx.me.clone(),
        )?)),
        #[cfg(feature = "static")]
        "static" => Ok(Box::new(static_map::StaticResolver::from_config(
            configuration,
        )?)),
        #[cfg(feature = "dns")]
        "dns" => Ok(Box::new(dns::DnsResolver::from_config(configuration)?)),
        other => {
            let _ = configuration;
            Err(ResolveError::UnknownComponent {
                name: other.to_string(),
                known: known_components().join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaced_ids() {
        assert_eq!(
            AppRef::parse("orders", "default"),
            AppRef::new("orders", "default")
        );
        assert_eq!(
            AppRef::parse("orders.prod", "default"),
            AppRef::new("orders", "prod")
        );
        assert_eq!(
            AppRef::parse("orders.", "dev"),
            AppRef::new("orders.", "dev")
        );
        assert_eq!(AppRef::parse(".x", "dev"), AppRef::new(".x", "dev"));
    }

    #[test]
    fn unknown_component_names_the_known_ones() {
        let ctx = BuildContext {
            registry_dir: std::env::temp_dir(),
            me: None,
        };
        let err = build("consul", &serde_json::Value::Null, &ctx).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("consul") && text.contains("local") && text.contains("dns"),
            "{text}"
        );
    }
}
