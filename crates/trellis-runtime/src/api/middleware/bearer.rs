//! `middleware.http.bearer`: every API request (`httpPipeline`), or every invocation of the
//! app (`appHttpPipeline`), must carry `Authorization: Bearer <JWT>`, signed by a key of the
//! issuer's JSON Web Key Set, for the configured `issuer` and `audience`, and within its
//! validity (`exp` required, `nbf` honoured, 5 s leeway). What the sidecar sends the app on
//! its own account (deliveries, jobs, configuration updates) has no caller and no token, and
//! passes.
//!
//! Metadata: `issuer`, `audience` (both required), `jwksURL`: the key set, from a file
//! (`file:///…` or an absolute path) or an `http://` URL on loopback (an identity provider
//! beside the sidecar; remote ones would need TLS, which is not here yet). The set is
//! cached; a token whose `kid` the cache does not know makes it reload (at most once a
//! second), so keys the issuer rotates in are picked up, and it is reloaded every 10
//! minutes anyway. Tokens with `alg: none` or an algorithm other than their key's are
//! refused.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::StatusCode;
use http::request::Parts;
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Caller, HttpMiddleware};
use crate::api::ApiError;

const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);
const RELOAD_ANYWAY_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url(http::Uri),
}

struct Keys {
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
    loaded: Instant,
}

pub struct Bearer {
    issuer: String,
    audience: String,
    source: Source,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bearer({}, {:?})", self.issuer, self.source)
    }
}

fn refused(reason: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "ERR_API_UNAUTHORIZED",
        format!("bearer token refused: {reason}"),
    )
    .grpc(tonic::Code::Unauthenticated)
}

impl Bearer {
    pub async fn new(md: &trellis_core::Metadata) -> Result<Self, String> {
        let issuer = md.require("issuer").map_err(|e| e.to_string())?.to_string();
        let audience = md
            .require("audience")
            .map_err(|e| e.to_string())?
            .to_string();
        let url = md.require("jwksURL").map_err(|e| e.to_string())?;
        let source = if let Some(path) = url.strip_prefix("file://") {
            Source::File(PathBuf::from(path))
        } else if url.starts_with('/') {
            Source::File(PathBuf::from(url))
        } else {
            let uri: http::Uri = url.parse().map_err(|e| format!("metadata jwksURL: {e}"))?;
            let loopback = uri.host().is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if uri.scheme_str() != Some("http") || !loopback {
                return Err(format!(
                    "metadata jwksURL: {url:?} must be a file or an http:// URL on loopback"
                ));
            }
            Source::Url(uri)
        };
        let keys = load(&source).await?;
        Ok(Self {
            issuer,
            audience,
            source,
            keys: RwLock::new(keys),
        })
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.keys
            .iter()
            .find(|(k, a, _)| *a == alg && (kid.is_none() || k.as_deref() == kid))
            .map(|(_, _, key)| key.clone())
    }

    fn stale(&self, after: Duration) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .loaded
            .elapsed()
            >= after
    }

    async fn reload(&self) {
        match load(&self.source).await {
            Ok(keys) => *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys,
            Err(error) => {
                tracing::warn!(%error, "reloading the JWKS failed; keeping the keys loaded before")
            }
        }
    }
}

#[async_trait]
impl HttpMiddleware for Bearer {
    async fn check(&self, req: &Parts, caller: Caller<'_>) -> Result<(), ApiError> {
        if caller == Caller::Sidecar {
            // A delivery, job or configuration update to the app: no caller sent it, so
            // there is no token to check, and the app trusts its sidecar already.
            return Ok(());
        }
        let token = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| refused("no Authorization: Bearer header"))?;
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no "none".
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("malformed token: {e}")))?;
        if self.stale(RELOAD_ANYWAY_AFTER) {
            self.reload().await;
        }
        let key = match self.find(header.kid.as_deref(), header.alg) {
            Some(key) => key,
            None => {
                if self.stale(RELOAD_AT_MOST_EVERY) {
                    self.reload().await;
                }
                self.find(header.kid.as_deref(), header.alg)
                    .ok_or_else(|| refused("signed by a key the issuer's JWKS does not hold"))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map(drop)
            .map_err(|e| refused(e.to_string()))
    }
}

async fn load(source: &Source) -> Result<Keys, String> {
    let bytes = match source {
        Source::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("reading the JWKS {}: {e}", path.display()))?,
        Source::Url(uri) => fetch(uri).await?,
    };
    let set: JwkSet =
        serde_json::from_slice(&bytes).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(alg) = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        else {
            tracing::debug!(kid = ?jwk.common.key_id, "skipping a JWK without a usable alg");
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => keys.push((jwk.common.key_id.clone(), alg, key)),
            Err(e) => {
                tracing::debug!(kid = ?jwk.common.key_id, error = %e, "skipping an unusable JWK")
            }
        }
    }
    Ok(Keys {
        keys,
        loaded: Instant::now(),
    })
}

async fn fetch(uri: &http::Uri) -> Result<Vec<u8>, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let get = async {
        let resp = client.get(uri.clone()).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .map_err(|_| format!("fetching the JWKS from {uri} timed out"))?
        .map_err(|e| format!("fetching the JWKS from {uri}: {e}"))
}
