//! The pub/sub components of one sidecar: built from its components (or the embedded
//! `pubsub` broker), found by name, each with the topic scoping its metadata asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use trellis_pubsub::{
    BulkPublishError, Capabilities, Metadata, PubSub, PubSubError, PublishRequest,
    SubscribeRequest, Subscription,
};
use trellis_resources::Component;

use crate::components::{EMBEDDED_PUBSUB_TYPE, PubSubFactory, Registries};
use crate::config::SidecarConfig;
use crate::loading::{self, Embedded};

/// The name of the pub/sub offered when no pub/sub component is configured.
pub const DEFAULT_PUBSUB_NAME: &str = "pubsub";

/// What the embedded broker reports once open (checked against the real thing in a test).
const EMBEDDED_CAPABILITIES: Capabilities = Capabilities {
    bulk_publish: true,
    ttl: true,
    ordered: true,
    replay: true,
};

#[derive(Debug)]
pub struct PubSubComponent {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub broker: Arc<dyn PubSub>,
    pub capabilities: Capabilities,
    pub scopes: TopicScopes,
    /// How many deliveries (or bulk batches) of one subscription may be at the app at
    /// once; `None` leaves it to the runtime's delivery policy.
    pub delivery_concurrency: Option<usize>,
}

/// The delivery concurrency a component asks for, in Dapr's words: `concurrencyMode`
/// `single` (one at a time, so the app sees each topic in broker order) or `parallel`,
/// or Redis's `concurrency: <n>`. Without either, the embedded broker delivers one at a
/// time, keeping per-topic order for a single subscriber, and other brokers deliver in
/// parallel, as Dapr's do.
pub fn delivery_concurrency(type_name: &str, metadata: &Metadata) -> Result<Option<usize>, String> {
    match metadata
        .get("concurrencyMode")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("single") => return Ok(Some(1)),
        Some("parallel") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "metadata.concurrencyMode: {other:?} is not single or parallel"
            ));
        }
        None => {}
    }
    if let Some(n) = metadata.get("concurrency") {
        return match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "metadata.concurrency: {n:?} is not a positive whole number"
            )),
        };
    }
    Ok((type_name == EMBEDDED_PUBSUB_TYPE).then_some(1))
}

/// Dapr's topic scoping from component metadata: `allowedTopics`, `protectedTopics`,
/// `publishingScopes` and `subscriptionScopes` (`app1=t1,t2;app2=t3`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopicScopes {
    allowed: Option<BTreeSet<String>>,
    protected: BTreeSet<String>,
    publishing: BTreeMap<String, BTreeSet<String>>,
    subscribing: BTreeMap<String, BTreeSet<String>>,
}

impl TopicScopes {
    pub fn parse(metadata: &Metadata) -> Self {
        let list = |v: &str| -> BTreeSet<String> {
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        };
        let per_app = |v: Option<&str>| -> BTreeMap<String, BTreeSet<String>> {
            v.unwrap_or_default()
                .split(';')
                .filter_map(|entry| {
                    let (app, topics) = entry.split_once('=').unwrap_or((entry, ""));
                    let app = app.trim();
                    (!app.is_empty()).then(|| (app.to_string(), list(topics)))
                })
                .collect()
        };
        Self {
            allowed: metadata.get("allowedTopics").map(list),
            protected: metadata
                .get("protectedTopics")
                .map(list)
                .unwrap_or_default(),
            publishing: per_app(metadata.get("publishingScopes")),
            subscribing: per_app(metadata.get("subscriptionScopes")),
        }
    }

    pub fn can_publish(&self, app_id: &str, topic: &str) -> bool {
        self.admits(&self.publishing, app_id, topic)
    }

    pub fn can_subscribe(&self, app_id: &str, topic: &str) -> bool {
        self.admits(&self.subscribing, app_id, topic)
    }

    fn admits(&self, scopes: &BTreeMap<String, BTreeSet<String>>, app: &str, topic: &str) -> bool {
        let listed = scopes.get(app);
        // A protected topic needs an explicit grant; an app named in the scopes is limited
        // to its topics; allowedTopics limits everyone else.
        if self.protected.contains(topic) {
            return listed.is_some_and(|t| t.contains(topic));
        }
        if let Some(topics) = listed {
            return topics.contains(topic);
        }
        self.allowed.as_ref().is_none_or(|a| a.contains(topic))
    }
}

/// This app's pubsub components by name.
pub type PubSubs = crate::loading::Opened<PubSubComponent>;

impl PubSubs {
    /// Opens every pub/sub component scoped to this app, or the embedded default when
    /// there is none. Returns every problem at once.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.pubsub,
            DEFAULT_PUBSUB_NAME,
            EMBEDDED_PUBSUB_TYPE,
            "pubsub.db",
        );
        let (components, errors) = loading::select(config, "pubsub", embedded);
        Self::open_each(components, errors, "pub/sub", |c| async move {
            open_one(&c, registries).await
        })
        .await
    }
}

async fn open_one(
    component: &Component,
    registries: &Registries,
) -> Result<Option<PubSubComponent>, String> {
    let factory = registries
        .pubsub
        .get(&component.type_name, &component.version)
        .map_err(|e| format!("spec.type: {e}"))?;
    let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
    let scopes = TopicScopes::parse(&metadata);
    let delivery_concurrency = delivery_concurrency(&component.type_name, &metadata)?;
    if loading::is_built_in(component) {
        let broker = LazyPubSub::new(*factory, metadata, EMBEDDED_CAPABILITIES);
        return Ok(Some(PubSubComponent {
            name: component.meta.name.clone(),
            type_name: component.type_name.clone(),
            version: component.version.clone(),
            capabilities: EMBEDDED_CAPABILITIES,
            broker: Arc::new(broker),
            scopes,
            delivery_concurrency,
        }));
    }
    let Some(broker) = loading::init(component, "pubsub", factory(metadata)).await? else {
        return Ok(None);
    };
    Ok(Some(PubSubComponent {
        name: component.meta.name.clone(),
        type_name: component.type_name.clone(),
        version: component.version.clone(),
        capabilities: broker.capabilities(),
        broker,
        scopes,
        delivery_concurrency,
    }))
}

/// A broker opened on first use, for the same reason as [`crate::lazy_store::LazyStore`]:
/// apps that neither publish nor subscribe pay nothing for the embedded default. An error
/// opening it surfaces on the first call and the next call tries again.
struct LazyPubSub {
    factory: PubSubFactory,
    metadata: Metadata,
    capabilities: Capabilities,
    broker: OnceCell<Arc<dyn PubSub>>,
}

impl std::fmt::Debug for LazyPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPubSub")
            .field("opened", &self.broker.initialized())
            .finish()
    }
}

impl LazyPubSub {
    fn new(factory: PubSubFactory, metadata: Metadata, capabilities: Capabilities) -> Self {
        Self {
            factory,
            metadata,
            capabilities,
            broker: OnceCell::new(),
        }
    }

    async fn broker(&self) -> Result<&Arc<dyn PubSub>, PubSubError> {
        self.broker
            .get_or_try_init(|| (self.factory)(self.metadata.clone()))
            .await
    }
}

#[async_trait]
impl PubSub for LazyPubSub {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        self.broker().await?.publish(req).await
    }

    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        match self.broker().await {
            Ok(b) => b.bulk_publish(reqs).await,
            Err(e) => Err(BulkPublishError {
                failed: (0..reqs.len()).map(|i| (i, e.clone())).collect(),
            }),
        }
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        self.broker().await?.subscribe(req).await
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.broker().await?.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_concurrency_follows_the_component() {
        let md = |pairs: &[(&str, &str)]| Metadata::from_pairs(pairs.iter().copied());
        let embedded = EMBEDDED_PUBSUB_TYPE;
        assert_eq!(delivery_concurrency(embedded, &md(&[])), Ok(Some(1)));
        assert_eq!(delivery_concurrency("pubsub.redis", &md(&[])), Ok(None));
        let parallel = md(&[("concurrencyMode", "parallel")]);
        assert_eq!(delivery_concurrency(embedded, &parallel), Ok(None));
        let single = md(&[("concurrencyMode", "Single")]);
        assert_eq!(
            delivery_concurrency("pubsub.rabbitmq", &single),
            Ok(Some(1))
        );
        let redis = md(&[("concurrency", "4")]);
        assert_eq!(delivery_concurrency("pubsub.redis", &redis), Ok(Some(4)));
        assert!(delivery_concurrency("x", &md(&[("concurrency", "0")])).is_err());
        let bad = delivery_concurrency("x", &md(&[("concurrencyMode", "wild")])).unwrap_err();
        assert!(bad.contains("concurrencyMode"), "{bad}");
    }

    #[test]
    fn topic_scopes_follow_dapr() {
        let md = Metadata::from_pairs([
            ("allowedTopics", "a,b,secret"),
            ("protectedTopics", "secret"),
            ("publishingScopes", "pub=a;nobody="),
            ("subscriptionScopes", "sub=b,secret"),
        ]);
        let s = TopicScopes::parse(&md);
        assert!(s.can_publish("pub", "a"));
        assert!(!s.can_publish("pub", "b"), "pub is limited to its topics");
        assert!(
            !s.can_publish("nobody", "a"),
            "an empty list grants nothing"
        );
        assert!(
            s.can_publish("other", "b"),
            "unlisted apps get allowedTopics"
        );
        assert!(!s.can_publish("other", "c"), "not in allowedTopics");
        assert!(!s.can_publish("other", "secret"), "protected");
        assert!(s.can_subscribe("sub", "secret"));
        assert!(s.can_subscribe("other", "a"));
        assert!(TopicScopes::default().can_publish("x", "anything"));
    }

    #[cfg(feature = "pubsub-sqlite")]
    #[tokio::test]
    async fn embedded_capabilities_match_the_real_broker() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::from_pairs([(
            "connectionString",
            dir.path().join("p.db").display().to_string(),
        )]);
        let broker = trellis_pubsub::sqlite::SqliteBroker::open(&md)
            .await
            .unwrap();
        assert_eq!(broker.capabilities(), EMBEDDED_CAPABILITIES);
    }
}
