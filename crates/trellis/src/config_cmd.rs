//! `trellis config set` and `trellis config get`: write and read the embedded configuration
//! store (`configuration.sqlite` on `<data-dir>/configuration.db`), which apps read through
//! Dapr's configuration API as the store `configstore`.
//!
//! The store is shared by every process on the machine, so a running sidecar answers a
//! value set here on its next read.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use trellis_configuration::sqlite::SqliteConfigurationStore;
use trellis_configuration::{ConfigurationStore, Metadata};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Set an item of the embedded configuration store (a new version every time).
    Set {
        key: String,
        value: String,
        /// Metadata of the item, as name=value; repeatable.
        #[arg(long, short = 'm', value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Data directory of the store (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print items of the embedded configuration store (all of them when no key is named).
    Get {
        keys: Vec<String>,
        /// Print JSON (in the API's shape) instead of a table.
        #[arg(long, short = 'o', value_parser = ["table", "json"], default_value = "table")]
        output: String,
        /// Data directory of the store (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

async fn open(data_dir: Option<PathBuf>) -> anyhow::Result<SqliteConfigurationStore> {
    let path = crate::args::data_dir(data_dir).join(trellis_runtime::configuration::EMBEDDED_FILE);
    let md = Metadata::new(
        trellis_runtime::configuration::DEFAULT_STORE_NAME,
        BTreeMap::from([("connectionString".to_string(), path.display().to_string())]),
    );
    SqliteConfigurationStore::open(&md)
        .await
        .with_context(|| format!("opening the configuration store {}", path.display()))
}

pub async fn run(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Set {
            key,
            value,
            metadata,
            data_dir,
        } => {
            let store = open(data_dir).await?;
            let metadata: BTreeMap<String, String> = metadata.into_iter().collect();
            let version = store.set(&key, &value, &metadata).await?;
            println!("{key} set (version {version})");
        }
        ConfigCommand::Get {
            keys,
            output,
            data_dir,
        } => {
            let store = open(data_dir).await?;
            let items = store.get(&keys, &BTreeMap::new()).await?;
            if output == "json" {
                let json: serde_json::Map<String, serde_json::Value> = items
                    .into_iter()
                    .map(|(k, i)| {
                        let item = serde_json::json!({
                            "value": i.value,
                            "version": i.version,
                            "metadata": i.metadata,
                        });
                        (k, item)
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else if items.is_empty() {
                println!("no configuration items");
            } else {
                println!("{:<30} {:>8}  VALUE", "KEY", "VERSION");
                for (k, i) in items {
                    println!("{k:<30} {:>8}  {}", i.version, i.value);
                }
            }
        }
    }
    Ok(())
}
