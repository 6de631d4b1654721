"""A gRPC app built on dapr-ext-grpc's App, run with `trellis run --app-protocol grpc`:
it serves `echo` for service invocation, subscribes to topic `orders` (and `flaky`,
answering RETRY to each event's first delivery), and takes the configuration updates of key
`limit` (which Dapr sends a gRPC app as an invocation of `configuration/<store>/<key>`),
reporting what it gets."""

import json
import os

from cloudevents.sdk.event import v1
from dapr.clients.grpc._response import TopicEventResponse
from dapr.ext.grpc import App, InvokeMethodRequest, InvokeMethodResponse

from report import crash, report

app = App()
seen = set()


@app.method(name="echo")
def echo(request: InvokeMethodRequest) -> InvokeMethodResponse:
    metadata = {k: v for k, v in request.metadata.items()}
    report("invoked", data=request.text(), content_type=request.content_type,
           caller=(metadata.get("dapr-caller-app-id") or [""])[0])
    body = {"echoed": request.text(), "by": os.environ.get("APP_ID")}
    return InvokeMethodResponse(json.dumps(body), "application/json")


@app.method(name="configuration/configstore/limit")
def config_update(request: InvokeMethodRequest) -> InvokeMethodResponse:
    report("config", data=json.loads(request.text()), content_type=request.content_type)
    return InvokeMethodResponse("", "application/json")


@app.subscribe(pubsub_name="pubsub", topic="orders")
def orders(event: v1.Event) -> None:
    data = event.Data()
    if isinstance(data, bytes):
        data = data.decode()
    report("received", topic="orders", id=event.EventID(), source=event.Source(),
           type=event.EventType(), data=json.loads(data))


@app.subscribe(pubsub_name="pubsub", topic="flaky")
def flaky(event: v1.Event):
    first = event.EventID() not in seen
    seen.add(event.EventID())
    report("received", topic="flaky", id=event.EventID(), first=first)
    return TopicEventResponse("retry" if first else "success")


if __name__ == "__main__":
    try:
        app.run(int(os.environ["APP_PORT"]))
    except Exception as e:  # noqa: BLE001
        crash(e)
