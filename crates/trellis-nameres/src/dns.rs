//! Resolves app ids through the system's DNS resolver, for deployments where each app has a
//! DNS name (a Kubernetes headless service, Consul DNS, an `/etc/hosts` entry...):
//!
//! ```yaml
//! nameResolution:
//!   component: dns
//!   configuration:
//!     template: "{appid}.{namespace}.svc.cluster.local"   # may end in :port
//!     port: 50002                                          # used when the template has none
//! ```

use std::net::SocketAddr;

use crate::{AppRef, BoxFuture, NameResolver, ResolveError};

/// Dapr's conventional internal gRPC port when none is configured.
pub const DEFAULT_PORT: u16 = 50002;

#[derive(Debug)]
pub struct DnsResolver {
    template: String,
    port: u16,
}

impl DnsResolver {
    pub fn from_config(configuration: &serde_json::Value) -> Result<Self, ResolveError> {
        let invalid = |msg: &str| ResolveError::InvalidConfiguration(format!("dns: {msg}"));
        let template = configuration
            .get("template")
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                invalid("`configuration.template` is required, e.g. \"{appid}.svc:50002\"")
            })?
            .to_string();
        if !template.contains("{appid}") && !template.contains("{appId}") {
            // A template without the id would send every app to the same host; almost
            // certainly a typo, but allowed for single-host setups.
            tracing::warn!(
                template,
                "dns name resolution template does not contain {{appid}}"
            );
        }
        let port = match configuration.get("port") {
            None => DEFAULT_PORT,
            Some(p) => p
                .as_u64()
                .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| invalid("`configuration.port` must be a port number"))?,
        };
        Ok(Self { template, port })
    }

    /// The template filled in. An `AppRef` holds only letters, digits, `-` and `_`, so a
    /// substituted id can never add a port, a path or another host to the template.
    fn host_for(&self, app: &AppRef) -> String {
        let host = self
            .template
            .replace("{appid}", &app.app_id)
            .replace("{appId}", &app.app_id)
            .replace("{namespace}", &app.namespace);
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        if has_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl NameResolver for DnsResolver {
    fn resolve<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        Box::pin(async move {
            let host = self.host_for(app);
            let looked_up = tokio::net::lookup_host(host.clone()).await;
            match looked_up {
                Ok(addrs) => Ok(addrs.collect()),
                // "No such host" is an unknown app, not a failure of the resolver.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(source) => {
                    tracing::debug!(host, error = %source, "dns lookup failed");
                    Err(ResolveError::Lookup { host, source })
                }
            }
        })
    }

    fn kind(&self) -> &'static str {
        "dns"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_the_template() {
        let r = DnsResolver::from_config(&json!({"template": "{appid}.{namespace}.svc"})).unwrap();
        assert_eq!(
            r.host_for(&AppRef::new("orders", "prod").unwrap()),
            "orders.prod.svc:50002"
        );
        let r =
            DnsResolver::from_config(&json!({"template": "{appid}.svc:7000", "port": 1})).unwrap();
        assert_eq!(r.host_for(&AppRef::new("a", "b").unwrap()), "a.svc:7000");
        let r =
            DnsResolver::from_config(&json!({"template": "localhost", "port": "4000"})).unwrap();
        assert_eq!(
            r.host_for(&AppRef::new("a", "b").unwrap()),
            "localhost:4000"
        );
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(DnsResolver::from_config(&json!({})).is_err());
        assert!(DnsResolver::from_config(&json!({"template": "x", "port": 70000})).is_err());
    }

    #[tokio::test]
    async fn resolves_localhost() {
        let r = DnsResolver::from_config(&json!({"template": "localhost", "port": 4000})).unwrap();
        let addrs = r
            .resolve(&AppRef::new("a", "default").unwrap())
            .await
            .unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.ip().is_loopback() && a.port() == 4000),
            "{addrs:?}"
        );
    }
}
