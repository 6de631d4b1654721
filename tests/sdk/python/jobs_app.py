"""A gRPC app built on dapr-ext-grpc's App that schedules its own jobs with DaprClient and
handles them with `@app.job_event`, run with `trellis run --app-protocol grpc`; it reports
each step and each job it receives."""

import os
import threading
import time

from google.protobuf.any_pb2 import Any as GrpcAny
from google.protobuf.wrappers_pb2 import StringValue

from dapr.clients import DaprClient
from dapr.clients.grpc._jobs import ConstantFailurePolicy, Job
from dapr.ext.grpc import App, JobEvent

from report import crash, report, step

app = App()


def string_any(text):
    data = GrpcAny()
    data.Pack(StringValue(value=text))
    return data


@app.job_event("py-once")
def once(event: JobEvent) -> None:
    report("job", name=event.name, data=StringValue.FromString(event.data).value)


def schedule():
    # The sidecar is up before the app starts; give the app's server a moment to listen.
    time.sleep(0.5)
    with DaprClient() as client:
        later = Job(
            name="py-later",
            schedule="@every 1h",
            repeats=2,
            due_time="1h",
            data=string_any("later"),
            failure_policy=ConstantFailurePolicy(max_retries=2, interval_seconds=5),
        )
        step("schedule-later", lambda: client.schedule_job(later) and "ok")
        def read():
            job = client.get_job("py-later")
            return {"name": job.name, "schedule": job.schedule, "repeats": job.repeats,
                    "due_time": job.due_time,
                    "data": StringValue.FromString(job.data.value).value}
        step("get-later", read)
        step("duplicate", lambda: client.schedule_job(later) and "ok")
        step("overwrite", lambda: client.schedule_job(later, overwrite=True) and "ok")
        step("delete-later", lambda: client.delete_job("py-later") and "ok")
        step("schedule-once", lambda: client.schedule_job(
            Job(name="py-once", due_time="0s", data=string_any("hello"))) and "ok")


if __name__ == "__main__":
    try:
        threading.Thread(target=schedule, daemon=True).start()
        app.run(int(os.environ["APP_PORT"]))
    except Exception as e:  # noqa: BLE001
        crash(e)
