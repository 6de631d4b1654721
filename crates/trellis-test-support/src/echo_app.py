# A tiny standard-library HTTP app used by Trellis's tests (and handy for trying things).
# It echoes each request as JSON and has a few control routes:
#   GET  /env          -> the Dapr/Trellis environment the launcher gave it
#   POST /exit/<code>  -> exits the process with <code> after answering
#   GET  /call/<app>/<method> -> calls another app through its own sidecar (DAPR_HTTP_PORT)
# It prints "listening on <port>" once ready and "got SIGTERM" when asked to stop.
import json, os, signal, sys, threading, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("APP_PORT", "0") or 0)

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, payload, headers=None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        length = int(self.headers.get("content-length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/env":
            keys = [k for k in os.environ if k.startswith(("DAPR_", "APP_", "TRELLIS_"))]
            return self.reply(200, {k: os.environ[k] for k in keys})
        if self.path.startswith("/exit/"):
            code = int(self.path.split("/")[2])
            self.reply(200, {"exiting": code})
            threading.Timer(0.05, lambda: os._exit(code)).start()
            return
        if self.path.startswith("/call/"):
            _, _, app, method = self.path.split("/", 3)
            url = "http://127.0.0.1:%s/v1.0/invoke/%s/method/%s" % (os.environ["DAPR_HTTP_PORT"], app, method)
            with urllib.request.urlopen(url, timeout=10) as resp:
                return self.reply(200, {"status": resp.status, "body": resp.read().decode()})
        self.reply(200, {
            "app": os.environ.get("APP_ID"),
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
        })

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any

def on_term(signum, frame):
    print("got SIGTERM" if signum == signal.SIGTERM else "got SIGINT", flush=True)
    os._exit(int(os.environ.get("EXIT_CODE_ON_SIGNAL", "0")))

signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("listening on %d" % server.server_address[1], flush=True)
server.serve_forever()
