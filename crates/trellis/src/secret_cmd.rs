//! `trellis secret set|get|list|rm`: manage the embedded secret store (`secretstores.sqlite`
//! on `<data-dir>/secrets.db`, sealed with the key in `<data-dir>/secrets.key`), which apps
//! read through Dapr's secrets API as the store `secretstore`.
//!
//! The store is shared by every process on the machine, so a running sidecar answers a
//! secret set here on its next read. Values are read from standard input unless given as
//! an argument (an argument lands in the shell's history), and are printed only by `get`.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use trellis_secrets::sqlite::SqliteSecretStore;
use trellis_secrets::{Metadata, SecretError, SecretStore};

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret (or one key of a secret with several) in the embedded store.
    Set {
        name: String,
        /// The value; read from standard input when left out (a trailing newline is
        /// dropped), so that it stays out of the shell's history.
        value: Option<String>,
        /// The key within the secret to set (default: the secret's own name, as a
        /// single-valued secret has).
        #[arg(long, short = 'k')]
        key: Option<String>,
        /// Data directory of the store (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print a secret's value (one key) or, with `-o json`, all its keys and values.
    Get {
        name: String,
        /// Print the secret as the API answers it, `{"key": "value"}`.
        #[arg(long, short = 'o', value_parser = ["value", "json"], default_value = "value")]
        output: String,
        /// Data directory of the store (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// List the secrets and their keys (never their values).
    List {
        /// Data directory of the store (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Remove a secret, or one key of it.
    Rm {
        name: String,
        /// Remove only this key of the secret.
        #[arg(long, short = 'k')]
        key: Option<String>,
        /// Data directory of the store (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

async fn open(data_dir: Option<PathBuf>) -> anyhow::Result<SqliteSecretStore> {
    let path = crate::args::data_dir(data_dir).join(trellis_runtime::secrets::EMBEDDED_FILE);
    let md = Metadata::new(
        trellis_runtime::secrets::DEFAULT_STORE_NAME,
        BTreeMap::from([("connectionString".to_string(), path.display().to_string())]),
    );
    SqliteSecretStore::open(&md)
        .await
        .with_context(|| format!("opening the secret store {}", path.display()))
}

pub async fn run(command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set {
            name,
            value,
            key,
            data_dir,
        } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::stdin()
                        .read_to_string(&mut v)
                        .context("reading the value from standard input")?;
                    let trimmed = v.strip_suffix('\n').unwrap_or(&v);
                    trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
                }
            };
            let store = open(data_dir).await?;
            let key = key.unwrap_or_else(|| name.clone());
            store.set(&name, &key, &value).await?;
            if key == name {
                println!("secret {name} set");
            } else {
                println!("key {key} of secret {name} set");
            }
        }
        SecretCommand::Get {
            name,
            output,
            data_dir,
        } => {
            let store = open(data_dir).await?;
            let secret = match store.get(&name, &BTreeMap::new()).await {
                Err(SecretError::NotFound(_)) => {
                    anyhow::bail!("no secret {name:?}; `trellis secret list` shows what there is")
                }
                other => other?,
            };
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&secret)?);
            } else if let Some(value) = secret.get(&name) {
                println!("{value}");
            } else {
                let keys: Vec<&str> = secret.keys().map(String::as_str).collect();
                anyhow::bail!(
                    "secret {name:?} has several keys ({}); print them with -o json",
                    keys.join(", ")
                );
            }
        }
        SecretCommand::List { data_dir } => {
            let store = open(data_dir).await?;
            let secrets = store.list().await?;
            if secrets.is_empty() {
                println!("no secrets");
            }
            for (name, keys) in secrets {
                if keys.len() == 1 && keys[0] == name {
                    println!("{name}");
                } else {
                    println!("{name}  (keys: {})", keys.join(", "));
                }
            }
        }
        SecretCommand::Rm {
            name,
            key,
            data_dir,
        } => {
            let store = open(data_dir).await?;
            if !store.remove(&name, key.as_deref()).await? {
                anyhow::bail!("no secret {name:?} with that key to remove");
            }
            println!("removed");
        }
    }
    Ok(())
}
