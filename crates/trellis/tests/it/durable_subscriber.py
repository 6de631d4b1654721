# A pub/sub subscriber app for the crash tests in pubsub_crash.rs: a separate OS process so
# that a test can kill -9 it mid-stream and start it again on the same port.
#
#   python3 durable_subscriber.py <port> <pubsub> <topic> <out-file>
#
# GET /dapr/subscribe answers one subscription (<pubsub>/<topic> -> POST /events). Each
# delivered event's `data` is appended to <out-file> as one line *before* the app answers
# {"status":"SUCCESS"}, so every message the sidecar saw acknowledged is in the file, and
# a message whose answer was cut off by the kill is in it too (a duplicate when redelivered).
# It prints "listening on <port>" once it accepts connections.
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, PUBSUB, TOPIC, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

# O_APPEND and one os.write per line: no user-space buffer to lose on kill -9 (the line is
# in the kernel once write returns), and concurrent handler threads never interleave lines.
OUT_FD = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the sidecar's pooled app channel expects; no Nagle delay on answers.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/dapr/subscribe":
            return self.reply(200, [{"pubsubname": PUBSUB, "topic": TOPIC, "route": "/events"}])
        self.reply(404, {})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path != "/events":
            return self.reply(404, {})
        try:
            data = json.loads(body).get("data")
        except ValueError:
            data = None
        if not isinstance(data, str):
            # Not an event this test published: make the sidecar say so in its log.
            return self.reply(400, {"error": "no string data"})
        line = (data.replace("\n", " ") + "\n").encode()
        with LOCK:
            os.write(OUT_FD, line)
        self.reply(200, {"status": "SUCCESS"})


class Server(ThreadingHTTPServer):
    # Rebinding the port of a killed predecessor must not fail on its TIME_WAIT sockets.
    allow_reuse_address = True
    daemon_threads = True


server = Server(("127.0.0.1", PORT), Handler)
print("listening on %d" % server.server_address[1], flush=True)
server.serve_forever()
