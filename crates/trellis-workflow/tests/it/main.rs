//! trellis-workflow's integration tests: the conformance suite on each store, and the
//! engine driving a worker written here against the protocol, on each store.

mod engine;
mod postgres;

use std::sync::Arc;

use trellis_workflow::sqlite::SqliteWorkflowStore;
use trellis_workflow::{Metadata, WorkflowStore, conformance};

pub async fn sqlite_store(dir: &tempfile::TempDir) -> SqliteWorkflowStore {
    let path = dir.path().join("workflows.db").display().to_string();
    SqliteWorkflowStore::open(&Metadata::from_pairs([("connectionString", path.as_str())]))
        .await
        .expect("open the embedded store")
}

/// A database of its own for one test, which can be opened several times, as the
/// sidecars sharing it would.
pub enum Db {
    Sqlite(tempfile::TempDir),
    /// The table prefix of this test's tables in the shared test database.
    Postgres(String),
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    pub fn postgres() -> Db {
        Db::Postgres(postgres::fresh_table())
    }

    /// Drops a PostgreSQL test's tables, so that the shared test database does not
    /// collect them (a failed test leaves its tables to look at).
    pub async fn drop_tables(&self) {
        if let Db::Postgres(table) = self {
            postgres::drop_tables(table).await;
        }
    }

    /// Another store on this database.
    pub async fn open(&self) -> Arc<dyn WorkflowStore> {
        match self {
            Db::Sqlite(dir) => Arc::new(sqlite_store(dir).await),
            Db::Postgres(table) => Arc::new(postgres::store(table).await),
        }
    }
}

#[tokio::test]
async fn the_embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite_store(&dir).await;
    conformance::run(&store).await;
}
