//! The embedded store: conformance, and two schedulers of one app on one file (as two
//! `trellis` processes would be) triggering each tick once between them.

use std::sync::Arc;

use trellis_jobs::sqlite::SqliteJobStore;
use trellis_jobs::{JobStore, Metadata};

pub async fn open(dir: &std::path::Path) -> Arc<dyn JobStore> {
    let md = Metadata::from_pairs([(
        "connectionString",
        dir.join("jobs.db").display().to_string().as_str(),
    )]);
    Arc::new(SqliteJobStore::open(&md).await.expect("open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    trellis_jobs::conformance::run(open(dir.path()).await, "app").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_the_ticks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (open(dir.path()).await, open(dir.path()).await);
    crate::postgres::shared_ticks(a, b, "shop").await;
}
