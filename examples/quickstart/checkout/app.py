# checkout: sends ten orders to order-processor through its own Trellis sidecar, using the
# Dapr service invocation API, and publishes a `shipments` event for each (the same calls
# work unchanged against Dapr).
import json, os, signal, sys, time, urllib.error, urllib.request

# Ctrl-C in `trellis run` stops the app quietly, without a traceback.
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

sidecar = f"http://127.0.0.1:{os.environ['DAPR_HTTP_PORT']}"

def wait_for(app_id, attempts=100):
    # The other app may still be starting: its sidecar answers once it is reachable.
    for _ in range(attempts):
        try:
            req = urllib.request.Request(f"{sidecar}/v1.0/invoke/{app_id}/method/orders",
                                         data=b'{"orderId": 0}', method="POST",
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req, timeout=2).read()
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise SystemExit(f"{app_id} never became reachable")

wait_for("order-processor")
for order_id in range(1, 11):
    req = urllib.request.Request(
        f"{sidecar}/v1.0/invoke/order-processor/method/orders",
        data=json.dumps({"orderId": order_id}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer = json.loads(resp.read())
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"order {order_id}: {answer['status']} ({elapsed_ms:.2f} ms round trip)", flush=True)
    # Tell whoever listens that the order ships: a CloudEvent on the `shipments` topic.
    event = urllib.request.Request(
        f"{sidecar}/v1.0/publish/pubsub/shipments",
        data=json.dumps({"orderId": order_id}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(event, timeout=5).read()
    time.sleep(0.2)
print("all orders sent; press Ctrl-C to stop order-processor", flush=True)
