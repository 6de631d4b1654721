# order-processor: receives orders at POST /orders, keeps each one in the state store
# (`statestore`, embedded by default: no database to install) and confirms it. It also
# subscribes to the `shipments` topic of the `pubsub` broker (embedded by default too).
# Standard library only; the sidecar gives us APP_PORT and DAPR_HTTP_PORT.
import json, os, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = f"http://127.0.0.1:{os.environ.get('DAPR_HTTP_PORT', '3500')}/v1.0/state/statestore"

def save_order(order):
    body = json.dumps([{"key": f"order-{order['orderId']}", "value": order}]).encode()
    req = urllib.request.Request(STATE, data=body, method="POST",
                                 headers={"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()

def load_order(order_id):
    with urllib.request.urlopen(f"{STATE}/order-{order_id}", timeout=5) as resp:
        return json.loads(resp.read()) if resp.status == 200 else None

class Orders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, payload):
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        # The sidecar asks which topics this app subscribes to, and where to deliver them.
        if self.path == "/dapr/subscribe":
            return self.reply([{"pubsubname": "pubsub", "topic": "shipments", "route": "/shipments"}])
        self.send_error(404)

    def do_POST(self):
        if self.path == "/shipments":
            event = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            print(f"shipment event for order {event['data']['orderId']} from {event['source']}", flush=True)
            return self.reply({"status": "SUCCESS"})
        if self.path != "/orders":
            self.send_error(404)
            return
        order = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        caller = self.headers.get("dapr-caller-app-id", "?")
        save_order(order)
        stored = load_order(order["orderId"])
        print(f"order {order['orderId']} received from {caller}, stored as {stored}", flush=True)
        body = json.dumps({"orderId": order["orderId"], "status": "confirmed"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

port = int(os.environ.get("APP_PORT", "6001"))
print(f"order-processor listening on {port}", flush=True)
try:
    ThreadingHTTPServer(("127.0.0.1", port), Orders).serve_forever()
except KeyboardInterrupt:  # Ctrl-C in `trellis run`: stop quietly
    print("order-processor stopped", flush=True)
