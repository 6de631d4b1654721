//! trellis-workflow's integration tests: the conformance suite on the embedded store, and
//! the engine driving a worker written here against the protocol.

mod engine;

use trellis_workflow::sqlite::SqliteWorkflowStore;
use trellis_workflow::{Metadata, conformance};

pub async fn sqlite_store(dir: &tempfile::TempDir) -> SqliteWorkflowStore {
    let path = dir.path().join("workflows.db").display().to_string();
    SqliteWorkflowStore::open(&Metadata::from_pairs([("connectionString", path.as_str())]))
        .await
        .expect("open the embedded store")
}

#[tokio::test]
async fn the_embedded_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = sqlite_store(&dir).await;
    conformance::run(&store).await;
}
