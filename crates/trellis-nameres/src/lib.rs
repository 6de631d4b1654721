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

/// Which app to find: an app id within a namespace, both valid by [`validate_app_id`] and
/// [`validate_namespace`].
///
/// The only constructors, [`AppRef::new`] and [`AppRef::parse`], validate, and the struct is
/// `#[non_exhaustive]` so that other crates cannot build one from a struct literal. The
/// fields stay public for reading; code that turns them into something sensitive (the local
/// registry's paths) checks them again rather than trusting that nobody assigned to them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct AppRef {
    pub app_id: String,
    pub namespace: String,
}

/// The longest app id or namespace, in characters.
///
/// Dapr itself has no limit in self-hosted mode; on Kubernetes it requires `<app-id>-dapr`
/// to be a DNS label (63 characters), so 58 for the id. Trellis takes the DNS label limit
/// itself: every id Dapr accepts on Kubernetes is accepted, and every id fits a host name
/// label for the `dns` resolver's template.
pub const MAX_ID_LEN: usize = 63;

/// The rule every app id and namespace follows, quoted in every [`InvalidAppId`].
const RULE: &str = "app ids and namespaces are 1 to 63 letters (a-z, A-Z), digits, '-' and '_', \
                    and one '.' separates the app id from the namespace";

/// An app id or namespace that breaks the rule. Carries only its message (which names the
/// offending value and the rule), so that each API maps it to its own error shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAppId(String);

impl InvalidAppId {
    fn new(subject: &str, value: &str, problem: &str) -> Self {
        Self(format!(
            "invalid {subject} {}: {problem}; {RULE}",
            quoted_prefix(value)
        ))
    }

    /// The message, as `to_string` gives it.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// `value` quoted (control characters escaped), cut short so that an error never echoes a
/// huge input back.
fn quoted_prefix(value: &str) -> String {
    const SHOWN: usize = MAX_ID_LEN + 1;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// What is wrong with one part (an app id or a namespace), if anything. This is the one
/// definition of a valid id; everything else calls it.
///
/// The rule is Dapr's: ids are DNS-label-like names (Dapr checks `<id>-dapr` against
/// RFC 1123 on Kubernetes, refuses dots in self-hosted mode, and its workflow engine allows
/// only letters, digits, `-` and `_`), and a dot only separates the id from the namespace.
/// Uppercase is allowed, as Dapr allows it outside Kubernetes. These characters can never
/// form a path separator, `.`/`..`, an absolute path, a URL or a header break, which is
/// what makes ids safe to use as file names, host name labels and header values.
fn problem(part: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        return Some(format!("the {part} is empty"));
    }
    if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
        return Some(format!("{c:?} is not allowed"));
    }
    if value.len() > MAX_ID_LEN {
        return Some(format!(
            "the {part} is {} characters long, more than {MAX_ID_LEN}",
            value.len()
        ));
    }
    None
}

/// Checks an app id (without namespace), as `--app-id`, run files and the resolvers need.
pub fn validate_app_id(app_id: &str) -> Result<(), InvalidAppId> {
    match problem("app id", app_id) {
        None => Ok(()),
        Some(p) => Err(InvalidAppId::new("app id", app_id, &p)),
    }
}

/// Checks a namespace (`NAMESPACE`, or the part after the dot of an invocation target).
pub fn validate_namespace(namespace: &str) -> Result<(), InvalidAppId> {
    match problem("namespace", namespace) {
        None => Ok(()),
        Some(p) => Err(InvalidAppId::new("namespace", namespace, &p)),
    }
}

impl AppRef {
    /// An app id within a namespace, both checked.
    pub fn new(
        app_id: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Result<Self, InvalidAppId> {
        let (app_id, namespace) = (app_id.into(), namespace.into());
        validate_app_id(&app_id)?;
        validate_namespace(&namespace)?;
        Ok(Self { app_id, namespace })
    }

    /// Parses Dapr's `id` or `id.namespace` form; a bare id lives in `default_namespace`.
    ///
    /// The split is on the last dot, and since neither part may contain a dot, a target
    /// with more than one is refused, as Dapr refuses it. Every error names the whole
    /// target, so that a caller sees what it sent.
    pub fn parse(target: &str, default_namespace: &str) -> Result<Self, InvalidAppId> {
        // Characters first, over the whole target, so that `../../x` is reported for its
        // '/' rather than for the dots its split happens to leave in the id.
        if let Some(c) = target.chars().find(|c| !is_id_char(*c) && *c != '.') {
            return Err(InvalidAppId::new(
                "app id",
                target,
                &format!("{c:?} is not allowed"),
            ));
        }
        let (app_id, namespace) = match target.rsplit_once('.') {
            None => (target, default_namespace),
            Some((id, _)) if id.contains('.') => {
                return Err(InvalidAppId::new(
                    "app id",
                    target,
                    "it has more than one '.'",
                ));
            }
            Some((id, ns)) => (id, ns),
        };
        for (part, value) in [("app id", app_id), ("namespace", namespace)] {
            if let Some(p) = problem(part, value) {
                return Err(InvalidAppId::new("app id", target, &p));
            }
        }
        Ok(Self {
            app_id: app_id.to_string(),
            namespace: namespace.to_string(),
        })
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
    /// The sidecar's public Dapr gRPC API address, for the same tools.
    pub grpc_address: Option<SocketAddr>,
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
    #[error(transparent)]
    InvalidApp(#[from] InvalidAppId),
    /// A registry path that would leave the registry directory; a bug if it ever happens,
    /// since paths are built from valid ids only, but checked in every build.
    #[error("refusing registry path {path}: it is not inside the registry directory {dir}")]
    OutsideRegistry { path: String, dir: String },
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

    fn app(id: &str, ns: &str) -> AppRef {
        AppRef::new(id, ns).unwrap()
    }

    #[test]
    fn parses_namespaced_ids() {
        assert_eq!(
            AppRef::parse("orders", "default"),
            Ok(app("orders", "default"))
        );
        assert_eq!(
            AppRef::parse("orders.prod", "default"),
            Ok(app("orders", "prod"))
        );
        assert_eq!(
            AppRef::parse("Or_d-3.ns-1_X", "d"),
            Ok(app("Or_d-3", "ns-1_X"))
        );
        let longest = "a".repeat(MAX_ID_LEN);
        assert!(AppRef::parse(&format!("{longest}.{longest}"), "d").is_ok());
    }

    /// Every target from the issue: each is refused, and the message names the rule.
    #[test]
    fn refuses_targets_that_are_not_ids() {
        let long = "a".repeat(MAX_ID_LEN + 1);
        let long_ns = format!("a.{long}");
        let cases: &[(&str, &str)] = &[
            ("", "the app id is empty"),
            (".x", "the app id is empty"),
            ("x.", "the namespace is empty"),
            (".", "the app id is empty"),
            ("..", "more than one '.'"),
            ("../../x", "'/' is not allowed"),
            ("..\\x", "'\\\\' is not allowed"),
            ("a/b", "'/' is not allowed"),
            ("/etc/passwd", "'/' is not allowed"),
            ("a\0b", "'\\0' is not allowed"),
            ("http://127.0.0.1:5432", "':' is not allowed"),
            ("a.b.c", "more than one '.'"),
            ("a b", "' ' is not allowed"),
            ("caf\u{e9}", "'\u{e9}' is not allowed"),
            ("a\r\nx: y", "'\\r' is not allowed"),
            (&long, "64 characters long, more than 63"),
            (&long_ns, "the namespace is 64 characters long"),
        ];
        for (target, why) in cases {
            let err = AppRef::parse(target, "default").unwrap_err().to_string();
            assert!(err.contains(why), "{target:?}: {err}");
            assert!(err.contains(RULE), "{target:?}: {err}");
            assert!(err.starts_with("invalid app id"), "{err}");
        }
        // A bad default namespace is refused as well: parse never builds an invalid AppRef.
        assert!(AppRef::parse("orders", "../x").is_err());
    }

    #[test]
    fn constructors_and_validators_share_the_rule() {
        assert!(AppRef::new("orders", "prod").is_ok());
        for (id, ns) in [
            ("", "d"),
            ("a", ""),
            ("a.b", "d"),
            ("a", "b.c"),
            ("..", "d"),
            ("a", "/"),
        ] {
            assert!(AppRef::new(id, ns).is_err(), "{id:?} {ns:?}");
        }
        assert!(validate_app_id("orders-v2_x").is_ok());
        let err = validate_app_id("orders.prod").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid app id \"orders.prod\": '.' is not allowed"),
            "{err}"
        );
        let err = validate_namespace("a/b").unwrap_err();
        assert!(
            err.message().starts_with("invalid namespace \"a/b\""),
            "{err}"
        );
        assert!(validate_namespace(&"n".repeat(MAX_ID_LEN)).is_ok());
        assert!(validate_namespace(&"n".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn errors_do_not_echo_huge_inputs() {
        let huge = "/".repeat(100_000);
        let err = AppRef::parse(&huge, "default").unwrap_err().to_string();
        assert!(err.len() < 400, "{} bytes", err.len());
        assert!(err.ends_with(RULE));
        assert!(err.starts_with("invalid app id \"///"), "{err}");
        assert!(!err.ends_with('.'));
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
