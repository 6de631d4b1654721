"""DaprClient (gRPC) against a Trellis sidecar: the scenario named by SCENARIO.

  state    save/get/ETags/first-write/bulk/delete/transactions/query/metadata
  publish  publish_event and publish_events to topic `orders` of the default pubsub
  invoke   invoke_method on TARGET_APP (run with DAPR_API_METHOD_INVOCATION_PROTOCOL=grpc)
  stream   streaming subscriptions: subscribe() and subscribe_with_handler() on topics
           `stream-orders` and `stream-handled`, answering SUCCESS, RETRY and DROP
  secrets  get_secret / get_bulk_secret on the `files` store the test configures
  lock     try_lock / unlock (and try_lock as a context manager) on the embedded `lockstore`
  config   get_configuration on the embedded `configstore` (the test seeds `limit` and `mode`)
  config-subscribe  subscribe_configuration on `configstore`, changed by `trellis config set`
           run from here ($TRELLIS_BIN, $CONFIG_DATA_DIR) as an operator would; unsubscribe

Each SDK call is reported as a step; the test decides what is right."""

import json
import os
import queue
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from dapr.clients import DaprClient
from dapr.clients.grpc._state import StateItem, StateOptions, Concurrency
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._response import TopicEventResponse

from report import crash, finish, step

STORE = "statestore"
FIRST_WRITE = StateOptions(concurrency=Concurrency.first_write)


def state(d):
    step("save", lambda: d.save_state(STORE, "apple", json.dumps({"name": "apple", "price": 3})) and None)
    step("get", lambda: d.get_state(STORE, "apple").data.decode())
    step("get-missing", lambda: d.get_state(STORE, "nothing-here").data.decode())
    etag = step("etag", lambda: d.get_state(STORE, "apple").etag)
    step("save-current-etag", lambda: d.save_state(STORE, "apple", '{"v":2}', etag=etag, options=FIRST_WRITE) and None)
    step("save-stale-etag", lambda: d.save_state(STORE, "apple", '{"v":3}', etag=etag, options=FIRST_WRITE) and None)
    step("get-after-stale", lambda: d.get_state(STORE, "apple").data.decode())
    step("first-write-new-key", lambda: d.save_state(STORE, "fresh", "1", options=FIRST_WRITE) and None)
    step("first-write-existing-key", lambda: d.save_state(STORE, "fresh", "2", options=FIRST_WRITE) and None)
    step("save-bulk", lambda: d.save_bulk_state(STORE, [
        StateItem(key="k1", value=json.dumps({"city": "Lyon", "n": 1})),
        StateItem(key="k2", value=json.dumps({"city": "Oslo", "n": 2})),
        StateItem(key="k3", value=json.dumps({"city": "Lyon", "n": 3})),
    ]) and None)
    step("get-bulk", lambda: [
        {"key": i.key, "data": i.data.decode(), "has_etag": bool(i.etag), "error": i.error}
        for i in d.get_bulk_state(STORE, ["k1", "k2", "none"]).items
    ])
    step("query", lambda: sorted(r.key for r in d.query_state(
        STORE, json.dumps({"filter": {"EQ": {"city": "Lyon"}}})).results))
    step("transaction", lambda: d.execute_state_transaction(STORE, [
        TransactionalStateOperation(key="k4", data="four"),
        TransactionalStateOperation(key="k1", data="", operation_type=TransactionOperationType.delete),
    ]) and None)
    step("after-transaction", lambda: [d.get_state(STORE, k).data.decode() for k in ["k1", "k4"]])
    step("delete-stale-etag", lambda: d.delete_state(STORE, "k2", etag="12345", options=FIRST_WRITE) and None)
    step("delete", lambda: d.delete_state(STORE, "k2") and None)
    step("get-deleted", lambda: d.get_state(STORE, "k2").data.decode())
    step("unknown-store", lambda: d.get_state("no-such-store", "x").data.decode())
    step("set-metadata", lambda: d.set_metadata("sdk", "python") and None)
    step("metadata", lambda: (lambda m: {
        "id": m.application_id,
        "components": sorted(c.name for c in m.registered_components),
        "extended": dict(m.extended_metadata),
    })(d.get_metadata()))


def publish(d):
    step("publish", lambda: d.publish_event("pubsub", "orders", json.dumps({"orderId": 1}),
                                            data_content_type="application/json") and None)
    step("publish-text", lambda: d.publish_event("pubsub", "orders", "hello",
                                                 data_content_type="text/plain") and None)
    step("publish-bulk", lambda: [
        e.entry.entry_id for e in d.publish_events(
            "pubsub", "orders",
            [json.dumps({"orderId": n}) for n in (2, 3, 4)],
            data_content_type="application/json").failed_entries
    ])
    step("publish-unknown-pubsub", lambda: d.publish_event("nope", "orders", "x") and None)


def invoke(d):
    target = os.environ["TARGET_APP"]
    step("invoke-post", lambda: (lambda r: {"content_type": r.content_type, "body": json.loads(r.data)})(
        d.invoke_method(target, "orders/7", data='{"n":7}', content_type="application/json",
                        http_verb="POST", http_querystring=(("a", "1"),))))
    step("invoke-get", lambda: json.loads(d.invoke_method(target, "hello", http_verb="GET").data))
    step("invoke-404", lambda: d.invoke_method(target, "status/404", http_verb="GET").data.decode())
    step("invoke-unknown-app", lambda: d.invoke_method("nobody-here", "x", http_verb="GET").data.decode())


def streaming_listed():
    """The streaming subscriptions the sidecar's /v1.0/metadata lists (the SDK's
    get_metadata leaves subscriptions out)."""
    url = f"http://127.0.0.1:{os.environ['DAPR_HTTP_PORT']}/v1.0/metadata"
    with urllib.request.urlopen(url, timeout=5) as r:
        md = json.load(r)
    return [f"{s['pubsubname']}/{s['topic']}" for s in md.get("subscriptions", [])
            if s.get("type") == "STREAMING"]


def stream(d):
    waiter = ThreadPoolExecutor(max_workers=1)

    def next_message(sub):
        # next_message() blocks until an event comes; a missing one fails the step instead.
        return waiter.submit(sub.next_message).result(timeout=15)

    def publish_order(n):
        d.publish_event("pubsub", "stream-orders", json.dumps({"orderId": n}),
                        data_content_type="application/json")

    sub = d.subscribe("pubsub", "stream-orders")
    step("listed-while-open", streaming_listed)

    publish_order(1)
    msg = next_message(sub)
    step("event", lambda: {
        "has_id": bool(msg.id()), "source": msg.source(), "type": msg.type(),
        "topic": msg.topic(), "pubsub": msg.pubsub_name(),
        "content_type": msg.data_content_type(), "data": msg.data(),
    })
    sub.respond_success(msg)

    publish_order(2)
    first = next_message(sub)
    sub.respond_retry(first)
    again = step("retried", lambda: next_message(sub))
    step("retried-same", lambda: {"same_id": again.id() == first.id(), "data": again.data()})
    sub.respond_success(again)

    publish_order(3)
    sub.respond_drop(next_message(sub))
    publish_order(4)
    after = step("after-drop", lambda: next_message(sub))
    step("after-drop-data", lambda: after.data())
    sub.respond_success(after)

    sub.close()

    def listed_after_close():
        deadline = time.monotonic() + 10
        while streaming_listed() and time.monotonic() < deadline:
            time.sleep(0.05)
        return streaming_listed()

    step("listed-after-close", listed_after_close)

    handled = queue.Queue()

    def handler(message):
        handled.put(message.data())
        return TopicEventResponse("success")

    close = d.subscribe_with_handler("pubsub", "stream-handled", handler)
    d.publish_event("pubsub", "stream-handled", json.dumps({"n": 5}),
                    data_content_type="application/json")
    step("handled", lambda: handled.get(timeout=15))
    close()

    step("subscribe-unknown-pubsub", lambda: d.subscribe("nope", "x") and None)


def secrets(d):
    step("get", lambda: dict(d.get_secret("files", "db:password").secret))
    step("get-with-metadata", lambda: dict(
        d.get_secret("files", "api", secret_metadata={"version": "1"}).secret))
    step("bulk", lambda: {k: dict(v) for k, v in d.get_bulk_secret("files").secrets.items()})
    step("denied", lambda: d.get_secret("files", "hidden").secret)
    step("missing", lambda: d.get_secret("files", "nothing-here").secret)
    step("unknown-store", lambda: d.get_secret("nope", "x").secret)


def lock(d):
    def acquire():
        got = d.try_lock("lockstore", "py-resource", "py-a", 60)
        token = got.headers.get("trellis-fencing-token", [None])[0]
        return {"success": got.success, "token": token}

    def context_manager():
        with d.try_lock("lockstore", "py-ctx", "py-c", 60) as held:
            inside = d.try_lock("lockstore", "py-ctx", "py-d", 60).success
            got = held.success
        after = d.try_lock("lockstore", "py-ctx", "py-d", 60).success
        return {"held": got, "other-inside": inside, "other-after": after}

    step("acquire", acquire)
    step("contended", lambda: d.try_lock("lockstore", "py-resource", "py-b", 60).success)
    step("unlock-other", lambda: d.unlock("lockstore", "py-resource", "py-b").status.name)
    step("unlock", lambda: d.unlock("lockstore", "py-resource", "py-a").status.name)
    step("unlock-again", lambda: d.unlock("lockstore", "py-resource", "py-a").status.name)
    step("context-manager", context_manager)
    step("unknown-store", lambda: d.try_lock("nope", "r", "o", 5).success)


def configuration(d):
    def items(keys, store="configstore"):
        got = d.get_configuration(store, keys).items
        return {k: {"value": v.value, "version": v.version, "metadata": dict(v.metadata)}
                for k, v in got.items()}

    step("get", lambda: items(["limit", "missing"]))
    step("all", lambda: items([]))
    step("unknown-store", lambda: items(["limit"], store="nope"))


def configuration_subscribe(d):
    changes = queue.Queue()

    def handler(sub_id, resp):
        items = {k: {"value": v.value, "version": v.version, "metadata": dict(v.metadata)}
                 for k, v in resp.items.items()}
        changes.put({"id": sub_id, "items": items})

    def config_set(key, value):
        subprocess.run([os.environ["TRELLIS_BIN"], "config", "set", key, value,
                        "--data-dir", os.environ["CONFIG_DATA_DIR"]], check=True, capture_output=True)

    sub_id = step("subscribe", lambda: d.subscribe_configuration("configstore", ["limit"], handler))
    config_set("mode", "ignored")
    config_set("limit", "11")
    step("change", lambda: changes.get(timeout=10))
    step("unsubscribe", lambda: d.unsubscribe_configuration("configstore", sub_id))
    step("unsubscribe-again", lambda: d.unsubscribe_configuration("configstore", sub_id))
    config_set("limit", "12")
    time.sleep(0.5)
    step("after-unsubscribe", lambda: changes.qsize())
    step("unknown-store", lambda: d.subscribe_configuration("nope", ["limit"], handler))


def main():
    scenario = os.environ["SCENARIO"]
    with DaprClient() as d:
        {"state": state, "publish": publish, "invoke": invoke, "stream": stream,
         "secrets": secrets, "lock": lock, "config": configuration,
         "config-subscribe": configuration_subscribe}[scenario](d)
    finish()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        crash(e)
