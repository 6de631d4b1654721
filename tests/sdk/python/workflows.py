"""Dapr workflows with the official Python SDK against a Trellis sidecar.

Registers workflows and activities with WorkflowRuntime (the SDK's worker, on the sidecar's
gRPC port), then drives them with DaprWorkflowClient and with the HTTP workflow API, and
reports each observation as a step; crates/trellis/tests/it/workflows.rs decides what is
right. SCENARIO picks the part: `patterns` (chaining, fan-out, external events with a
timer race, continue-as-new, child workflows, retries, failures), `control` (terminate,
suspend/resume, purge, unknown workflows, the HTTP API and its errors), `restart`
(starts a slow chain and reports its id; a second run with WAIT_FOR=<id> waits for it), or
`replica` (a worker that only serves; with STARTER=1 it also starts 20 chains and waits), or
`multi` (a workflow that runs an activity and a child workflow on the app OTHER_APP), or
`throughput` (N chains started at once, timed: the Python SDK figure of docs/benchmarks.md)."""

import json
import os
import time
import urllib.error
import urllib.request
from datetime import timedelta

from dapr.ext.workflow import (
    DaprWorkflowClient,
    DaprWorkflowContext,
    RetryPolicy,
    WorkflowActivityContext,
    WorkflowRuntime,
    when_all,
    when_any,
)

from report import crash, finish, report, step

wfr = WorkflowRuntime()
FLAKY_FAILURES = {"left": 2}


@wfr.activity(name="inc")
def inc(ctx: WorkflowActivityContext, x: int) -> int:
    delay = float(os.environ.get("ACTIVITY_DELAY", "0"))
    if delay:
        time.sleep(delay)
    if os.environ.get("REPORT_ACTIVITIES"):
        report("activity", input=x, pid=os.getpid())
    return x + 1


@wfr.activity(name="square")
def square(ctx: WorkflowActivityContext, x: int) -> int:
    return x * x


@wfr.activity(name="flaky")
def flaky(ctx: WorkflowActivityContext, x: int) -> int:
    if FLAKY_FAILURES["left"] > 0:
        FLAKY_FAILURES["left"] -= 1
        raise RuntimeError("flaky failed on purpose")
    return x


@wfr.activity(name="boom")
def boom(ctx: WorkflowActivityContext, x) -> int:
    raise ValueError("boom: this activity always fails")


@wfr.workflow(name="chain")
def chain(ctx: DaprWorkflowContext, x: int):
    for _ in range(5):
        x = yield ctx.call_activity(inc, input=x)
    return x


@wfr.workflow(name="fan")
def fan(ctx: DaprWorkflowContext, n: int):
    results = yield when_all([ctx.call_activity(square, input=i) for i in range(n)])
    return sum(results)


@wfr.workflow(name="approval")
def approval(ctx: DaprWorkflowContext, timeout_s: float):
    approved = ctx.wait_for_external_event("approve")
    timer = ctx.create_timer(timedelta(seconds=timeout_s))
    winner = yield when_any([approved, timer])
    if winner == timer:
        return "timed out"
    return "approved by " + str(approved.get_result())


@wfr.workflow(name="counter")
def counter(ctx: DaprWorkflowContext, n: int):
    if n >= 3:
        return n
    yield ctx.create_timer(timedelta(milliseconds=50))
    ctx.continue_as_new(n + 1)


@wfr.workflow(name="parent")
def parent(ctx: DaprWorkflowContext, x: int):
    child = yield ctx.call_child_workflow(chain, input=x, instance_id=ctx.instance_id + "-child")
    return child * 2


@wfr.workflow(name="retrying")
def retrying(ctx: DaprWorkflowContext, x: int):
    policy = RetryPolicy(first_retry_interval=timedelta(milliseconds=200), max_number_of_attempts=4)
    return (yield ctx.call_activity(flaky, input=x, retry_policy=policy))


@wfr.workflow(name="failing")
def failing(ctx: DaprWorkflowContext, x: int):
    return (yield ctx.call_activity(boom, input=x))


@wfr.workflow(name="multi")
def multi(ctx: DaprWorkflowContext, x: int):
    other = os.environ["OTHER_APP"]
    y = yield ctx.call_activity(inc, input=x, app_id=other)
    z = yield ctx.call_child_workflow(chain, input=y, instance_id=ctx.instance_id + "-remote", app_id=other)
    return z


def outcome(state):
    if state is None:
        return None
    out = {"status": state.runtime_status.name, "output": state.serialized_output}
    if state.failure_details is not None:
        out["failure"] = state.failure_details.message
    return out


def run(client, name, inp, instance_id, timeout=60):
    client.schedule_new_workflow(workflow=name, input=inp, instance_id=instance_id)
    return outcome(client.wait_for_workflow_completion(instance_id, timeout_in_seconds=timeout))


def http(method, path, body=None):
    port = os.environ["DAPR_HTTP_PORT"]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return {"status": resp.status, "body": json.loads(text) if text else None}
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return {"status": e.code, "body": json.loads(text) if text else None}


def wait_http(instance_id, want, timeout=30):
    deadline = time.time() + timeout
    while True:
        got = http("GET", f"/v1.0/workflows/dapr/{instance_id}")
        if got["status"] != 200 or got["body"]["runtimeStatus"] in want or time.time() > deadline:
            return got
        time.sleep(0.05)


def patterns(client):
    def workers():
        # The worker's stream may reach the sidecar a moment after the SDK says it is ready.
        deadline = time.time() + 10
        while True:
            got = http("GET", "/v1.0/metadata")["body"].get("workflows")
            if got or time.time() > deadline:
                return got
            time.sleep(0.05)

    step("metadata-workers", workers)
    step("chain", lambda: run(client, chain, 10, "chain-1"))
    step("fan-out", lambda: run(client, fan, 1000, "fan-1"))

    def scheduled():
        from datetime import datetime, timezone

        start_at = datetime.now(timezone.utc) + timedelta(seconds=1)
        client.schedule_new_workflow(workflow=chain, input=0, instance_id="later-1", start_at=start_at)
        pending = client.get_workflow_state("later-1").runtime_status.name
        done = outcome(client.wait_for_workflow_completion("later-1", timeout_in_seconds=30))
        finished = datetime.now(timezone.utc)
        return {"pending": pending, "done": done, "not-early": finished >= start_at}

    step("scheduled-start", scheduled)

    def approved():
        client.schedule_new_workflow(workflow=approval, input=30, instance_id="approve-yes")
        client.wait_for_workflow_start("approve-yes", timeout_in_seconds=30)
        client.raise_workflow_event("approve-yes", "approve", data="ana")
        return outcome(client.wait_for_workflow_completion("approve-yes", timeout_in_seconds=30))

    step("event-wins", approved)
    step("timer-wins", lambda: run(client, approval, 1, "approve-no"))
    step("continue-as-new", lambda: run(client, counter, 0, "counter-1"))
    step("child", lambda: run(client, parent, 1, "parent-1"))
    step("child-state", lambda: outcome(client.get_workflow_state("parent-1-child")))
    step("retry", lambda: run(client, retrying, 7, "retry-1"))
    step("failure", lambda: run(client, failing, 1, "fail-1"))


def control(client):
    def terminate():
        client.schedule_new_workflow(workflow=approval, input=300, instance_id="term-1")
        client.wait_for_workflow_start("term-1", timeout_in_seconds=30)
        client.terminate_workflow("term-1", output="stopped")
        return outcome(client.wait_for_workflow_completion("term-1", timeout_in_seconds=30))

    step("terminate", terminate)

    def suspend_resume():
        client.schedule_new_workflow(workflow=approval, input=300, instance_id="pause-1")
        client.wait_for_workflow_start("pause-1", timeout_in_seconds=30)
        client.pause_workflow("pause-1")
        paused = client.get_workflow_state("pause-1").runtime_status.name
        client.raise_workflow_event("pause-1", "approve", data="bo")
        time.sleep(0.5)
        still = client.get_workflow_state("pause-1").runtime_status.name
        client.resume_workflow("pause-1")
        done = outcome(client.wait_for_workflow_completion("pause-1", timeout_in_seconds=30))
        return {"paused": paused, "after-event": still, "done": done}

    step("suspend-resume", suspend_resume)

    def purge():
        run(client, chain, 0, "purge-1")
        client.purge_workflow("purge-1")
        return outcome(client.get_workflow_state("purge-1"))

    step("purge", purge)
    step("unknown-workflow", lambda: run(client, "no_such_workflow", None, "unknown-1"))
    step("missing-state", lambda: outcome(client.get_workflow_state("never-started")))
    step("raise-to-missing", lambda: client.raise_workflow_event("never-started", "x") and None)

    # The HTTP workflow API on the same instances.
    step("http-start", lambda: http("POST", "/v1.0/workflows/dapr/chain/start?instanceID=http-1", b"20"))
    step("http-done", lambda: wait_http("http-1", ("COMPLETED", "FAILED")))
    step("http-beta-get", lambda: http("GET", "/v1.0-beta1/workflows/dapr/http-1")["status"])

    def http_control():
        out = {"start": http("POST", "/v1.0/workflows/dapr/approval/start?instanceID=http-2", b"300")}
        wait_http("http-2", ("RUNNING",))
        out["pause"] = http("POST", "/v1.0/workflows/dapr/http-2/pause")["status"]
        out["paused"] = wait_http("http-2", ("SUSPENDED",))["body"]["runtimeStatus"]
        out["resume"] = http("POST", "/v1.0/workflows/dapr/http-2/resume")["status"]
        out["raise"] = http("POST", "/v1.0/workflows/dapr/http-2/raiseEvent/approve", b'"cy"')["status"]
        out["done"] = wait_http("http-2", ("COMPLETED", "FAILED"))["body"]
        out["purge"] = http("POST", "/v1.0/workflows/dapr/http-2/purge")["status"]
        out["after-purge"] = http("GET", "/v1.0/workflows/dapr/http-2")
        out["start-3"] = http("POST", "/v1.0/workflows/dapr/approval/start?instanceID=http-3", b"300")["status"]
        wait_http("http-3", ("RUNNING",))
        out["purge-running"] = http("POST", "/v1.0/workflows/dapr/http-3/purge")
        out["terminate"] = http("POST", "/v1.0/workflows/dapr/http-3/terminate")["status"]
        out["terminated"] = wait_http("http-3", ("TERMINATED",))["body"]["runtimeStatus"]
        return out

    step("http-control", http_control)
    step("http-missing", lambda: http("GET", "/v1.0/workflows/dapr/nobody-here"))
    step("http-bad-id", lambda: http("POST", "/v1.0/workflows/dapr/chain/start?instanceID=a.b", b"1"))
    step("http-long-id", lambda: http("POST", "/v1.0/workflows/dapr/chain/start?instanceID=" + "x" * 65, b"1"))
    step("http-bad-component", lambda: http("GET", "/v1.0/workflows/nope/http-1"))
    step("http-raise-missing", lambda: http("POST", "/v1.0/workflows/dapr/nobody-here/raiseEvent/x", b"1"))


def restart(client):
    wait_for = os.environ.get("WAIT_FOR")
    if wait_for:
        step("resumed", lambda: outcome(client.wait_for_workflow_completion(wait_for, timeout_in_seconds=90)))
        step("history", lambda: [e.event_type.name for e in client.get_workflow_history(wait_for)])
        step("history-missing", lambda: client.get_workflow_history("never-started") and None)
        return
    client.schedule_new_workflow(workflow=chain, input=100, instance_id="restart-1")
    report("started", instance="restart-1", pid=os.getpid())
    # Keep working until the test kills this process.
    time.sleep(600)


def replica(client):
    if not os.environ.get("STARTER"):
        report("replica-ready", pid=os.getpid())
        time.sleep(600)
        return
    ids = [f"rep-{i}" for i in range(20)]
    for i, wid in enumerate(ids):
        client.schedule_new_workflow(workflow=chain, input=i * 10, instance_id=wid)
    results = {wid: outcome(client.wait_for_workflow_completion(wid, timeout_in_seconds=60)) for wid in ids}
    step("replicated", lambda: results)
    step(
        "completions",
        lambda: {wid: sum(1 for e in client.get_workflow_history(wid) if e.event_type.name == "TASK_COMPLETED") for wid in ids},
    )


def multi_app(client):
    step("multi-app", lambda: run(client, multi, 1, "multi-1"))
    step("child-here", lambda: outcome(client.get_workflow_state("multi-1-remote")))


def throughput(client):
    n = int(os.environ.get("N", "300"))
    started = time.time()
    for i in range(n):
        client.schedule_new_workflow(workflow=chain, input=i, instance_id=f"tp-{i}")
    for i in range(n):
        client.wait_for_workflow_completion(f"tp-{i}", timeout_in_seconds=300)
    elapsed = time.time() - started
    print(f"{n} chains of 5 activities in {elapsed:.2f}s: {n / elapsed:.0f} workflows/s", flush=True)
    report("throughput", workflows=n, seconds=elapsed)


def main():
    wfr.start()
    if not wfr.wait_for_worker_ready(timeout=30):
        report("step", step="worker-ready", error={"message": "the worker did not connect"})
    client = DaprWorkflowClient()
    {"patterns": patterns, "control": control, "restart": restart, "replica": replica, "multi": multi_app, "throughput": throughput}[os.environ.get("SCENARIO", "patterns")](client)
    client.close()
    wfr.shutdown()
    finish(0)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - reported to the test
        crash(e)
