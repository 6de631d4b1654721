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

mod sqlite {
    //! `secretstores.sqlite`: the conformance suite over a store seeded through a second
    //! handle on the same file (as `trellis secret set` in another process would), and the
    //! encryption and key-file behaviour users rely on.

    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use trellis_secrets::conformance::{Missing, Setup};
    use trellis_secrets::sqlite::SqliteSecretStore;
    use trellis_secrets::{Metadata, Secret, SecretError, SecretStore};

    /// A database path in a directory kept for the rest of the test process.
    fn fresh_db() -> PathBuf {
        tempfile::tempdir().unwrap().keep().join("secrets.db")
    }

    async fn open(db: &Path) -> SqliteSecretStore {
        let md = Metadata::from_pairs([("connectionString", db.display().to_string())]);
        SqliteSecretStore::open(&md).await.unwrap()
    }

    pub(super) async fn seeded() -> Setup {
        let db = fresh_db();
        let reader = open(&db).await;
        let writer = open(&db).await;
        writer
            .set("db-password", "db-password", "hunter2")
            .await
            .unwrap();
        writer.set("redis", "user", "default").await.unwrap();
        writer.set("redis", "password", "r3d1s").await.unwrap();
        Setup {
            store: Arc::new(reader),
            known: BTreeMap::from([
                (
                    "db-password".to_string(),
                    super::secret("db-password", "hunter2"),
                ),
                (
                    "redis".to_string(),
                    Secret::from([
                        ("password".to_string(), "r3d1s".to_string()),
                        ("user".to_string(), "default".to_string()),
                    ]),
                ),
            ]),
            missing: Missing::NotFound,
        }
    }

    mod conformance {
        trellis_secrets::conformance_tests!(super::seeded());
    }

    #[tokio::test]
    async fn values_are_sealed_on_disk_and_the_key_file_is_private() {
        let db = fresh_db();
        let key_file = db.with_extension("key");
        let store = open(&db).await;
        assert!(!key_file.exists(), "opening alone makes no key");
        let none = store.get("x", &BTreeMap::new()).await.unwrap_err();
        assert_eq!(none, SecretError::NotFound("x".into()));
        store
            .set("api", "api", "plain-text-value-0001")
            .await
            .unwrap();
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode {mode:o}");
        drop(store);
        for file in [db.clone(), db.with_extension("db-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(
                    !bytes.windows(21).any(|w| w == b"plain-text-value-0001"),
                    "{} holds the value in the clear",
                    file.display()
                );
            }
        }
        let again = open(&db).await;
        let got = again.get("api", &BTreeMap::new()).await.unwrap();
        assert_eq!(got, super::secret("api", "plain-text-value-0001"));
    }

    #[tokio::test]
    async fn a_wrong_or_lost_key_is_named_not_taken_for_damage() {
        let db = fresh_db();
        let key_file = db.with_extension("key");
        open(&db).await.set("a", "a", "1").await.unwrap();
        std::fs::write(&key_file, format!("{}\n", "11".repeat(32))).unwrap();
        let md = Metadata::from_pairs([("connectionString", db.display().to_string())]);
        let err = SqliteSecretStore::open(&md).await.unwrap_err().to_string();
        assert!(
            err.contains("not the key these secrets were sealed with"),
            "{err}"
        );
        std::fs::write(&key_file, "not a key").unwrap();
        let err = SqliteSecretStore::open(&md).await.unwrap_err().to_string();
        assert!(err.contains("does not hold a 256-bit key"), "{err}");
        std::fs::remove_file(&key_file).unwrap();
        // Without its key a store with secrets says so, and refuses to seal new secrets
        // under a new key that could never open the old ones.
        let store = open(&db).await;
        let err = store.set("b", "b", "2").await.unwrap_err().to_string();
        assert!(err.contains("key that is missing: restore"), "{err}");
        assert!(!key_file.exists(), "no new key was made");
        let err = store
            .get("a", &BTreeMap::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("key that is missing: restore"), "{err}");
    }

    #[tokio::test]
    async fn a_key_made_by_another_process_is_picked_up_and_keys_are_removed() {
        let db = fresh_db();
        let sidecar = open(&db).await;
        let cli = open(&db).await;
        cli.set("svc", "token", "t1").await.unwrap();
        cli.set("svc", "user", "u").await.unwrap();
        let got = sidecar.get("svc", &BTreeMap::new()).await.unwrap();
        assert_eq!(got.get("token").map(String::as_str), Some("t1"));
        assert_eq!(
            cli.list().await.unwrap(),
            BTreeMap::from([(
                "svc".to_string(),
                vec!["token".to_string(), "user".to_string()]
            )])
        );
        assert!(cli.remove("svc", Some("token")).await.unwrap());
        assert!(!cli.remove("svc", Some("token")).await.unwrap());
        let got = sidecar.get("svc", &BTreeMap::new()).await.unwrap();
        assert_eq!(got, Secret::from([("user".to_string(), "u".to_string())]));
        assert!(cli.remove("svc", None).await.unwrap());
        assert!(sidecar.bulk(&BTreeMap::new()).await.unwrap().is_empty());
        let err = cli.set("", "k", "v").await.unwrap_err();
        assert!(matches!(err, SecretError::InvalidRequest(_)), "{err}");
    }
}
