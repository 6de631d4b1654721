//! Configuration subscriptions of one sidecar: the registry of live ones by id (which
//! unsubscribing stops), and the delivery of an HTTP subscription's changes to the app.
//!
//! A change reaches the app as Dapr sends it: for each changed key, `POST
//! /configuration/<store>/<key>` with the whole change (`{"id": <subscription>, "items":
//! {<key>: {"value", "version", "metadata"}}}`, empty fields left out as Go leaves them
//! out, so a deleted item is `{}`), through the [`AppChannel`](crate::invoke::AppChannel)
//! tagged [`AppCall::ConfigurationUpdate`] and under the component's inbound resiliency
//! policy. An answer other than 200 is logged and the change is not sent again (Dapr's
//! behaviour: the next change brings the item as it then is). A gRPC app gets the same
//! request as an `OnInvoke` of the method `configuration/<store>/<key>`, as Dapr's gRPC app
//! channel sends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{Request, StatusCode, header};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use trellis_configuration::{Item, Subscription, Update};

use crate::Body;
use crate::invoke::AppCall;
use crate::resiliency::{Block, Direction, Failure, Policy, Verdict};
use crate::runtime::Runtime;

/// The live configuration subscriptions, by id.
#[derive(Debug, Default)]
pub struct ConfigSubscriptions {
    live: Mutex<HashMap<String, Live>>,
}

#[derive(Debug)]
struct Live {
    store: String,
    /// Dropping it stops the subscription.
    _stop: oneshot::Sender<()>,
}

/// A registered subscription: its id, its changes, and the signal that it was stopped.
/// Dropping it takes it out of the registry.
#[derive(Debug)]
pub struct Registered {
    pub id: String,
    pub subscription: Subscription,
    pub stopped: oneshot::Receiver<()>,
    rt: Arc<Runtime>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.rt.config_subscriptions.lock().remove(&self.id);
    }
}

impl ConfigSubscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // Every operation on the map is one insert, remove or count.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `subscription` of `store` under a fresh id.
    pub fn add(rt: &Arc<Runtime>, store: &str, subscription: Subscription) -> Registered {
        let id = uuid::Uuid::new_v4().to_string();
        let (stop, stopped) = oneshot::channel();
        rt.config_subscriptions.lock().insert(
            id.clone(),
            Live {
                store: store.to_string(),
                _stop: stop,
            },
        );
        Registered {
            id,
            subscription,
            stopped,
            rt: rt.clone(),
        }
    }

    /// Stops subscription `id` (of `store`, when given); false when there is none.
    pub fn stop(&self, id: &str, store: Option<&str>) -> bool {
        let mut live = self.lock();
        match live.get(id) {
            Some(l) if store.is_none_or(|s| s == l.store) => live.remove(id).is_some(),
            _ => false,
        }
    }

    /// How many subscriptions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A change as Dapr's `UpdateEvent` JSON: Go's `omitempty` leaves out empty fields.
pub fn update_json(id: &str, update: &Update) -> Value {
    let items: Map<String, Value> = update
        .iter()
        .map(|(key, item)| (key.clone(), item_json(item)))
        .collect();
    json!({"id": id, "items": items})
}

fn item_json(item: &Item) -> Value {
    let mut out = Map::new();
    if !item.value.is_empty() {
        out.insert("value".into(), Value::String(item.value.clone()));
    }
    if !item.version.is_empty() {
        out.insert("version".into(), Value::String(item.version.clone()));
    }
    if !item.metadata.is_empty() {
        out.insert("metadata".into(), json!(item.metadata));
    }
    Value::Object(out)
}

/// A key as one path segment (Dapr puts it in the path as it is; characters a path cannot
/// hold are escaped).
fn path_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends the changes of an HTTP subscription to the app until it is unsubscribed, its store
/// closes it, or the sidecar stops.
pub async fn deliver(rt: Arc<Runtime>, store: String, mut registered: Registered) {
    let Some(channel) = rt.app_channel.clone() else {
        return;
    };
    let policy = rt
        .resiliency
        .component(&store, Block::Configuration, Direction::Inbound)
        .unwrap_or_default();
    let mut stopping = rt.stopping();
    loop {
        let update = tokio::select! {
            // An unsubscribe wins over a change that arrived meanwhile.
            biased;
            _ = &mut registered.stopped => break,
            _ = stopping.wait_for(|s| *s) => break,
            u = registered.subscription.next() => match u {
                Some(u) => u,
                None => break,
            },
        };
        let body = update_json(&registered.id, &update).to_string();
        for key in update.keys() {
            send(&*channel, &policy, &store, key, &body).await;
        }
    }
    tracing::debug!(
        id = registered.id,
        store,
        "configuration subscription ended"
    );
}

async fn send(
    channel: &dyn crate::invoke::AppChannel,
    policy: &Policy,
    store: &str,
    key: &str,
    body: &str,
) {
    let path = format!(
        "/configuration/{}/{}",
        path_segment(store),
        path_segment(key)
    );
    let attempt = |_| {
        let req = Request::post(path.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .extension(AppCall::ConfigurationUpdate {
                store: store.to_string(),
                key: key.to_string(),
            })
            .body(Body::from(body.to_string()));
        async {
            match req {
                Ok(req) => channel
                    .call(&path, req)
                    .await
                    .map(|r| r.status())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let outcome = policy
        .run(true, attempt, |r| match r {
            Ok(StatusCode::OK) => Verdict::Success,
            Ok(status) => Verdict::Failure(Failure::Http(status.as_u16())),
            Err(_) => Verdict::Failure(Failure::Error),
        })
        .await;
    match outcome.result {
        Ok(Ok(StatusCode::OK)) => {}
        Ok(Ok(status)) => {
            tracing::warn!(store, key, %status, "the app did not take a configuration update")
        }
        Ok(Err(error)) => tracing::warn!(
            store,
            key,
            error,
            "cannot send a configuration update to the app"
        ),
        Err(stopped) => {
            tracing::warn!(store, key, %stopped, "cannot send a configuration update to the app")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_daprs_json_and_keys_path_segments() {
        let mut item = Item::new("10", "3");
        item.metadata.insert("team".into(), "ops".into());
        let update = Update::from([
            ("limit".to_string(), item),
            ("gone".to_string(), Item::default()),
        ]);
        assert_eq!(
            update_json("s1", &update),
            json!({"id": "s1", "items": {
                "limit": {"value": "10", "version": "3", "metadata": {"team": "ops"}},
                "gone": {}
            }})
        );
        assert_eq!(path_segment("orders.limit"), "orders.limit");
        assert_eq!(path_segment("a/b c%"), "a%2Fb%20c%25");
    }
}
