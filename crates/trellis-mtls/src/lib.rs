//! mTLS between sidecars, as Dapr and Linkerd do it: every sidecar proves who it is with a
//! short-lived certificate whose URI SAN is its SPIFFE id
//! (`spiffe://<trustDomain>/ns/<namespace>/<appId>`), signed by an issuer that chains to
//! trust anchors every sidecar shares.
//!
//! - [`Authority`]: the trust anchors and the issuer; made locally on first use, or given.
//! - [`WorkloadIdentity`]: one sidecar's certificate, renewed before it expires without
//!   disturbing connections already made.
//! - [`tls`]: the rustls configurations of the internal port's two ends, and [`tls::peer_id`]
//!   to read who is on the other end of a connection.
//!
//! rustls on the `ring` provider, rcgen to issue, x509-parser to read SAN URIs; no OpenSSL.

mod authority;
mod spiffe;
pub mod tls;
mod workload;

pub use authority::{Authority, Issued};
pub use spiffe::{DEFAULT_TRUST_DOMAIN, SpiffeId};
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};
pub use workload::{CertSettings, WorkloadIdentity};

/// Re-exported so users of the configurations need no rustls dependency of their own.
pub use rustls;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    /// Making, reading or using the certificate authority failed.
    #[error("certificate authority: {0}")]
    Authority(String),
    /// A certificate does not carry a usable sidecar identity.
    #[error("identity: {0}")]
    Identity(String),
}
