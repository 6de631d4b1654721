# order-processor: receives orders at POST /orders and confirms them.
# Standard library only; the sidecar gives us APP_PORT.
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Orders(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        if self.path != "/orders":
            self.send_error(404)
            return
        order = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        caller = self.headers.get("dapr-caller-app-id", "?")
        print(f"order {order['orderId']} received from {caller}", flush=True)
        body = json.dumps({"orderId": order["orderId"], "status": "confirmed"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

port = int(os.environ.get("APP_PORT", "6001"))
print(f"order-processor listening on {port}", flush=True)
ThreadingHTTPServer(("127.0.0.1", port), Orders).serve_forever()
