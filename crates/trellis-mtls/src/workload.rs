//! One sidecar's workload identity: its SPIFFE id and the short-lived certificate that
//! proves it, renewed before it expires.
//!
//! The certificate in use sits behind a lock that TLS handshakes read (rustls asks the
//! resolvers here for it on every handshake). Renewal swaps in a new one: connections
//! already established keep the certificate they were made with (TLS does not re-present
//! one mid-connection), so nothing in flight drops; new handshakes get the new one.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use crate::{Authority, MtlsError, SpiffeId};

/// Settings of `Configuration.spec.mtls`, with Dapr's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertSettings {
    /// `workloadCertTTL`: how long a workload certificate is valid (24 h).
    pub ttl: Duration,
    /// `allowedClockSkew`: how far back a certificate's validity starts (15 min).
    pub skew: Duration,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            skew: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug)]
pub struct WorkloadIdentity {
    id: SpiffeId,
    authority: Arc<Authority>,
    settings: CertSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl WorkloadIdentity {
    /// Issues the first certificate for `id`.
    pub fn new(
        id: SpiffeId,
        authority: Arc<Authority>,
        settings: CertSettings,
    ) -> Result<Arc<Self>, MtlsError> {
        let provider = Arc::new(provider());
        let current = issue(&id, &authority, settings, &provider)?;
        Ok(Arc::new(Self {
            id,
            authority,
            settings,
            provider,
            current: RwLock::new(current),
        }))
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The certificate and key for the next handshake.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .key
            .clone()
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> SystemTime {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .not_after
    }

    /// Issues a new certificate and uses it for every handshake from now on.
    pub fn renew(&self) -> Result<(), MtlsError> {
        let next = issue(&self.id, &self.authority, self.settings, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Renews the certificate when two thirds of its life have passed, until dropped with
    /// its task. A failed renewal is retried a minute later (the old certificate still
    /// works until it expires).
    pub async fn keep_renewed(self: Arc<Self>) {
        loop {
            let left = self
                .not_after()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let wait = left
                .saturating_sub(self.settings.ttl / 3)
                .max(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            match self.renew() {
                Ok(()) => tracing::debug!(id = %self.id, "renewed the workload certificate"),
                Err(error) => {
                    tracing::warn!(id = %self.id, %error, "renewing the workload certificate failed; retrying in a minute");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    }
}

/// ring's provider with the cipher suites sidecars offer each other: AES-128-GCM, then
/// ChaCha20-Poly1305, as linkerd2-proxy offers, so two sidecars agree on AES-128-GCM.
/// ring's default puts AES-256-GCM first, whose four more rounds per block cost each
/// sidecar of a 1 KiB call about 800 instructions (`docs/benchmarks.md`, "The proxy floor,
/// fifth pass"); AES-128-GCM is the suite every TLS 1.3 implementation must have. A peer
/// that still offers AES-256-GCM first gets AES-128-GCM, its second choice.
fn provider() -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    }
}

fn issue(
    id: &SpiffeId,
    authority: &Authority,
    settings: CertSettings,
    provider: &CryptoProvider,
) -> Result<Current, MtlsError> {
    let issued = authority.issue(id, settings.ttl, settings.skew)?;
    let signing_key = provider
        .key_provider
        .load_private_key(issued.key)
        .map_err(|e| MtlsError::Authority(format!("loading the workload key: {e}")))?;
    Ok(Current {
        key: Arc::new(CertifiedKey::new(issued.chain, signing_key)),
        not_after: issued.not_after,
    })
}
