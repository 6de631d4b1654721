"""Calls `test.Echo` of the app named by TARGET_APP through its own sidecar's gRPC port,
with nothing but `dapr-app-id` metadata added to ordinary grpcio calls."""

import os

import grpc

from report import crash, finish, step


def main():
    channel = grpc.insecure_channel(f"127.0.0.1:{os.environ['DAPR_GRPC_PORT']}")
    grpc.channel_ready_future(channel).result(timeout=10)
    md = (("dapr-app-id", os.environ["TARGET_APP"]),)
    unary = channel.unary_unary("/test.Echo/Unary")
    chat = channel.stream_stream("/test.Echo/Chat")

    def unary_with_trailers():
        resp, call = unary.with_call(b"hello", metadata=md)
        return {"data": resp.decode(), "trailers": dict(call.trailing_metadata() or ())}

    step("unary", unary_with_trailers)
    step("chat", lambda: [r.decode() for r in chat(iter([b"a", b"b", b"c"]), metadata=md)])
    step("deadline", lambda: channel.unary_unary("/test.Echo/Slow")(b"", metadata=md, timeout=1.0))
    step("app-error", lambda: channel.unary_unary("/test.Echo/Fail")(b"", metadata=md))
    step("unknown-method", lambda: channel.unary_unary("/test.Echo/Nope")(b"", metadata=md))
    step("unknown-app", lambda: unary(b"x", metadata=(("dapr-app-id", "nobody-here"),)))
    step("bad-app-id", lambda: unary(b"x", metadata=(("dapr-app-id", "../etc"),)))
    finish()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        crash(e)
