//! A state store opened on first use.
//!
//! The embedded default store is offered to every app, but many apps never touch state;
//! opening it lazily keeps their sidecars' start-up time and idle memory (SQLite's threads,
//! caches and pages) at zero. An error opening it surfaces on the first call, with the
//! backend's message, and the next call tries again.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use trellis_state::{
    Capabilities, DeleteRequest, GetRequest, Item, Metadata, Operation, Query, QueryResponse,
    SetRequest, StateError, StateStore,
};

use crate::components::StateFactory;

pub struct LazyStore {
    factory: StateFactory,
    metadata: Metadata,
    capabilities: Capabilities,
    store: OnceCell<Arc<dyn StateStore>>,
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStore")
            .field("opened", &self.store.initialized())
            .finish()
    }
}

impl LazyStore {
    /// `capabilities` must be what the store will report once open.
    pub fn new(factory: StateFactory, metadata: Metadata, capabilities: Capabilities) -> Self {
        Self {
            factory,
            metadata,
            capabilities,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&Arc<dyn StateStore>, StateError> {
        self.store
            .get_or_try_init(|| (self.factory)(self.metadata.clone()))
            .await
    }
}

#[async_trait]
impl StateStore for LazyStore {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.store().await?.get(key).await
    }

    async fn get_with(&self, req: &GetRequest) -> Result<Option<Item>, StateError> {
        self.store().await?.get_with(req).await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        match self.store().await {
            Ok(store) => store.bulk_get(keys).await,
            Err(e) => keys
                .iter()
                .map(|k| (k.clone(), Err(StateError::Backend(e.to_string()))))
                .collect(),
        }
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.store().await?.set(req).await
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<(), StateError> {
        self.store().await?.bulk_set(reqs).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.store().await?.delete(req).await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        self.store().await?.transact(ops).await
    }

    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        self.store().await?.query(key_prefix, query).await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.store().await?.ping().await
    }
}
