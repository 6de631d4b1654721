//! The distributed lock API against in-process sidecars: the HTTP and gRPC routes over the
//! embedded store, the fencing token extension, Dapr's errors, the app-id key prefix, and
//! the metadata API listing the store.

use std::path::Path;

use serde_json::json;
use tonic::Code;
use trellis_proto::runtime as pb;
use trellis_test_support::request;

use crate::grpc::{assert_status, client};
use crate::{grpc_sidecar, url};

fn lock_body(resource: &str, owner: &str, expiry: i64) -> String {
    json!({"resourceId": resource, "lockOwner": owner, "expiryInSeconds": expiry}).to_string()
}

fn unlock_body(resource: &str, owner: &str) -> String {
    json!({"resourceId": resource, "lockOwner": owner}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_http_with_fencing_tokens_and_dapr_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("lock-app", dir.path(), None, |_| {}).await;
    let lock = url(&s, "/v1.0-alpha1/lock/lockstore");
    let unlock = url(&s, "/v1.0-alpha1/unlock/lockstore");

    let r = request("POST", &lock, &[], lock_body("order-1", "a", 60)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"success": true}));
    let first: u64 = r.header("trellis-fencing-token").unwrap().parse().unwrap();
    let r = request("POST", &lock, &[], lock_body("order-1", "b", 60)).await;
    assert_eq!(r.json(), json!({"success": false}));
    assert!(r.header("trellis-fencing-token").is_none());

    let r = request("POST", &unlock, &[], unlock_body("order-1", "b")).await;
    assert_eq!(r.json(), json!({"status": 2}), "belongs to others");
    let r = request("POST", &unlock, &[], unlock_body("order-1", "a")).await;
    assert_eq!(r.json(), json!({"status": 0}));
    let r = request("POST", &unlock, &[], unlock_body("order-1", "a")).await;
    assert_eq!(r.json(), json!({"status": 1}), "does not exist");
    // Go's key matching, as Dapr reads the body.
    let r = request(
        "POST",
        &lock,
        &[],
        r#"{"ResourceID":"order-1","lockowner":"b","EXPIRYINSECONDS":60}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"success": true}));
    let second: u64 = r.header("trellis-fencing-token").unwrap().parse().unwrap();
    assert!(second > first, "{second} > {first}");

    // Another app on the same store and resource id: its own key (`keyPrefix` appid).
    let other = grpc_sidecar("other-app", dir.path(), None, |_| {}).await;
    let r = request(
        "POST",
        &url(&other, "/v1.0-alpha1/lock/lockstore"),
        &[],
        lock_body("order-1", "c", 60),
    )
    .await;
    assert_eq!(r.json(), json!({"success": true}));
    other.stop().await;

    for (body, message) in [
        (
            lock_body("", "a", 60),
            "ResourceId is empty in lock store lockstore",
        ),
        (
            lock_body("r", "", 60),
            "LockOwner is empty in lock store lockstore",
        ),
        (
            lock_body("r", "a", 0),
            "ExpiryInSeconds is not positive in lock store lockstore",
        ),
        (
            lock_body("r", "a", -5),
            "ExpiryInSeconds is not positive in lock store lockstore",
        ),
    ] {
        let r = request("POST", &lock, &[], body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["errorCode"], "ERR_MALFORMED_REQUEST");
        assert_eq!(r.json()["message"], message);
    }
    let r = request("POST", &unlock, &[], unlock_body("r", "")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["message"],
        "LockOwner is empty in lock store lockstore"
    );
    let r = request("POST", &lock, &[], "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_MALFORMED_REQUEST");
    let r = request(
        "POST",
        &url(&s, "/v1.0-alpha1/lock/nope"),
        &[],
        lock_body("r", "a", 1),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_LOCK_STORE_NOT_FOUND");
    assert_eq!(r.json()["message"], "lock store nope not found");

    let meta = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let listed = meta["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "lockstore" && c["type"] == "lock.sqlite");
    assert!(listed, "{meta}");
    assert!(dir.path().join("lock.db").exists());
    s.stop().await;
}

/// A lock component scoped to another app: this app has no lock store at all.
fn scoped_out(dir: &Path) -> trellis_resources::Resources {
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: elsewhere\nspec:\n  \
         type: lock.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    \
         value: \"{}\"\nscopes:\n- someone-else\n",
        dir.join("elsewhere.db").display()
    );
    trellis_resources::parse_str(Path::new("lock.yaml"), &yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_grpc_follow_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("grpc-lock", dir.path(), None, |_| {}).await;
    let mut c = client(&s).await;
    let req = |owner: &str, expiry| pb::TryLockRequest {
        store_name: "lockstore".into(),
        resource_id: "job".into(),
        lock_owner: owner.into(),
        expiry_in_seconds: expiry,
    };
    let got = c.try_lock_alpha1(req("a", 60)).await.unwrap();
    let token: u64 = got
        .metadata()
        .get("trellis-fencing-token")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(token > 0);
    assert!(got.into_inner().success);
    let got = c.try_lock_alpha1(req("b", 60)).await.unwrap();
    assert!(got.metadata().get("trellis-fencing-token").is_none());
    assert!(!got.into_inner().success);
    let unlock = |owner: &str| pb::UnlockRequest {
        store_name: "lockstore".into(),
        resource_id: "job".into(),
        lock_owner: owner.into(),
    };
    let status = |r: pb::UnlockResponse| r.status();
    let got = c.unlock_alpha1(unlock("b")).await.unwrap().into_inner();
    assert_eq!(
        status(got),
        pb::unlock_response::Status::LockBelongsToOthers
    );
    let got = c.unlock_alpha1(unlock("a")).await.unwrap().into_inner();
    assert_eq!(status(got), pb::unlock_response::Status::Success);
    let got = c.unlock_alpha1(unlock("a")).await.unwrap().into_inner();
    assert_eq!(status(got), pb::unlock_response::Status::LockDoesNotExist);

    let err = c.try_lock_alpha1(req("a", 0)).await.unwrap_err();
    assert_status(&err, Code::InvalidArgument, "ERR_MALFORMED_REQUEST");
    let err = c
        .try_lock_alpha1(pb::TryLockRequest {
            store_name: "nope".into(),
            ..req("a", 1)
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "ERR_LOCK_STORE_NOT_FOUND");
    s.stop().await;

    let resources = scoped_out(dir.path());
    let none = grpc_sidecar("no-lock", dir.path(), None, move |c| {
        c.resources = resources
    })
    .await;
    let r = request(
        "POST",
        &url(&none, "/v1.0-alpha1/lock/elsewhere"),
        &[],
        lock_body("r", "a", 1),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["errorCode"], "ERR_LOCK_STORE_NOT_CONFIGURED");
    assert_eq!(r.json()["message"], "lock store is not configured");
    let err = client(&none)
        .await
        .unlock_alpha1(pb::UnlockRequest::default())
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "ERR_LOCK_STORE_NOT_CONFIGURED",
    );
    none.stop().await;
}
