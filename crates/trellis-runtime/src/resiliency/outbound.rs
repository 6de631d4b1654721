//! `components.<name>.outbound`: the sidecar's calls to a store or broker under the
//! component's policy.
//!
//! Each wrapper here is the building block's own trait around the opened component, so the
//! policy is put on once, where the sidecar is assembled, and every caller (the HTTP and
//! gRPC APIs, dead-lettering, transactions) gets it without knowing. An error that is the
//! request's fault (an ETag mismatch, an invalid request, an unsupported operation) is an
//! answer, not a failure of the store: it is neither retried nor counted by the breaker.
//! Subscribing is not an outbound call (the inbound policy covers deliveries) and passes
//! through as it is.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use trellis_configuration::{ConfigurationError, ConfigurationStore};
use trellis_lock::{LockError, LockStore, TryLock, UnlockStatus};
use trellis_pubsub::{
    BulkPublishError, PubSub, PubSubError, PublishRequest, SubscribeRequest, Subscription,
};
use trellis_state::{
    Capabilities, DeleteRequest, GetRequest, Item, Operation, Query, QueryResponse, SetRequest,
    StateError, StateStore,
};

use super::{Failure, Policy, Stopped, Verdict};

/// Runs `op` under `policy`; `is_failure` picks the errors that are the store's failures.
async fn call<T, E, F, Fut>(
    policy: &Policy,
    op: F,
    is_failure: impl Fn(&E) -> bool,
    stopped: impl FnOnce(Stopped) -> E,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let outcome = policy
        .run(true, op, |r: &Result<T, E>| match r {
            Err(e) if is_failure(e) => Verdict::Failure(Failure::Error),
            _ => Verdict::Success,
        })
        .await;
    outcome.result.unwrap_or_else(|s| Err(stopped(s)))
}

/// A state store under its outbound policy.
#[derive(Debug)]
pub struct State {
    pub inner: Arc<dyn StateStore>,
    pub policy: Policy,
}

fn state_failure(e: &StateError) -> bool {
    matches!(e, StateError::Backend(_))
}

fn state_stopped(s: Stopped) -> StateError {
    StateError::Backend(s.to_string())
}

#[async_trait]
impl StateStore for State {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        let op = |_| self.inner.get(key);
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn get_with(&self, req: &GetRequest) -> Result<Option<Item>, StateError> {
        let op = |_| self.inner.get_with(req);
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        let outcome = self
            .policy
            .run(
                true,
                |_| self.inner.bulk_get(keys),
                |items: &Vec<(String, Result<Option<Item>, StateError>)>| match items
                    .iter()
                    .any(|(_, r)| r.as_ref().is_err_and(state_failure))
                {
                    true => Verdict::Failure(Failure::Error),
                    false => Verdict::Success,
                },
            )
            .await;
        outcome.result.unwrap_or_else(|s| {
            keys.iter()
                .map(|k| (k.clone(), Err(state_stopped(s))))
                .collect()
        })
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let op = |_| self.inner.set(req.clone());
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<(), StateError> {
        let op = |_| self.inner.bulk_set(reqs.clone());
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let op = |_| self.inner.delete(req.clone());
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        let op = |_| self.inner.transact(ops.clone());
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        let op = |_| self.inner.query(key_prefix, query);
        call(&self.policy, op, state_failure, state_stopped).await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.inner.ping().await
    }
}

/// A broker under its outbound policy (publishing).
#[derive(Debug)]
pub struct Broker {
    pub inner: Arc<dyn PubSub>,
    pub policy: Policy,
}

fn pubsub_failure(e: &PubSubError) -> bool {
    !matches!(e, PubSubError::InvalidRequest(_))
}

#[async_trait]
impl PubSub for Broker {
    fn capabilities(&self) -> trellis_pubsub::Capabilities {
        self.inner.capabilities()
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        let op = |_| self.inner.publish(req.clone());
        let stopped = |s: Stopped| PubSubError::Backend(s.to_string());
        call(&self.policy, op, pubsub_failure, stopped).await
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        let op = |_| self.inner.bulk_publish(reqs.clone());
        let count = reqs.len();
        let stopped = |s: Stopped| BulkPublishError {
            failed: (0..count)
                .map(|i| (i, PubSubError::Backend(s.to_string())))
                .collect(),
        };
        let is_failure = |e: &BulkPublishError| e.failed.iter().any(|(_, e)| pubsub_failure(e));
        call(&self.policy, op, is_failure, stopped).await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        self.inner.subscribe(req).await
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.inner.ping().await
    }
}

/// A lock store under its outbound policy.
#[derive(Debug)]
pub struct Lock {
    pub inner: Arc<dyn LockStore>,
    pub policy: Policy,
}

fn lock_failure(e: &LockError) -> bool {
    matches!(e, LockError::Backend(_))
}

#[async_trait]
impl LockStore for Lock {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError> {
        let op = |_| self.inner.try_lock(resource, owner, expiry);
        let stopped = |s: Stopped| LockError::Backend(s.to_string());
        call(&self.policy, op, lock_failure, stopped).await
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        let op = |_| self.inner.unlock(resource, owner);
        let stopped = |s: Stopped| LockError::Backend(s.to_string());
        call(&self.policy, op, lock_failure, stopped).await
    }
}

/// A configuration store under its outbound policy.
#[derive(Debug)]
pub struct Configuration {
    pub inner: Arc<dyn ConfigurationStore>,
    pub policy: Policy,
}

#[async_trait]
impl ConfigurationStore for Configuration {
    async fn get(
        &self,
        keys: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, trellis_configuration::Item>, ConfigurationError> {
        let op = |_| self.inner.get(keys, metadata);
        let is_failure = |e: &ConfigurationError| matches!(e, ConfigurationError::Backend(_));
        let stopped = |s: Stopped| ConfigurationError::Backend(s.to_string());
        call(&self.policy, op, is_failure, stopped).await
    }
}

/// Puts every opened component under its outbound policy, if it has one, and around that
/// its metrics (so a call counts once, as its caller saw it, retries included). The
/// sidecar calls this once, right after opening the components and before anything uses
/// them: the one place component handles are wrapped.
pub fn apply(
    res: &super::Resiliency,
    metrics: &crate::metrics::Metrics,
    state: crate::state::StateStores,
    pubsub: crate::pubsub::PubSubs,
    lock: crate::lock::LockStores,
    configuration: crate::configuration::ConfigurationStores,
) -> Opened {
    use super::{Block, Direction::Outbound};
    use crate::metrics::components::{self as metered, Kind};
    let state = state.map_each(|mut c| {
        if let Some(policy) = res.component(&c.name, Block::Statestore, Outbound) {
            c.store = Arc::new(State {
                inner: c.store,
                policy,
            });
        }
        if let Some(meter) = metrics.component(Kind::State, &c.name, metered::STATE_OPS) {
            c.store = Arc::new(metered::State {
                inner: c.store,
                meter,
            });
        }
        c
    });
    let pubsub = pubsub.map_each(|mut c| {
        if let Some(policy) = res.component(&c.name, Block::Pubsub, Outbound) {
            c.broker = Arc::new(Broker {
                inner: c.broker,
                policy,
            });
        }
        if metrics.is_enabled() {
            c.broker = Arc::new(metered::Broker {
                inner: c.broker,
                name: c.name.clone(),
                metrics: metrics.clone(),
            });
        }
        c
    });
    let lock = lock.map_each(|mut c| {
        if let Some(policy) = res.component(&c.name, Block::Lock, Outbound) {
            c.store = Arc::new(Lock {
                inner: c.store,
                policy,
            });
        }
        if let Some(meter) = metrics.component(Kind::Lock, &c.name, metered::LOCK_OPS) {
            c.store = Arc::new(metered::Lock {
                inner: c.store,
                meter,
            });
        }
        c
    });
    let configuration = configuration.map_each(|mut c| {
        if let Some(policy) = res.component(&c.name, Block::Configuration, Outbound) {
            c.store = Arc::new(Configuration {
                inner: c.store,
                policy,
            });
        }
        let ops = metered::CONFIGURATION_OPS;
        if let Some(meter) = metrics.component(Kind::Configuration, &c.name, ops) {
            c.store = Arc::new(metered::Configuration {
                inner: c.store,
                meter,
            });
        }
        c
    });
    (state, pubsub, lock, configuration)
}

/// The components [`apply`] hands back, in the order it took them.
pub type Opened = (
    crate::state::StateStores,
    crate::pubsub::PubSubs,
    crate::lock::LockStores,
    crate::configuration::ConfigurationStores,
);
