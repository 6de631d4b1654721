"""A plain grpcio server (no Dapr SDK, no .proto: bytes in, bytes out) with its own
service `test.Echo`, run under `trellis run --app-protocol grpc`; other apps reach it
through their sidecar with `dapr-app-id` metadata (gRPC proxying)."""

import os
import threading
from concurrent import futures

import grpc

from report import crash, report


def unary(request, context):
    md = dict(context.invocation_metadata())
    report("unary", data=request.decode(), caller=md.get("dapr-caller-app-id"),
           has_token="dapr-api-token" in md)
    context.set_trailing_metadata((("x-served-by", os.environ["APP_ID"]),))
    return b"echo:" + request


def chat(request_iterator, context):
    for msg in request_iterator:
        report("chat", data=msg.decode())
        yield b"re:" + msg


def slow(request, context):
    remaining = context.time_remaining()
    done = threading.Event()
    context.add_callback(done.set)
    report("slow-started", deadline_seen=remaining is not None and remaining < 30)
    done.wait(20)
    report("slow-ended", active=context.is_active())
    return b"too late"


def fail(request, context):
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not now")


def main():
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{os.environ['APP_PORT']}")
    server.start()
    report("started")
    server.wait_for_termination()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        crash(e)
