//! `GetConfiguration[Alpha1]`, `SubscribeConfiguration[Alpha1]` and
//! `UnsubscribeConfiguration[Alpha1]`: the gRPC adapters over
//! [`ops::configuration`](crate::api::ops::configuration).
//!
//! As in Dapr, the stream's first message carries only the subscription's id, and each
//! later one the items that changed (a deleted item empty). The subscription lasts until
//! the client closes the stream, `UnsubscribeConfiguration` names its id (the stream then
//! ends with OK), its store closes it, or the sidecar stops. Unsubscribing an unknown id
//! answers `{ok: false, message}`, not an error, as Dapr does.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Response, Status};
use trellis_configuration::Update;
use trellis_proto::common as pbc;
use trellis_proto::runtime as pb;

use super::status::to_status;
use crate::api::ops::configuration as ops;
use crate::configuration_updates::Registered;
use crate::runtime::Runtime;

pub type UpdateStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeConfigurationResponse, Status>> + Send>>;

fn items(update: Update) -> std::collections::HashMap<String, pbc::ConfigurationItem> {
    update
        .into_iter()
        .map(|(key, item)| {
            let item = pbc::ConfigurationItem {
                value: item.value,
                version: item.version,
                metadata: item.metadata.into_iter().collect(),
            };
            (key, item)
        })
        .collect()
}

pub async fn get(
    rt: &Runtime,
    req: pb::GetConfigurationRequest,
) -> Result<Response<pb::GetConfigurationResponse>, Status> {
    let metadata: BTreeMap<String, String> = req.metadata.into_iter().collect();
    let found = ops::get(rt, &req.store_name, &req.keys, &metadata)
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::GetConfigurationResponse {
        items: items(found),
    }))
}

enum Step {
    First(Registered),
    Next(Registered),
}

pub async fn subscribe(
    rt: &Arc<Runtime>,
    req: pb::SubscribeConfigurationRequest,
) -> Result<Response<UpdateStream>, Status> {
    let metadata: BTreeMap<String, String> = req.metadata.into_iter().collect();
    let registered = ops::subscribe(rt, &req.store_name, &req.keys, &metadata)
        .await
        .map_err(to_status)?;
    let stopping = rt.stopping();
    let stream = futures_util::stream::unfold(Step::First(registered), move |step| {
        let mut stopping = stopping.clone();
        async move {
            match step {
                Step::First(r) => {
                    let first = pb::SubscribeConfigurationResponse {
                        id: r.id.clone(),
                        items: Default::default(),
                    };
                    Some((Ok(first), Step::Next(r)))
                }
                Step::Next(mut r) => {
                    let update = tokio::select! {
                        biased;
                        _ = &mut r.stopped => return None,
                        _ = stopping.wait_for(|s| *s) => return None,
                        u = r.subscription.next() => u?,
                    };
                    let message = pb::SubscribeConfigurationResponse {
                        id: r.id.clone(),
                        items: items(update),
                    };
                    Some((Ok(message), Step::Next(r)))
                }
            }
        }
    });
    Ok(Response::new(Box::pin(stream)))
}

pub fn unsubscribe(
    rt: &Runtime,
    req: pb::UnsubscribeConfigurationRequest,
) -> Result<Response<pb::UnsubscribeConfigurationResponse>, Status> {
    let ok = ops::unsubscribe(rt, None, &req.id).map_err(to_status)?;
    Ok(Response::new(pb::UnsubscribeConfigurationResponse {
        ok,
        message: if ok {
            String::new()
        } else {
            ops::unsubscribe_failure(&req.id)
        },
    }))
}
