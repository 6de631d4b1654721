//! Component calls counted and timed: each wrapper here is the building block's own trait
//! around an opened component, put on in `resiliency::outbound::apply` (the one place every
//! component handle is wrapped) outside the resiliency policy, so a call is counted once
//! as its caller saw it, retries included. Series are looked up once per component.
//!
//! As in Dapr, `success` is whether the call returned without an error, whatever the
//! error (an ETag mismatch is `false` too).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

use super::families::Timed;
use super::{Metrics, Series};

/// Which family a component's operations are counted in.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    State,
    Configuration,
    Lock,
}

/// Dapr's operation names for state stores.
pub const STATE_OPS: &[&str] = &[
    "get",
    "bulk_get",
    "set",
    "bulk_set",
    "delete",
    "transaction",
    "query",
];

/// The series of one component: per operation, failed and succeeded.
#[derive(Debug)]
pub struct Meter {
    ops: Vec<(&'static str, [Series; 2])>,
}

impl Meter {
    pub(super) fn new(family: &Timed, component: &str, ops: &[&'static str]) -> Option<Self> {
        let ops = ops
            .iter()
            .map(|&op| {
                Some((
                    op,
                    [
                        family.series(&[component, op, "false"])?,
                        family.series(&[component, op, "true"])?,
                    ],
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { ops })
    }

    pub fn record(&self, op: &str, success: bool, elapsed: Duration) {
        if let Some((_, series)) = self.ops.iter().find(|(name, _)| *name == op) {
            series[usize::from(success)].record(elapsed);
        }
    }

    /// Runs `call`, then records it under `op`.
    async fn time<T, E>(&self, op: &str, call: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        self.record(op, result.is_ok(), started.elapsed());
        result
    }
}

/// A state store, counted.
#[derive(Debug)]
pub struct State {
    pub inner: Arc<dyn StateStore>,
    pub meter: Meter,
}

#[async_trait]
impl StateStore for State {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.meter.time("get", self.inner.get(key)).await
    }

    async fn get_with(&self, req: &GetRequest) -> Result<Option<Item>, StateError> {
        self.meter.time("get", self.inner.get_with(req)).await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        let started = Instant::now();
        let items = self.inner.bulk_get(keys).await;
        let success = items.iter().all(|(_, r)| r.is_ok());
        self.meter.record("bulk_get", success, started.elapsed());
        items
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.meter.time("set", self.inner.set(req)).await
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<(), StateError> {
        self.meter.time("bulk_set", self.inner.bulk_set(reqs)).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.meter.time("delete", self.inner.delete(req)).await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        self.meter
            .time("transaction", self.inner.transact(ops))
            .await
    }

    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        self.meter
            .time("query", self.inner.query(key_prefix, query))
            .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.inner.ping().await
    }
}

/// A broker, its publishes counted per topic.
#[derive(Debug)]
pub struct Broker {
    pub inner: Arc<dyn PubSub>,
    pub name: String,
    pub metrics: Metrics,
}

#[async_trait]
impl PubSub for Broker {
    fn capabilities(&self) -> trellis_pubsub::Capabilities {
        self.inner.capabilities()
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        let series = self.metrics.egress(&self.name, &req.topic);
        let started = Instant::now();
        let result = self.inner.publish(req).await;
        if let Some(series) = series {
            series[usize::from(result.is_ok())].record(started.elapsed());
        }
        result
    }

    /// Each message counts once, failed when the broker listed it as failed.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        let series: Vec<_> = reqs
            .iter()
            .map(|r| self.metrics.egress(&self.name, &r.topic))
            .collect();
        let started = Instant::now();
        let result = self.inner.bulk_publish(reqs).await;
        let elapsed = started.elapsed();
        for (i, series) in series.iter().enumerate() {
            let failed = result
                .as_ref()
                .err()
                .is_some_and(|e| e.failed.iter().any(|(at, _)| *at == i));
            if let Some(series) = series {
                series[usize::from(!failed)].record(elapsed);
            }
        }
        result
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        self.inner.subscribe(req).await
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.inner.ping().await
    }
}

/// A lock store, counted.
#[derive(Debug)]
pub struct Lock {
    pub inner: Arc<dyn LockStore>,
    pub meter: Meter,
}

/// Operation names of lock stores (Dapr has no lock metrics; these follow its style).
pub const LOCK_OPS: &[&str] = &["try_lock", "unlock"];

#[async_trait]
impl LockStore for Lock {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError> {
        let call = self.inner.try_lock(resource, owner, expiry);
        self.meter.time("try_lock", call).await
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        self.meter
            .time("unlock", self.inner.unlock(resource, owner))
            .await
    }
}

/// A configuration store, counted.
#[derive(Debug)]
pub struct Configuration {
    pub inner: Arc<dyn ConfigurationStore>,
    pub meter: Meter,
}

/// Dapr's operation names for configuration stores.
pub const CONFIGURATION_OPS: &[&str] = &["get"];

#[async_trait]
impl ConfigurationStore for Configuration {
    async fn get(
        &self,
        keys: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, trellis_configuration::Item>, ConfigurationError> {
        self.meter.time("get", self.inner.get(keys, metadata)).await
    }
}
