# inventory: a gRPC app (dapr-ext-grpc). Trellis calls it over gRPC: `reserve` invocations
# arrive through OnInvoke and `orders` events through OnTopicEvent.
import json
import os

from dapr.ext.grpc import App, InvokeMethodRequest, InvokeMethodResponse, SubscriptionMessage

app = App()
stock = {"apple": 5, "pear": 2}


@app.method(name="reserve")
def reserve(request: InvokeMethodRequest) -> InvokeMethodResponse:
    item = json.loads(request.text())
    left = stock.get(item["name"], 0)
    ok = left >= item["count"]
    if ok:
        stock[item["name"]] = left - item["count"]
    print(f"reserve {item['count']} x {item['name']}: {'ok' if ok else 'out of stock'}", flush=True)
    return InvokeMethodResponse(json.dumps({"reserved": ok, "left": stock.get(item["name"], 0)}),
                                "application/json")


@app.subscribe(pubsub_name="pubsub", topic="orders")
def orders(message: SubscriptionMessage) -> None:
    order = json.loads(message.raw_data())
    print(f"order {order['orderId']} received: {order['items']}", flush=True)


try:
    app.run(int(os.environ["APP_PORT"]))
except KeyboardInterrupt:  # Ctrl-C in `trellis run`: stop quietly
    print("inventory stopped", flush=True)
