//! The secret stores against the conformance suite: each seeded with its own data.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_secrets::conformance::{Missing, Setup};
use trellis_secrets::local_env::LocalEnvStore;
use trellis_secrets::local_file::LocalFileStore;
use trellis_secrets::{Metadata, Secret, SecretError, SecretStore};

fn secret(name: &str, value: &str) -> Secret {
    Secret::from([(name.to_string(), value.to_string())])
}

async fn env_store() -> Setup {
    let env: BTreeMap<String, String> = [("SVC_DB_PASSWORD", "hunter2"), ("SVC_TOKEN", "t0k")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let md = Metadata::from_pairs([("prefix", "SVC_")]);
    Setup {
        store: Arc::new(LocalEnvStore::open(&md, Arc::new(env)).unwrap()),
        known: BTreeMap::from([
            ("DB_PASSWORD".to_string(), secret("DB_PASSWORD", "hunter2")),
            ("TOKEN".to_string(), secret("TOKEN", "t0k")),
        ]),
        missing: Missing::EmptyValue,
    }
}

/// A file store over a file in a directory that lives as long as the test process; the
/// store reads it at open, so the file may go afterwards.
async fn file_store(multi_valued: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.json");
    std::fs::write(
        &path,
        r#"{"redis": {"password": "r3d1s", "user": "default"}, "apiKey": "k"}"#,
    )
    .unwrap();
    let md = Metadata::from_pairs([
        ("secretsFile", path.display().to_string()),
        ("multiValued", multi_valued.to_string()),
    ]);
    let store = LocalFileStore::open(&md).await.unwrap();
    let known = if multi_valued {
        BTreeMap::from([
            (
                "redis".to_string(),
                Secret::from([
                    ("password".to_string(), "r3d1s".to_string()),
                    ("user".to_string(), "default".to_string()),
                ]),
            ),
            ("apiKey".to_string(), secret("apiKey", "k")),
        ])
    } else {
        BTreeMap::from([
            (
                "redis:password".to_string(),
                secret("redis:password", "r3d1s"),
            ),
            ("redis:user".to_string(), secret("redis:user", "default")),
            ("apiKey".to_string(), secret("apiKey", "k")),
        ])
    };
    Setup {
        store: Arc::new(store),
        known,
        missing: Missing::NotFound,
    }
}

mod env_conformance {
    trellis_secrets::conformance_tests!(super::env_store());
}

mod file_conformance {
    trellis_secrets::conformance_tests!(super::file_store(false));
}

mod multi_valued_file_conformance {
    trellis_secrets::conformance_tests!(super::file_store(true));
}

#[tokio::test]
async fn a_missing_or_broken_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let md = Metadata::from_pairs([("secretsFile", missing.display().to_string())]);
    let err = LocalFileStore::open(&md).await.unwrap_err();
    assert!(
        matches!(&err, SecretError::InvalidRequest(m) if m.contains("cannot read secretsFile")),
        "{err}"
    );
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"password\": \"s3cr3t\"").unwrap();
    let md = Metadata::from_pairs([("secretsFile", broken.display().to_string())]);
    let err = LocalFileStore::open(&md).await.unwrap_err().to_string();
    assert!(err.contains("not valid JSON"), "{err}");
    assert!(
        !err.contains("s3cr3t"),
        "a value leaked into the error: {err}"
    );
    let err = LocalFileStore::open(&Metadata::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("secretsFile"), "{err}");
    let _: &dyn SecretStore =
        &LocalFileStore::from_json(&serde_json::json!({}), ":", false).unwrap();
}
