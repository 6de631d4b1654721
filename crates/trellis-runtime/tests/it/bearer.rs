//! `middleware.http.bearer` in a sidecar's pipeline: a valid JWT passes; expired, not yet
//! valid, wrongly addressed, unknown-key, `alg: none` and missing tokens are refused with
//! 401 before any route; a key the issuer rotates in is picked up from its JWKS URL.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use trellis_test_support::request;

use crate::{sidecar, url};

pub(crate) struct Key {
    kid: String,
    encoding: EncodingKey,
    pub(crate) jwk: serde_json::Value,
}

pub(crate) fn key(kid: &str) -> Key {
    let pair = rcgen::KeyPair::generate().unwrap();
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Key {
        kid: kid.into(),
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                    "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
    }
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) fn token(key: &Key, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap()
}

pub(crate) fn good_claims() -> serde_json::Value {
    json!({"iss": "https://idp.local", "aud": "orders", "sub": "alice", "exp": now() + 300})
}

/// A JWKS server on loopback whose key set the test can change.
async fn jwks_server(set: Arc<Mutex<serde_json::Value>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let set = set.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = set.lock().unwrap().to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/jwks.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_checked_before_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, stranger) = (key("k1"), key("k2"), key("k1"));
    let set = Arc::new(Mutex::new(json!({"keys": [k1.jwk.clone()]})));
    let jwks = jwks_server(set.clone()).await;
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: jwt\nspec:\n  \
         type: middleware.http.bearer\n  version: v1\n  metadata:\n  - name: issuer\n    \
         value: https://idp.local\n  - name: audience\n    value: orders\n  - name: jwksURL\n    \
         value: \"{jwks}\"\n"
    );
    let resources = trellis_resources::parse_str(std::path::Path::new("jwt.yaml"), &yaml).unwrap();
    let config = trellis_resources::parse_str(
        std::path::Path::new("c.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
         httpPipeline:\n    handlers:\n    - {name: jwt, type: middleware.http.bearer}\n",
    )
    .unwrap()
    .configurations
    .remove(0);
    let s = sidecar("jwt-guarded", dir.path(), None, |c| {
        c.resources = resources;
        c.configuration = Some(config);
    })
    .await;
    let call = |token: Option<String>| {
        let u = url(&s, "/v1.0/metadata");
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            request("GET", &u, &headers, "").await
        }
    };
    let r = call(Some(token(&k1, good_claims()))).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let mut expired = good_claims();
    expired["exp"] = json!(now() - 120);
    let mut early = good_claims();
    early["nbf"] = json!(now() + 120);
    let mut elsewhere = good_claims();
    elsewhere["aud"] = json!("billing");
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good_claims().to_string())
    );
    for (what, t, needle) in [
        ("expired", Some(token(&k1, expired)), "ExpiredSignature"),
        (
            "not yet valid",
            Some(token(&k1, early)),
            "ImmatureSignature",
        ),
        (
            "wrong audience",
            Some(token(&k1, elsewhere)),
            "InvalidAudience",
        ),
        (
            "unknown key",
            Some(token(&stranger, good_claims())),
            "InvalidSignature",
        ),
        ("alg none", Some(none), "malformed"),
        ("missing", None, "no Authorization"),
    ] {
        let r = call(t).await;
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.json()["errorCode"], "ERR_API_UNAUTHORIZED", "{what}");
        assert!(r.text().contains(needle), "{what}: {}", r.text());
    }

    // The issuer rotates k2 in: a token signed with it makes the sidecar reload the set.
    let r = call(Some(token(&k2, good_claims()))).await;
    assert_eq!(r.status, 401, "k2 is not published yet: {}", r.text());
    set.lock().unwrap()["keys"] = json!([k1.jwk.clone(), k2.jwk.clone()]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = call(Some(token(&k2, good_claims()))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.stop().await;
}
