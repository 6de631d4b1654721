//! The mTLS settings of a `trellis run`: which certificate authority (files from the
//! command line, PEM text from Dapr's environment variables, or the local authority kept
//! in the data dir) and whether mTLS is on.
//!
//! mTLS is on unless `Configuration.spec.mtls.enabled` is false, and it may be off only
//! when the internal port listens on loopback: a sidecar reachable from the network must
//! not take a caller's identity from a header.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use trellis_mtls::{Authority, CertSettings, DEFAULT_TRUST_DOMAIN};
use trellis_resources::Configuration;
use trellis_runtime::MtlsConfig;

use crate::args::AppPlan;

/// `--trust-anchors-file`, `--issuer-cert-file`, `--issuer-key-file`.
#[derive(Debug, Clone)]
pub struct AuthorityFiles {
    pub trust_anchors: PathBuf,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
}

/// The sidecar's mTLS configuration, or `None` when the configuration turns it off.
pub fn config(
    plan: &AppPlan,
    configuration: Option<&Configuration>,
    internal_on_loopback: bool,
) -> anyhow::Result<Option<MtlsConfig>> {
    let spec = configuration
        .and_then(|c| c.spec.mtls.clone())
        .unwrap_or_default();
    if spec.enabled == Some(false) {
        if !internal_on_loopback {
            bail!(
                "mTLS is off (spec.mtls.enabled: false) but the internal port listens beyond \
                 loopback for the configured name resolution; remove `enabled: false` from \
                 the configuration's spec.mtls so that peers must prove who they are"
            );
        }
        tracing::warn!(
            app_id = plan.app_id,
            "mTLS between sidecars is off (spec.mtls.enabled: false); only loopback peers can reach this sidecar"
        );
        return Ok(None);
    }
    let trust_domain = configuration
        .and_then(|c| c.spec.access_control.as_ref())
        .and_then(|ac| ac.trust_domain.clone())
        .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string());
    let defaults = CertSettings::default();
    let certs = CertSettings {
        ttl: spec.workload_cert_ttl.unwrap_or(defaults.ttl),
        skew: spec.allowed_clock_skew.unwrap_or(defaults.skew),
    };
    Ok(Some(MtlsConfig {
        authority: Arc::new(authority(plan, &trust_domain)?),
        trust_domain,
        certs,
    }))
}

fn authority(plan: &AppPlan, trust_domain: &str) -> anyhow::Result<Authority> {
    if let Some(files) = &plan.authority_files {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        return Authority::from_pem(
            &read(&files.trust_anchors)?,
            &read(&files.issuer_cert)?,
            &read(&files.issuer_key)?,
        )
        .context("the certificate authority given by --trust-anchors-file, --issuer-cert-file and --issuer-key-file");
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (
        env("DAPR_TRUST_ANCHORS"),
        env("DAPR_CERT_CHAIN"),
        env("DAPR_CERT_KEY"),
    ) {
        (Some(anchors), Some(chain), Some(key)) => {
            return Authority::from_pem(&anchors, &chain, &key).context(
                "the certificate authority given by DAPR_TRUST_ANCHORS, DAPR_CERT_CHAIN and DAPR_CERT_KEY",
            );
        }
        (None, None, None) => {}
        _ => {
            bail!("set all three of DAPR_TRUST_ANCHORS, DAPR_CERT_CHAIN and DAPR_CERT_KEY, or none")
        }
    }
    let dir = plan.data_dir.join("mtls");
    Authority::load_or_create(&dir, trust_domain).with_context(|| {
        format!(
            "the local certificate authority in {}; remove the directory to make a new one",
            dir.display()
        )
    })
}
