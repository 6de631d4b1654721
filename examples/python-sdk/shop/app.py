# shop: uses DaprClient, which talks to the sidecar over gRPC: a cart in the state store,
# `reserve` calls to the inventory app (gRPC InvokeService), and an `orders` event.
import json
import os
import signal
import sys
import time

# Ctrl-C in `trellis run` stops the app quietly, without a traceback.
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

os.environ.setdefault("DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")

from dapr.clients import DaprClient  # noqa: E402

with DaprClient() as d:
    cart = [{"name": "apple", "count": 3}, {"name": "pear", "count": 1}]
    d.save_state("statestore", "cart-1", json.dumps(cart))
    stored = json.loads(d.get_state("statestore", "cart-1").data)
    print(f"cart saved and read back: {stored}", flush=True)
    for item in stored:
        for attempt in range(50):  # the inventory app may still be starting
            try:
                resp = d.invoke_method("inventory", "reserve", data=json.dumps(item),
                                       content_type="application/json")
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        else:
            raise SystemExit("inventory never answered")
        print(f"reserved {item['name']}: {json.loads(resp.data)}", flush=True)
    d.publish_event("pubsub", "orders", json.dumps({"orderId": 1, "items": stored}),
                    data_content_type="application/json")
    print("order 1 published", flush=True)
