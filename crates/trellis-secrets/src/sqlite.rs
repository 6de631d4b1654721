//! `secretstores.sqlite`: the embedded secret store, an encrypted SQLite file (by default
//! `<data-dir>/secrets.db`) shared by every `trellis` process on the machine, written with
//! `trellis secret set` and read by apps through Dapr's secrets API.
//!
//! Each secret (a small map of strings) is sealed with AES-256-GCM under a 256-bit key kept
//! in a file of its own (`keyFile`, by default the database's name with `.key`:
//! `secrets.key`), created with mode 0600 on the first write. A fresh random nonce seals
//! every write, and the secret's name is authenticated with it, so a sealed value moved to
//! another name does not open. The database also records an id of the key it was sealed
//! with, so a wrong or lost key file is reported as such, not as corrupt secrets.
//!
//! What this protects: a database file that leaves the machine without its key file (a
//! backup, a copied data directory, a commit). What it does not: anyone who can read both
//! files, as the sidecars must. Keep the key file elsewhere (`keyFile`) to separate them.
//!
//! Reads open the key file again when it appeared after the store opened (the first
//! `trellis secret set` on a machine whose sidecars already run). Writes are calls on the
//! shared group-commit writer ([`trellis_sqlite::calls`]) and durable; a get reads on the
//! caller's thread ([`trellis_sqlite::inline`]), except in an in-memory database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{Connection, OptionalExtension, params};
use trellis_sqlite::StoreSettings;
use trellis_sqlite::calls::{CallFailed, Calls, Shared};
use trellis_sqlite::inline::{InlineReads, ReadFailed};
use trellis_sqlite::writer::Options;

use crate::{Metadata, Secret, SecretError, SecretStore};

/// The table's name when the metadata names none.
pub const DEFAULT_TABLE: &str = "secrets";

/// The key's length in bytes (AES-256).
const KEY_LEN: usize = 32;

/// The metadata row holding the id of the key the secrets are sealed with.
const KEY_ID: &str = "key_id";

type KeyBytes = [u8; KEY_LEN];

impl From<CallFailed> for SecretError {
    fn from(e: CallFailed) -> Self {
        SecretError::Backend(e.0)
    }
}

impl From<ReadFailed> for SecretError {
    fn from(e: ReadFailed) -> Self {
        SecretError::Backend(e.0)
    }
}

fn db_err(e: rusqlite::Error) -> SecretError {
    SecretError::Backend(format!("sqlite: {e}"))
}

/// The SQL of one table, formatted once.
#[derive(Debug, Clone)]
struct Sql {
    get: String,
    all: String,
    put: String,
    delete: String,
    key_id: String,
    set_key_id: String,
}

impl Sql {
    fn new(t: &str) -> Self {
        let m = format!("{t}_metadata");
        Sql {
            get: format!("SELECT sealed FROM {t} WHERE name = ?1"),
            all: format!("SELECT name, sealed FROM {t} ORDER BY name"),
            put: format!(
                "INSERT INTO {t} (name, sealed) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed"
            ),
            delete: format!("DELETE FROM {t} WHERE name = ?1"),
            key_id: format!("SELECT value FROM {m} WHERE key = '{KEY_ID}'"),
            set_key_id: format!("INSERT OR IGNORE INTO {m} (key, value) VALUES ('{KEY_ID}', ?1)"),
        }
    }

    fn create_tables(t: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (name TEXT PRIMARY KEY, sealed BLOB NOT NULL) \
             WITHOUT ROWID; \
             CREATE TABLE IF NOT EXISTS {t}_metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL) \
             WITHOUT ROWID;"
        )
    }
}

impl Shared for Sql {}

/// The key's public id: a hash of it, so that the database can tell which key sealed it
/// without holding anything that helps to find the key.
fn key_id(key: &KeyBytes) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"trellis secretstores.sqlite key id\0");
    ctx.update(key);
    hex(&ctx.finish().as_ref()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<KeyBytes> {
    let text = text.trim();
    if text.len() != KEY_LEN * 2 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(key)
}

fn cipher(key: &KeyBytes) -> Result<LessSafeKey, SecretError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SecretError::Backend("cannot use the secrets key".into()))
}

/// `nonce || ciphertext || tag` of `secret`, its name authenticated with it.
fn seal(key: &KeyBytes, name: &str, secret: &Secret) -> Result<Vec<u8>, SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SecretError::Backend("no randomness for a nonce".into()))?;
    let mut body = serde_json::to_vec(secret)
        .map_err(|e| SecretError::Backend(format!("cannot encode a secret: {e}")))?;
    cipher(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut body,
        )
        .map_err(|_| SecretError::Backend("cannot seal a secret".into()))?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&body);
    Ok(sealed)
}

fn open_sealed(key: &KeyBytes, name: &str, sealed: &[u8]) -> Result<Secret, SecretError> {
    let damaged = || SecretError::Backend(format!("secret {name} is damaged or was moved"));
    if sealed.len() < NONCE_LEN {
        return Err(damaged());
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
    let mut body = body.to_vec();
    let plain = cipher(key)?
        .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
        .map_err(|_| damaged())?;
    serde_json::from_slice(plain).map_err(|_| damaged())
}

/// Checks that the secrets in the database were sealed with `key` (or that there are none
/// yet, recording `key` as theirs when `claim`).
fn check_key(conn: &Connection, sql: &Sql, key: &KeyBytes, claim: bool) -> Result<(), SecretError> {
    let id = key_id(key);
    let stored: Option<String> = conn
        .query_row(&sql.key_id, [], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    match stored {
        Some(stored) if stored != id => Err(SecretError::Backend(
            "the key file is not the key these secrets were sealed with".into(),
        )),
        Some(_) => Ok(()),
        None if claim => conn
            .execute(&sql.set_key_id, [id])
            .map(drop)
            .map_err(db_err),
        None => Ok(()),
    }
}

fn read(conn: &Connection, sql: &Sql, name: &str) -> Result<Option<Vec<u8>>, SecretError> {
    conn.prepare_cached(&sql.get)
        .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
        .map_err(db_err)
}

/// Where the key comes from.
#[derive(Debug)]
enum KeySource {
    /// A file, read when the store opens and again while it is missing.
    File(PathBuf),
    /// An in-memory database's key: made at open, gone with the process.
    Ephemeral,
}

/// `secretstores.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteSecretStore {
    calls: Calls<Sql, SecretError>,
    /// Gets, on the caller's thread; none for an in-memory database.
    reads: Option<InlineReads<Sql>>,
    source: KeySource,
    key: Mutex<Option<KeyBytes>>,
}

impl SqliteSecretStore {
    /// Opens (creating when missing) the database and table `md` names. The key file is
    /// read if it exists; it is created only by the first write.
    pub async fn open(md: &Metadata) -> Result<Self, SecretError> {
        let cfg = StoreSettings::from_metadata(md, DEFAULT_TABLE)?;
        let in_memory = trellis_sqlite::in_memory(&cfg.connection);
        let source = match md.get("keyFile") {
            Some(file) if !file.is_empty() => KeySource::File(PathBuf::from(file)),
            _ if in_memory => KeySource::Ephemeral,
            _ => KeySource::File(default_key_file(&cfg.connection)),
        };
        let key = match &source {
            KeySource::File(path) => read_key_file(path)?,
            KeySource::Ephemeral => Some(new_key()?),
        };
        let table = cfg.table.clone();
        let connection = cfg.connection.clone();
        let busy = cfg.busy_timeout;
        let (conn, reads) = tokio::task::spawn_blocking(move || {
            let conn = trellis_sqlite::open_writer(&connection, busy, 4, "WAL")
                .map_err(|e| SecretError::Backend(e.to_string()))?;
            conn.execute_batch(&Sql::create_tables(&table))
                .map_err(db_err)?;
            let reads = InlineReads::open(&connection, busy, 4, Sql::new(&table))
                .map_err(|e| SecretError::Backend(e.to_string()))?;
            Ok::<_, SecretError>((conn, reads))
        })
        .await
        .map_err(|e| SecretError::Backend(format!("sqlite open task failed: {e}")))??;
        let options = Options::new("trellis-secrets-writer", cfg.busy_timeout);
        let calls = Calls::start(conn, Sql::new(&cfg.table), options, cfg.timeout)
            .map_err(|e| SecretError::Backend(e.to_string()))?;
        let store = SqliteSecretStore {
            calls,
            reads,
            source,
            key: Mutex::new(key),
        };
        // A wrong key file is the operator's to fix before anything is served with it.
        // Checked here and by every write, not by every read: the key is loaded once, so a
        // read has nothing new to learn, and it saves a statement per secret get.
        if let Some(key) = store.current_key()? {
            store
                .calls
                .call(false, move |c, sql| check_key(c, sql, &key, false))
                .await?;
        }
        Ok(store)
    }

    /// The key, reading its file again if it was missing until now.
    fn current_key(&self) -> Result<Option<KeyBytes>, SecretError> {
        let mut key = self
            .key
            .lock()
            .map_err(|_| SecretError::Backend("secrets key lock poisoned".into()))?;
        if key.is_none()
            && let KeySource::File(path) = &self.source
        {
            *key = read_key_file(path)?;
        }
        Ok(*key)
    }

    /// The key; none when no secret was ever sealed (nothing to read); an error when
    /// secrets were sealed but their key file is gone.
    async fn key_for_reading(&self) -> Result<Option<KeyBytes>, SecretError> {
        if let Some(key) = self.current_key()? {
            return Ok(Some(key));
        }
        let sealed_before = self
            .calls
            .call(false, |c, sql| {
                c.query_row(&sql.key_id, [], |_| Ok(()))
                    .optional()
                    .map_err(db_err)
            })
            .await?;
        match sealed_before {
            Some(()) => Err(SecretError::Backend(format!(
                "the secrets were sealed with a key that is missing: restore {}",
                self.key_file_name()
            ))),
            None => Ok(None),
        }
    }

    fn key_file_name(&self) -> String {
        match &self.source {
            KeySource::File(path) => path.display().to_string(),
            KeySource::Ephemeral => "the in-memory key".into(),
        }
    }

    /// The key, created (file and all) when there is none yet.
    fn key_for_writing(&self) -> Result<KeyBytes, SecretError> {
        if let Some(key) = self.current_key()? {
            return Ok(key);
        }
        let KeySource::File(path) = &self.source else {
            return Err(SecretError::Backend("in-memory store without a key".into()));
        };
        let key = create_key_file(path)?;
        let mut slot = self
            .key
            .lock()
            .map_err(|_| SecretError::Backend("secrets key lock poisoned".into()))?;
        *slot = Some(key);
        Ok(key)
    }

    /// Sets `key` of the secret `name` to `value` (the secret is created when missing; a
    /// single-valued secret uses its own name as its key).
    pub async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), SecretError> {
        check_name(name)?;
        if key.is_empty() {
            return Err(SecretError::InvalidRequest(
                "a secret's key is empty".into(),
            ));
        }
        // No key yet: make one, unless these secrets were sealed with a key that went
        // missing (a new one could never open them).
        let secret_key = match self.key_for_reading().await? {
            Some(key) => key,
            None => self.key_for_writing()?,
        };
        let (name, key, value) = (name.to_string(), key.to_string(), value.to_string());
        self.calls
            .call(true, move |c, sql| {
                check_key(c, sql, &secret_key, true)?;
                let mut secret = match read(c, sql, &name)? {
                    Some(sealed) => open_sealed(&secret_key, &name, &sealed)?,
                    None => Secret::new(),
                };
                secret.insert(key, value);
                let sealed = seal(&secret_key, &name, &secret)?;
                c.prepare_cached(&sql.put)
                    .and_then(|mut s| s.execute(params![name, sealed]))
                    .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    /// Removes the secret `name`, or only its `key`; whether there was anything to remove.
    pub async fn remove(&self, name: &str, key: Option<&str>) -> Result<bool, SecretError> {
        let secret_key = self.key_for_reading().await?;
        let (name, key) = (name.to_string(), key.map(str::to_string));
        self.calls
            .call(true, move |c, sql| {
                let Some(key) = key else {
                    let n = c.execute(&sql.delete, [&name]).map_err(db_err)?;
                    return Ok(n > 0);
                };
                let (Some(secret_key), Some(sealed)) = (secret_key, read(c, sql, &name)?) else {
                    return Ok(false);
                };
                let mut secret = open_sealed(&secret_key, &name, &sealed)?;
                if secret.remove(&key).is_none() {
                    return Ok(false);
                }
                if secret.is_empty() {
                    c.execute(&sql.delete, [&name]).map_err(db_err)?;
                } else {
                    let sealed = seal(&secret_key, &name, &secret)?;
                    c.execute(&sql.put, params![name, sealed]).map_err(db_err)?;
                }
                Ok(true)
            })
            .await
    }

    /// Every secret, opened.
    async fn all(&self) -> Result<BTreeMap<String, Secret>, SecretError> {
        let Some(key) = self.key_for_reading().await? else {
            return Ok(BTreeMap::new());
        };
        self.calls
            .call(false, move |c, sql| {
                let mut stmt = c.prepare_cached(&sql.all).map_err(db_err)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .map_err(db_err)?;
                let mut all = BTreeMap::new();
                for row in rows {
                    let (name, sealed) = row.map_err(db_err)?;
                    let secret = open_sealed(&key, &name, &sealed)?;
                    all.insert(name, secret);
                }
                Ok(all)
            })
            .await
    }

    /// The names of the secrets and their keys (never their values).
    pub async fn list(&self) -> Result<BTreeMap<String, Vec<String>>, SecretError> {
        Ok(self
            .all()
            .await?
            .into_iter()
            .map(|(name, secret)| (name, secret.into_keys().collect()))
            .collect())
    }
}

#[async_trait]
impl SecretStore for SqliteSecretStore {
    async fn get(
        &self,
        name: &str,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        let not_found = || SecretError::NotFound(name.to_string());
        let Some(key) = self.key_for_reading().await? else {
            return Err(not_found());
        };
        let get = move |c: &Connection, sql: &Sql, name: &str| {
            read(c, sql, name)?
                .map(|sealed| open_sealed(&key, name, &sealed))
                .transpose()
        };
        let found = match &self.reads {
            Some(reads) => reads.read(|c, sql| get(c, sql, name))?,
            None => {
                let owned = name.to_string();
                self.calls
                    .call(false, move |c, sql| get(c, sql, &owned))
                    .await?
            }
        };
        found.ok_or_else(not_found)
    }

    async fn bulk(
        &self,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        self.all().await
    }
}

/// A secret's name: not empty, no control characters (names end up in terminals and logs
/// of the CLI), at most 256 bytes.
fn check_name(name: &str) -> Result<(), SecretError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(SecretError::InvalidRequest(format!(
            "{name:?} is not a usable secret name (1 to 256 bytes, no control characters)"
        )));
    }
    Ok(())
}

/// `secrets.db` → `secrets.key`, beside it.
fn default_key_file(connection: &str) -> PathBuf {
    let path = connection.strip_prefix("file:").unwrap_or(connection);
    let path = path.split('?').next().unwrap_or(path);
    Path::new(path).with_extension("key")
}

fn new_key() -> Result<KeyBytes, SecretError> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SecretError::Backend("no randomness for a key".into()))?;
    Ok(key)
}

fn read_key_file(path: &Path) -> Result<Option<KeyBytes>, SecretError> {
    match std::fs::read_to_string(path) {
        Ok(text) => unhex(&text).map(Some).ok_or_else(|| {
            SecretError::InvalidRequest(format!(
                "key file {} does not hold a 256-bit key in hex",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecretError::Backend(format!(
            "cannot read key file {}: {e}",
            path.display()
        ))),
    }
}

/// Makes a new key file (mode 0600) unless another process just did, and answers the key
/// the file holds. The file appears whole or not at all: it is written under a temporary
/// name and linked into place, which fails if the name is taken.
fn create_key_file(path: &Path) -> Result<KeyBytes, SecretError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |what: &str, e: std::io::Error| {
        SecretError::Backend(format!("cannot {what} key file {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io("make the directory of the", e))?;
    }
    let key = new_key()?;
    let tmp = path.with_extension(format!("key.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create the", e))?;
    file.write_all(format!("{}\n", hex(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write the", e))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path)?
            .ok_or_else(|| SecretError::Backend(format!("key file {} vanished", path.display()))),
        Err(e) => Err(io("link the", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_under_their_own_name_and_key() {
        let key = [7u8; KEY_LEN];
        let secret = Secret::from([("pw".to_string(), "hunter2".to_string())]);
        let sealed = seal(&key, "db", &secret).expect("seal");
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "the value is not stored in the clear"
        );
        assert_eq!(open_sealed(&key, "db", &sealed).expect("open"), secret);
        assert!(
            open_sealed(&key, "other", &sealed).is_err(),
            "moved to another name"
        );
        assert!(
            open_sealed(&[8u8; KEY_LEN], "db", &sealed).is_err(),
            "another key"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open_sealed(&key, "db", &tampered).is_err(), "tampered");
        assert_ne!(
            seal(&key, "db", &secret).expect("seal"),
            sealed,
            "fresh nonce"
        );
    }

    #[test]
    fn keys_round_trip_through_hex_and_reject_junk() {
        let key = [0xabu8; KEY_LEN];
        assert_eq!(unhex(&format!("{}\n", hex(&key))), Some(key));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex(&"zz".repeat(KEY_LEN)), None);
        assert_ne!(key_id(&key), key_id(&[0u8; KEY_LEN]));
    }

    #[test]
    fn the_key_file_sits_beside_the_database() {
        assert_eq!(
            default_key_file("/data/secrets.db"),
            PathBuf::from("/data/secrets.key")
        );
        assert_eq!(
            default_key_file("file:/data/s.db?mode=rwc"),
            PathBuf::from("/data/s.key")
        );
    }
}
