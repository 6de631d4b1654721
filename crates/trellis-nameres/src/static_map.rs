//! A fixed map from app ids to addresses, given in the Configuration resource:
//!
//! ```yaml
//! nameResolution:
//!   component: static
//!   configuration:
//!     apps:
//!       orders: ["10.0.0.5:50002", "orders-2.internal:50002"]
//!       billing.prod: ["10.0.1.7:50002"]   # id.namespace
//! ```
//!
//! Host names are looked up on every (uncached) resolution so that DNS changes are followed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::{AppRef, BoxFuture, DEFAULT_NAMESPACE, NameResolver, ResolveError};

#[derive(Debug)]
pub struct StaticResolver {
    apps: BTreeMap<AppRef, Vec<String>>,
}

impl StaticResolver {
    pub fn from_config(configuration: &serde_json::Value) -> Result<Self, ResolveError> {
        let invalid = |msg: String| ResolveError::InvalidConfiguration(msg);
        let apps = configuration
            .get("apps")
            .and_then(|apps| apps.as_object())
            .ok_or_else(|| {
                invalid("static: `configuration.apps` must be a map of app id to addresses".into())
            })?;
        let mut map = BTreeMap::new();
        for (id, addrs) in apps {
            let list = match addrs {
                serde_json::Value::String(one) => vec![one.clone()],
                serde_json::Value::Array(many) => many
                    .iter()
                    .map(|a| {
                        a.as_str().map(str::to_string).ok_or_else(|| {
                            invalid(format!("static: apps.{id}: addresses must be strings"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => {
                    return Err(invalid(format!(
                        "static: apps.{id}: expected an address or a list of addresses"
                    )));
                }
            };
            for a in &list {
                if a.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(invalid(format!(
                        "static: apps.{id}: {a:?} is not host:port"
                    )));
                }
            }
            // Keys are app ids like any other: checked by the one rule, so that a typo such
            // as `orders/prod` fails here instead of never matching.
            let app = AppRef::parse(id, DEFAULT_NAMESPACE)
                .map_err(|e| invalid(format!("static: apps: {e}")))?;
            map.insert(app, list);
        }
        Ok(Self { apps: map })
    }
}

impl NameResolver for StaticResolver {
    fn resolve<'a>(
        &'a self,
        app: &'a AppRef,
    ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
        Box::pin(async move {
            let Some(hosts) = self.apps.get(app) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::with_capacity(hosts.len());
            for host in hosts {
                if let Ok(addr) = host.parse::<SocketAddr>() {
                    out.push(addr);
                    continue;
                }
                let found = tokio::net::lookup_host(host.clone())
                    .await
                    .map_err(|source| ResolveError::Lookup {
                        host: host.clone(),
                        source,
                    })?;
                out.extend(found);
            }
            Ok(out)
        })
    }

    fn kind(&self) -> &'static str {
        "static"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn resolves_listed_apps_only() {
        let r = StaticResolver::from_config(&json!({"apps": {
            "orders": ["127.0.0.1:5000", "127.0.0.1:5001"],
            "billing.prod": "127.0.0.1:6000"
        }}))
        .unwrap();
        let orders = r
            .resolve(&AppRef::new("orders", "default").unwrap())
            .await
            .unwrap();
        assert_eq!(orders.len(), 2);
        let billing = r
            .resolve(&AppRef::new("billing", "prod").unwrap())
            .await
            .unwrap();
        assert_eq!(billing, vec!["127.0.0.1:6000".parse().unwrap()]);
        assert!(
            r.resolve(&AppRef::new("billing", "default").unwrap())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rejects_bad_configuration() {
        assert!(StaticResolver::from_config(&json!({})).is_err());
        assert!(StaticResolver::from_config(&json!({"apps": {"a": 5}})).is_err());
        assert!(StaticResolver::from_config(&json!({"apps": {"a": ["nohost"]}})).is_err());
        for key in ["", "a/b", "a.b.c", ".x", "../x"] {
            let err = StaticResolver::from_config(&json!({"apps": {key: "127.0.0.1:1"}}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid app id"), "{key:?}: {err}");
        }
    }
}
