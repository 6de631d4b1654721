"""Shared by the test apps: how an app tells crates/trellis/tests/it/sdk_python.rs what it saw.

Each observation is one JSON line appended to the file named by SDK_REPORT (one write per
line with O_APPEND, so apps sharing the file do not interleave)."""

import json
import os
import sys
import traceback

REPORT = os.environ.get("SDK_REPORT")
if not REPORT:
    raise SystemExit("SDK_REPORT is not set: run this app from crates/trellis/tests/it/sdk_python.rs")


def report(event, **fields):
    line = json.dumps({"app": os.environ.get("APP_ID"), "event": event, **fields}, default=str)
    fd = os.open(REPORT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def describe_error(e):
    """What the SDK raised, with the gRPC code and Dapr's ErrorInfo reason when there is one."""
    out = {"type": type(e).__name__, "message": str(e)}
    code = getattr(e, "code", None)
    if callable(code):
        try:
            out["code"] = code().name
        except Exception:  # noqa: BLE001 - a code() that fails is reported as missing
            pass
    error_code = getattr(e, "error_code", None)
    if callable(error_code):
        out["reason"] = error_code()
    details = getattr(e, "details", None)
    if callable(details):
        out["details"] = details()
    return out


def step(name, fn):
    """Runs one step and reports what it returned or raised, so one failing call does not
    hide the results of the next ones."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - every failure is an observation
        report("step", step=name, error=describe_error(e))
        return None
    report("step", step=name, result=result)
    return result


def finish(code=0):
    report("done", code=code)
    sys.stdout.flush()
    os._exit(code)


def crash(e):
    report("crashed", error="".join(traceback.format_exception(e)))
    os._exit(1)
