//! SPIFFE ids as Dapr writes them for sidecars: `spiffe://<trustDomain>/ns/<namespace>/<appId>`,
//! and reading the one a certificate carries in its URI subject alternative name.

use std::fmt;

use crate::MtlsError;

/// Dapr's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "public";

/// Who a sidecar is: its app id, in a namespace, in a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub app_id: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        app_id: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            app_id: app_id.into(),
        }
    }

    /// Parses `spiffe://<td>/ns/<ns>/<app>`; anything else is refused.
    pub fn parse(uri: &str) -> Result<Self, MtlsError> {
        let bad = || {
            MtlsError::Identity(format!(
                "{uri:?} is not a sidecar SPIFFE id (spiffe://<trust domain>/ns/<namespace>/<app id>)"
            ))
        };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some(app), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if td.is_empty() || ns.is_empty() || app.is_empty() {
            return Err(bad());
        }
        Ok(Self::new(td, ns, app))
    }

    /// The SPIFFE id in the URI SAN of a DER certificate (exactly one `spiffe://` URI).
    pub fn from_cert(der: &[u8]) -> Result<Self, MtlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| MtlsError::Identity(format!("unreadable peer certificate: {e}")))?;
        let san = cert.subject_alternative_name().map_err(|e| {
            MtlsError::Identity(format!("unreadable subject alternative names: {e}"))
        })?;
        let mut ids = san
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                    Some(*uri)
                }
                _ => None,
            });
        match (ids.next(), ids.next()) {
            (Some(uri), None) => Self::parse(uri),
            (None, _) => Err(MtlsError::Identity(
                "the peer certificate carries no SPIFFE id".into(),
            )),
            (Some(_), Some(_)) => Err(MtlsError::Identity(
                "the peer certificate carries several SPIFFE ids".into(),
            )),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/{}",
            self.trust_domain, self.namespace, self.app_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_dapr_ids() {
        let id = SpiffeId::new("public", "default", "orders");
        assert_eq!(id.to_string(), "spiffe://public/ns/default/orders");
        assert_eq!(SpiffeId::parse(&id.to_string()).ok(), Some(id));
        for bad in [
            "spiffe://public/orders",
            "spiffe://public/ns/default/orders/extra",
            "https://public/ns/default/orders",
            "spiffe:///ns/default/orders",
            "spiffe://public/ns//orders",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }
}
